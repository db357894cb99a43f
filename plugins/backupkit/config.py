"""Load and validate the one configuration file that declares what is backed up.

The file is YAML; strings may use ``${VAR}`` or ``${VAR:-default}`` so the same file
serves production (``/opt/backups``) and the sandbox (``.sandbox/backups``). Validation
happens on load and every error names the file, the key and the problem, because a
typo in a retention rule must stop the run, not silently keep (or delete) the wrong set.

Reading the file touches neither network nor database, so DAG files may call
:func:`load_config` at parse time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backupkit.naming import NamePattern, PatternError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "include" / "config" / "backups.yaml"
DUMP_FORMATS = ("custom", "plain", "tar", "directory")


class ConfigError(ValueError):
    """The configuration is invalid; the message names file, key and problem."""

    def __init__(self, file: str | Path, key: str, problem: str):
        self.file, self.key, self.problem = str(file), key, problem
        super().__init__(f"{file}: {key}: {problem}")


@dataclass(frozen=True)
class Thresholds:
    max_age_hours: float = 25.0
    # Allowed relative deviation from the median size of recent backups (0.5 = half).
    size_deviation: float = 0.5
    # How many earlier backups of the same source make up "recent" for the median.
    size_window: int = 7


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: str | None = None
    timezone: str = "UTC"
    # Guard rails: refuse a run that would delete more than this share of a source's
    # backups, or leave fewer than min_keep.
    max_delete_fraction: float = 0.5
    min_keep: int = 1
    # A failed or unverified backup is kept until its period has a verified
    # representative; with expire_unverified it also goes once the policy would have
    # dropped it had it passed (else a failed night under keep_daily stays forever).
    expire_unverified: bool = False

    def is_empty(self) -> bool:
        return not any((self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly,
                        self.keep_monthly, self.keep_yearly, self.keep_within))


@dataclass(frozen=True)
class RestoreExpectations:
    key_tables: tuple[str, ...] = ()
    row_count_tolerance: float = 0.0
    assertions: tuple[str, ...] = ()
    jobs: int = 2


@dataclass(frozen=True)
class Source:
    """One thing that is backed up: a database (``kind='database'``) or a file set."""

    name: str
    kind: str  # "database" | "files"
    local_dir: Path
    s3_prefix: str
    pattern: NamePattern
    dump_format: str | None = None  # databases only
    conn_id: str | None = None  # databases only
    database: str | None = None  # databases only: the database name on the server
    paths: tuple[str, ...] = ()  # file sets only: paths the archive must contain
    thresholds: Thresholds = field(default_factory=Thresholds)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    restore: RestoreExpectations = field(default_factory=RestoreExpectations)

    @property
    def is_database(self) -> bool:
        return self.kind == "database"


@dataclass(frozen=True)
class LogSource:
    name: str
    path: Path


@dataclass(frozen=True)
class Alerting:
    smtp_conn_id: str | None = None
    email_to: tuple[str, ...] = ()
    webhook_conn_id: str | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    bucket: str
    aws_conn_id: str
    sources: tuple[Source, ...]
    logs: tuple[LogSource, ...] = ()
    state_dir: Path = Path("/var/lib/backupkit")
    # Share of already-verified backups re-read in full each run (restic's
    # --read-data-subset idea): 1/30 re-reads the whole history within a month.
    reread_fraction: float = 1 / 30
    alerting: Alerting = field(default_factory=Alerting)
    pushgateway_url: str | None = None
    hold_list: tuple[str, ...] = ()

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sources)
        raise ConfigError(self.path, "sources", f"unknown source {name!r} (configured: {known})")

    @property
    def databases(self) -> tuple[Source, ...]:
        return tuple(s for s in self.sources if s.is_database)

    @property
    def file_sets(self) -> tuple[Source, ...]:
        return tuple(s for s in self.sources if not s.is_database)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: str, file: Path, key: str) -> str:
    def repl(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(file, key, f"environment variable {name} is not set and has no default")

    return _ENV.sub(repl, value)


class _Reader:
    """Typed access to one mapping of the YAML, with errors that carry the key path."""

    def __init__(self, data: Any, file: Path, key: str):
        if not isinstance(data, dict):
            raise ConfigError(file, key or "<top>", f"expected a mapping, got {type(data).__name__}")
        self.data, self.file, self.key = data, file, key
        self._used: set[str] = set()

    def _k(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def get(self, name: str, typ: type | tuple, default: Any = ..., *, expand: bool = True) -> Any:
        self._used.add(name)
        if name not in self.data or self.data[name] is None:
            if default is ...:
                raise ConfigError(self.file, self._k(name), "is required")
            return default
        value = self.data[name]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (isinstance(value, bool) and typ in (int, float)):
            want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise ConfigError(self.file, self._k(name), f"expected {want}, got {value!r}")
        if expand and isinstance(value, str):
            value = _expand(value, self.file, self._k(name))
        return value

    def non_negative(self, name: str, typ: type, default: Any) -> Any:
        value = self.get(name, typ, default)
        if value < 0:
            raise ConfigError(self.file, self._k(name), f"must be >= 0, got {value}")
        return value

    def child(self, name: str) -> "_Reader":
        self._used.add(name)
        return _Reader(self.data.get(name) or {}, self.file, self._k(name))

    def strings(self, name: str) -> tuple[str, ...]:
        values = self.get(name, list, [])
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise ConfigError(self.file, f"{self._k(name)}[{i}]", f"expected a string, got {v!r}")
        return tuple(_expand(v, self.file, f"{self._k(name)}[{i}]") for i, v in enumerate(values))

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.data) - self._used)
        if unknown:
            raise ConfigError(self.file, self._k(unknown[0]), "unknown key (typo?)")


def _thresholds(r: _Reader, base: Thresholds) -> Thresholds:
    t = Thresholds(
        max_age_hours=r.non_negative("max_age_hours", float, base.max_age_hours),
        size_deviation=r.non_negative("size_deviation", float, base.size_deviation),
        size_window=r.non_negative("size_window", int, base.size_window),
    )
    r.reject_unknown()
    return t


_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?$")


def _retention(r: _Reader) -> RetentionPolicy:
    within = r.get("keep_within", str, None)
    if within is not None and (not within or not _DURATION.match(within)):
        raise ConfigError(r.file, r._k("keep_within"),
                          f"expected a duration like 1y6m2d3h (restic style), got {within!r}")
    tz = r.get("timezone", str, "UTC")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(tz)
    except Exception:
        raise ConfigError(r.file, r._k("timezone"), f"unknown time zone {tz!r}") from None
    fraction = r.non_negative("max_delete_fraction", float, 0.5)
    if fraction > 1:
        raise ConfigError(r.file, r._k("max_delete_fraction"), f"must be between 0 and 1, got {fraction}")
    p = RetentionPolicy(
        keep_last=r.non_negative("keep_last", int, 0),
        keep_hourly=r.non_negative("keep_hourly", int, 0),
        keep_daily=r.non_negative("keep_daily", int, 0),
        keep_weekly=r.non_negative("keep_weekly", int, 0),
        keep_monthly=r.non_negative("keep_monthly", int, 0),
        keep_yearly=r.non_negative("keep_yearly", int, 0),
        keep_within=within,
        timezone=tz,
        max_delete_fraction=fraction,
        min_keep=r.non_negative("min_keep", int, 1),
        expire_unverified=r.get("expire_unverified", bool, False),
    )
    r.reject_unknown()
    return p


def _restore(r: _Reader) -> RestoreExpectations:
    jobs = r.non_negative("jobs", int, 2)
    if jobs < 1:
        raise ConfigError(r.file, r._k("jobs"), "must be >= 1")
    e = RestoreExpectations(
        key_tables=r.strings("key_tables"),
        row_count_tolerance=r.non_negative("row_count_tolerance", float, 0.0),
        assertions=r.strings("assertions"),
        jobs=jobs,
    )
    r.reject_unknown()
    return e


def _pattern(r: _Reader) -> NamePattern:
    raw = r.get("pattern", str)
    try:
        return NamePattern(raw)
    except PatternError as exc:
        raise ConfigError(r.file, r._k("pattern"), str(exc)) from None


def _source(r: _Reader, kind: str, defaults: Thresholds, names: set[str]) -> Source:
    name = r.get("name", str)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ConfigError(r.file, r._k("name"), f"use lower-case letters, digits, - and _; got {name!r}")
    if name in names:
        raise ConfigError(r.file, r._k("name"), f"duplicate source name {name!r}")
    names.add(name)
    prefix = r.get("s3_prefix", str)
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise ConfigError(r.file, r._k("s3_prefix"), f"must be a relative key prefix, got {prefix!r}")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    common = dict(
        name=name,
        kind=kind,
        local_dir=Path(r.get("local_dir", str)),
        s3_prefix=prefix,
        pattern=_pattern(r),
        thresholds=_thresholds(r.child("thresholds"), defaults),
        retention=_retention(r.child("retention")),
    )
    if kind == "database":
        fmt = r.get("dump_format", str)
        if fmt not in DUMP_FORMATS:
            raise ConfigError(r.file, r._k("dump_format"), f"must be one of {', '.join(DUMP_FORMATS)}; got {fmt!r}")
        src = Source(**common, dump_format=fmt, conn_id=r.get("conn_id", str, "postgres_default"),
                     database=r.get("database", str, None), restore=_restore(r.child("restore")))
    else:
        src = Source(**common, paths=r.strings("paths"))
    r.reject_unknown()
    return src


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate the configuration (``$BACKUPKIT_CONFIG`` or the repo default)."""
    file = Path(path or os.environ.get("BACKUPKIT_CONFIG") or DEFAULT_CONFIG)
    try:
        raw = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise ConfigError(file, "<file>", "does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, "<file>", f"is not valid YAML: {exc}") from None
    top = _Reader(raw if raw is not None else {}, file, "")
    bucket = top.child("bucket")
    bucket_name = bucket.get("name", str)
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket_name):
        raise ConfigError(file, "bucket.name", f"not a valid S3 bucket name: {bucket_name!r}")
    aws_conn_id = bucket.get("aws_conn_id", str, "aws_default")
    bucket.reject_unknown()

    defaults = _thresholds(top.child("thresholds"), Thresholds())
    names: set[str] = set()
    sources = []
    for kind, key in (("database", "databases"), ("files", "file_sets")):
        items = top.get(key, list, [])
        for i, item in enumerate(items):
            sources.append(_source(_Reader(item, file, f"{key}[{i}]"), kind, defaults, names))
    if not sources:
        raise ConfigError(file, "databases", "no databases or file_sets configured")

    logs = []
    for i, item in enumerate(top.get("logs", list, [])):
        lr = _Reader(item, file, f"logs[{i}]")
        logs.append(LogSource(name=lr.get("name", str), path=Path(lr.get("path", str))))
        lr.reject_unknown()

    ver = top.child("verification")
    state_dir = Path(ver.get("state_dir", str, "/var/lib/backupkit"))
    reread = ver.non_negative("reread_fraction", float, 1 / 30)
    if reread > 1:
        raise ConfigError(file, "verification.reread_fraction", f"must be between 0 and 1, got {reread}")
    ver.reject_unknown()

    al = top.child("alerting")
    alerting = Alerting(smtp_conn_id=al.get("smtp_conn_id", str, None) or None, email_to=al.strings("email_to"),
                        webhook_conn_id=al.get("webhook_conn_id", str, None) or None)
    al.reject_unknown()

    met = top.child("metrics")
    pushgateway = met.get("pushgateway_url", str, None) or None
    met.reject_unknown()

    hold_list = top.strings("hold_list")
    top.reject_unknown()
    return Config(path=file, bucket=bucket_name, aws_conn_id=aws_conn_id, sources=tuple(sources),
                  logs=tuple(logs), state_dir=state_dir, reread_fraction=reread, alerting=alerting,
                  pushgateway_url=pushgateway, hold_list=hold_list)
