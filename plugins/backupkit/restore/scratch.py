"""Throwaway PostgreSQL servers that restores go into.

A restore test must never touch the application's database, and whatever happens (a
damaged dump, a failed assertion, a crash of our own code) the scratch server must go
away: a leaked server keeps a port, memory and a copy of production data. So every
scratch database is a context manager whose exit always tears it down.

Two back ends share one interface: :class:`LocalScratch` (embedded binaries in a
temporary directory, for the sandbox and CI) and a Kubernetes pod (its manifest is in
:mod:`backupkit.restore.kubernetes`; its lifecycle belongs to the Airflow operator).
Clients get connection arguments plus an environment (the password travels as
``PGPASSWORD`` in the environment, never on a command line).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

from backupkit.pgbin import pg_bin
from backupkit.pgserver import LocalPostgres, free_port

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class ScratchError(RuntimeError):
    """The scratch database could not be provisioned or used."""


def check_identifier(name: str) -> str:
    """``name`` if it is a plain SQL identifier; we create databases and roles by name."""
    if not _IDENT.fullmatch(name or ""):
        raise ValueError(f"not a plain SQL identifier (letters, digits, _; max 63): {name!r}")
    return name


class ScratchDatabase(ABC):
    """A throwaway PostgreSQL server. Use as a context manager: exit always tears down."""

    #: Shown in messages and results ("local", "kubernetes").
    backend: str = "abstract"

    @abstractmethod
    def start(self) -> "ScratchDatabase":
        """Provision the server and wait until it accepts connections."""

    @abstractmethod
    def teardown(self) -> None:
        """Remove the server and its data. Idempotent; never raises for an absent server."""

    @abstractmethod
    def conn_args(self, database: str = "postgres") -> list[str]:
        """libpq client arguments (``-h -p -U -d``); never contains a password."""

    @abstractmethod
    def uri(self, database: str = "postgres") -> str:
        """A libpq URI without the password (the password is in :meth:`client_env`)."""

    def client_env(self) -> dict[str, str]:
        """Environment for client programs: the caller's plus libpq settings."""
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)  # never leak a caller's password to the scratch server
        env.pop("PGSERVICE", None)
        return env

    # -- helpers every back end gets --------------------------------------------------
    def run_psql(self, sql: str, database: str = "postgres", *,
                 options: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``sql`` with psql (stop on first error, unaligned tuples only)."""
        env = self.client_env()
        if options:
            env["PGOPTIONS"] = " ".join(f"-c {k}={v}" for k, v in options.items())
        return subprocess.run(
            [pg_bin("psql"), *self.conn_args(database), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
            input=sql, capture_output=True, text=True, env=env,
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        proc = self.run_psql(sql, database)
        if proc.returncode != 0:
            raise ScratchError(f"psql on scratch database {database!r} failed: {proc.stderr.strip()[:2000]}")
        return proc.stdout

    def create_database(self, name: str) -> None:
        check_identifier(name)
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\'')

    def create_roles(self, roles: tuple[str, ...] | list[str]) -> None:
        """Create NOLOGIN roles a dump refers to (owners, grantees) so it restores unchanged."""
        for role in roles:
            check_identifier(role)
            self.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
                      f'THEN CREATE ROLE "{role}" NOLOGIN; END IF; END$$')

    def __enter__(self) -> "ScratchDatabase":
        try:
            return self.start()
        except BaseException:
            self.teardown()
            raise

    def __exit__(self, *exc) -> None:
        self.teardown()


def _kill_postmaster(data_dir: Path, timeout: float = 10) -> None:
    """Immediate shutdown (SIGQUIT to the postmaster) when ``pg_ctl stop`` did not finish."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class LocalScratch(ScratchDatabase):
    """The embedded PostgreSQL in a fresh temporary directory on a free loopback port."""

    backend = "local"

    def __init__(self, *, base_dir: str | Path | None = None, port: int = 0, start_attempts: int = 3):
        self.base_dir = Path(base_dir) if base_dir else None
        self._fixed_port = port
        self.start_attempts = max(1, start_attempts)
        self.work_dir: Path | None = None
        self.server: LocalPostgres | None = None

    @property
    def data_dir(self) -> Path | None:
        return self.server.data_dir if self.server else None

    @property
    def port(self) -> int:
        if not self.server:
            raise ScratchError("scratch database is not started")
        return self.server.port

    def start(self) -> "LocalScratch":
        if self.server is not None:
            return self
        self.work_dir = Path(tempfile.mkdtemp(prefix="backupkit-scratch-", dir=self.base_dir))
        # When we are root the server runs as an unprivileged user (see pgserver), which
        # must be able to reach its data directory: traverse only, no listing.
        os.chmod(self.work_dir, 0o711)
        self.server = LocalPostgres(self.work_dir / "data", port=self._fixed_port or free_port())
        last: Exception | None = None
        for _ in range(self.start_attempts):
            try:
                self.server.start()
                return self
            except RuntimeError as exc:  # most likely the free port was taken meanwhile
                last = exc
                if self._fixed_port:
                    break
                self.server.port = free_port()
        raise ScratchError(f"local scratch PostgreSQL did not start: {last}")

    def teardown(self) -> None:
        server, work = self.server, self.work_dir
        self.server = None
        try:
            if server is not None:
                server.stop()
                if server.running():  # a fast shutdown that hung must not leak the server
                    _kill_postmaster(server.data_dir)
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            self.work_dir = None

    def conn_args(self, database: str = "postgres") -> list[str]:
        if not self.server:
            raise ScratchError("scratch database is not started")
        return self.server.conn_args(database)

    def uri(self, database: str = "postgres") -> str:
        if not self.server:
            raise ScratchError("scratch database is not started")
        return self.server.uri(database)

    def __repr__(self) -> str:
        where = f"port {self.server.port}, {self.work_dir}" if self.server else "not started"
        return f"LocalScratch({where})"
