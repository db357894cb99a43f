"""The retention plan: keep, delete or held for every backup of one source, with reasons.

:func:`plan_retention` is a pure function of the backups, their verification state,
the holds, the policy and the guard rails. A sweep (local or S3) lists the backups,
asks for a plan, and deletes exactly ``plan.deletions()``; that call raises
:class:`RetentionRefused` when a guard rail is broken, so a sweep that ignores the
violations still deletes nothing.

Verification (why the rules only see verified backups): restic's count-based rules
keep the *newest* backup of each period, so a damaged or injected newer backup would
displace the good one of its period. Here the rules are applied to the backups that
passed verification only. A backup that failed or was not verified yet is kept while
its period has no verified representative, and deleted once a verified backup of the
same period is kept (the period is the finest calendar rule of the policy, the day if
it only has keep_last/keep_within). Optionally (``expire_unverified=True``) one that
the policy would delete even if it had passed is deleted too, so failed backups do not
pile up forever in periods no rule covers any more.

Backups dated in the future (more than ``future_tolerance_hours`` beyond ``now``): a
clock or naming error, or a file planted to displace real backups. They are flagged
(rule ``future``), counted by no rule (not even as the newest backup), deleted by
nothing, and the plan is refused naming them, so no sweep runs until a person looks.

Each backup the rules keep carries ``keep_until``: one day after the earliest moment
the rules could stop keeping it (:func:`~backupkit.retention.policy.keep_horizon`), the
retain-until that "lock what you keep" sets in S3.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Collection, Mapping, Sequence

from backupkit import clock
from backupkit.config import RetentionPolicy
from backupkit.retention.policy import BUCKETS, LOCK_MARGIN, PolicyOutcome, Rules, apply_policy, keep_horizon, order_key

VERIFICATION_STATES = ("passed", "failed", "unverified")
ACTIONS = ("keep", "delete", "held")
MAX_NAMED = 10  # backups named in one violation


class RetentionRefused(RuntimeError):
    """A guard rail is broken: the plan must not be executed at all."""

    def __init__(self, violations: Sequence[str]):
        self.violations = tuple(violations)
        super().__init__("retention refused: " + "; ".join(self.violations))


@dataclass(frozen=True)
class Candidate:
    """One backup of one source as the planner sees it.

    ``timestamp`` is the backup's own time (from its name or manifest), never an mtime
    or upload time. ``held_reason`` is filled by the caller for S3 object-lock
    retention, legal hold, a hold tag or the configured hold list.
    """

    name: str
    timestamp: datetime
    verified: str
    size: int = 0
    held_reason: str | None = None

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None or self.timestamp.utcoffset() is None:
            raise ValueError(f"{self.name}: timestamp must be timezone-aware, got {self.timestamp!r}")
        if self.verified not in VERIFICATION_STATES:
            raise ValueError(f"{self.name}: verified must be one of {VERIFICATION_STATES}, got {self.verified!r}")


@dataclass(frozen=True)
class Decision:
    """What happens to one backup and why.

    ``rules`` are machine-readable ids of everything that decided it (``last``,
    ``hourly`` .. ``yearly``, ``within``, ``empty``, ``newest``, ``newest-verified``,
    ``unverified``, ``superseded``, ``expired``, ``held``, ``future``, ``policy``),
    ``reasons`` the same for people, e.g. ``daily snapshot 3/30``. ``keep_until``: for a
    backup the rules keep, until when they will (plus a day), else None.
    """

    name: str
    timestamp: datetime
    action: str
    reasons: tuple[str, ...]
    size: int = 0
    verified: str = "passed"
    rules: tuple[str, ...] = ()
    keep_until: datetime | None = None

    def to_dict(self) -> dict:
        return {"timestamp": self.timestamp.isoformat(), "name": self.name, "action": self.action,
                "reasons": list(self.reasons), "verified": self.verified, "size": self.size,
                "keep_until": self.keep_until.isoformat() if self.keep_until else None}


@dataclass(frozen=True)
class PlanSummary:
    total: int
    keep: int
    delete: int
    held: int
    bytes_to_free: int
    not_verified: int  # backups that failed or are not verified yet, whatever their action
    by_rule: dict[str, int]  # rule id -> backups it kept (a backup may count for several)

    def to_dict(self) -> dict:
        return {"total": self.total, "keep": self.keep, "delete": self.delete, "held": self.held,
                "bytes_to_free": self.bytes_to_free, "not_verified": self.not_verified,
                "by_rule": dict(self.by_rule)}


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]  # oldest first
    violations: tuple[str, ...]
    policy: RetentionPolicy
    now: datetime
    _by_name: dict[str, Decision] = field(default_factory=dict, repr=False, compare=False)

    @property
    def refused(self) -> bool:
        return bool(self.violations)

    def deletions(self) -> list[Decision]:
        """The backups to delete, oldest first; raises :class:`RetentionRefused` if any guard rail is broken."""
        if self.violations:
            raise RetentionRefused(self.violations)
        return [d for d in self.decisions if d.action == "delete"]

    def planned_deletions(self) -> list[Decision]:
        """What would be deleted if no guard rail refused (for reports and dry runs only)."""
        return [d for d in self.decisions if d.action == "delete"]

    def retained(self) -> list[Decision]:
        """Everything that stays: kept and held."""
        return [d for d in self.decisions if d.action != "delete"]

    def decision(self, name: str) -> Decision:
        return self._by_name[name]

    def future(self) -> list[Decision]:
        """Backups dated beyond now plus the tolerance (the plan is refused while there are any)."""
        return [d for d in self.decisions if "future" in d.rules]

    @property
    def summary(self) -> PlanSummary:
        actions = Counter(d.action for d in self.decisions)
        by_rule: Counter[str] = Counter()
        for d in self.decisions:
            if d.action != "delete":
                by_rule.update(set(d.rules))
        return PlanSummary(
            total=len(self.decisions), keep=actions["keep"], delete=actions["delete"], held=actions["held"],
            bytes_to_free=sum(d.size for d in self.decisions if d.action == "delete"),
            not_verified=sum(1 for d in self.decisions if d.verified != "passed"),
            by_rule=dict(sorted(by_rule.items())),
        )


def plan_retention(
    backups: Sequence[Candidate],
    policy: RetentionPolicy,
    *,
    held: Collection[str] | Mapping[str, str] = (),
    now: datetime | None = None,
    listing_complete: bool = True,
    expire_unverified: bool | None = None,
) -> Plan:
    """Decide keep / delete / held for every backup of one source.

    ``held``: names that must not be deleted (the hold list; a mapping gives each its
    reason, e.g. a lease "in use by restore ..."), in addition to each candidate's
    ``held_reason``. ``now`` (default: the current time) decides which backups are in
    the future and the ``keep_within`` window. ``listing_complete=False`` (the
    listing failed or was cut short) refuses the plan: a partial listing makes "the
    newest" and "the fraction deleted" meaningless.
    """
    now = now or clock.now()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    ordered = sorted(backups, key=order_key)
    names = [b.name for b in ordered]
    if len(set(names)) != len(names):
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        raise ValueError(f"backup names must be unique; repeated: {', '.join(dupes[:5])}")
    held_reasons = dict(held) if isinstance(held, Mapping) else dict.fromkeys(held, "on the hold list")

    limit = now + timedelta(hours=policy.future_tolerance_hours)
    future = [b for b in ordered if b.timestamp > limit]
    present = [b for b in ordered if b.timestamp <= limit]
    passed = [b for b in present if b.verified == "passed"]
    outcome = apply_policy(passed, policy, now=now)

    rules: dict[str, list[str]] = {b.name: [] for b in ordered}
    reasons: dict[str, list[str]] = {b.name: [] for b in ordered}
    for name, keep in outcome.kept.items():
        rules[name].extend(keep.rules)
        reasons[name].extend(keep.reasons)
    if present:
        rules[present[-1].name].append("newest")
        reasons[present[-1].name].append("newest backup")
    if passed:
        rules[passed[-1].name].append("newest-verified")
        reasons[passed[-1].name].append("newest verified backup")
    for b in future:
        rules[b.name].append("future")
        reasons[b.name].append(f"dated {b.timestamp.isoformat()}, more than {policy.future_tolerance_hours:g} h "
                               f"after now ({now.isoformat(timespec='seconds')}): counted by no rule, never deleted")

    if expire_unverified is None:
        expire_unverified = policy.expire_unverified
    _judge_unverified(present, outcome, policy, rules, reasons, expire_unverified)
    horizons = {b.name: keep_horizon(outcome, b, now=now) for b in passed if b.name in outcome.kept}

    decisions = []
    for b in ordered:
        hold = b.held_reason or held_reasons.get(b.name)
        r, why = rules[b.name], reasons[b.name]
        if hold:
            action = "held"
            r, why = ["held", *r], [f"held: {hold}", *why]
        elif any(rule not in ("superseded", "expired") for rule in r):
            action = "keep"
        else:
            action = "delete"
            if not r:  # verified, and no rule wants it
                r, why = ["policy"], ["not kept by any rule"]
        until = horizons.get(b.name)
        decisions.append(Decision(b.name, b.timestamp, action, tuple(why), b.size, b.verified, tuple(r),
                                  until + LOCK_MARGIN if until is not None else None))

    violations = _guard_rails(decisions, policy, listing_complete)
    if future:
        named = ", ".join(b.name for b in future[:MAX_NAMED]) + (f" and {len(future) - MAX_NAMED} more"
                                                                  if len(future) > MAX_NAMED else "")
        violations.insert(0, f"{len(future)} backup(s) dated more than {policy.future_tolerance_hours:g} h in the "
                             f"future: {named}; a clock or naming error (or a planted file) would displace real "
                             f"backups: rename or remove them, nothing is deleted until then")
    return Plan(tuple(decisions), tuple(violations), policy, now, {d.name: d for d in decisions})


def _judge_unverified(ordered: Sequence[Candidate], outcome: PolicyOutcome, policy: RetentionPolicy,
                      rules: dict[str, list[str]], reasons: dict[str, list[str]], expire_unverified: bool) -> None:
    """Give every backup that did not pass a keep or delete reason (see module docstring)."""
    spec = Rules.of(policy)
    grain = BUCKETS[spec.finest]
    representative: dict[int, str] = {}  # period -> newest verified backup the rules/guards keep
    for b in ordered:
        if b.verified == "passed" and rules[b.name]:
            representative[grain.key(b.timestamp.astimezone(spec.zone))] = b.name
    for b in ordered:
        if b.verified == "passed":
            continue
        local = b.timestamp.astimezone(spec.zone)
        label = f"{grain.unit} {grain.label(local)}"
        state = "verification failed" if b.verified == "failed" else "not verified"
        rep = representative.get(grain.key(local))
        if rep is not None:
            rules[b.name].append("superseded")
            reasons[b.name].append(f"{state}; {label} is represented by verified {rep}")
        elif expire_unverified and not outcome.would_keep(b.timestamp, b.name):
            rules[b.name].append("expired")
            reasons[b.name].append(f"{state}; no rule would keep it even if it had passed")
        else:
            rules[b.name].append("unverified")
            reasons[b.name].append(f"{state}; {label} has no verified representative")


def _guard_rails(decisions: Sequence[Decision], policy: RetentionPolicy, listing_complete: bool) -> list[str]:
    violations = []
    if not listing_complete:
        violations.append("the listing of backups was incomplete or failed; nothing may be deleted")
    total = len(decisions)
    deleted = sum(1 for d in decisions if d.action == "delete")
    if total and deleted / total > policy.max_delete_fraction:
        violations.append(
            f"would delete {deleted} of {total} backups ({deleted / total:.0%}), more than "
            f"max_delete_fraction {policy.max_delete_fraction:g}")
    if deleted and total - deleted < policy.min_keep:
        violations.append(f"would leave {total - deleted} backups, fewer than min_keep {policy.min_keep}")
    return violations
