"""The retention rules themselves: restic's ``forget`` algorithm, in pure Python.

restic's semantics are what users already know, so they are reproduced exactly
(``internal/restic/snapshot_policy.go``, restic 0.17): backups are walked newest first;
each bucket rule (last, hourly, daily, weekly, monthly, yearly) keeps a backup when its
period differs from the period the rule kept last and the rule still has count left;
when a rule still has count left at the oldest backup, the oldest is kept too
("oldest daily snapshot"). ``keep_within`` keeps every backup newer than the newest
(non-future) backup minus the duration. Weeks are ISO weeks (``year*100 + week`` of
the ISO year). Periods are taken on the wall clock of the policy's time zone, which is
what restic does for snapshots taken on a host in that zone.

This module knows nothing about verification, holds or guard rails; the caller
(:mod:`backupkit.retention.plan`) decides which backups the rules see.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Protocol, Sequence
from zoneinfo import ZoneInfo

from backupkit.config import RetentionPolicy

# Bucket rules in restic's evaluation order, with restic's reason text.
RULE_REASON = {
    "last": "last snapshot",
    "hourly": "hourly snapshot",
    "daily": "daily snapshot",
    "weekly": "weekly snapshot",
    "monthly": "monthly snapshot",
    "yearly": "yearly snapshot",
}
# Calendar rules from finest to coarsest (keep_last has no period).
CALENDAR_RULES = ("hourly", "daily", "weekly", "monthly", "yearly")


class Dated(Protocol):
    """Anything the rules can order: a unique name and an aware timestamp."""

    name: str
    timestamp: datetime


def order_key(item: Dated) -> tuple[datetime, str]:
    """Total order of backups: their own timestamp, then the name to break ties."""
    return (item.timestamp, item.name)


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

    def before(self, when: datetime) -> datetime:
        """``when`` minus this duration, as Go's ``t.AddDate(-y, -m, -d).Add(-h)``.

        The calendar part is done on ``when``'s own wall clock and UTC offset (a
        snapshot's time in restic carries the fixed offset it was taken at), with Go's
        normalisation: 31 March minus one month is "31 February", i.e. 2 or 3 March.
        """
        return go_add_date(when, -self.years, -self.months, -self.days) - timedelta(hours=self.hours)

    def __str__(self) -> str:
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{n}{u}" for n, u in parts if n) or "0h"


def go_add_date(when: datetime, years: int, months: int, days: int) -> datetime:
    """Go's ``time.AddDate``: add on the wall clock, overflowing days roll into the next month."""
    month0 = when.month - 1 + months
    year = when.year + years + month0 // 12
    month = month0 % 12 + 1
    # Go normalises day overflow by counting days from the first of the month.
    day = date(year, month, 1) + timedelta(days=when.day - 1 + days)
    return when.replace(year=day.year, month=day.month, day=day.day)


# --- periods --------------------------------------------------------------------------


def period_key(rule: str, local: datetime) -> int:
    """restic's bucket value for a wall-clock time (``ymdh``, ``ymd``, ``yw``, ``ym``, ``y``)."""
    if rule == "hourly":
        return local.year * 1_000_000 + local.month * 10_000 + local.day * 100 + local.hour
    if rule == "daily":
        return local.year * 10_000 + local.month * 100 + local.day
    if rule == "weekly":
        iso_year, week, _ = local.isocalendar()
        return iso_year * 100 + week
    if rule == "monthly":
        return local.year * 100 + local.month
    if rule == "yearly":
        return local.year
    raise ValueError(f"not a calendar rule: {rule!r}")


def period_label(rule: str, local: datetime) -> str:
    """Human form of a period: ``2024-05-03 14h``, ``2024-05-03``, ``2020-W53``, ``2024-05``, ``2024``."""
    if rule == "hourly":
        return f"{local:%Y-%m-%d} {local.hour:02d}h"
    if rule == "daily":
        return f"{local:%Y-%m-%d}"
    if rule == "weekly":
        iso_year, week, _ = local.isocalendar()
        return f"{iso_year}-W{week:02d}"
    if rule == "monthly":
        return f"{local:%Y-%m}"
    if rule == "yearly":
        return f"{local.year}"
    raise ValueError(f"not a calendar rule: {rule!r}")


def policy_zone(policy: RetentionPolicy) -> tzinfo:
    return timezone.utc if policy.timezone in ("UTC", "Etc/UTC") else ZoneInfo(policy.timezone)


def rule_counts(policy: RetentionPolicy) -> dict[str, int]:
    """The configured bucket rules (count > 0) in restic's evaluation order."""
    counts = {
        "last": policy.keep_last,
        "hourly": policy.keep_hourly,
        "daily": policy.keep_daily,
        "weekly": policy.keep_weekly,
        "monthly": policy.keep_monthly,
        "yearly": policy.keep_yearly,
    }
    return {rule: n for rule, n in counts.items() if n > 0}


def finest_rule(policy: RetentionPolicy) -> str:
    """The finest calendar granularity the policy uses; the day when it only has keep_last/keep_within."""
    counts = rule_counts(policy)
    return next((r for r in CALENDAR_RULES if r in counts), "daily")


def within_duration(policy: RetentionPolicy) -> Duration | None:
    if not policy.keep_within:
        return None
    d = Duration.parse(policy.keep_within)
    return None if d.is_zero() else d


def policy_is_empty(policy: RetentionPolicy) -> bool:
    """No rule at all (a zero duration like ``0d`` is no rule, as in restic): keep everything."""
    return not rule_counts(policy) and within_duration(policy) is None


def describe_policy(policy: RetentionPolicy) -> str:
    """One line, restic's "Applying Policy" style, plus the zone and the guard rails."""
    counts = rule_counts(policy)
    parts = [f"{n} {'latest' if rule == 'last' else rule}" for rule, n in counts.items()]
    text = f"keep {', '.join(parts)} snapshots" if parts else ""
    within = within_duration(policy)
    if within is not None:
        text += (" and " if text else "keep ") + f"all within {within} of the newest verified"
    if not text:
        text = "empty policy: keep everything"
    return (f"{text}; periods in {policy.timezone}; refuse to delete more than "
            f"{policy.max_delete_fraction:.0%} or leave fewer than {policy.min_keep}")


# --- the algorithm --------------------------------------------------------------------


@dataclass(frozen=True)
class Keep:
    """Why the rules kept one backup: machine-readable rule ids and restic-like reason texts."""

    rules: tuple[str, ...]
    reasons: tuple[str, ...]


@dataclass
class PolicyOutcome:
    """What the rules keep among the backups they were given, and enough of the rule
    state to answer "would this other backup have been kept had it been among them?"."""

    policy: RetentionPolicy
    zone: tzinfo
    kept: dict[str, Keep]
    latest: datetime | None  # newest non-future timestamp (restic's findLatestTimestamp)
    cutoff: datetime | None  # keep_within keeps timestamps strictly after this
    # The evaluated backups oldest first; per bucket rule, newest-first lists of the
    # count used before each position (one extra entry: past the oldest) and of the
    # period key at each position.
    _ascending: list[tuple[datetime, str]] = field(default_factory=list, repr=False)
    _used_before: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _keys: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def would_keep(self, timestamp: datetime, name: str) -> bool:
        """Would the rules keep a backup at ``(timestamp, name)`` had it been among the
        evaluated ones (the others unchanged)? Meant for backups that were not.

        Exact for restic's algorithm: the backups newer than it are evaluated the same
        with or without it, so its fate depends only on the rule state at its position
        (count used so far, period of the backup just before it, whether it is oldest).
        """
        if policy_is_empty(self.policy):
            return True
        if within_duration(self.policy) is not None and (self.cutoff is None or timestamp > self.cutoff):
            return True
        total = len(self._ascending)
        idx = total - bisect_right(self._ascending, (timestamp, name))  # how many are newer
        local = timestamp.astimezone(self.zone)
        for rule, n in rule_counts(self.policy).items():
            if self._used_before[rule][idx] >= n:
                continue  # the rule's count is used up before reaching this position
            if rule == "last" or idx == 0 or idx == total:  # new "last", first period, or oldest
                return True
            if period_key(rule, local) != self._keys[rule][idx - 1]:
                return True
        return False


def apply_policy(items: Sequence[Dated], policy: RetentionPolicy, *, now: datetime) -> PolicyOutcome:
    """Run restic's ``ApplyPolicy`` over ``items`` (all of which count for the rules).

    ``now`` only matters for ``keep_within``: like restic, a backup dated in the future
    does not become the "latest" the duration is counted back from.
    """
    zone = policy_zone(policy)
    ordered = sorted(items, key=order_key, reverse=True)
    names = [i.name for i in ordered]
    if len(set(names)) != len(names):
        raise ValueError("backup names must be unique")
    outcome = PolicyOutcome(policy=policy, zone=zone, kept={}, latest=None, cutoff=None,
                            _ascending=[order_key(i) for i in reversed(ordered)])
    if policy_is_empty(policy):
        outcome.kept = {i.name: Keep(("empty",), ("policy is empty",)) for i in ordered}
        return outcome

    past = [i.timestamp for i in ordered if i.timestamp < now]
    outcome.latest = max(past) if past else None
    within = within_duration(policy)
    if within is not None and outcome.latest is not None:
        # restic counts back on the latest snapshot's own wall clock at its fixed UTC
        # offset (the one stored in the snapshot), not across the zone's DST rules.
        local = outcome.latest.astimezone(zone)
        outcome.cutoff = within.before(local.astimezone(timezone(local.utcoffset())))

    counts = rule_counts(policy)
    remaining = dict(counts)
    last_val: dict[str, int | None] = {r: None for r in counts}
    used_before = {r: [] for r in counts}
    keys = {r: [] for r in counts}
    final = len(ordered) - 1
    oldest_clause: set[str] = set()
    for nr, item in enumerate(ordered):
        local = item.timestamp.astimezone(zone)
        rules: list[str] = []
        reasons: list[str] = []
        if within is not None and (outcome.cutoff is None or item.timestamp > outcome.cutoff):
            rules.append("within")
            reasons.append(f"within {within}")
        for rule, n in counts.items():
            used_before[rule].append(n - remaining[rule])
            val = nr if rule == "last" else period_key(rule, local)
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
                rules.append(rule)
                reasons.append(f"{text} {n - remaining[rule]}/{n}")
        if rules:
            outcome.kept[item.name] = Keep(tuple(rules), tuple(reasons))
    # Position past the oldest. A backup inserted there would make the current oldest
    # an ordinary one, so a count the oldest-clause used is not counted as used.
    for rule, n in counts.items():
        used_before[rule].append(n - remaining[rule] - (1 if rule in oldest_clause else 0))
    outcome._used_before = used_before
    outcome._keys = keys
    return outcome
