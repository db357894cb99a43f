"""The annual disaster-recovery drill (runbook: *Annual Disaster Recovery Test*), each scenario measured.

Four scenarios, each a real recovery into throwaway targets, timed and judged against the
configured targets (``drill:`` in the configuration):

``database_corruption``
    The application's database is damaged; the backup host is intact. The newest backup of
    every database source is restored (the copy on disk, else the one in S3) into a scratch
    PostgreSQL and verified against the row counts of its manifest.
``datacenter_loss``
    Disk, backup host and database are gone; only the bucket is left. Every source is
    recovered from S3 alone: the prefix is listed, the newest backup picked by the time in
    its name, downloaded, its SHA-256 compared with the sidecar object and with the checksum
    S3 stored at upload, restored (databases) or safely extracted (file sets), and verified
    against the manifest object. Nothing under the sources' local directories is read.
``ransomware``
    An attacker with the backup credentials encrypted what they could reach. First the same
    S3-only recovery as above, of the newest backup taken *before* the compromise time, and
    of each object the *original* version (the first upload: an attacker can only add
    versions on top of a locked one), so overwritten objects do not matter. Then the proof
    that object lock protects the backups: the newest backup objects carry a retention, and a
    probe copy of a backup under retention refuses ``DeleteObject`` of its version
    (``AccessDenied``), while an overwrite only adds a new version and the locked one stays
    readable with the same SHA-256. The production objects themselves are never deleted or
    overwritten by the drill.
``failed_deployment``
    A release broke the data. The newest backups are restored as in the first scenario, then
    the application's smoke check (``drill.smoke_check_url``: a GET that must answer 2xx)
    runs; without one it is reported as "skipped: no smoke check configured", not a failure.

Measurements, per scenario:

* **RTO** = seconds from the scenario's start until every source has a verified restore
  (for ``failed_deployment``: and the smoke check passed). Never reached: no RTO, a failure.
* **RPO** = the disaster time minus the timestamp (from its name) of the newest *restorable*
  backup, the oldest such over the sources. The disaster time is the scenario's start,
  except for ``ransomware`` where it is the compromise time: what was written after the
  compromise is lost to the attack, not to the backup schedule, so it is reported but not
  counted against the backups' RPO.

Every restore is :func:`backupkit.restore.pipeline.restore_backup`, the one the monthly test
and on-demand restores run (fetch with sidecar and S3 checksums, restore, row counts against
the manifest; never against a live database: in a disaster there is none). A directory-format
dump in the bucket is the objects under ``NAME/`` and is recovered from them.

Each candidate is **leased** from retention while it is restored (as restore tests and
point-in-time restores are), after a sweep already under way has finished: a sweep during the
drill keeps it (:func:`_leased`).

A backup that fails its checks or its restore is a problem of the scenario, and the next
older one is tried (up to :data:`MAX_ATTEMPTS`), as one would in a real disaster: the RTO
then includes the failed attempt and the RPO is that of the backup that did restore. A
scenario passes only with no problem and both targets met.

Pure Python over injected parts (a :class:`~backupkit.storage.objectstore.Bucket`, a factory of
scratch databases, a clock): no Airflow imports. ``backup_annual_dr_drill`` runs one scenario
per task; the object-lock proof is :mod:`backupkit.jobs.drill_lock`, the report
:mod:`backupkit.reports.drill`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from backupkit.catalog import Catalog
from backupkit.clock import now as utc_now
from backupkit.config import Config, Drill, Source
from backupkit.jobs.drill_lock import lock_status, object_lock_proof
from backupkit.metric_names import (DRILL_LAST_RUN, DRILL_LAST_SUCCESS, DRILL_RPO, DRILL_RPO_TARGET, DRILL_RTO,
                                    DRILL_RTO_TARGET, DRILL_STATUS, help_of)
from backupkit.metrics import LastSuccessStore, MetricSet, SourceStatus
from backupkit.model import Backup, CheckResult
from backupkit.reports.render import human_seconds
from backupkit.restore.health import smoke_check
from backupkit.restore.pipeline import RestoreJob, restore_backup
from backupkit.restore.scratch import ScratchDatabase
from backupkit.restore.selection import parse_form_time, restorable
from backupkit.storage.locks import Leases, LockBusy, SourceLock
from backupkit.storage.objectstore import Bucket

SCENARIOS = ("database_corruption", "datacenter_loss", "ransomware", "failed_deployment")
TITLES = {
    "database_corruption": "Database corruption",
    "datacenter_loss": "Loss of the data centre",
    "ransomware": "Ransomware attack",
    "failed_deployment": "Failed application deployment",
}
PROVES = {
    "database_corruption": "The newest backup of every database restores into an empty server and holds exactly "
                           "the rows its manifest recorded.",
    "datacenter_loss": "Everything can be recovered from the bucket alone: listing, checksums (sidecar and S3's "
                       "own), restore and row counts use nothing of the lost site.",
    "ransomware": "Object lock refuses the deletion of a backup under retention and an overwrite cannot change "
                  "the locked version; the newest backup taken before the compromise restores from the "
                  "original object versions.",
    "failed_deployment": "The data can be rolled back to the newest backup and the application answers its smoke "
                         "check afterwards.",
}
MAX_ATTEMPTS = 3  # the newest backup and up to two older ones per source
LEASE_FOR = timedelta(hours=6)  # a drill's restore of one backup; a killed drill's lease expires by itself
SWEEP_WAIT = 600.0               # seconds to wait for a retention sweep already under way
LAST_SUCCESS_KEY = "dr_drill"



class DrillError(ValueError):
    """The drill request is invalid (unknown scenario, compromise time in the future, ...)."""


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Targets:
    rto_seconds: float
    rpo_seconds: float

    @classmethod
    def from_config(cls, drill: Drill, *, rto_minutes: float | None = None,
                    rpo_hours: float | None = None) -> "Targets":
        """The configured targets, each replaced by an override when one is given (> 0)."""
        for what, value in (("rto_target_minutes", rto_minutes), ("rpo_target_hours", rpo_hours)):
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise DrillError(f"{what} must be a number > 0, got {value!r}")
        rto = rto_minutes if rto_minutes is not None else drill.rto_target_minutes
        rpo = rpo_hours if rpo_hours is not None else drill.rpo_target_hours
        return cls(rto_seconds=float(rto) * 60, rpo_seconds=float(rpo) * 3600)


def parse_time(value: Any, what: str = "time") -> datetime | None:
    """A date-time from a form or the configuration (``2025-03-01T12:00:00Z``; no zone = UTC)."""
    when = parse_form_time(value, what, DrillError)
    return when.astimezone(timezone.utc) if when is not None else None


def select_scenarios(requested: Iterable[str] | None) -> list[str]:
    """The requested scenarios in drill order (None or empty: all of them)."""
    if not requested:
        return list(SCENARIOS)
    wanted = list(requested)
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        raise DrillError(f"unknown scenario(s) {', '.join(map(repr, unknown))} (known: {', '.join(SCENARIOS)})")
    return [s for s in SCENARIOS if s in wanted]


def plan_drill(config: Config, *, now: datetime, scenarios: Iterable[str] | None = None,
               compromise_time: Any = None, rto_target_minutes: float | None = None,
               rpo_target_hours: float | None = None) -> dict:
    """What this drill runs and against which targets; form values override the configuration.

    Raises :class:`DrillError` for a request that cannot be right (so the run stops before
    anything is restored).
    """
    now = now.astimezone(timezone.utc)
    chosen = select_scenarios(scenarios)
    targets = Targets.from_config(config.drill, rto_minutes=rto_target_minutes, rpo_hours=rpo_target_hours)
    compromise = parse_time(compromise_time, "compromise_time") or config.drill.compromise_time
    if compromise is not None and compromise > now:
        raise DrillError(f"compromise_time {compromise:%Y-%m-%dT%H:%M:%SZ} is in the future (now "
                         f"{now:%Y-%m-%dT%H:%M:%SZ}): the ransomware scenario restores what was taken before it")
    overrides = {k: v for k, v in (("rto_target_minutes", rto_target_minutes),
                                   ("rpo_target_hours", rpo_target_hours)) if v is not None}
    return {"scenarios": chosen, "complete": chosen == list(SCENARIOS), "started_at": now.isoformat(),
            "rto_target_seconds": targets.rto_seconds, "rpo_target_seconds": targets.rpo_seconds,
            "targets_overridden": overrides,
            "compromise_time": compromise.isoformat() if compromise else None,
            "smoke_check_url": config.drill.smoke_check_url}


# -- measurements -------------------------------------------------------------------------------
def rpo_seconds(disaster_time: datetime, backup_times: Mapping[str, datetime | None]) -> float | None:
    """Disaster time minus the oldest of the restored backups' timestamps; None when a source
    has no restorable backup (or there is no source at all)."""
    if not backup_times or any(t is None for t in backup_times.values()):
        return None
    oldest = min(t for t in backup_times.values() if t is not None)
    return max(0.0, (disaster_time - oldest).total_seconds())


def judge(name: str, *, rto: float | None, rpo: float | None, targets: Targets,
          problems: Sequence[CheckResult] = ()) -> dict:
    """The verdict of one scenario: each target met or not, and every reason it failed."""
    reasons = [f"{p.artifact}: {p.check}: {p.detail}" for p in problems if not p.ok]
    rto_met = rto is not None and rto <= targets.rto_seconds
    rpo_met = rpo is not None and rpo <= targets.rpo_seconds
    if rto is None:
        reasons.append("RTO not reached: no verified restore of every source")
    elif not rto_met:
        reasons.append(f"RTO {human_seconds(rto)} exceeds the target {human_seconds(targets.rto_seconds)}")
    if rpo is None:
        reasons.append("RPO unknown: a source has no restorable backup")
    elif not rpo_met:
        reasons.append(f"RPO {human_seconds(rpo)} exceeds the target {human_seconds(targets.rpo_seconds)}")
    return {"name": name, "ok": not reasons, "status": "pass" if not reasons else "fail",
            "rto_seconds": None if rto is None else round(rto, 3), "rto_target_seconds": targets.rto_seconds,
            "rto_met": rto_met, "rpo_seconds": None if rpo is None else round(rpo, 3),
            "rpo_target_seconds": targets.rpo_seconds, "rpo_met": rpo_met, "reasons": reasons}



# -- which backups ------------------------------------------------------------------------------
def attempt_order(candidates: Sequence[Backup], *, before: datetime | None = None,
                  limit: int = MAX_ATTEMPTS) -> list[Backup]:
    """Newest first (strictly before ``before`` when given), at most ``limit``."""
    pool = [c for c in candidates if before is None or c.timestamp < before]
    return sorted(pool, key=lambda c: (c.timestamp, c.name), reverse=True)[:limit]



# -- restoring the sources ------------------------------------------------------------------------------
def _attempt(run: "_Run", source: Source, cand: Backup, n: int, database: str, *, bucket: Bucket, tmp: Path,
             scratch: Callable[[], ScratchDatabase], s3_only: bool, trust: str) -> dict:
    """Restore one candidate through the pipeline; its record for the report."""
    rec: dict[str, Any] = {"source": source.name, "backup": cand.name, "timestamp": _ts(cand.timestamp),
                           "attempt": n + 1, "role": "newest" if n == 0 else "older"}
    job = RestoreJob(run.config, source, cand, tmp, database=database, prefer="local", s3_only=s3_only,
                     version=trust, require_sidecar=s3_only)
    shared: list[ScratchDatabase] = []  # the scenario's one scratch server, if the kind asks for a database

    def database() -> ScratchDatabase:
        shared.append(scratch())
        return shared[-1]

    target = source.kind_impl.scratch_target(source, database, tmp / f"{source.name}-{n}")
    if not shared:
        target.start()
    try:
        outcome = restore_backup(job, target, bucket, keep_download=run.kept_download is None)
    finally:
        if not shared:
            target.teardown()
    info = outcome.info
    written = info.pop("written", None)
    rec.update({k: v for k, v in info.items() if k != "seconds"})
    if written is not None and written > run.disaster_time:
        rec["after_compromise"] = True  # uploaded after the compromise: trusted only through its checks
    rec["ok"] = outcome.ok
    rec["checks"] = [c.to_dict() for c in outcome.checks]
    fetched = outcome.fetched
    if fetched is not None and fetched.downloaded:
        if outcome.ok and run.kept_download is None and fetched.path.is_file():
            run.kept_download = fetched.path  # the ransomware scenario copies it as its lock probe
        else:
            fetched.remove_download()
    run.problems += [c for c in outcome.checks if not c.ok]
    return rec


def _recover(run: "_Run", sources: Sequence[Source], *, bucket: Bucket, tmp: Path,
             scratch: Callable[[], ScratchDatabase], s3_only: bool, trust: str = "current",
             before: datetime | None = None) -> None:
    """Per source, restore the newest backup (before ``before``); on failure the next older one."""
    sources = [s for s in sources if s.kind_impl.restorable]
    for i, source in enumerate(sources):
        catalog = Catalog(source, bucket)
        order = attempt_order(catalog.remote() if s3_only else catalog.backups(), before=before)
        run.backup_times[source.name] = None
        if not order:
            where = bucket.uri(source.s3_prefix) if s3_only else f"{source.local_dir} or {bucket.uri(source.s3_prefix)}"
            when = f" before {_ts(before)}" if before else ""
            run.problems.append(CheckResult(source.name, "present", False, f"no backup{when} in {where}"))
            continue
        for n, cand in enumerate(order):
            with _leased(run, source, cand):
                rec = _attempt(run, source, cand, n, f"drill_s{i}_a{n}", bucket=bucket, tmp=tmp, scratch=scratch,
                               s3_only=s3_only, trust=trust)
            run.restores.append(rec)
            if rec["ok"]:
                run.backup_times[source.name] = cand.timestamp
                if n:
                    run.notes.append(f"{source.name}: recovered from {cand.name}, {n} newer backup(s) did not "
                                     f"restore; the RPO is that of {cand.name}")
                break


@contextmanager
def _leased(run: "_Run", source: Source, backup: Backup) -> Iterator[None]:
    """Hold ``backup`` from retention while it is restored. A sweep learns leases before it plans,
    so one that started earlier may still delete it: wait for its lock first (a sweep longer than
    :data:`SWEEP_WAIT` is noted; the fetch then says whether the backup is still there)."""
    owner = f"dr-drill-{run.name}-{run.started_at:%Y%m%dT%H%M%S}"
    leases = Leases(run.config.state_dir)
    leases.take(source.name, backup.name, run_id=owner, purpose="disaster-recovery drill", for_=LEASE_FOR)
    try:
        try:
            with SourceLock(run.config.state_dir, source.name, "sweep", owner=owner, timeout=SWEEP_WAIT):
                pass
        except LockBusy as exc:
            run.notes.append(f"{source.name}: {exc}; restoring {backup.name} anyway (it is leased now)")
        yield
    finally:
        leases.release(source.name, backup.name, run_id=owner)


# -- one scenario's bookkeeping -------------------------------------------------------------------------
@dataclass
class _Run:
    """What one scenario found and when: restores, problems, evidence, the RTO clock."""

    name: str
    config: Config
    targets: Targets
    clock: Callable[[], float]
    started_at: datetime
    t0: float
    disaster_time: datetime
    restores: list[dict] = field(default_factory=list)
    problems: list[CheckResult] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)  # scenario-level checks (lock proof, smoke)
    backup_times: dict[str, datetime | None] = field(default_factory=dict)
    rto: float | None = None
    kept_download: Path | None = None  # one verified download, for the ransomware lock probe
    pitr: dict[str, dict] = field(default_factory=dict)  # WAL archives: the RPO with the archive, per source

    def check(self, result: CheckResult) -> CheckResult:
        self.checks.append(result)
        if not result.ok:
            self.problems.append(result)
        return result

    def verified(self) -> None:
        """Stop the RTO clock: every source has a verified restore (and the app answers)."""
        if all(t is not None for t in self.backup_times.values()) and self.backup_times:
            self.rto = self.clock() - self.t0

    def result(self, now: datetime) -> dict:
        rpo = rpo_seconds(self.disaster_time, self.backup_times)
        out = judge(self.name, rto=self.rto, rpo=rpo, targets=self.targets, problems=self.problems)
        out.update(title=TITLES[self.name], proves=PROVES[self.name], started_at=self.started_at.isoformat(),
                   finished_at=now.isoformat(), disaster_time=self.disaster_time.isoformat(),
                   restored={s: (t.isoformat() if t else None) for s, t in self.backup_times.items()},
                   restores=self.restores, checks=[c.to_dict() for c in self.checks],
                   problems=[p.to_dict() for p in self.problems], evidence=self.evidence, notes=self.notes,
                   pitr=self.pitr)
        return out


def _ts(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the scenarios ----------------------------------------------------------------------------------
def run_scenario(name: str, config: Config, *, plan: Mapping[str, Any], bucket: Bucket,
                 scratch_factory: Callable[[], ScratchDatabase], work_dir: str | Path | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = utc_now) -> dict:
    """Run one scenario and return its result (see the module doc). Findings are results; only a
    scratch database that cannot start raises (a retry may fix that)."""
    if name not in SCENARIOS:
        raise DrillError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    targets = Targets(float(plan["rto_target_seconds"]), float(plan["rpo_target_seconds"]))
    started = now()
    disaster = started
    if name == "ransomware":
        compromise = parse_time(plan.get("compromise_time"), "compromise_time")
        disaster = min(compromise, started) if compromise else started
    run = _Run(name, config, targets, clock, started, clock(), disaster)
    servers: list[ScratchDatabase] = []

    def scratch() -> ScratchDatabase:
        if not servers:
            target = scratch_factory()
            try:
                target.start()
            except BaseException:
                target.teardown()
                raise
            servers.append(target)
        return servers[0]

    if work_dir:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="backupkit-drill-", dir=work_dir) as tmp_name:
        tmp = Path(tmp_name)
        try:
            _SCENARIO_FUNCS[name](run, bucket=bucket, tmp=tmp, scratch=scratch)
        finally:
            for target in servers:
                try:
                    target.teardown()
                except Exception as exc:  # noqa: BLE001 - a leaked copy of production data is a finding
                    run.problems.append(CheckResult(name, "teardown", False,
                                                    f"scratch teardown failed, remove it by hand: {exc}"))
    return run.result(now())


def _databases(config: Config) -> list[Source]:
    return [config.source(name) for name in restorable(config, "database")]


def archive_rpo(run: _Run) -> None:
    """The RPO the WAL archives achieve (disaster time minus the end of the verified window), set
    beside the dumps' (the newest restorable dump): a note and ``pitr`` in the result."""
    dumps = rpo_seconds(run.disaster_time, run.backup_times)
    for source in run.config.sources:
        window = source.kind_impl.recovery_window(run.config, source)
        if window is None:
            continue
        archive = max(0.0, (run.disaster_time - window["end"]).total_seconds())
        run.pitr[source.name] = {"rpo_seconds": round(archive, 3), "window_end": window["end"].isoformat(),
                                 "dumps_rpo_seconds": None if dumps is None else round(dumps, 3),
                                 "verified_at": window["checked_at"].isoformat()}
        versus = "no restorable dump" if dumps is None else f"{human_seconds(dumps)} with the dumps alone"
        run.notes.append(f"{source.name}: RPO {human_seconds(archive)} with the WAL archive (its verified window "
                         f"ends {_ts(window['end'])}), against {versus}")


def _database_corruption(run: _Run, *, bucket: Bucket, tmp: Path, scratch) -> None:
    _recover(run, _databases(run.config), bucket=bucket, tmp=tmp, scratch=scratch, s3_only=False)
    run.verified()
    archive_rpo(run)
    run.evidence.append("restored from the backup host's disk where the backup was there, else from S3")


def _datacenter_loss(run: _Run, *, bucket: Bucket, tmp: Path, scratch) -> None:
    sources = run.config.sources
    _recover(run, sources, bucket=bucket, tmp=tmp, scratch=scratch, s3_only=True, trust="current")
    run.verified()
    run.evidence.append(f"read only {bucket.uri()}: no file under "
                        f"{', '.join(sorted({str(s.local_dir) for s in sources}))} was listed or opened")


def _ransomware(run: _Run, *, bucket: Bucket, tmp: Path, scratch) -> None:
    config = run.config
    sources = config.sources
    _recover(run, sources, bucket=bucket, tmp=tmp, scratch=scratch, s3_only=True, trust="original",
             before=run.disaster_time)
    run.verified()
    run.evidence.append(f"compromise time {_ts(run.disaster_time)}: restored the newest backup taken before it, "
                        "each object from its original version")
    late = sorted(r["backup"] for r in run.restores if r.get("ok") and r.get("after_compromise"))
    if late:
        run.notes.append(f"{', '.join(late)}: taken before the compromise but uploaded after it; trusted only "
                         "because SHA-256 (sidecar and S3), restore and row counts all verified")
    lost = (run.started_at - run.disaster_time).total_seconds()
    if lost > 60:
        run.notes.append(f"data written between the compromise and the drill ({human_seconds(lost)}) is lost to "
                         "the attack itself and not counted in the RPO")
    now = run.started_at
    # The backups a ransomware would go for first: the newest of each source must be under retention.
    for source in sources:
        found = [b for b in Catalog(source, bucket).remote() if not b.is_dir]
        if not found:
            continue
        locked, status = lock_status(bucket, found[-1].key, None, now)
        run.check(CheckResult(bucket.uri(found[-1].key), "newest backup locked", locked,
                              status if locked else f"{status}: a thief of the credentials could delete it"))
        run.evidence.append(status)
    for r in run.restores:
        if r.get("ok") and r.get("version_id"):
            run.evidence.append("restored " + lock_status(bucket, s3_key(config, r), r["version_id"], now)[1])
    body = run.kept_download
    probe_key = f"{config.reports.prefix}dr-drill/lock-probes/{now:%Y%m%dT%H%M%SZ}/" + \
        (body.name if body else "probe")
    if body is None:
        run.check(CheckResult(bucket.uri(probe_key), "lock probe", False,
                              "no backup restored and verified: nothing to copy as the lock probe"))
        return
    checks, evidence, notes = object_lock_proof(bucket, config, probe_body=body, probe_key=probe_key, now=now)
    for c in checks:
        run.check(c)
    run.evidence += evidence
    run.notes += notes


def s3_key(config: Config, restore: Mapping[str, Any]) -> str:
    return config.source(restore["source"]).s3_prefix + restore["backup"]


def _failed_deployment(run: _Run, *, bucket: Bucket, tmp: Path, scratch) -> None:
    _recover(run, _databases(run.config), bucket=bucket, tmp=tmp, scratch=scratch, s3_only=False)
    url = run.config.drill.smoke_check_url
    check = smoke_check(url, timeout=run.config.drill.smoke_check_timeout_seconds)
    run.check(check)
    run.evidence.append(f"smoke check: {check.detail}")
    if check.ok:
        run.verified()


_SCENARIO_FUNCS = {"database_corruption": _database_corruption, "datacenter_loss": _datacenter_loss,
                   "ransomware": _ransomware, "failed_deployment": _failed_deployment}


# -- the drill as a whole -----------------------------------------------------------------------------
def missing_result(name: str, plan: Mapping[str, Any], why: str) -> dict:
    """The result of a scenario whose task left none (crashed, upstream failed)."""
    targets = Targets(float(plan["rto_target_seconds"]), float(plan["rpo_target_seconds"]))
    problem = CheckResult(name, "scenario", False, why)
    out = judge(name, rto=None, rpo=None, targets=targets, problems=[problem])
    out.update(title=TITLES[name], proves=PROVES[name], restores=[], checks=[problem.to_dict()],
               problems=[problem.to_dict()], evidence=[], notes=[], restored={})
    return out


def summarize(results: Sequence[Mapping[str, Any]]) -> dict:
    """The drill's verdict: ok only when it ran scenarios and every one passed."""
    failed = [r["name"] for r in results if not r.get("ok")]
    lines = [f"{'SCENARIO':22} {'RESULT':6} {'RTO':>10} {'TARGET':>10} {'RPO':>10} {'TARGET':>10}"]
    for r in results:
        lines.append(f"{r['name']:22} {'PASS' if r.get('ok') else 'FAIL':6} {human_seconds(r.get('rto_seconds')):>10} "
                     f"{human_seconds(r.get('rto_target_seconds')):>10} {human_seconds(r.get('rpo_seconds')):>10} "
                     f"{human_seconds(r.get('rpo_target_seconds')):>10}")
        lines += [f"    {reason}" for reason in r.get("reasons") or []]
    problems = [{"artifact": r["name"], "check": "scenario", "ok": False, "detail": reason}
                for r in results for reason in (r.get("reasons") or [])]
    return {"ok": bool(results) and not failed, "failed": failed, "problems": problems, "table": "\n".join(lines)}


def audit_scenarios(results: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The per-scenario fields the quarterly audit reads (``backupkit.results.record_dr_drill``)."""
    return [{k: r.get(k) for k in ("name", "ok", "rto_seconds", "rto_target_seconds", "rpo_seconds",
                                   "rpo_target_seconds")} for r in results]


def drill_metrics(results: Sequence[Mapping[str, Any]], *, now: float, store: LastSuccessStore,
                  complete: bool) -> MetricSet:
    """Per scenario: status, RTO, RPO and their targets; the last time a complete drill met every
    target (kept across runs in ``store``, so the gauge keeps its value through a failed drill)."""
    success = complete and bool(results) and all(r.get("ok") for r in results)
    last = store.update([SourceStatus(LAST_SUCCESS_KEY, ok=success, problems=0 if success else 1)], now)
    m = MetricSet()
    m.gauge(DRILL_LAST_RUN, help_of(DRILL_LAST_RUN)).set(now)
    if LAST_SUCCESS_KEY in last:
        m.gauge(DRILL_LAST_SUCCESS, help_of(DRILL_LAST_SUCCESS)).set(last[LAST_SUCCESS_KEY])
    status = m.gauge(DRILL_STATUS, help_of(DRILL_STATUS), ["scenario"])
    rto = m.gauge(DRILL_RTO, help_of(DRILL_RTO), ["scenario"])
    rpo = m.gauge(DRILL_RPO, help_of(DRILL_RPO), ["scenario"])
    rto_t = m.gauge(DRILL_RTO_TARGET, help_of(DRILL_RTO_TARGET), ["scenario"])
    rpo_t = m.gauge(DRILL_RPO_TARGET, help_of(DRILL_RPO_TARGET), ["scenario"])
    for r in results:
        s = r["name"]
        status.labels(scenario=s).set(1 if r.get("ok") else 0)
        if r.get("rto_seconds") is not None:
            rto.labels(scenario=s).set(r["rto_seconds"])
        if r.get("rpo_seconds") is not None:
            rpo.labels(scenario=s).set(r["rpo_seconds"])
        rto_t.labels(scenario=s).set(r["rto_target_seconds"])
        rpo_t.labels(scenario=s).set(r["rpo_target_seconds"])
    return m


__all__ = ["SCENARIOS", "TITLES", "PROVES", "Targets", "DrillError", "parse_time", "select_scenarios", "plan_drill",
           "rpo_seconds", "judge", "attempt_order", "run_scenario", "missing_result", "summarize", "audit_scenarios",
           "drill_metrics"]
