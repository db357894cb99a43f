"""Base backups: the ``.backup`` labels in the archive and ``pg_basebackup`` output on disk.

Each base backup needs the WAL from its start to its stop LSN (then any WAL after it, for
a point in time). Where those come from (rules in docs/wal.md):

- a ``.backup`` label in the archive (written by ``pg_backup_stop``): start and stop LSN,
  timelines, start and stop time;
- a base backup directory: ``backup_manifest``'s ``WAL-Ranges`` (read from its last 64
  KiB, so a manifest of any size costs one read) and ``System-Identifier``, else the
  plain format's ``backup_label`` (start only; the stop then comes from the archive's label).

``pg_verifybackup`` checks the files against the manifest (plain and, since PostgreSQL 18,
tar format; WAL parsing only for a plain backup that carries its own ``pg_wal``); an lz4 or
zstd tar is inflated first, the bundled build reading neither.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backupkit.pgbin import pg_bin
from backupkit.wal.naming import classify, parse_lsn

MAX_LABEL_BYTES = 64 << 10
MANIFEST_TAIL = 64 << 10
_LOCATION = re.compile(r"^([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})(?: \(file ([0-9A-F]{24})\))?$")
_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ?(UTC|GMT|Z|[+-]\d\d(?::?\d\d)?)$")
_KEY = re.compile(r"^[A-Z][A-Z ]{0,40}$")
_SYSID = re.compile(r'"System-Identifier"\s*:\s*(\d{1,20})')
TAR_NAMES = ("base.tar", "base.tar.gz", "base.tar.zst", "base.tar.lz4")
MAX_MANIFEST_BYTES = 512 << 20   # about 3 million files' entries


class BackupError(ValueError):
    """A label or base backup that cannot be read; the message names it and the reason."""


LABEL_TIME_RESOLUTION = timedelta(seconds=1)   # STOP TIME in a .backup label: whole seconds


@dataclass(frozen=True)
class BaseBackup:
    """What the verifier needs of one base backup."""

    source: str                 # the label's file name or the backup's path
    start_lsn: int
    start_tli: int
    stop_lsn: int | None = None
    stop_tli: int | None = None
    stop_time: datetime | None = None
    sysid: int | None = None
    format: str = "label"       # "label" (archive), "plain", "tar"

    @property
    def ended_by(self) -> datetime | None:
        """The first instant known to be after the backup ended: a label's STOP TIME is printed in
        whole seconds, truncated, so the backup may have ended up to a second after it. A point-in-time
        target (and the recovery window's start) must not be earlier than this."""
        return None if self.stop_time is None else self.stop_time + LABEL_TIME_RESOLUTION


def parse_time(text: str) -> datetime | None:
    """A label's ``2025-03-01 02:00:04 UTC`` as aware UTC; None for a zone given by abbreviation only."""
    m = _TIME.match(text.strip())
    if not m:
        return None
    when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
    zone = m.group(2)
    if zone in ("UTC", "GMT", "Z"):
        return when.replace(tzinfo=timezone.utc)
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
    return (when - sign * offset).replace(tzinfo=timezone.utc)


def _fields(data: bytes, source: str) -> dict[str, str]:
    if len(data) > MAX_LABEL_BYTES:
        raise BackupError(f"{source}: larger than {MAX_LABEL_BYTES} bytes: not a backup label")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BackupError(f"{source}: not UTF-8 text") from None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and _KEY.match(key):
            fields.setdefault(key, value.strip())
    return fields


def _location(fields: dict[str, str], key: str, source: str) -> int:
    value = fields.get(key)
    if value is None:
        raise BackupError(f"{source}: no {key}")
    m = _LOCATION.match(value)
    if not m:
        raise BackupError(f"{source}: {key} is not an LSN: {value[:60]!r}")
    return parse_lsn(m.group(1))


def _timeline(fields: dict[str, str], key: str, default: int, source: str) -> int:
    value = fields.get(key)
    if value is None:
        return default
    if not value.isdigit() or not 0 < int(value) <= 0xFFFFFFFF:
        raise BackupError(f"{source}: {key} is not a timeline: {value[:20]!r}")
    return int(value)


def parse_label(data: bytes, source: str, default_tli: int = 1) -> BaseBackup:
    """A ``.backup`` label from the archive (``KEY: value`` lines, as pg_backup_stop writes them)."""
    fields = _fields(data, source)
    start = _location(fields, "START WAL LOCATION", source)
    stop = _location(fields, "STOP WAL LOCATION", source)
    start_tli = _timeline(fields, "START TIMELINE", default_tli, source)
    stop_tli = _timeline(fields, "STOP TIMELINE", start_tli, source)
    if stop < start or stop_tli < start_tli:
        raise BackupError(f"{source}: stops before it starts")
    return BaseBackup(source, start, start_tli, stop, stop_tli, parse_time(fields.get("STOP TIME", "")))


def _manifest(path: Path) -> tuple[list[dict], int | None] | None:
    manifest = path / "backup_manifest"
    try:
        with open(manifest, "rb") as f:
            head = f.read(4096)
            size = f.seek(0, 2)
            f.seek(max(0, size - MANIFEST_TAIL))
            tail = f.read(MANIFEST_TAIL)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackupError(f"{manifest}: cannot be read: {exc.strerror or exc}") from None
    return manifest_ranges(head, tail, str(manifest))


def manifest_ranges(head: bytes, tail: bytes, where: str) -> tuple[list[dict], int | None]:
    """(WAL-Ranges, System-Identifier) from a manifest's first 4 KiB and last 64 KiB (a copy in S3
    is read with two ranged GETs, :mod:`backupkit.restore.pitr_base`)."""
    text = tail.decode("utf-8", "replace")
    at = text.rfind('"WAL-Ranges"')
    colon = text.find(":", at)
    if at < 0 or colon < 0:
        raise BackupError(f"{where}: no WAL-Ranges in its last {MANIFEST_TAIL} bytes")
    start = colon + 1
    while start < len(text) and text[start].isspace():
        start += 1
    try:
        ranges, _ = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        raise BackupError(f"{where}: WAL-Ranges is not a JSON list") from None
    if not isinstance(ranges, list) or not ranges or not all(
            isinstance(r, dict) and isinstance(r.get("Timeline"), int) and isinstance(r.get("Start-LSN"), str)
            and isinstance(r.get("End-LSN"), str) for r in ranges):
        raise BackupError(f"{where}: WAL-Ranges must list {{Timeline, Start-LSN, End-LSN}} objects")
    m = _SYSID.search(head.decode("utf-8", "replace"))
    return ranges, int(m.group(1)) if m else None


def from_ranges(ranges: list[dict], sysid: int | None, source: str, fmt: str) -> BaseBackup:
    """The base backup a manifest's WAL-Ranges describe (first start to last end)."""
    try:
        first, last = ranges[0], ranges[-1]
        start, stop = parse_lsn(first["Start-LSN"]), parse_lsn(last["End-LSN"])
    except ValueError as exc:
        raise BackupError(f"{source}/backup_manifest: {exc}") from None
    if not (0 < first["Timeline"] <= last["Timeline"] <= 0xFFFFFFFF) or stop < start:
        raise BackupError(f"{source}/backup_manifest: WAL-Ranges out of order")
    return BaseBackup(source, start, first["Timeline"], stop, last["Timeline"], sysid=sysid, format=fmt)


def read_base_backup(path: Path) -> BaseBackup:
    """The WAL range of a pg_basebackup directory (plain or tar format)."""
    path = Path(path)
    if not path.is_dir():
        raise BackupError(f"{path}: not a base backup directory")
    fmt = "tar" if any((path / n).exists() for n in TAR_NAMES) else "plain"
    found = _manifest(path)
    if found is not None:
        return from_ranges(*found, str(path), fmt)
    label = path / "backup_label"
    if fmt == "plain" and label.is_file():
        data = label.read_bytes()[:MAX_LABEL_BYTES + 1]
        fields = _fields(data, str(label))
        start = _location(fields, "START WAL LOCATION", str(label))
        return BaseBackup(str(path), start, _timeline(fields, "START TIMELINE", 1, str(label)), format=fmt)
    raise BackupError(f"{path}: no backup_manifest (and no backup_label): its WAL range is unknown")


def manifest_files(manifest: Path) -> tuple[int, int]:
    """(files, bytes) a ``backup_manifest`` lists: what a tar-format backup extracts to, known
    before anything is extracted. Read whole, refused past :data:`MAX_MANIFEST_BYTES`."""
    try:
        with open(manifest, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise BackupError(f"{manifest}: cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise BackupError(f"{manifest}: larger than {MAX_MANIFEST_BYTES} bytes: refused")
    try:
        files = json.loads(data).get("Files")
    except (ValueError, AttributeError, RecursionError):   # RecursionError: nesting a manifest never has
        raise BackupError(f"{manifest}: not a JSON backup manifest") from None
    if not isinstance(files, list) or not all(
            isinstance(e, dict) and type(e.get("Size")) is int and e["Size"] >= 0 for e in files):
        raise BackupError(f"{manifest}: Files must list entries with a non-negative Size")
    return len(files), sum(e["Size"] for e in files)


def with_label(backup: BaseBackup, labels: list[BaseBackup]) -> BaseBackup:
    """``backup`` completed from the archive's label of the same start (stop LSN, stop time)."""
    for label in labels:
        if label.start_lsn == backup.start_lsn and label.start_tli == backup.start_tli:
            return replace(backup, stop_lsn=backup.stop_lsn or label.stop_lsn,
                           stop_tli=backup.stop_tli or label.stop_tli, stop_time=label.stop_time)
    return backup


INFLATED_TARS = {"base.tar.lz4": "lz4", "base.tar.zst": "zstd"}


def verify_files(backup: BaseBackup, scratch: Path | None = None) -> str | None:
    """pg_verifybackup's complaint about the backup's files, or None when it passes. A tar whose
    base.tar is lz4 or zstd is inflated under ``scratch`` first (:func:`_verify_inflated`)."""
    path = Path(backup.source)
    if backup.format == "tar":
        inflated = [n for n in INFLATED_TARS if (path / n).is_file()]
        if inflated:
            return _verify_inflated(path, inflated[0], scratch)
    args = [pg_bin("pg_verifybackup"), "--quiet", "--exit-on-error"]
    wal = path / "pg_wal"
    own_wal = wal.is_dir() and any((c := classify(p.name)) and c.kind == "segment" for p in wal.iterdir())
    if backup.format == "tar" or not own_wal:
        args.append("--no-parse-wal")  # the archive's WAL is what the verifier itself reads
    return _complaint(subprocess.run([*args, str(path)], capture_output=True, text=True))


def _complaint(proc: subprocess.CompletedProcess, shown: tuple[str, str] = ("", "")) -> str | None:
    if proc.returncode == 0:
        return None
    lines = [ln.removeprefix("pg_verifybackup: ").removeprefix("error: ") for ln in proc.stderr.splitlines() if ln]
    text = "; ".join(lines[:3]) or f"pg_verifybackup exited {proc.returncode}"
    return text.replace(*shown) if shown[0] else text


def _verify_inflated(path: Path, name: str, scratch: Path | None) -> str | None:
    """The bundled pg_verifybackup reads no lz4 or zstd (zlib only): the base tar is inflated into
    a new directory under ``scratch`` as the restore inflates it (bounded by the manifest's files,
    the free space checked first), verified there as an uncompressed tar, and removed."""
    import tempfile

    from backupkit.restore.pitr_base import BaseBackupError, check_free_space
    from backupkit.restore.pitr_tar import TAR_PER_FILE, TAR_SLACK, inflate, tar_layout

    try:
        tar_layout([p.name for p in path.iterdir()], str(path))
        files, total = manifest_files(path / "backup_manifest")
    except (BaseBackupError, BackupError) as exc:
        return str(exc)
    cap = total + files * TAR_PER_FILE + TAR_SLACK
    root = Path(scratch or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wal-verify-", dir=root) as tmp:
        work = Path(tmp)
        try:
            check_free_space(work, cap, f"inflating {path / name} to verify it")
            inflate(path / name, work / "base.tar", INFLATED_TARS[name], cap, str(path / name))
        except BaseBackupError as exc:
            return str(exc)
        (work / "backup_manifest").write_bytes((path / "backup_manifest").read_bytes())
        proc = subprocess.run([pg_bin("pg_verifybackup"), "--quiet", "--exit-on-error", "--no-parse-wal", tmp],
                              capture_output=True, text=True)
        return _complaint(proc, (f"{tmp}/base.tar", str(path / name)))


__all__ = ["BaseBackup", "BackupError", "parse_label", "read_base_backup", "manifest_ranges", "from_ranges", "with_label", "verify_files",
           "manifest_files",
           "parse_time"]
