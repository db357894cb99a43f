"""Real WAL archives for the tests, made once per session by the bundled PostgreSQL 18.

One primary with 1 MB segments archives into a directory (``archive_command`` copying
each finished segment, refusing to overwrite, as the PostgreSQL documentation suggests);
it gets a plain and a tar ``pg_basebackup``, restore points and enough writes for records
that cross page and segment boundaries, full-page images plain and pglz-compressed, and
one 6 MB record that continues over whole segments. Then
real point-in-time recoveries of the plain base backup, promoted:

- ``tl2``: the primary's archive plus timeline 2, made by a recovery to restore point
  ``rp_a`` that archives into the same archive (what a team does after a bad deploy);
- ``fork_b``: a second, independent recovery of the same base backup to ``rp_b`` that
  also becomes timeline 2 (it could not see the first one's history) and archives into
  its own directory: merged into ``tl2`` it is the split brain the verifier must name.

Everything is made in a few seconds; tests damage copies, never these directories.

Times: the archive's file mtimes are written by the kernel, its records' commit times by the
servers, and checks ask :func:`backupkit.clock.now`. Under Debian's libfaketime the servers and
this process share the faked clock, but the kernel does not, and libfaketime 0.9.10 does not wrap
``stat64``/``fstatat64``/``statx`` (what Python 3.11 on glibc 2.33+ calls), so this process reads
the kernel's real mtimes: a segment archived a second ago looks 30 days old. :func:`wait_archived`
therefore puts the archived files' mtimes on the tests' clock (:func:`on_test_clock`; a no-op, to
the millisecond, on the real clock), and :attr:`WalArchives.archived_at` is the archive's own "now".
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from backupkit import clock
from backupkit.pgbin import pg_bin
from backupkit.pgserver import LocalPostgres, server_user
from sandbox import walarchive

SEGMENT_SIZE = 1024 * 1024


@dataclass(frozen=True)
class WalArchives:
    """Read-only results of :func:`build_wal_archives` (copy before damaging)."""

    tl1: Path           # the primary's archive only: timeline 1, both base backups' labels
    tl2: Path           # tl1 plus timeline 2 from a real PITR promotion at restore point rp_a
    fork_b: Path        # what the second, independent promotion (also "timeline 2") archived
    base_plain: Path    # pg_basebackup -Fp (with its WAL, -X stream) taken first
    base_tar: Path      # pg_basebackup -Ft -X none taken later
    rp_a_lsn: str       # where restore points rp_a and rp_b were made on timeline 1
    rp_b_lsn: str
    archived_at: datetime   # when the last file was archived, on the tests' clock: the archives' "now"


def _give_to_server_user(path: Path) -> None:
    """Let the server's user (``nobody`` when we are root) own ``path`` and all below it."""
    user = server_user()
    if not user:
        return
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def _archive_settings(archive: Path) -> dict[str, str]:
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"test ! -f {archive}/%f && cp %p {archive}/%f",
        "full_page_writes": "on",
        "max_wal_senders": "4",
        "checkpoint_timeout": "30min",
        "log_timezone": "UTC",
        "timezone": "UTC",
    }


def archiving_server(archive: Path, base: Path, data: Path) -> LocalPostgres:
    """A started server with 1 MB segments archiving into ``archive`` as the sandbox's does
    (``base`` made ready for its base backups)."""
    walarchive.prepare_dirs(archive, base)
    return LocalPostgres(data, initdb_args=["--wal-segsize=1"], settings=walarchive.archive_settings(archive)).start()


def wait_archived(server: LocalPostgres, archive: Path | None = None, timeout: float = 60) -> None:
    """Switch to a new segment, wait until the archiver has archived the finished one (the sandbox's
    wait) and, given the ``archive`` directory, put its files' mtimes on the tests' clock."""
    said: list[str] = []
    if not walarchive.wait_archived(server, timeout=timeout, say=said.append):
        raise TimeoutError(said[0])
    if archive is not None:
        on_test_clock(archive)


_STAMPED: dict[Path, int] = {}   # file -> the mtime (ns) on_test_clock gave it


def on_test_clock(directory: Path) -> None:
    """Move the mtimes of the files in ``directory`` from the kernel's clock to :func:`clock.now`'s.

    The offset is measured, not assumed: a probe file's mtime (the kernel's clock, as this process
    reads it) against ``clock.now()`` at the same instant. A file already moved is left alone, so
    files archived later can be moved by a later call.
    """
    fd, probe = tempfile.mkstemp(prefix=".clock-probe-", dir=directory)
    try:
        offset = clock.now().timestamp() * 1e9 - os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        os.unlink(probe)
    for f in sorted(directory.iterdir()):
        st = f.stat()
        if _STAMPED.get(f) == st.st_mtime_ns:
            continue
        moved = st.st_mtime_ns + int(offset)
        os.utime(f, ns=(st.st_atime_ns, moved))
        _STAMPED[f] = moved


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


def _writes(server: LocalPostgres, rows: int, *, compressed_images: bool = False) -> None:
    """Inserts, updates and a checkpoint (so full-page images follow), one transaction per statement."""
    compression = "SET wal_compression = pglz;" if compressed_images else ""
    server.psql(f"""{compression}
        INSERT INTO marks (at, payload) SELECT clock_timestamp(), repeat(md5(g::text), 8)
            FROM generate_series(1, {rows}) g;
        CHECKPOINT;
        UPDATE marks SET payload = md5(payload) WHERE id % 3 = 0;
        INSERT INTO marks (at, payload) VALUES (clock_timestamp(), 'last');
    """)


def _start_recovery(base: Path, data: Path, restore_from: Path, archive_to: Path, target: str) -> LocalPostgres:
    shutil.copytree(base, data)
    (data / "recovery.signal").touch()
    _give_to_server_user(data)
    os.chmod(data, 0o700)
    settings = _archive_settings(archive_to) | {
        "restore_command": f"cp {restore_from}/%f %p",
        "recovery_target_name": target,
        "recovery_target_action": "promote",
    }
    server = LocalPostgres(data, settings=settings).start()
    deadline = time.monotonic() + 30
    while server.psql("SELECT pg_is_in_recovery()").strip() != "f":
        if time.monotonic() > deadline:
            raise TimeoutError(f"recovery of {base} to {target} did not promote")
        time.sleep(0.05)
    return server


def build_wal_archives(root: Path) -> WalArchives:
    root.mkdir(parents=True, exist_ok=True)
    archive, fork_dir = root / "archive", root / "fork-b"
    for d in (archive, fork_dir):
        d.mkdir()
    _give_to_server_user(root)
    primary = LocalPostgres(root / "primary", initdb_args=["--wal-segsize=1"], settings=_archive_settings(archive))
    primary.start()
    try:
        primary.psql("CREATE TABLE marks (id bigserial PRIMARY KEY, at timestamptz NOT NULL, payload text)")
        _writes(primary, 500)
        base_plain = root / "base-plain"
        _run(pg_bin("pg_basebackup"), *primary.conn_args()[:-2], "-D", str(base_plain), "-Fp",
             "-X", "stream", "-c", "fast", "--no-sync")
        _writes(primary, 3000)
        # One record of 6 MB: it continues over six whole 1 MB segments.
        primary.psql("SELECT pg_logical_emit_message(true, 'big', repeat(md5(g::text), 200000)) "
                     "FROM generate_series(1, 1) g")
        rp_a = primary.psql("SELECT pg_create_restore_point('rp_a')").strip()
        _writes(primary, 3000, compressed_images=True)
        rp_b = primary.psql("SELECT pg_create_restore_point('rp_b')").strip()
        base_tar = root / "base-tar"
        _run(pg_bin("pg_basebackup"), *primary.conn_args()[:-2], "-D", str(base_tar), "-Ft",
             "-X", "none", "-c", "fast", "--no-sync")
        _writes(primary, 2000)
        wait_archived(primary, archive)
    except Exception as exc:
        log = primary.data_dir / "server.log"
        raise RuntimeError(f"{exc}\n--- server log ---\n{log.read_text()[-3000:] if log.exists() else ''}") from exc
    finally:
        primary.destroy()
    tl1 = root / "tl1"
    shutil.copytree(archive, tl1)
    _give_to_server_user(tl1)

    a = _start_recovery(base_plain, root / "pitr-a", tl1, archive, "rp_a")
    try:
        a.psql("INSERT INTO marks (at, payload) VALUES (clock_timestamp(), 'timeline 2')")
        _writes(a, 1500)
        wait_archived(a, archive)
    finally:
        a.destroy()
    b = _start_recovery(base_plain, root / "pitr-b", tl1, fork_dir, "rp_b")
    try:
        _writes(b, 1500)
        wait_archived(b, fork_dir)
    finally:
        b.destroy()
    return WalArchives(tl1=tl1, tl2=archive, fork_b=fork_dir, base_plain=base_plain, base_tar=base_tar,
                       rp_a_lsn=rp_a, rp_b_lsn=rp_b, archived_at=clock.now())


@contextmanager
def wal_fixture_dir() -> Iterator[Path]:
    """A directory for the servers, outside pytest's basetemp: every new pytest session on the
    machine takes the group and other bits off /tmp/pytest-of-<user>, which would lock out
    PostgreSQL's unprivileged user in the middle of a run."""
    root = Path(tempfile.mkdtemp(prefix="bk-wal-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def copy_archive(src: Path, dst: Path, *, only: tuple[str, ...] | None = None) -> Path:
    """A damageable copy of an archive directory (all files, or the ones named in ``only``)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if only is None or f.name in only:
            shutil.copy2(f, dst / f.name)
    return dst


_RECORD = re.compile(r"len \(rec/tot\):\s*(\d+)/\s*(\d+), tx:\s*\d+, lsn: ([0-9A-F]+)/([0-9A-F]+)")
_ERROR_LSN = re.compile(r"([0-9A-F]+)/([0-9A-F]+)")


def waldump(archive: Path, first: str, last: str, *, quiet: bool = True) -> subprocess.CompletedProcess:
    """The oracle: pg_waldump over segments ``first``..``last`` (one timeline) of ``archive``."""
    args = [pg_bin("pg_waldump"), "-p", str(archive), "-t", str(int(first[:8], 16))]
    return subprocess.run([*args, *(["-q"] if quiet else []), first, last], capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C"}, timeout=60)


def records(archive: Path, segment: str) -> list[tuple[int, int]]:
    """(LSN, total length) of every record pg_waldump reads starting in ``segment``."""
    out = waldump(archive, segment, segment, quiet=False).stdout
    return [(int(m.group(3), 16) << 32 | int(m.group(4), 16), int(m.group(2))) for m in _RECORD.finditer(out)]


_XACT_END = re.compile(r"tx:\s*(\d+), lsn: ([0-9A-F]+)/([0-9A-F]+),.*desc: (?:COMMIT|ABORT) "
                       r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")


def first_stop_after(archive: Path, target: datetime, *, tli: int = 1) -> tuple[str, int]:
    """(segment, xid) of the first commit or abort recorded after ``target`` in ``archive`` (pg_waldump,
    the oracle): where recovery to ``target`` stops, so the segment holding that record's end is
    one the recovery cannot do without (whatever else was written around it)."""
    from backupkit.wal.naming import segment_name

    segs = sorted(p.name for p in archive.iterdir() if len(p.name) == 24 and int(p.name[:8], 16) == tli)
    out = subprocess.run([pg_bin("pg_waldump"), "-p", str(archive), "-t", str(tli), "-r", "Transaction",
                          segs[0], segs[-1]], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LC_ALL": "C", "TZ": "UTC"}).stdout
    for line in out.splitlines():
        m = _XACT_END.search(line) if (rec := _RECORD.search(line)) else None
        if m and datetime.fromisoformat(m.group(4) + "+00:00") > target:
            end = (int(m.group(2), 16) << 32 | int(m.group(3), 16)) + int(rec.group(2))
            return segment_name(tli, (end - 1) // SEGMENT_SIZE, SEGMENT_SIZE), int(m.group(1))
    raise AssertionError(f"no commit after {target} in {archive}")


def error_lsn(stderr: str) -> int | None:
    """The LSN pg_waldump's error message names last (the failing record or page)."""
    found = _ERROR_LSN.findall(stderr)
    return int(found[-1][0], 16) << 32 | int(found[-1][1], 16) if found else None


__all__ = ["WalArchives", "build_wal_archives", "wal_fixture_dir", "wait_archived", "on_test_clock", "SEGMENT_SIZE", "copy_archive", "waldump",
           "records", "error_lsn", "first_stop_after"]


PITR_YAML = """bucket: {{name: {bucket}}}
wal_archives:
  - name: {name}
    local_dir: {root}/base
    s3_prefix: basebackups/
    pattern: base_%Y%m%d_%H%M%S
    archive_dir: {root}/archive
    max_age: 30d
    markers_table: postgres.public.pitr_markers
verification: {{state_dir: {root}/state}}
restore: {{scratch_dir: {root}/scratch}}
"""


def pitr_yaml(name: str, root: Path, bucket: str = "trixtech-backups") -> str:
    """The configuration of one WAL source with a local archive and base backups under ``root``
    (the PITR tests' site; markers in ``postgres.public.pitr_markers``)."""
    return PITR_YAML.format(name=name, root=root, bucket=bucket)
