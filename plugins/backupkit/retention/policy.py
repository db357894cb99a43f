"""The retention rules themselves: restic's ``forget`` algorithm, in pure Python.

Shaped like restic's ``internal/data/snapshot_policy.go``: one rules-only struct
(:class:`Rules`, restic's ``ExpirePolicy``), one pure function (:func:`apply_policy`,
``ApplyPolicy``) and ONE table of bucket functions (:data:`BUCKETS`: restic's ``ymdh``,
``ymd``, ``yw``, ``ym``, ``y``, ``always``). The table is the only place the calendar is
encoded: the planner (a period's verified representative), the audit's gap and overdue
controls, the lock horizon of kept backups and the health page all ask it.

restic's semantics, reproduced exactly (golden files generated with restic's own code:
``tests/golden/``): backups are walked newest first; each bucket rule keeps a backup when
its period differs from the period the rule kept last and the rule still has count left;
when a rule still has count left at the oldest backup, the oldest is kept too ("oldest
daily snapshot"). ``keep_within`` keeps every backup newer than the newest (non-future)
backup minus the duration, computed as Go's ``AddDate`` on a ``time.Time`` in the policy's
zone (:func:`go_date`): the calendar part on the zone's wall clock with the zone's DST
rules, the hours absolute. Periods are the wall clock of the policy's zone, which is what
restic does on a host in that zone (a snapshot's stored time parses into the local zone).

This module knows nothing about verification, holds or guard rails; the caller
(:mod:`backupkit.retention.plan`) decides which backups the rules see.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Callable, Protocol, Sequence
from zoneinfo import ZoneInfo

from backupkit.config import RetentionPolicy

_EPOCH = datetime(1970, 1, 1)


class Dated(Protocol):
    """Anything the rules can order: a unique name and an aware timestamp."""

    name: str
    timestamp: datetime


def order_key(item: Dated) -> tuple[datetime, str]:
    """Total order of backups: their own timestamp, then the name to break ties."""
    return (item.timestamp, item.name)


# --- Go's calendar arithmetic ------------------------------------------------------------


def _offset_at(unix: float, zone: tzinfo) -> float:
    return datetime.fromtimestamp(unix, zone).utcoffset().total_seconds()


def go_date(wall: datetime, zone: tzinfo) -> datetime:
    """Go's ``time.Date(y, m, d, h, min, s, ns, loc)`` for the wall-clock fields of ``wall``.

    Go normalises the wall clock to an instant by guessing the zone offset in effect at the
    wall time read as UTC, then re-reading the offset at the instant that guess gives. So a
    wall time in a DST gap or fold resolves as Go resolves it (in Berlin's autumn fold,
    02:30 is the second 02:30, CET; in New York's, 01:30 is the first, EDT), which is not
    always what ``zoneinfo``'s ``fold=0`` would pick.
    """
    unix = (wall.replace(tzinfo=None) - _EPOCH).total_seconds()
    offset = _offset_at(unix - _offset_at(unix, zone), zone)
    # In UTC: arithmetic on a zoneinfo datetime is wall-clock arithmetic and drops ``fold``.
    return datetime.fromtimestamp(unix - offset, timezone.utc)


def _wall_add(wall: datetime, years: int, months: int, days: int) -> datetime:
    """Add on the calendar as Go's ``Date`` normalises: month overflow into years, day overflow
    counted from the first of the month (31 March minus one month is "31 February")."""
    month0 = wall.month - 1 + months
    year = wall.year + years + month0 // 12
    day = date(year, month0 % 12 + 1, 1) + timedelta(days=wall.day - 1 + days)
    return wall.replace(year=day.year, month=day.month, day=day.day)


def go_add_date(when: datetime, years: int, months: int, days: int, zone: tzinfo | None = None) -> datetime:
    """Go's ``t.AddDate(years, months, days)`` for ``t`` = ``when`` in ``zone`` (default: its own tzinfo)."""
    zone = zone or when.tzinfo
    local = when.astimezone(zone)
    return go_date(_wall_add(local.replace(tzinfo=None), years, months, days), zone)


# --- durations (restic's ``--keep-within``) -------------------------------------------

_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?$")


@dataclass(frozen=True)
class Duration:
    """restic's calendar duration ``1y6m2d3h``: years, months and days on the calendar, hours absolute."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> "Duration":
        """Parse ``1y6m2d3h`` (units in this order, each optional, at least one)."""
        m = _DURATION.match(text.strip())
        if not text.strip() or not m:
            raise ValueError(f"expected a duration like 1y6m2d3h (restic style), got {text!r}")
        return cls(*(int(g or 0) for g in m.groups()))

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def before(self, when: datetime, zone: tzinfo) -> datetime:
        """``when`` minus this duration: Go's ``t.AddDate(-y, -m, -d).Add(-h)`` with ``t`` in ``zone``."""
        return go_add_date(when, -self.years, -self.months, -self.days, zone) - timedelta(hours=self.hours)

    def after(self, when: datetime, zone: tzinfo) -> datetime:
        """``when`` plus this duration, the same way."""
        return go_add_date(when, self.years, self.months, self.days, zone) + timedelta(hours=self.hours)

    def __str__(self) -> str:
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{n}{u}" for n, u in parts if n) or "0h"


# --- the one table of bucket functions --------------------------------------------------


def _hour_start(w: datetime) -> datetime:
    return w.replace(minute=0, second=0, microsecond=0)


def _day_start(w: datetime) -> datetime:
    return w.replace(hour=0, minute=0, second=0, microsecond=0)


def _week_start(w: datetime) -> datetime:
    return _day_start(w) - timedelta(days=w.weekday())


def _month_start(w: datetime) -> datetime:
    return _day_start(w).replace(day=1)


def _year_start(w: datetime) -> datetime:
    return _month_start(w).replace(month=1)


def _add_months(w: datetime, n: int) -> datetime:
    m0 = w.month - 1 + n
    return w.replace(year=w.year + m0 // 12, month=m0 % 12 + 1)


@dataclass(frozen=True)
class BucketRule:
    """One row of restic's bucket table, plus what the other jobs need of the same period.

    All functions take and return *wall-clock* times of the policy's zone (naive or aware:
    only the fields are read): ``key`` is restic's bucker value, ``start`` the first wall
    instant of the period containing a time, ``shift(start, n)`` the start of the period
    ``n`` periods later (negative: earlier).
    """

    rule: str
    reason: str  # restic's reason text
    unit: str  # for people: "day", "ISO week", ...
    key: Callable[[datetime], int]
    label: Callable[[datetime], str]
    start: Callable[[datetime], datetime]
    shift: Callable[[datetime, int], datetime]


BUCKETS: dict[str, BucketRule] = {
    "hourly": BucketRule(
        "hourly", "hourly snapshot", "hour",
        lambda w: w.year * 1_000_000 + w.month * 10_000 + w.day * 100 + w.hour,
        lambda w: f"{w:%Y-%m-%d} {w.hour:02d}h", _hour_start, lambda s, n: s + timedelta(hours=n)),
    "daily": BucketRule(
        "daily", "daily snapshot", "day",
        lambda w: w.year * 10_000 + w.month * 100 + w.day,
        lambda w: f"{w:%Y-%m-%d}", _day_start, lambda s, n: s + timedelta(days=n)),
    "weekly": BucketRule(
        "weekly", "weekly snapshot", "week",
        lambda w: w.isocalendar()[0] * 100 + w.isocalendar()[1],
        lambda w: f"{w.isocalendar()[0]}-W{w.isocalendar()[1]:02d}", _week_start,
        lambda s, n: s + timedelta(weeks=n)),
    "monthly": BucketRule(
        "monthly", "monthly snapshot", "month",
        lambda w: w.year * 100 + w.month, lambda w: f"{w:%Y-%m}", _month_start, _add_months),
    "yearly": BucketRule(
        "yearly", "yearly snapshot", "year",
        lambda w: w.year, lambda w: f"{w.year}", _year_start, lambda s, n: s.replace(year=s.year + n)),
}
CALENDAR_RULES = tuple(BUCKETS)  # finest to coarsest
RULE_ORDER = ("last", *CALENDAR_RULES)  # restic's evaluation order; keep_last buckets by position
RULE_REASON = {"last": "last snapshot", **{r: b.reason for r, b in BUCKETS.items()}}


def period_key(rule: str, local: datetime) -> int:
    """restic's bucket value of a wall-clock time (``ymdh``, ``ymd``, ``yw``, ``ym``, ``y``)."""
    return _bucket(rule).key(local)


def period_label(rule: str, local: datetime) -> str:
    """Human form of a period: ``2024-05-03 14h``, ``2024-05-03``, ``2020-W53``, ``2024-05``, ``2024``."""
    return _bucket(rule).label(local)


def _bucket(rule: str) -> BucketRule:
    try:
        return BUCKETS[rule]
    except KeyError:
        raise ValueError(f"not a calendar rule: {rule!r}") from None


@dataclass(frozen=True)
class Period:
    rule: str
    key: int
    label: str
    start: datetime  # aware instant (Go's resolution of the wall-clock start)


def recent_periods(rule: str, now: datetime, count: int, zone: tzinfo) -> list[Period]:
    """The ``count`` complete periods of ``rule`` before the one ``now`` is in, newest first.

    What the audit's gap control and the health page walk ("each of the last n days has a backup").
    """
    b = _bucket(rule)
    current = b.start(now.astimezone(zone).replace(tzinfo=None))
    out = []
    for n in range(1, count + 1):
        wall = b.shift(current, -n)
        out.append(Period(rule, b.key(wall), b.label(wall), go_date(wall, zone)))
    return out


# --- the rules-only struct ------------------------------------------------------------------


def zone_named(name: str) -> tzinfo:
    return timezone.utc if name in ("UTC", "Etc/UTC") else ZoneInfo(name)


@dataclass(frozen=True)
class Rules:
    """restic's ``ExpirePolicy``: counts per bucket rule, ``keep_within``, and the zone periods are taken in.

    Rules only: guard rails, verification and holds live in the plan.
    """

    counts: tuple[tuple[str, int], ...]  # configured rules (count > 0) in restic's evaluation order
    within: Duration | None
    zone: tzinfo
    zone_name: str = "UTC"

    @classmethod
    def of(cls, policy: "RetentionPolicy | Rules") -> "Rules":
        if isinstance(policy, Rules):
            return policy
        counts = {"last": policy.keep_last, "hourly": policy.keep_hourly, "daily": policy.keep_daily,
                  "weekly": policy.keep_weekly, "monthly": policy.keep_monthly, "yearly": policy.keep_yearly}
        within = Duration.parse(policy.keep_within) if policy.keep_within else None
        return cls(tuple((r, n) for r, n in counts.items() if n > 0),
                   None if within is None or within.is_zero() else within,
                   zone_named(policy.timezone), policy.timezone)

    @property
    def empty(self) -> bool:
        """No rule at all (a zero duration like ``0d`` is no rule, as in restic): keep everything."""
        return not self.counts and self.within is None

    @property
    def finest(self) -> str:
        """The finest calendar rule used; the day when there is only keep_last/keep_within."""
        used = dict(self.counts)
        return next((r for r in CALENDAR_RULES if r in used), "daily")

    def __str__(self) -> str:
        """restic's ``ExpirePolicy.String()``."""
        parts = [f"{n} {'latest' if rule == 'last' else rule}" for rule, n in self.counts]
        text = f"keep {', '.join(parts)} snapshots" if parts else ""
        if self.within is not None:
            text += (" and " if text else "keep ") + f"all within {self.within} of the newest verified"
        return text or "empty policy: keep everything"


def policy_zone(policy: RetentionPolicy) -> tzinfo:
    return zone_named(policy.timezone)


def rule_counts(policy: RetentionPolicy) -> dict[str, int]:
    """The configured bucket rules (count > 0) in restic's evaluation order."""
    return dict(Rules.of(policy).counts)


def finest_rule(policy: RetentionPolicy) -> str:
    return Rules.of(policy).finest


def within_duration(policy: RetentionPolicy) -> Duration | None:
    return Rules.of(policy).within


def policy_is_empty(policy: RetentionPolicy) -> bool:
    return Rules.of(policy).empty


def describe_policy(policy: RetentionPolicy) -> str:
    """One line, restic's "Applying Policy" style, plus the zone and the guard rails."""
    return (f"{Rules.of(policy)}; periods in {policy.timezone}; refuse to delete more than "
            f"{policy.max_delete_fraction:.0%} or leave fewer than {policy.min_keep}")


# --- the algorithm --------------------------------------------------------------------


@dataclass(frozen=True)
class Keep:
    """Why the rules kept one backup: rule ids, restic-like reasons, and per bucket rule the
    count it used here (``(rule, k, n)``: the k-th of n)."""

    rules: tuple[str, ...]
    reasons: tuple[str, ...]
    counts: tuple[tuple[str, int, int], ...] = ()


@dataclass
class PolicyOutcome:
    """What the rules keep among the backups they were given, and enough of the rule
    state to answer "would this other backup have been kept had it been among them?"."""

    rules: Rules
    kept: dict[str, Keep]
    latest: datetime | None  # newest non-future timestamp (restic's findLatestTimestamp)
    cutoff: datetime | None  # keep_within keeps timestamps strictly after this
    top: dict[str, int] = field(default_factory=dict)  # bucket rule -> period key of the newest backup
    # The evaluated backups oldest first; per bucket rule, newest-first lists of the
    # count used before each position (one extra entry: past the oldest) and of the
    # period key at each position.
    _ascending: list[tuple[datetime, str]] = field(default_factory=list, repr=False)
    _used_before: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _keys: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @property
    def zone(self) -> tzinfo:
        return self.rules.zone

    def would_keep(self, timestamp: datetime, name: str) -> bool:
        """Would the rules keep a backup at ``(timestamp, name)`` had it been among the
        evaluated ones (the others unchanged)? Meant for backups that were not.

        Exact for restic's algorithm: the backups newer than it are evaluated the same
        with or without it, so its fate depends only on the rule state at its position
        (count used so far, period of the backup just before it, whether it is oldest).
        """
        if self.rules.empty:
            return True
        if self.rules.within is not None and (self.cutoff is None or timestamp > self.cutoff):
            return True
        total = len(self._ascending)
        idx = total - bisect_right(self._ascending, (timestamp, name))  # how many are newer
        local = timestamp.astimezone(self.zone)
        for rule, n in self.rules.counts:
            if self._used_before[rule][idx] >= n:
                continue  # the rule's count is used up before reaching this position
            if rule == "last" or idx == 0 or idx == total:  # new "last", first period, or oldest
                return True
            if period_key(rule, local) != self._keys[rule][idx - 1]:
                return True
        return False


def apply_policy(items: Sequence[Dated], policy: "RetentionPolicy | Rules", *, now: datetime) -> PolicyOutcome:
    """Run restic's ``ApplyPolicy`` over ``items`` (all of which count for the rules).

    ``now`` only matters for ``keep_within``: like restic, a backup dated in the future
    does not become the "latest" the duration is counted back from.
    """
    rules = Rules.of(policy)
    ordered = sorted(items, key=order_key, reverse=True)
    names = [i.name for i in ordered]
    if len(set(names)) != len(names):
        raise ValueError("backup names must be unique")
    outcome = PolicyOutcome(rules=rules, kept={}, latest=None, cutoff=None,
                            _ascending=[order_key(i) for i in reversed(ordered)])
    if rules.empty:
        outcome.kept = {i.name: Keep(("empty",), ("policy is empty",)) for i in ordered}
        return outcome

    past = [i.timestamp for i in ordered if i.timestamp < now]
    outcome.latest = max(past) if past else None
    if rules.within is not None and outcome.latest is not None:
        outcome.cutoff = rules.within.before(outcome.latest, rules.zone)

    counts = dict(rules.counts)
    remaining = dict(counts)
    last_val: dict[str, int | None] = {r: None for r in counts}
    used_before: dict[str, list[int]] = {r: [] for r in counts}
    keys: dict[str, list[int]] = {r: [] for r in counts}
    final = len(ordered) - 1
    oldest_clause: set[str] = set()
    for nr, item in enumerate(ordered):
        local = item.timestamp.astimezone(rules.zone)
        kept_rules: list[str] = []
        reasons: list[str] = []
        used: list[tuple[str, int, int]] = []
        if rules.within is not None and (outcome.cutoff is None or item.timestamp > outcome.cutoff):
            kept_rules.append("within")
            reasons.append(f"within {rules.within}")
        for rule, n in counts.items():
            used_before[rule].append(n - remaining[rule])
            val = nr if rule == "last" else BUCKETS[rule].key(local)
            keys[rule].append(val)
            if remaining[rule] <= 0:
                continue
            if val != last_val[rule] or nr == final:
                text = RULE_REASON[rule]
                if val == last_val[rule]:
                    text = f"oldest {text}"  # kept only because the rule had count left
                    oldest_clause.add(rule)
                last_val[rule] = val
                remaining[rule] -= 1
                kept_rules.append(rule)
                reasons.append(f"{text} {n - remaining[rule]}/{n}")
                used.append((rule, n - remaining[rule], n))
        if kept_rules:
            outcome.kept[item.name] = Keep(tuple(kept_rules), tuple(reasons), tuple(used))
    # Position past the oldest. A backup inserted there would make the current oldest
    # an ordinary one, so a count the oldest-clause used is not counted as used.
    for rule, n in counts.items():
        used_before[rule].append(n - remaining[rule] - (1 if rule in oldest_clause else 0))
    outcome._used_before = used_before
    outcome._keys = keys
    if ordered:
        newest = ordered[0].timestamp.astimezone(rules.zone)
        outcome.top = {r: BUCKETS[r].key(newest) for r in counts if r != "last"}
    return outcome


# --- how long a kept backup stays kept (for "lock what you keep") ------------------------------

LOCK_MARGIN = timedelta(days=1)  # the day on which the policy drops it: a night's backup, its check, the sweep


def keep_horizon(outcome: PolicyOutcome, item: Dated, *, now: datetime) -> datetime | None:
    """The earliest moment the rules could stop keeping ``item`` (kept by them), else None.

    Per calendar rule that kept it as the k-th of n: once its period is complete, it stays
    until ``n - k + 1`` newer periods have a backup, which can happen no earlier than the
    start of the ``(n - k + 1)``-th period a new backup can open (the current one if it has
    no backup yet, else the next). A period still open gives no horizon (a later backup of
    the same period would take its place). ``keep_within``: the first day on which the
    newest backup's cut-off could pass it. ``keep_last`` gives none (it depends on how many
    backups are made, not on the calendar). The horizon is the latest over its rules.
    """
    keep = outcome.kept.get(item.name)
    if keep is None:
        return None
    zone = outcome.rules.zone
    now_wall = now.astimezone(zone).replace(tzinfo=None)
    item_wall = item.timestamp.astimezone(zone).replace(tzinfo=None)
    horizons: list[datetime] = []
    for rule, k, n in keep.counts:
        if rule == "last":
            continue
        b = BUCKETS[rule]
        current = b.start(now_wall)
        if b.start(item_wall) >= current:
            continue  # its period is still open
        first_new = current if b.key(now_wall) != outcome.top.get(rule) else b.shift(current, 1)
        horizons.append(max(now, go_date(b.shift(first_new, n - k), zone)))
    if "within" in keep.rules and outcome.rules.within is not None:
        horizons.append(_within_horizon(outcome.rules, item.timestamp, now))
    return max(horizons) if horizons else None


def _within_horizon(rules: Rules, timestamp: datetime, now: datetime) -> datetime:
    """The start of the first day (from today) whose end, as the newest backup, would put
    ``timestamp`` at or before the keep_within cut-off. Go's month arithmetic is not
    monotonic (31 March minus a month is 2 or 3 March, 1 April minus a month is 1 March),
    so the days are walked rather than the duration inverted."""
    zone, within = rules.zone, rules.within
    day = _day_start(now.astimezone(zone).replace(tzinfo=None))
    limit = within.after(timestamp, zone) + timedelta(days=4)
    while go_date(day, zone) < limit:
        end_of_day = go_date(day + timedelta(days=1), zone) - timedelta(microseconds=1)
        if within.before(end_of_day, zone) >= timestamp:
            return max(now, go_date(day, zone))
        day += timedelta(days=1)
    return max(now, limit)
