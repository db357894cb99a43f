"""The sandbox's WAL archive: its server archives, takes nightly base backups, and a writer leaves markers.

``make up`` runs the booking server with ``archive_mode = on``, 1 MB segments (``initdb
--wal-segsize=1``; an older sandbox's cluster is converted once with ``pg_resetwal
--wal-segsize=1`` while it is shut down), an ``archive_command`` that copies each finished
segment into ``.sandbox/wal/archive`` (never over an existing file, through a temporary
name so a half-copied segment never carries a segment's name) and ``archive_timeout`` of
15 minutes. :func:`ensure` takes a ``pg_basebackup`` into ``.sandbox/wal/base`` when the
newest is from before last night's 02:00 UTC, and syncs the archive and the base backups
to the bucket. The detached writer (``python -m sandbox.walarchive``) inserts one
timestamped row a minute into ``postgres.public.pitr_markers`` (outside the booking
database, so its dumps and row-count manifests are not affected; a point-in-time restore
of the cluster brings the markers along), takes the nightly base backup at 02:00 UTC and
syncs every 5 minutes. The configuration's ``trixtech-wal`` source (enabled by
``BACKUP_WAL_ARCHIVE=true``) is what the daily DAG verifies.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from backupkit import clock
from backupkit.catalog import local_backups
from backupkit.config import Config, Source
from backupkit.pgbin import pg_bin
from backupkit.pgserver import LocalPostgres, server_user

SEGMENT_SIZE_MB = 1
ARCHIVE_TIMEOUT = "15min"
BASE_HOUR_UTC = 2
MARK_SECONDS = 60
SYNC_SECONDS = 300
MARKERS_DB = "postgres"
MARKERS_TABLE = "public.pitr_markers"
WAL_PROCESS = "sandbox.walarchive"


def archive_settings(archive: Path) -> dict[str, str]:
    """Server parameters for archiving into ``archive`` (given at every start)."""
    a = shlex.quote(str(archive))
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"test ! -f {a}/%f && cp %p {a}/.%f.tmp && mv {a}/.%f.tmp {a}/%f",
        "archive_timeout": ARCHIVE_TIMEOUT,
        "full_page_writes": "on",   # LocalPostgres turns it off for speed; a PITR source keeps it
    }


def prepare_dirs(archive: Path, base: Path) -> None:
    """The archive (written by the server's user) and the base backups' directory."""
    for d in (archive, base):
        d.mkdir(parents=True, exist_ok=True)
    user = server_user()
    if user:
        import pwd

        pw = pwd.getpwnam(user)
        os.chown(archive, pw.pw_uid, pw.pw_gid)


def wal_source(config: Config) -> Source | None:
    """The configured (enabled) WAL archive of the sandbox's server, if any."""
    return next((s for s in config.sources if s.kind == "wal_archive"), None)


# -- the server --------------------------------------------------------------------------------
def segment_size(pg: LocalPostgres) -> int:
    return int(pg.psql("SELECT setting::bigint * (CASE unit WHEN 'B' THEN 1 WHEN 'kB' THEN 1024 ELSE 1048576 END) "
                       "FROM pg_settings WHERE name = 'wal_segment_size'").strip())


def ensure_archiving(pg: LocalPostgres, say=print) -> None:
    """Restart the running server with the archiving settings (and 1 MB segments) when it lacks them."""
    wants_resize = segment_size(pg) != SEGMENT_SIZE_MB << 20
    archiving = pg.psql("SHOW archive_mode").strip() == "on"
    if archiving and not wants_resize:
        return
    pg.stop()
    if wants_resize:
        say(f"converting the cluster to {SEGMENT_SIZE_MB} MB WAL segments (pg_resetwal, once) ...")
        cmd = [pg_bin("pg_resetwal"), f"--wal-segsize={SEGMENT_SIZE_MB}", "-D", str(pg.data_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True, **pg._server_identity())  # as the server's user
        if proc.returncode != 0:
            raise RuntimeError(f"pg_resetwal failed: {proc.stderr.strip()}")
    pg.start()
    say("PostgreSQL restarted with archive_mode=on")


def ensure_markers(pg: LocalPostgres) -> None:
    pg.psql(f"CREATE TABLE IF NOT EXISTS {MARKERS_TABLE} (id bigserial PRIMARY KEY, "
            f"written_at timestamptz NOT NULL DEFAULT clock_timestamp(), note text NOT NULL)", MARKERS_DB)


def write_marker(pg: LocalPostgres, note: str = "sandbox writer") -> str:
    """One committed marker row; its ``written_at`` (the server's clock, just before the commit)."""
    return pg.psql(f"INSERT INTO {MARKERS_TABLE} (note) VALUES ('{note.replace(chr(39), '')}') "
                   f"RETURNING written_at", MARKERS_DB).strip()


# -- base backups -----------------------------------------------------------------------------
def base_backup_due(source: Source, now: datetime) -> bool:
    """None yet, or the newest is older than the last 02:00 UTC."""
    backups = local_backups(source)
    last_slot = now.replace(hour=BASE_HOUR_UTC, minute=0, second=0, microsecond=0)
    if last_slot > now:
        last_slot -= timedelta(days=1)
    return not backups or backups[-1].timestamp < last_slot


def take_base_backup(pg: LocalPostgres, source: Source, now: datetime) -> Path:
    """``pg_basebackup -Fp -X none`` (its WAL is in the archive) under a temporary name, then renamed."""
    out = source.local_dir / now.strftime(source.pattern.template)
    tmp = source.local_dir / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    source.local_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([pg_bin("pg_basebackup"), *pg.conn_args()[:-2], "-D", str(tmp), "-Fp", "-X", "none",
                           "-c", "fast"], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"pg_basebackup failed: {proc.stderr.strip()[-500:]}")
    tmp.rename(out)
    pg.psql("SELECT pg_switch_wal()")  # its end segment goes to the archive now, not in 15 minutes
    return out


# -- the copy in the bucket -------------------------------------------------------------------
def sync(config: Config, client: Any, source: Source) -> int:
    """Upload archived files and base backup files the bucket does not have yet; how many."""
    from backupkit.wal.naming import classify

    from backupkit.storage.objectstore import Bucket

    bucket = Bucket(client, config.bucket)

    def keys(prefix: str) -> set[str]:
        # Current objects only (a version listing costs moto a copy of the bucket): what retention
        # deleted in S3 it deleted locally too, so nothing deleted comes back.
        return {o.key for o in bucket.objects(prefix)}

    spec = source.spec
    items: list[tuple[Path, str]] = []
    known = keys(spec.archive_s3_prefix)
    for f in sorted(spec.archive_dir.iterdir()):
        if classify(f.name) is not None and spec.archive_s3_prefix + f.name not in known:
            items.append((f, spec.archive_s3_prefix + f.name))
    known = keys(source.s3_prefix)
    for b in local_backups(source):
        for f in sorted(p for p in b.path.rglob("*") if p.is_file()):
            key = f"{source.s3_prefix}{b.name}/{f.relative_to(b.path).as_posix()}"
            if key not in known:
                items.append((f, key))
    # With S3's SHA-256 (the object-lock bucket refuses uploads without a checksum), several at a time.
    return bucket.upload_many(items)


def wait_archived(pg: LocalPostgres, timeout: float = 60.0, say=print) -> bool:
    """Switch to a new segment and wait until the archiver has archived the one just finished.

    A base backup ends inside a segment that is archived only after it is switched away from;
    a daily run that starts before the archiver copied it finds "no base backup's WAL archived
    whole" on a healthy sandbox (a fixed one-second sleep lost that race under load).
    """
    # pg_switch_wal() returns the end of its switch record (inside the segment it finished), or, when
    # nothing was written since the last switch, the current segment's first byte: that segment is
    # not finished and never archived (a 60 s wait for nothing). One byte before is the finished
    # segment in both cases.
    done = pg.psql("SELECT pg_walfile_name(pg_switch_wal() - 1)").strip()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").strip()
        if not last.endswith(".history") and last[:8] == done[:8] and last >= done:
            return True
        time.sleep(0.2)
    say(f"warning: WAL segment {done} not archived after {timeout:.0f}s (see the server log)")
    return False


def ensure(config: Config, pg: LocalPostgres, client: Any, say=print) -> None:
    """Markers table, a base backup when one is due, a fresh segment archived, the bucket in sync."""
    source = wal_source(config)
    if source is None:
        return
    ensure_markers(pg)
    write_marker(pg, "make up")
    now = clock.now()
    if base_backup_due(source, now):
        say(f"taking a base backup into {take_base_backup(pg, source, now)}")
    wait_archived(pg, say=say)  # the first verification must see the base backup's WAL whole
    n = sync(config, client, source)
    if n:
        say(f"uploaded {n} WAL archive and base backup file(s) to s3://{config.bucket}")


# -- the writer process ---------------------------------------------------------------------
def start_writer(layout, ports: dict[str, int], say=print) -> int:
    """The writer (this module's ``main``), detached in its own session; its pid (reused when running)."""
    from backupkit.config import REPO_ROOT
    from sandbox.procs import running_pid, start_detached

    pid = running_pid(layout.pid_file("walwriter"), expect=WAL_PROCESS)
    if pid is not None:
        say(f"WAL marker writer already running (pid {pid})")
        return pid
    pid = start_detached([sys.executable, "-m", WAL_PROCESS, "--data-dir", str(layout.pg_data.resolve()),
                          "--port", str(ports["postgres"])], pid_file=layout.pid_file("walwriter"),
                         log_path=layout.logs / "walwriter.log", env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                         cwd=REPO_ROOT)
    say(f"WAL marker writer started (pid {pid}): a row a minute in {MARKERS_DB}.{MARKERS_TABLE}, "
        f"base backups nightly at 0{BASE_HOUR_UTC}:00 UTC")
    return pid


def stop_writer(layout, say=print) -> bool:
    import contextlib

    from sandbox.procs import running_pid, stop_group

    pid = running_pid(layout.pid_file("walwriter"), expect=WAL_PROCESS)
    if pid is None:
        return False
    stop_group(pid)
    with contextlib.suppress(FileNotFoundError):
        layout.pid_file("walwriter").unlink()
    say(f"WAL marker writer stopped (pid {pid})")
    return True


def run(data_dir: Path, port: int) -> int:
    from backupkit.config import load_config
    from backupkit.storage.objectstore import s3_client

    pg = LocalPostgres(data_dir, port=port)
    config = load_config()
    source = wal_source(config)
    if source is None:
        print("no enabled wal_archives source: nothing to do", file=sys.stderr)
        return 0
    client = s3_client(endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    last_sync = 0.0
    while True:
        try:
            ensure_markers(pg)
            write_marker(pg)
            if base_backup_due(source, clock.now()):
                print(f"base backup: {take_base_backup(pg, source, clock.now())}", flush=True)
            if time.monotonic() - last_sync > SYNC_SECONDS:
                print(f"synced {sync(config, client, source)} file(s)", flush=True)
                last_sync = time.monotonic()
        except Exception as exc:  # the server restarting, S3 away: try again next minute
            print(f"{clock.now():%Y-%m-%d %H:%M:%S} {type(exc).__name__}: {exc}", flush=True)
        time.sleep(MARK_SECONDS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.walarchive", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    return run(args.data_dir, args.port)


if __name__ == "__main__":
    sys.exit(main())
