"""One pass over an artifact: every byte read is hashed, and may be copied to a sink.

Verification reads a backup exactly once. :class:`Tap` pulls the file in 1 MiB chunks,
feeds each chunk to SHA-256 (and to sinks such as pg_restore's stdin) as it arrives, and
serves whatever read sizes the consumer (gzip, tarfile) asks for. What the consumer
leaves unread is drained through the same path, so the digest always covers the file.
"""

from __future__ import annotations

import gzip
import hashlib
import queue
import threading
import weakref
import zlib
from typing import BinaryIO, Callable, Iterator

CHUNK = 1 << 20
INLINE_HASH = 8 << 20  # bytes hashed in the reader's thread before the hasher's own starts
HASH_QUEUE = 16  # chunks waiting to be hashed
# Errors a damaged gzip stream raises: truncation is EOFError, the rest are corruption.
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


class _Hasher:
    """SHA-256 of the chunks pulled, on its own thread once the file proves large.

    hashlib releases the GIL on large updates, so the digest (the slowest single pass of an
    uncompressed or lz4 dump: ~1 GB/s) overlaps the parsing instead of adding to it. The
    first :data:`INLINE_HASH` bytes are hashed inline: small files start no thread. The
    queue holds at most :data:`HASH_QUEUE` chunks (memory stays bounded); the thread ends
    at :meth:`hexdigest`, or when the Tap is dropped without one.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._inline = 0
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    def update(self, data: bytes) -> None:
        if self._queue is not None:
            self._queue.put(data)
            return
        self._sha.update(data)
        self._inline += len(data)
        if self._inline >= INLINE_HASH:
            self._queue = queue.Queue(maxsize=HASH_QUEUE)
            self._thread = threading.Thread(target=_hash_from, args=(self._sha, self._queue), name="sha256",
                                            daemon=True)
            self._thread.start()
            weakref.finalize(self, self._queue.put, None)

    def hexdigest(self) -> str:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = self._queue = None
        return self._sha.hexdigest()


def _hash_from(sha, chunks: queue.Queue) -> None:
    while (data := chunks.get()) is not None:
        sha.update(data)


class Tap:
    """A read-only stream over ``raw`` that hashes (and forwards) each chunk it pulls.

    Chunks are read into one reused buffer (a fresh 1 MiB object per read costs an mmap,
    page faults and munmap each time) and copied out once into the immutable chunk that
    the consumer, the hasher's thread and the sinks share; sinks must use it before
    returning.
    """

    def __init__(self, raw: BinaryIO, chunk: int = CHUNK):
        self._raw = raw
        self._chunk = memoryview(bytearray(chunk))
        self._sha = _Hasher()
        self._sinks: list[Callable[[memoryview], None]] = []
        self._buf, self._pos = b"", 0
        self.bytes_read = 0  # pulled from raw (hashed), not necessarily consumed yet

    def _pull(self, keep: bool = True) -> bool:
        n = self._raw.readinto(self._chunk)
        if not n:
            return False
        data = bytes(self._chunk[:n])
        self._sha.update(data)
        self.bytes_read += n
        for sink in self._sinks:
            sink(data)
        if keep:
            self._buf, self._pos = (self._buf[self._pos:] + data if self._pos < len(self._buf) else data), 0
        return True

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes from the current position, without consuming them."""
        while len(self._buf) - self._pos < n and self._pull():
            pass
        return self._buf[self._pos:self._pos + n]

    def add_sink(self, sink: Callable[[memoryview], None]) -> None:
        """Send every byte of the file to ``sink``: what was peeked so far, then each new chunk."""
        if self.bytes_read != len(self._buf):
            raise RuntimeError("add_sink after the start of the file left the buffer")
        if self._buf:
            sink(memoryview(self._buf))
        self._sinks.append(sink)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (a size is required: reading "everything" would not be bounded)."""
        out = self.peek(n)
        self._pos += len(out)
        return out

    def read_block(self) -> bytes:
        """Whatever is buffered, else the next chunk of the file (b"" at its end).

        For parsers that keep their own position: no size is asked for, so nothing is
        copied twice.
        """
        if self._pos >= len(self._buf):
            self._buf, self._pos = b"", 0
            if not self._pull():
                return b""
        out = self._buf[self._pos:] if self._pos else self._buf
        self._buf, self._pos = b"", 0
        return out

    def drain(self) -> None:
        """Pull the rest of the file through the hasher and sinks, keeping nothing."""
        self._buf, self._pos = b"", 0
        while self._pull(keep=False):
            pass

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def gzip_problem(exc: BaseException) -> str:
    """Name what is wrong with a gzip stream from the error reading it raised."""
    if isinstance(exc, EOFError):
        return "gzip stream truncated"
    return f"gzip stream corrupt: {exc}"


def read_to_end(stream: BinaryIO) -> None:
    """Consume ``stream`` (for gzip: its CRC and length trailer are checked at the end)."""
    while stream.read(CHUNK):
        pass


class StreamProblem(Exception):
    """A compressed file is damaged or cut short; the message is the verdict."""


def _members(compression: str, out: Callable[[bytes], None]):
    """A decoder of consecutive members/frames (``cat a.gz b.gz`` is one valid gzip file)."""
    from backupkit.checks.blocks import FILE_DECODERS, BlockProblem

    make = FILE_DECODERS[compression]

    class Members:
        def __init__(self) -> None:
            self.current = make(out)
            self.members = 1

        def feed(self, data: bytes) -> None:
            while data:
                try:
                    self.current.feed(data)
                    return
                except BlockProblem as exc:
                    rest = self.current.after_end()  # the next member, if this one ended
                    if rest is None:
                        detail = str(exc).removeprefix(f"{compression} data corrupt: ")
                        raise StreamProblem(f"{compression} stream corrupt: {detail}") from None
                    self.current, self.members, data = make(out), self.members + 1, rest

        def finish(self) -> None:
            try:
                self.current.finish()
            except BlockProblem:
                raise StreamProblem(f"{compression} stream truncated (it ends inside member "
                                    f"{self.members})") from None

    return Members()


def decoded_pieces(tap: Tap, compression: str | None, *, queued: int = 8) -> Iterator[bytes]:
    """The decoded content of the file behind ``tap``, read, hashed and inflated on a thread.

    The parser consuming the pieces runs alongside (zlib, isal, lz4 and zstd release the
    GIL), at most ``queued`` pieces of up to 4 MiB wait in between. A damaged or
    truncated stream raises :class:`StreamProblem` where the consumer reads.
    """
    out: queue.Queue = queue.Queue(maxsize=queued)
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            decoder = _members(compression, put) if compression else None
            while not stop.is_set() and (block := tap.read_block()):
                if decoder is None:
                    put(block)
                else:
                    decoder.feed(block)
            if decoder is not None and not stop.is_set():
                decoder.finish()
            put(None)
        except BaseException as exc:  # handed to the consumer, never lost in the thread
            put(exc)

    thread = threading.Thread(target=work, name="decode", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            if item:
                yield item
    finally:
        stop.set()
        thread.join()
