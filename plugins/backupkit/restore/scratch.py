"""Where restores go: throwaway PostgreSQL servers, scratch directories, and the application's server.

A restore test must never touch the application's database, and whatever happens (a
damaged dump, a failed assertion, a crash of our own code) the scratch target must go
away: a leaked server keeps a port, memory and a copy of production data. So every
scratch target is a context manager whose exit always tears it down.

Database targets share one interface, :class:`ScratchDatabase`: :class:`LocalScratch`
(embedded binaries in a temporary directory, for the sandbox and CI), the Kubernetes pod
(:mod:`backupkit.restore.kubernetes.runtime`) and :class:`ServerTarget` (the application's
own server, where replace mode restores into a new database and never tears anything
down). File sets restore into a :class:`ScratchDirectory`. Clients get connection
arguments plus an environment (the password travels as ``PGPASSWORD`` in the environment,
never on a command line).

Local scratch servers of a run live under ``<scratch root>/runs/<hash of the run id>/``
(:func:`run_scratch_dir`), so the run's teardown task and the orphan sweep find what a
crashed worker left (:func:`cleanup_local_scratch`).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

from backupkit import clock
from backupkit.config import Config
from backupkit.pgbin import pg_bin
from backupkit.pgserver import LocalPostgres, free_port

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
RESTORED_DB = "restored"  # the database name inside a scratch server
RESTORE_ROLE_PREFIX = "backupkit_restore_"
# PostgreSQL puts its Unix socket in the data directory and a socket path may have at most
# 107 bytes: ".../runs/<12>/backupkit-scratch-<8>/data/.s.PGSQL.<port>" adds 66 to the root.
MAX_SCRATCH_ROOT = 40


class ScratchError(RuntimeError):
    """The scratch database could not be provisioned or used."""


def generate_password(nbytes: int = 32) -> str:
    """A fresh password for one scratch server or restore role (URL-safe: fits a libpq URI)."""
    return secrets.token_urlsafe(nbytes)


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

    def create_database(self, name: str, owner: str | None = None) -> None:
        check_identifier(name)
        owned = f' OWNER "{check_identifier(owner)}"' if owner else ""
        self.psql(f'CREATE DATABASE "{name}"{owned} TEMPLATE template0 ENCODING \'UTF8\'')

    def create_roles(self, roles: tuple[str, ...] | list[str]) -> list[str]:
        """Create NOLOGIN roles a dump refers to (owners, grantees) so it restores unchanged;
        returns those created here (a role that existed before is never lent to a restore)."""
        created = []
        for role in roles:
            check_identifier(role)
            if self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'").strip() != "1":
                self.psql(f'CREATE ROLE "{role}" NOLOGIN')
                created.append(role)
        return created

    # -- the restore role: what a backup's SQL runs as ------------------------------------
    #: Scratch servers hold nothing else: the restore role may not connect to their other databases.
    isolate_restore_role = True

    def open_restore_role(self, database: str, grant: Sequence[str] = ()) -> "RoleSession":
        """Create a login role for one restore, not a superuser and without CREATEDB, CREATEROLE,
        REPLICATION or BYPASSRLS, and the new database ``database`` owned by it (and by nothing
        else it owns); clients of the restore connect as this role (:class:`RoleSession`).

        ``grant``: NOLOGIN roles just made for the dump's owners (:meth:`create_roles`); the
        restore role may hand them objects, and they may create in the new database."""
        name = check_identifier(RESTORE_ROLE_PREFIX + secrets.token_hex(6))
        password = generate_password()
        self.psql(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS '
                  f"PASSWORD '{password}'")
        try:
            self.create_database(database, owner=name)
            for role in grant:  # roles made for this dump's owners: it may hand them what it creates
                role = check_identifier(role)
                self.psql(f'GRANT "{role}" TO "{name}"; GRANT CREATE ON DATABASE "{database}" TO "{role}"')
                self.psql(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"', database)
            if self.isolate_restore_role:
                others = self.psql(f"SELECT datname FROM pg_database WHERE datallowconn AND datname <> '{database}'")
                for other in others.split():
                    self.psql(f'REVOKE CONNECT ON DATABASE "{check_identifier(other)}" FROM PUBLIC')
        except BaseException:
            self.run_psql(f'DROP ROLE IF EXISTS "{name}"')
            raise
        return RoleSession(self, name, password)

    def close_restore_role(self, session: "RoleSession", database: str) -> str | None:
        """Give what the role made to the connection's user and drop the role; never raises,
        returns what went wrong."""
        role = session.user
        proc = self.run_psql(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER; DROP OWNED BY "{role}";', database)
        if proc.returncode != 0 and "does not exist" not in proc.stderr:
            return f"restore role {role} could not hand over {database!r}: {proc.stderr.strip()[:500]}"
        proc = self.run_psql(f'DROP ROLE IF EXISTS "{role}"')
        if proc.returncode != 0:
            return f"restore role {role} could not be dropped: {proc.stderr.strip()[:500]}"
        return None

    def __enter__(self) -> "ScratchDatabase":
        try:
            return self.start()
        except BaseException:
            self.teardown()
            raise

    def __exit__(self, *exc) -> None:
        self.teardown()


class RoleSession:
    """A database target as seen by one restore role: same server, that role and its password."""

    def __init__(self, target: ScratchDatabase, user: str, password: str):
        self.target, self.user, self._password = target, user, password

    def conn_args(self, database: str = "postgres") -> list[str]:
        args = list(self.target.conn_args(database))
        args[args.index("-U") + 1] = self.user
        return args

    def client_env(self) -> dict[str, str]:
        env = self.target.client_env()
        env["PGPASSWORD"] = self._password
        return env

    def __repr__(self) -> str:
        return f"RoleSession({self.user} on {self.target!r})"


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
    """The embedded PostgreSQL in a fresh temporary directory on a free loopback port.

    Never ``trust``: every connection, local socket or TCP, authenticates with scram-sha-256
    and a password generated for this server (:func:`generate_password`), which reaches
    clients only in ``PGPASSWORD`` of their environment. Any other process on the worker
    that finds the port gets no further than the password prompt.
    """

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
        self.server = LocalPostgres(self.work_dir / "data", port=self._fixed_port or free_port(),
                                    password=generate_password())
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

    def client_env(self) -> dict[str, str]:
        env = super().client_env()
        if self.server is not None and self.server.password:
            env["PGPASSWORD"] = self.server.password
        return env

    def __repr__(self) -> str:
        where = f"port {self.server.port}, {self.work_dir}" if self.server else "not started"
        return f"LocalScratch({where})"


class ServerTarget(ScratchDatabase):
    """An existing PostgreSQL server reached through a connection (the application's).

    Used for the live source's row counts and, in replace mode, to restore into a new
    database next to the application's. Teardown does nothing: this server is not ours,
    and nothing on it is ever dropped except a database this run created and that never
    went into use (:meth:`drop_created_database`).
    """

    backend = "server"
    isolate_restore_role = False  # the application's server: its other databases are not ours to change

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

    def create_database(self, name: str, owner: str | None = None) -> None:
        super().create_database(name, owner)
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


class ScratchDirectory:
    """A fresh directory under ``base`` that a file-set archive is extracted into; removed on teardown."""

    backend = "local-dir"

    def __init__(self, base: str | Path):
        self.base = Path(base)
        self.path: Path | None = None

    def start(self) -> "ScratchDirectory":
        if self.path is None:
            self.base.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix="backupkit-files-", dir=self.base))
        return self

    def teardown(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None

    def __repr__(self) -> str:
        return f"ScratchDirectory({self.path or self.base})"


# -- local scratch servers of a run ------------------------------------------------------------------
def local_scratch_root(config: Config) -> Path:
    """``restore.scratch_dir`` (default ``<state_dir>/scratch``); when that path is too long for
    PostgreSQL's socket, a short directory derived from it in the system's temporary directory
    (the same one every time, so the teardown and the orphan sweep find it)."""
    root = config.restore.scratch_dir or config.state.scratch
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
            LocalPostgres(data).stop()
            if (data / "postmaster.pid").exists():
                _kill_postmaster(data)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    return removed


__all__ = ["RESTORED_DB", "RESTORE_ROLE_PREFIX", "ScratchError", "check_identifier", "generate_password",
           "ScratchDatabase", "RoleSession", "LocalScratch", "ServerTarget",
           "ScratchDirectory", "local_scratch_root", "run_dir_name", "run_scratch_dir", "cleanup_local_scratch"]
