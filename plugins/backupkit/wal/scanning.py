"""Reading many segments: runs of consecutive segments, split into chunks, read in parallel.

A chunk is read by one :class:`~backupkit.wal.scan.Walker`, in order; the record that
continues past its last segment is finished by reading the start of the next segment
(``tail``), so every record is checked exactly once whichever process reads it. Worker
processes are used when the reader allows it (a local directory) and there is more than
one chunk; results come back in order and are small (:class:`SegmentScan`).
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from backupkit.wal.archive import ArchiveReader, Unreadable, read_windows
from backupkit.wal.inventory import Stored
from backupkit.wal.scan import Context, SegmentScan, Walker

MIN_CHUNK, MAX_CHUNK = 4, 256
MAX_RECORD = 1 << 30   # xl_tot_len of a valid record stays below 1 GiB (XLogRecordMaxSize)


@dataclass(frozen=True)
class Chunk:
    ctx: Context
    items: tuple[Stored, ...]
    tail: tuple[Stored, ...] = ()   # the segments after it, read only as far as the last record goes


def read_segment(walker: Walker, reader: ArchiveReader, stored: Stored, segment_size: int,
                 finish_only: bool = False) -> SegmentScan:
    scan = walker.begin(stored.name, stored.segno, partial=stored.partial, finish_only=finish_only)
    try:
        for window in read_windows(reader, stored.name, stored.compression, segment_size, walker.read_buffer):
            # A compressed file is inflated to its end even when its WAL is done with (after a
            # switch record): the stream's own checksum and length are part of the verdict.
            if not walker.window(window) and not stored.compression:
                break
    except Unreadable as exc:
        scan.problem, scan.detail = exc.kind, str(exc)
        walker.abandon_pending()
    return scan


def scan_chunk(reader: ArchiveReader, chunk: Chunk) -> list[SegmentScan]:
    walker = Walker(chunk.ctx)
    size = chunk.ctx.segment_size
    scans = [read_segment(walker, reader, stored, size) for stored in chunk.items]
    for stored in chunk.tail:  # a record longer than a segment may need several
        if walker.pending is None:
            break
        read_segment(walker, reader, stored, size, finish_only=True)
    return scans


def make_chunks(ctx: Context, run: list[Stored], jobs: int) -> list[Chunk]:
    """Chunks of a run of consecutive segments, about four per process."""
    size = max(MIN_CHUNK, min(MAX_CHUNK, -(-len(run) // max(1, jobs * 4))))
    reach = MAX_RECORD // ctx.segment_size + 1   # the most segments one record can continue on
    return [Chunk(ctx, tuple(run[i:i + size]), tuple(run[i + size:i + size + reach]))
            for i in range(0, len(run), size)]


def _context():
    """fork is cheapest, but not safe once threads exist (an S3 client, Airflow): then forkserver."""
    method = "fork" if threading.active_count() == 1 else "forkserver"
    return multiprocessing.get_context(method)


def scan_chunks(reader: ArchiveReader, chunks: list[Chunk], jobs: int) -> list[SegmentScan]:
    if jobs <= 1 or len(chunks) <= 1 or not reader.parallel_safe:
        return [scan for chunk in chunks for scan in scan_chunk(reader, chunk)]
    with ProcessPoolExecutor(max_workers=min(jobs, len(chunks)), mp_context=_context()) as pool:
        results = pool.map(scan_chunk, [reader] * len(chunks), chunks)
        return [scan for scans in results for scan in scans]


__all__ = ["Chunk", "make_chunks", "scan_chunks", "scan_chunk", "read_segment"]
