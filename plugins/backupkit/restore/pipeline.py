"""THE restore-and-verify: one backup, fetched and checked, restored, verified -- used by every restore.

The monthly restore test and ``verify_only`` (:func:`restore_test`), the replace mode's new
database beside the live one (:func:`restore_into_new_database`) and every scenario of the
DR drill (:mod:`backupkit.jobs.drill`) all run :func:`restore_backup`, so they check a backup
the same way:

1. **fetch** (:mod:`backupkit.restore.fetch`): the chosen copy on local disk, its SHA-256
   against the sidecar and (S3) against the checksum S3 stored at upload;
2. **restore and verify** by the source's kind (:class:`backupkit.kinds.base.SourceKind`):
   a database is restored and its row counts compared with the manifest; a file set is
   extracted safely and its checksums and configured paths checked.

A damaged backup or a failed check is a result (``ok`` false, each problem naming the backup);
only a target that cannot be provisioned, or S3 that cannot be reached, raises (a retry may
fix those). Pure Python over injected parts: no Airflow imports.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from backupkit import clock
from backupkit.config import Config, Source
from backupkit.model import Backup, CheckResult
from backupkit.restore.database import RestoreFailed
from backupkit.restore.fetch import Fetched, FetchError, fetch
from backupkit.restore.scratch import RESTORED_DB, ScratchDatabase, ServerTarget, check_identifier
from backupkit.restore.selection import SelectionError, find_backup
from backupkit.storage.objectstore import Bucket


@dataclass(frozen=True)
class RestoreJob:
    """One backup to restore and how: which copy, which version, into which database.

    :param live_counts: row counts of the live source, the reference when no manifest exists
    :param require_sidecar: a backup without a sidecar fails (the drill's S3-only scenarios)
    """

    config: Config
    source: Source
    backup: Backup
    work_dir: Path
    database: str = RESTORED_DB
    jobs: int | None = None
    live_counts: Callable[[], Mapping[str, int]] | None = None
    no_privileges: bool = True
    prefer: str = "s3"
    s3_only: bool = False
    version: str = "current"
    require_sidecar: bool = False

    @property
    def artifact(self) -> str:
        return self.backup.id


@dataclass
class Outcome:
    """Every check of one restore and the numbers measured; ``fetched`` keeps a download for the caller."""

    checks: list[CheckResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    fetched: Fetched | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def restore_backup(job: RestoreJob, target: Any, bucket: Bucket | None, *, keep_download: bool = False) -> Outcome:
    """Fetch, check, restore into ``target`` (started by the caller) and verify one backup."""
    t0 = time.monotonic()
    try:
        fetched = fetch(job.backup, bucket=bucket, work_dir=job.work_dir, prefer=job.prefer, s3_only=job.s3_only,
                        version=job.version, require_sidecar=job.require_sidecar, artifact=job.artifact)
    except FetchError as exc:
        return Outcome([CheckResult(job.artifact, "present", False, str(exc))], {"location": None})
    out = Outcome(list(fetched.checks), dict(fetched.info), fetched)
    try:
        if not fetched.ok:
            return out
        done = job.source.kind_impl.restore(job, fetched, target)
        out.checks += done.checks
        out.info.update(done.info)
        if "restore_seconds" in done.info:
            out.info["duration_seconds"] = round(fetched.info.get("download_seconds", 0.0)
                                                 + done.info["restore_seconds"], 3)
        out.info["seconds"] = round(time.monotonic() - t0, 3)
        return out
    finally:
        if not keep_download:
            fetched.remove_download()


# -- result dicts (XCom, the audit log, the summary) ----------------------------------------------------
def check_dicts(checks: Iterable[CheckResult]) -> list[dict]:
    return [c.to_dict() for c in checks]


def problem_dicts(checks: Iterable[CheckResult]) -> list[dict]:
    return [c.to_dict() for c in checks if not c.ok]


def add_checks(result: dict, checks: Sequence[CheckResult]) -> dict:
    """``result`` with ``checks`` appended and ``ok``/``problems`` recomputed."""
    result["checks"] = list(result["checks"]) + check_dicts(checks)
    result["problems"] = list(result["problems"]) + problem_dicts(checks)
    result["ok"] = not result["problems"]
    return result


# -- restore tests: a throwaway target, always torn down ------------------------------------------------
def restore_test(config: Config, source_name: str, backup: str, *,
                 new_database: Callable[[], ScratchDatabase] | None, bucket: Bucket | None = None,
                 live_counts: Callable[[], Mapping[str, int]] | None = None, role: str = "requested",
                 prefer: str = "s3", work_dir: str | Path | None = None, jobs: int | None = None) -> dict:
    """Restore one backup into a throwaway target, verify it, always tear the target down.

    The target is the source kind's (:meth:`~backupkit.kinds.base.SourceKind.scratch_target`):
    a scratch database from ``new_database``, or a scratch directory. Returns ``{source, kind,
    backup, role, location, backend, ok, restore_seconds, duration_seconds, verified_rows,
    tables, checks, problems, ...}``.
    """
    source = config.source(source_name)
    started = clock.now()
    base = {"source": source.name, "kind": source.kind, "backup": backup, "role": role, "backend": "?",
            "started_at": started.isoformat(), "restore_seconds": None, "duration_seconds": None,
            "verified_rows": 0, "tables": 0, "location": None}
    artifact = f"{source.name}/{backup}" if backup else source.name
    if not backup:
        return _finish(base, [CheckResult(artifact, "present", False,
                                          "no backup of this source on disk or in the bucket")])
    try:
        found = find_backup(config, source, backup, bucket)
    except SelectionError as exc:
        return _finish(base, [CheckResult(artifact, "present", False, str(exc))])
    work = Path(work_dir) if work_dir else Path(tempfile.gettempdir())
    target = source.kind_impl.scratch_target(source, new_database, work)
    base["backend"] = getattr(target, "backend", "?")
    t0 = time.monotonic()
    try:
        target.start()
    except BaseException:
        _teardown_quietly(target)
        raise
    base["provision_seconds"] = round(time.monotonic() - t0, 3)
    checks: list[CheckResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="backupkit-restore-", dir=work) as tmp:
            job = RestoreJob(config, source, found, Path(tmp), jobs=jobs, live_counts=live_counts, prefer=prefer)
            outcome = restore_backup(job, target, bucket)
        checks += outcome.checks
        base.update({k: v for k, v in outcome.info.items() if k not in ("written", "seconds")})
    finally:
        problem = _teardown_quietly(target)
        if problem:
            checks.append(CheckResult(artifact, "teardown", False, problem))
    return _finish(base, checks)


def _finish(base: dict, checks: list[CheckResult]) -> dict:
    out = {**base, "checks": check_dicts(checks), "problems": problem_dicts(checks)}
    out["ok"] = not out["problems"]
    out["finished_at"] = clock.now().isoformat()
    return out


def _teardown_quietly(target: Any) -> str | None:
    """Tear down; a failure is returned (it becomes a problem: a copy of production data leaked)."""
    try:
        target.teardown()
    except Exception as exc:  # noqa: BLE001
        return f"scratch teardown failed, the orphan sweep must remove it: {type(exc).__name__}: {exc}"
    return None


# -- replace mode: a new database beside the live one ---------------------------------------------------
def new_database_name(source: Source, now: datetime) -> str:
    """``<database>_restored_<UTC yyyymmddhhmmss>`` (at most 63 characters)."""
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S")
    base = (source.database or source.name).replace("-", "_")
    return check_identifier(f"{base[:63 - len(stamp) - 10]}_restored_{stamp}")


def restore_into_new_database(config: Config, source_name: str, backup: str, *, server: ServerTarget,
                              new_database: str, bucket: Bucket | None = None,
                              live_counts: Callable[[], Mapping[str, int]] | None = None, prefer: str = "s3",
                              work_dir: str | Path | None = None) -> dict:
    """Restore ``backup`` into a NEW database on the application's server and verify it.

    The application keeps using its database meanwhile. Refuses a name that exists; on a
    failed restore or verification drops only the database it just created (never used
    by anything), then raises :class:`RestoreFailed` naming the backup and the problems.
    """
    source = config.source(source_name)
    if source.kind_impl.restores_into != "database":
        raise SelectionError(f"{source_name!r} is a {source.kind_impl.label}, not a database")
    check_identifier(new_database)
    if new_database == source.database:
        raise ValueError("refusing to restore over the application's own database")
    found = find_backup(config, source, backup, bucket)
    artifact = found.id
    if server.database_exists(new_database):
        raise RestoreFailed(artifact, f"database {new_database!r} already exists on {server!r}; "
                                      "choose another name (nothing was changed)")
    work = Path(work_dir) if work_dir else Path(tempfile.gettempdir())
    try:
        with tempfile.TemporaryDirectory(prefix="backupkit-restore-", dir=work) as tmp:
            job = RestoreJob(config, source, found, Path(tmp), database=new_database, live_counts=live_counts,
                             no_privileges=False, prefer=prefer)
            outcome = restore_backup(job, server, bucket)
    except BaseException:
        server.drop_created_database(new_database)
        raise
    problems = problem_dicts(outcome.checks)
    label = outcome.info.get("location") or artifact
    if problems:
        server.drop_created_database(new_database)
        shown = "; ".join(f"{p['check']}: {p['detail']}" for p in problems[:10])
        raise RestoreFailed(label, f"verification of the restored database failed ({len(problems)} problem(s), "
                                   f"new database dropped): {shown}")
    info = outcome.info
    return {"source": source.name, "backup": backup, "location": label, "new_database": new_database,
            "server": repr(server), "restore_seconds": info.get("restore_seconds"),
            "duration_seconds": info.get("duration_seconds"), "tables": info.get("tables", 0),
            "verified_rows": info.get("verified_rows", 0), "compared_with": info.get("compared_with", ""),
            "checks": check_dicts(outcome.checks), "ok": True}


__all__ = ["RestoreJob", "Outcome", "restore_backup", "restore_test", "restore_into_new_database", "new_database_name",
           "check_dicts", "problem_dicts", "add_checks"]
