"""Restore a pg_dump backup on local disk into a database (a scratch server's, or a new one beside the app's).

The bytes come from :mod:`backupkit.restore.fetch` (an S3 copy is downloaded and checked first).

- custom, directory: ``pg_restore --jobs N --no-owner --exit-on-error``.
- tar: the same, but pg_restore cannot restore a tar archive in parallel, so it runs with
  one job (the result says so).
- plain (``.sql`` or ``.sql.gz``, detected by the gzip magic, not the name): streamed
  through gzip decompression into ``psql -v ON_ERROR_STOP=1 --single-transaction``.
  A plain dump cut short at a statement boundary would otherwise restore "successfully",
  so the stream must contain pg_dump's completion comment; if it does not (or the gzip
  stream is damaged) psql is killed before its transaction commits.

Every failure raises :class:`RestoreFailed` naming the backup and carrying the client's
stderr, bounded (its start, and its end where the error is).
"""

from __future__ import annotations

import gzip
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from backupkit.pgbin import pg_bin
from backupkit.restore.scratch import ScratchDatabase, check_identifier

CHUNK = 1 << 20
FORMATS = ("custom", "tar", "directory", "plain")
COMPLETION_MARKER = b"-- PostgreSQL database dump complete"
# PostgreSQL 18 writes "\unrestrict <key>" after the completion comment, so look for the
# marker in the last few KiB rather than on the last line.
_TAIL = 8192


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


# -- plain SQL streams --------------------------------------------------------------------
class _Counted:
    """``head`` followed by the rest of ``raw``, counting the raw bytes read."""

    def __init__(self, head: bytes, raw: IO[bytes]):
        self.head, self.raw, self.count = head, raw, len(head)

    def _raw(self, n: int) -> bytes:
        data = self.raw.read() if n < 0 else self.raw.read(n)
        self.count += len(data)
        return data

    def read(self, n: int | None = -1) -> bytes:
        n = -1 if n is None else n
        head = self.head[:n] if n >= 0 else self.head
        self.head = self.head[len(head):]
        if n < 0:
            return head + self._raw(-1)
        return head + (self._raw(n - len(head)) if len(head) < n else b"")


def _sql_stream(raw: IO[bytes]) -> tuple[IO[bytes], _Counted]:
    """The SQL text of a plain dump: gunzipped when it starts with the gzip magic."""
    head = raw.read(2)
    counted = _Counted(head, raw)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=counted, mode="rb"), counted
    return counted, counted


def _restore_plain(raw: IO[bytes], scratch: ScratchDatabase, database: str, label: str,
                   stderr_limit: int, require_complete: bool) -> int:
    args = [pg_bin("psql"), *scratch.conn_args(database), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "--single-transaction", "-f", "-"]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                env=scratch.client_env())
        tail, problem = b"", None
        try:
            stream, counted = _sql_stream(raw)
            while True:
                try:
                    chunk = stream.read(CHUNK)
                except (EOFError, OSError, zlib.error) as exc:
                    problem = f"the compressed stream is damaged ({exc})"
                    break
                if not chunk:
                    break
                tail = (tail + chunk)[-_TAIL:]
                try:
                    proc.stdin.write(chunk)
                except BrokenPipeError:  # psql stopped on an error: its stderr says which
                    break
            if problem is None and proc.poll() is None and require_complete and COMPLETION_MARKER not in tail:
                problem = "the dump is incomplete (pg_dump's completion comment is missing)"
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
    return counted.count


def _pg_restore(path: Path, scratch: ScratchDatabase, database: str, fmt: str, jobs: int, label: str,
                stderr_limit: int, no_privileges: bool) -> None:
    flag = {"custom": "-Fc", "tar": "-Ft", "directory": "-Fd"}[fmt]
    args = [pg_bin("pg_restore"), *scratch.conn_args(database), flag, "--jobs", str(jobs), "--no-owner",
            "--exit-on-error"]
    if no_privileges:
        args.append("--no-privileges")
    args.append(str(path))
    with tempfile.TemporaryFile() as err:
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                              env=scratch.client_env())
        if proc.returncode != 0:
            raise RestoreFailed(label, f"pg_restore exited with status {proc.returncode}",
                                _read_stderr(err, stderr_limit))


def restore_dump(path: str | Path, scratch: ScratchDatabase, *, fmt: str, jobs: int = 1,
                 database: str = "restored", label: str | None = None, roles: tuple[str, ...] = (),
                 no_privileges: bool = True, require_complete: bool = True, stderr_limit: int = 4000) -> RestoreResult:
    """Restore the dump at ``path`` into a new database ``database`` on ``scratch`` and measure it.

    ``roles`` are created (NOLOGIN) first for dumps that name owners or grantees; with
    ``no_privileges`` (default) pg_restore skips GRANTs, whose roles a scratch server lacks.
    Raises :class:`RestoreFailed` naming the backup.
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

    start = time.monotonic()
    try:
        scratch.create_roles(roles)
        scratch.create_database(database)
    except Exception as exc:
        raise RestoreFailed(label, f"could not prepare scratch database {database!r}: {exc}") from exc
    t0 = time.monotonic()
    if fmt == "plain":
        try:
            with open(path, "rb") as f:
                n = _restore_plain(f, scratch, database, label, stderr_limit, require_complete)
        except RestoreFailed:
            raise
        except Exception as exc:
            raise RestoreFailed(label, f"{type(exc).__name__}: {exc}") from exc
    else:
        n = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        _pg_restore(path, scratch, database, fmt, effective_jobs, label, stderr_limit, no_privileges)
    return RestoreResult(backup=label, database=database, fmt=fmt, jobs=effective_jobs,
                         duration_seconds=time.monotonic() - start, restore_seconds=time.monotonic() - t0,
                         bytes_read=n, notes=tuple(notes))
