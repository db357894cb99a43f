"""WAL archives of PostgreSQL databases (point-in-time recovery): configuration under ``wal_archives:``.

A source of this kind is one database's archive as ``archive_command`` (or pg_receivewal)
writes it, in ``archive_dir`` and/or under ``archive_s3_prefix`` in the bucket, together with
its base backups: the common keys (``local_dir``, ``s3_prefix``, ``pattern``, ``retention``,
``thresholds``) describe the nightly ``pg_basebackup`` directories, so freshness, S3 copies
and retention treat base backups like any other backup. The archive itself is verified by
:mod:`backupkit.wal` (rules in docs/wal.md) through :mod:`backupkit.wal.source`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from backupkit.config.reader import ConfigError, Reader
from backupkit.kinds.base import SourceKind

_SIZE = re.compile(r"^(\d{1,4})\s*(MB|MiB)$")
_MARKERS = re.compile(r"[a-z_][a-z0-9_]{0,62}\.[a-z_][a-z0-9_]{0,62}\.[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class WalArchiveSpec:
    archive_dir: Path | None                 # where archive_command writes (None: S3 only)
    archive_s3_prefix: str | None            # the archive's copy in the bucket (None: local only)
    database: str | None = None              # the `databases:` source whose server this archive is of
    segment_size: int | None = None          # bytes; None: read from the segments' long page headers
    max_age: timedelta = timedelta(minutes=30)  # the newest segment must be younger
    keep_pitr_window: timedelta = timedelta(0)  # retention keeps every point this far back recoverable
    markers_table: str | None = None         # DB.SCHEMA.TABLE of rows (written_at) the PITR test checks


def _duration(r: Reader, name: str, default: timedelta) -> timedelta:
    from backupkit.wal.verify import parse_age

    text = r.get(name, (str, int), None)
    if text is None:
        return default
    if isinstance(text, int):
        raise ConfigError(r.file, r.at(name), f"give a unit, e.g. {text}min, {text}h or {text}d; got {text!r}")
    try:
        return parse_age(text)
    except ValueError as exc:
        raise ConfigError(r.file, r.at(name), str(exc)) from None


def _segment_size(r: Reader) -> int | None:
    from backupkit.wal.naming import valid_segment_size

    value = r.get("segment_size", (str, int), None)
    if value is None:
        return None
    if isinstance(value, str):
        m = _SIZE.match(value.strip())
        if not m:
            raise ConfigError(r.file, r.at("segment_size"), f"expected a size like 1MB or 16MB, got {value!r}")
        value = int(m.group(1)) << 20
    if not valid_segment_size(value):
        raise ConfigError(r.file, r.at("segment_size"),
                          f"must be a power of two from 1MB to 1024MB (initdb --wal-segsize), got {value} bytes")
    return value


def _prefix(r: Reader, name: str) -> str | None:
    prefix = r.get(name, str, None)
    if prefix is None:
        return None
    if not prefix or prefix.startswith("/") or ".." in prefix.split("/"):
        raise ConfigError(r.file, r.at(name), f"must be a relative, non-empty key prefix, got {prefix!r}")
    return prefix if prefix.endswith("/") else prefix + "/"


class WalArchiveKind(SourceKind):
    id = "wal_archive"
    section = "wal_archives"
    label = "WAL archive"
    # Not backup by backup: backup_restore's point in time and the monthly test restore it to a time
    # (restore/pitr.py); the dump-style restore paths (form choices, restore tests, drill) skip it.
    restores_into = "point_in_time"
    restorable = False

    def parse_spec(self, r: Reader) -> WalArchiveSpec:
        archive_dir = r.get("archive_dir", str, None) or None
        if archive_dir is not None and not archive_dir.startswith("/"):
            raise ConfigError(r.file, r.at("archive_dir"), f"must be an absolute path, got {archive_dir!r}")
        prefix = _prefix(r, "archive_s3_prefix")
        if archive_dir is None and prefix is None:
            raise ConfigError(r.file, r.at("archive_dir"), "give archive_dir, archive_s3_prefix or both")
        base_prefix = r.data.get("s3_prefix")
        if prefix is not None and isinstance(base_prefix, str) and prefix == (
                base_prefix if base_prefix.endswith("/") else base_prefix + "/"):
            raise ConfigError(r.file, r.at("archive_s3_prefix"),
                              "must differ from s3_prefix (the base backups'): retention of one would see the other")
        if archive_dir is not None and Path(archive_dir) == Path(str(r.data.get("local_dir", ""))):
            raise ConfigError(r.file, r.at("archive_dir"), "must differ from local_dir (the base backups')")
        max_age = _duration(r, "max_age", WalArchiveSpec.max_age)
        if max_age <= timedelta(0):
            raise ConfigError(r.file, r.at("max_age"), "must be longer than 0")
        markers = r.get("markers_table", str, None) or None
        if markers is not None and not _MARKERS.fullmatch(markers):
            raise ConfigError(r.file, r.at("markers_table"), f"expected DATABASE.SCHEMA.TABLE (lower-case letters, "
                                                             f"digits, _), got {markers!r}")
        return WalArchiveSpec(archive_dir=Path(archive_dir) if archive_dir else None, archive_s3_prefix=prefix,
                              markers_table=markers,
                              database=r.get("database", str, None), segment_size=_segment_size(r),
                              max_age=max_age,
                              keep_pitr_window=_duration(r, "keep_pitr_window", WalArchiveSpec.keep_pitr_window))

    def storage_places(self, source):
        spec = source.spec
        return ((spec.archive_dir,) if spec.archive_dir else (),
                (spec.archive_s3_prefix,) if spec.archive_s3_prefix else ())

    # -- the daily run (backupkit.jobs.daily calls these) ---------------------------------------
    def verify_source(self, config, source, now, state):
        from backupkit.wal.source import verify_local

        return verify_local(config, source, now, state)

    def cloud_checks(self, config, source, bucket, state):
        from backupkit.wal.source import check_s3_copy

        return check_s3_copy(config, source, bucket, now=None, state=state)

    # -- retention -----------------------------------------------------------------------------
    def retention_holds(self, source, candidates, now):
        from backupkit.retention.wal import window_hold

        return window_hold(candidates, source.spec.keep_pitr_window, now)

    def after_sweep(self, sweep, plan) -> None:
        from backupkit.retention.wal import sweep_wal

        sweep_wal(sweep, plan)

    def recovery_window(self, config, source):
        from backupkit.wal.source import load_window

        return load_window(config, source)


KIND = WalArchiveKind()

__all__ = ["KIND", "WalArchiveSpec", "WalArchiveKind"]
