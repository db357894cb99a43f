"""The quarterly audit (runbook: *End of Quarter Backup Audit*), control by control.

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
  in its latest archive (member listing of the newest local ``.tar.gz``).
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

Security
  ``security.recovery_points_encrypted`` -- bucket default encryption of the configured
  kind (``reports.sse_algorithm``), and every backup object encrypted with it.
  ``security.manual_deletion_prevented`` -- versioning enabled, object lock enabled
  with a default retention rule (without one, objects are not locked).
  ``security.public_access_blocked`` -- all four Block Public Access settings on, no
  public grant in the bucket ACL, the bucket policy not public, and no backup object
  with an ACL grant to everyone.
  ``security.secure_transport_required`` -- the bucket policy denies requests with
  ``aws:SecureTransport = false`` (``info`` instead of ``fail`` with
  ``reports.require_secure_transport: false``, for an endpoint that has no TLS at all).
  ``security.cross_region_copy`` -- a replication rule copies the bucket (required only
  with ``reports.require_cross_region_copy``; else reported as ``info``).

Recoverability
  ``recoverability.restore_tests_passed`` -- the last three monthly restore tests passed
  and the newest is younger than ``reports.restore_test_max_age_days``.
  ``recoverability.dr_drill_met_targets`` -- the latest disaster-recovery drill met its
  targets and is younger than ``reports.dr_drill_max_age_days``.

Result files read by the recoverability controls (JSON lines in ``state_dir/history/``; the
monthly restore-test DAG and the DR drill DAG append to them; a missing file fails the
control with "no restore test recorded" / "no DR drill recorded"):

``restore_tests.jsonl`` (written with :func:`record_restore_tests`), one line per backup restored
in a test run::

    {"time": "2026-11-02T09:41:07+00:00", "source": "trixtech-db", "ok": true,
     "run_id": "scheduled__2026-11-02T09:00:00+00:00",    # optional: groups a run's lines
     "backup": "trixtech_20261102_020000.dump",          # optional
     "duration_seconds": 42.1, "detail": ""}              # optional

A *restore test* is the set of lines with one ``run_id`` (lines without one are grouped
by calendar month of ``time``); it passed when every line is ``ok``.

``dr_drills.jsonl`` (written with :func:`record_dr_drill`), one line per drill::

    {"time": "...", "ok": true, "run_id": "...",
     "scenarios": [{"name": "database_corruption", "ok": true, "rto_seconds": 310,
                    "rto_target_seconds": 3600, "rpo_seconds": 25200, "rpo_target_seconds": 86400}]}

The latest drill met its targets when ``ok`` is true and every scenario is ``ok`` with
``rto_seconds <= rto_target_seconds`` and ``rpo_seconds <= rpo_target_seconds`` where given.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from backupkit.catalog import local_backups, s3_key_for
from backupkit.config import Config, Source
from backupkit.reports.render import Doc, human_bytes
from backupkit.history import s3_backup_sizes
from backupkit.reports.weekly import MAX_LISTED
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
from backupkit.storage.inspect import bucket_encryption, public_grants, scan_objects
from backupkit.storage.objectstore import Bucket
from backupkit.storage.statedir import StateDir

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


def coverage_file_paths(config: Config, *, now: datetime) -> Control:
    """Every configured path of every file set is in that set's latest archive."""
    now = _utc(now)
    rows, failures, evidence = [], [], []
    for src in config.file_sets:
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
        if not src.paths:
            evidence.append(f"{src.name}: no paths configured (nothing to check)")
        for p in src.paths:
            want = p.strip("/")
            n = sum(1 for m in members if m == want or m.startswith(want + "/"))
            rows.append([src.name, newest.name, p, n, "ok" if n else "FAIL"])
            if not n:
                failures.append(f"{src.name}: {p} is not in the latest archive {newest.name}")
    if not config.file_sets:
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


# -- security -----------------------------------------------------------------------------------------
def _setting(bucket: Bucket, name: str) -> tuple[dict | None, str | None]:
    """A bucket setting, or the error ``CODE: message`` that S3 answered instead."""
    answer, err = bucket.setting(name)
    return answer, (f"{err[0]}: {err[1]}" if err else None)


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def denies_insecure_transport(policy_text: str | None, bucket: str) -> tuple[bool, str]:
    """Does the bucket policy deny every request made without TLS, for the bucket and its objects?"""
    if not policy_text:
        return False, "no bucket policy"
    try:
        policy = json.loads(policy_text)
    except ValueError as exc:
        return False, f"bucket policy is not JSON: {exc}"
    objects_arn = f"arn:aws:s3:::{bucket}/*"
    for st in _as_list(policy.get("Statement", [])):
        if not isinstance(st, dict) or st.get("Effect") != "Deny":
            continue
        principal = st.get("Principal")
        if not (principal == "*" or (isinstance(principal, dict) and "*" in _as_list(principal.get("AWS")))):
            continue
        actions = [a.lower() for a in _as_list(st.get("Action", []))]
        if not any(a in ("*", "s3:*") for a in actions):
            continue
        resources = _as_list(st.get("Resource", []))
        if not any(r in ("*", "arn:aws:s3:::*", objects_arn) for r in resources):
            continue
        for op in ("Bool", "BoolIfExists"):
            cond = (st.get("Condition") or {}).get(op) or {}
            values = {k.lower(): [str(v).lower() for v in _as_list(val)] for k, val in cond.items()}
            if values.get("aws:securetransport") == ["false"]:
                return True, f"statement {st.get('Sid') or '(no Sid)'} denies s3:* when aws:SecureTransport is false"
    return False, "no Deny statement for aws:SecureTransport = false covering the bucket's objects"


def security_controls(config: Config, store: Bucket) -> list[Control]:
    """Encryption, deletion protection, public access, TLS-only policy and replication of the bucket."""
    bucket = store.name
    expected = config.reports.sse_algorithm
    prefixes = sorted({s.s3_prefix for s in config.sources})
    pab, pab_err = _setting(store, "public_access_block")
    flags = (pab or {}).get("PublicAccessBlockConfiguration") or {}
    owner, _ = _setting(store, "ownership_controls")
    acls_disabled = any(r.get("ObjectOwnership") == "BucketOwnerEnforced"
                        for r in ((owner or {}).get("OwnershipControls") or {}).get("Rules", []))
    # Object ACLs are read only where S3 honours them: IgnorePublicAcls or disabled ACLs (bucket owner
    # enforced) make every public grant ineffective, and skipping them halves the requests.
    check_acls = not (flags.get("IgnorePublicAcls") or acls_disabled)
    scan = scan_objects(store, prefixes, expected, acls=check_acls)

    # encryption
    enc_fail, enc_ev = [], []
    try:
        default = bucket_encryption(store, expected)
        if default["ok"]:
            enc_ev.append(f"bucket default: {default['detail']}")
        else:
            enc_fail.append(default["detail"])
    except Exception as exc:
        enc_fail.append(f"cannot read the bucket encryption: {_error(exc)}")
    enc_ev.append(f"{scan['objects']} backup object(s) under {', '.join(prefixes)}: "
                  + (", ".join(f"{k}: {v}" for k, v in sorted(scan["by_algorithm"].items())) or "none"))
    if scan["unencrypted"]:
        enc_fail.append(f"{scan['counts']['unencrypted']} object(s) without server-side encryption: "
                        + ", ".join(scan["unencrypted"][:MAX_LISTED]))
    if scan["wrong_kind"]:
        enc_fail.append(f"{scan['counts']['wrong_kind']} object(s) not encrypted with {expected}: "
                        + ", ".join(f"{k} ({a})" for k, a in scan["wrong_kind"][:MAX_LISTED]))
    if scan["errors"]:
        enc_fail.append(f"{scan['counts']['errors']} object(s) could not be inspected: "
                        + ", ".join(f"{k}: {e}" for k, e in scan["errors"][:5]))
    controls = [Control("security.recovery_points_encrypted", "security", "Recovery points are encrypted",
                        "BACKUP_RECOVERY_POINT_ENCRYPTED", "fail" if enc_fail else "pass",
                        "; ".join(enc_fail)[:600] if enc_fail else f"bucket default and all {scan['objects']} backup "
                                                                  f"objects use {expected}", enc_ev + enc_fail)]

    # versioning and object lock
    del_fail, del_ev = [], []
    versioning, err = _setting(store, "versioning")
    if err:
        del_fail.append(f"cannot read versioning: {err}")
    else:
        status = versioning.get("Status", "never enabled")
        del_ev.append(f"versioning: {status}; MFA delete: {versioning.get('MFADelete', 'Disabled')}")
        if status != "Enabled":
            del_fail.append(f"versioning is {status}: an overwrite or delete destroys the backup")
    lock, err = _setting(store, "object_lock")
    if err and "ObjectLockConfigurationNotFound" in err:
        del_fail.append("object lock is not enabled on the bucket")
    elif err:
        del_fail.append(f"cannot read the object lock configuration: {err}")
    else:
        conf = lock.get("ObjectLockConfiguration") or {}
        retention = (conf.get("Rule") or {}).get("DefaultRetention")
        del_ev.append(f"object lock: {conf.get('ObjectLockEnabled', 'not enabled')}; default retention: "
                      + (f"{retention.get('Mode')} {retention.get('Days') or retention.get('Years')} "
                         f"{'days' if retention.get('Days') else 'years'}" if retention else "none"))
        if conf.get("ObjectLockEnabled") != "Enabled":
            del_fail.append("object lock is not enabled on the bucket")
        elif not retention:
            del_fail.append("object lock has no default retention: new backups are not locked")
    controls.append(Control("security.manual_deletion_prevented", "security",
                            "Backups cannot be deleted or overwritten by hand", "BACKUP_RECOVERY_POINT_MANUAL_"
                            "DELETION_DISABLED / BACKUP_RESOURCES_PROTECTED_BY_BACKUP_VAULT_LOCK",
                            "fail" if del_fail else "pass",
                            "; ".join(del_fail) if del_fail else "versioning and object lock with default "
                                                                 "retention are enabled", del_ev + del_fail))

    # public access
    pub_fail, pub_ev = [], []
    if pab_err and "NoSuchPublicAccessBlockConfiguration" in pab_err:
        pub_fail.append("no Block Public Access configuration on the bucket")
    elif pab_err:
        pub_fail.append(f"cannot read Block Public Access: {pab_err}")
    else:
        pub_ev.append("Block Public Access: " + ", ".join(f"{k}={v}" for k, v in sorted(flags.items())))
        off = [k for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
               if not flags.get(k)]
        if off:
            pub_fail.append(f"Block Public Access settings off: {', '.join(off)}")
    acl, err = _setting(store, "acl")
    if err:
        pub_fail.append(f"cannot read the bucket ACL: {err}")
    else:
        grants = public_grants(acl.get("Grants", ()))
        pub_ev.append(f"bucket ACL public grants: {', '.join(grants) or 'none'}")
        if grants:
            pub_fail.append(f"the bucket ACL grants {', '.join(grants)}")
    status, err = _setting(store, "policy_status")
    if err and "NoSuchBucketPolicy" in err:
        pub_ev.append("bucket policy: none (not public)")
    elif err:
        pub_fail.append(f"cannot read the bucket policy status: {err}")
    else:
        public = bool((status.get("PolicyStatus") or {}).get("IsPublic"))
        pub_ev.append(f"bucket policy public: {public}")
        if public:
            pub_fail.append("the bucket policy makes the bucket public")
    if check_acls:
        pub_ev.append(f"{scan['objects']} backup object ACL(s) inspected, {scan['counts']['public']} with "
                      f"public grants")
    else:
        pub_ev.append("object ACLs not inspected: " + ("ACLs are disabled (BucketOwnerEnforced)" if acls_disabled
                                                       else "IgnorePublicAcls is on") + ", so no ACL can make an "
                      "object public")
    if scan["public"]:
        pub_fail.append(f"{scan['counts']['public']} backup object(s) readable by everyone: "
                        + ", ".join(f"{k} ({g})" for k, g in scan["public"][:MAX_LISTED]))
    controls.append(Control("security.public_access_blocked", "security", "No backup is readable by everyone",
                            "S3_BUCKET_LEVEL_PUBLIC_ACCESS_PROHIBITED / S3_BUCKET_PUBLIC_READ_PROHIBITED",
                            "fail" if pub_fail else "pass",
                            "; ".join(pub_fail)[:600] if pub_fail else "public access blocked; no public grant on "
                                                                       "the bucket or any backup object",
                            pub_ev + pub_fail))

    # TLS only
    pol, err = _setting(store, "policy")
    if err and "NoSuchBucketPolicy" not in err:
        tls_ok, tls_detail = False, f"cannot read the bucket policy: {err}"
    else:
        tls_ok, tls_detail = denies_insecure_transport((pol or {}).get("Policy"), bucket)
    tls_required = config.reports.require_secure_transport
    controls.append(Control("security.secure_transport_required", "security",
                            "The bucket policy denies unencrypted transport", "S3_BUCKET_SSL_REQUESTS_ONLY",
                            "pass" if tls_ok else ("fail" if tls_required else "info"),
                            tls_detail + ("" if tls_ok or tls_required else
                                          " (not required: reports.require_secure_transport is false)"),
                            [tls_detail]))

    # copy in another region or account
    repl, err = _setting(store, "replication")
    required = config.reports.require_cross_region_copy
    if err and "ReplicationConfigurationNotFound" not in err:
        rep_ok, rep_detail = False, f"cannot read the replication configuration: {err}"
    else:
        rules = [r for r in ((repl or {}).get("ReplicationConfiguration") or {}).get("Rules", [])
                 if r.get("Status") == "Enabled"]
        rep_ok = bool(rules)
        rep_detail = (f"{len(rules)} enabled replication rule(s) to "
                      + ", ".join(sorted({(r.get("Destination") or {}).get("Bucket", "?") for r in rules}))
                      if rules else "no replication rule: the backups exist in one region and account only")
    controls.append(Control("security.cross_region_copy", "security", "A copy exists in another region or account",
                            "BACKUP_RESOURCES_PROTECTED_BY_CROSS_REGION / _CROSS_ACCOUNT",
                            "pass" if rep_ok else ("fail" if required else "info"),
                            rep_detail + ("" if rep_ok or required else
                                          " (not required: reports.require_cross_region_copy is false)"),
                            [rep_detail]))
    return controls


# -- recoverability ---------------------------------------------------------------------------------------
def _append_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Append JSON lines and fsync: a result is either recorded whole or not at all."""
    lines = "".join(json.dumps(dict(r), sort_keys=True, default=str) + "\n" for r in records)
    if not lines:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(lines)
        fh.flush()
        os.fsync(fh.fileno())
    return lines.count("\n")


def record_restore_tests(state_dir: Path, results: Iterable[Mapping[str, Any]], *, run_id: str,
                         now: datetime) -> int:
    """Append one restore-test run's results (one per restored backup: ``source``, ``ok``, and
    optionally ``backup``, ``role``, ``duration_seconds``, ``verified_rows``, ``files``, ``problems``) to
    ``restore_tests.jsonl`` (the health page shows the rows or files checked)."""
    rows = []
    for r in results:
        problems = r.get("problems") or []
        detail = r.get("detail") or "; ".join(f"{p.get('check')}: {p.get('detail')}" for p in problems
                                              if isinstance(p, Mapping))
        rows.append({"time": _utc(now).isoformat(), "run_id": run_id, "source": str(r["source"]),
                     "ok": bool(r.get("ok")),
                     **{k: r[k] for k in ("backup", "role", "duration_seconds", "verified_rows", "files")
                        if r.get(k) is not None},
                     "detail": detail[:1000]})
    return _append_jsonl(StateDir(state_dir).restore_tests, rows)


def record_dr_drill(state_dir: Path, *, ok: bool, scenarios: Sequence[Mapping[str, Any]], run_id: str,
                    now: datetime, detail: str = "") -> int:
    """Append one DR drill (scenarios with ``name``, ``ok``, ``rto_seconds``, ``rto_target_seconds``,
    ``rpo_seconds``, ``rpo_target_seconds``) to ``dr_drills.jsonl``."""
    return _append_jsonl(StateDir(state_dir).dr_drills, [{
        "time": _utc(now).isoformat(), "run_id": run_id, "ok": bool(ok), "detail": detail,
        "scenarios": [dict(s) for s in scenarios]}])


def read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    """(records, problems) of a JSON-lines file; a bad line is a problem, not a crash."""
    records, problems = [], []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            when = datetime.fromisoformat(str(rec["time"]).replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError("time has no UTC offset")
            if not isinstance(rec.get("ok"), bool):
                raise ValueError("ok must be true or false")
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path.name} line {i}: {exc}")
            continue
        rec["_time"] = when.astimezone(timezone.utc)
        records.append(rec)
    return records, problems


def restore_tests_control(config: Config, *, now: datetime) -> Control:
    """The last three monthly restore tests passed; the newest is recent."""
    now = _utc(now)
    path = config.state.restore_tests
    cid, title, model = ("recoverability.restore_tests_passed", "The last three monthly restore tests passed",
                         "RESTORE_TIME_FOR_RESOURCES_MEET_TARGET")
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


# -- the verdict and the report -------------------------------------------------------------------------------
AREAS = ("coverage", "retention", "security", "recoverability")


def audit_summary(controls: Sequence[Control | Mapping[str, Any]]) -> dict:
    cs = [c if isinstance(c, Control) else Control.from_dict(c) for c in controls]
    failed = [c for c in cs if c.failed]
    return {"ok": not failed, "total": len(cs), "failed": [c.id for c in failed],
            "passed": sum(1 for c in cs if c.status == "pass"), "info": sum(1 for c in cs if c.status == "info"),
            "problems": [{"artifact": c.id, "check": "audit", "ok": False, "detail": c.summary} for c in failed]}


def verdict_text(controls: Sequence[Control | Mapping[str, Any]], *, missing: Sequence[str] = ()) -> str:
    """What the task log opens with: the verdict, then one line per control (failures first)."""
    cs = [c if isinstance(c, Control) else Control.from_dict(c) for c in controls]
    s = audit_summary(cs)
    verdict = "FAILED" if (s["failed"] or missing) else "PASSED"
    lines = [f"AUDIT {verdict}: {s['passed']} passed, {len(s['failed'])} failed, {s['info']} informational, "
             f"{len(missing)} not evaluated, of {s['total'] + len(missing)} controls", ""]
    order = {"fail": 0, "pass": 1, "info": 2}
    width = max([len(c.id) for c in cs] + [len("CONTROL")])
    lines.append(f"{'STATUS':<6}  {'CONTROL':<{width}}  SUMMARY")
    for c in sorted(cs, key=lambda c: (order.get(c.status, 3), AREAS.index(c.area) if c.area in AREAS else 99, c.id)):
        summary = " ".join(c.summary.split())
        lines.append(f"{c.status.upper():<6}  {c.id:<{width}}  {summary[:160]}{'...' if len(summary) > 160 else ''}")
    lines += [f"{'-':<6}  {m}" for m in missing]
    return "\n".join(lines)


def audit_doc(controls: Sequence[Control | Mapping[str, Any]], *, report_date: date, bucket: str,
              location: str | None = None, missing: Sequence[str] = ()) -> Doc:
    """The control-by-control report: summary table, then each control with its evidence."""
    cs = [c if isinstance(c, Control) else Control.from_dict(c) for c in controls]
    s = audit_summary(cs)
    doc = Doc(f"Quarterly backup audit {report_date.isoformat()}")
    doc.heading("Summary")
    if location:
        doc.para(f"Report location: {location}")
    verdict = "FAILED" if (s["failed"] or missing) else "PASSED"
    doc.para(f"Verdict: {verdict}: {s['passed']} passed, {len(s['failed'])} failed, {s['info']} informational, "
             f"of {s['total']} controls (bucket s3://{bucket}).")
    doc.bullets(f"NOT EVALUATED: {m}" for m in missing)
    doc.table(["Area", "Control", "Status", "Summary"],
              [[c.area, c.id, c.status.upper(), c.summary[:300]]
               for c in sorted(cs, key=lambda c: (AREAS.index(c.area) if c.area in AREAS else 99, c.id))])
    for area in AREAS:
        mine = [c for c in cs if c.area == area]
        if not mine:
            continue
        doc.heading(area.capitalize())
        for c in mine:
            doc.heading(f"{c.id}: {c.status.upper()}", 3)
            doc.para(f"{c.title}. Modelled on: {c.model}.")
            doc.para(c.summary)
            if c.headers:
                doc.table(c.headers, c.rows)
            doc.bullets(c.evidence)
    return doc


__all__ = ["verdict_text", "Control", "coverage_databases", "coverage_file_paths", "last_recovery_point", "backup_index",
           "retention_controls", "policy_gaps", "age_distribution", "overdue_backups", "security_controls",
           "denies_insecure_transport", "restore_tests_control", "dr_drill_control", "read_jsonl", "audit_summary",
           "audit_doc", "archive_members", "newest_verified", "record_restore_tests", "record_dr_drill",
           "LIST_DATABASES_SQL", "SYSTEM_DATABASES"]
