"""Names in a WAL archive and the arithmetic of LSNs and segments (rules: docs/wal.md).

``archive_command`` stores files under the names PostgreSQL gives them, so the name is
the first thing to trust or refuse. A segment name is three 8-hex-digit fields:
timeline, then the segment number split in "log" and "seg" parts, where the seg part
counts segments within 4 GiB and so depends on the segment size: ``...000000FF`` is the
last 16 MB segment of a log but an impossible name for 1 GB segments. Names are
therefore classified in two steps: the shape here, the segment number once the segment
size is known (:func:`segment_number`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

XLOG_BLCKSZ = 8192
MIN_SEGMENT_SIZE = 1 << 20
MAX_SEGMENT_SIZE = 1 << 30
COMPRESSIONS = ("", ".gz", ".zst")

# ".partial.gz" is a promoted server's partial segment compressed by archive_command;
# ".gz.partial" is pg_receivewal's own naming of the segment it is still writing.
_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?(\.gz|\.zst)?(\.partial)?$")
_HISTORY = re.compile(r"^([0-9A-F]{8})\.history(\.gz|\.zst)?$")
_LABEL = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.([0-9A-F]{8})\.backup(\.gz|\.zst)?$")
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


@dataclass(frozen=True)
class ArchiveName:
    """What a file name in the archive claims to be."""

    kind: str            # "segment", "history", "label"
    tli: int
    log: int = 0         # segment and label names: the two halves of the segment number
    seg: int = 0
    offset: int = 0      # label names: the backup's start offset within its segment
    partial: bool = False
    compression: str = ""

    @property
    def base(self) -> str:
        """The plain segment name (no suffixes) a restore_command is asked for."""
        return f"{self.tli:08X}{self.log:08X}{self.seg:08X}"


def classify(name: str) -> ArchiveName | None:
    """The archive file ``name`` stands for, or None for a file the archive does not use.

    Timeline 0 does not exist, so a name claiming it is refused here.
    """
    m = _SEGMENT.match(name)
    if m:
        tli, log, seg = (int(g, 16) for g in m.groups()[:3])
        if tli == 0 or (m.group(4) and m.group(6)):
            return None
        return ArchiveName("segment", tli, log, seg, partial=bool(m.group(4) or m.group(6)),
                           compression=m.group(5) or "")
    m = _HISTORY.match(name)
    if m:
        tli = int(m.group(1), 16)
        return ArchiveName("history", tli, compression=m.group(2) or "") if tli > 1 else None
    m = _LABEL.match(name)
    if m:
        tli, log, seg, offset = (int(g, 16) for g in m.groups()[:4])
        return ArchiveName("label", tli, log, seg, offset=offset, compression=m.group(5) or "") if tli else None
    return None


def valid_segment_size(size: int) -> bool:
    """PostgreSQL's rule: a power of two from 1 MB to 1 GB."""
    return MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE and size & (size - 1) == 0


def segments_per_log(segment_size: int) -> int:
    return 0x1_0000_0000 // segment_size


def segment_number(name: ArchiveName, segment_size: int) -> int | None:
    """The segment number a segment or label name encodes, or None if impossible for this size."""
    per_log = segments_per_log(segment_size)
    if name.seg >= per_log:
        return None
    return name.log * per_log + name.seg


def segment_name(tli: int, segno: int, segment_size: int) -> str:
    per_log = segments_per_log(segment_size)
    return f"{tli:08X}{segno // per_log:08X}{segno % per_log:08X}"


def segment_of(lsn: int, segment_size: int) -> int:
    return lsn // segment_size


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` as an integer; ValueError for anything else."""
    m = _LSN.match(text.strip())
    if not m:
        raise ValueError(f"not an LSN: {text[:40]!r}")
    return int(m.group(1), 16) << 32 | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


__all__ = ["ArchiveName", "classify", "valid_segment_size", "segments_per_log", "segment_number",
           "segment_name", "segment_of", "parse_lsn", "format_lsn", "XLOG_BLCKSZ", "COMPRESSIONS"]
