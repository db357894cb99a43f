"""A throwaway local PostgreSQL server from the embedded binaries.

Used by the sandbox (the application database), by the tests, and as the "local" scratch
back end of restore tests. PostgreSQL refuses to run as root, so when we are root (as in
CI) the server runs as an unprivileged system user (``nobody`` unless
``$BACKUPKIT_PG_USER`` says otherwise); clients (pg_dump, psql) run as the caller.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from backupkit.pgbin import pg_bin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int, host: str = "0.0.0.0") -> bool:
    """Nothing listens on ``port``. Binds as servers do (SO_REUSEADDR), so connections in
    TIME_WAIT do not make a port busy."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    return os.environ.get("BACKUPKIT_PG_USER", "nobody")


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port`` (trust auth)."""

    data_dir: Path
    port: int = 0
    user: str = "postgres"

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if not self.port:
            self.port = free_port()
        self._run_as = _server_user()

    # -- lifecycle -------------------------------------------------------------------
    def _server_identity(self) -> dict:
        """subprocess kwargs that run a server program as the unprivileged user.

        The group must change too: a process that keeps root's groups is judged by the
        (closed) group bits of root's directories instead of their "other" bits.
        """
        if not self._run_as:
            return {}
        pw = pwd.getpwnam(self._run_as)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if self._run_as:
            pw = pwd.getpwnam(self._run_as)
            os.chown(path, pw.pw_uid, pw.pw_gid)
            # The server user must be able to reach its data directory: let it traverse
            # (o+x, not read) every parent, e.g. pytest's 0700 temporary directories.
            for parent in path.parents:
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    os.chmod(parent, mode | stat.S_IXOTH)

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.data_dir)
        os.chmod(self.data_dir, 0o700)
        proc = subprocess.run(
            [pg_bin("initdb"), "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, **self._server_identity(),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"initdb of {self.data_dir} failed: {proc.stderr.strip()}")

    def start(self, timeout: float = 30) -> "LocalPostgres":
        self.init()
        if self.running():
            return self
        opts = (f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        log = self.data_dir / "server.log"
        proc = subprocess.run(
            [pg_bin("pg_ctl"), "-D", str(self.data_dir), "-o", opts, "-l", str(log), "-w",
             "-t", str(int(timeout)), "start"],
            capture_output=True, text=True, **self._server_identity(),
        )
        if proc.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL in {self.data_dir} did not start: {proc.stderr}\n{tail}")
        return self

    def running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        proc = subprocess.run([pg_bin("pg_ctl"), "-D", str(self.data_dir), "status"],
                              capture_output=True, **self._server_identity())
        return proc.returncode == 0

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run([pg_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
                           capture_output=True, **self._server_identity())

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()

    # -- clients ---------------------------------------------------------------------
    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def conn_args(self, database: str = "postgres") -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", database]

    def psql(self, sql: str, database: str = "postgres", *, check: bool = True) -> str:
        """Run SQL through psql (stop on first error) and return unaligned, tuples-only output."""
        proc = subprocess.run(
            [pg_bin("psql"), *self.conn_args(database), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
            input=sql, capture_output=True, text=True,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"psql on {database} failed: {proc.stderr.strip()}")
        return proc.stdout

    def create_database(self, name: str) -> None:
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip()
        if not exists:
            self.psql(f'CREATE DATABASE "{name}"')

    def wait_ready(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if subprocess.run([pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                              capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL on port {self.port} not ready after {timeout}s")
