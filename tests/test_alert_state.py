"""The alert state (page once per run, hold back repeats, resolve on the next pass) and the four-eyes
judgement, pure; with property tests over arbitrary sequences of failures and passes."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from hypothesis import given, settings, strategies as st

from _clock import SESSION_NOW
from backupkit.alert_state import PAGE, REPEAT, SAME_RUN, AlertKey, AlertState
from backupkit.approvals import (APPROVED, REFUSED, REJECTED, TIMED_OUT, describe_approvers, eligible_approvers,
                                 format_seconds, judge)
from backupkit.config.load import parse_timeout

VERIFY = AlertKey("backup_restore", "trixtech-db", "restore_verify")
FINISH = AlertKey("backup_restore", "trixtech-db", "finish")


def test_a_failing_run_pages_once_then_repeats_are_held_until_it_passes(tmp_path):
    state = AlertState(tmp_path / "alerts" / "state.json")
    assert state.on_failure(VERIFY, run_id="r1", reason="sha mismatch", now=SESSION_NOW).action == PAGE
    # finish of the same run says "see the failed task above": the same incident
    assert state.on_failure(FINISH, run_id="r1", reason="see above", now=SESSION_NOW).action == SAME_RUN
    assert state.on_success(VERIFY, run_id="r1", now=SESSION_NOW) is None  # the failing run cannot resolve it
    second = state.on_failure(VERIFY, run_id="r2", reason="sha mismatch again", now=SESSION_NOW + timedelta(hours=1))
    assert (second.action, second.repeats, second.open_since) == (REPEAT, 1, SESSION_NOW.isoformat())
    assert state.on_success(FINISH, run_id="r3", now=SESSION_NOW) is None  # another check passing resolves nothing
    resolved = state.on_success(VERIFY, run_id="r3", now=SESSION_NOW + timedelta(hours=2))
    assert resolved["run_id"] == "r1" and resolved["repeats"] == 1 and resolved["resolved_by_run"] == "r3"
    assert resolved["last_reason"] == "sha mismatch again"
    assert state.on_success(VERIFY, run_id="r4", now=SESSION_NOW) is None  # resolved once only
    assert state.on_failure(VERIFY, run_id="r5", reason="again", now=SESSION_NOW).action == PAGE  # a new incident


def test_different_sources_and_checks_page_separately(tmp_path):
    state = AlertState(tmp_path / "state.json")
    keys = [AlertKey("d", s, c) for s in ("a", "b", "") for c in ("x", "y")]
    assert [state.on_failure(k, run_id=f"run-{i}", reason="r", now=SESSION_NOW).action
            for i, k in enumerate(keys)] == [PAGE] * len(keys)
    assert {a["check"] for a in state.open_alerts()} == {"x", "y"} and len(state.open_alerts()) == 6
    assert AlertKey("d", "", "x").id == "d/*/x"


def test_an_unreadable_state_file_starts_afresh_and_nothing_is_written_on_a_pass(tmp_path):
    path = tmp_path / "state.json"
    assert AlertState(path).on_success(VERIFY, run_id="r", now=SESSION_NOW) is None
    assert not path.exists()  # no file for the common case
    path.write_text("{not json")
    assert AlertState(path).on_failure(VERIFY, run_id="r", reason="x", now=SESSION_NOW).page
    assert json.loads(path.read_text())["open"]["backup_restore/trixtech-db/restore_verify"]["reason"] == "x"


def test_parallel_tasks_of_one_run_page_once(tmp_path):
    """Mapped checks failing at the same moment: the lock lets exactly one of them page."""
    state = AlertState(tmp_path / "state.json")
    out: list[str] = []
    threads = [threading.Thread(target=lambda i=i: out.append(state.on_failure(
        AlertKey("daily", f"s{i}", "check"), run_id="same-run", reason="r", now=SESSION_NOW).action)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == [PAGE] + [SAME_RUN] * 7


events = st.lists(st.tuples(st.sampled_from(["fail", "pass"]), st.sampled_from(["a", "b"]), st.booleans()),
                  max_size=30)


@settings(max_examples=150, deadline=None)
@given(events)
def test_property_pages_and_resolves_alternate_per_key(tmp_path_factory, seq):
    """Any sequence of runs (each run one event, sometimes a second failure in the same run): per key,
    pages and resolves alternate starting with a page; never two pages in one run; a resolve only follows
    a page; the state's open set is exactly the keys paged and not resolved."""
    state = AlertState(tmp_path_factory.mktemp("prop") / "state.json")
    history: dict[str, list[str]] = {"a": [], "b": []}
    for i, (kind, src, twice) in enumerate(seq):
        key = AlertKey("d", src, "c")
        if kind == "fail":
            pages = [state.on_failure(key, run_id=f"r{i}", reason="x", now=SESSION_NOW).page]
            if twice:
                pages.append(state.on_failure(AlertKey("d", src, "finish"), run_id=f"r{i}", reason="y",
                                              now=SESSION_NOW).page)
            assert pages.count(True) <= 1
            if pages[0]:
                history[src].append("page")
        elif state.on_success(key, run_id=f"r{i}", now=SESSION_NOW) is not None:
            history[src].append("resolve")
    for src, h in history.items():
        assert h == ["page", "resolve"] * (len(h) // 2) + (["page"] if len(h) % 2 else [])
    assert {a["source"] for a in state.open_alerts() if a["check"] == "c"} == {
        s for s, h in history.items() if h and h[-1] == "page"}


# -- four eyes -------------------------------------------------------------------------------------------
def test_the_requester_is_no_approver_under_four_eyes():
    assert eligible_approvers(["alice", "bob"], ["bob", "carol"], requester="alice", four_eyes=True) == ["bob", "carol"]
    assert eligible_approvers(["alice"], [], requester="alice", four_eyes=False) == ["alice"]
    assert eligible_approvers(["alice"], [], requester="alice", four_eyes=True) == []  # nobody left: refused early
    assert eligible_approvers([], [], requester="alice", four_eyes=True) is None  # anyone Airflow allows


@pytest.mark.parametrize("chosen, responder, requester, allowed, four_eyes, outcome", [
    (["Approve"], "bob", "alice", ["bob"], True, APPROVED),
    (["Approve"], "alice", "alice", None, True, REFUSED),  # no approvers configured: still not the requester
    (["Approve"], "alice", "alice", None, False, APPROVED),
    (["Approve"], "mallory", "alice", ["bob"], True, REFUSED),  # not an approver (e.g. an all-admins manager)
    (["Approve"], "bob", None, None, True, REFUSED),  # who asked is unknown: four eyes cannot be checked
    (["Reject"], "alice", "alice", None, True, REJECTED),  # rejecting one's own request is always fine
    (["Reject"], None, "alice", ["bob"], True, TIMED_OUT),  # Airflow's default answer after the timeout
])
def test_judge(chosen, responder, requester, allowed, four_eyes, outcome):
    verdict = judge(chosen, responder=responder, requester=requester, allowed=allowed, four_eyes=four_eyes,
                    timeout="4h")
    assert verdict.outcome == outcome
    assert "nothing was changed" in verdict.detail or outcome == APPROVED
    if outcome == TIMED_OUT:
        assert verdict.detail.startswith("no answer within 4h")


def test_who_may_approve_reads_well():
    assert describe_approvers(["bob"], "ops", ["bob", "carol"], requester="alice", four_eyes=True) == \
        "bob, carol (users bob; role ops), not the requester alice (four eyes)"
    assert describe_approvers([], None, None, requester=None, four_eyes=True) == \
        "anyone allowed to answer Required Actions"


# -- the approval timeout's notation (a parser: its rule is in docs/restore.md) --------------------------------
@pytest.mark.parametrize("text, seconds", [("4h", 14400), ("90min", 5400), ("1h30min", 5400), ("2d", 172800),
                                           ("45s", 45), ("1d2h3min4s", 93784)])
def test_timeouts_parse(text, seconds):
    assert parse_timeout(text) == seconds and parse_timeout(format_seconds(seconds)) == seconds


@pytest.mark.parametrize("text", ["30m", "4", "h", "", "4h4h", "1min1h", "4 h", "-1h", "1.5h", "4H"])
def test_timeouts_refused(text):
    with pytest.raises(ValueError, match="expected a duration like 4h"):
        parse_timeout(text)
    if text == "30m":
        with pytest.raises(ValueError, match="write min for minutes"):
            parse_timeout(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789dhmins -.", max_size=20) | st.text(max_size=20))
def test_timeout_fuzz_is_a_number_or_a_clear_error(text):
    try:
        seconds = parse_timeout(text)
    except ValueError as exc:
        assert "expected a duration" in str(exc)
    else:
        assert isinstance(seconds, int) and seconds >= 0 and format_seconds(seconds) and \
            parse_timeout(format_seconds(seconds)) == seconds


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=10**7))
def test_format_round_trips(seconds):
    assert parse_timeout(format_seconds(seconds)) == seconds


def test_a_new_problem_under_an_open_alert_pages_again(tmp_path):
    """The daily summarize (or the drill's report) covers many sources: one more of them failing is news."""
    state = AlertState(tmp_path / "state.json")
    key = AlertKey("backup_daily_verification", "", "summarize")
    first = ["database/a.dump: sha256"]
    assert state.on_failure(key, run_id="r1", reason="1 problem", now=SESSION_NOW, problems=first).page
    assert state.on_failure(key, run_id="r2", reason="1 problem", now=SESSION_NOW, problems=first).action == REPEAT
    both = [*first, "files/b.tar.gz: s3_copy"]
    again = state.on_failure(key, run_id="r3", reason="2 problems", now=SESSION_NOW, problems=both)
    assert again.page and again.open_since == SESSION_NOW.isoformat()  # the same open alert, paged for the news
    assert state.on_failure(key, run_id="r4", reason="1 problem", now=SESSION_NOW, problems=first[:1]).action == REPEAT
    assert state.on_success(key, run_id="r5", now=SESSION_NOW)["problems"] == sorted(both)
