"""The quarterly audit's job (runbook: *End of Quarter Backup Audit*): the controls, evaluated.

Modelled on AWS Backup Audit Manager: every control has an id, the AWS control it
follows, a status (``pass``, ``fail``, or ``info`` for what is reported but not
required) and its evidence, so the report can be handed to an auditor as is. Any
``fail`` fails the run.

Coverage
  ``coverage.databases_protected`` -- every database on the configured servers, as
  listed from ``pg_database`` (:data:`LIST_DATABASES_SQL`: templates excluded, and the
  ``postgres`` maintenance database) -- *not* from the configuration, which is what
  would miss a database nobody configured -- has a backup source, and that source has
  a backup that passed a full verification (the daily run's state) and is younger than
  ``reports.coverage_max_age_hours``.
  ``coverage.file_paths_protected`` -- every configured path of every file set appears
  in its latest archive (member listing of the newest local ``.tar.gz``); the latest archive
  of every Kubernetes resource source holds manifests (``.yaml``/``.yml``/``.json``).
  ``coverage.last_recovery_point_created`` -- every source's newest backup (local or
  S3) is younger than its ``thresholds.max_age_hours``.

Retention compliance (both judged with :func:`backupkit.retention.plan.plan_retention`
over the union of local and S3 backups, with the verification state and hold list the
retention sweep uses)
  ``retention.minimum_frequency`` -- the age distribution per source (the runbook's
  buckets: 1 day, 7, 30, 365 days, older) against the policy, and no gap where the
  policy wants a backup: for each calendar rule ``keep_<rule>: n``, each of the last
  ``n`` complete periods (in the policy's time zone) since the source's first backup
  holds at least one backup.
  ``retention.not_kept_past_policy`` -- no backup is kept past its policy. A backup is
  *overdue* when the plan deletes it now **and** the plan made over the backups that
  existed ``reports.retention_grace_days`` ago, as of then, already deleted it: the
  daily retention sweep has had that long to remove it. Backups dropped more recently
  (the 31st daily backup drops every night) are not findings. Backups under S3 object
  lock retention or legal hold, and those on the hold list, are held, not overdue.

Security (:mod:`backupkit.jobs.audit_security`, which documents each)
  ``security.recovery_points_encrypted``, ``security.manual_deletion_prevented``,
  ``security.public_access_blocked``, ``security.secure_transport_required``,
  ``security.cross_region_copy``.

Recoverability
  ``recoverability.restore_tests_passed`` -- the last three monthly restore tests passed
  and the newest is younger than ``reports.restore_test_max_age_days``.
  ``recoverability.restore_time_meets_target`` -- every source that declares
  ``restore.target_duration``: its newest restore test (the newest backup's) took no longer
  (``info`` when no source declares one).
  ``recoverability.dr_drill_met_targets`` -- the latest disaster-recovery drill met its
  targets and is younger than ``reports.dr_drill_max_age_days``.

The recoverability controls read the result files of :mod:`backupkit.results`. The report is
rendered by :mod:`backupkit.reports.audit`.
"""

from __future__ import annotations

import tarfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from backupkit.catalog import local_backups, s3_key_for
from backupkit.checks.k8smanifests import MANIFEST_SUFFIXES
from backupkit.config import Config, Source
from backupkit.history import s3_backup_sizes
from backupkit.reports.render import human_bytes, human_seconds
from backupkit.reports.weekly import MAX_LISTED
from backupkit.results import read_jsonl, restore_trend
from backupkit.retention.plan import Candidate, plan_retention
from backupkit.retention.policy import (
    CALENDAR_RULES,
    describe_policy,
    period_key,
    policy_zone,
    recent_periods,
    rule_counts,
)
from backupkit.state import VerificationState
from backupkit.storage.objectstore import Bucket

STATUSES = ("pass", "fail", "info")
REQUIRED_RESTORE_TESTS = 3
# Databases no application data lives in: the cluster's maintenance database (templates
# are excluded by the query itself).
SYSTEM_DATABASES = frozenset({"postgres"})
LIST_DATABASES_SQL = "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname"
AGE_BUCKETS = ((1, "<= 1 day"), (7, "<= 7 days"), (30, "<= 30 days"), (365, "<= 365 days"), (None, "older"))


@dataclass
class Control:
    """One audit control: its verdict and the evidence behind it."""

    id: str
    area: str
    title: str
    model: str  # the AWS Backup Audit Manager (or Security Hub) control it follows
    status: str
    summary: str
    evidence: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"{self.id}: status must be one of {STATUSES}, got {self.status!r}")

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Control":
        return cls(**{k: d[k] for k in ("id", "area", "title", "model", "status", "summary")},
                   evidence=list(d.get("evidence", [])), headers=list(d.get("headers", [])),
                   rows=[list(r) for r in d.get("rows", [])])


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: pass an aware (UTC) time")
    return dt.astimezone(timezone.utc)


def _hours(td: timedelta) -> float:
    return td.total_seconds() / 3600


def _error(exc: BaseException) -> str:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return f"{code}: {exc}" if code else f"{type(exc).__name__}: {exc}"


# -- coverage -------------------------------------------------------------------------------------
def newest_verified(source: Source, state: VerificationState) -> tuple[str, datetime, datetime] | None:
    """(name, backup time, verified at) of the newest local backup whose last full read passed."""
    records = state.records(prefix=f"{source.name}/")
    for b in reversed(local_backups(source)):
        rec = records.get(f"{source.name}/{b.name}")
        if rec is not None and rec.ok and rec.size == b.size:
            return b.name, b.timestamp, rec.verified_at
    return None


def coverage_databases(config: Config, servers: Mapping[str, Mapping[str, Any]], *, now: datetime,
                       state: VerificationState) -> Control:
    """Every database listed on every server has a recent verified backup.

    ``servers``: conn id -> ``{"databases": [names from LIST_DATABASES_SQL], "default_database":
    the connection's own database (what a source without ``database`` dumps), "error": None or why
    the listing failed}``.
    """
    now = _utc(now)
    max_age = config.reports.coverage_max_age_hours
    rows, failures, evidence = [], [], []
    listed: set[tuple[str, str]] = set()
    for conn_id, info in servers.items():
        if info.get("error"):
            rows.append([conn_id, "-", "-", "-", "-", "FAIL"])
            failures.append(f"{conn_id}: cannot list databases: {info['error']}")
            continue
        dbs = [d for d in info.get("databases", []) if d not in SYSTEM_DATABASES]
        evidence.append(f"server {conn_id}: {len(dbs)} database(s) besides templates and postgres: "
                        f"{', '.join(dbs) or 'none'}")
        for db in dbs:
            listed.add((conn_id, db))
            sources = [s for s in config.databases
                       if s.conn_id == conn_id and (s.database or info.get("default_database")) == db]
            if not sources:
                rows.append([conn_id, db, "none", "-", "-", "FAIL"])
                failures.append(f"{conn_id}/{db}: no backup source is configured for this database")
                continue
            best = None
            for s in sources:
                found = newest_verified(s, state)
                if found and (best is None or found[1] > best[1][1]):
                    best = (s, found)
            names = ", ".join(s.name for s in sources)
            if best is None:
                rows.append([conn_id, db, names, "none verified", "-", "FAIL"])
                failures.append(f"{conn_id}/{db}: no backup of {names} has passed a full verification")
                continue
            src, (name, ts, verified_at) = best
            age = _hours(now - ts)
            ok = age <= max_age
            rows.append([conn_id, db, names, f"{src.name}/{name} (verified {verified_at:%Y-%m-%d %H:%M})",
                         f"{age:.1f} h", "ok" if ok else "FAIL"])
            if not ok:
                failures.append(f"{conn_id}/{db}: newest verified backup {src.name}/{name} is {age:.1f} h old "
                                f"(limit {max_age:g} h)")
    for s in config.databases:
        info = servers.get(s.conn_id or "")
        db = s.database or (info or {}).get("default_database")
        if info is not None and not info.get("error") and (s.conn_id, db) not in listed:
            evidence.append(f"note: source {s.name} backs up {db!r}, which is not on server {s.conn_id}")
    status = "fail" if failures or not servers else "pass"
    if not servers:
        failures.append("no database server to list (no database sources and no reports.database_servers)")
    summary = (f"{len(failures)} problem(s): " + "; ".join(failures[:5])) if failures else \
        f"all {len(rows)} database(s) have a verified backup younger than {max_age:g} h"
    return Control("coverage.databases_protected", "coverage", "Every database has a recent verified backup",
                   "BACKUP_RESOURCES_PROTECTED_BY_BACKUP_PLAN", status, summary, evidence + failures,
                   ["Server", "Database", "Sources", "Newest verified backup", "Age", "Status"], rows)


def archive_members(path: Path) -> list[str]:
    """Member names of a tar archive (any compression), normalised (no ``./`` or leading ``/``)."""
    names = []
    with tarfile.open(path, "r|*") as tar:  # streaming: headers only, data skipped as it goes
        for m in tar:
            name = m.name
            while name.startswith("./"):
                name = name[2:]
            names.append(name.lstrip("/").rstrip("/"))
    return names


K8S_MANIFESTS = "(Kubernetes manifests)"  # the "path" a Kubernetes resource source must hold


def coverage_file_paths(config: Config, *, now: datetime) -> Control:
    """Every configured path of every file set is in that set's latest archive; every Kubernetes
    resource source's latest archive holds manifests."""
    now = _utc(now)
    rows, failures, evidence = [], [], []
    for src in (*config.file_sets, *config.of_kind("kubernetes")):
        backups = local_backups(src)
        if not backups:
            failures.append(f"{src.name}: no archive in {src.local_dir}")
            rows.extend([src.name, "-", p, "-", "FAIL"] for p in src.paths or ["-"])
            continue
        newest = backups[-1]
        try:
            members = archive_members(newest.path)
        except (OSError, tarfile.TarError, EOFError) as exc:
            failures.append(f"{src.name}: cannot read {newest.name}: {exc}")
            rows.extend([src.name, newest.name, p, "-", "FAIL"] for p in src.paths or ["-"])
            continue
        evidence.append(f"{src.name}: latest archive {newest.name} ({human_bytes(newest.size)}, "
                        f"{_hours(now - newest.timestamp):.1f} h old) has {len(members)} members")
        if src.kind == "kubernetes":
            n = sum(1 for m in members if m.endswith(MANIFEST_SUFFIXES))
            rows.append([src.name, newest.name, K8S_MANIFESTS, n, "ok" if n else "FAIL"])
            if not n:
                failures.append(f"{src.name}: the latest archive {newest.name} holds no manifest")
            continue
        if not src.paths:
            evidence.append(f"{src.name}: no paths configured (nothing to check)")
        for p in src.paths:
            want = p.strip("/")
            n = sum(1 for m in members if m == want or m.startswith(want + "/"))
            rows.append([src.name, newest.name, p, n, "ok" if n else "FAIL"])
            if not n:
                failures.append(f"{src.name}: {p} is not in the latest archive {newest.name}")
    if not config.file_sets and not config.of_kind("kubernetes"):
        evidence.append("no file sets configured")
    status = "fail" if failures else "pass"
    summary = "; ".join(failures[:5]) if failures else "every configured path is in its set's latest archive"
    return Control("coverage.file_paths_protected", "coverage", "Every configured file path is in the latest archive",
                   "BACKUP_RESOURCES_PROTECTED_BY_BACKUP_PLAN", status, summary, evidence + failures,
                   ["File set", "Latest archive", "Path", "Members", "Status"], rows)


def backup_index(config: Config, bucket: Bucket | None = None) -> tuple[dict[str, dict[str, dict]], list[str]]:
    """source -> name -> {"timestamp", "local", "s3", "size"}: every backup local or in S3."""
    index: dict[str, dict[str, dict]] = {}
    notes = []
    for src in config.sources:
        entries: dict[str, dict] = {}
        for b in local_backups(src):
            entries[b.name] = {"timestamp": b.timestamp, "local": True, "s3": False, "size": b.size}
        if bucket is not None:
            try:
                for name, size in s3_backup_sizes(bucket, src).items():
                    e = entries.setdefault(name, {"timestamp": src.pattern.timestamp(name), "local": False,
                                                  "s3": False, "size": 0})
                    e["s3"] = True
                    e["size"] += size
            except Exception as exc:
                notes.append(f"{src.name}: cannot list s3://{config.bucket}/{src.s3_prefix}: {_error(exc)}")
        index[src.name] = entries
    return index, notes


def last_recovery_point(config: Config, index: Mapping[str, Mapping[str, dict]], *, now: datetime,
                        notes: Sequence[str] = ()) -> Control:
    """Every source's newest backup (local or S3) is younger than its max_age_hours."""
    now = _utc(now)
    rows, failures = [], []
    for src in config.sources:
        entries = index.get(src.name, {})
        limit = src.thresholds.max_age_hours
        if not entries:
            rows.append([src.name, "none", "-", f"{limit:g} h", "FAIL"])
            failures.append(f"{src.name}: no backup at all")
            continue
        name, e = max(entries.items(), key=lambda kv: (kv[1]["timestamp"], kv[0]))
        age = _hours(now - e["timestamp"])
        where = "+".join(w for w in ("local", "s3") if e[w])
        ok = age <= limit
        rows.append([src.name, f"{name} ({where})", f"{age:.1f} h", f"{limit:g} h", "ok" if ok else "FAIL"])
        if not ok:
            failures.append(f"{src.name}: newest backup {name} is {age:.1f} h old (limit {limit:g} h)")
    status = "fail" if failures or notes else "pass"
    summary = "; ".join([*failures, *notes][:5]) if status == "fail" else "every source has a recent backup"
    return Control("coverage.last_recovery_point_created", "coverage", "Every source has a recent recovery point",
                   "BACKUP_LAST_RECOVERY_POINT_CREATED", status, summary, [*failures, *notes],
                   ["Source", "Newest backup", "Age", "Limit", "Status"], rows)


# -- retention compliance --------------------------------------------------------------------------
def policy_gaps(timestamps: Iterable[datetime], policy: Any, now: datetime) -> list[tuple[str, str]]:
    """(rule, period) for each of the last ``n`` periods of every calendar rule ``keep_<rule>: n``
    that has no backup, counting only periods since the first backup (periods from the policy's
    one table of bucket functions). Like the retention engine (restic), the current period is
    the first of the ``n`` once it holds a backup; before that, the ``n`` complete periods
    before it are counted."""
    stamps = sorted(timestamps)
    if not stamps:
        return []
    zone = policy_zone(policy)
    gaps = []
    for rule, n in rule_counts(policy).items():
        if rule not in CALENDAR_RULES:
            continue
        have = {period_key(rule, t.astimezone(zone)) for t in stamps}
        first = period_key(rule, stamps[0].astimezone(zone))
        current_kept = period_key(rule, _utc(now).astimezone(zone)) in have  # retention counts it
        for period in recent_periods(rule, _utc(now), n - 1 if current_kept else n, zone):
            if period.key < first:
                break
            if period.key not in have:
                gaps.append((rule, period.label))
    return gaps


def age_distribution(timestamps: Iterable[datetime], now: datetime) -> dict[str, int]:
    """The runbook's buckets: <= 1 day, <= 7, <= 30, <= 365 days, older."""
    counts = {label: 0 for _, label in AGE_BUCKETS}
    for t in timestamps:
        age = (now - t).total_seconds() / 86400
        for limit, label in AGE_BUCKETS:
            if limit is None or age <= limit:
                counts[label] += 1
                break
    return counts


def overdue_backups(candidates: Sequence[Candidate], policy: Any, *, now: datetime, grace: timedelta,
                    held: Iterable[str] = ()) -> tuple[list[Candidate], Any]:
    """Backups the plan deletes now and had already deleted ``grace`` ago; and the plan of now."""
    held = set(held)
    plan_now = plan_retention(candidates, policy, held=held, now=now)
    then = now - grace
    past = [c for c in candidates if c.timestamp <= then]
    plan_then = plan_retention(past, policy, held=held, now=then)
    dropped_then = {d.name for d in plan_then.planned_deletions()}
    by_name = {c.name: c for c in candidates}
    overdue = [by_name[d.name] for d in plan_now.planned_deletions() if d.name in dropped_then]
    return overdue, plan_now


def retention_controls(config: Config, index: Mapping[str, Mapping[str, dict]], *, now: datetime,
                       state: VerificationState, bucket: Bucket | None = None, notes: Sequence[str] = ()) -> list[Control]:
    """``retention.minimum_frequency`` and ``retention.not_kept_past_policy`` (module docstring)."""
    now = _utc(now)
    grace = timedelta(days=config.reports.retention_grace_days)
    hold_list = set(config.hold_list)
    freq_rows, freq_fail, past_rows, past_fail, evidence = [], [], [], [], []
    lock_enabled = None
    for src in config.sources:
        entries = index.get(src.name, {})
        stamps = [e["timestamp"] for e in entries.values()]
        dist = age_distribution(stamps, now)
        policy = src.retention
        gaps = policy_gaps(stamps, policy, now)
        cands = []
        for name, e in entries.items():
            verdict = state.verdict(f"{src.name}/{name}") or "unverified"
            held = "on the configured hold list" if (name in hold_list or s3_key_for(src, name) in hold_list) else None
            cands.append(Candidate(name, e["timestamp"], verdict, e["size"], held))
        overdue, plan = overdue_backups(cands, policy, now=now, grace=grace)
        held_by_s3: dict[str, str] = {}
        if overdue and bucket is not None:
            if lock_enabled is None:
                lock_enabled = bucket.object_lock_enabled()
            keys = {s3_key_for(src, c.name): c.name for c in overdue if entries[c.name]["s3"]}
            for key, (reason, err) in bucket.inspect_holds(keys, now=now, check_lock=lock_enabled,
                                                           hold_tag=None).items():
                if reason:
                    held_by_s3[keys[key]] = reason
                elif err:
                    evidence.append(f"{src.name}: cannot inspect holds of {key}: {err}")
        overdue = [c for c in overdue if c.name not in held_by_s3]
        summary = plan.summary
        kept = ", ".join(f"{r} {n}" for r, n in summary.by_rule.items() if r in CALENDAR_RULES or r == "last")
        freq_rows.append([src.name, describe_policy(policy).split(";")[0], *dist.values(), kept or "-",
                          ", ".join(f"{r} {p}" for r, p in gaps[:6]) + (f" (+{len(gaps) - 6})" if len(gaps) > 6 else "")
                          or "none"])
        if not entries:
            freq_fail.append(f"{src.name}: no backups at all")
        for rule, period in gaps:
            freq_fail.append(f"{src.name}: no backup in {rule} period {period} (policy keeps {rule} backups)")
        oldest = min(overdue, key=lambda c: c.timestamp) if overdue else None
        past_rows.append([src.name, summary.total, summary.not_verified,
                          f"{summary.keep}/{summary.delete}/{summary.held}", len(overdue),
                          f"{oldest.name} ({(now - oldest.timestamp).days} d)" if oldest else "-",
                          "; ".join(plan.violations) or "-"])
        if overdue:
            names = ", ".join(c.name for c in sorted(overdue, key=lambda c: c.timestamp)[:MAX_LISTED])
            past_fail.append(f"{src.name}: {len(overdue)} backup(s) kept past the policy ({describe_policy(policy)}) "
                             f"for more than {grace.days} day(s): {names}")
            if plan.violations:
                past_fail.append(f"{src.name}: the retention sweep refuses to run: {'; '.join(plan.violations)}")
        for name, reason in sorted(held_by_s3.items()):
            evidence.append(f"{src.name}/{name}: past the policy but held ({reason})")
    note_list = list(notes)
    freq = Control(
        "retention.minimum_frequency", "retention", "Backups exist in every period the policy keeps",
        "BACKUP_PLAN_MIN_FREQUENCY_AND_MIN_RETENTION_CHECK",
        "fail" if freq_fail or note_list else "pass",
        "; ".join([*freq_fail, *note_list][:5]) if freq_fail or note_list else
        "no gap in any period the retention policies keep",
        [*freq_fail, *note_list],
        ["Source", "Policy", *[label for _, label in AGE_BUCKETS], "Kept by rule", "Gaps"], freq_rows)
    past = Control(
        "retention.not_kept_past_policy", "retention", "No backup is kept past its retention policy",
        "BACKUP_RECOVERY_POINT_MINIMUM_RETENTION_CHECK (upper bound)",
        "fail" if past_fail or note_list else "pass",
        "; ".join([*past_fail, *note_list][:3]) if past_fail or note_list else
        f"nothing the policies dropped more than {config.reports.retention_grace_days:g} day(s) ago is still kept",
        [*past_fail, *evidence, *note_list],
        ["Source", "Backups", "Not verified (kept until verified)", "Plan keep/delete/held", "Overdue",
         "Oldest overdue", "Guard rails"], past_rows)
    return [freq, past]


# -- recoverability ---------------------------------------------------------------------------------------
def restore_tests_control(config: Config, *, now: datetime) -> Control:
    """The last three monthly restore tests passed; the newest is recent."""
    now = _utc(now)
    path = config.state.restore_tests
    cid, title, model = ("recoverability.restore_tests_passed", "The last three monthly restore tests passed",
                         "AWS Backup restore testing (restore jobs completed and validated)")
    if not path.exists():
        return Control(cid, "recoverability", title, model, "fail", f"no restore test recorded ({path} does not exist)",
                       [f"{path} does not exist: the monthly restore-test DAG has never recorded a result"])
    records, problems = read_jsonl(path)
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[str(r.get("run_id") or f"month {r['_time']:%Y-%m}")].append(r)
    tests = sorted(groups.items(), key=lambda kv: max(r["_time"] for r in kv[1]), reverse=True)
    rows, failures = [], list(problems)
    for run, recs in tests[:REQUIRED_RESTORE_TESTS]:
        when = max(r["_time"] for r in recs)
        bad = [r for r in recs if not r["ok"]]
        rows.append([run, f"{when:%Y-%m-%d %H:%M}", ", ".join(sorted({str(r.get('source', '?')) for r in recs})),
                     f"{len(recs) - len(bad)}/{len(recs)}", "ok" if not bad else "FAIL"])
        for r in bad:
            failures.append(f"restore test {run}: {r.get('source', '?')} failed: {r.get('detail') or 'no detail'}")
    if not tests:
        failures.append("no restore test recorded (the file is empty)")
    elif len(tests) < REQUIRED_RESTORE_TESTS:
        failures.append(f"only {len(tests)} restore test(s) recorded, {REQUIRED_RESTORE_TESTS} required")
    if tests:
        newest = max(r["_time"] for r in tests[0][1])
        age = (now - newest).total_seconds() / 86400
        if age > config.reports.restore_test_max_age_days:
            failures.append(f"the newest restore test is {age:.0f} days old "
                            f"(limit {config.reports.restore_test_max_age_days:g})")
    summary = "; ".join(failures[:4]) if failures else f"the last {REQUIRED_RESTORE_TESTS} restore tests passed"
    return Control(cid, "recoverability", title, model, "fail" if failures else "pass", summary,
                   [f"{len(records)} record(s) in {path}, {len(tests)} restore test(s)", *failures],
                   ["Restore test", "Finished", "Sources", "Passed", "Status"], rows)


def restore_time_control(config: Config, *, now: datetime) -> Control:
    """Every source that declares ``restore.target_duration``: its newest restore test took no longer."""
    cid, title, model = ("recoverability.restore_time_meets_target", "Restore tests meet their restore-time targets",
                         "RESTORE_TIME_FOR_RESOURCES_MEET_TARGET")
    targeted = [s for s in config.sources if s.restore_target_seconds is not None]
    path = config.state.restore_tests
    records, problems = read_jsonl(path) if path.exists() else ([], [])
    rows, failures = [], list(problems)
    for src in config.sources:
        trend = restore_trend(records, src.name)
        durations = [p["duration_seconds"] for p in trend if p["duration_seconds"] is not None]
        newest = trend[-1] if trend else None
        shown = [src.name, human_seconds(src.restore_target_seconds) if src.restore_target_seconds else "none",
                 human_seconds(newest["duration_seconds"]) if newest and newest["duration_seconds"] is not None else "-",
                 f"{newest['mb_per_s']:g}" if newest and newest["mb_per_s"] else "-",
                 ", ".join(human_seconds(d) for d in durations[-4:]) or "-"]
        if src.restore_target_seconds is None:
            rows.append([*shown, "no target"])
            continue
        target, problem = src.restore_target_seconds, None
        if newest is None:
            problem = f"{src.name}: no restore test recorded, target {human_seconds(target)}"
        elif newest["duration_seconds"] is None:
            problem = f"{src.name}: the newest restore test ({newest['at'][:10]}) recorded no duration"
        elif newest["duration_seconds"] > target:
            problem = (f"{src.name}: the newest restore test ({newest['at'][:10]}) took "
                       f"{human_seconds(newest['duration_seconds'])}, over its target {human_seconds(target)}")
        failures += [problem] if problem else []
        rows.append([*shown, "FAIL" if problem else "ok"])
    if not targeted:
        status, summary = "info", "no source declares restore.target_duration"
    elif failures:
        status, summary = "fail", "; ".join(failures[:4])
    else:
        status, summary = "pass", f"the newest restore test of all {len(targeted)} source(s) with a target met it"
    return Control(cid, "recoverability", title, model, status, summary,
                   [f"{len(records)} record(s) in {path}", *failures],
                   ["Source", "Target", "Newest test", "MB/s", "Recent durations", "Status"], rows)


def dr_drill_control(config: Config, *, now: datetime) -> Control:
    """The latest DR drill met its RTO/RPO targets; it is recent."""
    now = _utc(now)
    path = config.state.dr_drills
    cid, title, model = ("recoverability.dr_drill_met_targets", "The latest disaster-recovery drill met its targets",
                         "RESTORE_TIME_FOR_RESOURCES_MEET_TARGET")
    if not path.exists():
        return Control(cid, "recoverability", title, model, "fail", f"no DR drill recorded ({path} does not exist)",
                       [f"{path} does not exist: the DR drill DAG has never recorded a result"])
    records, problems = read_jsonl(path)
    failures = list(problems)
    rows = []
    if not records:
        failures.append("no DR drill recorded (the file is empty)")
        latest = None
    else:
        latest = max(records, key=lambda r: r["_time"])
        if not latest["ok"]:
            failures.append(f"the drill of {latest['_time']:%Y-%m-%d} failed: "
                            f"{latest.get('detail') or 'see its report'}")
        for s in latest.get("scenarios") or []:
            name = str(s.get("name", "?"))
            misses = []
            if s.get("ok") is False:
                misses.append("scenario failed")
            for metric in ("rto", "rpo"):
                value, target = s.get(f"{metric}_seconds"), s.get(f"{metric}_target_seconds")
                if value is not None and target is not None and float(value) > float(target):
                    misses.append(f"{metric.upper()} {float(value):.0f} s > target {float(target):.0f} s")
            rows.append([name, s.get("rto_seconds", "-"), s.get("rto_target_seconds", "-"), s.get("rpo_seconds", "-"),
                         s.get("rpo_target_seconds", "-"), "; ".join(misses) or "ok"])
            failures.extend(f"scenario {name}: {m}" for m in misses)
        age = (now - latest["_time"]).total_seconds() / 86400
        if age > config.reports.dr_drill_max_age_days:
            failures.append(f"the latest drill is {age:.0f} days old (limit {config.reports.dr_drill_max_age_days:g})")
    summary = "; ".join(failures[:4]) if failures else \
        f"the drill of {latest['_time']:%Y-%m-%d} met every target"
    return Control(cid, "recoverability", title, model, "fail" if failures else "pass", summary,
                   [f"{len(records)} drill(s) in {path}", *failures],
                   ["Scenario", "RTO (s)", "RTO target (s)", "RPO (s)", "RPO target (s)", "Result"], rows)


__all__ = ["Control", "coverage_databases", "coverage_file_paths", "last_recovery_point", "backup_index",
           "retention_controls", "policy_gaps", "age_distribution", "overdue_backups", "restore_tests_control",
           "restore_time_control",
           "dr_drill_control", "archive_members", "newest_verified", "LIST_DATABASES_SQL", "SYSTEM_DATABASES"]
