"""Point-in-time restore: a base backup plus archive replay to a target time, into a scratch server.

For a ``wal_archives:`` source (docs/wal.md, "Point-in-time restore"):

1. the target must lie inside the window the last daily verification found
   (``<state_dir>/facts/pitr-SOURCE.json``); the base backup is the newest one whose end
   (STOP TIME of its ``.backup`` label in the archive) is before the target, on disk or in S3
   (:mod:`backupkit.restore.pitr_base`); it is **leased** from retention for the restore
   (:func:`lease_base_backup`), so a sweep meanwhile deletes neither it nor its WAL;
2. it is verified (``pg_verifybackup``; downloaded first when it is in S3 only, after a
   free-space check) and copied into a new data directory under the scratch root; the
   backup's own configuration is not used: ``postgresql.conf``, ``postgresql.auto.conf`` and
   ``pg_hba.conf`` are replaced (a backup's ``archive_command``, ``restore_command`` or preload
   libraries never run), a backup with tablespaces is refused; the parameters hot standby
   needs at least the primary's values of come from ``pg_controldata`` of the copy;
3. the server starts with ``recovery.signal``, ``restore_command`` = our
   :mod:`backupkit.wal.restore_command`, which asks this process's
   :class:`~backupkit.wal.fetcher.WalFetcher` (the archive in a directory or in S3; every file
   checked before the server sees it; no credential leaves this process), an environment
   without credentials, ``recovery_target_time``, ``recovery_target_timeline`` (``latest`` by
   default) and ``recovery_target_action`` (``pause`` for inspection in verify_only,
   ``promote`` otherwise); it listens on its private socket directory only (``local all all
   trust`` behind a 0700 directory, no TCP);
4. it has reached the target only when its log says ``recovery stopping before/after`` a
   transaction (PostgreSQL can end recovery early at a gap or a damaged record and carry
   on; the verdict then names the segment the fetcher refused or did not find); then the
   caller's checks run (marker rows: :func:`marker_checks`) and the server is torn down,
   whatever happened.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backupkit import clock
from backupkit.config import Config, Source
from backupkit.model import CheckResult
from backupkit.pgbin import pg_bin
from backupkit.pgserver import LocalPostgres, free_port, make_traversable, server_user
from backupkit.restore.pitr_base import (BaseBackupError, BaseChoice, base_backup_for, check_free_space,
                                         download_base_backup, verify_download)
from backupkit.storage.locks import Leases, LockBusy, SourceLock
from backupkit.storage.objectstore import Bucket, client_errors
from backupkit.wal.archive import ArchiveUnavailable
from backupkit.wal.fetcher import WalFetcher, magic_for

ACTIONS = ("pause", "promote")
EARLY_END = "recovery ended before configured recovery target was reached"
STOPPED = re.compile(r"recovery stopping (before|after) (commit|abort) of transaction (\d+), time ([0-9: .+-]+)")
HOT_STANDBY_PARAMS = {"max_connections": "max_connections setting", "max_worker_processes":
                      "max_worker_processes setting", "max_wal_senders": "max_wal_senders setting",
                      "max_prepared_transactions": "max_prep_xacts setting",
                      "max_locks_per_transaction": "max_locks_per_xact setting"}
# A log copied along would fake "recovery stopping" lines: it goes too.
REPLACED_FILES = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf",
                  "recovery.signal", "standby.signal", "postmaster.pid", "postmaster.opts",
                  "server.log", "current_logfiles")


class PitrError(ValueError):
    """The request cannot be served (outside the window, no base backup before it)."""


@dataclass(frozen=True)
class PitrTarget:
    time: datetime
    timeline: str = "latest"
    action: str = "pause"

    def __post_init__(self) -> None:
        if self.time.tzinfo is None:
            raise PitrError("the target time needs a time zone (e.g. 2026-03-01T12:00:00Z)")
        if self.action not in ACTIONS:
            raise PitrError(f"recovery_target_action must be one of {', '.join(ACTIONS)}")
        if self.timeline != "latest" and not (self.timeline.isdigit() and 0 < int(self.timeline) < 1 << 32):
            raise PitrError(f"target timeline must be 'latest' or a timeline number, got {self.timeline!r}")

    @property
    def pg_time(self) -> str:
        """As recovery_target_time accepts it (a trailing Z is refused at server start)."""
        return self.time.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def parse_target_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise PitrError(f"not an ISO 8601 date-time: {text!r}") from None
    if t.tzinfo is None:
        raise PitrError(f"{text!r} has no time zone: give one, e.g. {text}Z")
    return t


# -- choosing -----------------------------------------------------------------------------------------
SWEEP_WAIT = 600.0         # seconds a restore waits for a retention sweep already under way
LEASE_SLACK = timedelta(hours=2)   # beyond the recovery timeout: download, start, checks
# The server's environment: what PostgreSQL and our restore_command need, nothing more (no
# AWS_*, no AIRFLOW_CONN_*, no tokens): what the server's processes could show or log.
SERVER_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
              "PYTHONHOME", "BACKUPKIT_PG_USER")


def archive_reader(source: Source, bucket: Bucket | None):
    """The archive a restore replays: ``archive_dir`` when configured, else its S3 copy."""
    from backupkit.wal.archive import LocalArchive

    spec = source.spec
    if spec.archive_dir is not None:
        return LocalArchive(spec.archive_dir)
    if bucket is None:
        raise PitrError(f"{source.name}: the archive is kept in S3 only ({spec.archive_s3_prefix}) and no bucket "
                        f"was given")
    from backupkit.wal.s3 import S3Archive

    return S3Archive(bucket, spec.archive_s3_prefix)


def lease_base_backup(config: Config, source: Source, choose: Callable[[], BaseChoice], *, run_id: str,
                      for_: timedelta) -> BaseChoice:
    """Choose, lease, let a sweep that planned before the lease existed finish, choose again.

    A sweep learns leases under its source lock, before it plans: one that starts after the
    lease is written holds the backup; one already under way may still delete it, so we wait
    for its lock, then check that the choice stands (else lease the new choice, and again)."""
    leases = Leases(config.state_dir)
    choice = choose()
    for _ in range(3):
        leases.take(source.name, choice.name, run_id=run_id, purpose="point-in-time restore", for_=for_)
        try:
            with SourceLock(config.state_dir, source.name, "sweep", owner=run_id, timeout=SWEEP_WAIT):
                pass
            again = choose()
        except BaseException:   # refused (a sweep too long, nothing left to choose): no lease stays behind
            leases.release(source.name, choice.name, run_id=run_id)
            raise
        if again.name == choice.name:
            return choice
        leases.release(source.name, choice.name, run_id=run_id)
        choice = again
    raise PitrError(f"{source.name}: the base backup for the target kept changing while it was leased "
                    f"(retention sweeps running): try again")


def server_env() -> dict[str, str]:
    import backupkit

    env = {k: os.environ[k] for k in SERVER_ENV if k in os.environ}
    plugins = str(Path(backupkit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (plugins, os.environ.get("PYTHONPATH")) if p)
    return env


def check_in_window(config: Config, source: Source, target: datetime) -> dict:
    window = source.kind_impl.recovery_window(config, source)
    if window is None:
        raise PitrError(f"{source.name}: no verified recovery window yet (the daily verification has not "
                        f"found one): nothing to restore to")
    if not window["start"] <= target <= window["end"]:
        raise PitrError(f"{target.isoformat()} is outside the verified window of {source.name}: "
                        f"{window['start'].isoformat()} to {window['end'].isoformat()}")
    return window


# -- the scratch server -------------------------------------------------------------------------------
class PitrServer(LocalPostgres):
    """A server on a copy of a base backup, reached only through its socket in the data directory."""

    def conn_args(self, database: str = "postgres") -> list[str]:
        return ["-h", str(self.data_dir), "-p", str(self.port), "-U", self.user, "-d", database]

    def log_text(self, limit: int = 1 << 20) -> str:
        try:
            with open(self.data_dir / "server.log", "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def _controldata(data: Path) -> dict[str, str]:
    proc = subprocess.run([pg_bin("pg_controldata"), "-D", str(data)], capture_output=True, text=True,
                          env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    out = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def prepare_copy(base: Path, data: Path, user: str | None, *, move: bool = False) -> dict[str, str]:
    """Copy (``move``: a download, renamed) the base backup into ``data`` without its configuration;
    ``pg_controldata`` of the copy."""
    if (base / "pg_tblspc").is_dir() and any((base / "pg_tblspc").iterdir()):
        raise PitrError(f"{base} has tablespaces: the scratch restore does not map them (refused)")
    if move:
        os.rename(base, data)
    else:
        shutil.copytree(base, data, symlinks=True)
    for name in REPLACED_FILES:
        (data / name).unlink(missing_ok=True)
    (data / "postgresql.conf").write_text("# written by backupkit.restore.pitr; the backup's own is not used\n")
    (data / "pg_hba.conf").write_text("local all all trust\n")
    (data / "pg_ident.conf").write_text("")
    (data / "recovery.signal").write_text("")
    (data / "pg_wal").mkdir(exist_ok=True)
    if user:
        import pwd

        pw = pwd.getpwnam(user)
        for root, dirs, files in os.walk(data):
            os.chown(root, pw.pw_uid, pw.pw_gid)
            for f in files:
                os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    data.chmod(0o700)
    return _controldata(data)


def hot_standby_minimums(control: dict[str, str]) -> dict[str, str]:
    return {p: control[k] for p, k in HOT_STANDBY_PARAMS.items() if control.get(k, "").isdigit()}


def fetcher_for(archive, data: Path, control: dict[str, str], staging: Path, user: str | None) -> WalFetcher:
    """The fetcher of the archive for the cluster in ``data`` (its system identifier, version, segment size)."""
    try:
        sysid = int(control["Database system identifier"])
        segment_size = int(control["Bytes per WAL segment"])
        magic = magic_for(int((data / "PG_VERSION").read_text().strip()))
    except (KeyError, ValueError, OSError) as exc:
        raise PitrError(f"pg_controldata of the copy cannot be read ({exc}): not a usable base backup") from None
    return WalFetcher(archive, segment_size=segment_size, sysid=sysid, magic=magic, staging=staging, user=user)


def server_settings(target: PitrTarget, fetcher: WalFetcher, minimums: dict[str, str]) -> dict:
    command = (f"{sys.executable} -m backupkit.wal.restore_command --socket {fetcher.socket_path} "
               f"--segment-size {fetcher.segment_size} %f %p")
    return {**minimums, "listen_addresses": "", "restore_command": command,
            "recovery_target_time": target.pg_time, "recovery_target_timeline": target.timeline,
            "recovery_target_action": target.action, "recovery_target_inclusive": "on", "archive_mode": "off",
            "hot_standby": "on", "log_timezone": "UTC", "timezone": "UTC", "fsync": "off",
            "shared_preload_libraries": "", "session_preload_libraries": "", "local_preload_libraries": "",
            "dynamic_library_path": "$libdir"}


def wait_for_target(server: PitrServer, target: PitrTarget, timeout: float) -> tuple[bool, str]:
    """(reached, detail): the log's 'recovery stopping' line, and paused or promoted as asked."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = server.running()
        log = server.log_text()   # read after the liveness check: a server that stopped has said why
        m = STOPPED.search(log)
        if m and running:
            state = _state(server)
            if (target.action == "pause" and state == "paused") or (target.action == "promote" and state == "f"):
                return True, f"recovery stopped {m.group(1)} {m.group(2)} of transaction {m.group(3)}, time {m.group(4)}"
        elif EARLY_END in log or (not m and "database system is ready to accept connections" in log
                                  and running and _state(server) == "f"):
            return False, "recovery ended before the target time: the archive does not reach it (a gap, a " \
                          "damaged segment or a missing history)"
        if not running:
            tail = "; ".join(ln for ln in log.splitlines()[-5:])
            return False, f"the scratch server stopped during recovery: {tail[-800:]}"
        time.sleep(0.2)
    return False, f"recovery did not reach {target.pg_time} within {timeout:.0f} s"


def _state(server: PitrServer) -> str:
    try:
        out = server.psql("SELECT CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE 'f' END",
                          check=True).strip()
        return out
    except RuntimeError:
        return "starting"


# -- the whole restore ----------------------------------------------------------------------------------
def pitr_restore(config: Config, source_name: str, target: PitrTarget, *,
                 checks: Callable[[PitrServer, PitrTarget], list[CheckResult]] | None = None,
                 timeout: float = 600.0, role: str = "pitr", work_root: Path | None = None,
                 bucket: Bucket | None = None, prefer: str = "local", run_id: str | None = None) -> dict:
    """Restore ``source_name`` to ``target`` on a scratch server, run ``checks``, tear it down.

    ``work_root``: where the scratch server lives (a run's scratch directory,
    :func:`backupkit.restore.scratch.run_scratch_dir`, so the run's teardown and the orphan sweep
    find what a crash left); default ``<scratch root>/pitr``. ``bucket``: where S3 copies of the
    archive and the base backups are (needed when either is kept in S3 only); ``prefer="s3"``
    restores from the S3 copy of the base backup even when a local one exists. ``run_id``: the
    lease's owner (default: a new id).

    Returns ``{source, kind, backup, role, target_time, ok, duration_seconds, checks, problems, ...}``
    (the restore-test result shape); a problem is a check, never an exception.
    """
    source = config.source(source_name)
    t0, started = time.monotonic(), clock.now()
    run_id = run_id or f"pitr-{uuid.uuid4().hex[:12]}"
    base = {"source": source.name, "kind": source.kind, "backup": "", "role": role, "backend": "local",
            "target_time": target.time.isoformat(), "target_timeline": target.timeline,
            "started_at": started.isoformat(), "duration_seconds": None, "verified_rows": 0, "location": None}
    try:
        check_in_window(config, source, target.time)
        archive = archive_reader(source, bucket)
        choice = lease_base_backup(config, source, lambda: base_backup_for(source, target.time, archive, bucket,
                                                                           prefer=prefer),
                                   run_id=run_id, for_=timedelta(seconds=timeout) + LEASE_SLACK)
    except (PitrError, BaseBackupError, ArchiveUnavailable, LockBusy, OSError, *client_errors()) as exc:
        return _finish(base, [CheckResult(source.name, "pitr_target", False, str(exc))], t0)
    base.update(backup=choice.name, location=choice.label, base_backup_end=choice.end.isoformat(),
                base_backup_from="s3" if choice.from_s3 else "local")
    try:
        out = _restore(config, source, target, choice, archive, bucket, checks, timeout, work_root)
    finally:
        Leases(config.state_dir).release(source.name, choice.name, run_id=run_id)
    base["restore_seconds"] = round(time.monotonic() - t0, 3)
    return _finish(base, out, t0)


def _restore(config: Config, source: Source, target: PitrTarget, choice: BaseChoice, archive, bucket,
             checks, timeout: float, work_root: Path | None) -> list[CheckResult]:
    from backupkit.restore.scratch import local_scratch_root

    art = f"{source.name}/{choice.name}"
    root = Path(work_root) if work_root else local_scratch_root(config) / "pitr"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pitr-", dir=root))
    work.chmod(0o711)
    user = server_user()
    make_traversable(work, user)
    # The restore_command is this interpreter, run by the server's user (as root: an unprivileged one).
    make_traversable(Path(os.path.realpath(sys.executable)).parent, user)
    server = PitrServer(work / "data", port=free_port(), env=server_env())
    fetcher: WalFetcher | None = None
    out: list[CheckResult] = []
    try:
        control = materialize(choice, bucket, server.data_dir, user)
        fetcher = fetcher_for(archive, server.data_dir, control, work / "staging", user).start()
        server.settings = server_settings(target, fetcher, hot_standby_minimums(control))
        try:
            server.start(timeout=120)
        except RuntimeError as exc:
            return [CheckResult(art, "pitr_start", False, str(exc)[-3000:])]
        reached, detail = wait_for_target(server, target, timeout)
        if not reached:
            detail = stopped_at(fetcher) + detail
        out.append(CheckResult(art, "pitr_reached", reached, f"target {target.pg_time}: {detail}"))
        if reached and fetcher.problems:
            out.append(CheckResult(art, "pitr_wal", False, "; ".join(f"{r.name} refused: {r.reason}"
                                                                    for r in fetcher.problems[:5])))
        if reached and checks is not None:
            out += checks(server, target)
    except (PitrError, BaseBackupError, OSError) as exc:
        out.append(CheckResult(art, "pitr_target", False, str(exc)))
    finally:
        try:
            server.stop()
        finally:
            if fetcher is not None:
                fetcher.stop()
            shutil.rmtree(work, ignore_errors=True)
    return out


def materialize(choice: BaseChoice, bucket: Bucket | None, data: Path, user: str | None) -> dict[str, str]:
    """The chosen base backup verified and in ``data`` (downloaded first when from S3; a tar-format
    one unpacked, :mod:`backupkit.restore.pitr_tar`); its control data."""
    if choice.format == "tar":
        from backupkit.restore.pitr_tar import unpack_tar_backup

        backup = choice.backup.path
        if choice.from_s3:
            backup = data.parent / "download"
            download_base_backup(bucket, choice, backup)
        unpacked = data.parent / "unpacked"
        unpack_tar_backup(backup, unpacked, choice, choice.label)
        if choice.from_s3:
            shutil.rmtree(backup)
        return prepare_copy(unpacked, data, user, move=True)
    if choice.from_s3:
        download = data.parent / "download"
        download_base_backup(bucket, choice, download)
        return prepare_copy(download, data, user, move=True)
    check_free_space(data.parent, choice.backup.size, f"the copy of {choice.backup.path}")
    verify_download(choice.backup.path, choice, str(choice.backup.path))
    return prepare_copy(choice.backup.path, data, user)


def stopped_at(fetcher: WalFetcher) -> str:
    """Which file recovery stopped at, as the fetcher saw it: the first refused, else the first missing segment."""
    if fetcher.problems:
        r = fetcher.problems[0]
        return f"recovery stopped at {r.name}, refused: {r.reason}; "
    if fetcher.missing:
        return f"recovery stopped at {fetcher.missing[0]}, which is not in {fetcher.reader.location}; "
    return ""


def _finish(base: dict, checks: list[CheckResult], t0: float) -> dict:
    out = {**base, "checks": [c.to_dict() for c in checks], "problems": [c.to_dict() for c in checks if not c.ok]}
    out["ok"] = bool(checks) and not out["problems"]
    out["duration_seconds"] = round(time.monotonic() - t0, 3)
    out["finished_at"] = clock.now().isoformat()
    return out


# -- marker rows ---------------------------------------------------------------------------------------
MARKERS = "public.pitr_markers"
MARGIN = timedelta(milliseconds=100)   # a row's written_at precedes its commit by a few milliseconds


def marker_checks(live: Callable[[str], str] | None, *, database: str = "postgres",
                  table: str = MARKERS) -> Callable[[PitrServer, PitrTarget], list[CheckResult]]:
    """Checks of rows whose commit time is known (``written_at``, one row per transaction): on the
    restored server none after the target, and, with ``live`` (psql on the source), exactly the
    live server's rows up to a second before it."""
    def check(server: PitrServer, target: PitrTarget) -> list[CheckResult]:
        t = target.pg_time
        early = (target.time - MARGIN).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        art = f"pitr/{database}.{table}"
        try:
            after = int(server.psql(f"SELECT count(*) FROM {table} WHERE written_at > '{t}'", database).strip())
            before = int(server.psql(f"SELECT count(*) FROM {table} WHERE written_at <= '{early}'", database).strip())
        except (RuntimeError, ValueError) as exc:
            return [CheckResult(art, "pitr_markers", False, f"markers cannot be read on the restored server: {exc}")]
        out = [CheckResult(art, "pitr_markers_after", after == 0,
                           f"{after} row(s) written after the target are present" if after else
                           "no row written after the target")]
        if live is not None:
            try:
                expected = int(live(f"SELECT count(*) FROM {table} WHERE written_at <= '{early}'").strip())
            except (RuntimeError, ValueError) as exc:
                out.append(CheckResult(art, "pitr_markers_before", False, f"the live markers cannot be read: {exc}"))
                return out
            out.append(CheckResult(art, "pitr_markers_before", before == expected and expected > 0,
                                   f"{before} row(s) up to {early} restored, the live server has {expected}"))
        else:
            out.append(CheckResult(art, "pitr_markers_before", before > 0, f"{before} row(s) up to {early} restored"))
        return out

    return check




# -- requests from the restore DAG ---------------------------------------------------------------------
def wal_source_for(config: Config, source_name: str) -> Source:
    """The WAL archive of a database source (``database:`` of a ``wal_archives:`` entry), or the archive itself."""
    src = config.source(source_name)
    if src.kind == "wal_archive":
        return src
    for s in config.sources:
        if s.kind == "wal_archive" and s.spec.database == src.name:
            return s
    raise PitrError(f"{source_name!r} has no WAL archive configured (a wal_archives: entry with "
                    f"database: {source_name}): a point-in-time restore needs one")


def check_pitr_request(config: Config, request: dict) -> dict:
    """What a request with a target time adds once checked (verify_only only; inside the verified window)."""
    if request.get("mode") != "verify_only":
        raise PitrError("a target time is supported in verify_only mode only (replace to a point in time is "
                        "not built yet)")
    wal = wal_source_for(config, request["source"])
    target = PitrTarget(parse_target_time(str(request["target_time"])), str(request.get("target_timeline") or "latest"))
    check_in_window(config, wal, target.time)
    return {"wal_source": wal.name, "target_time": target.time.isoformat(), "target_timeline": target.timeline}


def database_answers(database: str | None) -> Callable[[PitrServer, PitrTarget], list[CheckResult]]:
    """The restored cluster holds the source's database and its tables can be listed."""
    def check(server: PitrServer, target: PitrTarget) -> list[CheckResult]:
        db = database or "postgres"
        try:
            n = int(server.psql("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
                                db).strip())
        except (RuntimeError, ValueError) as exc:
            return [CheckResult(f"pitr/{db}", "pitr_database", False, f"cannot be read: {exc}")]
        return [CheckResult(f"pitr/{db}", "pitr_database", n > 0, f"{n} table(s) in {db} at the target")]

    return check


__all__ = ["PitrTarget", "PitrError", "PitrServer", "pitr_restore", "marker_checks", "parse_target_time",
           "wal_source_for", "check_pitr_request", "database_answers", "lease_base_backup", "archive_reader",
           "base_backup_for", "check_in_window", "server_settings", "prepare_copy", "materialize", "server_env"]
