"""Property tests (hypothesis) of the retention plan over random histories and policies.

Histories straddle the 2020/2021 year boundary (ISO week 2020-W53) with clustered
timestamps (several per hour and day, exact ties), random verification states and
holds; policies use random rules, zones with DST and odd offsets, and guard rails.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupkit.config import RetentionPolicy
from backupkit.retention import Candidate, RetentionRefused, plan_retention
from backupkit.retention.policy import (
    apply_policy,
    period_key,
    policy_is_empty,
    policy_zone,
    rule_counts,
    within_duration,
)

UTC = timezone.utc
BASE = datetime(2020, 11, 1, tzinfo=UTC)
SPAN_HOURS = 24 * 90
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Pacific/Auckland", "Asia/Kolkata", "Australia/Lord_Howe")
NOWS = (datetime(2021, 6, 1, tzinfo=UTC), BASE + timedelta(days=60))  # the second puts some in the future

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def histories(draw, min_size=0, max_size=40, states=("passed", "passed", "passed", "failed", "unverified"),
              holds=True, span=SPAN_HOURS):
    n = draw(st.integers(min_size, max_size))
    # Cluster: several backups per hour and day, exact ties, gaps of days.
    hours = draw(st.lists(st.integers(0, span), min_size=n, max_size=n))
    minutes = draw(st.lists(st.sampled_from((0, 0, 0, 15, 59)), min_size=n, max_size=n))
    result = []
    for i, (h, m) in enumerate(zip(hours, minutes)):
        state = draw(st.sampled_from(states))
        held = draw(st.sampled_from((None,) * 9 + ("legal hold",))) if holds else None
        result.append(Candidate(f"b{i:03d}", BASE + timedelta(hours=h, minutes=m), state,
                                size=draw(st.integers(0, 10**6)), held_reason=held))
    return result


@st.composite
def policies(draw):
    count = st.one_of(st.just(0), st.just(0), st.integers(1, 8))
    within = draw(st.one_of(st.none(), st.builds(
        lambda y, m, d, h: f"{y}y{m}m{d}d{h}h" if (y, m, d, h) != (0, 0, 0, 0) else "1d",
        st.integers(0, 0), st.integers(0, 2), st.integers(0, 20), st.integers(0, 30))))
    return RetentionPolicy(
        keep_last=draw(count), keep_hourly=draw(count), keep_daily=draw(count), keep_weekly=draw(count),
        keep_monthly=draw(count), keep_yearly=draw(count), keep_within=within,
        timezone=draw(st.sampled_from(ZONES)),
        max_delete_fraction=draw(st.sampled_from((0.0, 0.1, 0.5, 0.75, 1.0))),
        min_keep=draw(st.integers(0, 6)),
    )


def key(c):
    return (c.timestamp, c.name)


@SETTINGS
@given(histories(min_size=1), policies(), st.sampled_from(NOWS), st.booleans())
def test_newest_and_newest_verified_are_always_kept(backups, policy, now, expire):
    plan = plan_retention(backups, policy, now=now, expire_unverified=expire)
    newest = max(backups, key=key)
    assert plan.decision(newest.name).action != "delete"
    verified = [b for b in backups if b.verified == "passed"]
    if verified:
        assert plan.decision(max(verified, key=key).name).action != "delete"


@SETTINGS
@given(histories(), policies(), st.sampled_from(NOWS), st.booleans())
def test_planning_the_retained_backups_again_deletes_nothing(backups, policy, now, expire):
    """A sweep is idempotent: what a plan retains, the next plan retains too.

    Guard rails never change a decision (they refuse the plan as a whole), so this holds
    for refused plans as well.
    """
    first = plan_retention(backups, policy, now=now, expire_unverified=expire)
    retained = [b for b in backups if first.decision(b.name).action != "delete"]
    again = plan_retention(retained, policy, now=now, expire_unverified=expire)
    assert again.planned_deletions() == []
    # The only refusal left is for backups dated in the future (then named, and never deleted).
    assert not again.refused or (again.future() and again.violations[0].startswith(f"{len(again.future())} backup"))
    assert all(d.action != "delete" for d in first.future())


@SETTINGS
@given(histories(), policies(), st.sampled_from(NOWS), st.sets(st.sampled_from([f"b{i:03d}" for i in range(40)])))
def test_held_backups_are_never_deleted(backups, policy, now, hold_list):
    plan = plan_retention(backups, policy, held=hold_list, now=now)
    for b in backups:
        if b.held_reason or b.name in hold_list:
            d = plan.decision(b.name)
            assert d.action == "held" and d.reasons[0].startswith("held: ")
    assert not any(d.name in hold_list or d.action == "held" for d in plan.planned_deletions())


@SETTINGS
@given(histories(), policies(), st.sampled_from(NOWS), st.booleans())
def test_no_accepted_plan_breaks_a_guard_rail(backups, policy, now, complete):
    plan = plan_retention(backups, policy, now=now, listing_complete=complete)
    planned = plan.planned_deletions()
    if plan.refused:
        try:
            plan.deletions()
        except RetentionRefused as exc:
            assert exc.violations == plan.violations
        else:
            raise AssertionError("a refused plan handed out deletions")
        return
    deleted = plan.deletions()
    assert deleted == planned and complete
    assert len(deleted) <= policy.max_delete_fraction * len(backups) + 1e-9
    assert not deleted or len(backups) - len(deleted) >= policy.min_keep


@SETTINGS
@given(histories(min_size=1), policies(), st.sampled_from(NOWS), st.booleans(), st.data())
def test_a_bad_backup_never_costs_a_verified_one(backups, policy, now, expire, data):
    """Injecting a failed or unverified backup (typically newer, in a period that has a
    good one) changes nothing for any verified backup."""
    newest = max(b.timestamp for b in backups)
    when = data.draw(st.one_of(
        st.integers(-SPAN_HOURS * 60, 0).map(lambda m: newest + timedelta(minutes=m)),
        st.integers(0, 48 * 60).map(lambda m: newest + timedelta(minutes=m)),
        st.sampled_from([b.timestamp for b in backups]),
    ))
    bad = Candidate("zz-injected", when, data.draw(st.sampled_from(("failed", "unverified"))))
    before = plan_retention(backups, policy, now=now, expire_unverified=expire)
    after = plan_retention([*backups, bad], policy, now=now, expire_unverified=expire)
    for b in backups:
        if b.verified == "passed":
            assert after.decision(b.name).action == before.decision(b.name).action, b


def reference_keep(backups, policy, now):
    """restic's rules restated as sets (independent of the sequential loop): each rule
    keeps the newest backup of each of its N most recent periods, plus the oldest
    backup when there are fewer than N periods; keep_last the N newest; keep_within
    all newer than the cut-off."""
    if policy_is_empty(policy):
        return {b.name for b in backups}
    zone = policy_zone(policy)
    newest_first = sorted(backups, key=key, reverse=True)
    kept = set()
    for rule, n in rule_counts(policy).items():
        if rule == "last":
            kept |= {b.name for b in newest_first[:n]}
            continue
        periods: dict[int, str] = {}
        for b in newest_first:
            periods.setdefault(period_key(rule, b.timestamp.astimezone(zone)), b.name)
        kept |= set(list(periods.values())[:n])
        if len(periods) < n and newest_first:
            kept.add(newest_first[-1].name)
    within = within_duration(policy)
    if within is not None:
        past = [b.timestamp for b in backups if b.timestamp < now]
        if not past:
            kept |= {b.name for b in backups}
        else:
            cutoff = within.before(max(past), zone)  # Go's AddDate on the zone's wall clock
            kept |= {b.name for b in backups if b.timestamp > cutoff}
    return kept


@SETTINGS
@given(histories(states=("passed",), holds=False), policies(), st.sampled_from(NOWS))
def test_rules_match_the_set_formulation_of_restic(backups, policy, now):
    outcome = apply_policy(backups, policy, now=now)
    assert set(outcome.kept) == reference_keep(backups, policy, now)


@settings(SETTINGS, max_examples=400)
@given(st.one_of(histories(states=("passed",), holds=False),
                 histories(max_size=8, states=("passed",), holds=False, span=24 * 8)),
       policies(), st.sampled_from(NOWS), st.integers(-24 * 10, SPAN_HOURS + 24 * 10),
       st.sampled_from(("a", "b050", "zzz")))
def test_would_keep_answers_exactly_for_an_added_backup(backups, policy, now, hour, name):
    """``would_keep`` (used to expire unverified backups) equals actually adding it."""
    extra = Candidate(name, BASE + timedelta(hours=hour % (24 * 10) if hour % 3 == 0 else hour), "passed")
    outcome = apply_policy(backups, policy, now=now)
    with_extra = apply_policy([*backups, extra], policy, now=now)
    assert outcome.would_keep(extra.timestamp, extra.name) == (extra.name in with_extra.kept)
