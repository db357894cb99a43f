"""The restore journal: every restore, restore test and replace saga step, appended before it matters.

One JSON object per line in ``<state_dir>/audit/restore.jsonl``
(:attr:`backupkit.storage.statedir.StateDir.restore_journal`), appended with ``O_APPEND`` and
fsynced, never rewritten. It is apart from retention's write-ahead log on purpose: the
sweep reads that log to finish half-done deletions, and a restore record must never look
like one.

Record (keys sorted)::

    {"time": "2025-03-01T09:00:00.000Z", "run_id": "...", "source": "trixtech-db",
     "kind": "restore", "action": "restore_requested", "triggered_by": "alice",
     "reason": "INC-1234 ...", "backup": "trixtech_20250301_020000.dump",
     "changes": ["..."], "detail": "", ...}          # plus the action's own fields

A torn last line (a crash or a full disk mid-append) is skipped when reading and cannot
swallow the next record: every append starts on a new line. Nothing here redacts: callers
put only redacted settings into records (:mod:`backupkit.restore.conninfo`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from backupkit import clock
from backupkit.storage.localfs import append_durably
from backupkit.storage.statedir import StateDir

KIND = "restore"


def _utc_now() -> str:
    return clock.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RestoreJournal:
    """Append-only JSON lines under one state directory; nothing is created until the first append."""

    def __init__(self, state_dir: Path | str):
        self.path = StateDir(state_dir).restore_journal

    def append(self, *, run_id: str, source: str, action: str, triggered_by: str | None = None,
               reason: str | None = None, backup: str | None = None, changes: Sequence[str] = (), detail: str = "",
               **extra: Any) -> dict:
        """Write one record durably and return it."""
        rec = {"time": _utc_now(), "run_id": run_id, "source": source, "kind": KIND, "action": action,
               "triggered_by": triggered_by, "reason": reason, "backup": backup, "changes": list(changes),
               "detail": detail, **extra}
        line = json.dumps(rec, sort_keys=True, separators=(",", ":"), default=str)
        append_durably(self.path, (line + "\n").encode())  # on a fresh line, after a torn one too
        return rec

    def records(self, source: str | None = None) -> Iterator[dict]:
        """Every record (of ``source``), oldest first; unreadable lines are skipped."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and (source is None or rec.get("source") == source):
                    yield rec


__all__ = ["RestoreJournal", "KIND"]
