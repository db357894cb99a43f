"""Decoding the data blocks of a pg_dump custom archive to their exact end, on worker threads.

Each data block of a custom dump is one compressed stream cut into length-prefixed
chunks (pg_backup_custom.c ``_CustomWriteFunc``): a zlib stream for gzip
(compress_gzip.c uses ``deflateInit``), one LZ4 frame (compress_lz4.c, LZ4F API), one
zstd frame (compress_zstd.c, ``ZSTD_e_end`` once), or the bytes themselves for none.
A block is whole when its stream ends exactly at the end of its last chunk: no missing
tail, no bytes after the end of the stream, no second frame.

The decoded text of a TABLE DATA block is what ``COPY ... FROM stdin`` will read, so it
is held to what pg_dump writes (see docs/dump-rules.md): rows ending in a newline, no NUL
byte (PostgreSQL text cannot hold one; bytea is escaped), one ``\\.`` line and it comes
last, followed by the two empty lines pg_dump adds. In an uncompressed dump, which has no
checksum at all, the raw tabs must also number exactly rows x (columns - 1), with the
columns read from the TOC's COPY statement (COPY escapes tabs inside values); for the
compressed ones that extra pass over the decoded data costs more than it finds (zlib's
Adler-32 covers gzip blocks; zstd and lz4 frames fail to decode on most damage).

Threads, not processes: isal, zlib, lz4 and zstandard all release the GIL while they
decode, so two workers inflate two blocks at once. Work is bounded: at most ``workers``
blocks are decoded at a time and each holds at most :data:`QUEUED_SEGMENTS` input
segments; zstd output is bounded per call by feeding whole zstd blocks (each decodes to
at most 128 KiB), the others by ``max_length``.
"""

from __future__ import annotations

import queue
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

try:  # ISA-L inflates about 2x faster than zlib here (bench/bench_verify.py --inflaters)
    from isal import isal_zlib as _zlib_impl
except ImportError:  # pragma: no cover - isal is pinned in requirements.txt
    _zlib_impl = zlib

SEGMENT = 4 << 20  # input bytes handed to a worker at once
QUEUED_SEGMENTS = 4  # per block in flight: memory is about workers x this x SEGMENT
OUT_MAX = 4 << 20  # decoded bytes produced per decoder call
COPY_END = b"\\.\n\n\n"  # what pg_dump writes after the last COPY row of a TABLE DATA block
ZSTD_MAGIC = 0xFD2FB528
ZSTD_BLOCK_MAX = 128 << 10


class BlockProblem(Exception):
    """Why one data block is not what pg_dump writes (the message is the verdict)."""


# -- decoders: feed(piece) sends decoded bytes to out; finish() checks the stream ended ----------
class _Plain:
    def __init__(self, out: Callable[[bytes], None]):
        self.out = out

    def feed(self, data: bytes) -> None:
        self.out(data)

    def finish(self) -> None:
        pass


class _Zlib:
    wbits = zlib.MAX_WBITS  # a zlib stream, as pg_dump's custom format writes

    def __init__(self, out: Callable[[bytes], None]):
        self.out, self.d = out, _zlib_impl.decompressobj(self.wbits)

    def feed(self, data: bytes) -> None:
        if self.d.eof:
            raise BlockProblem(f"{len(data)} bytes follow the end of the compressed stream")
        try:
            chunk = self.d.decompress(data, OUT_MAX)
            self.out(chunk)
            while self.d.unconsumed_tail:
                self.out(self.d.decompress(self.d.unconsumed_tail, OUT_MAX))
        except Exception as exc:  # zlib.error, or isal's own error type
            raise BlockProblem(f"gzip data corrupt: {exc}") from None
        if self.d.unused_data:
            raise BlockProblem(f"{len(self.d.unused_data)} bytes follow the end of the compressed stream")

    def finish(self) -> None:
        if not self.d.eof:
            raise BlockProblem("compressed stream cut short (the block ends before the end of its zlib stream)")


class _Lz4:
    def __init__(self, out: Callable[[bytes], None]):
        import lz4.frame

        self.out, self.d = out, lz4.frame.LZ4FrameDecompressor()

    def feed(self, data: bytes) -> None:
        if self.d.eof:
            raise BlockProblem(f"{len(data)} bytes follow the end of the LZ4 frame")
        try:
            self.out(self.d.decompress(data, max_length=OUT_MAX))
            while not self.d.eof and not self.d.needs_input:
                self.out(self.d.decompress(b"", max_length=OUT_MAX))
        except RuntimeError as exc:  # python-lz4 reports corrupt frames as RuntimeError
            raise BlockProblem(f"lz4 data corrupt: {exc}") from None
        if self.d.eof and self.d.unused_data:
            raise BlockProblem(f"{len(self.d.unused_data)} bytes follow the end of the LZ4 frame")

    def finish(self) -> None:
        if not self.d.eof:
            raise BlockProblem("compressed stream cut short (the block ends inside its LZ4 frame)")


class _Zstd:
    """One zstd frame, walked block by block so each decoder call has bounded output.

    zstandard's decompressobj returns everything an input produces at once, so a small
    hostile input (RLE blocks) could expand to gigabytes in one call; cutting the input at
    zstd block boundaries (RFC 8878 section 3.1.1.2) caps a call at 32 blocks x 128 KiB.
    Walking the blocks also tells exactly where the frame ends.
    """

    def __init__(self, out: Callable[[bytes], None]):
        import zstandard

        self._zstd = zstandard
        self.out, self.d = out, zstandard.ZstdDecompressor().decompressobj()
        self.buf, self.at = b"", 0  # input; self.at is the first byte not yet walked
        self.state = "header"  # header -> blocks -> checksum -> done
        self.checksum = False
        self.cut: list[memoryview] = []  # walked input waiting to be decoded

    @property
    def pending(self) -> bytes:
        """Input after the last byte walked (after "done": what follows the frame)."""
        return self.buf[self.at:]

    def _avail(self) -> int:
        return len(self.buf) - self.at

    def _take(self, n: int) -> None:
        self.cut.append(memoryview(self.buf)[self.at:self.at + n])
        self.at += n

    def _header(self) -> bool:
        if self._avail() < 6:
            return False
        head = self.buf[self.at:self.at + 18]
        if int.from_bytes(head[:4], "little") != ZSTD_MAGIC:
            raise BlockProblem(f"not a zstd frame (starts {head[:4].hex(' ')})")
        try:
            size = self._zstd.frame_header_size(head)
        except self._zstd.ZstdError as exc:
            raise BlockProblem(f"zstd frame header corrupt: {exc}") from None
        if self._avail() < size:
            return False
        self.checksum = bool(head[4] & 0x04)
        self._take(size)
        self.state = "blocks"
        return True

    def _block(self) -> bool:
        if self._avail() < 3:
            return False
        header = int.from_bytes(self.buf[self.at:self.at + 3], "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3:
            raise BlockProblem("zstd block of reserved type (corrupt frame)")
        if size > ZSTD_BLOCK_MAX:
            raise BlockProblem(f"zstd block of {size} bytes, more than the 128 KiB a block may hold")
        if self._avail() < 3 + (1 if kind == 1 else size):
            return False
        self._take(3 + (1 if kind == 1 else size))
        if last:
            self.state = "checksum" if self.checksum else "done"
        return True

    def feed(self, data: bytes) -> None:
        if self.state == "done":
            raise BlockProblem(f"{len(data)} bytes follow the end of the zstd frame")
        self._decode()  # nothing may still point into the old buffer
        self.buf, self.at = self.buf[self.at:] + data, 0
        while self.state != "done":
            if self.state == "header" and not self._header():
                break
            if self.state == "blocks":
                blocks = 0
                while self.state == "blocks" and self._block():
                    blocks += 1
                    if blocks == 32:
                        self._decode()
                        blocks = 0
                if self.state == "blocks":
                    break
            if self.state == "checksum":
                if self._avail() < 4:
                    break
                self._take(4)
                self.state = "done"
        self._decode()
        if self.state == "done" and self._avail():
            raise BlockProblem(f"{self._avail()} bytes follow the end of the zstd frame")

    def _decode(self) -> None:
        if not self.cut:
            return
        data, self.cut = b"".join(self.cut), []
        try:
            self.out(self.d.decompress(data))
        except self._zstd.ZstdError as exc:
            raise BlockProblem(f"zstd data corrupt: {exc}") from None

    def finish(self) -> None:
        if self.state != "done" or not self.d.eof:
            raise BlockProblem("compressed stream cut short (the block ends inside its zstd frame)")


class _Gzip(_Zlib):
    wbits = 16 + zlib.MAX_WBITS  # a gzip member (header, deflate, CRC-32 and length trailer)


DECODERS: dict[str, type] = {"none": _Plain, "gzip": _Zlib, "lz4": _Lz4, "zstd": _Zstd}
FILE_DECODERS: dict[str, type] = {"gzip": _Gzip, "lz4": _Lz4, "zstd": _Zstd}  # compressed files


# -- the decoded text ------------------------------------------------------------------------
class CopyText:
    """Checks the decoded data of one TABLE DATA block against what pg_dump writes."""

    def __init__(self, columns: int | None):
        self.columns = columns  # None: do not count tabs
        self.recent = b"\n"  # the last bytes seen; starts with a virtual newline before row 1
        self.rows = self.tabs = self.size = 0
        self.ends = 0  # "\n\\.\n" seen: end-of-data lines

    def update(self, data: bytes) -> None:
        if not data:
            return
        if b"\0" in data:
            raise BlockProblem("NUL byte in COPY data (PostgreSQL text cannot contain one)")
        across = self.recent[-3:] + data[:3]  # a marker split between two pieces
        self.ends += across.count(b"\n\\.\n")
        if b"\\" in data:  # a backslash is rare in COPY text: memchr first, the full search only then
            self.ends += data.count(b"\n\\.\n")
        self.rows += data.count(b"\n")
        if self.columns is not None:
            self.tabs += data.count(b"\t")
        self.size += len(data)
        self.recent = (self.recent + data[-5:])[-5:]

    def finish(self) -> None:
        if self.size == 0:
            raise BlockProblem("empty TABLE DATA block (pg_dump writes at least the end-of-data line)")
        if self.recent != COPY_END:
            raise BlockProblem("COPY data does not end with pg_dump's end-of-data line (\\.)")
        if self.ends != 1:
            raise BlockProblem(f"COPY data has {self.ends} end-of-data lines (\\.); pg_dump writes one, last")
        rows = self.rows - 3  # the "\." line and the two empty lines after it
        if self.columns and self.tabs != rows * (self.columns - 1):
            raise BlockProblem(f"COPY data has {self.tabs} column separators for {rows} rows of "
                               f"{self.columns} columns (expected {rows * (self.columns - 1)})")


def text_check(desc: str, copy_columns: int | None, compression: str) -> CopyText | None:
    """The check for a block's decoded data: TABLE DATA written as COPY is checked, the rest not."""
    if desc != "TABLE DATA" or copy_columns is None:
        return None
    return CopyText(copy_columns if compression == "none" else None)


# -- the pool ---------------------------------------------------------------------------------
class _Job:
    def __init__(self, label: str, compression: str, text: CopyText | None, table: str | None):
        self.label, self.text, self.table = label, text, table
        self.inbox: queue.Queue = queue.Queue(maxsize=QUEUED_SEGMENTS)
        self.decoded = 0
        self.decoder = DECODERS[compression](self._out)
        self.problem: str | None = None
        self.abandoned = False  # the file ended inside this block: the reader reports that

    def _out(self, data: bytes) -> None:
        self.decoded += len(data)
        if self.text is not None:
            self.text.update(data)

    def run(self) -> None:
        failed = False
        while (piece := self.inbox.get()) is not None:
            if failed:
                continue  # keep draining so the reader never blocks on a dead block
            try:
                self.decoder.feed(piece)
            except BlockProblem as exc:
                self.problem, failed = str(exc), True
        if not failed:
            try:
                self.decoder.finish()
                if self.text is not None:
                    self.text.finish()
            except BlockProblem as exc:
                self.problem = str(exc)


class BlockPool:
    """Decodes blocks on ``workers`` threads; :meth:`open` hands out a feeder per block."""

    def __init__(self, workers: int):
        self.workers = max(1, workers)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pgcustom")
        self._slots = threading.Semaphore(self.workers + 1)
        self.jobs: list[_Job] = []
        self.decoded = 0

    def open(self, label: str, compression: str, text: CopyText | None,
             table: str | None = None) -> "BlockFeeder":
        self._slots.acquire()
        job = _Job(label, compression, text, table)
        self.jobs.append(job)
        return BlockFeeder(self, job)

    def _start(self, job: _Job) -> None:
        def run() -> None:
            try:
                job.run()
            except Exception as exc:  # a decoder bug must be a verdict, not a hang
                job.problem = f"could not decode: {type(exc).__name__}: {exc}"
                while job.inbox.get() is not None:
                    pass
            finally:
                self._slots.release()

        self._executor.submit(run)

    def close(self) -> list[tuple[str, str]]:
        """Wait for every block; (label, problem) for each block that is not whole."""
        self._executor.shutdown(wait=True)
        self.decoded = sum(j.decoded for j in self.jobs)
        return [(j.label, j.problem) for j in self.jobs if j.problem and not j.abandoned]

    def copy_rows(self) -> dict[str, int]:
        """Rows per table of the TABLE DATA blocks (after :meth:`close`)."""
        rows: dict[str, int] = {}
        for j in self.jobs:
            if j.table is not None and j.text is not None:
                rows[j.table] = rows.get(j.table, 0) + max(0, j.text.rows - 3)
        return rows


class BlockFeeder:
    """What the reader calls while it walks one block's chunks; buffers into segments."""

    def __init__(self, pool: BlockPool, job: _Job):
        self._pool, self._job = pool, job
        self._segment = bytearray()
        self._started = False

    def feed(self, data) -> None:
        self._segment += data
        if len(self._segment) >= SEGMENT:
            self._flush()

    def _flush(self) -> None:
        if not self._started:
            self._pool._start(self._job)
            self._started = True
        self._job.inbox.put(self._segment)  # handed over, never written again: no copy
        self._segment = bytearray()

    def close(self) -> None:
        """The block's chunks ended: decode what is left and check the stream ended."""
        if self._segment:
            piece, self._segment = self._segment, bytearray()
            self._job.inbox.put(piece)
        if not self._started:
            self._pool._start(self._job)
            self._started = True
        self._job.inbox.put(None)

    def abandon(self) -> None:
        """The file ended inside this block: end its worker without a verdict of its own."""
        self._job.abandoned = True
        self._segment = bytearray()
        self.close()
