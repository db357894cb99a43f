"""A throwaway local PostgreSQL server from the embedded binaries.

Used by the sandbox (the application database), by the tests, and as the "local" scratch
back end of restore tests. PostgreSQL refuses to run as root, so when we are root (as in
CI) the server runs as an unprivileged system user (``nobody`` unless
``$BACKUPKIT_PG_USER`` says otherwise); clients (pg_dump, psql) run as the caller.

That user must reach both its data directory and the server binaries, wherever the checkout
lies (a ``mktemp -d`` directory or ``/root`` is 0700): :func:`make_traversable` is the one
place that adds exactly the search bit it needs, and says so; every entry point that starts
a server (tests, ``backupctl``, the DAGs' local scratch servers, the sandbox, the benchmarks)
goes through :class:`LocalPostgres`, which calls it.

initdb takes a second or two; a test session starts a hundred servers. With
``$BACKUPKIT_INITDB_TEMPLATE`` set to a directory (the test suite sets it, as PostgreSQL's own
TAP tests set ``INITDB_TEMPLATE``), a server made with no extra ``initdb_args`` is a copy of a
cluster initdb'ed once there (``trust``) for its user and server user (made under a temporary
name and renamed, so parallel workers agree on one); a server with a password then gets
``scram-sha-256`` lines and its password set in single-user mode, as initdb would have. Copies share a database system
identifier, which is why a server with ``initdb_args`` (the WAL archives' 1 MB segments, whose
checks compare system identifiers) is always initdb'ed afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from backupkit.pgbin import bin_dir, pg_bin

log = logging.getLogger(__name__)


INITDB_TEMPLATE_ENV = "BACKUPKIT_INITDB_TEMPLATE"


def _require_scram(hba: Path) -> None:
    """Every ``trust`` line of initdb's pg_hba.conf as ``scram-sha-256``: what initdb writes with
    ``--auth-local=scram-sha-256 --auth-host=scram-sha-256`` (its sample has one method per line)."""
    out = []
    for line in hba.read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and fields[-1] == "trust":
            line = line[:line.rstrip().rfind("trust")] + "scram-sha-256"
        out.append(line)
    hba.write_text("\n".join(out) + "\n")


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


def server_user() -> str | None:
    """The user PostgreSQL's server programs run as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    return os.environ.get("BACKUPKIT_PG_USER", "nobody")


class ServerUnreachable(RuntimeError):
    """The server's user cannot reach a directory it needs and we could not let it."""


def make_traversable(path: Path, user: str | None, *, within: Path = Path("/"),
                     groups: set[int] | None = None) -> list[Path]:
    """Add the search (x) bit ``user`` needs on ``path`` and its ancestors under ``within``.

    As root, PostgreSQL runs as an unprivileged user (with that user's own groups,
    ``groups``) that must reach its data directory and its binaries; a clone under /root
    (mode 0700) would otherwise stop it. The kernel judges a directory by its group bits
    when the group is one of the user's, else by its "other" bits, so exactly that bit is
    added: nothing becomes listable or readable. Returns the directories changed; raises
    :class:`ServerUnreachable` naming the directory when it cannot be changed.
    """
    if not user:
        return []
    pw = pwd.getpwnam(user)
    groups = {pw.pw_gid} if groups is None else groups
    path, within = Path(path).resolve(), Path(within).resolve()
    changed = []
    for d in (*reversed(path.parents), path):
        if d != within and within not in d.parents or not d.is_dir():
            continue
        st = d.stat()
        if st.st_uid == pw.pw_uid:
            continue
        need = 0o010 if st.st_gid in groups else 0o001
        if not st.st_mode & need:
            try:
                d.chmod(st.st_mode & 0o7777 | need)
            except OSError as exc:
                raise ServerUnreachable(
                    f"PostgreSQL runs as {user!r} (we are root) and cannot enter {d} (mode "
                    f"{st.st_mode & 0o777:o}); adding the search bit failed: {exc.strerror or exc}. "
                    f"Move the checkout or data below a directory {user!r} can enter, or set "
                    f"BACKUPKIT_PG_USER to a user that can") from None
            log.info("made %s searchable (x bit only) so PostgreSQL's user %s can reach it", d, user)
            changed.append(d)
    return changed


def _quote_option(value: str) -> str:
    """A ``-c name=value`` value as pg_ctl's ``-o`` string needs it (split like a shell would)."""
    if value and all(c.isalnum() or c in "._-/:%" for c in value):
        return value
    return "'" + str(value).replace("'", "'\\''") + "'"


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port``.

    Authentication: ``trust`` (the sandbox's and the tests' own servers), or, with a
    ``password``, scram-sha-256 for every local and host connection -- the password given to
    initdb in a file (never in argv) and to clients in ``PGPASSWORD`` of their environment
    (:meth:`client_env`). ``initdb_args`` are added to initdb's (e.g. ``["--wal-segsize=1"]``);
    ``settings`` are server parameters given at every start (e.g. ``{"archive_mode": "on"}``),
    after and so over the defaults below.
    """

    data_dir: Path
    port: int = 0
    user: str = "postgres"
    initdb_args: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    password: str | None = field(default=None, repr=False)
    env: dict[str, str] | None = field(default=None, repr=False)   # the server's environment (None: ours)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if not self.port:
            self.port = free_port()
        self._run_as = server_user()

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
            self._reach(path)

    def _reach(self, path: Path) -> None:
        """Let the server user reach ``path`` and the binaries (see :func:`make_traversable`)."""
        if not self._run_as:
            return
        make_traversable(path, self._run_as)
        binaries = bin_dir()
        if binaries is not None:
            make_traversable(binaries.parent, self._run_as)

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        templates = os.environ.get(INITDB_TEMPLATE_ENV)
        if templates and not self.initdb_args:
            self._copy_of_template(Path(templates))
        else:
            self._initdb(self.data_dir)

    def _initdb(self, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        self._chown(target)
        os.chmod(target, 0o700)
        with self._pwfile(target.parent) as auth:
            proc = subprocess.run(
                [pg_bin("initdb"), "-D", str(target), "-U", self.user, *auth,
                 "-E", "UTF8", "--locale=C", "--no-sync", *self.initdb_args],
                capture_output=True, text=True, **self._server_identity(),
            )
        if proc.returncode != 0:
            raise RuntimeError(f"initdb of {target} failed: {proc.stderr.strip()}")

    def _copy_of_template(self, templates: Path) -> None:
        """``data_dir`` as a copy of the template cluster for this server (see the module doc)."""
        key = hashlib.sha256("\0".join((pg_bin("initdb"), self.user, self._run_as or "")).encode()).hexdigest()[:16]
        template = templates / key
        if not (template / "PG_VERSION").exists():
            templates.mkdir(parents=True, exist_ok=True)
            tmp = templates / f".{key}.{os.getpid()}.{threading.get_ident()}"
            LocalPostgres(tmp, port=self.port, user=self.user)._initdb(tmp)   # trust: no password in it
            try:
                os.rename(tmp, template)
            except OSError:   # another process renamed its own first: use that one
                shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(template, self.data_dir, symlinks=True, dirs_exist_ok=True)
        if self.password is not None:
            _require_scram(self.data_dir / "pg_hba.conf")
        if self._run_as:
            pw = pwd.getpwnam(self._run_as)
            for path in (self.data_dir, *self.data_dir.rglob("*")):
                os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
        os.chmod(self.data_dir, 0o700)
        self._reach(self.data_dir)
        if self.password is not None:
            self._set_password()

    def _set_password(self) -> None:
        """The superuser's password, as initdb's ``--pwfile`` sets it: in single-user mode, the SQL
        on stdin (never in argv or a file), no statement logged, nothing of it in an error."""
        quoted = self.password.replace("'", "''")
        proc = subprocess.run(
            [pg_bin("postgres"), "--single", "-F", "-D", str(self.data_dir), "-c", "log_min_error_statement=panic",
             "-c", "password_encryption=scram-sha-256", "postgres"],
            input=f"ALTER ROLE \"{self.user}\" PASSWORD '{quoted}';\n", capture_output=True, text=True,
            **self._server_identity())
        errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln or "FATAL" in ln]
        if proc.returncode != 0 or errors:
            why = "; ".join(errors[:2]).replace(self.password, "***") or f"exit {proc.returncode}"
            raise RuntimeError(f"setting the password of the server in {self.data_dir} failed: {why}")

    @contextlib.contextmanager
    def _pwfile(self, where: Path):
        """initdb's authentication arguments; with a password, a file holding it for the call only."""
        if self.password is None:
            yield ["--auth=trust"]
            return
        fd, name = tempfile.mkstemp(prefix=".pw-", dir=where)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            if self._run_as:  # initdb runs as the server's user and must read it
                pw = pwd.getpwnam(self._run_as)
                os.chown(name, pw.pw_uid, pw.pw_gid)
            yield ["--auth-local=scram-sha-256", "--auth-host=scram-sha-256", f"--pwfile={name}"]
        finally:
            os.unlink(name)

    def start(self, timeout: float = 30) -> "LocalPostgres":
        self.init()
        self._reach(self.data_dir)  # also for a cluster made earlier, or moved since
        if self.running():
            return self
        opts = (f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        opts += "".join(f" -c {name}={_quote_option(value)}" for name, value in self.settings.items())
        log = self.data_dir / "server.log"
        proc = subprocess.run(
            [pg_bin("pg_ctl"), "-D", str(self.data_dir), "-o", opts, "-l", str(log), "-w",
             "-t", str(int(timeout)), "start"],
            capture_output=True, text=True, env=self.env, **self._server_identity(),
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
    def client_env(self) -> dict[str, str]:
        """The environment for client programs: the caller's, with this server's password (if any)."""
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def conn_args(self, database: str = "postgres") -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", database]

    def psql(self, sql: str, database: str = "postgres", *, check: bool = True) -> str:
        """Run SQL through psql (stop on first error) and return unaligned, tuples-only output."""
        proc = subprocess.run(
            [pg_bin("psql"), *self.conn_args(database), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
            input=sql, capture_output=True, text=True, env=self.client_env(),
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
