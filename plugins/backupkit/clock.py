"""The one clock: every "now" in the core, the DAGs and ``backupctl`` comes from :func:`now`.

Time is an input. Retention ("is this backup in the future?"), freshness ("is the newest
backup older than 25 h?"), reports and audit records all ask this module, so a test can
pin the time for code running in its process (:func:`frozen`) and a child process can be
pinned through ``BACKUPKIT_NOW`` (an ISO 8601 instant; drills and reproductions use it
too). Neither is set in production: then it is the system clock, in UTC.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

ENV = "BACKUPKIT_NOW"

_override: Callable[[], datetime] | None = None


def parse_instant(text: str) -> datetime:
    """An aware UTC datetime from ISO 8601 (``Z`` or an offset; no offset means UTC)."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def now() -> datetime:
    """The current instant, aware, in UTC."""
    if _override is not None:
        return _override().astimezone(timezone.utc)
    pinned = os.environ.get(ENV)
    if pinned:
        try:
            return parse_instant(pinned)
        except ValueError:
            raise ValueError(f"{ENV}={pinned!r} is not an ISO 8601 instant") from None
    return datetime.now(timezone.utc)


def timestamp() -> float:
    """:func:`now` as POSIX seconds (what metrics and file stamps want)."""
    return now().timestamp()


@contextmanager
def frozen(at: datetime | Callable[[], datetime]) -> Iterator[None]:
    """Run the enclosed code with :func:`now` answering ``at`` (an instant or a callable)."""
    global _override
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValueError("pass an aware datetime")
        fixed = at
        at = lambda: fixed  # noqa: E731
    previous, _override = _override, at
    try:
        yield
    finally:
        _override = previous


__all__ = ["ENV", "now", "timestamp", "frozen", "parse_instant"]
