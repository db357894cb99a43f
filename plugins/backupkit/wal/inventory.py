"""What the archive holds, before any segment is read in full.

From the listing: segments by timeline and number (one stored file per segment: a full
segment beats a ``.partial``, an uncompressed file beats a compressed one), history
files, labels. From a few first pages: the segment size, page magic and system
identifier every segment must share (the majority of the long page headers sampled, so
one damaged segment cannot set them).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from backupkit.wal.archive import ArchiveEntry, ArchiveReader, Unreadable, read_head
from backupkit.wal.naming import XLOG_BLCKSZ, ArchiveName, classify, segment_number, valid_segment_size
from backupkit.wal.scan import PAGE_MAGICS

SAMPLES = 5
_LONG_HEADER = struct.Struct("<HHIQI4xQII")
_PREFERENCE = {"": 0, ".zst": 1, ".gz": 2}


@dataclass(frozen=True)
class Stored:
    """One stored segment file."""

    name: str
    tli: int
    segno: int
    partial: bool
    compression: str
    size: int
    mtime: datetime | None


@dataclass(frozen=True)
class Geometry:
    segment_size: int
    magic: int
    sysid: int


@dataclass
class Inventory:
    segments: dict[tuple[int, int], Stored] = field(default_factory=dict)   # (tli, segno): full segments
    partials: dict[tuple[int, int], Stored] = field(default_factory=dict)   # (tli, segno): .partial only
    histories: dict[int, tuple[str, str]] = field(default_factory=dict)     # tli: (name, compression)
    labels: list[tuple[str, ArchiveName]] = field(default_factory=list)
    misnamed: list[tuple[str, str]] = field(default_factory=list)          # (name, why)
    newest: Stored | None = None                                            # by archive time

    def timelines(self) -> set[int]:
        return {tli for tli, _ in self.segments} | {tli for tli, _ in self.partials}

    def of_timeline(self, tli: int) -> list[Stored]:
        return sorted((s for (t, _), s in self.segments.items() if t == tli), key=lambda s: s.segno)


def sample_geometry(entries: list[ArchiveEntry], reader: ArchiveReader) -> tuple[Geometry | None, str]:
    """Segment size, magic and system identifier by majority of sampled long headers (or why not)."""
    names = sorted((e.name, c) for e in entries if (c := classify(e.name)) and c.kind == "segment")
    if not names:
        return None, "the archive holds no WAL segment"
    step = max(1, (len(names) - 1) // (SAMPLES - 1)) if len(names) > 1 else 1
    picks = sorted({*range(0, len(names), step), len(names) - 1})[:SAMPLES + 1]
    votes: Counter[tuple[int, int, int]] = Counter()
    for i in picks:
        name, c = names[i]
        try:
            head = read_head(reader, name, c.compression, XLOG_BLCKSZ)
        except Unreadable:
            continue
        if len(head) < _LONG_HEADER.size:
            continue
        magic, info, _tli, _addr, _rem, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(head)
        if info & 0x2 and valid_segment_size(seg_size) and blcksz == XLOG_BLCKSZ:
            votes[(seg_size, magic, sysid)] += 1
    if not votes:
        return None, "no sampled segment has a valid long page header"
    (seg_size, magic, sysid), _ = votes.most_common(1)[0]
    if magic not in PAGE_MAGICS:
        return None, (f"WAL page magic {magic:04X} is not PostgreSQL 15 to 18's "
                      f"({', '.join(f'{m:04X}' for m in PAGE_MAGICS)}): this verifier cannot read it")
    return Geometry(seg_size, magic, sysid), ""


def take_inventory(entries: list[ArchiveEntry], segment_size: int) -> Inventory:
    inv = Inventory()
    for entry in entries:
        c = classify(entry.name)
        if c is None:
            continue
        if c.kind == "history":
            old = inv.histories.get(c.tli)
            if old is None or _PREFERENCE[c.compression] < _PREFERENCE[old[1]]:
                inv.histories[c.tli] = (entry.name, c.compression)
            continue
        segno = segment_number(c, segment_size)
        if segno is None:
            inv.misnamed.append((entry.name, f"its segment part {c.seg:08X} is impossible for "
                                             f"{segment_size >> 20} MB segments"))
            continue
        if c.kind == "label":
            inv.labels.append((entry.name, c))
            continue
        stored = Stored(entry.name, c.tli, segno, c.partial, c.compression, entry.size, entry.mtime)
        table = inv.partials if c.partial else inv.segments
        old = table.get((c.tli, segno))
        if old is None or _PREFERENCE[c.compression] < _PREFERENCE[old.compression]:
            table[(c.tli, segno)] = stored
        if entry.mtime and (inv.newest is None or (entry.mtime, segno) > (inv.newest.mtime, inv.newest.segno)):
            inv.newest = stored
    for key in list(inv.partials):
        if key in inv.segments:
            del inv.partials[key]  # the full segment was archived too: recovery uses that one
    return inv


__all__ = ["Stored", "Geometry", "Inventory", "sample_geometry", "take_inventory"]
