"""Is there a recent backup, of a plausible size, and no missing night?

All times are the backups' own timestamps (parsed from their names), never file mtimes,
which a copy or restore from S3 changes.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta
from typing import Sequence

from backupkit.model import Backup
from backupkit.config import Source
from backupkit.model import CheckResult

GAP_WINDOW = timedelta(days=35)  # how far back missing nights are looked for
GAP_FACTOR = 1.5  # a gap longer than this many usual intervals is a missing backup
FUTURE_TOLERANCE = timedelta(hours=1)  # clock skew allowed before a timestamp is "in the future"
MAX_GAPS_REPORTED = 10


def _hours(td: timedelta) -> float:
    return td.total_seconds() / 3600


def check_freshness(source: Source, backups: Sequence[Backup], now: datetime) -> list[CheckResult]:
    """Checks ``present``, ``fresh``, ``size`` and ``nightly_gaps`` for one source.

    ``backups`` need not be sorted; ``now`` must be timezone-aware.
    """
    if not backups:
        return [CheckResult(source.name, "present", False, f"no backups of {source.name} in {source.local_dir} "
                            f"matching {source.pattern.template}")]
    backups = sorted(backups, key=lambda b: (b.timestamp, b.name))
    newest = backups[-1]
    art = f"{source.name}/{newest.name}"
    t = source.thresholds
    results = [CheckResult(source.name, "present", True, f"{len(backups)} backups, newest {newest.name}")]

    age = now - newest.timestamp
    if age < -FUTURE_TOLERANCE:
        results.append(CheckResult(art, "fresh", False, f"timestamp {newest.timestamp.isoformat()} is "
                                   f"{-_hours(age):.1f} h in the future (clock or naming problem)"))
    elif _hours(age) > t.max_age_hours:
        results.append(CheckResult(art, "fresh", False, f"newest backup is {_hours(age):.1f} h old "
                                   f"(threshold {t.max_age_hours:g} h)"))
    else:
        results.append(CheckResult(art, "fresh", True, f"{max(_hours(age), 0):.1f} h old "
                                   f"(threshold {t.max_age_hours:g} h)"))

    results.append(_size_check(art, newest, backups[:-1], t.size_window, t.size_deviation))
    results.extend(_gap_checks(source.name, backups, now, gap_window(source, newest.timestamp, now)))
    return results


def gap_window(source: Source, newest: datetime, now: datetime) -> timedelta:
    """:data:`GAP_WINDOW`, but no further back than the oldest night the source's retention keeps
    daily (``keep_daily`` nights up to the newest backup): beyond it the policy itself thins the
    history out, and a maintained history would otherwise fail this check every day."""
    daily = source.retention.keep_daily
    if not daily:
        return GAP_WINDOW
    return min(GAP_WINDOW, (now - newest) + timedelta(days=daily - 1) - timedelta(minutes=1))


def _size_check(art: str, newest: Backup, earlier: Sequence[Backup], window: int,
                deviation: float) -> CheckResult:
    if newest.size == 0:
        return CheckResult(art, "size", False, "newest backup is empty (0 bytes)")
    recent = [b.size for b in earlier[-window:]] if window else []
    if not recent:
        return CheckResult(art, "size", True, f"{newest.size} bytes (no earlier backups to compare with)")
    median = statistics.median(recent)
    low, high = (1 - deviation) * median, (1 + deviation) * median
    ratio = newest.size / median if median else float("inf")
    detail = f"{newest.size} bytes, {ratio:.2f}x the median {median:.0f} bytes of the previous {len(recent)}"
    if newest.size < low:
        return CheckResult(art, "size", False, f"too small: {detail} (allowed down to {low:.0f} bytes)")
    if newest.size > high:
        return CheckResult(art, "size", False, f"too large: {detail} (allowed up to {high:.0f} bytes)")
    return CheckResult(art, "size", True, detail)


def _gap_checks(name: str, backups: Sequence[Backup], now: datetime,
                window: timedelta = GAP_WINDOW) -> list[CheckResult]:
    """Missing backups between consecutive ones in the last ``window`` (:func:`gap_window`).

    The usual interval is the median of the intervals in the window (so the check works
    for nightly and hourly sources alike); one backup before the window is included so a
    gap that starts before it is still seen.
    """
    start = now - window
    recent = [b for b in backups if b.timestamp >= start]
    before = [b for b in backups if b.timestamp < start]
    if before:
        recent.insert(0, before[-1])
    intervals = [b.timestamp - a.timestamp for a, b in zip(recent, recent[1:])]
    positive = [i for i in intervals if i > timedelta(0)]
    if len(positive) < 2:
        return [CheckResult(name, "nightly_gaps", True, f"too few backups in the last {window.days} days "
                            f"to judge gaps ({len(recent)})")]
    usual = statistics.median(positive)
    gaps = []
    for a, b in zip(recent, recent[1:]):
        gap = b.timestamp - a.timestamp
        if gap > usual * GAP_FACTOR and b.timestamp >= start:
            gaps.append((a, b, gap))
    if not gaps:
        return [CheckResult(name, "nightly_gaps", True, f"no gaps in the last {window.days} days "
                            f"({len(recent)} backups, usual interval {_hours(usual):.1f} h)")]
    results = []
    for a, b, gap in gaps[:MAX_GAPS_REPORTED]:
        # The backups that should have been there: every usual interval after a, until b.
        missing = []
        slot = a.timestamp + usual
        while slot < b.timestamp - usual / 2:
            missing.append(slot)
            slot += usual
        if missing:
            first, last = missing[0].date().isoformat(), missing[-1].date().isoformat()
            span = first if first == last else f"{first} to {last}"
            what = f"missing backup(s) around {span}"
        else:
            what = "late backup"
        results.append(CheckResult(name, "nightly_gaps", False,
                                   f"{what}: no backup between {a.name} and {b.name} "
                                   f"({_hours(gap):.1f} h, usual {_hours(usual):.1f} h)"))
    if len(gaps) > MAX_GAPS_REPORTED:
        results.append(CheckResult(name, "nightly_gaps", False,
                                   f"... and {len(gaps) - MAX_GAPS_REPORTED} more gaps"))
    return results


__all__ = ["check_freshness", "GAP_WINDOW", "GAP_FACTOR"]
