"""A WAL archive under an S3 prefix, through a boto3 client given to it.

The one module of the WAL verifier that speaks S3 (to be folded into
:mod:`backupkit.storage.objectstore`). Keys directly under the prefix are the archive's
files, as an ``archive_command`` uploading ``%f`` writes them; deeper keys are not. The
listing streams page by page; a read streams the object's body, and S3's errors come
back as :class:`~backupkit.wal.archive.Unreadable` verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from backupkit.catalog import split_s3_uri
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
        from botocore.exceptions import BotoCoreError

        try:
            return self._body.read(None if n < 0 else n)
        except (BotoCoreError, OSError) as exc:
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
    """The archive under ``s3://bucket/prefix``; ``client`` is a boto3 S3 client."""

    client: Any
    bucket: str
    prefix: str
    parallel_safe: bool = False   # a boto3 client does not cross into worker processes

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def entries(self) -> Iterator[ArchiveEntry]:
        from botocore.exceptions import BotoCoreError, ClientError

        token = None
        while True:
            args = {"Bucket": self.bucket, "Prefix": self.prefix, "Delimiter": "/"}
            if token:
                args["ContinuationToken"] = token
            try:
                page = self.client.list_objects_v2(**args)
            except (ClientError, BotoCoreError) as exc:
                raise ArchiveUnavailable(f"{self.location}: cannot list: {exc}") from None
            for obj in page.get("Contents", ()):
                name = obj["Key"][len(self.prefix):]
                if name and "/" not in name:
                    yield ArchiveEntry(name, int(obj.get("Size", 0)), obj.get("LastModified"))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def open(self, name: str) -> BinaryIO:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise Unreadable("gap", f"{name} disappeared from {self.location} while it was read") from None
            raise Unreadable("corrupt", f"{name}: cannot be read from S3: {exc}") from None
        except BotoCoreError as exc:
            raise Unreadable("corrupt", f"{name}: cannot be read from S3: {exc}") from None
        return _Body(body, name)


__all__ = ["S3Archive", "split_prefix"]
