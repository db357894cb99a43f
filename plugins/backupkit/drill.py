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

The S3 scenarios restore single objects: a directory-format dump exists in the bucket only
as loose files (the backup scripts upload files; production tars a directory dump first), so
such a source has no candidate there and fails them with "no backup in s3://...", which is
the truth about its recoverability after a site loss.

A backup that fails its checks or its restore is a problem of the scenario, and the next
older one is tried (up to :data:`MAX_ATTEMPTS`), as one would in a real disaster: the RTO
then includes the failed attempt and the RPO is that of the backup that did restore. A
scenario passes only with no problem and both targets met.

Pure Python over injected parts (a boto3 client, a factory of scratch databases, a clock):
no Airflow imports. ``backup_annual_dr_drill`` runs one scenario per task.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from backupkit.catalog import Catalog
from backupkit.checks.s3copy import composite_sha256
from backupkit.clock import now as utc_now
from backupkit.config import Config, Drill, Source
from backupkit.metrics import LastSuccessStore, MetricSet, SourceStatus
from backupkit.reports.render import Doc, bar_chart, human_bytes, human_seconds
from backupkit.restore.database import RestoreFailed, restore_dump
from backupkit.restore.files import ExtractRefused, normalize_name, safe_extract
from backupkit.restore.scratch import ScratchDatabase, ScratchError
from backupkit.restore.selection import parse_form_time
from backupkit.storage.localfs import MANIFEST_SUFFIX, SIDECAR_SUFFIX, read_sidecar
from backupkit.storage.objectstore import Bucket, stored_checksums
from backupkit.restore.service import BackupRef, available_backups
from backupkit.restore.verify_rows import (
    ManifestError,
    RowManifest,
    check_key_tables,
    compare_row_counts,
    exact_row_counts,
    parse_manifest,
    read_manifest,
    run_assertions,
)
from backupkit.model import CheckResult

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
PROBE_MODE = "GOVERNANCE"  # the probe's retention; removable afterwards with s3:BypassGovernanceRetention
PROBE_RETENTION = timedelta(days=1)
ATTACK_BODY = b"backupkit DR drill: this version simulates a ransomware overwrite of a locked backup\n"
LAST_SUCCESS_KEY = "dr_drill"
CHUNK = 1 << 20

# Metric names (the Prometheus rules read the last-success one).
DRILL_LAST_SUCCESS = "backup_dr_drill_last_success_timestamp_seconds"
DRILL_LAST_RUN = "backup_dr_drill_last_run_timestamp_seconds"
DRILL_STATUS = "backup_dr_drill_status"
DRILL_RTO = "backup_dr_drill_rto_seconds"
DRILL_RPO = "backup_dr_drill_rpo_seconds"
DRILL_RTO_TARGET = "backup_dr_drill_rto_target_seconds"
DRILL_RPO_TARGET = "backup_dr_drill_rpo_target_seconds"


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
# A backup the drill may restore: its S3 key and/or local path, and the time in its name.
Candidate = BackupRef


def s3_candidates(config: Config, source: Source, client: Any) -> list[Candidate]:
    """Backups of ``source`` in the bucket only, oldest first (sidecars, manifests and the members
    of directory-format dumps do not match the name pattern and are not candidates)."""
    return [Candidate(source.name, b.name, b.timestamp, key=b.key)
            for b in Catalog(source, Bucket(client, config.bucket)).remote()]


def local_first_candidates(config: Config, source: Source, client: Any) -> list[Candidate]:
    """Backups on disk and in the bucket, merged by name, oldest first (restored from disk when there)."""
    return [Candidate(source.name, r.name, r.timestamp, key=r.key, path=r.path)
            for r in available_backups(config, source, client)]


def attempt_order(candidates: Sequence[Candidate], *, before: datetime | None = None,
                  limit: int = MAX_ATTEMPTS) -> list[Candidate]:
    """Newest first (strictly before ``before`` when given), at most ``limit``."""
    pool = [c for c in candidates if before is None or c.timestamp < before]
    return sorted(pool, key=lambda c: (c.timestamp, c.name), reverse=True)[:limit]


# -- S3 objects ---------------------------------------------------------------------------------
def _error_code(exc: Exception) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", type(exc).__name__))


def object_versions(client: Any, bucket: str, key: str) -> list[dict]:
    """Every version of exactly ``key`` (not of keys it is a prefix of), oldest first."""
    out = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
        out += [v for v in page.get("Versions", ()) if v["Key"] == key]
    out.sort(key=lambda v: (v["LastModified"], not v.get("IsLatest", False)))
    return out


def pick_version(client: Any, bucket: str, key: str, trust: str) -> tuple[str | None, str, datetime | None]:
    """(version id, note, when it was written): ``current`` reads the current object (its version
    is pinned from the answer); ``original`` the first version ever written to the key."""
    if trust == "current":
        return None, "current version", None
    versions = object_versions(client, bucket, key)
    if not versions:
        raise FileNotFoundError(f"s3://{bucket}/{key}: no version found")
    first = versions[0]
    later = len(versions) - 1
    note = f"original version {first['VersionId']} of {first['LastModified']:%Y-%m-%d %H:%M:%S}"
    if later:
        note += f"; {later} later version(s) ignored"
    return first["VersionId"], note, first["LastModified"]


@dataclass(frozen=True)
class Fetched:
    key: str
    version_id: str | None
    path: Path
    size: int
    sha256: str
    seconds: float


def download(client: Any, bucket: str, key: str, version_id: str | None, dest: Path) -> Fetched:
    """Stream one object version to ``dest`` (1 MiB chunks), hashing it on the way."""
    t0 = time.monotonic()
    kwargs = {"VersionId": version_id} if version_id else {}
    resp = client.get_object(Bucket=bucket, Key=key, **kwargs)
    body, h, n = resp["Body"], hashlib.sha256(), 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(dest, "wb") as out:
            for chunk in body.iter_chunks(CHUNK):
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
    finally:
        body.close()
    expected = int(resp.get("ContentLength", n))
    if n != expected:
        raise OSError(f"s3://{bucket}/{key}: download ended after {n} of {expected} bytes")
    return Fetched(key, resp.get("VersionId") or version_id, dest, n, h.hexdigest(), time.monotonic() - t0)


def read_object(client: Any, bucket: str, key: str, version_id: str | None = None,
                limit: int = 1 << 24) -> bytes | None:
    """A small object's bytes (a sidecar, a manifest), or None when it does not exist."""
    kwargs = {"VersionId": version_id} if version_id else {}
    try:
        body = client.get_object(Bucket=bucket, Key=key, **kwargs)["Body"]
    except Exception as exc:  # noqa: BLE001 - only "absent" is an answer, the rest propagates
        if _error_code(exc) in ("NoSuchKey", "404", "NoSuchVersion", "NotFound"):
            return None
        raise
    with body:
        return body.read(limit)


def parse_sidecar(text: bytes | str, origin: str) -> str:
    """The hex SHA-256 of a ``sha256sum``-format sidecar."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    digest = text.strip().split()[0].lower() if text.strip() else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{origin}: not a SHA-256 sidecar (expected 64 hex digits)")
    return digest


def stored_checksum_check(client: Any, bucket: str, fetched: Fetched, artifact: str) -> CheckResult:
    """The downloaded bytes against the SHA-256 S3 stored for that very version at upload (a
    composite of the part checksums for a multipart upload, recomputed from the download)."""
    uri = f"s3://{bucket}/{fetched.key}"
    kwargs = {"VersionId": fetched.version_id} if fetched.version_id else {}
    head = client.head_object(Bucket=bucket, Key=fetched.key, ChecksumMode="ENABLED", **kwargs)
    sha = stored_checksums(head).get("SHA256")
    if sha is None:
        return CheckResult(artifact, "s3_checksum", True,
                           f"{uri}: S3 stores no SHA-256 for this version; compared with the sidecar only")
    if not sha.composite:
        mine = base64.b64encode(bytes.fromhex(fetched.sha256)).decode()
        return CheckResult(artifact, "s3_checksum", mine == sha.value,
                           "SHA-256 of the download matches S3's stored checksum" if mine == sha.value else
                           f"{uri}: SHA-256 of the download {mine} differs from S3's stored {sha.value}")
    parts = sha.parts or int(client.head_object(Bucket=bucket, Key=fetched.key, PartNumber=1, **kwargs)
                             .get("PartsCount") or 1)
    sizes = [int(client.head_object(Bucket=bucket, Key=fetched.key, PartNumber=n, **kwargs)["ContentLength"])
             for n in range(1, parts + 1)]
    composite, _, _ = composite_sha256(fetched.path, sizes)
    ok = composite == sha.value
    return CheckResult(artifact, "s3_checksum", ok,
                       f"composite SHA-256 of {parts} parts matches S3's stored checksum" if ok else
                       f"{uri}: composite SHA-256 of {parts} parts {composite} differs from S3's stored {sha.value}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# -- verification ----------------------------------------------------------------------------------
def verify_restore(target: ScratchDatabase, database: str, source: Source, manifest: RowManifest | None,
                   basis: str, artifact: str) -> tuple[list[CheckResult], dict[str, int]]:
    """Every table's exact row count against the manifest, the key tables non-empty, the assertions.

    No fallback to the live database: in a disaster there is none to compare with.
    """
    actual = exact_row_counts(target, database)
    checks: list[CheckResult] = []
    if manifest is None:
        checks.append(CheckResult(artifact, "manifest", False, f"no manifest beside the backup ({basis})"))
    else:
        checks.append(CheckResult(artifact, "manifest", True, basis))
        checks += compare_row_counts(actual, manifest.tables, 0.0, artifact=artifact)
    checks += check_key_tables(actual, source.restore.key_tables, artifact=artifact)
    if source.restore.assertions:
        checks += run_assertions(target, database, source.restore.assertions, artifact=artifact)
    return checks, actual


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
                   problems=[p.to_dict() for p in self.problems], evidence=self.evidence, notes=self.notes)
        return out


def _ts(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- restoring one backup ------------------------------------------------------------------------------
class _Attempt:
    """One backup's restore attempt: its checks and numbers, as a dict for the report."""

    def __init__(self, cand: Candidate, attempt: int, artifact: str):
        self.cand, self.artifact = cand, artifact
        self.checks: list[CheckResult] = []
        self.info: dict[str, Any] = {"source": cand.source, "backup": cand.name, "timestamp": _ts(cand.timestamp),
                                     "attempt": attempt + 1, "role": "newest" if attempt == 0 else "older"}

    def add(self, check: str, ok: bool, detail: str) -> bool:
        self.checks.append(CheckResult(self.artifact, check, ok, detail))
        return ok

    def done(self) -> dict:
        self.info["ok"] = bool(self.checks) and all(c.ok for c in self.checks)
        self.info["checks"] = [c.to_dict() for c in self.checks]
        return self.info


def _fetch_from_s3(run: _Run, a: _Attempt, client: Any, tmp: Path, trust: str) -> Fetched | None:
    """Download the backup (version per ``trust``) and compare it with its sidecar object and with
    S3's stored checksum; None when any of that failed (the checks say why)."""
    bucket, cand = run.config.bucket, a.cand
    try:
        version, note, written = pick_version(client, bucket, cand.key, trust)
        fetched = download(client, bucket, cand.key, version, tmp / cand.source / cand.name)
    except Exception as exc:  # noqa: BLE001 - a damaged or missing object is a finding
        a.add("download", False, f"s3://{bucket}/{cand.key}: {type(exc).__name__}: {exc}")
        return None
    a.info.update(location=f"s3://{bucket}/{cand.key}", version_id=fetched.version_id, version=note,
                  bytes=fetched.size, download_seconds=round(fetched.seconds, 3), _download=str(fetched.path))
    a.add("download", True, f"{human_bytes(fetched.size)} in {fetched.seconds:.2f}s ({note})")
    if written is not None and written > run.disaster_time:
        a.info["after_compromise"] = True  # uploaded after the compromise: trusted only through its checks
    side_key = cand.key + SIDECAR_SUFFIX
    try:
        side_version = pick_version(client, bucket, side_key, trust)[0] if trust != "current" else None
        raw = read_object(client, bucket, side_key, side_version)
        if raw is None:
            a.add("sidecar", False, f"s3://{bucket}/{side_key} does not exist: the download cannot be checked")
        else:
            want = parse_sidecar(raw, f"s3://{bucket}/{side_key}")
            a.add("sidecar", want == fetched.sha256,
                  f"SHA-256 matches s3://{bucket}/{side_key}" if want == fetched.sha256 else
                  f"SHA-256 of the download {fetched.sha256} differs from the sidecar's {want}")
    except Exception as exc:  # noqa: BLE001
        a.add("sidecar", False, f"s3://{bucket}/{side_key}: {type(exc).__name__}: {exc}")
    try:
        a.checks.append(stored_checksum_check(client, bucket, fetched, a.artifact))
    except Exception as exc:  # noqa: BLE001
        a.add("s3_checksum", False, f"s3://{bucket}/{cand.key}: {type(exc).__name__}: {exc}")
    return fetched if all(c.ok for c in a.checks) else None


def _s3_manifest(run: _Run, a: _Attempt, client: Any, trust: str) -> tuple[RowManifest | None, str]:
    bucket, key = run.config.bucket, a.cand.key + MANIFEST_SUFFIX
    version = pick_version(client, bucket, key, trust)[0] if trust != "current" else None
    raw = read_object(client, bucket, key, version)
    where = f"manifest s3://{bucket}/{key}" + (f" (version {version})" if version else "")
    return (parse_manifest(raw, f"s3://{bucket}/{key}") if raw is not None else None), where


def _restore_database(run: _Run, source: Source, a: _Attempt, scratch: ScratchDatabase, database: str, *,
                      client: Any, tmp: Path, s3_only: bool, trust: str) -> None:
    cand = a.cand
    manifest, basis = None, ""
    if cand.path is not None and not s3_only:
        dump: Any = cand.path
        a.info["location"] = str(cand.path)
        try:
            want = read_sidecar(cand.path) if cand.path.is_file() else None
        except ValueError as exc:
            a.add("sidecar", False, str(exc))
            return
        if want is None:
            a.add("sidecar", True, "no sidecar beside the backup: verified by restore and row counts only")
        else:
            got = sha256_file(cand.path)
            if not a.add("sidecar", got == want, "SHA-256 matches the sidecar" if got == want else
                         f"SHA-256 {got} differs from the sidecar's {want}"):
                return
        try:
            manifest = read_manifest(cand.path)
            basis = f"manifest {cand.path}{MANIFEST_SUFFIX}"
        except ManifestError as exc:
            a.add("manifest", False, str(exc))
            return
        if manifest is None and cand.key and client is not None:
            try:
                manifest, basis = _s3_manifest(run, a, client, "current")
            except Exception as exc:  # noqa: BLE001 - an unreadable manifest is a finding
                a.add("manifest", False, f"{type(exc).__name__}: {exc}")
                return
    else:
        fetched = _fetch_from_s3(run, a, client, tmp, trust)
        if fetched is None:
            return
        dump = fetched.path
        try:
            manifest, basis = _s3_manifest(run, a, client, trust)
        except Exception as exc:  # noqa: BLE001 - an unreadable manifest is a finding
            a.add("manifest", False, f"{type(exc).__name__}: {exc}")
            return
    try:
        rr = restore_dump(dump, scratch, fmt=source.dump_format or "custom", jobs=source.restore.jobs,
                          database=database, label=a.info.get("location") or cand.name, tmp_dir=tmp)
    except RestoreFailed as exc:
        a.add("restore", False, str(exc)[:4000])
        return
    a.add("restore", True, f"{rr.fmt}, {rr.jobs} job(s), {rr.restore_seconds:.2f}s into a scratch database")
    a.info["restore_seconds"] = round(rr.restore_seconds, 3)
    t1 = time.monotonic()
    try:
        checks, actual = verify_restore(scratch, database, source, manifest, basis or "no manifest found",
                                        a.artifact)
    except ScratchError as exc:  # the restored database cannot even be counted: a finding, not a crash
        a.add("rows", False, f"row counts could not be read from the restore: {exc}")
        return
    a.checks += checks
    ok_tables = {c.check[len("rows "):] for c in checks if c.ok and c.check.startswith("rows ")}
    a.info.update(verify_seconds=round(time.monotonic() - t1, 3), tables=len(actual),
                  verified_rows=sum(n for t, n in actual.items() if t in ok_tables), compared_with=basis)


def _restore_files(run: _Run, source: Source, a: _Attempt, *, client: Any, tmp: Path, trust: str) -> None:
    fetched = _fetch_from_s3(run, a, client, tmp, trust)
    if fetched is None:
        return
    target = tmp / f"{source.name}-extract-{a.info['attempt']}"
    t0 = time.monotonic()
    try:
        try:
            er = safe_extract(fetched.path, target, max_total_bytes=run.config.restore.max_extract_bytes,
                              max_files=run.config.restore.max_extract_files, existing="fail")
        except (ExtractRefused, ValueError) as exc:
            a.add("extract", False, str(exc).replace(str(fetched.path), a.info["location"])[:4000])
            return
        a.checks += er.checks(a.artifact)
        for p in source.paths:
            rel = normalize_name(p)
            present = (target / rel).exists()
            a.add(f"path {rel}", present, "restored" if present else "missing from the archive")
        if not er.written:
            a.add("files", False, "the archive holds no files")
        a.info.update(restore_seconds=round(time.monotonic() - t0, 3), files=len(er.written),
                      bytes_written=er.bytes_written)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _keep_one_download(run: _Run, rec: dict) -> None:
    """Delete a download once restored, except the first verified one (the ransomware scenario
    copies it as its lock probe): a scenario never holds more than one backup on local disk."""
    path = rec.get("_download")
    if not path:
        return
    if rec["ok"] and run.kept_download is None:
        run.kept_download = Path(path)
    else:
        Path(path).unlink(missing_ok=True)
        rec.pop("_download")


def _recover(run: _Run, sources: Sequence[Source], *, client: Any, tmp: Path, scratch: Callable[[], ScratchDatabase],
             s3_only: bool, trust: str = "current", before: datetime | None = None) -> None:
    """Per source, restore the newest backup (before ``before``); on failure the next older one."""
    for i, source in enumerate(sources):
        cands = s3_candidates(run.config, source, client) if s3_only else \
            local_first_candidates(run.config, source, client)
        order = attempt_order(cands, before=before)
        run.backup_times[source.name] = None
        if not order:
            where = f"s3://{run.config.bucket}/{source.s3_prefix}" if s3_only else \
                f"{source.local_dir} or s3://{run.config.bucket}/{source.s3_prefix}"
            when = f" before {_ts(before)}" if before else ""
            run.problems.append(CheckResult(source.name, "present", False, f"no backup{when} in {where}"))
            continue
        for n, cand in enumerate(order):
            a = _Attempt(cand, n, f"{source.name}/{cand.name}")
            if source.is_database:
                _restore_database(run, source, a, scratch(), f"drill_s{i}_a{n}", client=client, tmp=tmp,
                                  s3_only=s3_only, trust=trust)
            else:
                _restore_files(run, source, a, client=client, tmp=tmp, trust=trust)
            rec = a.done()
            run.restores.append(rec)
            _keep_one_download(run, rec)
            if rec["ok"]:
                run.backup_times[source.name] = cand.timestamp
                if n:
                    run.notes.append(f"{source.name}: recovered from {cand.name}, {n} newer backup(s) did not "
                                     f"restore; the RPO is that of {cand.name}")
                break
            run.problems += [c for c in a.checks if not c.ok]


# -- ransomware: object lock ------------------------------------------------------------------------
def lock_status(client: Any, bucket: str, key: str, version_id: str | None, now: datetime) -> tuple[bool, str]:
    """(locked now, description) of one object version from HeadObject."""
    kwargs = {"VersionId": version_id} if version_id else {}
    head = client.head_object(Bucket=bucket, Key=key, **kwargs)
    mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
    hold = head.get("ObjectLockLegalHoldStatus") == "ON"
    vid = head.get("VersionId") or version_id
    if until is not None and until.tzinfo is None:
        until = until.replace(tzinfo=timezone.utc)
    locked = hold or (mode is not None and until is not None and until > now)
    what = f"s3://{bucket}/{key} version {vid}: "
    if mode and until:
        what += f"{mode} retention until {_ts(until)}" + ("" if until > now else " (expired)")
    else:
        what += "no retention"
    if hold:
        what += ", legal hold"
    return locked, what


def object_lock_proof(client: Any, config: Config, *, probe_body: Path | None, probe_key: str,
                      now: datetime) -> tuple[list[CheckResult], list[str], list[str]]:
    """Show on a probe copy that a locked version refuses deletion and survives an overwrite.

    Returns (checks, evidence lines, notes). Only the probe key is written to or deleted
    from; the drill never attacks a production object.
    """
    bucket, uri = config.bucket, f"s3://{config.bucket}/{probe_key}"
    checks: list[CheckResult] = []
    evidence: list[str] = []
    notes: list[str] = []

    def add(check: str, ok: bool, detail: str) -> bool:
        checks.append(CheckResult(uri, check, ok, detail))
        evidence.append(f"{'OK' if ok else 'FAILED'} {check}: {detail}")
        return ok

    try:
        lock = client.get_object_lock_configuration(Bucket=bucket).get("ObjectLockConfiguration") or {}
    except Exception as exc:  # noqa: BLE001
        lock = {}
        add("bucket object lock", False, f"s3://{bucket} has no object lock configuration ({_error_code(exc)})")
        return checks, evidence, notes
    default = (lock.get("Rule") or {}).get("DefaultRetention") or {}
    span = f"{default.get('Days') or 0} days" if default.get("Days") else f"{default.get('Years') or 0} years"
    add("bucket object lock", lock.get("ObjectLockEnabled") == "Enabled",
        f"s3://{bucket}: object lock {lock.get('ObjectLockEnabled', 'not enabled')}" +
        (f", default retention {default.get('Mode')} {span}" if default else ", no default retention"))
    if lock.get("ObjectLockEnabled") != "Enabled":
        return checks, evidence, notes

    sse = {"ServerSideEncryption": config.reports.sse_algorithm} if config.reports.sse_algorithm else {}
    if probe_body is None:
        raise ValueError("no verified backup to copy as the lock probe")
    expected = sha256_file(probe_body)
    client.upload_file(str(probe_body), bucket, probe_key, ExtraArgs={"ChecksumAlgorithm": "SHA256", **sse})
    head = client.head_object(Bucket=bucket, Key=probe_key)
    version = head["VersionId"]
    # A bucket default may already have locked the probe: keep its mode (COMPLIANCE cannot become
    # GOVERNANCE) and never shorten its retention (S3 refuses that without a bypass).
    mode = head.get("ObjectLockMode") or PROBE_MODE
    until = now + PROBE_RETENTION
    current = head.get("ObjectLockRetainUntilDate")
    if current is not None:
        current = current if current.tzinfo else current.replace(tzinfo=timezone.utc)
        until = max(until, current)
    try:
        client.put_object_retention(Bucket=bucket, Key=probe_key, VersionId=version,
                                    Retention={"Mode": mode, "RetainUntilDate": until})
    except Exception as exc:  # noqa: BLE001
        add("retention set", False, f"PutObjectRetention on version {version} refused: {_error_code(exc)}: {exc}")
        notes += _remove_probe(client, bucket, probe_key, [version], uri)
        return checks, evidence, notes
    locked, status = lock_status(client, bucket, probe_key, version, now)
    add("retention set", locked, f"probe copy of a verified backup ({human_bytes(probe_body.stat().st_size)}): "
        f"{status}")
    if not locked:
        notes += _remove_probe(client, bucket, probe_key, [version], uri)
        return checks, evidence, notes

    try:
        client.delete_object(Bucket=bucket, Key=probe_key, VersionId=version)
    except Exception as exc:  # noqa: BLE001
        code = _error_code(exc)
        add("delete refused", code == "AccessDenied",
            f"DeleteObject of version {version} answered {code}" +
            ("" if code == "AccessDenied" else " (expected AccessDenied)"))
    else:
        add("delete refused", False, f"DeleteObject of locked version {version} SUCCEEDED: object lock did not "
                                     "protect it")
        return checks, evidence, notes

    attack_version = None
    try:
        resp = client.put_object(Bucket=bucket, Key=probe_key, Body=ATTACK_BODY, ChecksumAlgorithm="SHA256", **sse)
    except Exception as exc:  # noqa: BLE001 - a policy refusing overwrites protects even more
        add("overwrite adds a version", True, f"PutObject over the key was refused ({_error_code(exc)})")
    else:
        attack_version = resp.get("VersionId")
        add("overwrite adds a version", bool(attack_version) and attack_version != version,
            f"PutObject over the key created version {attack_version}; the locked version {version} is no "
            "longer current but still exists" if attack_version != version else
            f"PutObject over the key REPLACED version {version} (is versioning suspended?)")
    try:
        got = download(client, bucket, probe_key, version, probe_body.with_name(probe_body.name + ".probe-readback"))
        same = got.sha256 == expected
        add("locked version unchanged", same,
            f"version {version} read back: SHA-256 {got.sha256[:16]}... "
            + ("equals the backup's" if same else f"differs from the backup's {expected[:16]}..."))
        got.path.unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001
        add("locked version unchanged", False, f"version {version} cannot be read: {_error_code(exc)}: {exc}")

    notes += _remove_probe(client, bucket, probe_key, [attack_version, version], uri)
    return checks, evidence, notes


def _remove_probe(client: Any, bucket: str, key: str, versions: Sequence[str | None], uri: str) -> list[str]:
    """Delete the probe's versions; a locked one needs BypassGovernanceRetention -- which these
    credentials may hold, and so would a thief of them (said in the notes)."""
    removed, kept = [], []
    for vid in versions:
        if not vid:
            continue
        try:
            client.delete_object(Bucket=bucket, Key=key, VersionId=vid, BypassGovernanceRetention=True)
            removed.append(vid)
        except Exception as exc:  # noqa: BLE001
            kept.append(f"{vid} ({_error_code(exc)})")
    notes = []
    if removed:
        notes.append(f"probe versions {', '.join(removed)} were removed with BypassGovernanceRetention: these "
                     "credentials hold s3:BypassGovernanceRetention, so a thief of them could lift GOVERNANCE "
                     "retention too; COMPLIANCE mode (or denying that permission) closes this")
    if kept:
        notes.append(f"probe versions kept until their retention ends: {', '.join(kept)} at {uri}")
    return notes


# -- the smoke check -------------------------------------------------------------------------------
def smoke_check(url: str | None, *, timeout: float, artifact: str = "application") -> CheckResult:
    """GET ``url`` until it answers 2xx (or ``timeout``); without a URL, a skipped (passing) check."""
    if not url:
        return CheckResult(artifact, "smoke check", True, "skipped: no smoke check configured")
    from backupkit.restore.service import http_health_check

    try:
        http_health_check(url, timeout=timeout, interval=min(2.0, max(timeout / 5, 0.1)),
                          request_timeout=min(10.0, max(timeout, 0.5)))()
    except RuntimeError as exc:
        return CheckResult(artifact, "smoke check", False, str(exc))
    return CheckResult(artifact, "smoke check", True, f"GET {url} answered 2xx")


# -- the scenarios ----------------------------------------------------------------------------------
def run_scenario(name: str, config: Config, *, plan: Mapping[str, Any], s3_client: Any,
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
            _SCENARIO_FUNCS[name](run, client=s3_client, tmp=tmp, scratch=scratch)
        finally:
            for target in servers:
                try:
                    target.teardown()
                except Exception as exc:  # noqa: BLE001 - a leaked copy of production data is a finding
                    run.problems.append(CheckResult(name, "teardown", False,
                                                    f"scratch teardown failed, remove it by hand: {exc}"))
    for r in run.restores:
        r.pop("_download", None)
    return run.result(now())


def _database_corruption(run: _Run, *, client: Any, tmp: Path, scratch) -> None:
    _recover(run, run.config.databases, client=client, tmp=tmp, scratch=scratch, s3_only=False)
    run.verified()
    run.evidence.append("restored from the backup host's disk where the backup was there, else from S3")


def _datacenter_loss(run: _Run, *, client: Any, tmp: Path, scratch) -> None:
    sources = (*run.config.databases, *run.config.file_sets)
    _recover(run, sources, client=client, tmp=tmp, scratch=scratch, s3_only=True, trust="current")
    run.verified()
    run.evidence.append(f"read only s3://{run.config.bucket}: no file under "
                        f"{', '.join(sorted({str(s.local_dir) for s in sources}))} was listed or opened")


def _ransomware(run: _Run, *, client: Any, tmp: Path, scratch) -> None:
    config = run.config
    sources = (*config.databases, *config.file_sets)
    _recover(run, sources, client=client, tmp=tmp, scratch=scratch, s3_only=True, trust="original",
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
        found = s3_candidates(config, source, client)
        if not found:
            continue
        locked, status = lock_status(client, config.bucket, found[-1].key, None, now)
        run.check(CheckResult(f"s3://{config.bucket}/{found[-1].key}", "newest backup locked", locked,
                              status if locked else f"{status}: a thief of the credentials could delete it"))
        run.evidence.append(status)
    for r in run.restores:
        if r.get("ok") and r.get("version_id"):
            run.evidence.append("restored " + lock_status(client, config.bucket, s3_key(config, r), r["version_id"],
                                                          now)[1])
    body = run.kept_download
    probe_key = f"{config.reports.prefix}dr-drill/lock-probes/{now:%Y%m%dT%H%M%SZ}/" + \
        (body.name if body else "probe")
    if body is None:
        run.check(CheckResult(f"s3://{config.bucket}/{probe_key}", "lock probe", False,
                              "no backup restored and verified: nothing to copy as the lock probe"))
        return
    checks, evidence, notes = object_lock_proof(client, config, probe_body=body, probe_key=probe_key, now=now)
    for c in checks:
        run.check(c)
    run.evidence += evidence
    run.notes += notes


def s3_key(config: Config, restore: Mapping[str, Any]) -> str:
    return config.source(restore["source"]).s3_prefix + restore["backup"]


def _failed_deployment(run: _Run, *, client: Any, tmp: Path, scratch) -> None:
    _recover(run, run.config.databases, client=client, tmp=tmp, scratch=scratch, s3_only=False)
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
    """The per-scenario fields the quarterly audit reads (``backupkit.reports.audit.record_dr_drill``)."""
    return [{k: r.get(k) for k in ("name", "ok", "rto_seconds", "rto_target_seconds", "rpo_seconds",
                                   "rpo_target_seconds")} for r in results]


def drill_metrics(results: Sequence[Mapping[str, Any]], *, now: float, store: LastSuccessStore,
                  complete: bool) -> MetricSet:
    """Per scenario: status, RTO, RPO and their targets; the last time a complete drill met every
    target (kept across runs in ``store``, so the gauge keeps its value through a failed drill)."""
    success = complete and bool(results) and all(r.get("ok") for r in results)
    last = store.update([SourceStatus(LAST_SUCCESS_KEY, ok=success, problems=0 if success else 1)], now)
    m = MetricSet()
    m.gauge(DRILL_LAST_RUN, "Unix time of the last disaster-recovery drill run (whatever its outcome)").set(now)
    if LAST_SUCCESS_KEY in last:
        m.gauge(DRILL_LAST_SUCCESS, "Unix time of the last complete disaster-recovery drill in which every "
                                    "scenario met its RTO and RPO targets").set(last[LAST_SUCCESS_KEY])
    status = m.gauge(DRILL_STATUS, "1 if the scenario passed and met its targets in the last drill, else 0",
                     ["scenario"])
    rto = m.gauge(DRILL_RTO, "Seconds from the scenario's start to a verified restore in the last drill",
                  ["scenario"])
    rpo = m.gauge(DRILL_RPO, "Disaster time minus the timestamp of the newest restorable backup, seconds",
                  ["scenario"])
    rto_t = m.gauge(DRILL_RTO_TARGET, "The RTO target the scenario was judged against, seconds", ["scenario"])
    rpo_t = m.gauge(DRILL_RPO_TARGET, "The RPO target the scenario was judged against, seconds", ["scenario"])
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


EVALUATION_CHECKLIST = (
    "[ ] Assess the results against RTO/RPO (table above; a FAIL names the reason)",
    "[ ] Identify gaps and improvements (every problem and note below is a candidate)",
    "[ ] Update procedures and documentation (runbook, restore DAG docs, this configuration's targets)",
    "[ ] Report findings to stakeholders (this report's location is in the run's log and XCom)",
)
PLANNING_CHECKLIST = (
    "[ ] Define test scope and objectives (scenarios and targets: the `drill:` configuration block)",
    "[ ] Prepare test environment (scratch databases need the restore back end; smoke check URL set)",
    "[ ] Notify stakeholders and prepare communications (the drill date is fixed in the configuration)",
    "[ ] Assemble recovery team (the automated run needs nobody; the evaluation does)",
)


def drill_doc(results: Sequence[Mapping[str, Any]], plan: Mapping[str, Any], *, report_date: date,
              location: str) -> Doc:
    """The drill report: verdict, RTO/RPO per scenario against targets, evidence, problems, checklist."""
    summary = summarize(results)
    doc = Doc(f"Disaster-recovery drill {report_date.isoformat()}")
    verdict = "PASSED: every scenario met its targets" if summary["ok"] else \
        f"FAILED: {', '.join(summary['failed']) or 'no scenario ran'}"
    doc.para(f"Verdict: {verdict}.")
    doc.para(f"Report: {location}. Drill started {plan.get('started_at', '-')}; scenarios run: "
             f"{', '.join(plan.get('scenarios') or [])}" +
             ("" if plan.get("complete") else " (a partial drill: not recorded as the annual drill)") + ".")
    if plan.get("targets_overridden"):
        doc.para(f"Targets overridden for this run: {plan['targets_overridden']}.")
    doc.heading("Results")
    doc.table(["Scenario", "Result", "RTO", "RTO target", "RPO", "RPO target", "Restored backups"],
              [[r.get("title", r["name"]), "PASS" if r.get("ok") else "FAIL", human_seconds(r.get("rto_seconds")),
                human_seconds(r.get("rto_target_seconds")), human_seconds(r.get("rpo_seconds")),
                human_seconds(r.get("rpo_target_seconds")),
                ", ".join(f"{x['backup']}" for x in r.get("restores") or [] if x.get("ok")) or "-"]
               for r in results])
    if results:
        doc.chart("rto", bar_chart("RTO per scenario (seconds to a verified restore)",
                                   [(r["name"], float(r.get("rto_seconds") or 0)) for r in results],
                                   fmt=human_seconds), "RTO per scenario")
        doc.chart("rpo", bar_chart("RPO per scenario (age of the newest restorable backup)",
                                   [(r["name"], float(r.get("rpo_seconds") or 0)) for r in results],
                                   fmt=human_seconds), "RPO per scenario")
    doc.heading("How to read RTO and RPO")
    doc.para("RTO is the time from a scenario's start until every source had a verified restore (row counts "
             "equal to the manifest, archive checksums, configured paths; for a failed deployment also the smoke "
             "check). RPO is the disaster time minus the timestamp of the newest backup that restored: the data "
             "a real disaster at that moment would lose. For ransomware the disaster time is the compromise time. "
             "A scenario passes with no problem and both values at or below their targets.")
    for r in results:
        doc.heading(f"{r.get('title', r['name'])}: {'PASS' if r.get('ok') else 'FAIL'}")
        doc.para(f"Proves: {r.get('proves', '')}")
        doc.para(f"RTO {human_seconds(r.get('rto_seconds'))} (target {human_seconds(r.get('rto_target_seconds'))}), "
                 f"RPO {human_seconds(r.get('rpo_seconds'))} (target {human_seconds(r.get('rpo_target_seconds'))}); "
                 f"disaster time {r.get('disaster_time', '-')}.")
        if r.get("restores"):
            doc.table(["Source", "Backup", "Attempt", "From", "Result", "Restore s", "Verified rows / files"],
                      [[x["source"], x["backup"], x.get("attempt"), x.get("location", "-") +
                        (f" ({x['version']})" if x.get("version") else ""), "ok" if x.get("ok") else "FAIL",
                        x.get("restore_seconds"), x.get("verified_rows", x.get("files"))]
                       for x in r["restores"]])
        doc.bullets(r.get("evidence") or [])
        if r.get("reasons"):
            doc.para("Problems:")
            doc.bullets(r["reasons"])
        if r.get("notes"):
            doc.para("Notes:")
            doc.bullets(r["notes"])
    doc.heading("Evaluation phase (runbook)")
    doc.bullets(EVALUATION_CHECKLIST)
    doc.heading("Before the next drill: planning phase (runbook, 2 weeks prior)")
    doc.bullets(PLANNING_CHECKLIST)
    return doc


__all__ = ["SCENARIOS", "TITLES", "PROVES", "Targets", "DrillError", "parse_time", "select_scenarios", "plan_drill",
           "rpo_seconds", "judge", "Candidate", "s3_candidates", "local_first_candidates", "attempt_order",
           "object_versions", "pick_version", "download", "stored_checksum_check", "verify_restore", "lock_status",
           "object_lock_proof", "smoke_check", "run_scenario", "missing_result", "summarize", "audit_scenarios",
           "drill_metrics", "drill_doc", "DRILL_LAST_SUCCESS", "DRILL_STATUS", "DRILL_RTO", "DRILL_RPO",
           "DRILL_LAST_RUN", "DRILL_RTO_TARGET", "DRILL_RPO_TARGET", "EVALUATION_CHECKLIST", "PLANNING_CHECKLIST"]
