"""A tar-format base backup (``pg_basebackup -Ft``) unpacked into a data directory for a PITR restore.

Rules (docs/wal.md, "Tar-format base backups"):

- **Layout**: exactly one ``base.tar``, ``base.tar.gz``, ``base.tar.lz4`` or ``base.tar.zst`` and
  a ``backup_manifest``. A tablespace tar (``<oid>.tar[.gz|.lz4|.zst]``) is refused: the scratch
  restore does not map tablespaces. ``pg_wal.tar`` (``-X stream``) is neither downloaded nor
  unpacked: the WAL replayed comes from the archive, each file checked by the fetcher.
- **Disk first**: the bytes unpacked are bounded by the manifest's file sizes (its ``Files``
  entries' ``Size``), known before anything is written; the free space must hold them (plus,
  for lz4 and zstd, the inflated tar) and the margin. The extraction itself refuses a tar whose
  members add up to more than the manifest says, before writing, and stops while writing; the
  tar stream itself may not be longer than those files with their headers.
- **Extraction**: through the project's safe extraction (:func:`backupkit.restore.files.safe_extract`,
  docs/archive-rules.md): the whole tar is read and judged first (damage, members escaping, links
  out, limits), nothing is executed. gzip is read by it directly; lz4 and zstd are inflated first
  (:func:`backupkit.checks.stream.decoded_pieces`, which refuses a truncated stream) into a
  temporary tar beside it, bounded while streaming.
- **Verification**: ``pg_verifybackup`` of the unpacked directory against the backup's manifest
  (every file's size and checksum, none missing or added, the manifest's own checksum), before
  the server starts. The bundled PostgreSQL 18 is built with zlib only, so its
  ``pg_verifybackup -Ft`` cannot read lz4 or zstd tars: the unpacked directory is checked for
  every compression alike.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from backupkit.checks.stream import StreamProblem, Tap, decoded_pieces
from backupkit.checks.tarstream import DEFAULT_LIMITS
from backupkit.restore.files import ExtractRefused, safe_extract
from backupkit.restore.pitr_base import DATA_SUBDIRS, BaseBackupError, check_free_space, verify_download
from backupkit.wal.backups import TAR_NAMES, BackupError, manifest_files

TABLESPACE_TAR = re.compile(r"^[0-9]+\.tar(\.gz|\.lz4|\.zst)?$")
WAL_TAR = re.compile(r"^pg_wal\.tar(\.gz|\.lz4|\.zst)?$")
INFLATED = {".lz4": "lz4", ".zst": "zstd"}
# Per file of the manifest: its tar header and padding (a PAX header for a long name), and a
# fixed allowance for directory headers and the end-of-archive blocks.
TAR_PER_FILE = 2048
TAR_SLACK = 16 << 20
MAX_DIRECTORIES = 100_000   # members beyond the manifest's files: directories, links


@dataclass(frozen=True)
class TarLayout:
    base: str          # base.tar[.gz|.lz4|.zst]
    compression: str   # "", ".gz", ".lz4", ".zst"


def tar_layout(names: list[str], where: str) -> TarLayout:
    """The base tar among a backup's file names; refuses tablespace tars and a missing manifest."""
    spaces = sorted(n for n in names if TABLESPACE_TAR.match(n))
    if spaces:
        raise BaseBackupError(f"{where}/{spaces[0]}: a tablespace tar: the scratch restore does not map "
                              f"tablespaces (refused)")
    bases = [n for n in TAR_NAMES if n in names]
    if len(bases) != 1:
        raise BaseBackupError(f"{where}: {'no' if not bases else 'more than one'} base.tar: not a tar-format "
                              f"base backup")
    if "backup_manifest" not in names:
        raise BaseBackupError(f"{where}: no backup_manifest: a tar-format base backup cannot be checked without it")
    return TarLayout(bases[0], bases[0].removeprefix("base.tar"))


def wanted_object(rel: str) -> bool:
    """Whether an object of a tar-format backup in S3 is downloaded (not ``pg_wal.tar``)."""
    return not WAL_TAR.match(rel)


def unpack_tar_backup(backup: Path, dest: Path, choice, where: str) -> None:
    """``backup`` (a tar-format backup directory) unpacked into ``dest`` (new) and verified."""
    layout = tar_layout([p.name for p in backup.iterdir()], where)
    try:
        files, total = manifest_files(backup / "backup_manifest")
    except BackupError as exc:
        raise BaseBackupError(f"{where}: {exc}") from None
    tar, label = backup / layout.base, f"{where}/{layout.base}"
    inflated_cap = total + files * TAR_PER_FILE + TAR_SLACK
    needed = total + (inflated_cap if layout.compression in INFLATED else 0)
    check_free_space(dest.parent, needed, f"unpacking {label}")
    temp = dest.parent / "base.tar.inflated" if layout.compression in INFLATED else None
    try:
        if temp is not None:
            inflate(tar, temp, INFLATED[layout.compression], inflated_cap, label)
            tar = temp
        limits = replace(DEFAULT_LIMITS, max_decompressed_bytes=inflated_cap, max_members=files + MAX_DIRECTORIES)
        safe_extract(tar, dest, max_total_bytes=total, max_files=files + MAX_DIRECTORIES, existing="fail",
                     limits=limits)
    except ExtractRefused as exc:
        raise BaseBackupError(str(exc).replace(str(tar), label)) from None
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)
    shutil.copyfile(backup / "backup_manifest", dest / "backup_manifest")
    for sub in DATA_SUBDIRS:
        (dest / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    verify_download(dest, choice, where)


def inflate(src: Path, out: Path, compression: str, cap: int, label: str) -> int:
    """``src`` decompressed into ``out``, refused past ``cap`` bytes while streaming; bytes written."""
    written = 0
    try:
        with open(src, "rb") as raw, open(out, "xb") as f:
            for piece in decoded_pieces(Tap(raw), compression):
                written += len(piece)
                if written > cap:
                    raise BaseBackupError(f"{label}: inflates to more than {cap} bytes, more than its manifest's "
                                          f"files account for: refused")
                f.write(piece)
    except StreamProblem as exc:
        raise BaseBackupError(f"{label}: damaged: {exc}") from None
    except OSError as exc:
        raise BaseBackupError(f"{label}: cannot be unpacked: {exc}") from None
    return written


__all__ = ["TarLayout", "tar_layout", "wanted_object", "unpack_tar_backup", "inflate", "TABLESPACE_TAR"]
