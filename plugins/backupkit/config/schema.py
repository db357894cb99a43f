"""What the configuration says, as frozen dataclasses: every default is written here, once.

:mod:`backupkit.config.load` reads the YAML into these; everything else only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from backupkit.naming import NamePattern
from backupkit.storage.statedir import StateDir

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = REPO_ROOT / "include" / "config" / "backups.yaml"
DUMP_FORMATS = ("custom", "plain", "tar", "directory")
# Share of already-verified backups re-read in full each run (restic's --read-data-subset
# idea): a thirtieth re-reads the whole history within a month.
REREAD_FRACTION = 1 / 30
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")  # S3 Object Lock retention modes
HOLD_DISCOVERY = ("inventory", "objects")



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
    # A backup dated more than this beyond now is counted by no rule, deleted by nothing, and
    # refuses the plan (a clock or naming error, or an injected file, must not displace real ones).
    future_tolerance_hours: float = 1.0
    # "Lock what you keep": extend the S3 Object Lock retain-until of kept backups to the day
    # the policy would next consider dropping them, in this mode (None: off).
    lock_kept: str | None = None
    # Where sweeps learn holds: "inventory" (the hold list, leases and the hold records under
    # holds/ in the bucket: no request per object) or "objects" (also ask S3 about every
    # candidate: legal hold and hold tag, one HeadObject each plus tags where it has some).
    hold_discovery: str = "inventory"

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
    """One thing that is backed up: the fields every kind shares, and the kind's own ``spec``.

    ``kind`` names a module of :mod:`backupkit.kinds` ("database", "files", ...); ``spec`` is
    that kind's frozen configuration dataclass (e.g. :class:`backupkit.kinds.postgres.DatabaseSpec`).
    """

    name: str
    kind: str
    local_dir: Path
    s3_prefix: str
    pattern: NamePattern
    thresholds: Thresholds = field(default_factory=Thresholds)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    spec: Any = None
    # ``restore.target_duration``: a restore test (download + restore) longer than this fails.
    restore_target_seconds: float | None = None

    @property
    def kind_impl(self) -> Any:
        """The :class:`backupkit.kinds.base.SourceKind` that knows how to check and restore this source."""
        from backupkit.kinds import kind_of

        return kind_of(self.kind)

    @property
    def is_database(self) -> bool:
        return self.kind == "database"

    @property
    def s3_prefixes(self) -> tuple[str, ...]:
        """Every prefix of the bucket this source's backups live under: ``s3_prefix`` and what its
        kind keeps elsewhere (a WAL archive's ``archive_s3_prefix``)."""
        return (self.s3_prefix, *self.kind_impl.storage_places(self)[1])

    @property
    def local_dirs(self) -> tuple[Path, ...]:
        """Every local directory of this source's backups: ``local_dir`` and its kind's others
        (a WAL archive's ``archive_dir``)."""
        return (self.local_dir, *self.kind_impl.storage_places(self)[0])

    # Typed accessors of the common kinds' specs (None / empty where the kind has no such field).
    @property
    def dump_format(self) -> str | None:
        return getattr(self.spec, "dump_format", None)

    @property
    def conn_id(self) -> str | None:
        return getattr(self.spec, "conn_id", None)

    @property
    def database(self) -> str | None:
        return getattr(self.spec, "database", None)

    @property
    def paths(self) -> tuple[str, ...]:
        return getattr(self.spec, "paths", ())

    @property
    def restore(self) -> "RestoreExpectations":
        return getattr(self.spec, "restore", None) or RestoreExpectations()


@dataclass(frozen=True)
class LogSource:
    name: str
    path: Path


@dataclass(frozen=True)
class Alerting:
    """``alerting``: the channels every alert goes to (chosen once: ``backup_airflow.notifiers.alert_channels``)."""

    smtp_conn_id: str | None = None
    email_to: tuple[str, ...] = ()
    webhook_conn_id: str | None = None  # Slack-compatible JSON webhook (Mattermost, Rocket.Chat, any receiver)
    slack_conn_id: str | None = None  # the Slack provider's incoming-webhook connection (slackwebhook)
    pagerduty_conn_id: str | None = None  # the PagerDuty provider's Events API v2 connection (routing key)


@dataclass(frozen=True)
class Approvers:
    """``restore.approvers``: who may approve a replace (Airflow user names and/or one role).

    Both empty: whoever Airflow lets answer the run's Required Actions (four eyes still apply)."""

    users: tuple[str, ...] = ()
    role: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.users or self.role)


APPROVAL_TIMEOUT_SECONDS = 4 * 3600


RESTORE_BACKENDS = ("local", "kubernetes")
APP_SETTING_KINDS = ("env", "secret")
APP_PLATFORMS = ("kubernetes", "local")


@dataclass(frozen=True)
class AppSwitch:
    """``restore.app``: what the ``replace`` mode of backup_restore switches to a restored database.

    ``setting: env`` patches the environment variable ``env_var`` of each deployment's
    container (``container``, default: the one that has the variable); ``setting: secret``
    rewrites key ``secret_key`` of Secret ``secret_name`` that the deployments read at start.
    ``platform`` is where the deployments run: ``kubernetes`` (production), or ``local``:
    processes supervised on this machine through ``control_dir``
    (:mod:`backupkit.restore.local_platform`; the sandbox), which supports ``setting: env`` only.
    """

    platform: str = "kubernetes"
    control_dir: Path | None = None  # platform local: <control_dir>/<namespace>/<deployment>/
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
    # How workers reach scratch pods: "pod-ip" (workers in the cluster) or "port-forward" (through
    # the API server, for workers outside it; needs pods/portforward, deploy/kubernetes/).
    kubernetes_access: str = "pod-ip"
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
    approvers: Approvers = field(default_factory=Approvers)
    four_eyes: bool = True  # the requester may not approve their own replace
    approval_timeout_seconds: int = APPROVAL_TIMEOUT_SECONDS  # no answer by then: rejected, nothing changed


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
    """``drill``: the annual disaster-recovery drill (backupkit.jobs.drill, DAG backup_annual_dr_drill).

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
    reread_fraction: float = REREAD_FRACTION
    # Threads that decode a custom dump's data blocks; 0 = the cores the process may use.
    verification_workers: int = 0
    alerting: Alerting = field(default_factory=Alerting)
    pushgateway_url: str | None = None
    hold_list: tuple[str, ...] = ()
    restore: RestoreSettings = field(default_factory=RestoreSettings)
    reports: Reports = field(default_factory=Reports)
    drill: Drill = field(default_factory=Drill)

    @property
    def state(self) -> StateDir:
        """Every path under ``state_dir`` (:mod:`backupkit.storage.statedir`)."""
        return StateDir(self.state_dir)

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        from backupkit.config.reader import ConfigError

        known = ", ".join(s.name for s in self.sources)
        raise ConfigError(self.path, "sources", f"unknown source {name!r} (configured: {known})")

    def of_kind(self, *kinds: str) -> tuple[Source, ...]:
        """The sources of the given kinds, in configuration order."""
        return tuple(s for s in self.sources if s.kind in kinds)

    @property
    def databases(self) -> tuple[Source, ...]:
        return self.of_kind("database")

    @property
    def file_sets(self) -> tuple[Source, ...]:
        return self.of_kind("files")
