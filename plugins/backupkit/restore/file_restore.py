"""The request side of a file restore: what may be restored where, then the archive fetched and extracted.

``backup_file_restore`` asks for an archive of a file set, optionally some paths inside it,
a target directory and what to do with files already there. Everything that needs no archive
is checked first (:func:`check_file_request`: the target lies under ``restore.allowed_file_roots``
once links are resolved, paths are relative without ``..``), then the archive is fetched and
checked like every restore (:mod:`backupkit.restore.fetch`) and extracted by the safe extractor
(:mod:`backupkit.restore.files`, whose rules are docs/archive-rules.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from backupkit.config import Config
from backupkit.restore.fetch import fetch
from backupkit.restore.files import ExtractRefused, allowed_target, safe_extract
from backupkit.restore.pipeline import check_dicts
from backupkit.restore.scratch import local_scratch_root
from backupkit.restore.selection import SelectionError, find_backup
from backupkit.storage.objectstore import Bucket

EXISTING_CHOICES = ("skip", "overwrite")


def check_file_request(config: Config, *, target: str, paths: Sequence[str] | None, existing: str) -> Path:
    """Validate the parts of a file-restore request that need no archive; returns the real target."""
    if existing not in EXISTING_CHOICES:
        raise SelectionError(f"existing must be one of {', '.join(EXISTING_CHOICES)}; got {existing!r}")
    real = allowed_target(target, config.restore.allowed_file_roots)
    for p in paths or ():
        if not isinstance(p, str) or not p.strip() or p.startswith("/") or ".." in p.replace("\\", "/").split("/"):
            raise SelectionError(f"path to restore {p!r} must be a relative path inside the archive, without '..'")
    return real


def restore_files(config: Config, source_name: str, backup: str, *, target: str, paths: Sequence[str] | None = None,
                  existing: str = "skip", bucket: Bucket | None = None, now: datetime | None = None,
                  prefer: str = "s3", work_dir: str | Path | None = None) -> dict:
    """Restore (part of) a file-set archive into ``target`` under the allowed roots.

    Safe extraction (nothing is written for an unsafe archive or target, or an archive whose
    SHA-256 differs from its sidecar or S3's stored checksum), checksums from the archive's
    ``SHA256SUMS``; ``existing``: ``skip`` keeps present files, ``overwrite`` replaces them
    keeping each replaced file under ``target/.restore-backup-<time>/``.
    """
    source = config.source(source_name)
    if source.kind_impl.restores_into != "files":
        raise SelectionError(f"{source_name!r} is a {source.kind_impl.label}, not a file set")
    real = check_file_request(config, target=target, paths=paths, existing=existing)
    found = find_backup(config, source, backup, bucket)
    base = Path(work_dir) if work_dir else local_scratch_root(config)
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="backupkit-fetch-", dir=base) as tmp:
        fetched = fetch(found, bucket=bucket, work_dir=Path(tmp), prefer=prefer)
        if not fetched.ok:
            shown = "; ".join(f"{c.check}: {c.detail}" for c in fetched.checks if not c.ok)
            raise ExtractRefused(f"{fetched.label}: refused, nothing extracted: {shown}")
        try:
            er = safe_extract(fetched.path, real, members=list(paths) if paths else None,
                              max_total_bytes=config.restore.max_extract_bytes,
                              max_files=config.restore.max_extract_files, existing=existing, now=now)
        except ExtractRefused as exc:  # name the archive as the person knows it, not our download
            exc.args = (str(exc).replace(str(fetched.path), fetched.label),)
            raise
    out = er.to_dict()
    out.update(archive=fetched.label, source=source.name, backup=backup, existing=existing,
               paths=list(paths) if paths else "all", checks=check_dicts(fetched.checks + er.checks(found.id)))
    return out


__all__ = ["EXISTING_CHOICES", "check_file_request", "restore_files"]
