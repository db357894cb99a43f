"""Restore orchestration the DAGs call: restore tests, the replace procedure, file restores.

Pure Python over injected parts (a scratch database, a boto3 client, an application
platform), so every path -- including a switch that fails after the application was
scaled down -- is tested without Airflow or a cluster. The Airflow layer
(``backup_airflow.restore_operators``) only builds those parts from connections.

What is restored comes from :func:`available_backups`: the union of the local directory
and the bucket, by name. A backup present in both is restored from S3 by default,
because the off-site copy is what a disaster leaves you with, so that is the copy a
restore test must prove.

The replace procedure (runbook: *Emergency Restore*) is split so the application keeps
running until a person approves: :func:`restore_into_new_database` restores into a new
database next to the live one and verifies it; :func:`plan_switch` reads what would
change; :func:`switch_database` records replica counts, scales down, points the
application at the new database, scales back up to the recorded counts and runs the
health checks -- and on any failure after the first scale-down puts the previous
setting and replica counts back before raising :class:`SwitchFailed`. No function here
ever drops the application's current database.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from backupkit import clock
from backupkit.catalog import Catalog
from backupkit.config import Config, Source
from backupkit.metrics import LastSuccessStore, MetricSet, SourceStatus
from backupkit.restore.database import RestoreFailed, S3Source, restore_dump
from backupkit.restore.files import ExtractRefused, allowed_target, normalize_name, safe_extract
from backupkit.restore.scratch import ScratchDatabase, check_identifier
from backupkit.restore.selection import SelectionError, check_key, parse_form_time, random_older, select_backup
from backupkit.restore.verify_rows import (
    ManifestError,
    RowManifest,
    check_key_tables,
    compare_row_counts,
    exact_row_counts,
    read_manifest,
    read_s3_manifest,
    run_assertions,
)
from backupkit.model import CheckResult
from backupkit.storage.objectstore import Bucket

RESTORED_DB = "restored"  # the database name inside a scratch server
EXISTING_CHOICES = ("skip", "overwrite")


# -- which backups exist ----------------------------------------------------------------
@dataclass(frozen=True)
class BackupRef:
    """One backup of a source, wherever it is: its S3 key and/or its local path."""

    source: str
    name: str
    timestamp: datetime
    key: str | None = None
    path: Path | None = None
    size: int | None = None

    def where(self, bucket: str) -> list[str]:
        out = [f"s3://{bucket}/{self.key}"] if self.key else []
        return out + ([str(self.path)] if self.path else [])


def available_backups(config: Config, source: Source, s3_client: Any = None) -> list[BackupRef]:
    """Every backup of ``source`` on disk or in the bucket, oldest first, merged by name (the catalog).

    A directory-format dump is a prefix in S3 (``NAME/toc.dat``, ...), listed by its
    directory name.
    """
    bucket = Bucket(s3_client, config.bucket) if s3_client is not None else None
    return [BackupRef(source.name, b.name, b.timestamp, key=b.key, path=b.path, size=b.size)
            for b in Catalog(source, bucket).backups()]


def find_backup(config: Config, source: Source, name: str, s3_client: Any = None) -> BackupRef:
    for ref in available_backups(config, source, s3_client):
        if ref.name == name:
            return ref
    raise SelectionError(f"no backup {name!r} of source {source.name!r} on disk ({source.local_dir}) or in "
                         f"s3://{config.bucket}/{source.s3_prefix}")


def parse_before(value: Any) -> datetime | None:
    """The trigger form's date-time text (``2025-03-01T12:00:00Z``; no zone = UTC)."""
    return parse_form_time(value, "'before'")


def resolve_request(config: Config, source_name: str, *, which: str, before: Any = None, key: str | None = None,
                    s3_client: Any = None, kind: str = "database") -> BackupRef:
    """The backup a person asked for in a trigger form, or :class:`SelectionError` saying why not.

    Checks everything that can be checked before anything changes: the source exists and
    is a ``kind`` source, the key is well formed and under the source's prefix, a backup
    exists before the given time.
    """
    names = [s.name for s in (config.databases if kind == "database" else config.file_sets)]
    if source_name not in names:
        what = "database" if kind == "database" else "file set"
        raise SelectionError(f"unknown {what} {source_name!r} (configured: {', '.join(names) or 'none'})")
    source = config.source(source_name)
    if which == "key":
        if not key:
            raise SelectionError("which='key' needs a key")
        check_key(key, [source.s3_prefix])  # before listing anything
    refs = available_backups(config, source, s3_client)
    return select_backup(refs, which=which, before=parse_before(before) if which == "latest_before" else None,
                         key=key, allowed_prefixes=[source.s3_prefix], source=source.name, pattern=source.pattern)


def monthly_targets(config: Config, s3_client: Any, *, now: datetime, seed: str) -> list[dict]:
    """What the monthly restore test restores: per source the newest backup and one picked
    at random (seeded: a rerun of the same run repeats the choice) from the older ones of
    the last ``restore.random_older_window_days`` days."""
    rng = random.Random(seed)
    targets = []
    for source in (*config.databases, *config.file_sets):
        refs = available_backups(config, source, s3_client)
        if not refs:
            targets.append({"source_name": source.name, "backup": "", "role": "newest"})
            continue
        targets.append({"source_name": source.name, "backup": refs[-1].name, "role": "newest"})
        older = random_older(refs, config.restore.random_older_window_days, now, rng)
        if older is not None:
            targets.append({"source_name": source.name, "backup": older.name, "role": "random_older"})
    return targets


# -- a database server that is not ours --------------------------------------------------
class ServerTarget(ScratchDatabase):
    """An existing PostgreSQL server reached through a connection (the application's).

    Used for the live source's row counts and, in replace mode, to restore into a new
    database next to the application's. Teardown does nothing: this server is not ours,
    and nothing on it is ever dropped except a database this run created and that never
    went into use (:meth:`drop_created_database`).
    """

    backend = "server"

    def __init__(self, *, host: str, port: int = 5432, user: str, password: str | None = None,
                 sslmode: str | None = None):
        self.host, self.port, self.user = host, int(port or 5432), user
        self._password, self.sslmode = password, sslmode
        self._created: set[str] = set()

    def start(self) -> "ServerTarget":
        return self

    def teardown(self) -> None:
        return None

    def conn_args(self, database: str = "postgres") -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database]

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def client_env(self) -> dict[str, str]:
        env = super().client_env()
        if self._password:
            env["PGPASSWORD"] = self._password
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        env.setdefault("PGCONNECT_TIMEOUT", "15")
        return env

    def database_exists(self, name: str) -> bool:
        check_identifier(name)
        return self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip() == "1"

    def create_database(self, name: str) -> None:
        super().create_database(name)
        self._created.add(name)

    def drop_created_database(self, name: str) -> bool:
        """Drop ``name`` only if this object created it; returns whether it did."""
        if name not in self._created:
            return False
        self.psql(f'DROP DATABASE IF EXISTS "{check_identifier(name)}" WITH (FORCE)')
        self._created.discard(name)
        return True

    def __repr__(self) -> str:
        return f"ServerTarget({self.user}@{self.host}:{self.port})"


# -- verification -----------------------------------------------------------------------
def _manifest_for(config: Config, ref: BackupRef, s3_client: Any, from_s3: bool) -> tuple[RowManifest | None, str]:
    """The row-count manifest beside the backup, from where the backup came (else the other place)."""
    order = ("s3", "local") if from_s3 else ("local", "s3")
    for where in order:
        if where == "s3" and ref.key and s3_client is not None:
            m = read_s3_manifest(s3_client, config.bucket, ref.key)
            if m is not None:
                return m, f"manifest s3://{config.bucket}/{ref.key}.manifest.json"
        if where == "local" and ref.path is not None:
            m = read_manifest(ref.path)
            if m is not None:
                return m, f"manifest {ref.path}.manifest.json"
    return None, ""


def verify_database(config: Config, source: Source, ref: BackupRef, target: ScratchDatabase, database: str, *,
                    s3_client: Any, from_s3: bool, live_counts: Callable[[], Mapping[str, int]] | None,
                    artifact: str) -> tuple[list[CheckResult], dict[str, int], str]:
    """Row counts (manifest, else live source within tolerance), key tables, SQL assertions."""
    checks: list[CheckResult] = []
    actual = exact_row_counts(target, database)
    try:
        manifest, basis = _manifest_for(config, ref, s3_client, from_s3)
    except ManifestError as exc:
        manifest, basis = None, ""
        checks.append(CheckResult(artifact, "manifest", False, str(exc)))
    if manifest is not None:
        checks += compare_row_counts(actual, manifest.tables, 0.0, artifact=artifact)
    elif live_counts is not None:
        tol = source.restore.row_count_tolerance
        basis = f"live source database {source.database!r} (tolerance {tol:g}; no manifest beside the backup)"
        try:
            expected = live_counts()
        except Exception as exc:  # noqa: BLE001 - reported as a failed check, the restore itself is done
            checks.append(CheckResult(artifact, "rows", False, f"no manifest, and the source's counts could not "
                                                               f"be read: {type(exc).__name__}: {exc}"))
        else:
            checks += compare_row_counts(actual, expected, tol, artifact=artifact)
    else:
        checks.append(CheckResult(artifact, "rows", False,
                                  "no manifest beside the backup and no source connection to compare with"))
    checks += check_key_tables(actual, source.restore.key_tables, artifact=artifact)
    if source.restore.assertions:
        checks += run_assertions(target, database, source.restore.assertions, artifact=artifact)
    return checks, actual, basis


def _verified_rows(checks: Sequence[CheckResult], actual: Mapping[str, int]) -> int:
    ok_tables = {c.check[len("rows "):] for c in checks if c.ok and c.check.startswith("rows ")}
    return sum(n for t, n in actual.items() if t in ok_tables)


def _problems(checks: Iterable[CheckResult]) -> list[dict]:
    return [c.to_dict() for c in checks if not c.ok]


def _check_dicts(checks: Iterable[CheckResult]) -> list[dict]:
    return [c.to_dict() for c in checks]


def _dump_source(config: Config, ref: BackupRef, s3_client: Any, prefer: str) -> tuple[Any, str, bool]:
    """(what restore_dump reads, its label, whether it is S3) for ``ref``."""
    use_s3 = ref.key is not None and s3_client is not None and (prefer == "s3" or ref.path is None)
    if use_s3:
        return S3Source(s3_client, config.bucket, ref.key), f"s3://{config.bucket}/{ref.key}", True
    if ref.path is None:
        raise SelectionError(f"backup {ref.name!r} is only in S3 and no S3 client was given")
    return ref.path, str(ref.path), False


# -- restore tests ------------------------------------------------------------------------
def restore_test(config: Config, source_name: str, backup: str, *, scratch: ScratchDatabase | None,
                 s3_client: Any = None,
                 live_counts: Callable[[], Mapping[str, int]] | None = None, role: str = "requested",
                 prefer: str = "s3", work_dir: str | Path | None = None, jobs: int | None = None) -> dict:
    """Restore one backup into a throwaway target, verify it, always tear the target down.

    Returns ``{source, kind, backup, role, location, backend, ok, restore_seconds,
    duration_seconds, verified_rows, tables, checks, problems, ...}``. A damaged backup
    or a failed check is a result (``ok`` false, the problem names the backup); only a
    target that cannot be provisioned raises (a retry may fix that).
    """
    source = config.source(source_name)
    started = clock.now()
    base = {"source": source.name, "kind": source.kind, "backup": backup, "role": role,
            "backend": getattr(scratch, "backend", "?"), "started_at": started.isoformat(),
            "restore_seconds": None, "duration_seconds": None, "verified_rows": 0, "tables": 0}
    artifact = f"{source.name}/{backup}" if backup else source.name
    if not backup:
        check = CheckResult(artifact, "present", False, "no backup of this source on disk or in the bucket")
        return {**base, "location": None, "ok": False, "checks": _check_dicts([check]),
                "problems": _problems([check])}
    try:
        ref = find_backup(config, source, backup, s3_client)
    except SelectionError as exc:
        check = CheckResult(artifact, "present", False, str(exc))
        return {**base, "location": None, "ok": False, "checks": _check_dicts([check]),
                "problems": _problems([check])}
    if source.is_database:
        if scratch is None:
            raise ValueError(f"restoring database source {source.name!r} needs a scratch database")
        result = _database_test(config, source, ref, scratch, s3_client=s3_client, live_counts=live_counts,
                                prefer=prefer, artifact=artifact, work_dir=work_dir, jobs=jobs)
    else:
        result = _files_test(config, source, ref, s3_client=s3_client, prefer=prefer, artifact=artifact,
                             work_dir=work_dir)
    checks = result.pop("_checks")
    out = {**base, **result, "checks": _check_dicts(checks), "problems": _problems(checks)}
    out["ok"] = not out["problems"]
    out["finished_at"] = clock.now().isoformat()
    return out


def _database_test(config: Config, source: Source, ref: BackupRef, scratch: ScratchDatabase, *, s3_client: Any,
                   live_counts, prefer: str, artifact: str, work_dir, jobs: int | None) -> dict:
    dump, label, from_s3 = _dump_source(config, ref, s3_client, prefer)
    checks: list[CheckResult] = []
    out: dict[str, Any] = {"location": label}
    t0 = time.monotonic()
    try:
        scratch.start()
    except BaseException:
        _teardown_quietly(scratch)
        raise
    out["provision_seconds"] = round(time.monotonic() - t0, 3)
    try:
        try:
            rr = restore_dump(dump, scratch, fmt=source.dump_format or "custom", jobs=jobs or source.restore.jobs,
                              database=RESTORED_DB, label=label, tmp_dir=work_dir)
        except RestoreFailed as exc:
            checks.append(CheckResult(artifact, "restore", False, str(exc)[:4000]))
        else:
            out.update(restore_seconds=round(rr.restore_seconds, 3), duration_seconds=round(rr.duration_seconds, 3),
                       download_seconds=round(rr.download_seconds, 3), bytes_read=rr.bytes_read, jobs=rr.jobs,
                       notes=list(rr.notes))
            checks.append(CheckResult(artifact, "restore", True,
                                      f"{rr.fmt}, {rr.jobs} job(s), {rr.restore_seconds:.1f}s from {label}"))
            t1 = time.monotonic()
            vchecks, actual, basis = verify_database(config, source, ref, scratch, RESTORED_DB, s3_client=s3_client,
                                                     from_s3=from_s3, live_counts=live_counts, artifact=artifact)
            checks += vchecks
            out.update(verify_seconds=round(time.monotonic() - t1, 3), tables=len(actual),
                       verified_rows=_verified_rows(vchecks, actual), compared_with=basis)
    finally:
        problem = _teardown_quietly(scratch)
        if problem:
            checks.append(CheckResult(artifact, "teardown", False, problem))
    return {**out, "_checks": checks}


def _teardown_quietly(scratch: ScratchDatabase) -> str | None:
    """Tear down; a failure is returned (it becomes a problem: a copy of production data leaked)."""
    try:
        scratch.teardown()
    except Exception as exc:  # noqa: BLE001
        return f"scratch teardown failed, the orphan sweep must remove it: {type(exc).__name__}: {exc}"
    return None


def fetch_archive(config: Config, ref: BackupRef, s3_client: Any, dest_dir: Path, prefer: str = "s3") -> tuple[Path, str]:
    """A local path of the archive (downloaded into ``dest_dir`` when it comes from S3), and its label."""
    use_s3 = ref.key is not None and s3_client is not None and (prefer == "s3" or ref.path is None)
    if use_s3:
        dest = dest_dir / ref.name
        s3_client.download_file(config.bucket, ref.key, str(dest))
        return dest, f"s3://{config.bucket}/{ref.key}"
    if ref.path is None:
        raise SelectionError(f"archive {ref.name!r} is only in S3 and no S3 client was given")
    return ref.path, str(ref.path)


def _scratch_dir(config: Config, work_dir) -> Path:
    d = Path(work_dir) if work_dir else local_scratch_root(config)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _files_test(config: Config, source: Source, ref: BackupRef, *, s3_client: Any, prefer: str, artifact: str,
                work_dir) -> dict:
    """Extract into a scratch directory with the safe extractor, check checksums and paths, remove it."""
    checks: list[CheckResult] = []
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="backupkit-files-", dir=_scratch_dir(config, work_dir)) as tmp:
        try:
            archive, label = fetch_archive(config, ref, s3_client, Path(tmp), prefer)
        except Exception as exc:  # noqa: BLE001 - S3 trouble is retried by raising below
            raise RuntimeError(f"could not fetch {ref.name}: {type(exc).__name__}: {exc}") from exc
        out["location"] = label
        download = time.monotonic() - t0
        target = Path(tmp) / "extract"
        t1 = time.monotonic()
        try:
            er = safe_extract(archive, target, max_total_bytes=config.restore.max_extract_bytes,
                              max_files=config.restore.max_extract_files, existing="fail")
        except (ExtractRefused, ValueError) as exc:
            checks.append(CheckResult(artifact, "extract", False, str(exc).replace(str(archive), label)[:4000]))
        else:
            checks += er.checks(artifact)
            for p in source.paths:
                rel = normalize_name(p)
                present = (target / rel).exists()
                checks.append(CheckResult(artifact, f"path {rel}", present,
                                          "restored" if present else "missing from the archive"))
            if not er.written:
                checks.append(CheckResult(artifact, "files", False, "the archive holds no files"))
            out.update(files=len(er.written), bytes_written=er.bytes_written, verified_files=len(er.verified),
                       checksum_manifest=er.checksum_manifest)
        restore_s = time.monotonic() - t1
    out.update(restore_seconds=round(restore_s, 3), duration_seconds=round(download + restore_s, 3),
               download_seconds=round(download, 3), backend="local-dir")
    return {**out, "_checks": checks}


# -- the monthly summary and its metrics ---------------------------------------------------
def summarize_restore_tests(results: Sequence[Mapping[str, Any]]) -> dict:
    """Per source: pass/fail of each test; a table for the log; every problem."""
    sources: dict[str, dict] = {}
    problems: list[dict] = []
    lines = [f"{'SOURCE':24} {'ROLE':13} {'BACKUP':36} {'RESULT':6} {'SECONDS':>8} {'ROWS/FILES':>10}"]
    for r in results:
        s = sources.setdefault(r["source"], {"ok": True, "tests": []})
        s["ok"] = s["ok"] and bool(r.get("ok"))
        s["tests"].append({k: r.get(k) for k in ("role", "backup", "ok", "duration_seconds", "verified_rows",
                                                 "files", "location")})
        problems += r.get("problems") or []
        secs = r.get("duration_seconds")
        count = r.get("verified_rows") if r.get("kind") == "database" else r.get("files")
        lines.append(f"{r['source']:24} {str(r.get('role')):13} {str(r.get('backup') or '-'):36} "
                     f"{'PASS' if r.get('ok') else 'FAIL':6} {secs if secs is not None else '-':>8} "
                     f"{count if count is not None else '-':>10}")
        for p in r.get("problems") or []:
            lines.append(f"    {p.get('check')}: {p.get('detail')}")
    return {"ok": all(s["ok"] for s in sources.values()) and bool(sources), "sources": sources,
            "problems": problems, "table": "\n".join(lines)}


RT_LAST_SUCCESS = "backup_restore_test_last_success_timestamp_seconds"
RT_DURATION = "backup_restore_test_duration_seconds"
RT_STATUS = "backup_restore_test_status"
RT_ROWS = "backup_restore_test_verified_rows"
RT_FILES = "backup_restore_test_verified_files"
RT_LAST_RUN = "backup_restore_test_last_run_timestamp_seconds"


def restore_test_metrics(results: Sequence[Mapping[str, Any]], *, now: float, store: LastSuccessStore,
                         expected_sources: Iterable[str] = ()) -> MetricSet:
    """Per source: status (1 = every restore test of it passed), duration and verified rows
    (or files) of the newest backup's test, and the last time all its tests passed (kept
    across runs in ``store``). A source with no result at all counts as failed."""
    by_source: dict[str, list[Mapping[str, Any]]] = {name: [] for name in expected_sources}
    for r in results:
        by_source.setdefault(r["source"], []).append(r)
    statuses = [SourceStatus(name, ok=bool(rs) and all(r.get("ok") for r in rs),
                             problems=sum(len(r.get("problems") or []) for r in rs) + (0 if rs else 1))
                for name, rs in by_source.items()]
    last = store.update(statuses, now)
    m = MetricSet()
    m.gauge(RT_LAST_RUN, "Unix time of the last restore-test run").set(now)
    status = m.gauge(RT_STATUS, "1 if every restore test of the source passed in the last run, else 0", ["source"])
    duration = m.gauge(RT_DURATION, "Download plus restore time of the newest backup of the source, seconds",
                       ["source"])
    rows = m.gauge(RT_ROWS, "Rows verified in the restore of the newest backup of the source", ["source"])
    files = m.gauge(RT_FILES, "Files extracted and checked from the newest archive of the file set", ["source"])
    success = m.gauge(RT_LAST_SUCCESS, "Unix time of the last run in which every restore test of the source passed",
                      ["source"])
    for st in statuses:
        status.labels(source=st.source).set(1 if st.ok else 0)
        newest = next((r for r in by_source[st.source] if r.get("role") == "newest"), None)
        if newest is not None and newest.get("duration_seconds") is not None:
            duration.labels(source=st.source).set(newest["duration_seconds"])
        if newest is not None and newest.get("kind") == "database":
            rows.labels(source=st.source).set(newest.get("verified_rows") or 0)
        elif newest is not None and newest.get("files") is not None:
            files.labels(source=st.source).set(newest["files"])
        if st.source in last:
            success.labels(source=st.source).set(last[st.source])
    return m


# -- replace mode: a new database next to the live one ----------------------------------------
def new_database_name(source: Source, now: datetime) -> str:
    """``<database>_restored_<UTC yyyymmddhhmmss>`` (at most 63 characters)."""
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S")
    base = (source.database or source.name).replace("-", "_")
    return check_identifier(f"{base[:63 - len(stamp) - 10]}_restored_{stamp}")


def restore_into_new_database(config: Config, source_name: str, backup: str, *, server: ServerTarget,
                              new_database: str, s3_client: Any = None,
                              live_counts: Callable[[], Mapping[str, int]] | None = None, prefer: str = "s3",
                              work_dir: str | Path | None = None) -> dict:
    """Restore ``backup`` into a NEW database on the application's server and verify it.

    The application keeps using its database meanwhile. Refuses a name that exists; on a
    failed restore or verification drops only the database it just created (never used
    by anything), then raises :class:`RestoreFailed` naming the backup and the problems.
    """
    source = config.source(source_name)
    if not source.is_database:
        raise SelectionError(f"{source_name!r} is a file set, not a database")
    check_identifier(new_database)
    if new_database == source.database:
        raise ValueError("refusing to restore over the application's own database")
    ref = find_backup(config, source, backup, s3_client)
    artifact = f"{source.name}/{backup}"
    if server.database_exists(new_database):
        raise RestoreFailed(artifact, f"database {new_database!r} already exists on {server!r}; "
                                      "choose another name (nothing was changed)")
    dump, label, from_s3 = _dump_source(config, ref, s3_client, prefer)
    try:
        rr = restore_dump(dump, server, fmt=source.dump_format or "custom", jobs=source.restore.jobs,
                          database=new_database, label=label, no_privileges=False, tmp_dir=work_dir)
        checks, actual, basis = verify_database(config, source, ref, server, new_database, s3_client=s3_client,
                                                from_s3=from_s3, live_counts=live_counts, artifact=artifact)
    except BaseException:
        server.drop_created_database(new_database)
        raise
    problems = _problems(checks)
    if problems:
        server.drop_created_database(new_database)
        shown = "; ".join(f"{p['check']}: {p['detail']}" for p in problems[:10])
        raise RestoreFailed(label, f"verification of the restored database failed ({len(problems)} problem(s), "
                                   f"new database dropped): {shown}")
    return {"source": source.name, "backup": backup, "location": label, "new_database": new_database,
            "server": repr(server), "restore_seconds": round(rr.restore_seconds, 3),
            "duration_seconds": round(rr.duration_seconds, 3), "tables": len(actual),
            "verified_rows": _verified_rows(checks, actual), "compared_with": basis, "checks": _check_dicts(checks),
            "ok": True}


# -- replace mode: switching the application ------------------------------------------------
class AppPlatform(Protocol):
    """What the switch needs from where the application runs (Kubernetes in production)."""

    def get_replicas(self, namespace: str, deployment: str) -> int: ...

    def scale(self, namespace: str, deployment: str, replicas: int) -> None: ...

    def wait_for_replicas(self, namespace: str, deployment: str, replicas: int, timeout: float) -> None:
        """Return once exactly ``replicas`` pods run and are ready (0: all gone); raise on timeout."""

    def read_settings(self, namespace: str, deployments: Sequence[str]) -> dict[str, str]:
        """Current database setting per target (``deployment/<d>/<container>`` or ``secret/<s>/<key>``)."""

    def write_setting(self, namespace: str, target: str, value: str) -> None: ...


_DBNAME_KV = re.compile(r"(^|\s)dbname\s*=\s*('[^']*'|\S+)")


def redact(value: str) -> str:
    """A connection setting safe to log and audit: the password replaced by ``***``."""
    if "://" in value:
        parts = urlsplit(value)
        if parts.password is not None:
            host = parts.hostname or ""
            if parts.port:
                host += f":{parts.port}"
            user = f"{parts.username}:***@" if parts.username else ":***@"
            return urlunsplit((parts.scheme, user + host, parts.path, re.sub(r"(?i)password=[^&]*", "password=***",
                                                                              parts.query), parts.fragment))
        return urlunsplit((parts.scheme, parts.netloc, parts.path,
                           re.sub(r"(?i)password=[^&]*", "password=***", parts.query), parts.fragment))
    return re.sub(r"(?i)(password\s*=\s*)('[^']*'|\S+)", r"\1***", value)


def setting_database(value: str) -> str | None:
    """The database a connection setting points at (URL path, ``dbname=`` or a bare name)."""
    if "://" in value:
        return urlsplit(value).path.lstrip("/") or None
    m = _DBNAME_KV.search(value)
    if m:
        return m.group(2).strip("'")
    return value.strip() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value.strip()) else None


def point_setting_at(value: str, old_database: str, new_database: str) -> str:
    """``value`` with its database changed from ``old_database`` to ``new_database``.

    Refuses a setting that does not point at ``old_database``: then this is not the
    application of the backup's source, and guessing would break it.
    """
    current = setting_database(value)
    if current != old_database:
        raise ValueError(f"the setting {redact(value)!r} points at database {current!r}, not at the source's "
                         f"database {old_database!r}; refusing to guess how to switch it")
    if "://" in value:
        p = urlsplit(value)
        return urlunsplit((p.scheme, p.netloc, "/" + new_database, p.query, p.fragment))
    if _DBNAME_KV.search(value):
        return _DBNAME_KV.sub(lambda m: f"{m.group(1)}dbname={new_database}", value, count=1)
    return new_database


@dataclass(frozen=True)
class SwitchPlan:
    """What the switch will do, read before anything changes (shown for approval)."""

    namespace: str
    deployments: tuple[str, ...]
    replicas: dict[str, int]
    old: dict[str, str]  # target -> current setting
    new: dict[str, str]  # target -> setting pointing at the new database
    old_database: str
    new_database: str

    def describe(self) -> list[str]:
        """Human-readable lines, passwords redacted."""
        lines = [f"namespace {self.namespace}: scale down {', '.join(self.deployments)} "
                 f"(now {', '.join(f'{d}={self.replicas[d]}' for d in self.deployments)} replicas)"]
        for t in self.old:
            lines.append(f"{t}: {redact(self.old[t])} -> {redact(self.new[t])}")
        lines.append("scale back up to " + ", ".join(f"{d}={self.replicas[d]}" for d in self.deployments)
                     + " and run the health checks")
        lines.append(f"the old database {self.old_database!r} is kept (never dropped)")
        return lines

    def to_dict(self, redacted: bool = True) -> dict:
        show = redact if redacted else (lambda v: v)
        return {"namespace": self.namespace, "deployments": list(self.deployments), "replicas": dict(self.replicas),
                "old": {t: show(v) for t, v in self.old.items()}, "new": {t: show(v) for t, v in self.new.items()},
                "old_database": self.old_database, "new_database": self.new_database}


def plan_switch(platform: AppPlatform, *, namespace: str, deployments: Sequence[str], old_database: str,
                new_database: str) -> SwitchPlan:
    """Read replica counts and current settings; compute the new settings. Changes nothing."""
    if not deployments:
        raise ValueError("no deployments to switch (give them in the form or restore.app.deployments)")
    if len(set(deployments)) != len(deployments):
        raise ValueError(f"deployments listed twice: {list(deployments)}")
    replicas = {d: int(platform.get_replicas(namespace, d)) for d in deployments}
    old = dict(platform.read_settings(namespace, list(deployments)))
    if not old:
        raise ValueError("the platform reported no database setting to switch")
    new = {t: point_setting_at(v, old_database, new_database) for t, v in old.items()}
    return SwitchPlan(namespace, tuple(deployments), replicas, old, new, old_database, new_database)


class SwitchFailed(RuntimeError):
    """A step after the first scale-down failed; the previous state was put back (or not: see
    ``rollback_errors``). The message says which step failed and what the rollback did."""

    def __init__(self, step: str, error: BaseException, rollback_errors: list[str], plan: SwitchPlan):
        self.step, self.error, self.rollback_errors, self.plan = step, error, rollback_errors, plan
        if rollback_errors:
            after = ("ROLLBACK INCOMPLETE, act now: " + "; ".join(rollback_errors)
                     + f". Recorded state: replicas {plan.replicas}, settings {plan.to_dict()['old']}")
        else:
            after = (f"rolled back: settings restored, replicas back to {plan.replicas}, healthy again "
                     f"(database {plan.new_database!r} is left in place for inspection)")
        super().__init__(f"switch to {plan.new_database!r} failed at '{step}': {type(error).__name__}: {error}; "
                         f"{after}")


Journal = Callable[[str, dict], None]


def switch_database(platform: AppPlatform, plan: SwitchPlan, *, timeout: float,
                    health_checks: Sequence[Callable[[], None]] = (), journal: Journal | None = None) -> dict:
    """Scale down, switch the setting, scale back up to the recorded counts, check health.

    ``journal(action, details)`` is called before the first change (with the recorded
    state, so a crash mid-switch leaves what is needed to undo it by hand) and with the
    outcome. On any failure from the first scale-down on, the previous settings and
    replica counts are put back and :class:`SwitchFailed` is raised.
    """
    journal = journal or (lambda action, details: None)
    ns = plan.namespace
    steps: list[str] = []
    journal("switch_started", {"plan": plan.to_dict()})
    step = "scale down"
    try:
        for d in plan.deployments:
            step = f"scale down {d}"
            platform.scale(ns, d, 0)
            steps.append(f"scaled {d} to 0")
        for d in plan.deployments:
            step = f"wait for {d} to stop"
            platform.wait_for_replicas(ns, d, 0, timeout)
        for target, value in plan.new.items():
            step = f"switch {target}"
            platform.write_setting(ns, target, value)
            steps.append(f"set {target} to {redact(value)}")
        for d in plan.deployments:
            step = f"scale up {d}"
            platform.scale(ns, d, plan.replicas[d])
            steps.append(f"scaled {d} to {plan.replicas[d]}")
        for d in plan.deployments:
            step = f"wait for {d} to be ready"
            platform.wait_for_replicas(ns, d, plan.replicas[d], timeout)
        for i, check in enumerate(health_checks, 1):
            step = f"health check {i}"
            check()
    except Exception as exc:
        rollback_errors = _rollback(platform, plan, timeout, health_checks)
        journal("switch_rollback_failed" if rollback_errors else "switch_rolled_back",
                {"failed_step": step, "error": f"{type(exc).__name__}: {exc}", "steps": steps,
                 "rollback_errors": rollback_errors, "plan": plan.to_dict()})
        raise SwitchFailed(step, exc, rollback_errors, plan) from exc
    result = {"ok": True, "steps": steps, "plan": plan.to_dict(), "changes": plan.describe()}
    journal("switch_done", {"steps": steps, "plan": plan.to_dict()})
    return result


def _rollback(platform: AppPlatform, plan: SwitchPlan, timeout: float,
              health_checks: Sequence[Callable[[], None]]) -> list[str]:
    """Put the recorded state back; every step is attempted, errors are collected."""
    errors: list[str] = []
    ns = plan.namespace

    def attempt(what: str, fn: Callable[[], None]) -> bool:
        try:
            fn()
            return True
        except Exception as exc:  # noqa: BLE001 - keep undoing the rest
            errors.append(f"{what}: {type(exc).__name__}: {exc}")
            return False

    for target, value in plan.old.items():
        attempt(f"restore {target}", lambda t=target, v=value: platform.write_setting(ns, t, v))
    scaled = [d for d in plan.deployments
              if attempt(f"scale {d} back to {plan.replicas[d]}",
                         lambda d=d: platform.scale(ns, d, plan.replicas[d]))]
    ready = all([attempt(f"wait for {d}", lambda d=d: platform.wait_for_replicas(ns, d, plan.replicas[d], timeout))
                 for d in scaled])
    if ready and len(scaled) == len(plan.deployments):
        for i, check in enumerate(health_checks, 1):
            attempt(f"health check {i} after rollback", check)
    return errors


def http_health_check(url: str, *, timeout: float = 60.0, interval: float = 2.0,
                      request_timeout: float = 5.0) -> Callable[[], None]:
    """A check that passes once ``url`` answers 2xx, retrying until ``timeout`` (pods warm up)."""

    def check() -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                with urllib.request.urlopen(url, timeout=request_timeout) as resp:  # noqa: S310 - configured URL
                    if 200 <= resp.status < 300:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise RuntimeError(f"health check {url} failed for {timeout:g}s: {last}")
            time.sleep(interval)

    return check


# -- file restores -------------------------------------------------------------------------
def check_file_request(config: Config, *, target: str, paths: Sequence[str] | None, existing: str) -> Path:
    """Validate the parts of a file-restore request that need no archive; returns the real target."""
    if existing not in EXISTING_CHOICES:
        raise SelectionError(f"existing must be one of {', '.join(EXISTING_CHOICES)}; got {existing!r}")
    real = allowed_target(target, config.restore.allowed_file_roots)
    for p in paths or ():
        if not isinstance(p, str) or not p.strip() or p.startswith("/") or ".." in p.replace("\\", "/").split("/"):
            raise SelectionError(f"path to restore {p!r} must be a relative path inside the archive, without '..'")
    return real


def restore_files(config: Config, source_name: str, backup: str, *, target: str, paths: Sequence[str] | None = None,
                  existing: str = "skip", s3_client: Any = None, now: datetime | None = None, prefer: str = "s3",
                  work_dir: str | Path | None = None) -> dict:
    """Restore (part of) a file-set archive into ``target`` under the allowed roots.

    Safe extraction (nothing is written for an unsafe archive or target), checksums from
    the archive's ``SHA256SUMS``; ``existing``: ``skip`` keeps present files, ``overwrite``
    replaces them keeping each replaced file under ``target/.restore-backup-<time>/``.
    """
    source = config.source(source_name)
    if source.is_database:
        raise SelectionError(f"{source_name!r} is a database, not a file set")
    real = check_file_request(config, target=target, paths=paths, existing=existing)
    ref = find_backup(config, source, backup, s3_client)
    with tempfile.TemporaryDirectory(prefix="backupkit-fetch-", dir=_scratch_dir(config, work_dir)) as tmp:
        archive, label = fetch_archive(config, ref, s3_client, Path(tmp), prefer)
        try:
            er = safe_extract(archive, real, members=list(paths) if paths else None,
                              max_total_bytes=config.restore.max_extract_bytes,
                              max_files=config.restore.max_extract_files, existing=existing, now=now)
        except ExtractRefused as exc:  # name the archive as the person knows it, not our download
            exc.args = (str(exc).replace(str(archive), label),)
            raise
    out = er.to_dict()
    out.update(archive=label, source=source.name, backup=backup, existing=existing,
               paths=list(paths) if paths else "all",
               checks=_check_dicts(er.checks(f"{source.name}/{backup}")))
    return out


# -- local scratch leftovers -----------------------------------------------------------------
# PostgreSQL puts its Unix socket in the data directory and a socket path may have at most
# 107 bytes: ".../runs/<12>/backupkit-scratch-<8>/data/.s.PGSQL.<port>" adds 66 to the root.
MAX_SCRATCH_ROOT = 40


def local_scratch_root(config: Config) -> Path:
    """``restore.scratch_dir`` (default ``<state_dir>/scratch``); when that path is too long for
    PostgreSQL's socket, a short directory derived from it in the system's temporary directory
    (the same one every time, so the teardown and the orphan sweep find it)."""
    root = config.restore.scratch_dir or config.state_dir / "scratch"
    if len(str(root.resolve())) > MAX_SCRATCH_ROOT:
        digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
        root = Path(tempfile.gettempdir()) / f"backupkit-{digest}"
    return root


def run_dir_name(run_id: str) -> str:
    """A short, stable directory name for a run id (Airflow's ids are long and contain ':' and '+')."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:12]


def run_scratch_dir(config: Config, run_id: str) -> Path:
    """Where one run's local scratch servers live, so the run's teardown finds what a crash left."""
    root = local_scratch_root(config)
    if len(str(root.resolve())) > MAX_SCRATCH_ROOT:
        raise ValueError(f"scratch directory {root} is too long for PostgreSQL's socket path (max "
                         f"{MAX_SCRATCH_ROOT} characters): set restore.scratch_dir to a short path")
    d = root / "runs" / run_dir_name(run_id)
    d.mkdir(parents=True, exist_ok=True)
    return d


def cleanup_local_scratch(root: Path, *, names: Sequence[str] | None = None, older_than_seconds: float | None = None,
                          now: float | None = None) -> list[str]:
    """Stop any PostgreSQL left in the run directories under ``root`` (a crashed run's scratch
    servers) and remove them: those in ``names``, or with ``older_than_seconds`` those not
    modified for that long, or all."""
    from backupkit.pgserver import LocalPostgres
    from backupkit.restore.scratch import _kill_postmaster

    removed: list[str] = []
    if not root.is_dir():
        return removed
    now = clock.timestamp() if now is None else now
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if names is not None and d.name not in names:
            continue
        if older_than_seconds is not None and now - d.stat().st_mtime < older_than_seconds:
            continue
        for pid_file in d.rglob("postmaster.pid"):
            data = pid_file.parent
            server = LocalPostgres(data)
            server.stop()
            if (data / "postmaster.pid").exists():
                _kill_postmaster(data)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    return removed


# -- audit ---------------------------------------------------------------------------------
def audit(config: Config, *, run_id: str, source: str, action: str, triggered_by: str | None = None,
          reason: str | None = None, backup: str | None = None, changes: Sequence[str] = (), detail: str = "",
          **extra: Any) -> dict:
    """Append one restore record to the project's audit log (the retention log's file).

    ``artifact`` stays empty on purpose: the retention sweep reads artifacts to find
    half-done deletions, and a restore record must never look like one.
    """
    from backupkit.retention.audit import AuditLog, make_record

    rec = make_record(run_id=run_id, source=source, action=action, artifact=None, detail=detail, kind="restore",
                      triggered_by=triggered_by, reason=reason, backup=backup, changes=list(changes), **extra)
    AuditLog(config.state_dir).append([rec])
    return rec


def restore_records(config: Config, source: str | None = None) -> list[dict]:
    """The restore records of the audit log, oldest first."""
    from backupkit.retention.audit import AuditLog

    return [r for r in AuditLog(config.state_dir).records(source) if r.get("kind") == "restore"]


__all__ = [
    "BackupRef", "available_backups", "find_backup", "resolve_request", "parse_before", "monthly_targets",
    "ServerTarget", "verify_database", "restore_test", "fetch_archive", "summarize_restore_tests",
    "restore_test_metrics", "new_database_name", "restore_into_new_database", "AppPlatform", "SwitchPlan",
    "SwitchFailed", "plan_switch", "switch_database", "http_health_check", "redact", "setting_database",
    "point_setting_at", "check_file_request", "restore_files", "local_scratch_root", "run_scratch_dir",
    "cleanup_local_scratch", "audit", "restore_records",
]
