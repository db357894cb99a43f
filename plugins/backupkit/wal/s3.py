"""A WAL archive under an S3 prefix, read through a :class:`~backupkit.storage.objectstore.Bucket`.

Keys directly under the prefix are the archive's files, as an ``archive_command``
uploading ``%f`` writes them; deeper keys are not. The listing streams page by page; a
read streams the object's body, and S3's errors come back as
:class:`~backupkit.wal.archive.Unreadable` verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from backupkit.storage.objectstore import Bucket, client_errors, describe_error, is_not_found, split_s3_uri
from backupkit.wal.archive import ArchiveEntry, ArchiveUnavailable, Unreadable


def split_prefix(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` as (bucket, ``some/prefix/``); ``s3://bucket`` is the whole bucket."""
    rest = uri[5:].strip("/") if uri.startswith("s3://") else ""
    if rest and "/" not in rest:
        return rest, ""
    bucket, key = split_s3_uri(uri)
    return bucket, key.strip("/") + "/"


class _Body:
    """A GetObject body as a file: read(n) and close, with S3 errors turned into verdicts."""

    def __init__(self, body: Any, name: str):
        self._body, self._name = body, name

    def read(self, n: int = -1) -> bytes:
        try:
            return self._body.read(None if n < 0 else n)
        except (*client_errors(), OSError) as exc:
            raise Unreadable("corrupt", f"{self._name}: reading from S3 failed: {exc}") from None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> "_Body":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class S3Archive:
    """The archive under ``prefix`` of ``bucket``."""

    bucket: Bucket
    prefix: str
    parallel_safe: bool = False   # a boto3 client does not cross into worker processes

    @property
    def location(self) -> str:
        return self.bucket.uri(self.prefix)

    def entries(self) -> Iterator[ArchiveEntry]:
        try:
            for obj in self.bucket.objects(self.prefix, delimiter="/"):
                name = obj.key[len(self.prefix):]
                if name and "/" not in name:
                    yield ArchiveEntry(name, obj.size, obj.last_modified, obj.etag)
        except client_errors() as exc:
            raise ArchiveUnavailable(f"cannot list: {describe_error(exc, self.location)}") from None

    def open(self, name: str) -> BinaryIO:
        try:
            body = self.bucket.body(self.prefix + name)
        except client_errors() as exc:
            if is_not_found(exc):
                raise Unreadable("gap", f"{name} disappeared from {self.location} while it was read") from None
            raise Unreadable("corrupt", f"{name}: cannot be read: {describe_error(exc, self.location)}") from None
        return _Body(body, name)


__all__ = ["S3Archive", "split_prefix"]
