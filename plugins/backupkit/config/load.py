"""Load and validate the one configuration file that declares what is backed up.

The file is YAML; strings may use ``${VAR}``, ``${VAR:-default}`` and ``${VAR-default}`` with
the shell's meaning, so the same file serves production (``/opt/backups``) and the sandbox
(``.sandbox/backups``). Validation happens on load and every error names the file, the key
and the problem, because a typo in a retention rule must stop the run, not silently keep
(or delete) the wrong set. Each source kind reads its own keys (:mod:`backupkit.kinds`).

Reading the file touches neither network nor database, so DAG files may call
:func:`load_config` at parse time.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any, Sequence
from zoneinfo import ZoneInfo

import yaml

from backupkit.config.reader import ConfigError, Reader, expand_env
from backupkit.config.schema import (
    APP_PLATFORMS,
    APP_SETTING_KINDS,
    DEFAULT_CONFIG,
    DEFAULT_S3_PRICES,
    HOLD_DISCOVERY,
    LOCK_MODES,
    REREAD_FRACTION,
    RESTORE_BACKENDS,
    SSE_ALGORITHMS,
    APPROVAL_TIMEOUT_SECONDS,
    Alerting,
    AppSwitch,
    Approvers,
    Config,
    Drill,
    LogSource,
    Reports,
    RestoreSettings,
    RetentionPolicy,
    SmokeCheck,
    Source,
    Thresholds,
)
from backupkit.kinds import KINDS, SourceKind
from backupkit.naming import NamePattern, PatternError


def _thresholds(r: Reader, base: Thresholds) -> Thresholds:
    t = Thresholds(
        max_age_hours=r.non_negative("max_age_hours", float, base.max_age_hours),
        size_deviation=r.non_negative("size_deviation", float, base.size_deviation),
        size_window=r.non_negative("size_window", int, base.size_window),
    )
    r.reject_unknown()
    return t


_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?$")


def _retention(r: Reader) -> RetentionPolicy:
    within = r.get("keep_within", str, None)
    if within is not None and (not within or not _DURATION.match(within)):
        raise ConfigError(r.file, r.at("keep_within"),
                          f"expected a duration like 1y6m2d3h (restic style), got {within!r}")
    tz = r.get("timezone", str, "UTC")
    _zone(r, "timezone")
    fraction = r.non_negative("max_delete_fraction", float, 0.5)
    if fraction > 1:
        raise ConfigError(r.file, r.at("max_delete_fraction"), f"must be between 0 and 1, got {fraction}")
    purge = r.get("purge_noncurrent_after_days", int, None)
    if purge is not None and purge < 0:
        raise ConfigError(r.file, r.at("purge_noncurrent_after_days"), f"must be >= 0, got {purge}")
    lock_kept = r.get("lock_kept", str, None)
    if lock_kept is not None and lock_kept.upper() not in LOCK_MODES:
        raise ConfigError(r.file, r.at("lock_kept"), f"must be one of {', '.join(LOCK_MODES)} (or absent: off); "
                                                     f"got {lock_kept!r}")
    discovery = r.get("hold_discovery", str, "inventory")
    if discovery not in HOLD_DISCOVERY:
        raise ConfigError(r.file, r.at("hold_discovery"), f"must be one of {', '.join(HOLD_DISCOVERY)}; "
                                                          f"got {discovery!r}")
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
        future_tolerance_hours=r.non_negative("future_tolerance_hours", float, 1.0),
        lock_kept=lock_kept.upper() if lock_kept else None,
        hold_discovery=discovery,
    )
    r.reject_unknown()
    return p


def _zone(r: Reader, name: str, default: str = "UTC") -> tzinfo:
    text = r.get(name, str, default)
    if text in ("UTC", "Etc/UTC"):
        return timezone.utc
    try:
        return ZoneInfo(text)
    except Exception:
        raise ConfigError(r.file, r.at(name), f"unknown time zone {text!r}") from None


def _pattern(r: Reader) -> NamePattern:
    """``pattern`` and the zone its wall-clock time is in (``name_timezone``, default UTC)."""
    raw = r.get("pattern", str)
    zone = _zone(r, "name_timezone")
    try:
        return NamePattern(raw, zone)
    except PatternError as exc:
        raise ConfigError(r.file, r.at("pattern"), str(exc)) from None


def _source(r: Reader, kind: SourceKind, defaults: Thresholds, names: set[str]) -> Source | None:
    """The keys every kind shares, then the kind's own (:meth:`SourceKind.parse_spec`); None for a
    source with ``enabled: false`` (validated all the same, so switching it on cannot surprise)."""
    name = r.get("name", str)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ConfigError(r.file, r.at("name"), f"use lower-case letters, digits, - and _; got {name!r}")
    if name in names:
        raise ConfigError(r.file, r.at("name"), f"duplicate source name {name!r}")
    names.add(name)
    prefix = r.get("s3_prefix", str)
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise ConfigError(r.file, r.at("s3_prefix"), f"must be a relative key prefix, got {prefix!r}")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    target = _restore_target(r)
    src = Source(
        name=name,
        kind=kind.id,
        local_dir=Path(r.get("local_dir", str)),
        s3_prefix=prefix,
        pattern=_pattern(r),
        thresholds=_thresholds(r.child("thresholds"), defaults),
        retention=_retention(r.child("retention")),
        spec=kind.parse_spec(r),
        restore_target_seconds=target,
    )
    enabled = _flag(r, "enabled", True)
    r.reject_unknown()
    return src if enabled else None


def _restore_target(r: Reader) -> float | None:
    """``restore.target_duration`` (``45min``, ``2h``, ``1d``; d, h, min, s), a key every kind shares.

    It is taken out of the ``restore`` block before the kind reads the rest of it (a database's
    key_tables, ...): a block left empty is done with; a kind without a restore block of its own
    refuses any other key in it as unknown."""
    from backupkit.wal.verify import parse_age

    block = r.data.get("restore")
    if not isinstance(block, dict) or "target_duration" not in block:
        return None
    at = f"{r.at('restore')}.target_duration"
    text = block["target_duration"]
    if not isinstance(text, str):
        raise ConfigError(r.file, at, f"expected a duration such as 45min or 2h, got {text!r}")
    try:
        seconds = parse_age(expand_env(text, r.file, at)).total_seconds()
    except ValueError as exc:
        raise ConfigError(r.file, at, str(exc)) from None
    if seconds <= 0:
        raise ConfigError(r.file, at, "must be longer than 0")
    rest = {k: v for k, v in block.items() if k != "target_duration"}
    r.data = {**r.data, "restore": rest or None}
    if not rest:
        r.mark_used("restore")
    return seconds


def check_no_overlap(file: Path, sources: Sequence[Source]) -> None:
    """Refuse two sources that share a directory or an S3 prefix unless their file names cannot collide.

    Rule: sharing ``local_dir`` (as written, resolved) or ``s3_prefix`` is allowed only when
    the patterns' fixed leading texts or fixed trailing texts differ (e.g. ``*.dump`` vs
    ``*.sql.gz``): otherwise one source's sweep could delete a file the other's policy keeps.
    """
    for i, a in enumerate(sources):
        for b in sources[i + 1:]:
            shared = []
            if a.local_dir.resolve() == b.local_dir.resolve():
                shared.append(f"local_dir {a.local_dir}")
            if a.s3_prefix == b.s3_prefix:
                shared.append(f"s3_prefix {a.s3_prefix!r}")
            if shared and not a.pattern.disjoint_from(b.pattern):
                raise ConfigError(file, f"{b.kind_impl.section}: {b.name}",
                                  f"shares {' and '.join(shared)} with source {a.name!r} and the patterns "
                                  f"{a.pattern.template!r} and {b.pattern.template!r} can match the same file "
                                  f"names; give each source its own directory and prefix")


_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _k8s_name(r: Reader, name: str, default: str | None) -> str | None:
    value = r.get(name, str, default)
    if value is not None and (len(value) > 63 or not _K8S_NAME.fullmatch(value)):
        raise ConfigError(r.file, r.at(name), f"not a valid Kubernetes name (lower-case, digits, '-'): {value!r}")
    return value


def _positive(r: Reader, name: str, typ: type, default: Any) -> Any:
    value = r.get(name, typ, default)
    if value <= 0:
        raise ConfigError(r.file, r.at(name), f"must be > 0, got {value}")
    return value


def _app_switch(r: Reader) -> AppSwitch:
    base = AppSwitch()
    setting = r.get("setting", str, base.setting)
    if setting not in APP_SETTING_KINDS:
        raise ConfigError(r.file, r.at("setting"), f"must be one of {', '.join(APP_SETTING_KINDS)}; got {setting!r}")
    deployments = r.strings("deployments")
    for i, d in enumerate(deployments):
        if len(d) > 63 or not _K8S_NAME.fullmatch(d):
            raise ConfigError(r.file, f"{r.at('deployments')}[{i}]", f"not a valid Kubernetes name: {d!r}")
    secret_name = _k8s_name(r, "secret_name", None)
    if setting == "secret" and not secret_name:
        raise ConfigError(r.file, r.at("secret_name"), "is required when setting is 'secret'")
    platform = r.get("platform", str, base.platform)
    if platform not in APP_PLATFORMS:
        raise ConfigError(r.file, r.at("platform"), f"must be one of {', '.join(APP_PLATFORMS)}; got {platform!r}")
    control_dir = r.get("control_dir", str, None) or None
    if platform == "local":
        if not control_dir or not control_dir.startswith("/"):
            raise ConfigError(r.file, r.at("control_dir"),
                              f"platform 'local' needs control_dir, an absolute path; got {control_dir!r}")
        if setting != "env":
            raise ConfigError(r.file, r.at("setting"), "platform 'local' supports only setting 'env'")
    health = r.get("health_url", str, None) or None
    if health is not None and not re.match(r"https?://", health):
        raise ConfigError(r.file, r.at("health_url"), f"must be an http(s) URL, got {health!r}")
    app = AppSwitch(platform=platform, control_dir=Path(control_dir) if control_dir else None,
                    namespace=_k8s_name(r, "namespace", base.namespace), deployments=deployments, setting=setting,
                    env_var=r.get("env_var", str, base.env_var), container=r.get("container", str, None),
                    secret_name=secret_name, secret_key=r.get("secret_key", str, base.secret_key),
                    health_url=health,
                    rollout_timeout_seconds=_positive(r, "rollout_timeout_seconds", int, base.rollout_timeout_seconds))
    r.reject_unknown()
    return app


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _smoke_check(r: Reader) -> SmokeCheck:
    image = r.get("image", str)
    if not image or any(c.isspace() for c in image):
        raise ConfigError(r.file, r.at("image"), f"not an image reference: {image!r}")
    port = _positive(r, "port", int, 3000)
    if port > 65535:
        raise ConfigError(r.file, r.at("port"), f"must be a TCP port (1-65535), got {port}")
    paths = r.strings("paths") if r.data.get("paths") is not None else ("/health",)
    r.mark_used("paths")
    if not paths:
        raise ConfigError(r.file, r.at("paths"), "must list at least one path (or leave it out for /health)")
    for i, p in enumerate(paths):
        if not p.startswith("/") or any(c.isspace() for c in p):
            raise ConfigError(r.file, f"{r.at('paths')}[{i}]", f"must be an absolute URL path like /health, got {p!r}")
    env_var = r.get("env_var", str, "DATABASE_URL")
    if not _ENV_NAME.fullmatch(env_var):
        raise ConfigError(r.file, r.at("env_var"), f"not an environment variable name: {env_var!r}")
    s = SmokeCheck(image=image, port=port, paths=paths, env_var=env_var,
                   timeout_seconds=_positive(r, "timeout_seconds", int, 60))
    r.reject_unknown()
    return s


KUBERNETES_ACCESS = ("pod-ip", "port-forward")


def _restore_settings(r: Reader) -> RestoreSettings:
    base = RestoreSettings()
    r.mark_used("smoke_check")  # parsed below when present; `smoke_check:` left empty means off
    backend = r.get("backend", str, base.backend)
    if backend not in RESTORE_BACKENDS:
        raise ConfigError(r.file, r.at("backend"), f"must be one of {', '.join(RESTORE_BACKENDS)}; got {backend!r}")
    resources = r.get("resources", dict, base.resources)
    try:
        from backupkit.restore.kubernetes.manifests import check_resources

        resources = check_resources(resources)
    except ValueError as exc:
        raise ConfigError(r.file, r.at("resources"), str(exc)) from None
    image = r.get("image", str, base.image)
    if not image or any(c.isspace() for c in image):
        raise ConfigError(r.file, r.at("image"), f"not an image reference: {image!r}")
    roots = r.strings("allowed_file_roots")
    for i, root in enumerate(roots):
        if not root.startswith("/"):
            raise ConfigError(r.file, f"{r.at('allowed_file_roots')}[{i}]", f"must be an absolute path, got {root!r}")
    scratch = r.get("scratch_dir", str, None) or None
    access = r.get("kubernetes_access", str, base.kubernetes_access)
    if access not in KUBERNETES_ACCESS:
        raise ConfigError(r.file, r.at("kubernetes_access"),
                          f"must be one of {', '.join(KUBERNETES_ACCESS)}; got {access!r}")
    s = RestoreSettings(
        backend=backend,
        kubernetes_conn_id=r.get("kubernetes_conn_id", str, base.kubernetes_conn_id),
        kubernetes_access=access,
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
        approvers=_approvers(r.child("approvers")),
        four_eyes=_flag(r, "four_eyes", base.four_eyes),
        approval_timeout_seconds=_approval_timeout(r),
    )
    if s.orphan_max_age_hours * 3600 <= s.active_deadline_seconds:
        # Else the sweep could delete the scratch pod of a restore that is still running.
        raise ConfigError(r.file, r.at("orphan_max_age_hours"),
                          f"must exceed active_deadline_seconds ({s.active_deadline_seconds}s)")
    r.reject_unknown()
    return s


# Airflow user names and role names: what the auth managers accept (FAB/Keycloak use e-mail addresses).
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,254}")


def _names(r: Reader, name: str) -> tuple[str, ...]:
    """A list of names, or one string of comma-separated names (so ``${BACKUP_APPROVERS:-}`` works)."""
    value = r.get(name, (list, str), [])
    if isinstance(value, str):
        items: list = [v.strip() for v in value.split(",")] if value.strip() else []
    else:
        items = [expand_env(v, r.file, f"{r.at(name)}[{i}]").strip() if isinstance(v, str) else v
                 for i, v in enumerate(value)]
    out: list[str] = []
    for i, v in enumerate(items):
        if not isinstance(v, str) or not _USER_NAME.fullmatch(v):
            raise ConfigError(r.file, f"{r.at(name)}[{i}]", f"not an Airflow user name: {v!r}")
        if v in out:
            raise ConfigError(r.file, f"{r.at(name)}[{i}]", f"{v!r} is listed twice")
        out.append(v)
    return tuple(out)


def _approvers(r: Reader) -> Approvers:
    users = _names(r, "users")
    role = (r.get("role", str, "") or "").strip() or None
    if role is not None and not _USER_NAME.fullmatch(role):
        raise ConfigError(r.file, r.at("role"), f"not an Airflow role name: {role!r}")
    r.reject_unknown()
    return Approvers(users=users, role=role)


_TIMEOUT = re.compile(r"(\d+)(d|h|min|s)")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "min": 60, "s": 1}
MAX_APPROVAL_TIMEOUT = 7 * 86400


def parse_timeout(text: str) -> int:
    """Seconds of ``4h``, ``90min``, ``1h30min``, ``2d``, ``45s`` (units d, h, min, s; each at most once,
    largest first); ``ValueError`` otherwise. ``m`` is refused: in ``keep_within`` it means months."""
    pos, total, seen = 0, 0, []
    text = text.strip()
    for m in _TIMEOUT.finditer(text):
        if m.start() != pos or (seen and list(_UNIT_SECONDS).index(m.group(2)) <= list(_UNIT_SECONDS).index(seen[-1])):
            break
        seen.append(m.group(2))
        total += int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        hint = " (write min for minutes: in keep_within m means months)" if re.search(r"\dm(?!in)", text) else ""
        raise ValueError(f"expected a duration like 4h, 90min, 1h30min or 2d{hint}, got {text!r}")
    return total


def _approval_timeout(r: Reader) -> int:
    value = r.get("approval_timeout", (str, int), None)
    if value is None:
        return APPROVAL_TIMEOUT_SECONDS
    try:
        seconds = parse_timeout(value) if isinstance(value, str) else int(value)
    except ValueError as exc:
        raise ConfigError(r.file, r.at("approval_timeout"), str(exc)) from None
    if isinstance(value, bool) or not 0 < seconds <= MAX_APPROVAL_TIMEOUT:
        raise ConfigError(r.file, r.at("approval_timeout"),
                          f"must be more than 0 and at most 7d (a lease holds the backup meanwhile), got {value!r}")
    return seconds


def _flag(r: Reader, name: str, default: bool) -> bool:
    """A boolean that may also be ``${VAR:-true}`` (so one file serves production and the sandbox)."""
    value = r.get(name, (bool, str), default)
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false"):
            raise ConfigError(r.file, r.at(name), f"expected true or false, got {value!r}")
        return value.strip().lower() == "true"
    return value


def _reports(r: Reader) -> Reports:
    base = Reports()
    prefix = r.get("prefix", str, base.prefix)
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise ConfigError(r.file, r.at("prefix"), f"must be a relative key prefix, got {prefix!r}")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    sse = r.get("sse_algorithm", str, base.sse_algorithm)
    if sse not in SSE_ALGORITHMS:
        raise ConfigError(r.file, r.at("sse_algorithm"), f"must be one of {', '.join(SSE_ALGORITHMS)}; got {sse!r}")
    factor = r.get("anomaly_factor", float, base.anomaly_factor)
    if factor <= 1:
        raise ConfigError(r.file, r.at("anomaly_factor"), f"must be > 1 (a ratio), got {factor}")
    weeks = r.get("trend_weeks", int, base.trend_weeks)
    if weeks < 1:
        raise ConfigError(r.file, r.at("trend_weeks"), f"must be >= 1, got {weeks}")
    prices = dict(DEFAULT_S3_PRICES)
    for cls, price in r.get("prices_usd_per_gb_month", dict, {}).items():
        key = f"{r.at('prices_usd_per_gb_month')}.{cls}"
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


def _drill(r: Reader) -> Drill:
    base = Drill()
    when = r.get("date", str, base.date)
    m = re.fullmatch(r"(\d{2})-(\d{2})", when)
    # Days that exist in every year (a leap year's 29 February would run one year in four).
    days_in = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    if not m or not 1 <= int(m.group(1)) <= 12 or not 1 <= int(m.group(2)) <= days_in[int(m.group(1)) - 1]:
        raise ConfigError(r.file, r.at("date"), f"expected MM-DD of a day every year has (e.g. 11-15), got {when!r}")
    compromise = r.get("compromise_time", (str, datetime), None)
    if isinstance(compromise, str):
        text = compromise.strip()
        try:
            compromise = datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
        except ValueError:
            raise ConfigError(r.file, r.at("compromise_time"),
                              f"expected an ISO 8601 date-time like 2025-03-01T12:00:00Z, got {text!r}") from None
    if compromise is not None and compromise.tzinfo is None:
        compromise = compromise.replace(tzinfo=timezone.utc)
    url = r.get("smoke_check_url", str, None) or None
    if url is not None and not re.match(r"https?://", url):
        raise ConfigError(r.file, r.at("smoke_check_url"), f"must be an http(s) URL, got {url!r}")
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
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(file, "<file>", "does not exist") from None
    except OSError as exc:
        raise ConfigError(file, "<file>", f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "<file>", f"is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(file, "<file>", f"is not valid YAML: {exc}") from None
    top = Reader(raw if raw is not None else {}, file, "")
    bucket = top.child("bucket")
    bucket_name = bucket.get("name", str)
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket_name):
        raise ConfigError(file, "bucket.name", f"not a valid S3 bucket name: {bucket_name!r}")
    aws_conn_id = bucket.get("aws_conn_id", str, "aws_default")
    bucket.reject_unknown()

    defaults = _thresholds(top.child("thresholds"), Thresholds())
    names: set[str] = set()
    sources = []
    for kind in KINDS.values():
        items = top.get(kind.section, list, [])
        for i, item in enumerate(items):
            src = _source(Reader(item, file, f"{kind.section}[{i}]"), kind, defaults, names)
            if src is not None:
                sources.append(src)
    if not sources:
        raise ConfigError(file, "databases", f"no sources configured (none of {', '.join(k.section for k in KINDS.values())})")
    check_no_overlap(file, sources)

    logs = []
    for i, item in enumerate(top.get("logs", list, [])):
        lr = Reader(item, file, f"logs[{i}]")
        logs.append(LogSource(name=lr.get("name", str), path=Path(lr.get("path", str))))
        lr.reject_unknown()

    ver = top.child("verification")
    state_dir = Path(ver.get("state_dir", str, "/var/lib/backupkit"))
    reread = ver.non_negative("reread_fraction", float, REREAD_FRACTION)
    if reread > 1:
        raise ConfigError(file, "verification.reread_fraction", f"must be between 0 and 1, got {reread}")
    workers = ver.non_negative("workers", int, 0)
    ver.reject_unknown()

    al = top.child("alerting")
    alerting = Alerting(smtp_conn_id=al.get("smtp_conn_id", str, None) or None, email_to=al.strings("email_to"),
                        webhook_conn_id=al.get("webhook_conn_id", str, None) or None,
                        slack_conn_id=al.get("slack_conn_id", str, None) or None,
                        pagerduty_conn_id=al.get("pagerduty_conn_id", str, None) or None)
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
                  logs=tuple(logs), state_dir=state_dir, reread_fraction=reread, verification_workers=workers, alerting=alerting,
                  pushgateway_url=pushgateway, hold_list=hold_list, restore=restore,
                  reports=reports, drill=drill)


__all__ = ["load_config", "check_no_overlap"]
