"""Object bodies of the sandbox's S3 server as immutable files under ``.sandbox/s3/blobs``.

Why: moto keeps each body in a ``SpooledTemporaryFile`` that spills to a *deleted* temporary
file, so bodies cannot outlive the process and every copy of a key is a new file. Here a
body is written once to a named file and never changed (copy-on-write): a key's buffer,
its copies and the parts of a multipart upload are views ``(blob, offset, length)`` of such
files, so a copy costs no disk and no descriptor, and a snapshot of the metadata plus the
blob directory is the whole S3 state.

A blob is deleted only when no state references it (:meth:`BlobStore.unreferenced`, computed
while no request runs, see ``sandbox.s3moto``). Files are opened per
read and closed at once: no descriptor stays open between requests.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator

TMP_PREFIX = ".tmp-"


class BlobStore:
    """Immutable body files ``<root>/<2 hex>/<32 hex>``, written via a temporary name and renamed."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name[:2] / name

    def put(self, data: bytes) -> str:
        name = uuid.uuid4().hex
        final = self.path(name)
        final.parent.mkdir(exist_ok=True)
        tmp = final.with_name(TMP_PREFIX + name)
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, final)
        return name

    def read(self, name: str, offset: int, size: int) -> bytes:
        if size <= 0:
            return b""
        with open(self.path(name), "rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    def names(self) -> Iterator[str]:
        """Every file in the store, finished blobs and leftover temporary files alike."""
        for sub in self.root.iterdir():
            if sub.is_dir():
                for entry in os.scandir(sub):
                    yield entry.name

    def unreferenced(self, referenced: Iterable[str]) -> list[str]:
        """Files not in ``referenced`` (leftover temporary files included)."""
        keep = set(referenced)
        return [name for name in self.names() if name not in keep]

    def remove(self, names: Iterable[str]) -> tuple[int, int]:
        """Delete these files (as listed by :meth:`names`); returns (files, bytes) deleted."""
        files = size = 0
        for name in names:
            path = self.path(name.removeprefix(TMP_PREFIX)).with_name(name)
            try:
                size += path.stat().st_size
                path.unlink()
                files += 1
            except FileNotFoundError:
                pass
        return files, size

    def disk_bytes(self) -> int:
        total = 0
        for sub in self.root.iterdir():
            if sub.is_dir():
                total += sum(e.stat().st_size for e in os.scandir(sub))
        return total


class BlobBuffer:
    """The file-like ``_value_buffer`` moto's ``FakeKey`` writes once and reads in pieces.

    ``seek(0); truncate(); write(value)`` (moto's value setter) makes a new blob instead of
    changing the old one, so every other view of the old body stays valid. ``close()`` does
    nothing: moto closes the buffer of a deleted key, but a delete marker or a listing copy
    may still read it; the file goes when no state references it (:meth:`BlobStore.unreferenced`).
    """

    closed = False

    def __init__(self, store: BlobStore, blob: str | None = None, offset: int = 0, length: int = 0):
        self.store, self.blob, self.offset, self.length = store, blob, offset, length
        self.pos = 0

    def view(self, offset: int = 0, length: int | None = None) -> "BlobBuffer":
        """Another buffer over (part of) the same body."""
        length = self.length - offset if length is None else length
        if offset < 0 or length < 0 or offset + length > self.length:
            raise ValueError(f"range {offset}+{length} outside a body of {self.length} bytes")
        return BlobBuffer(self.store, self.blob, self.offset + offset, length)

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.length}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if size == 0:
            self.blob, self.offset, self.length = None, 0, 0
        else:
            self.length = min(self.length, size)
        return self.length

    def write(self, data: bytes) -> int:
        data = bytes(data)
        if not data:
            return 0
        if self.pos == 0 and self.length == 0:
            body = data
        else:  # not done by moto; kept correct anyway: a new blob with the old bytes around the write
            old = self.store.read(self.blob, self.offset, self.length) if self.blob else b""
            old = old.ljust(self.pos, b"\0")
            body = old[:self.pos] + data + old[self.pos + len(data):]
        self.blob, self.offset, self.length = self.store.put(body), 0, len(body)
        self.pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        left = max(0, self.length - self.pos)
        n = left if size is None or size < 0 else min(size, left)
        if n == 0 or self.blob is None:
            return b""
        data = self.store.read(self.blob, self.offset + self.pos, n)
        self.pos += len(data)
        return data

    def close(self) -> None:
        return None

    def __deepcopy__(self, memo: dict) -> "BlobBuffer":
        return self.view()

    def __reduce__(self):
        raise TypeError("a BlobBuffer is pickled only by the snapshot (sandbox.s3moto), which records its blob")


__all__ = ["BlobStore", "BlobBuffer"]
