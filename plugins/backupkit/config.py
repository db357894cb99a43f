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
from datetime import datetime, timezone
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
    # Sweeps on a versioned bucket: delete the noncurrent versions of deleted backups
    # once noncurrent this many days (None: never; an S3 lifecycle rule may do it).
    purge_noncurrent_after_days: int | None = None

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


RESTORE_BACKENDS = ("local", "kubernetes")
APP_SETTING_KINDS = ("env", "secret")


@dataclass(frozen=True)
class AppSwitch:
    """``restore.app``: what the ``replace`` mode of backup_restore switches to a restored database.

    ``setting: env`` patches the environment variable ``env_var`` of each deployment's
    container (``container``, default: the one that has the variable); ``setting: secret``
    rewrites key ``secret_key`` of Secret ``secret_name`` that the deployments read at start.
    """

    namespace: str = "default"
    deployments: tuple[str, ...] = ()
    setting: str = "env"
    env_var: str = "DATABASE_URL"
    container: str | None = None
    secret_name: str | None = None
    secret_key: str = "DATABASE_URL"
    health_url: str | None = None  # optional HTTP check after scale-up (2xx = healthy)
    rollout_timeout_seconds: int = 600


@dataclass(frozen=True)
class SmokeCheck:
    """``restore.smoke_check``: after a Kubernetes scratch restore, run a pod of the application's
    ``image`` with ``env_var`` pointing at the scratch database and GET each of ``paths`` on
    ``port`` (each must answer 2xx within ``timeout_seconds``). Absent: no smoke check."""

    image: str
    port: int = 3000
    paths: tuple[str, ...] = ("/health",)
    env_var: str = "DATABASE_URL"
    timeout_seconds: int = 60


@dataclass(frozen=True)
class RestoreSettings:
    """``restore``: where scratch databases run and what restores may touch."""

    backend: str = "local"  # local | kubernetes
    kubernetes_conn_id: str = "kubernetes_default"
    namespace: str = "default"  # scratch pods
    image: str = "postgres:18"
    resources: dict = field(default_factory=lambda: {"requests": {"cpu": "500m", "memory": "1Gi"},
                                                     "limits": {"cpu": "2", "memory": "4Gi"}})
    active_deadline_seconds: int = 7200
    ready_timeout_seconds: int = 300
    scratch_dir: Path | None = None  # local back end; default <state_dir>/scratch
    allowed_file_roots: tuple[str, ...] = ()  # file restores may only write below these
    random_older_window_days: float = 30.0
    orphan_max_age_hours: float = 6.0
    max_extract_bytes: int = 50 << 30
    max_extract_files: int = 1_000_000
    app: AppSwitch = field(default_factory=AppSwitch)
    smoke_check: SmokeCheck | None = None  # Kubernetes back end only


# S3 list prices, USD per GB-month (GB = 2^30 bytes, as AWS bills storage), us-east-1, 2025.
# A `reports.prices_usd_per_gb_month` entry overrides one class; classes missing from the
# table are listed in the weekly report as "no price configured" instead of guessed.
DEFAULT_S3_PRICES = {
    "STANDARD": 0.023,
    "INTELLIGENT_TIERING": 0.023,
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.00099,
    "REDUCED_REDUNDANCY": 0.024,
}
SSE_ALGORITHMS = ("AES256", "aws:kms", "aws:kms:dsse")


@dataclass(frozen=True)
class Reports:
    """``reports``: the weekly maintenance report and the quarterly audit (backupkit.reports)."""

    prefix: str = "reports/"  # bucket key prefix; reports go to <prefix>weekly/<date>/, <prefix>audit/<date>/
    trend_weeks: int = 8
    # A backup whose size or duration is >= factor x (or <= 1/factor x) the median of the
    # previous size_window backups of its source is flagged as an anomaly.
    anomaly_factor: float = 2.0
    sse_algorithm: str = "AES256"  # the bucket default encryption and every backup object must use it
    prices_usd_per_gb_month: dict = field(default_factory=lambda: dict(DEFAULT_S3_PRICES))
    cost_explorer: bool = True  # ask AWS Cost Explorer for last month's S3 cost when reachable
    # Conn ids of the PostgreSQL servers whose pg_database the audit lists for coverage
    # (empty: the conn ids of the configured database sources).
    database_servers: tuple[str, ...] = ()
    coverage_max_age_hours: float = 48.0  # "recent verified backup" for the coverage control
    retention_grace_days: float = 2.0  # a backup the policy dropped longer ago than this is overdue
    restore_test_max_age_days: float = 35.0  # the newest monthly restore test must be younger
    dr_drill_max_age_days: float = 400.0  # the latest (annual) DR drill must be younger
    require_cross_region_copy: bool = False  # fail the audit when the bucket has no replication rule
    # Fail the audit when the bucket policy does not deny plain-HTTP requests. Only an endpoint
    # without TLS (a loopback or private-network S3 such as the sandbox's) has a reason to say false.
    require_secure_transport: bool = True

    def servers(self, databases: tuple[Source, ...]) -> tuple[str, ...]:
        if self.database_servers:
            return self.database_servers
        return tuple(dict.fromkeys(s.conn_id for s in databases if s.conn_id))


DRILL_HOUR_UTC = 9  # the annual DR drill starts at 09:00 UTC on drill.date


@dataclass(frozen=True)
class Drill:
    """``drill``: the annual disaster-recovery drill (backupkit.drill, DAG backup_annual_dr_drill).

    ``date`` is ``MM-DD``; the drill runs every year on that day at 09:00 UTC, whatever the
    weekday (the automated part needs nobody; the team's evaluation follows). The default,
    15 November, leaves time to fix findings before the year-end change freeze and gives the
    December quarterly audit a fresh drill. 29 February is refused (it would run one year in four).
    """

    date: str = "11-15"
    rto_target_minutes: float = 240.0  # half the runbook's 8-hour drill window
    rpo_target_hours: float = 25.0  # nightly backups plus the runbook's 25-hour freshness threshold
    compromise_time: datetime | None = None  # ransomware scenario; None: the scenario's start
    smoke_check_url: str | None = None  # failed-deployment scenario: GET must answer 2xx
    smoke_check_timeout_seconds: float = 60.0

    @property
    def month_day(self) -> tuple[int, int]:
        month, day = self.date.split("-")
        return int(month), int(day)

    @property
    def cron(self) -> str:
        month, day = self.month_day
        return f"0 {DRILL_HOUR_UTC} {day} {month} *"


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
    restore: RestoreSettings = field(default_factory=RestoreSettings)
    reports: Reports = field(default_factory=Reports)
    drill: Drill = field(default_factory=Drill)

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
    purge = r.get("purge_noncurrent_after_days", int, None)
    if purge is not None and purge < 0:
        raise ConfigError(r.file, r._k("purge_noncurrent_after_days"), f"must be >= 0, got {purge}")
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
        purge_noncurrent_after_days=purge,
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


_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _k8s_name(r: _Reader, name: str, default: str | None) -> str | None:
    value = r.get(name, str, default)
    if value is not None and (len(value) > 63 or not _K8S_NAME.fullmatch(value)):
        raise ConfigError(r.file, r._k(name), f"not a valid Kubernetes name (lower-case, digits, '-'): {value!r}")
    return value


def _positive(r: _Reader, name: str, typ: type, default: Any) -> Any:
    value = r.get(name, typ, default)
    if value <= 0:
        raise ConfigError(r.file, r._k(name), f"must be > 0, got {value}")
    return value


def _app_switch(r: _Reader) -> AppSwitch:
    base = AppSwitch()
    setting = r.get("setting", str, base.setting)
    if setting not in APP_SETTING_KINDS:
        raise ConfigError(r.file, r._k("setting"), f"must be one of {', '.join(APP_SETTING_KINDS)}; got {setting!r}")
    deployments = r.strings("deployments")
    for i, d in enumerate(deployments):
        if len(d) > 63 or not _K8S_NAME.fullmatch(d):
            raise ConfigError(r.file, f"{r._k('deployments')}[{i}]", f"not a valid Kubernetes name: {d!r}")
    secret_name = _k8s_name(r, "secret_name", None)
    if setting == "secret" and not secret_name:
        raise ConfigError(r.file, r._k("secret_name"), "is required when setting is 'secret'")
    health = r.get("health_url", str, None) or None
    if health is not None and not re.match(r"https?://", health):
        raise ConfigError(r.file, r._k("health_url"), f"must be an http(s) URL, got {health!r}")
    app = AppSwitch(namespace=_k8s_name(r, "namespace", base.namespace), deployments=deployments, setting=setting,
                    env_var=r.get("env_var", str, base.env_var), container=r.get("container", str, None),
                    secret_name=secret_name, secret_key=r.get("secret_key", str, base.secret_key),
                    health_url=health,
                    rollout_timeout_seconds=_positive(r, "rollout_timeout_seconds", int, base.rollout_timeout_seconds))
    r.reject_unknown()
    return app


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _smoke_check(r: _Reader) -> SmokeCheck:
    image = r.get("image", str)
    if not image or any(c.isspace() for c in image):
        raise ConfigError(r.file, r._k("image"), f"not an image reference: {image!r}")
    port = _positive(r, "port", int, 3000)
    if port > 65535:
        raise ConfigError(r.file, r._k("port"), f"must be a TCP port (1-65535), got {port}")
    paths = r.strings("paths") if r.data.get("paths") is not None else ("/health",)
    r._used.add("paths")
    if not paths:
        raise ConfigError(r.file, r._k("paths"), "must list at least one path (or leave it out for /health)")
    for i, p in enumerate(paths):
        if not p.startswith("/") or any(c.isspace() for c in p):
            raise ConfigError(r.file, f"{r._k('paths')}[{i}]", f"must be an absolute URL path like /health, got {p!r}")
    env_var = r.get("env_var", str, "DATABASE_URL")
    if not _ENV_NAME.fullmatch(env_var):
        raise ConfigError(r.file, r._k("env_var"), f"not an environment variable name: {env_var!r}")
    s = SmokeCheck(image=image, port=port, paths=paths, env_var=env_var,
                   timeout_seconds=_positive(r, "timeout_seconds", int, 60))
    r.reject_unknown()
    return s


def _restore_settings(r: _Reader) -> RestoreSettings:
    base = RestoreSettings()
    r._used.add("smoke_check")  # parsed below when present; `smoke_check:` left empty means off
    backend = r.get("backend", str, base.backend)
    if backend not in RESTORE_BACKENDS:
        raise ConfigError(r.file, r._k("backend"), f"must be one of {', '.join(RESTORE_BACKENDS)}; got {backend!r}")
    resources = r.get("resources", dict, base.resources)
    try:
        from backupkit.restore.kubernetes import _check_resources

        resources = _check_resources(resources)
    except ValueError as exc:
        raise ConfigError(r.file, r._k("resources"), str(exc)) from None
    image = r.get("image", str, base.image)
    if not image or any(c.isspace() for c in image):
        raise ConfigError(r.file, r._k("image"), f"not an image reference: {image!r}")
    roots = r.strings("allowed_file_roots")
    for i, root in enumerate(roots):
        if not root.startswith("/"):
            raise ConfigError(r.file, f"{r._k('allowed_file_roots')}[{i}]", f"must be an absolute path, got {root!r}")
    scratch = r.get("scratch_dir", str, None) or None
    s = RestoreSettings(
        backend=backend,
        kubernetes_conn_id=r.get("kubernetes_conn_id", str, base.kubernetes_conn_id),
        namespace=_k8s_name(r, "namespace", base.namespace),
        image=image,
        resources=resources,
        active_deadline_seconds=_positive(r, "active_deadline_seconds", int, base.active_deadline_seconds),
        ready_timeout_seconds=_positive(r, "ready_timeout_seconds", int, base.ready_timeout_seconds),
        scratch_dir=Path(scratch) if scratch else None,
        allowed_file_roots=roots,
        random_older_window_days=r.non_negative("random_older_window_days", float, base.random_older_window_days),
        orphan_max_age_hours=_positive(r, "orphan_max_age_hours", float, base.orphan_max_age_hours),
        max_extract_bytes=_positive(r, "max_extract_bytes", int, base.max_extract_bytes),
        max_extract_files=_positive(r, "max_extract_files", int, base.max_extract_files),
        app=_app_switch(r.child("app")),
        smoke_check=_smoke_check(r.child("smoke_check")) if r.data.get("smoke_check") is not None else None,
    )
    if s.orphan_max_age_hours * 3600 <= s.active_deadline_seconds:
        # Else the sweep could delete the scratch pod of a restore that is still running.
        raise ConfigError(r.file, r._k("orphan_max_age_hours"),
                          f"must exceed active_deadline_seconds ({s.active_deadline_seconds}s)")
    r.reject_unknown()
    return s


def _flag(r: _Reader, name: str, default: bool) -> bool:
    """A boolean that may also be ``${VAR:-true}`` (so one file serves production and the sandbox)."""
    value = r.get(name, (bool, str), default)
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false"):
            raise ConfigError(r.file, r._k(name), f"expected true or false, got {value!r}")
        return value.strip().lower() == "true"
    return value


def _reports(r: _Reader) -> Reports:
    base = Reports()
    prefix = r.get("prefix", str, base.prefix)
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise ConfigError(r.file, r._k("prefix"), f"must be a relative key prefix, got {prefix!r}")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    sse = r.get("sse_algorithm", str, base.sse_algorithm)
    if sse not in SSE_ALGORITHMS:
        raise ConfigError(r.file, r._k("sse_algorithm"), f"must be one of {', '.join(SSE_ALGORITHMS)}; got {sse!r}")
    factor = r.get("anomaly_factor", float, base.anomaly_factor)
    if factor <= 1:
        raise ConfigError(r.file, r._k("anomaly_factor"), f"must be > 1 (a ratio), got {factor}")
    weeks = r.get("trend_weeks", int, base.trend_weeks)
    if weeks < 1:
        raise ConfigError(r.file, r._k("trend_weeks"), f"must be >= 1, got {weeks}")
    prices = dict(DEFAULT_S3_PRICES)
    for cls, price in r.get("prices_usd_per_gb_month", dict, {}).items():
        key = f"{r._k('prices_usd_per_gb_month')}.{cls}"
        if not isinstance(cls, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", cls):
            raise ConfigError(r.file, key, "storage class names are upper case, e.g. STANDARD_IA")
        if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
            raise ConfigError(r.file, key, f"expected a price >= 0 in USD per GB-month, got {price!r}")
        prices[cls] = float(price)
    rep = Reports(
        prefix=prefix, trend_weeks=weeks, anomaly_factor=factor, sse_algorithm=sse, prices_usd_per_gb_month=prices,
        cost_explorer=r.get("cost_explorer", bool, base.cost_explorer),
        database_servers=r.strings("database_servers"),
        coverage_max_age_hours=r.non_negative("coverage_max_age_hours", float, base.coverage_max_age_hours),
        retention_grace_days=r.non_negative("retention_grace_days", float, base.retention_grace_days),
        restore_test_max_age_days=r.non_negative("restore_test_max_age_days", float, base.restore_test_max_age_days),
        dr_drill_max_age_days=r.non_negative("dr_drill_max_age_days", float, base.dr_drill_max_age_days),
        require_cross_region_copy=r.get("require_cross_region_copy", bool, base.require_cross_region_copy),
        require_secure_transport=_flag(r, "require_secure_transport", base.require_secure_transport),
    )
    r.reject_unknown()
    return rep


def _drill(r: _Reader) -> Drill:
    base = Drill()
    when = r.get("date", str, base.date)
    m = re.fullmatch(r"(\d{2})-(\d{2})", when)
    # Days that exist in every year (a leap year's 29 February would run one year in four).
    days_in = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    if not m or not 1 <= int(m.group(1)) <= 12 or not 1 <= int(m.group(2)) <= days_in[int(m.group(1)) - 1]:
        raise ConfigError(r.file, r._k("date"), f"expected MM-DD of a day every year has (e.g. 11-15), got {when!r}")
    compromise = r.get("compromise_time", (str, datetime), None)
    if isinstance(compromise, str):
        text = compromise.strip()
        try:
            compromise = datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
        except ValueError:
            raise ConfigError(r.file, r._k("compromise_time"),
                              f"expected an ISO 8601 date-time like 2025-03-01T12:00:00Z, got {text!r}") from None
    if compromise is not None and compromise.tzinfo is None:
        compromise = compromise.replace(tzinfo=timezone.utc)
    url = r.get("smoke_check_url", str, None) or None
    if url is not None and not re.match(r"https?://", url):
        raise ConfigError(r.file, r._k("smoke_check_url"), f"must be an http(s) URL, got {url!r}")
    d = Drill(date=when,
              rto_target_minutes=_positive(r, "rto_target_minutes", float, base.rto_target_minutes),
              rpo_target_hours=_positive(r, "rpo_target_hours", float, base.rpo_target_hours),
              compromise_time=compromise, smoke_check_url=url,
              smoke_check_timeout_seconds=_positive(r, "smoke_check_timeout_seconds", float,
                                                    base.smoke_check_timeout_seconds))
    r.reject_unknown()
    return d


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
    restore = _restore_settings(top.child("restore"))
    reports = _reports(top.child("reports"))
    drill = _drill(top.child("drill"))
    top.reject_unknown()
    return Config(path=file, bucket=bucket_name, aws_conn_id=aws_conn_id, sources=tuple(sources),
                  logs=tuple(logs), state_dir=state_dir, reread_fraction=reread, alerting=alerting,
                  pushgateway_url=pushgateway, hold_list=hold_list, restore=restore,
                  reports=reports, drill=drill)
