"""The nouns every job shares: a backup (one identity, wherever its copies are) and a check result.

A backup is identified by its source and its file name; its timestamp comes from the name
(:mod:`backupkit.naming`), never from an mtime or S3's LastModified. It may have a local
copy, an S3 copy, or both (:mod:`backupkit.catalog` finds them). Its id ``SOURCE/NAME`` is
the artifact name in check results and the key of the verification memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable


@dataclass(frozen=True)
class CheckResult:
    """The one result type every check returns: (artifact, check, ok, detail)."""

    artifact: str
    check: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CheckResult":
        return cls(artifact=d["artifact"], check=d["check"], ok=bool(d["ok"]), detail=d.get("detail", ""))

    def line(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL'} {self.artifact}: {self.check}: {self.detail}"


def problems(results: Iterable[CheckResult]) -> list[CheckResult]:
    return [r for r in results if not r.ok]


def backup_id(source: str, name: str) -> str:
    """The artifact name and verification-memory key of a backup: ``SOURCE/NAME``."""
    return f"{source}/{name}"


def source_of(artifact: str) -> str:
    """The source part of an artifact name (``SOURCE/NAME`` or a bare source name)."""
    return artifact.split("/", 1)[0]


@dataclass(frozen=True)
class LocalCopy:
    """A backup's file (or pg_dump directory) on disk, and which companions lie beside it."""

    path: Path
    size: int  # bytes of the backup; a directory: of all its files
    is_dir: bool = False
    sidecar: bool = False  # NAME.sha256 exists
    manifest: bool = False  # NAME.manifest.json exists
    companion_bytes: int = 0


@dataclass(frozen=True)
class S3Copy:
    """A backup's object (or, for a directory dump, the objects under ``key/``) in the bucket."""

    key: str
    size: int
    is_dir: bool = False
    etag: str | None = None
    last_modified: datetime | None = None
    storage_class: str = "STANDARD"
    sidecar: bool = False
    manifest: bool = False
    companion_bytes: int = 0


@dataclass(frozen=True)
class Backup:
    """One backup of one source: its own timestamp and its local and S3 copies."""

    source: str
    name: str
    timestamp: datetime
    local: LocalCopy | None = None
    s3: S3Copy | None = None

    @property
    def id(self) -> str:
        return backup_id(self.source, self.name)

    @property
    def path(self) -> Path | None:
        return self.local.path if self.local else None

    @property
    def key(self) -> str | None:
        return self.s3.key if self.s3 else None

    @property
    def size(self) -> int:
        """The backup's bytes (the local copy's when there is one)."""
        return self.local.size if self.local else (self.s3.size if self.s3 else 0)

    @property
    def is_dir(self) -> bool:
        return bool((self.local and self.local.is_dir) or (self.s3 and self.s3.is_dir))

    @property
    def total_bytes(self) -> int:
        """Everything this backup occupies: both copies and their companions."""
        local = self.local.size + self.local.companion_bytes if self.local else 0
        remote = self.s3.size + self.s3.companion_bytes if self.s3 else 0
        return local + remote

    def where(self, bucket: str) -> list[str]:
        out = [f"s3://{bucket}/{self.key}"] if self.key else []
        return out + ([str(self.path)] if self.path else [])


__all__ = ["CheckResult", "problems", "backup_id", "source_of", "LocalCopy", "S3Copy", "Backup"]
