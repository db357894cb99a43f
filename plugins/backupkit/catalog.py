"""What backups exist: local files and S3 objects of each configured source.

Listings stream (S3 pages are yielded as they arrive) so memory stays flat however long
the history. Every backup is identified by its source and file name; its timestamp comes
from the name (see :mod:`backupkit.naming`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from backupkit.config import Source

SIDECAR_SUFFIX = ".sha256"
MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class LocalBackup:
    source: str
    name: str
    timestamp: datetime
    path: Path
    size: int

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.path)


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    last_modified: datetime | None = None
    etag: str | None = None


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: Path) -> str | None:
    """The hex SHA-256 recorded in ``NAME.sha256`` (sha256sum format), or None if absent."""
    side = sidecar_path(path)
    try:
        text = side.read_text().strip()
    except FileNotFoundError:
        return None
    digest = text.split()[0].lower() if text else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{side}: not a SHA-256 sidecar (expected 64 hex digits)")
    return digest


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def local_backups(source: Source) -> list[LocalBackup]:
    """Backups of ``source`` in its local directory, oldest first (by their own timestamp)."""
    if not source.local_dir.is_dir():
        return []
    found = []
    for entry in source.local_dir.iterdir():
        ts = source.pattern.timestamp(entry.name)
        if ts is None:
            continue
        found.append(LocalBackup(source.name, entry.name, ts, entry, _size(entry)))
    found.sort(key=lambda b: (b.timestamp, b.name))
    return found


def iter_s3_objects(client: Any, bucket: str, prefix: str) -> Iterator[S3Object]:
    """Every object under ``prefix``, one ListObjectsV2 page at a time."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            yield S3Object(obj["Key"], obj["Size"], obj.get("LastModified"), obj.get("ETag"))


def s3_key_for(source: Source, name: str) -> str:
    return f"{source.s3_prefix}{name}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"S3 URI needs a bucket and a key: {uri!r}")
    return bucket, key
