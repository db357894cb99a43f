"""Decoding the data blocks of a pg_dump custom archive to their exact end, on worker threads.

Each data block of a custom dump is one compressed stream cut into length-prefixed
chunks (pg_backup_custom.c ``_CustomWriteFunc``): a zlib stream for gzip
(compress_gzip.c uses ``deflateInit``), one LZ4 frame (compress_lz4.c, LZ4F API), one
zstd frame (compress_zstd.c, ``ZSTD_e_end`` once), or the bytes themselves for none.
A block is whole when its stream ends exactly at the end of its last chunk: no missing
tail, no bytes after the end of the stream, no second frame.

The decoded text of a TABLE DATA block is checked as COPY text
(:mod:`backupkit.checks.copytext`, docs/dump-rules.md). Uncompressed blocks have nothing
to decode: their chunks are walked and counted in the reader's thread
(:class:`InlineJob`, :func:`~backupkit.checks.copytext.walk_copy_chunks`).

Threads, not processes: isal, zlib, lz4 and zstandard all release the GIL while they
decode, so two workers inflate two blocks at once. Work is bounded: at most ``workers``
blocks are decoded at a time and at most :data:`QUEUED_SEGMENTS` input segments wait
in all; zstd output is bounded per call by feeding whole zstd blocks (each decodes to
at most 128 KiB), the others by ``max_length``.
"""

from __future__ import annotations

import queue
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

try:  # ISA-L inflates about 2x faster than zlib here (bench/bench_verify.py --inflaters)
    from isal import isal_zlib as _zlib_impl
except ImportError:  # pragma: no cover - isal is pinned in requirements.txt
    _zlib_impl = zlib

if TYPE_CHECKING:  # pragma: no cover
    from backupkit.checks.copytext import CopyText

SEGMENT = 4 << 20  # input bytes handed to a worker at once
QUEUED_SEGMENTS = 24  # input segments waiting in all blocks together (96 MiB): enough for the reader to
# get ahead to the next block while a worker is still on this one, which a budget per block is not
OUT_MAX = 1 << 20  # decoded bytes per decoder call (larger outputs cost a page fault per 4 KiB)
ZSTD_BLOCKS_PER_CALL = OUT_MAX // (128 << 10)
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

    def after_end(self) -> bytes | None:
        return None


class _Zlib:
    """Input in slices of :data:`OUT_MAX`: zlib copies its unconsumed tail on every call."""

    wbits = zlib.MAX_WBITS  # a zlib stream, as pg_dump's custom format writes

    def __init__(self, out: Callable[[bytes], None]):
        self.out, self.d = out, _zlib_impl.decompressobj(self.wbits)
        self.rest: bytes | None = None  # what followed the end of the stream

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        for at in range(0, len(view), OUT_MAX):
            if self.d.eof:
                self.rest = bytes(view[at:])
                raise BlockProblem(f"{len(self.rest)} bytes follow the end of the compressed stream")
            try:
                self.out(self.d.decompress(view[at:at + OUT_MAX], OUT_MAX))
                while self.d.unconsumed_tail:
                    self.out(self.d.decompress(self.d.unconsumed_tail, OUT_MAX))
            except Exception as exc:  # zlib.error, or isal's own error type
                raise BlockProblem(f"gzip data corrupt: {exc}") from None
            if self.d.unused_data:
                self.rest = self.d.unused_data + bytes(view[at + OUT_MAX:])
                raise BlockProblem(f"{len(self.rest)} bytes follow the end of the compressed stream")

    def finish(self) -> None:
        if not self.d.eof:
            raise BlockProblem("compressed stream cut short (the block ends before the end of its zlib stream)")

    def after_end(self) -> bytes | None:
        return self.rest


class _Lz4:
    """One LZ4 frame through ``decompress_chunk`` on views of the input (the frame
    decompressor object copies its unconsumed input on every call)."""

    def __init__(self, out: Callable[[bytes], None]):
        import lz4.frame

        self._lz4, self.out = lz4.frame, out
        self.ctx = lz4.frame.create_decompression_context()
        self.eof = False
        self.rest: bytes | None = None  # what followed the end of the frame

    def feed(self, data: bytes) -> None:
        view, at = memoryview(data), 0
        if self.eof and view:
            self.rest = bytes(view)
            raise BlockProblem(f"{len(view)} bytes follow the end of the LZ4 frame")
        try:
            while at < len(view) and not self.eof:
                out, used, self.eof = self._lz4.decompress_chunk(self.ctx, view[at:], max_length=OUT_MAX)
                if not used and not out:
                    raise RuntimeError("the decoder takes no more input")
                at += used
                self.out(out)
        except RuntimeError as exc:  # python-lz4 reports corrupt frames as RuntimeError
            raise BlockProblem(f"lz4 data corrupt: {exc}") from None
        if at < len(view):
            self.rest = bytes(view[at:])
            raise BlockProblem(f"{len(self.rest)} bytes follow the end of the LZ4 frame")

    def finish(self) -> None:
        if not self.eof:
            raise BlockProblem("compressed stream cut short (the block ends inside its LZ4 frame)")

    def after_end(self) -> bytes | None:
        return self.rest


class _Zstd:
    """One zstd frame, walked block by block so each decoder call has bounded output.

    zstandard's decompressobj returns everything an input produces at once, so a small
    hostile input (RLE blocks) could expand to gigabytes in one call; cutting the input at
    zstd block boundaries (RFC 8878 section 3.1.1.2) caps a call at 8 blocks x 128 KiB.
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
        self.rest: bytes | None = None  # what followed the end of the frame

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
            self.rest = bytes(data)
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
                    if blocks == ZSTD_BLOCKS_PER_CALL:
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
            self.rest = bytes(self.pending)
            raise BlockProblem(f"{self._avail()} bytes follow the end of the zstd frame")

    def _decode(self) -> None:
        if not self.cut:
            return
        data, self.cut = b"".join(self.cut), []
        try:
            self.out(self.d.decompress(data))
        except self._zstd.ZstdError as exc:
            raise BlockProblem(f"zstd data corrupt: {exc}") from None

    def after_end(self) -> bytes | None:
        return self.rest

    def finish(self) -> None:
        if self.state != "done" or not self.d.eof:
            raise BlockProblem("compressed stream cut short (the block ends inside its zstd frame)")


class _Gzip(_Zlib):
    wbits = 16 + zlib.MAX_WBITS  # a gzip member (header, deflate, CRC-32 and length trailer)


DECODERS: dict[str, type] = {"none": _Plain, "gzip": _Zlib, "lz4": _Lz4, "zstd": _Zstd}
FILE_DECODERS: dict[str, type] = {"gzip": _Gzip, "lz4": _Lz4, "zstd": _Zstd}  # compressed files


# -- the pool ---------------------------------------------------------------------------------
class _Job:
    def __init__(self, label: str, compression: str, text: CopyText | None, table: str | None,
                 budget: threading.Semaphore | None = None):
        self.label, self.text, self.table = label, text, table
        self.inbox: queue.Queue = queue.Queue()  # bounded by the pool's budget of segments
        self.budget = budget
        self.decoded = 0
        self.decoder = DECODERS[compression](self._out)
        self.problem: str | None = None
        self.abandoned = False  # the file ended inside this block: the reader reports that

    def _out(self, data: bytes) -> None:
        self.decoded += len(data)
        if self.text is not None:
            self.text.update(data)

    def take(self):
        """The next segment (None: the block ended); its place in the budget is freed."""
        piece = self.inbox.get()
        if piece is not None and self.budget is not None:
            self.budget.release()
        return piece

    def run(self) -> None:
        failed = False
        while (piece := self.take()) is not None:
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


class InlineJob(_Job):
    """A block checked in the reader's own thread: uncompressed data has nothing to decode,
    and handing 120-byte rows to a worker would cost more than counting them."""

    def __init__(self, label: str, text: CopyText, table: str | None):
        super().__init__(label, "none", text, table)

    def _checked(self, check, *args) -> None:
        if self.problem is None:  # after a problem only the chunks are walked (to find the block's end)
            try:
                check(*args)
            except BlockProblem as exc:
                self.problem = str(exc)

    def feed(self, data) -> None:
        self.decoded += len(data)
        self._checked(self.text.update, bytes(data))  # a view of the reader's buffer

    def bulk_ready(self) -> bool:
        """Can text counted elsewhere follow? (it must begin right after a newline)"""
        return self.problem is not None or self.text.recent.endswith(b"\n")

    def add_counted(self, size: int, *counts) -> None:
        self.decoded += size
        self._checked(self.text.add_counted, size, *counts)

    def close(self) -> None:
        self._checked(self.text.finish)

    def abandon(self) -> None:
        self.abandoned = True


class BlockPool:
    """Decodes blocks on ``workers`` threads; :meth:`open` hands out a feeder per block."""

    def __init__(self, workers: int):
        self.workers = max(1, workers)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pgcustom")
        self._slots = threading.Semaphore(self.workers + 1)
        self.budget = threading.Semaphore(QUEUED_SEGMENTS)
        self.jobs: list[_Job] = []
        self.decoded = 0

    def open(self, label: str, compression: str, text: CopyText | None,
             table: str | None = None) -> "BlockFeeder":
        self._slots.acquire()
        job = _Job(label, compression, text, table, self.budget)
        self.jobs.append(job)
        return BlockFeeder(self, job)

    def inline(self, label: str, text: CopyText, table: str | None = None) -> InlineJob:
        """A block the caller checks in its own thread; reported with the others, in order."""
        job = InlineJob(label, text, table)
        self.jobs.append(job)
        return job

    def _start(self, job: _Job) -> None:
        def run() -> None:
            try:
                job.run()
            except Exception as exc:  # a decoder bug must be a verdict, not a hang
                job.problem = f"could not decode: {type(exc).__name__}: {exc}"
                while job.take() is not None:
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
        self._put(self._segment)  # handed over, never written again: no copy
        self._segment = bytearray()

    def _put(self, segment: bytearray) -> None:
        self._pool.budget.acquire()
        self._job.inbox.put(segment)

    def close(self) -> None:
        """The block's chunks ended: decode what is left and check the stream ended."""
        if self._segment:
            piece, self._segment = self._segment, bytearray()
            self._put(piece)
        if not self._started:
            self._pool._start(self._job)
            self._started = True
        self._job.inbox.put(None)

    def abandon(self) -> None:
        """The file ended inside this block: end its worker without a verdict of its own."""
        self._job.abandoned = True
        self._segment = bytearray()
        self.close()
