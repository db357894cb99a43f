"""Timeline history files (``TTTTTTTT.history``) and what they must say about each other.

A promotion writes the new timeline's history: one line per ancestor, oldest first,
``parentTLI<whitespace>switchpoint<whitespace>reason``. Recovery with
``recovery_target_timeline = latest`` finds the newest timeline by asking for
``00000002.history``, ``00000003.history``, ... and stops at the first one missing, so a
lost history file silently keeps a recovery on an old timeline. The parsing rules are
PostgreSQL's readTimeLineHistory (docs/wal.md), plus: switch points never go backwards,
and a file is at most 1 MiB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from backupkit.wal.naming import format_lsn

MAX_HISTORY_BYTES = 1 << 20
_LINE = re.compile(rb"^\s*(\d{1,10})\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})(?:\s|$)")


class HistoryError(ValueError):
    """A history file that cannot be used; the message says which line and why."""


@dataclass(frozen=True)
class History:
    """Timeline ``tli`` and its ancestors: ``entries`` are (ancestor, where it ended), oldest first."""

    tli: int
    entries: tuple[tuple[int, int], ...]

    @property
    def parent(self) -> int:
        return self.entries[-1][0]

    @property
    def switch_lsn(self) -> int:
        return self.entries[-1][1]

    @property
    def ancestors(self) -> frozenset[int]:
        return frozenset(t for t, _ in self.entries)

    def switch_into(self, ancestor: int) -> int | None:
        """Where this timeline's history leaves ``ancestor`` (None if it is not an ancestor)."""
        for t, lsn in self.entries:
            if t == ancestor:
                return lsn
        return None


def parse_history(tli: int, data: bytes) -> History:
    """The history of timeline ``tli`` from its file's bytes; HistoryError for anything else."""
    if len(data) > MAX_HISTORY_BYTES:
        raise HistoryError(f"larger than {MAX_HISTORY_BYTES} bytes")
    entries: list[tuple[int, int]] = []
    last_lsn = 0
    for number, line in enumerate(data.split(b"\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(b"#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise HistoryError(f"line {number}: expected 'parentTLI switchpoint reason'")
        parent, lsn = int(m.group(1)), int(m.group(2), 16) << 32 | int(m.group(3), 16)
        if entries and parent <= entries[-1][0]:
            raise HistoryError(f"line {number}: timeline IDs must be in increasing sequence")
        if parent >= tli or parent == 0 or parent > 0xFFFFFFFF:
            raise HistoryError(f"line {number}: timeline {parent} cannot be an ancestor of timeline {tli}")
        if lsn < last_lsn:
            raise HistoryError(f"line {number}: switch point {format_lsn(lsn)} is before the previous "
                               f"one, {format_lsn(last_lsn)}")
        entries.append((parent, lsn))
        last_lsn = lsn
    if not entries:
        raise HistoryError("names no parent timeline")
    return History(tli, tuple(entries))


def fork_findings(histories: dict[int, History]) -> list[tuple[int, str]]:
    """Disagreements between history files: (timeline, detail) for each fork they show.

    A child's file repeats its parent's ancestry; if it differs from the parent's own
    file, two different timelines carried the parent's number. Two timelines branching
    from the same parent are two promotions of one history (a split brain, or a second
    point-in-time recovery archiving into the same place).
    """
    found: list[tuple[int, str]] = []
    for tli in sorted(histories):
        h = histories[tli]
        parent = histories.get(h.parent)
        if parent is not None and h.entries[:-1] != parent.entries:
            found.append((tli, f"{tli:08X}.history says timeline {h.parent} descends from "
                               f"{_describe(h.entries[:-1])}, but {h.parent:08X}.history says "
                               f"{_describe(parent.entries)}: two different timelines were numbered {h.parent}"))
    by_parent: dict[int, list[History]] = {}
    for h in histories.values():
        by_parent.setdefault(h.parent, []).append(h)
    for parent, children in sorted(by_parent.items()):
        if len(children) > 1:
            children.sort(key=lambda c: c.tli)
            points = ", ".join(f"{c.tli} at {format_lsn(c.switch_lsn)}" for c in children)
            for child in children[1:]:
                found.append((child.tli, f"timelines {points} all branch from timeline {parent}: the archive "
                                          f"holds two histories after timeline {parent} (a split brain, or a "
                                          f"second promotion archiving into the same place)"))
    return found


def _describe(entries: tuple[tuple[int, int], ...]) -> str:
    return "; ".join(f"{t} until {format_lsn(lsn)}" for t, lsn in entries) or "nothing"


__all__ = ["History", "HistoryError", "parse_history", "fork_findings", "MAX_HISTORY_BYTES"]
