"""Where the archive's files come from: a listing and a reader, and segments read from them.

The verifier is a pure function over an :class:`ArchiveEntry` listing and a reader with
``open(name)`` (a binary stream). :class:`LocalArchive` reads a directory; the S3 prefix
reader lives in :mod:`backupkit.wal.s3` and turns its client's errors into
:class:`Unreadable` itself. Compressed files (``.gz``, ``.zst``) are inflated
while they are read, never past the segment size plus one byte, so a small hostile file
that inflates to gigabytes costs one window of memory and a verdict.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

from backupkit.wal.scan import WINDOW


@dataclass(frozen=True)
class ArchiveEntry:
    name: str
    size: int
    mtime: datetime | None = None   # when it was archived (file mtime, S3 LastModified)
    etag: str | None = None         # S3 only: the object's ETag (the copy check compares it)


class ArchiveReader(Protocol):
    location: str
    parallel_safe: bool   # may be used from worker processes (picklable, no open connections)

    def entries(self) -> Iterator[ArchiveEntry]: ...

    def open(self, name: str) -> BinaryIO: ...


class Unreadable(Exception):
    """A stored file that cannot be read as what its name says: a verdict, not a crash."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


class ArchiveUnavailable(Exception):
    """The archive itself cannot be listed (no such directory, endpoint unreachable)."""


@dataclass(frozen=True)
class LocalArchive:
    """A directory as ``archive_command`` fills it (files only, no subdirectories)."""

    path: Path
    parallel_safe: bool = True

    @property
    def location(self) -> str:
        return str(self.path)

    def entries(self) -> Iterator[ArchiveEntry]:
        try:
            items = list(os.scandir(self.path))
        except OSError as exc:
            raise ArchiveUnavailable(f"{self.path}: cannot list: {exc.strerror or exc}") from None
        for item in items:
            try:
                if item.is_file(follow_symlinks=False):
                    st = item.stat(follow_symlinks=False)
                    yield ArchiveEntry(item.name, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc))
            except OSError:
                continue  # vanished while listing: the next run sees the archive as it is then

    def open(self, name: str) -> BinaryIO:
        if "/" in name or name in (".", ".."):
            raise Unreadable("corrupt", f"{name}: not a file name")
        try:
            return open(self.path / name, "rb", buffering=0)
        except FileNotFoundError:
            raise Unreadable("gap", f"{name} disappeared from {self.path} while it was read") from None
        except OSError as exc:
            raise Unreadable("corrupt", f"{name}: cannot be read: {exc.strerror or exc}") from None


def _read_errors(compression: str) -> tuple[type[BaseException], ...]:
    """What reading and inflating may raise for damaged input (gzip.BadGzipFile is an OSError)."""
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, ValueError)
    if compression == ".zst":
        import zstandard

        errors += (zstandard.ZstdError,)
    return errors


def _decompressor(raw: BinaryIO, compression: str) -> BinaryIO:
    if compression == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw


def _read_full(stream: BinaryIO, buf: memoryview) -> int:
    """Fill ``buf`` from ``stream`` (short reads are normal for pipes and inflaters); bytes read."""
    got = 0
    readinto = getattr(stream, "readinto", None)
    while got < len(buf):
        if readinto is not None:
            n = readinto(buf[got:])
        else:
            chunk = stream.read(len(buf) - got)
            n = len(chunk)
            buf[got:got + n] = chunk
        if not n:
            break
        got += n
    return got


def read_windows(reader: ArchiveReader, name: str, compression: str, segment_size: int,
                 buf: memoryview | None = None) -> Iterator[memoryview]:
    """The segment's bytes, a window at a time, exactly ``segment_size`` in all.

    Each window is a view of ``buf`` (default: a new buffer of :data:`WINDOW` bytes), valid
    until the next one: pass the same buffer for every segment to allocate it once.
    Raises :class:`Unreadable` ("truncated": the content is shorter or longer than a
    segment; "corrupt": the compressed stream is damaged or the file cannot be read).
    """
    buf = memoryview(bytearray(WINDOW)) if buf is None else buf
    window = min(len(buf), segment_size)
    try:
        with reader.open(name) as raw:
            stream = _decompressor(raw, compression)
            done = 0
            while done < segment_size:
                n = _read_full(stream, buf[:min(window, segment_size - done)])
                if n < min(window, segment_size - done):
                    what = "decompresses to" if compression else "holds"
                    raise Unreadable("truncated", f"{name} {what} {done + n} bytes, not a whole "
                                                  f"segment of {segment_size}")
                done += n
                yield buf[:n]
            if stream.read(1):
                raise Unreadable("truncated", f"{name} decompresses to more than a segment of {segment_size} bytes")
    except Unreadable:
        raise
    except _read_errors(compression) as exc:
        raise Unreadable("corrupt", f"{name}: {compression[1:] or 'file'} cannot be read: {exc}") from None


def read_head(reader: ArchiveReader, name: str, compression: str, n: int) -> bytes:
    """The first ``n`` bytes of a stored file's content (inflated); fewer if it is shorter."""
    try:
        with reader.open(name) as raw:
            buf = memoryview(bytearray(n))
            got = _read_full(_decompressor(raw, compression), buf)
            return bytes(buf[:got])
    except Unreadable:
        raise
    except _read_errors(compression) as exc:
        raise Unreadable("corrupt", f"{name}: cannot be read: {exc}") from None


def read_small(reader: ArchiveReader, name: str, compression: str, limit: int) -> bytes:
    """A small file (history, label), whole, refused past ``limit`` bytes."""
    try:
        with reader.open(name) as raw:
            stream = _decompressor(raw, compression)
            data = stream.read(limit + 1)
    except Unreadable:
        raise
    except _read_errors(compression) as exc:
        raise Unreadable("corrupt", f"{name}: cannot be read: {exc}") from None
    if len(data) > limit:
        raise Unreadable("corrupt", f"{name} is larger than {limit} bytes: not a file PostgreSQL writes")
    return data


__all__ = ["ArchiveEntry", "ArchiveReader", "LocalArchive", "Unreadable", "ArchiveUnavailable",
           "read_windows", "read_head", "read_small"]
