"""The base backup of a point-in-time restore: which one, and its files on local disk, verified.

Rules (docs/wal.md, "Point-in-time restore from S3"):

- **Which**: the newest base backup (plain or tar format) whose end (STOP TIME of its ``.backup`` label
  in the archive, matched by start LSN and timeline, plus the label's one-second resolution) is not
  after the target. Its start comes
  from ``backup_manifest``'s WAL-Ranges: read on disk, or, for a base backup kept in S3 only,
  from the manifest's first 4 KiB and last 64 KiB (two ranged GETs, nothing else downloaded
  to choose: :func:`backupkit.wal.s3_backups.s3_range`, which the daily verification uses too). A local copy is preferred; ``prefer="s3"`` uses the S3 copy when there is one.
- **Disk first**: before anything is copied or downloaded, the free space of the scratch
  filesystem must hold the backup plus :data:`DISK_MARGIN` (the WAL staged one segment at a
  time, the server's own files); else a clear refusal naming both figures.
- **Download**: every object under ``s3_prefix + NAME/`` (relative keys only: no empty, ``.``
  or ``..`` part, no backslash, no key below another file; all judged before the first byte is
  fetched), each no longer than the listing said (refused while streaming), so the total never
  passes what the free-space check allowed; several objects at a time; then ``pg_verifybackup``
  against the downloaded ``backup_manifest`` (every file's checksum, no file missing or
  added, the manifest's own checksum) and its WAL range must be the one chosen. Only then is
  it used. The empty directories a data directory needs (S3 keeps none) are made as initdb
  makes them. A tar-format one (:mod:`backupkit.restore.pitr_tar`) is downloaded without its
  ``pg_wal.tar``, then unpacked and verified there.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from backupkit.catalog import Catalog
from backupkit.config import Source
from backupkit.model import Backup
from backupkit.storage.objectstore import TRANSFER_WORKERS, Bucket, client_errors, describe_error, pooled
from backupkit.wal.backups import BackupError, BaseBackup, parse_label, read_base_backup, verify_files
from backupkit.wal.s3_backups import s3_range

DISK_MARGIN = 256 << 20
# The directories of a data directory as initdb makes them (src/bin/initdb/initdb.c, PostgreSQL 18):
# S3 keeps no empty directory, and the server refuses to start without them.
DATA_SUBDIRS = ("global", "pg_wal/archive_status", "pg_wal/summaries", "pg_commit_ts", "pg_dynshmem", "pg_notify",
                "pg_serial", "pg_snapshots", "pg_subtrans", "pg_twophase", "pg_multixact", "pg_multixact/members",
                "pg_multixact/offsets", "base", "pg_replslot", "pg_tblspc", "pg_stat", "pg_stat_tmp", "pg_xact",
                "pg_logical", "pg_logical/snapshots", "pg_logical/mappings")


class BaseBackupError(ValueError):
    """No usable base backup, not enough disk, or a download that failed its checks."""


@dataclass(frozen=True)
class BaseChoice:
    name: str
    backup: Backup
    start_lsn: int
    start_tli: int
    end: datetime
    from_s3: bool
    format: str = "plain"   # or "tar"

    @property
    def label(self) -> str:
        return f"s3 copy {self.backup.key}" if self.from_s3 else str(self.backup.path)


# -- choosing ------------------------------------------------------------------------------------------
def label_ends(archive) -> dict[tuple[int, int], datetime]:
    """(start timeline, start LSN) -> when each readable ``.backup`` label's backup had surely ended
    (:attr:`BaseBackup.ended_by`: a backup ending 0.4 s after the target, its STOP TIME truncated to
    the second before it, would otherwise be chosen, and recovery would start past the target)."""
    from backupkit.wal.archive import read_small
    from backupkit.wal.naming import classify

    ends: dict[tuple[int, int], datetime] = {}
    for e in archive.entries():
        c = classify(e.name)
        if c is None or c.kind != "label":
            continue
        try:
            label = parse_label(read_small(archive, e.name, c.compression, 64 << 10), e.name, c.tli)
        except Exception:  # a damaged label: the daily verification names it; it is just not used here
            continue
        if label.ended_by is not None:   # STOP TIME plus its one-second resolution
            ends[(label.start_tli, label.start_lsn)] = label.ended_by
    return ends


def _range_of(b: Backup, bucket: Bucket | None, prefer: str) -> tuple[BaseBackup, bool] | None:
    """(its WAL range, from S3) of one catalog entry, or None when it cannot be used."""
    use_s3 = b.key is not None and bucket is not None and (b.path is None or prefer == "s3")
    try:
        if use_s3:
            found = s3_range(bucket, b.key)
            return (found, True) if found is not None else None
        if b.path is None:
            return None
        return read_base_backup(b.path), False
    except (BackupError, *client_errors()):
        return None   # the daily verification names a damaged manifest; it is just not used here


def base_backup_for(source: Source, target: datetime, archive, bucket: Bucket | None = None, *,
                    prefer: str = "local") -> BaseChoice:
    """The newest usable base backup of ``source`` that ended before ``target`` (see the module doc)."""
    ends = label_ends(archive)
    best: BaseChoice | None = None
    for b in Catalog(source, bucket).backups():
        found = _range_of(b, bucket, prefer)
        if found is None:
            continue
        bb, from_s3 = found
        end = ends.get((bb.start_tli, bb.start_lsn))
        if end is not None and end <= target and (best is None or end > best.end):
            best = BaseChoice(b.name, b, bb.start_lsn, bb.start_tli, end, from_s3, bb.format)
    if best is None:
        where = f"{source.local_dir}" + (f" or s3://{bucket.name}/{source.s3_prefix}" if bucket is not None else "")
        raise BaseBackupError(f"no base backup of {source.name} in {where} ended before "
                              f"{target.isoformat()} (with its .backup label in the archive)")
    return best


# -- disk and download ---------------------------------------------------------------------------------
def check_free_space(where: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(where).free
    if needed + DISK_MARGIN > free:
        raise BaseBackupError(f"not enough free disk for {what}: it needs {needed / 1e6:.1f} MB plus "
                              f"{DISK_MARGIN >> 20} MiB of margin, {where} has {free / 1e6:.1f} MB free")


def member_path(root: Path, rel: str) -> Path:
    """Where object ``rel`` (relative to the backup's prefix) goes below ``root``; refuses odd keys."""
    parts = PurePosixPath(rel).parts
    if not rel or "\\" in rel or "\x00" in rel or rel.startswith("/") or any(p in ("", ".", "..") for p in rel.split("/")):
        raise BaseBackupError(f"refusing object {rel!r}: not a relative file path of a base backup")
    return root.joinpath(*parts)


def download_base_backup(bucket: Bucket, choice: BaseChoice, dest: Path) -> int:
    """The S3 copy of ``choice`` into ``dest`` (new), checked (a tar-format one: when unpacked); the
    bytes downloaded."""
    from backupkit.restore.fetch import download_object
    from backupkit.restore.pitr_tar import tar_layout, wanted_object

    prefix = choice.backup.key.rstrip("/") + "/"
    try:
        objects = [(o.key[len(prefix):], o.key, o.size) for o in bucket.objects(prefix)]
    except client_errors() as exc:
        raise BaseBackupError(f"cannot list {bucket.uri(prefix)}: {describe_error(exc, bucket.uri(prefix))}") from None
    if choice.format == "tar":
        tar_layout([rel for rel, _, _ in objects], bucket.uri(prefix.rstrip("/")))
        objects = [o for o in objects if wanted_object(o[0])]
    allowed = sum(size for _, _, size in objects)
    check_free_space(dest.parent, allowed, f"the base backup {bucket.uri(prefix)}")
    files = {rel for rel, _, _ in objects}
    for rel, _, _ in objects:
        member_path(dest, rel)
        if any(parent.as_posix() in files for parent in PurePosixPath(rel).parents):
            raise BaseBackupError(f"refusing object {rel!r}: below another object that is a file")
    dest.mkdir(mode=0o700)

    def fetch(item: tuple[str, str, int]) -> int:
        rel, key, size = item
        try:   # each no longer than listed: the total never passes what the free-space check allowed
            n = download_object(bucket, key, None, member_path(dest, rel), limit=size)[1]
        except client_errors() as exc:
            raise BaseBackupError(f"download of {bucket.uri(key)} failed: {describe_error(exc, bucket.uri(key))}") \
                from None
        except (OSError, ValueError) as exc:
            raise BaseBackupError(f"download of {bucket.uri(key)} failed: {exc}") from None
        if n != size:
            raise BaseBackupError(f"{bucket.uri(key)} changed while it was downloaded ({n} bytes, listed {size})")
        return n

    total = sum(pooled(fetch, objects, TRANSFER_WORKERS))   # a thousand small files: several at a time
    if choice.format == "plain":
        for sub in DATA_SUBDIRS:
            (dest / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        verify_download(dest, choice, bucket.uri(prefix))
    return total


def verify_download(dest: Path, choice: BaseChoice, where: str) -> None:
    """pg_verifybackup on the download, and the WAL range it was chosen for."""
    try:
        bb = read_base_backup(dest)
    except BackupError as exc:
        raise BaseBackupError(f"{where}: {exc}") from None
    if (bb.start_tli, bb.start_lsn) != (choice.start_tli, choice.start_lsn) or bb.format != "plain":
        raise BaseBackupError(f"{where}: its manifest's WAL range is not the one it was chosen for")
    complaint = verify_files(bb)
    if complaint is not None:
        raise BaseBackupError(f"{where}: pg_verifybackup refused it: {complaint}")


__all__ = ["BaseChoice", "BaseBackupError", "base_backup_for", "label_ends", "s3_range", "check_free_space",
           "download_base_backup", "verify_download", "member_path", "DISK_MARGIN"]
