"""Archived WAL handed to a recovering server by our process: PostgreSQL's restore_command only asks.

A point-in-time restore (:mod:`backupkit.restore.pitr`) starts a :class:`WalFetcher` before the
scratch server. It listens on a Unix socket in a private directory; the server's
``restore_command`` (:mod:`backupkit.wal.restore_command` ``--socket``) sends the file name
PostgreSQL asked for and receives the checked bytes. Why this shape (docs/wal.md,
"Point-in-time restore from S3"): the archive may be in S3, and the S3 access stays in this
process (an Airflow connection, an instance role): nothing the server runs, writes or logs
holds a credential, and the server's environment is scrubbed as well. A pre-fetch of "the
segments up to the target" was the other choice; the target's LSN is unknown until
recovery reaches it, and the timeline ``latest`` follows is chosen by the server, so it
would have to fetch the whole window.

Every file is checked before the server sees a byte of it (rules in docs/wal.md):

- the name is one :func:`~backupkit.wal.naming.classify` accepts, uncompressed;
- a segment inflates to exactly the segment size and its pages and records pass the
  verifier's :class:`~backupkit.wal.scan.Walker` (page magic of the base backup's PostgreSQL
  version, the base backup's system identifier, page addresses, timelines, record CRCs);
- a history file parses (:func:`~backupkit.wal.history.parse_history`), a label stays small.

Protocol: one request per connection, ``NAME\\n`` (at most 64 bytes); the answer is one line,
``OK <bytes>\\n`` followed by the bytes, ``NO <reason>\\n`` (not in the archive: normal, recovery
asks for files that do not exist yet) or ``BAD <reason>\\n`` (refused: damaged or not a WAL
name). What was refused or missing is kept (:attr:`WalFetcher.problems`, :attr:`missing`) so the
restore's verdict can name the segment recovery stopped at.

Stopping needs no timed wakeup: :meth:`WalFetcher.stop` shuts the listening socket down, which
ends the blocked ``accept`` at once (no stop flag polled every half second), and waits for the
thread by polling with ``time.sleep`` up to a deadline, not with ``Thread.join(timeout)``: Python's
lock waits time out at an absolute ``CLOCK_MONOTONIC`` deadline, which a faked or stepped clock
(Debian's libfaketime in ``make test-dates``) can put decades away (docs/wal.md, "Point-in-time
restore from S3").
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from backupkit.wal.archive import ArchiveReader, Unreadable
from backupkit.wal.history import HistoryError, parse_history
from backupkit.wal.naming import classify, segment_number
from backupkit.wal.scan import PAGE_MAGICS, Context, Walker

MAX_REQUEST = 64
CLIENT_TIMEOUT = 10.0      # a client that connects and says nothing is dropped
STOP_WAIT = CLIENT_TIMEOUT + 2.0   # seconds stop() waits for the request being answered
STOP_POLL = 0.02
DRAIN = 1 << 16            # what is read (and ignored) after the answer of an over-long request


def magic_for(pg_version: int) -> int:
    """The WAL page magic PostgreSQL ``pg_version`` writes (the base backup's PG_VERSION)."""
    for magic, version in PAGE_MAGICS.items():
        if version == pg_version:
            return magic
    raise ValueError(f"PostgreSQL {pg_version} WAL is not read here (15 to 18 are)")


@dataclass(frozen=True)
class Refusal:
    name: str
    reason: str


class _Checks:
    """The per-file check fed chunk by chunk through :func:`restore_command.fetch`'s ``inspect``."""

    def __init__(self, name: str, segment_size: int, sysid: int, magic: int):
        self.name, self.c = name, classify(name)
        self.segment_size, self.sysid, self.magic = segment_size, sysid, magic
        self.stored: str | None = None
        self.walker: Walker | None = None

    def __call__(self, stored: str, chunk) -> None:
        if self.c.kind == "history":
            try:
                parse_history(self.c.tli, bytes(chunk))
            except HistoryError as exc:
                raise Unreadable("corrupt", f"{stored}: {exc}") from None
            return
        if self.c.kind != "segment":
            return
        if stored != self.stored:  # a new attempt (another compression): a fresh walker
            self.stored = stored
            self.walker = Walker(Context(self.segment_size, self.magic, self.sysid, self.c.tli))
            segno = segment_number(self.c, self.segment_size)
            if segno is None:
                raise Unreadable("corrupt", f"{self.name}: not a segment name for {self.segment_size >> 20} MB "
                                            f"segments")
            self.walker.begin(self.name, segno, partial=self.c.partial)
        self.walker.window(chunk)
        scan = self.walker.scan
        if scan.problem:
            raise Unreadable(scan.problem, scan.detail)


def _drain(conn: socket.socket) -> None:
    """Close politely after the answer: unread input would make the close a reset the client may
    see before the answer."""
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(1.0)
    left = DRAIN
    while left > 0 and (chunk := conn.recv(min(left, 8192))):
        left -= len(chunk)


def _wake(sock: socket.socket, path: Path) -> None:
    """End a blocked ``accept`` on ``sock``: Linux fails it when the socket is shut down; elsewhere
    a connection of our own makes it return (the loop then sees the stop flag)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
        return
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(1.0)   # a socket timeout is a poll(): it fires under a faked clock
            c.connect(str(path))
    except OSError:
        pass   # not listening any more: nothing blocks


class WalFetcher:
    """Serves the files of ``reader`` on a Unix socket until :meth:`stop` (a daemon thread).

    :param segment_size: the archive's segment size
    :param sysid: the system identifier every segment's long page header must carry
    :param magic: the page magic of the base backup's PostgreSQL version (:func:`magic_for`)
    :param staging: a private directory where a file is checked before it is served (one file at a time)
    :param user: the server's user (as root), who must be able to connect
    """

    def __init__(self, reader: ArchiveReader, *, segment_size: int, sysid: int, magic: int, staging: Path,
                 user: str | None = None):
        self.reader, self.segment_size, self.sysid, self.magic = reader, segment_size, sysid, magic
        self.staging, self.user = Path(staging), user
        self.problems: list[Refusal] = []       # damaged or refused, in order
        self.missing: list[str] = []            # segments asked for and not in the archive, in order
        self.served: list[str] = []
        self._dir = Path(tempfile.mkdtemp(prefix="bkwal-"))   # short: a socket path has ~100 bytes
        self.socket_path = self._dir / "fetch.sock"
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "WalFetcher":
        self.staging.mkdir(parents=True, exist_ok=True)
        self.staging.chmod(0o700)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)   # connecting needs write permission: the server's user only
        if self.user:
            import pwd

            pw = pwd.getpwnam(self.user)
            os.chown(self.socket_path, pw.pw_uid, pw.pw_gid)
            self._dir.chmod(0o711)
        sock.listen(4)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="wal-fetcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the service: ``accept`` woken by a shutdown, the request under way given ``STOP_WAIT``."""
        self._stop.set()
        if self._sock is not None:
            _wake(self._sock, self.socket_path)
        if self._thread is not None:
            deadline = time.monotonic() + STOP_WAIT
            while self._thread.is_alive() and time.monotonic() < deadline:
                time.sleep(STOP_POLL)   # not join(timeout): see the module docstring
        if self._sock is not None:
            self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> "WalFetcher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return   # shut down by stop()
            if self._stop.is_set():   # the wake-up connection of _wake, or a late client
                conn.close()
                return
            with conn:
                try:
                    conn.settimeout(CLIENT_TIMEOUT)
                    self._answer(conn)
                    _drain(conn)
                except OSError:
                    continue   # the client went away (the server stopped): nothing to hand over

    # -- one request ---------------------------------------------------------------------------------
    def _answer(self, conn: socket.socket) -> None:
        request = b""
        while not request.endswith(b"\n") and len(request) <= MAX_REQUEST:
            chunk = conn.recv(MAX_REQUEST + 1 - len(request))
            if not chunk:
                break
            request += chunk
        name = request[:-1].decode("ascii", "replace") if request.endswith(b"\n") else None
        if name is None:
            conn.sendall(b"BAD request is not one line of at most 64 bytes\n")
            return
        path, verdict = self.prepare(name)
        if path is None:
            conn.sendall(verdict.encode("utf-8", "replace")[:4000].replace(b"\n", b" ") + b"\n")
            return
        try:
            size = path.stat().st_size
            conn.sendall(f"OK {size}\n".encode())
            with open(path, "rb") as f:
                conn.sendfile(f)
            self.served.append(name)
        finally:
            path.unlink(missing_ok=True)

    def prepare(self, name: str) -> tuple[Path | None, str]:
        """(checked copy in the staging directory, "") or (None, the ``NO``/``BAD`` answer line)."""
        from backupkit.wal.restore_command import fetch

        c = classify(name)
        if c is None or c.compression or "/" in name:
            return None, self._refuse(name, "not a WAL file name PostgreSQL asks for")
        dest = self.staging / name
        try:
            fetch(self.reader, name, dest, self.segment_size,
                  inspect=_Checks(name, self.segment_size, self.sysid, self.magic))
        except FileNotFoundError:
            if c.kind == "segment":
                self.missing.append(name)
            return None, f"NO {name} is not in {self.reader.location}"
        except (Unreadable, ValueError, OSError) as exc:
            return None, self._refuse(name, str(exc))
        return dest, ""

    def _refuse(self, name: str, reason: str) -> str:
        self.problems.append(Refusal(name, reason))
        return f"BAD {name}: {reason}"


__all__ = ["WalFetcher", "Refusal", "magic_for"]
