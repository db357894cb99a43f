"""Restore a pg_dump backup on local disk into a database (a scratch server's, or a new one beside the app's).

The bytes come from :mod:`backupkit.restore.fetch` (an S3 copy is downloaded and checked
first). Nothing in a backup is trusted to run with more than the restore needs
(docs/restore.md, "What a restore may execute"):

- every restore connects as a **role of its own** (:meth:`ScratchDatabase.open_restore_role`):
  a login role, not a superuser, no CREATEDB/CREATEROLE/REPLICATION/BYPASSRLS, owner of the
  new database only; so ``COPY ... TO/FROM PROGRAM``, server-side file access, ``ALTER SYSTEM``
  and untrusted extensions fail whatever the dump says. Afterwards its objects go to the
  connection's user and the role is dropped.
- custom, directory: ``pg_restore --jobs N --no-owner --exit-on-error`` (pg_restore sends SQL
  only; it runs no psql meta-command).
- tar: the same, but pg_restore cannot restore a tar archive in parallel, so it runs with
  one job (the result says so).
- plain (``.sql``, ``.sql.gz``, ``.sql.zst``, ``.sql.lz4``: the compression from the content,
  not the name): read whole before psql starts by the dump verification's statement reader
  (:mod:`backupkit.checks.plainsql`, docs/dump-rules.md: pg_dump's statements and COPY blocks
  only, no psql meta-command but pg_dump's own restrict pair, its completion line last); then
  streamed into ``psql -X -v ON_ERROR_STOP=1 --single-transaction`` behind ``\\restrict KEY``
  with a key drawn for the run, sent before the dump's first byte, so psql refuses every
  backslash command (the dump's own pair is left out: psql refuses a nested ``\\restrict``).
  Should the second reading differ, psql is killed before its transaction commits.

Every failure raises :class:`RestoreFailed` naming the backup and carrying the client's
stderr, bounded (its start, and its end where the error is).
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from backupkit.checks.detect import DESCRIPTIONS, HEAD, detect_head
from backupkit.checks.pgdump import check_sql
from backupkit.checks.stream import StreamProblem, Tap, decoded_pieces
from backupkit.pgbin import pg_bin
from backupkit.restore.scratch import RoleSession, ScratchDatabase, check_identifier

FORMATS = ("custom", "tar", "directory", "plain")
PLAIN_KINDS = {"sql": None, "sql_gzip": "gzip", "sql_zstd": "zstd", "sql_lz4": "lz4"}


class RestoreFailed(RuntimeError):
    """The restore did not complete; the message names the backup and the client's error."""

    def __init__(self, backup: str, problem: str, stderr: str = ""):
        self.backup, self.problem, self.stderr = backup, problem, stderr
        msg = f"restore of {backup} failed: {problem}"
        if stderr:
            msg += f"\n{stderr}"
        super().__init__(msg)


@dataclass(frozen=True)
class RestoreResult:
    backup: str
    database: str
    fmt: str
    jobs: int
    duration_seconds: float  # preparing the database plus the restore
    restore_seconds: float  # pg_restore / psql alone
    bytes_read: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"backup": self.backup, "database": self.database, "fmt": self.fmt, "jobs": self.jobs,
                "duration_seconds": round(self.duration_seconds, 3),
                "restore_seconds": round(self.restore_seconds, 3),
                "bytes_read": self.bytes_read, "notes": list(self.notes)}


def _read_stderr(f: IO[bytes], limit: int) -> str:
    """At most ``limit`` characters of a client's stderr: its start (context) and its end
    (the clients stop on the first error, so the error itself is last)."""
    size = f.seek(0, 2)
    f.seek(0)
    if size <= limit:
        return f.read().decode("utf-8", "replace").strip()
    head_n = limit // 4
    head = f.read(head_n).decode("utf-8", "replace")
    f.seek(size - (limit - head_n))
    tail = f.read().decode("utf-8", "replace")
    return f"{head}\n... ({size - limit} bytes omitted) ...\n{tail}".strip()


# -- plain SQL ------------------------------------------------------------------------------------
class DumpUnusable(ValueError):
    """The plain dump must not or cannot be restored; the message says why."""


def _compression(path: Path) -> str | None:
    """The compression of a plain dump from its content (gzip, zstd, lz4 or none), or DumpUnusable."""
    with open(path, "rb") as f:
        kind, detail = detect_head(f.read(HEAD))
    if kind not in PLAIN_KINDS:
        raise DumpUnusable(f"not plain SQL: {DESCRIPTIONS.get(kind, detail or kind)}")
    return PLAIN_KINDS[kind]


def check_plain(path: Path) -> str | None:
    """The whole first reading, before anything runs, by the dump verification's statement reader
    (:func:`backupkit.checks.pgdump.check_sql`, rules in docs/dump-rules.md): the stream intact,
    only pg_dump's statements, COPY blocks and restrict pair, its completion line last. Returns the
    dump's ``\\restrict`` key (None for a pg_dump before 18); raises :class:`DumpUnusable`."""
    compression = _compression(path)
    with open(path, "rb") as f:
        results, scan = check_sql(Tap(f), str(path), compression)
    failed = [r for r in results if not r.ok]
    if failed or scan is None:
        raise DumpUnusable("; ".join(f"{r.check}: {r.detail}" for r in failed[:3]))
    return scan.restrict_key


def without_restrict(pieces: Iterable[bytes], key: str | None) -> Iterator[bytes]:
    """The dump's bytes without its own ``\\restrict KEY`` and ``\\unrestrict KEY`` lines: the
    restorer's restriction is in force, and psql refuses a nested one."""
    if not key:
        yield from pieces
        return
    lines = [b"\n\\restrict " + key.encode() + b"\n", b"\n\\unrestrict " + key.encode() + b"\n"]
    keep = max(len(line) for line in lines)
    buf, first = b"\n", True  # a virtual newline: a line at the very start is a line start too
    for piece in pieces:
        buf += piece
        for line in lines:
            buf = buf.replace(line, b"\n")
        if len(buf) > keep:
            out, buf = buf[:-keep], buf[-keep:]
            yield out[1:] if first else out
            first = False
    yield buf[1:] if first else buf


def _restore_plain(path: Path, key: str | None, session: RoleSession, database: str, label: str,
                   stderr_limit: int) -> int:
    compression = _compression(path)
    args = [pg_bin("psql"), *session.conn_args(database), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "--single-transaction", "-f", "-"]
    with tempfile.TemporaryFile() as err, open(path, "rb") as raw:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                env=session.client_env())
        problem = None
        try:
            proc.stdin.write(b"\\restrict " + secrets.token_hex(32).encode() + b"\n")
            for piece in without_restrict(decoded_pieces(Tap(raw), compression), key):
                proc.stdin.write(piece)
        except BrokenPipeError:  # psql stopped on an error: its stderr says which
            pass
        except StreamProblem as exc:  # the file changed between the two readings
            problem = f"the dump changed while it was restored: {exc}"
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if problem is not None:
            # Kill, do not close stdin: closing would let psql COMMIT the partial restore.
            proc.kill()
            proc.wait()
            raise RestoreFailed(label, problem, _read_stderr(err, stderr_limit))
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = proc.wait()
        if rc != 0:
            raise RestoreFailed(label, f"psql exited with status {rc}", _read_stderr(err, stderr_limit))
    return path.stat().st_size


def _pg_restore(path: Path, session: RoleSession, database: str, fmt: str, jobs: int, label: str,
                stderr_limit: int, no_privileges: bool) -> None:
    flag = {"custom": "-Fc", "tar": "-Ft", "directory": "-Fd"}[fmt]
    args = [pg_bin("pg_restore"), *session.conn_args(database), flag, "--jobs", str(jobs), "--no-owner",
            "--exit-on-error"]
    if no_privileges:
        args.append("--no-privileges")
    args.append(str(path))
    with tempfile.TemporaryFile() as err:
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                              env=session.client_env())
        if proc.returncode != 0:
            raise RestoreFailed(label, f"pg_restore exited with status {proc.returncode}",
                                _read_stderr(err, stderr_limit))


def restore_dump(path: str | Path, scratch: ScratchDatabase, *, fmt: str, jobs: int = 1,
                 database: str = "restored", label: str | None = None, roles: tuple[str, ...] = (),
                 no_privileges: bool = True, stderr_limit: int = 4000) -> RestoreResult:
    """Restore the dump at ``path`` into a new database ``database`` on ``scratch``, as a role
    of its own (module doc), and measure it.

    ``roles`` are created (NOLOGIN) first for dumps that name owners or grantees, and granted
    to the restore role; with ``no_privileges`` (default) pg_restore skips GRANTs, whose roles a
    scratch server lacks. Raises :class:`RestoreFailed` naming the backup.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown dump format {fmt!r} (one of {', '.join(FORMATS)})")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    check_identifier(database)
    path = Path(path)
    label = label or str(path)
    notes: list[str] = []
    effective_jobs = jobs
    if fmt == "tar" and jobs > 1:
        effective_jobs = 1
        notes.append(f"tar format cannot be restored in parallel: ran with 1 job instead of {jobs}")
    if fmt == "plain":
        effective_jobs = 1
    if not path.exists():
        raise RestoreFailed(label, "backup not found")

    key = None
    if fmt == "plain":  # judged whole before anything happens, the new database included
        try:
            key = check_plain(path)
        except DumpUnusable as exc:
            raise RestoreFailed(label, f"refused before anything ran: {exc}") from None
    start = time.monotonic()
    try:
        created = scratch.create_roles(roles)
        session = scratch.open_restore_role(database, grant=created)
    except Exception as exc:
        raise RestoreFailed(label, f"could not prepare database {database!r}: {exc}") from exc
    t0 = time.monotonic()
    try:
        if fmt == "plain":
            n = _restore_plain(path, key, session, database, label, stderr_limit)
        else:
            n = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*")
                                                               if p.is_file())
            _pg_restore(path, session, database, fmt, effective_jobs, label, stderr_limit, no_privileges)
    except BaseException:
        scratch.close_restore_role(session, database)
        raise
    restore_s = time.monotonic() - t0
    problem = scratch.close_restore_role(session, database)
    if problem:
        raise RestoreFailed(label, problem)
    return RestoreResult(backup=label, database=database, fmt=fmt, jobs=effective_jobs,
                         duration_seconds=time.monotonic() - start, restore_seconds=restore_s,
                         bytes_read=n, notes=tuple(notes))
