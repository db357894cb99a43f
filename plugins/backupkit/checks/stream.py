"""One pass over an artifact: every byte read is hashed, and may be copied to a sink.

Verification reads a backup exactly once. :class:`Tap` pulls the file in 1 MiB chunks,
feeds each chunk to SHA-256 (and to sinks such as pg_restore's stdin) as it arrives, and
serves whatever read sizes the consumer (gzip, tarfile) asks for. What the consumer
leaves unread is drained through the same path, so the digest always covers the file.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from typing import BinaryIO, Callable

CHUNK = 1 << 20
# Errors a damaged gzip stream raises: truncation is EOFError, the rest are corruption.
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


class Tap:
    """A read-only stream over ``raw`` that hashes (and forwards) each chunk it pulls.

    Chunks are read into one reused buffer (a fresh 1 MiB object per chunk costs an
    mmap, page faults and munmap each time); sinks get a view of it and must use it
    before returning.
    """

    def __init__(self, raw: BinaryIO, chunk: int = CHUNK):
        self._raw = raw
        self._chunk = memoryview(bytearray(chunk))
        self._sha = hashlib.sha256()
        self._sinks: list[Callable[[memoryview], None]] = []
        self._buf, self._pos = b"", 0
        self.bytes_read = 0  # pulled from raw (hashed), not necessarily consumed yet

    def _pull(self, keep: bool = True) -> bool:
        n = self._raw.readinto(self._chunk)
        if not n:
            return False
        data = self._chunk[:n]
        self._sha.update(data)
        self.bytes_read += n
        for sink in self._sinks:
            sink(data)
        if keep:
            self._buf, self._pos = self._buf[self._pos:] + data, 0
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
