"""The tests' one clock: the instant this test session started, from :mod:`backupkit.clock`.

Histories, expectations and oracles are computed from :data:`SESSION_NOW` (the ``now``
fixture), never from a second reading of the system clock, so a session that crosses
midnight, 08:00 UTC or a month end still agrees with itself. Run the suite on another date
with Debian's ``faketime`` (README, "Tests on any date") or pin it with ``BACKUPKIT_NOW``.
"""

from __future__ import annotations

from datetime import date, datetime

from backupkit import clock

SESSION_NOW: datetime = clock.now().replace(microsecond=0)


def add_years(when: datetime, years: int) -> datetime:
    """``when`` moved by whole calendar years; 29 February becomes 28 February in a common year."""
    year = when.year + years
    day = min(when.day, 28) if (when.month, when.day) == (2, 29) and not _leap(year) else when.day
    return when.replace(year=year, day=day)


def _leap(year: int) -> bool:
    try:
        date(year, 2, 29)
    except ValueError:
        return False
    return True


__all__ = ["SESSION_NOW", "add_years"]
