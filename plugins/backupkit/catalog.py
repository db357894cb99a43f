"""THE catalog: which backups of a source exist, on disk and in S3, merged by name.

Every job asks this module (the daily checks, retention, restores, the reports, the
drill, the health page), so they all see the same backups: a file or a pg_dump
directory in ``local_dir`` whose name matches the source's pattern, and the objects under
``s3_prefix`` -- ``PREFIX/NAME`` for a file, ``PREFIX/NAME/...`` for a directory dump --
with their companions ``NAME.sha256`` and ``NAME.manifest.json`` on either side.

Listings stream (one ListObjectsV2 page at a time); what is kept per name is small, so
100 000 backups cost a few tens of MB. Timestamps come from the names only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backupkit.config import Source
from backupkit.model import Backup, LocalCopy, S3Copy
from backupkit.storage.localfs import COMPANIONS, MANIFEST_SUFFIX, SIDECAR_SUFFIX, tree_size
from backupkit.storage.objectstore import Bucket


def s3_key_for(source: Source, name: str) -> str:
    """The S3 key of backup (or companion) file ``name`` of ``source``."""
    return f"{source.s3_prefix}{name}"


def split_companion(source: Source, name: str) -> tuple[str, str] | None:
    """(backup name, companion suffix) when ``name`` is a companion of a backup of ``source``."""
    for suffix in COMPANIONS:
        if name.endswith(suffix) and source.pattern.timestamp(name[: -len(suffix)]) is not None:
            return name[: -len(suffix)], suffix
    return None


@dataclass
class _Side:
    """What one side (local or S3) holds of one name while a listing is merged."""

    size: int = -1  # -1: no backup on this side (companions only, perhaps)
    is_dir: bool = False
    where: object = None  # Path or key
    sidecar: bool = False
    manifest: bool = False
    companion_bytes: int = 0
    extra: dict = field(default_factory=dict)

    def companion(self, suffix: str, size: int) -> None:
        if suffix == SIDECAR_SUFFIX:
            self.sidecar = True
        elif suffix == MANIFEST_SUFFIX:
            self.manifest = True
        self.companion_bytes += size


class Catalog:
    """The backups of one source.

    :param source: the configured source
    :param bucket: the bucket its copies are in (None: local only)
    """

    def __init__(self, source: Source, bucket: Bucket | None = None):
        self.source = source
        self.bucket = bucket

    def s3_key(self, name: str) -> str:
        return s3_key_for(self.source, name)

    # -- the two sides ----------------------------------------------------------------------
    def scan_local(self) -> dict[str, _Side]:
        """name -> what ``local_dir`` holds of it (one directory read; raises OSError)."""
        found: dict[str, _Side] = {}
        if not self.source.local_dir.is_dir():
            return found
        with os.scandir(self.source.local_dir) as entries:
            for de in entries:
                comp = split_companion(self.source, de.name)
                if comp is not None:
                    found.setdefault(comp[0], _Side()).companion(comp[1], de.stat().st_size)
                elif self.source.pattern.timestamp(de.name) is not None:
                    side = found.setdefault(de.name, _Side())
                    path = Path(de.path)
                    side.is_dir = de.is_dir(follow_symlinks=False)
                    side.size = tree_size(path) if side.is_dir else de.stat().st_size
                    side.where = path
        return found

    def scan_s3(self) -> dict[str, _Side]:
        """name -> what the bucket holds of it under ``s3_prefix`` (streamed; raises S3 errors)."""
        found: dict[str, _Side] = {}
        if self.bucket is None:
            return found
        prefix = self.source.s3_prefix
        for obj in self.bucket.objects(prefix):
            rel = obj.key[len(prefix):]
            head, sep, _ = rel.partition("/")
            if sep:  # a member of a directory-format dump: PREFIX/NAME/...
                if self.source.pattern.timestamp(head) is None:
                    continue
                side = found.setdefault(head, _Side())
                side.size = max(side.size, 0) + obj.size
                side.is_dir = True
                side.where = self.s3_key(head)
                if side.extra.get("last_modified") is None or (obj.last_modified and obj.last_modified >
                                                                side.extra["last_modified"]):
                    side.extra["last_modified"] = obj.last_modified
                continue
            comp = split_companion(self.source, rel)
            if comp is not None:
                found.setdefault(comp[0], _Side()).companion(comp[1], obj.size)
            elif self.source.pattern.timestamp(rel) is not None:
                side = found.setdefault(rel, _Side())
                side.size, side.where = obj.size, obj.key
                side.extra = {"etag": obj.etag, "last_modified": obj.last_modified,
                              "storage_class": obj.storage_class}
        return found

    # -- merged ---------------------------------------------------------------------------------
    def _backup(self, name: str, local: _Side | None, remote: _Side | None) -> Backup | None:
        ts = self.source.pattern.timestamp(name)
        if ts is None:
            return None
        lc = sc = None
        if local is not None and local.size >= 0:
            lc = LocalCopy(local.where, local.size, local.is_dir, local.sidecar, local.manifest,
                           local.companion_bytes)
        if remote is not None and remote.size >= 0:
            sc = S3Copy(remote.where, remote.size, remote.is_dir, remote.extra.get("etag"),
                        remote.extra.get("last_modified"), remote.extra.get("storage_class") or "STANDARD",
                        remote.sidecar, remote.manifest, remote.companion_bytes)
        if lc is None and sc is None:
            return None
        return Backup(self.source.name, name, ts, lc, sc)

    @staticmethod
    def _ordered(backups: list[Backup]) -> list[Backup]:
        backups.sort(key=lambda b: (b.timestamp, b.name))
        return backups

    def local(self) -> list[Backup]:
        """The backups on disk, oldest first (by their own timestamp, then name)."""
        sides = self.scan_local()
        return self._ordered([b for n, s in sides.items() if (b := self._backup(n, s, None))])

    def remote(self) -> list[Backup]:
        """The backups in the bucket, oldest first."""
        sides = self.scan_s3()
        return self._ordered([b for n, s in sides.items() if (b := self._backup(n, None, s))])

    def backups(self) -> list[Backup]:
        """Every backup on disk or in the bucket, merged by name, oldest first."""
        return self._ordered(list(self.merged()))

    def merged(self, local: dict[str, _Side] | None = None,
               remote: dict[str, _Side] | None = None) -> Iterator[Backup]:
        """Backups from the two scans (made here unless given), unordered."""
        local = self.scan_local() if local is None else local
        remote = self.scan_s3() if remote is None else remote
        for name in local.keys() | remote.keys():
            b = self._backup(name, local.get(name), remote.get(name))
            if b is not None:
                yield b

    def find(self, name: str) -> Backup | None:
        return next((b for b in self.backups() if b.name == name), None)


def local_backups(source: Source) -> list[Backup]:
    """The backups of ``source`` on disk, oldest first (``Catalog(source).local()``)."""
    return Catalog(source).local()


__all__ = ["Catalog", "local_backups", "s3_key_for", "split_companion"]
