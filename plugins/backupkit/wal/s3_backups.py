"""Base backups kept in S3, read without downloading them (rules: docs/wal.md, "Base backups in S3").

Two readers, for the point-in-time restore's choice and the daily verification alike:

- :func:`s3_range`: the WAL range, from the manifest's first 4 KiB and last 64 KiB (two
  ranged GETs) of a directory that has ``PG_VERSION`` (plain) or a ``base.tar*`` (tar);
- :func:`check_s3_files`: the whole manifest streamed (:mod:`backupkit.wal.manifest`, bounded,
  its own checksum checked) against one listing of the backup's objects: every file it lists
  present with its size and no object it does not list (plain format), or the tar layout and
  a ``base.tar`` long enough for the files (tar format). The bytes themselves are proved by
  ``pg_verifybackup`` after a download: the monthly PITR restore test's job.

:func:`s3_identity` is what the verification memory keys an S3 base backup by: it changes
when the manifest object or any object of the copy changes.
"""

from __future__ import annotations

import hashlib

from backupkit.model import Backup
from backupkit.state import FileIdentity
from backupkit.storage.objectstore import CHUNK, Bucket
from backupkit.wal.backups import (MANIFEST_TAIL, MAX_MANIFEST_BYTES, TAR_NAMES, BackupError, BaseBackup,
                                   from_ranges, manifest_ranges)
from backupkit.wal.manifest import read_manifest

# What pg_verifybackup never reports as missing or unexpected (pg_verifybackup.c's ignore list).
IGNORED = ("backup_manifest", "pg_wal", "postgresql.auto.conf", "recovery.signal", "standby.signal")
TAR_BLOCK = 512
EXAMPLES = 3
MANIFEST_LIMIT = MAX_MANIFEST_BYTES   # the most of a manifest the daily check streams


def probe(bucket: Bucket, key: str) -> tuple[str, dict] | None:
    """(format, HeadObject of its ``backup_manifest``) of a base backup directory in S3; None
    when it is neither format or has no manifest."""
    prefix = key.rstrip("/") + "/"
    if bucket.head(prefix + "PG_VERSION") is not None:
        fmt = "plain"
    elif any(bucket.head(prefix + n) is not None for n in TAR_NAMES):
        fmt = "tar"
    else:
        return None
    head = bucket.head(prefix + "backup_manifest")
    return (fmt, head) if head is not None else None


def s3_range(bucket: Bucket, key: str, found: tuple[str, dict] | None = None) -> BaseBackup | None:
    """The WAL range of a base backup directory in S3 from its manifest's head and tail (``found``:
    :func:`probe`'s answer, when the caller has it); None without a manifest."""
    found = found or probe(bucket, key)
    if found is None:
        return None
    fmt, head = found
    manifest = key.rstrip("/") + "/backup_manifest"
    size = int(head.get("ContentLength") or 0)
    if size <= 0:
        raise BackupError(f"{bucket.uri(manifest)}: empty: not a backup manifest")
    first = _ranged(bucket, manifest, f"bytes=0-{min(4096, size) - 1}")
    last = _ranged(bucket, manifest, f"bytes=-{min(MANIFEST_TAIL, size)}")
    return from_ranges(*manifest_ranges(first, last, bucket.uri(manifest)), bucket.uri(key.rstrip("/")), fmt)


def _ranged(bucket: Bucket, key: str, byte_range: str) -> bytes:
    body = bucket.body(key, byte_range=byte_range)
    try:
        return body.read(MANIFEST_TAIL + 1)
    finally:
        body.close()


def s3_identity(backup: Backup, manifest_head: dict) -> FileIdentity:
    """The manifest object's size, LastModified and ETag, and the copy's total size and newest
    LastModified (the catalog's listing): any replaced, added or removed object changes it."""
    stamp = manifest_head.get("LastModified")
    newest = backup.s3.last_modified if backup.s3 else None
    tag = f"{manifest_head.get('ETag', '')}:{backup.s3.size if backup.s3 else -1}".encode()
    return FileIdentity(int(manifest_head.get("ContentLength") or 0),
                        int(stamp.timestamp() * 1e9) if stamp else 0,
                        int(newest.timestamp() * 1e9) if newest else 0,
                        int.from_bytes(hashlib.blake2b(tag, digest_size=7).digest(), "big"))


def _ignored(rel: str) -> bool:
    return any(rel == n or rel.startswith(n + "/") for n in IGNORED)


def _listed(names: list[str], more: int) -> str:
    return ", ".join(names[:EXAMPLES]) + (" ..." if more > EXAMPLES else "")


def check_s3_files(bucket: Bucket, backup: BaseBackup, key: str, *, limit: int | None = None) -> str | None:
    """What is wrong with the objects of an S3 base backup against its manifest (see the module
    doc), or None. Raises BackupError for a manifest that cannot be used, S3 errors as they come."""
    limit = limit or MANIFEST_LIMIT
    prefix = key.rstrip("/") + "/"
    objects = {o.key[len(prefix):]: o.size for o in bucket.objects(prefix)}
    manifest = prefix + "backup_manifest"
    missing, wrong = [], []
    seen: set[str] = set()

    def on_file(path: str, size: int) -> None:
        if path in seen:
            raise BackupError(f"{bucket.uri(manifest)}: lists {path} twice")
        seen.add(path)
        if backup.format == "tar" or _ignored(path):
            return
        stored = objects.get(path)
        if stored is None:
            missing.append(path)
        elif stored != size:
            wrong.append(f"{path} is {stored} bytes, the manifest says {size}")

    body = bucket.body(manifest)
    try:
        summary = read_manifest(body.iter_chunks(CHUNK), bucket.uri(manifest), limit, on_file)
    finally:
        body.close()
    try:
        whole = from_ranges(summary.ranges, summary.sysid, backup.source, backup.format)
    except (BackupError, KeyError, TypeError, IndexError, AttributeError):
        raise BackupError(f"{bucket.uri(manifest)}: WAL-Ranges must list {{Timeline, Start-LSN, End-LSN}} "
                          f"objects") from None
    if (whole.start_lsn, whole.start_tli, whole.stop_lsn) != (backup.start_lsn, backup.start_tli, backup.stop_lsn):
        raise BackupError(f"{bucket.uri(manifest)}: its WAL-Ranges read whole differ from its last "
                          f"{MANIFEST_TAIL} bytes read before (replaced while it was read?)")
    if backup.format == "tar":
        return _tar_complaint(bucket, prefix, objects, summary)
    extra = sorted(rel for rel in objects if rel not in seen and not _ignored(rel))
    found = []
    if missing:
        found.append(f"{len(missing)} file(s) of the manifest missing in S3: {_listed(missing, len(missing))}")
    if wrong:
        found.append(f"{len(wrong)} of the wrong size: {_listed(wrong, len(wrong))}")
    if extra:
        found.append(f"{len(extra)} object(s) the manifest does not list: {_listed(extra, len(extra))}")
    return "; ".join(found) or None


def _tar_complaint(bucket: Bucket, prefix: str, objects: dict[str, int], summary) -> str | None:
    from backupkit.restore.pitr_base import BaseBackupError
    from backupkit.restore.pitr_tar import WAL_TAR, tar_layout

    try:
        layout = tar_layout(list(objects), bucket.uri(prefix.rstrip("/")))
    except BaseBackupError as exc:
        return str(exc)
    extra = sorted(n for n in objects if n not in (layout.base, "backup_manifest") and not WAL_TAR.match(n))
    if extra:
        return f"{len(extra)} object(s) a tar-format base backup does not have: {_listed(extra, len(extra))}"
    if layout.compression == "":
        # Each file: a header block and its data padded to whole blocks; two zero blocks at the end.
        needed = summary.files * TAR_BLOCK + summary.total_bytes + 2 * TAR_BLOCK
        if objects[layout.base] < needed:
            return (f"{bucket.uri(prefix + layout.base)} is {objects[layout.base]} bytes, shorter than the "
                    f"{needed} its manifest's {summary.files} files need: truncated")
    return None


__all__ = ["probe", "s3_range", "s3_identity", "check_s3_files", "IGNORED"]
