"""Point-in-time restore: a base backup plus archive replay to a target time, into a scratch server.

For a ``wal_archives:`` source (docs/wal.md, "Point-in-time restore"):

1. the target must lie inside the window the last daily verification found
   (``<state_dir>/facts/pitr-SOURCE.json``); the base backup is the newest local one whose
   end (STOP TIME of its ``.backup`` label in the archive) is before the target;
2. it is copied into a new data directory under the scratch root; the backup's own
   configuration is not used: ``postgresql.conf``, ``postgresql.auto.conf`` and ``pg_hba.conf``
   are replaced (a backup's ``archive_command``, ``restore_command`` or preload libraries never
   run), a backup with tablespaces is refused; the parameters hot standby needs at least the
   primary's values of come from ``pg_controldata`` of the copy;
3. the server starts with ``recovery.signal``, ``restore_command`` = our
   :mod:`backupkit.wal.restore_command` over the archive, ``recovery_target_time``,
   ``recovery_target_timeline`` (``latest`` by default) and ``recovery_target_action``
   (``pause`` for inspection in verify_only, ``promote`` otherwise); it listens on its
   private socket directory only (``local all all trust`` behind a 0700 directory, no TCP);
4. it has reached the target only when its log says ``recovery stopping before/after`` a
   transaction (PostgreSQL can end recovery early at a gap or a damaged record and carry
   on); then the caller's checks run (marker rows: :func:`marker_checks`) and the server is
   torn down, whatever happened.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backupkit import clock
from backupkit.catalog import local_backups
from backupkit.config import Config, Source
from backupkit.model import CheckResult
from backupkit.pgbin import pg_bin
from backupkit.pgserver import LocalPostgres, free_port, make_traversable, server_user

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
def base_backup_for(source: Source, target: datetime) -> tuple[str, Path, datetime]:
    """(name, path, end time) of the newest local base backup that ended before ``target``."""
    from backupkit.wal.archive import LocalArchive, read_small
    from backupkit.wal.backups import BackupError, parse_label, read_base_backup

    archive = LocalArchive(source.spec.archive_dir)
    ends: dict[tuple[int, int], datetime] = {}
    for e in archive.entries():
        from backupkit.wal.naming import classify

        c = classify(e.name)
        if c is None or c.kind != "label":
            continue
        try:
            label = parse_label(read_small(archive, e.name, c.compression, 64 << 10), e.name, c.tli)
        except Exception:  # a damaged label: the daily verification names it; it is just not used here
            continue
        if label.stop_time is not None:
            ends[(label.start_tli, label.start_lsn)] = label.stop_time
    best = None
    for b in local_backups(source):
        try:
            bb = read_base_backup(b.path)
        except BackupError:
            continue
        end = ends.get((bb.start_tli, bb.start_lsn))
        if end is not None and end < target and (best is None or end > best[2]):
            best = (b.name, b.path, end)
    if best is None:
        raise PitrError(f"no base backup of {source.name} in {source.local_dir} ended before "
                        f"{target.isoformat()} (with its .backup label in the archive)")
    return best


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


def prepare_copy(base: Path, data: Path, user: str | None) -> dict[str, str]:
    """Copy the base backup into ``data`` without its configuration; the hot standby minimums."""
    if (base / "pg_tblspc").is_dir() and any((base / "pg_tblspc").iterdir()):
        raise PitrError(f"{base} has tablespaces: the scratch restore does not map them (refused)")
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
    control = _controldata(data)
    return {p: control[k] for p, k in HOT_STANDBY_PARAMS.items() if control.get(k, "").isdigit()}


def server_settings(source: Source, target: PitrTarget, segment_size: int, minimums: dict[str, str]) -> dict:
    archive = str(source.spec.archive_dir) if source.spec.archive_dir else None
    if archive is None:
        raise PitrError(f"{source.name}: restoring from an archive in S3 only is not built yet")
    command = (f"{sys.executable} -m backupkit.wal.restore_command --archive {archive} "
               f"--segment-size {segment_size} %f %p")
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
                 timeout: float = 600.0, role: str = "pitr", work_root: Path | None = None) -> dict:
    """Restore ``source_name`` to ``target`` on a scratch server, run ``checks``, tear it down.

    ``work_root``: where the scratch server lives (a run's scratch directory,
    :func:`backupkit.restore.scratch.run_scratch_dir`, so the run's teardown and the orphan sweep
    find what a crash left); default ``<scratch root>/pitr``.

    Returns ``{source, kind, backup, role, target_time, ok, duration_seconds, checks, problems, ...}``
    (the restore-test result shape); a problem is a check, never an exception.
    """
    from backupkit.restore.scratch import local_scratch_root

    source = config.source(source_name)
    t0, started = time.monotonic(), clock.now()
    base = {"source": source.name, "kind": source.kind, "backup": "", "role": role, "backend": "local",
            "target_time": target.time.isoformat(), "target_timeline": target.timeline,
            "started_at": started.isoformat(), "duration_seconds": None, "verified_rows": 0, "location": None}
    out: list[CheckResult] = []
    art = source.name
    try:
        check_in_window(config, source, target.time)
        name, path, end = base_backup_for(source, target.time)
    except (PitrError, OSError) as exc:
        return _finish(base, [CheckResult(art, "pitr_target", False, str(exc))], t0)
    art = f"{source.name}/{name}"
    base.update(backup=name, location=str(path), base_backup_end=end.isoformat())
    root = Path(work_root) if work_root else local_scratch_root(config) / "pitr"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pitr-", dir=root))
    work.chmod(0o711)
    user = server_user()
    make_traversable(work, user)
    # The restore_command is this interpreter, run by the server's user (as root: an unprivileged one).
    make_traversable(Path(os.path.realpath(sys.executable)).parent, user)
    server = PitrServer(work / "data", port=free_port())
    try:
        from backupkit.wal.archive import LocalArchive
        from backupkit.wal.inventory import sample_geometry

        archive = LocalArchive(source.spec.archive_dir)
        geometry, why = sample_geometry(list(archive.entries()), archive)
        if geometry is None:
            return _finish(base, [CheckResult(art, "pitr_target", False, f"archive unreadable: {why}")], t0)
        minimums = prepare_copy(path, server.data_dir, user)
        server.settings = server_settings(source, target, geometry.segment_size, minimums)
        try:
            server.start(timeout=120)
        except RuntimeError as exc:
            return _finish(base, [CheckResult(art, "pitr_start", False, str(exc)[-3000:])], t0)
        reached, detail = wait_for_target(server, target, timeout)
        out.append(CheckResult(art, "pitr_reached", reached, f"target {target.pg_time}: {detail}"))
        if reached and checks is not None:
            out += checks(server, target)
    except PitrError as exc:
        out.append(CheckResult(art, "pitr_target", False, str(exc)))
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    base["restore_seconds"] = round(time.monotonic() - t0, 3)
    return _finish(base, out, t0)


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
           "wal_source_for", "check_pitr_request", "database_answers",
           "base_backup_for", "check_in_window", "server_settings", "prepare_copy"]
