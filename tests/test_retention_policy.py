"""Table tests of the retention policy and plan against hand-worked cases.

Every expected result below was worked out by hand from restic's algorithm (newest
first; a rule keeps a backup whose period differs from the last one it kept while it
has count left; the oldest is kept too while a rule has count left) and is written out
in full, reasons included, so any drift in semantics or wording fails a test.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from backupkit.config import RetentionPolicy
from backupkit.retention import Candidate, RetentionRefused, plan_retention
from backupkit.retention.policy import Duration, go_add_date, period_label

UTC = timezone.utc
NOW = datetime(2030, 1, 1, tzinfo=UTC)
NEWEST = ("newest backup", "newest verified backup")


def ts(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def passed(*stamps: str) -> list[Candidate]:
    return [Candidate(s, ts(s), "passed") for s in stamps]


def policy(**kw) -> RetentionPolicy:
    """A policy whose guard rails never refuse, to test the rules alone."""
    kw.setdefault("max_delete_fraction", 1.0)
    kw.setdefault("min_keep", 0)
    return RetentionPolicy(**kw)


def outcome(plan) -> dict[str, tuple[str, ...]]:
    """name -> reasons of everything kept; everything else must be a plain delete."""
    for d in plan.decisions:
        if d.action == "delete":
            assert d.reasons == ("not kept by any rule",), d
    return {d.name: d.reasons for d in plan.decisions if d.action == "keep"}


CASES = [
    pytest.param(
        dict(keep_daily=3, keep_weekly=2),
        ["2024-05-01T02:00", "2024-05-02T02:00", "2024-05-06T02:00", "2024-05-07T02:00",
         "2024-05-14T02:00", "2024-05-20T02:00"],
        {"2024-05-20T02:00": ("daily snapshot 1/3", "weekly snapshot 1/2", *NEWEST),
         "2024-05-14T02:00": ("daily snapshot 2/3", "weekly snapshot 2/2"),
         "2024-05-07T02:00": ("daily snapshot 3/3",)},
        id="gaps-of-several-days"),
    pytest.param(
        dict(keep_daily=2),
        ["2024-05-01T02:00", "2024-05-01T14:00", "2024-05-02T02:00", "2024-05-02T03:00"],
        {"2024-05-02T03:00": ("daily snapshot 1/2", *NEWEST),
         "2024-05-01T14:00": ("daily snapshot 2/2",)},
        id="two-backups-on-one-day"),
    pytest.param(
        dict(keep_daily=3),
        ["2024-05-01T02:00", "2024-05-01T14:00", "2024-05-02T02:00", "2024-05-02T03:00"],
        {"2024-05-02T03:00": ("daily snapshot 1/3", *NEWEST),
         "2024-05-01T14:00": ("daily snapshot 2/3",),
         "2024-05-01T02:00": ("oldest daily snapshot 3/3",)},
        id="count-left-keeps-the-oldest"),
    pytest.param(
        dict(keep_daily=30, keep_weekly=12),
        ["2024-05-01T02:00", "2024-05-03T02:00", "2024-05-09T02:00"],
        {"2024-05-09T02:00": ("daily snapshot 1/30", "weekly snapshot 1/12", *NEWEST),
         "2024-05-03T02:00": ("daily snapshot 2/30", "weekly snapshot 2/12"),
         "2024-05-01T02:00": ("daily snapshot 3/30", "oldest weekly snapshot 3/12")},
        id="fewer-backups-than-asked-keeps-all"),
    pytest.param(
        # 2020-12-28 .. 2021-01-03 is ISO week 2020-W53; weeks use the ISO year but
        # years use the calendar year, so 2021-01-01 is W53 of 2020 yet in year 2021.
        dict(keep_weekly=3, keep_yearly=2),
        ["2020-12-27T02:00", "2020-12-28T02:00", "2020-12-31T02:00", "2021-01-01T02:00",
         "2021-01-03T02:00", "2021-01-04T02:00"],
        {"2021-01-04T02:00": ("weekly snapshot 1/3", "yearly snapshot 1/2", *NEWEST),
         "2021-01-03T02:00": ("weekly snapshot 2/3",),
         "2020-12-31T02:00": ("yearly snapshot 2/2",),
         "2020-12-27T02:00": ("weekly snapshot 3/3",)},
        id="year-boundary-and-iso-week-53"),
    pytest.param(
        # In UTC all three of 2024-03-05 share a day; in New York 03:00Z and 04:30Z are
        # still 4 March (22:00, 23:30 EST).
        dict(keep_daily=2, timezone="America/New_York"),
        ["2024-03-04T12:00", "2024-03-05T03:00", "2024-03-05T04:30", "2024-03-05T06:00"],
        {"2024-03-05T06:00": ("daily snapshot 1/2", *NEWEST),
         "2024-03-05T04:30": ("daily snapshot 2/2",)},
        id="local-day-differs-from-utc-day"),
    pytest.param(
        dict(keep_daily=2),
        ["2024-03-04T12:00", "2024-03-05T03:00", "2024-03-05T04:30", "2024-03-05T06:00"],
        {"2024-03-05T06:00": ("daily snapshot 1/2", *NEWEST),
         "2024-03-04T12:00": ("daily snapshot 2/2",)},
        id="same-backups-in-utc"),
    pytest.param(
        # 2024-11-03 in New York: 05:30Z is 01:30 EDT, 06:30Z is 01:30 EST: one local hour.
        dict(keep_hourly=5, timezone="America/New_York"),
        ["2024-11-03T04:30", "2024-11-03T05:30", "2024-11-03T06:30"],
        {"2024-11-03T06:30": ("hourly snapshot 1/5", *NEWEST),
         "2024-11-03T04:30": ("hourly snapshot 2/5",)},
        id="dst-fall-back-repeats-an-hour"),
    pytest.param(
        # 02:00+14:00 (Kiritimati) is 12:00Z the previous day.
        dict(keep_daily=1),
        ["2024-05-01T23:00+00:00", "2024-05-02T02:00+14:00"],
        {"2024-05-01T23:00+00:00": ("daily snapshot 1/1", *NEWEST)},
        id="input-offsets-are-respected"),
    pytest.param(
        dict(keep_last=3),
        ["2024-05-01T02:00+00:00", "2024-05-01T02:00:00Z", "2024-05-01T04:00+02:00", "2024-05-01T02:00"],
        {"2024-05-01T04:00+02:00": ("last snapshot 1/3", *NEWEST),
         "2024-05-01T02:00:00Z": ("last snapshot 2/3",),
         "2024-05-01T02:00+00:00": ("last snapshot 3/3",)},
        id="same-timestamp-ordered-by-name"),
    pytest.param(
        # Latest 31 March; Go's AddDate(0, -1, 0) gives "31 February" = 2 March 2024.
        dict(keep_within="1m"),
        ["2024-03-01T10:00", "2024-03-02T10:00", "2024-03-02T10:01", "2024-03-31T10:00"],
        {"2024-03-31T10:00": ("within 1m", *NEWEST), "2024-03-02T10:01": ("within 1m",)},
        id="keep-within-month-overflow"),
    pytest.param(
        dict(keep_within="1d2h", keep_last=1),
        ["2024-05-09T10:00", "2024-05-09T10:00:01", "2024-05-10T12:00"],
        {"2024-05-10T12:00": ("within 1d2h", "last snapshot 1/1", *NEWEST),
         "2024-05-09T10:00:01": ("within 1d2h",)},
        id="keep-within-is-strict"),
    pytest.param(
        # restic on a host in Berlin: AddDate on the zone's wall clock, across the DST change
        # (10:00 CEST on 15 April minus a month is 10:00 CET on 15 March): the cut-off is
        # 09:00Z, not 08:00Z (the newest backup's fixed +02:00 offset; issue 9 item 15).
        dict(keep_within="1m", timezone="Europe/Berlin"),
        ["2024-03-15T08:30", "2024-03-15T09:00", "2024-03-15T09:01", "2024-04-15T08:00"],
        {"2024-04-15T08:00": ("within 1m", *NEWEST), "2024-03-15T09:01": ("within 1m",)},
        id="keep-within-across-dst-on-the-zone-clock"),
    pytest.param(
        dict(keep_monthly=2, keep_yearly=1),
        ["2023-12-31T23:00", "2024-01-31T02:00", "2024-02-01T02:00", "2024-02-29T02:00"],
        {"2024-02-29T02:00": ("monthly snapshot 1/2", "yearly snapshot 1/1", *NEWEST),
         "2024-01-31T02:00": ("monthly snapshot 2/2",)},
        id="monthly-and-yearly"),
    pytest.param(
        dict(),
        ["2024-05-01T02:00", "2024-05-02T02:00"],
        {"2024-05-02T02:00": ("policy is empty", *NEWEST), "2024-05-01T02:00": ("policy is empty",)},
        id="empty-policy-keeps-everything"),
    pytest.param(
        dict(keep_within="0d"),
        ["2024-05-01T02:00", "2024-05-02T02:00"],
        {"2024-05-02T02:00": ("policy is empty", *NEWEST), "2024-05-01T02:00": ("policy is empty",)},
        id="zero-duration-is-no-rule"),
]


@pytest.mark.parametrize("rules, stamps, expected", CASES)
def test_policy_table(rules, stamps, expected):
    plan = plan_retention(passed(*stamps), policy(**rules), now=NOW)
    assert outcome(plan) == expected
    assert not plan.refused
    assert [d.timestamp for d in plan.decisions] == sorted(ts(s) for s in stamps)  # oldest first


def test_restic_documented_example_keep_daily_4():
    """restic's docs (060_forget.rst): one backup every Sunday for 12 weeks, ``forget
    --keep-daily 4`` keeps the last four Sundays and removes the other eight."""
    sundays = [datetime(2019, 9, 1, 11, tzinfo=UTC) + timedelta(weeks=i) for i in range(12)]
    plan = plan_retention([Candidate(s.isoformat(), s, "passed") for s in sundays], policy(keep_daily=4), now=NOW)
    kept = [d.timestamp.date().isoformat() for d in plan.decisions if d.action == "keep"]
    assert kept == ["2019-10-27", "2019-11-03", "2019-11-10", "2019-11-17"]
    assert all(d.reasons[0] == "daily snapshot" + f" {4 - i}/4"
               for i, d in enumerate(x for x in plan.decisions if x.action == "keep"))
    assert plan.summary.delete == 8


def test_restic_documented_grandfather_policy_over_a_century():
    """restic's docs: with one backup a day for 100 years, ``--keep-daily 7 --keep-weekly 5
    --keep-monthly 12 --keep-yearly 75`` keeps 7 dailies, 4 more last-day-of-the-week
    ones, 11 or 12 last-day-of-the-month and 74 or 75 last-day-of-the-year ones.

    Hand-worked for a history ending on Sunday 2024-11-17: the dailies are exactly one
    ISO week, so 4 more Sundays; November's representative is a daily, so 11 month-ends
    (Dec 2023 .. Oct 2024); 2024's and 2023's yearly representatives are already kept, so
    73 more 31 Decembers (1950 .. 2022)."""
    end = date(2024, 11, 17)
    days = [end - timedelta(days=i) for i in range(36525)]
    cands = [Candidate(d.isoformat(), datetime(d.year, d.month, d.day, 3, tzinfo=UTC), "passed") for d in days]
    plan = plan_retention(cands, policy(keep_daily=7, keep_weekly=5, keep_monthly=12, keep_yearly=75), now=NOW)
    kept = [d for d in plan.decisions if d.action == "keep"]
    first = {d.name: d.rules[0] for d in kept}  # the finest rule that kept it
    daily = [n for n, r in first.items() if r == "daily"]
    weekly = [n for n, r in first.items() if r == "weekly"]
    monthly = [n for n, r in first.items() if r == "monthly"]
    yearly = [n for n, r in first.items() if r == "yearly"]
    assert daily == [(end - timedelta(days=i)).isoformat() for i in range(6, -1, -1)]
    assert weekly == ["2024-10-20", "2024-10-27", "2024-11-03", "2024-11-10"]
    assert all(date.fromisoformat(n).isoweekday() == 7 for n in weekly)
    assert len(monthly) == 11 and all((date.fromisoformat(n) + timedelta(days=1)).day == 1 for n in monthly)
    assert monthly[0] == "2023-12-31" and monthly[-1] == "2024-10-31"
    assert yearly == [f"{y}-12-31" for y in range(1950, 2023)]
    assert len(kept) == 7 + 4 + 11 + 73


def test_worked_example_in_the_readme():
    """The README's worked example, output and all, so the document stays true."""
    doc = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = doc.split("## Worked example", 1)[1].split("```")[1].strip().splitlines()
    table = [line.split(None, 3) for line in block[:-1]]
    states = {"trixtech_20240505_235000.dump": "failed", "trixtech_20240508_020000.dump": "unverified"}
    backups = [Candidate(name, ts(stamp), states.get(name, "passed")) for stamp, _, name, _ in table]
    pol = RetentionPolicy(keep_daily=3, keep_weekly=2, keep_monthly=2, min_keep=3)
    plan = plan_retention(backups, pol, now=ts("2024-05-08T12:00"))
    assert [(d.timestamp.isoformat(), d.action, d.name, ", ".join(d.reasons)) for d in plan.decisions] == [
        tuple(row) for row in table]
    assert block[-1] == "12 backups: keep 5, delete 7, held 0; 2 not verified"
    assert plan.violations == ("would delete 7 of 12 backups (58%), more than max_delete_fraction 0.5",)
    naive = plan_retention([Candidate(b.name, b.timestamp, "passed") for b in backups], pol, now=NOW)
    assert naive.decision("trixtech_20240505_020000.dump").action == "delete"
    assert naive.decision("trixtech_20240505_235000.dump").reasons == ("weekly snapshot 2/2",)


# --- durations and periods ------------------------------------------------------------


@pytest.mark.parametrize("when, ymd, expected", [
    ("2024-03-31T10:00", (0, -1, 0), "2024-03-02T10:00"),  # Feb 31 (leap year) rolls over
    ("2023-03-31T10:00", (0, -1, 0), "2023-03-03T10:00"),
    ("2024-02-29T00:00", (-1, 0, 0), "2023-03-01T00:00"),
    ("2024-01-15T05:00", (0, -1, 0), "2023-12-15T05:00"),
    ("2024-03-01T05:00", (0, 0, -1), "2024-02-29T05:00"),
    ("2024-01-31T05:00", (0, 0, -40), "2023-12-22T05:00"),
    ("2024-05-31T05:00", (-1, -18, -31), "2021-10-31T05:00"),  # month -13 of 2023 = Nov 2021, day 0
])
def test_go_add_date(when, ymd, expected):
    assert go_add_date(ts(when), *ymd) == ts(expected)


@pytest.mark.parametrize("text, parts", [
    ("1y6m2d3h", (1, 6, 2, 3)), ("2d", (0, 0, 2, 0)), ("36h", (0, 0, 0, 36)), (" 1y ", (1, 0, 0, 0)),
])
def test_duration_parse(text, parts):
    d = Duration.parse(text)
    assert (d.years, d.months, d.days, d.hours) == parts
    assert Duration.parse(str(d)) == d


@pytest.mark.parametrize("text", ["", "1w", "1h2d", "-1d", "1.5d", "y", "7"])
def test_duration_rejects(text):
    with pytest.raises(ValueError, match="1y6m2d3h"):
        Duration.parse(text)


@pytest.mark.parametrize("day, label", [
    ("2020-12-27", "2020-W52"), ("2020-12-31", "2020-W53"), ("2021-01-01", "2020-W53"),
    ("2021-01-03", "2020-W53"), ("2021-01-04", "2021-W01"), ("2024-12-30", "2025-W01"),
])
def test_iso_week_labels(day, label):
    assert period_label("weekly", ts(day + "T12:00")) == label


# --- verification ---------------------------------------------------------------------


def mixed(*specs: tuple[str, str]) -> list[Candidate]:
    return [Candidate(s, ts(s), state) for s, state in specs]


def test_injected_newer_backup_does_not_displace_the_verified_one():
    """restic alone would keep the newer (damaged) backup of 1 May and delete the good one."""
    backups = mixed(("2024-05-01T02:00", "passed"), ("2024-05-01T23:00", "failed"),
                    ("2024-04-30T02:00", "passed"), ("2024-05-02T02:00", "passed"))
    plan = plan_retention(backups, policy(keep_daily=2), now=NOW)
    assert plan.decision("2024-05-01T02:00").action == "keep"
    assert plan.decision("2024-05-01T02:00").reasons == ("daily snapshot 2/2",)
    bad = plan.decision("2024-05-01T23:00")
    assert bad.action == "delete"
    assert bad.reasons == ("verification failed; day 2024-05-01 is represented by verified 2024-05-01T02:00",)
    naive = plan_retention(passed(*(b.name for b in backups)), policy(keep_daily=2), now=NOW)
    assert naive.decision("2024-05-01T02:00").action == "delete"  # the attack this defeats


def test_unverified_kept_until_its_period_has_a_verified_representative():
    backups = mixed(("2024-05-01T02:00", "passed"), ("2024-05-02T02:00", "unverified"),
                    ("2024-05-03T02:00", "failed"), ("2024-05-03T04:00", "passed"),
                    ("2024-05-04T02:00", "passed"))
    plan = plan_retention(backups, policy(keep_daily=2), now=NOW)
    assert {d.name: (d.action, d.reasons) for d in plan.decisions} == {
        "2024-05-01T02:00": ("delete", ("not kept by any rule",)),
        "2024-05-02T02:00": ("keep", ("not verified; day 2024-05-02 has no verified representative",)),
        "2024-05-03T02:00": ("delete", ("verification failed; day 2024-05-03 is represented by verified "
                                        "2024-05-03T04:00",)),
        "2024-05-03T04:00": ("keep", ("daily snapshot 2/2",)),
        "2024-05-04T02:00": ("keep", ("daily snapshot 1/2", *NEWEST)),
    }
    assert plan.summary.not_verified == 2


def test_representative_period_is_the_finest_configured_rule():
    """With only weekly and monthly rules the week is the period: the verified (and
    kept) Thursday backup represents the unverified Wednesday one of the same ISO week."""
    backups = mixed(("2024-05-06T02:00", "passed"), ("2024-05-08T02:00", "unverified"),
                    ("2024-05-09T02:00", "passed"), ("2024-05-13T02:00", "passed"))
    plan = plan_retention(backups, policy(keep_weekly=2, keep_monthly=1), now=NOW)
    assert plan.decision("2024-05-08T02:00").reasons == (
        "not verified; week 2024-W19 is represented by verified 2024-05-09T02:00",)
    assert plan.decision("2024-05-08T02:00").action == "delete"
    hourly = plan_retention(backups, policy(keep_hourly=10, keep_weekly=2), now=NOW)
    assert hourly.decision("2024-05-08T02:00").reasons == (
        "not verified; hour 2024-05-08 02h has no verified representative",)


def test_keep_within_counts_back_from_the_newest_verified_backup():
    """A backup injected with a date far ahead must not move the keep_within window."""
    good = [("2024-05-0%dT02:00" % d, "passed") for d in range(1, 8)]
    backups = mixed(*good, ("2024-09-01T02:00", "unverified"))
    plan = plan_retention(backups, policy(keep_within="3d"), now=NOW)
    assert [d.name for d in plan.decisions if d.action == "keep"] == [
        "2024-05-05T02:00", "2024-05-06T02:00", "2024-05-07T02:00", "2024-09-01T02:00"]
    assert plan.decision("2024-09-01T02:00").reasons == (
        "newest backup", "not verified; day 2024-09-01 has no verified representative")


def test_future_backups_do_not_define_the_latest():
    """restic ignores backups dated after ``now`` when finding the latest for keep_within
    (and keeps them, being newer than any cut-off)."""
    backups = passed("2024-05-01T02:00", "2024-05-05T02:00", "2024-05-06T02:00", "2024-06-30T02:00")
    plan = plan_retention(backups, policy(keep_within="2d"), now=ts("2024-05-07T00:00"))
    assert [d.name for d in plan.decisions if d.action == "keep"] == [
        "2024-05-05T02:00", "2024-05-06T02:00", "2024-06-30T02:00"]


def test_everything_unverified_deletes_nothing():
    backups = mixed(*[("2024-05-%02dT02:00" % d, "unverified") for d in range(1, 21)])
    plan = plan_retention(backups, policy(keep_daily=3), now=NOW)
    assert plan.summary.delete == 0 and plan.summary.keep == 20


def test_failed_backup_outside_every_rule():
    """By default a failed backup whose period has no verified representative is kept
    even after every rule moved past it; ``expire_unverified`` deletes it then, and only
    then: the same backup inside a rule's reach stays."""
    backups = mixed(*[("2024-05-%02dT02:00" % d, "passed") for d in range(1, 11) if d != 3],
                    ("2024-05-03T02:00", "failed"), ("2024-05-08T01:00", "failed"))
    pol = policy(keep_daily=5)
    default = plan_retention(backups, pol, now=NOW)
    assert default.decision("2024-05-03T02:00").action == "keep"
    expiring = plan_retention(backups, pol, now=NOW, expire_unverified=True)
    old = expiring.decision("2024-05-03T02:00")
    assert (old.action, old.reasons) == ("delete", ("verification failed; no rule would keep it even if it had passed",))
    assert expiring.decision("2024-05-08T01:00").reasons == (
        "verification failed; day 2024-05-08 is represented by verified 2024-05-08T02:00",)
    # keep_daily=9 still reaches 3 May (it would be the 8th day): kept as unverified.
    reach = plan_retention(backups, policy(keep_daily=9), now=NOW, expire_unverified=True)
    assert reach.decision("2024-05-03T02:00").reasons == (
        "verification failed; day 2024-05-03 has no verified representative",)


def test_expiry_check_does_not_count_the_oldest_clause():
    """keep_daily=2 over two verified backups of 2 May uses its second count only on the
    oldest-clause; a failed backup of 1 May would take that count if it had passed, so
    it is within reach and kept, not expired."""
    backups = mixed(("2024-05-02T02:00", "passed"), ("2024-05-02T03:00", "passed"),
                    ("2024-05-01T02:00", "failed"))
    plan = plan_retention(backups, policy(keep_daily=2), now=NOW, expire_unverified=True)
    assert plan.decision("2024-05-02T02:00").reasons == ("oldest daily snapshot 2/2",)
    assert plan.decision("2024-05-01T02:00").reasons == (
        "verification failed; day 2024-05-01 has no verified representative",)
    assert plan.decision("2024-05-01T02:00").action == "keep"


# --- guard rails ----------------------------------------------------------------------


def daily_history(n: int, start: str = "2024-05-01T02:00") -> list[Candidate]:
    first = ts(start)
    return [Candidate(f"b{i:03d}", first + timedelta(days=i), "passed", size=1000 + i) for i in range(n)]


def test_newest_backup_is_never_deleted_even_unverified_and_superseded():
    backups = mixed(("2024-05-01T02:00", "passed"), ("2024-05-01T03:00", "unverified"))
    plan = plan_retention(backups, policy(keep_daily=1), now=NOW)
    assert plan.decision("2024-05-01T03:00").action == "keep"
    assert plan.decision("2024-05-01T03:00").reasons[0] == "newest backup"
    assert plan.decision("2024-05-01T02:00").reasons == ("daily snapshot 1/1", "newest verified backup")


def test_held_backups_are_never_deleted():
    backups = daily_history(6)
    backups[0] = Candidate("b000", backups[0].timestamp, "passed", held_reason="S3 legal hold")
    plan = plan_retention(backups, policy(keep_last=2), held={"b001", "not-there"}, now=NOW)
    assert plan.decision("b000").action == "held" and plan.decision("b000").reasons == ("held: S3 legal hold",)
    assert plan.decision("b001").reasons == ("held: on the hold list",)
    assert [d.name for d in plan.deletions()] == ["b002", "b003"]
    assert plan.summary.held == 2 and plan.summary.bytes_to_free == 1002 + 1003


def test_refuses_deleting_more_than_the_fraction():
    backups = daily_history(10)
    plan = plan_retention(backups, RetentionPolicy(keep_daily=3, max_delete_fraction=0.5, min_keep=1), now=NOW)
    assert plan.refused and len(plan.planned_deletions()) == 7
    assert plan.violations == ("would delete 7 of 10 backups (70%), more than max_delete_fraction 0.5",)
    with pytest.raises(RetentionRefused, match="would delete 7 of 10") as exc:
        plan.deletions()
    assert exc.value.violations == plan.violations
    exactly = plan_retention(backups, RetentionPolicy(keep_daily=3, max_delete_fraction=0.7, min_keep=1), now=NOW)
    assert not exactly.refused and len(exactly.deletions()) == 7  # 70% is not more than 0.7


def test_refuses_leaving_fewer_than_min_keep():
    plan = plan_retention(daily_history(4), RetentionPolicy(keep_daily=3, min_keep=4), now=NOW)
    assert plan.violations == ("would leave 3 backups, fewer than min_keep 4",)
    # Fewer backups than min_keep but nothing to delete: nothing to refuse.
    young = plan_retention(daily_history(2), RetentionPolicy(keep_daily=3, min_keep=4), now=NOW)
    assert not young.refused and young.deletions() == []


def test_incomplete_listing_refuses():
    plan = plan_retention(daily_history(3), policy(keep_daily=3), listing_complete=False, now=NOW)
    assert plan.refused and plan.planned_deletions() == []
    with pytest.raises(RetentionRefused, match="listing"):
        plan.deletions()


def test_summary_counts_per_rule():
    plan = plan_retention(daily_history(20), policy(keep_daily=3, keep_weekly=3), now=NOW)
    s = plan.summary
    assert (s.total, s.keep, s.delete, s.held) == (20, 4, 16, 0)
    assert s.by_rule == {"daily": 3, "newest": 1, "newest-verified": 1, "weekly": 3}
    assert s.bytes_to_free == sum(1000 + i for i in range(20)) - sum(
        d.size for d in plan.decisions if d.action == "keep")


def test_no_backups_is_an_empty_plan():
    plan = plan_retention([], policy(keep_daily=3), now=NOW)
    assert plan.decisions == () and not plan.refused and plan.deletions() == []


@pytest.mark.parametrize("bad, message", [
    (lambda: Candidate("x", datetime(2024, 5, 1), "passed"), "timezone-aware"),
    (lambda: Candidate("x", ts("2024-05-01T00:00"), "ok"), "verified must be one of"),
    (lambda: plan_retention(passed("2024-05-01T00:00") * 2, policy(keep_last=1), now=NOW), "unique"),
])
def test_invalid_input_is_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()
