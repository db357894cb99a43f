"""The embedded sandbox's processes: PostgreSQL, the loopback S3 endpoint and Airflow.

``make up`` / ``make down`` / ``make status`` call :func:`up`, :func:`down` and
:func:`status`. Everything lives in the repository's ``.sandbox/`` folder (ignored by
git)::

    .sandbox/pg/data      PostgreSQL cluster (persistent; the booking database "trixtech")
    .sandbox/backups      the generated backup history (BACKUP_ROOT)
    .sandbox/wal          the server's WAL archive (archive/) and nightly base backups (base/): sandbox/walarchive.py
    .sandbox/logs         backup logs (BACKUP_LOG_DIR) plus moto.log and airflow.log
    .sandbox/state        verification state (BACKUP_STATE_DIR)
    .sandbox/airflow      AIRFLOW_HOME (SQLite metadata DB, airflow.cfg, task logs)
    .sandbox/run          pid files of the detached processes (S3 server, app supervisor, Airflow)
    .sandbox/s3           the S3 server's state: object bodies (blobs/) and metadata (state.pickle)
    .sandbox/ports.json   ports in use; .sandbox/env.sh  `source` it to use backupctl by hand
    .sandbox/users.json   the Airflow users (admin, approver, viewer) and their passwords (sandbox.users)

Every ``up`` is idempotent: a process whose pid file names a live process of the
expected program is reused, never started twice. The S3 server (:mod:`sandbox.s3moto`)
saves its state under ``.sandbox/s3`` and restores it on start, so a restart keeps every
object version, lock date, tag and report; ``up`` uploads only backups the bucket has never
had, and never a local file over an S3 copy (:func:`sandbox.history.sync_to_s3`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backupkit import clock
from backupkit.config import REPO_ROOT
from backupkit.pgserver import LocalPostgres, free_port, make_traversable, port_free, server_user
from sandbox import s3server, users as sandbox_users, walarchive
from sandbox.procs import (_group_alive, dead_children, group_members, pid_alive, proc_info, read_pid,  # noqa: F401 - re-exported
                           running_pid, start_detached, stop_group, write_pid)

PREFERRED_PORTS = {"postgres": 5433, "s3": 5055, "airflow": 8080, "app": 8091, "frontend": 8092}
APP_NAMESPACE = "default"  # restore.app.namespace of the configuration
APP_PROCESS = "sandbox.appsupervisor"
DATABASE = "trixtech"
DATABASE_SCALE = 20000  # users at creation; the history's monthly growth adds ~3% of that each month
HISTORY_DAYS = 400
HEALTH_TIMEOUT = 180.0
CONFIG_FILE = REPO_ROOT / "include" / "config" / "backups.yaml"
S3_PROCESS = "sandbox.s3moto"  # in the S3 server's command line (pid files are checked against it)


@dataclass(frozen=True)
class Layout:
    """Paths of one sandbox (the repository's ``.sandbox`` by default)."""

    root: Path = REPO_ROOT / ".sandbox"

    @property
    def pg_data(self) -> Path:
        return self.root / "pg" / "data"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def s3(self) -> Path:
        return self.root / "s3"

    @property
    def app(self) -> Path:
        return self.root / "app"

    @property
    def wal(self) -> Path:
        """BACKUP_WAL_DIR: ``archive/`` (archive_command's target) and ``base/`` (pg_basebackup)."""
        return self.root / "wal"

    @property
    def ports_file(self) -> Path:
        return self.root / "ports.json"

    @property
    def env_file(self) -> Path:
        return self.root / "env.sh"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def create(self) -> None:
        for d in (self.root, self.pg_data.parent, self.backups, self.logs, self.state, self.airflow_home,
                  self.run, self.s3, self.app, self.wal):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)


# -- environment ----------------------------------------------------------------------
def sandbox_env(root: Path, pg_port: int, s3_endpoint: str, app_port: int | None = None, *,
                wal: bool = False) -> dict[str, str]:
    """Every environment variable the sandbox's code needs: backup paths, S3, Airflow connections,
    the local application platform (and, with ``app_port``, the application's health URL; with
    ``wal``, the server's WAL archive as a source: sandbox/walarchive.py)."""
    root = Path(root).resolve()
    env = {
        "BACKUP_ROOT": str(root / "backups"),
        "BACKUP_LOG_DIR": str(root / "logs"),
        "BACKUP_STATE_DIR": str(root / "state"),
        "BACKUPKIT_CONFIG": str(CONFIG_FILE),
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": s3server.SANDBOX_KEY,
        "AWS_SECRET_ACCESS_KEY": s3server.SANDBOX_SECRET,
        "AIRFLOW_CONN_TRIXTECH_APP_DB": f"postgresql://postgres@127.0.0.1:{int(pg_port)}/{DATABASE}",
        # The loopback endpoint speaks plain HTTP (and moto ignores aws:SecureTransport), so
        # the audit cannot demand a TLS-only bucket policy here.
        "BACKUP_REQUIRE_TLS_POLICY": "false",
        # No cluster here: scratch databases are local PostgreSQL servers, file restores go
        # under the sandbox.
        "BACKUP_RESTORE_BACKEND": "local",
        "BACKUP_RESTORE_ROOT": str(root / "restore"),
        # The booking application runs as local processes (sandbox.appsupervisor).
        "BACKUP_APP_PLATFORM": "local",
        "BACKUP_APP_CONTROL_DIR": str(root / "app"),
    }
    if wal:
        env["BACKUP_WAL_ARCHIVE"] = "true"
        env["BACKUP_WAL_DIR"] = str(root / "wal")
        env["BACKUP_WAL_MARKERS"] = "postgres.public.pitr_markers"   # sandbox.walarchive's writer
    if app_port:
        env["TRIXTECH_HEALTH_URL"] = f"http://127.0.0.1:{int(app_port)}/health"
        env["BACKUP_SMOKE_URL"] = f"http://127.0.0.1:{int(app_port)}/api/bookings?limit=5"
    env.update(s3server.env_for_airflow(s3_endpoint))  # AIRFLOW_CONN_AWS_DEFAULT, AWS_DEFAULT_REGION
    return env


def venv_bin() -> Path:
    """The bin directory of the running virtualenv (``airflow standalone`` spawns ``airflow`` via PATH)."""
    return Path(sys.prefix) / "bin"


def airflow_fingerprint(env: dict[str, str]) -> str:
    """What a running Airflow must have been started with to be reused: its environment (users,
    approvers, ports, paths) and the plugin code it loaded at start (DAG files are re-parsed anyway)."""
    import hashlib

    h = hashlib.sha256(json.dumps(sorted(env.items())).encode())
    for path in sorted((REPO_ROOT / "plugins").rglob("*.py")):
        h.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


SQLITE_LOCK_WAIT = 60   # seconds a connection waits for another's write (sqlite3's ``timeout``)


def airflow_db_url(layout: Layout) -> str:
    """The sandbox's Airflow metadata database: SQLite in AIRFLOW_HOME, waiting
    :data:`SQLITE_LOCK_WAIT` for a lock (SQLAlchemy's pysqlite and aiosqlite read ``timeout``)."""
    return f"sqlite:///{(layout.airflow_home / 'airflow.db').resolve()}?timeout={SQLITE_LOCK_WAIT}"


def airflow_env(layout: Layout, ports: dict[str, int]) -> dict[str, str]:
    """:func:`sandbox_env` plus what Airflow and a hand-run shell need (written to env.sh)."""
    env = sandbox_env(layout.root, ports["postgres"], f"http://127.0.0.1:{ports['s3']}", ports.get("app"), wal=True)
    env.update({
        "AIRFLOW_HOME": str(layout.airflow_home.resolve()),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # SQLite's default 5 s wait for a lock: under load (a test run beside the sandbox) the
        # scheduler's write hit "database is locked" and the scheduler exited for good. 60 s.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db_url(layout),
        **sandbox_users.auth_env(layout.root),  # named users, not "every visitor is an admin"
        "AIRFLOW__API__PORT": str(ports["airflow"]),
        # New DAG files show up within 30 s instead of the default 5 minutes.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "PGHOST": "127.0.0.1",
        "PGPORT": str(ports["postgres"]),
        "PGUSER": "postgres",
    })
    if ports["airflow"] != 8080:  # workers find the execution API through the base URL
        env["AIRFLOW__API__BASE_URL"] = f"http://localhost:{ports['airflow']}"
    return env


def render_env_sh(env: dict[str, str], path_first: Path) -> str:
    lines = ["# Generated by `make up`: source it to use backupctl, psql and airflow against the sandbox.\n"]
    lines += [f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items())]
    lines.append(f'export PATH={shlex.quote(str(path_first))}:"$PATH"\n')
    return "".join(lines)


def pick_port(preferred: int) -> int:
    return preferred if port_free(preferred) else free_port()


def load_ports(layout: Layout) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads(layout.ports_file.read_text()).items()}
    except (FileNotFoundError, ValueError, AttributeError):
        return {}


def save_ports(layout: Layout, ports: dict[str, int]) -> None:
    layout.ports_file.write_text(json.dumps(ports, indent=2, sort_keys=True) + "\n")


def _pg_port_of_running(data: Path) -> int | None:
    """The port of the server whose postmaster.pid is in ``data`` (line 4 of that file)."""
    try:
        return int((data / "postmaster.pid").read_text().splitlines()[3])
    except (FileNotFoundError, IndexError, ValueError, PermissionError):
        return None


# -- components -----------------------------------------------------------------------
def ensure_postgres(layout: Layout, ports: dict[str, int], say=print) -> LocalPostgres:
    for d in make_traversable(layout.pg_data, server_user()):
        say(f"  made {d} searchable (x bit only) so PostgreSQL's user can reach its data")
    # A fresh start takes the fixed port when free, so env.sh and ports stay the same across restarts.
    walarchive.prepare_dirs(layout.wal / "archive", layout.wal / "base")
    for d in make_traversable(layout.wal / "archive", server_user()):
        say(f"  made {d} searchable (x bit only) so PostgreSQL's user can archive into it")
    pg = LocalPostgres(layout.pg_data, port=ports.get("postgres") or PREFERRED_PORTS["postgres"],
                       initdb_args=[f"--wal-segsize={walarchive.SEGMENT_SIZE_MB}"],
                       settings=walarchive.archive_settings(layout.wal / "archive"))
    if (layout.pg_data / "postmaster.pid").exists() and pg.running():
        pg.port = _pg_port_of_running(layout.pg_data) or pg.port
        say(f"PostgreSQL already running on port {pg.port}")
        walarchive.ensure_archiving(pg, say)
    else:
        pg.port = pick_port(PREFERRED_PORTS["postgres"])
        pg.start()
        say(f"PostgreSQL started on port {pg.port} ({layout.pg_data})")
        walarchive.ensure_archiving(pg, say)  # a cluster made before archiving: 1 MB segments, once
    ports["postgres"] = pg.port
    has_db = pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'").strip() == "1"
    if not has_db or not pg.psql("SELECT to_regclass('public.bookings') IS NOT NULL", DATABASE).strip() == "t":
        from sandbox.bookingdb import create_booking_db

        say(f"creating the booking database {DATABASE!r} ({DATABASE_SCALE} users) ...")
        create_booking_db(pg, DATABASE, scale=DATABASE_SCALE)
    return pg


def ensure_moto(layout: Layout, ports: dict[str, int], say=print, *, preferred: int | None = None) -> tuple[str, bool]:
    """(endpoint, started_now): the running loopback S3 endpoint, started detached if needed.

    A fresh server takes ``preferred`` (the fixed sandbox port) when free. If another
    process grabs the port at the same moment our server dies at bind time, the
    readiness probe may have been answered by the other one, hence the liveness check
    and one retry on a random free port.
    """
    pid = running_pid(layout.pid_file("moto"), expect=S3_PROCESS)
    if pid is not None and ports.get("s3"):
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        say(f"S3 endpoint (moto) already running: {endpoint} (pid {pid})")
        return endpoint, False
    if pid is not None:  # running but its port is unknown: restart it
        stop_group(pid)
    candidates = (pick_port(preferred or PREFERRED_PORTS["s3"]), None)
    for attempt, port in enumerate(candidates):
        port = port or free_port()
        try:
            server = s3server.MotoServer(port=port, log_path=layout.logs / "moto.log", data_dir=layout.s3).start()
            time.sleep(0.5)
            if server.proc.poll() is None:
                break
            error: Exception = RuntimeError(f"the S3 server exited with {server.proc.returncode} (port {port} taken?)")
        except (RuntimeError, TimeoutError) as exc:
            error = exc
        if attempt == len(candidates) - 1:
            raise RuntimeError(f"could not start the S3 endpoint: {error}; last lines of "
                               f"{layout.logs / 'moto.log'}:\n{_log_tail(layout.logs / 'moto.log', 5)}")
    write_pid(layout.pid_file("moto"), server.proc.pid)
    ports["s3"] = port
    say(f"S3 endpoint (moto) started: {server.endpoint_url} (pid {server.proc.pid})")
    return server.endpoint_url, True


def stop_moto(layout: Layout, say=print) -> bool:
    pid = running_pid(layout.pid_file("moto"), expect=S3_PROCESS)
    if pid is None:
        return False
    stop_group(pid, timeout=60)  # SIGTERM: it writes its last snapshot, then exits
    with contextlib.suppress(FileNotFoundError):
        layout.pid_file("moto").unlink()
    say(f"S3 endpoint (moto) stopped (pid {pid})")
    return True


def ensure_app(layout: Layout, ports: dict[str, int], say=print) -> int:
    """The booking application's deployments (seeded once) and their supervisor; its pid."""
    from sandbox import appsupervisor

    for name in ("app", "frontend"):
        ports[name] = ports.get(name) or pick_port(PREFERRED_PORTS[name])
    app = load_config_for_app()
    appsupervisor.seed(layout.app, namespace=app.namespace, backend=app.deployments[0], frontend=app.deployments[-1],
                       database_url=f"postgresql://postgres@127.0.0.1:{ports['postgres']}/{DATABASE}",
                       backend_port=ports["app"], frontend_port=ports["frontend"], pg_port=ports["postgres"], say=say)
    pid = running_pid(layout.pid_file("app"), expect=APP_PROCESS)
    if pid is not None:
        say(f"application supervisor already running (pid {pid})")
        return pid
    pid = start_detached([sys.executable, "-m", APP_PROCESS, "--control-dir", str(layout.app.resolve())],
                         pid_file=layout.pid_file("app"), log_path=layout.logs / "app.log",
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)
    say(f"booking application started (supervisor pid {pid}): backend http://127.0.0.1:{ports['app']}, "
        f"frontend http://127.0.0.1:{ports['frontend']}")
    return pid


def load_config_for_app():
    """``restore.app`` of the sandbox's configuration (namespace and deployment names)."""
    from backupkit.config import load_config

    app = load_config(CONFIG_FILE).restore.app
    if len(app.deployments) < 1:
        raise RuntimeError(f"{CONFIG_FILE}: restore.app.deployments is empty; the sandbox needs the booking app's")
    return app


def stop_app(layout: Layout, say=print) -> bool:
    pid = running_pid(layout.pid_file("app"), expect=APP_PROCESS)
    if pid is None:
        return False
    stop_group(pid)  # the supervisor and its replicas
    with contextlib.suppress(FileNotFoundError):
        layout.pid_file("app").unlink()
    say(f"booking application stopped (supervisor pid {pid})")
    return True


def _has_history(layout: Layout) -> bool:
    return layout.backups.is_dir() and any(p.is_file() for p in layout.backups.rglob("*"))


def ensure_history(layout: Layout, pg: LocalPostgres, endpoint: str, *, days: int = HISTORY_DAYS,
                   say=print) -> None:
    """Generate the history when there is none (else add the nights missed since), then sync S3."""
    from backupkit.config import load_config
    from sandbox import history

    config = load_config(CONFIG_FILE)
    client = s3server.s3_client(endpoint)
    now = clock.now()
    t0 = time.monotonic()
    if not _has_history(layout):
        say(f"generating {days} nights of backup history (real pg_dump per month; takes a minute or two) ...")
        h = history.generate_history(config, pg, now=now, days=days, database=DATABASE)
        say(f"  {sum(map(len, h.sources.values()))} backups written in {time.monotonic() - t0:.0f}s")
        from sandbox import seed

        seed.seed(history.generated_sources(config), now=now, say=say)
    else:
        added, skipped = history.add_new_sources(config, pg, now=now, days=days, database=DATABASE)
        if added is not None:
            from dataclasses import replace

            from sandbox import seed

            new = replace(config, sources=tuple(s for s in config.sources if s.name in added.sources))
            pruned = seed.prune_like_retention(new, now=now)  # as for a new sandbox: what retention keeps
            say(f"history generated for newly configured source(s) {', '.join(sorted(added.sources))}: "
                f"{sum(map(len, added.sources.values())) - sum(pruned.values())} backups kept by their policies")
        for name in skipped:
            say(f"database source {name} has no history (configured after the sandbox was made): "
                "`make clean && make up` regenerates the whole history")
        h = history.extend_history(config, pg, now=now, database=DATABASE)
        if h is not None:
            say(f"history extended by {len(h.nights)} night(s) up to {h.nights[-1]:%Y-%m-%d %H:%M} UTC")
    try:
        client.head_bucket(Bucket=config.bucket)
    except Exception:
        # 1 day of GOVERNANCE retention: the audit sees a default lock rule, and retention
        # sweeps can still delete the (re-uploaded) history a day after `make up`.
        s3server.create_production_bucket(client, config.bucket, object_lock_days=1)
        say(f"bucket {config.bucket} created (versioning, default encryption, object lock)")
    t1 = time.monotonic()
    sync = history.sync_to_s3(config, client)
    if sync.uploaded:
        say(f"uploaded {sync.uploaded} objects to s3://{config.bucket} in {time.monotonic() - t1:.0f}s")
    for what, keys in (("differ in size from the local file", sync.differing),
                       ("were deleted from the bucket", sync.deleted_in_s3)):
        if keys:
            say(f"  not uploaded: {len(keys)} object(s) that {what} (the S3 copy is kept as it is), e.g. {keys[0]}")
    walarchive.ensure(config, pg, client, say)


def health(port: int, timeout: float = 3.0) -> dict | None:
    """Airflow's /api/v2/monitor/health as JSON, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://localhost:{port}/api/v2/monitor/health", timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def ensure_airflow(layout: Layout, ports: dict[str, int], say=print) -> tuple[int, bool]:
    """(pid, started_now) of ``airflow standalone``, started detached in its own process group."""
    pid = running_pid(layout.pid_file("airflow"), expect="airflow")
    stamp_file = layout.run / "airflow.fingerprint"
    if pid is not None:
        ports.setdefault("airflow", PREFERRED_PORTS["airflow"])
        same = stamp_file.is_file() and stamp_file.read_text().strip() == airflow_fingerprint(airflow_env(layout, ports))
        dead = dead_children(pid)
        if same and not dead:
            say(f"Airflow already running (pid {pid}) on port {ports['airflow']}")
            return pid, False
        if dead:   # `airflow standalone` does not restart a component that exited (the scheduler, say)
            say(f"Airflow (pid {pid}) lost {len(dead)} of its components (see {layout.logs / 'airflow.log'}): "
                "restarting it")
        else:
            # Started by an older checkout or another configuration (users, approvers, plugins): a reused
            # process would serve yesterday's rules, e.g. all-admins after named users were configured.
            say(f"Airflow (pid {pid}) runs with another configuration or plugin code than this checkout: "
                "restarting it")
        stop_group(pid, timeout=60)
        with contextlib.suppress(FileNotFoundError):
            layout.pid_file("airflow").unlink()
    ports["airflow"] = pick_port(PREFERRED_PORTS["airflow"])
    env = airflow_env(layout, ports)
    stamp_file.write_text(airflow_fingerprint(env) + "\n")
    full = {**os.environ, **env, "PATH": f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}"}
    pid = start_detached([str(venv_bin() / "airflow"), "standalone"], pid_file=layout.pid_file("airflow"),
                         log_path=layout.logs / "airflow.log", env=full, cwd=REPO_ROOT)
    say(f"Airflow standalone started (pid {pid}), log: {layout.logs / 'airflow.log'}")
    return pid, True


def _log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def wait_healthy(port: int, pid: int, log: Path, *, timeout: float = HEALTH_TIMEOUT, say=print) -> dict:
    """Poll Airflow's health endpoint until it answers; fail early when Airflow or all its components died."""
    start = time.monotonic()
    next_note = 10.0
    while True:
        h = health(port)
        if h is not None:
            return h
        elapsed = time.monotonic() - start
        if not pid_alive(pid):
            raise RuntimeError("Airflow exited while starting; last lines of its log:\n" + _log_tail(log))
        if elapsed > 30 and Path("/proc").is_dir() and not any(
                p != pid and (info := proc_info(p)) is not None and info[0] not in ("Z", "X")
                for p in group_members(pid)):
            raise RuntimeError("Airflow's components (scheduler, API server, ...) exited; `make down` and "
                               "look at the log. Last lines:\n" + _log_tail(log))
        if elapsed > timeout:
            raise TimeoutError(f"Airflow did not answer on http://localhost:{port} within {timeout:.0f}s "
                               f"(still running as pid {pid}; see {log})")
        if elapsed >= next_note:
            say(f"  waiting for the Airflow API server ... {elapsed:.0f}s")
            next_note += 10.0
        time.sleep(2)


def stop_airflow(layout: Layout, say=print) -> bool:
    pid = running_pid(layout.pid_file("airflow"), expect="airflow")
    if pid is None:
        return False
    # SIGTERM to the whole group: scheduler, API server, dag processor, triggerer and task
    # workers each shut down on it (~5 s). SIGINT (standalone's Ctrl-C) took ~40 s.
    ok = stop_group(pid, first=signal.SIGTERM, timeout=30)
    with contextlib.suppress(FileNotFoundError):
        layout.pid_file("airflow").unlink()
    say(f"Airflow stopped (pid {pid})" + ("" if ok else " - some processes did not exit"))
    return True


def running_sandbox(layout: Layout) -> tuple[Any, Any, LocalPostgres]:
    """(config, S3 client, PostgreSQL) of the running sandbox, with its environment set; or RuntimeError."""
    from backupkit.config import load_config

    ports = load_ports(layout)
    pg = LocalPostgres(layout.pg_data, port=_pg_port_of_running(layout.pg_data) or 0)
    if running_pid(layout.pid_file("moto"), expect=S3_PROCESS) is None or "s3" not in ports or not pg.port \
            or not pg.running():
        raise RuntimeError("the sandbox is not running: `make up` first")
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    os.environ.update(sandbox_env(layout.root, pg.port, endpoint, ports.get("app"), wal=True))
    return load_config(CONFIG_FILE), s3server.s3_client(endpoint), pg


def paused_line(port: int, admin: dict[str, str]) -> str:
    """Which DAGs are paused now, from the REST API (token from POST /auth/token as the admin)."""
    base = f"http://localhost:{port}"
    try:
        body = json.dumps({"username": admin["username"], "password": admin["password"]}).encode()
        req = urllib.request.Request(base + "/auth/token", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            token = json.loads(r.read())["access_token"]
        req = urllib.request.Request(base + "/api/v2/dags?limit=100", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            dags = json.loads(r.read())["dags"]
    except (OSError, ValueError, KeyError):
        return "(the REST API did not say which are paused)"
    if not dags:
        return "not parsed yet (within a minute; every one starts PAUSED)"
    paused = sorted(d["dag_id"] for d in dags if d["is_paused"])
    if len(paused) == len(dags):
        return f"all {len(dags)} PAUSED"
    return f"{len(paused)} of {len(dags)} PAUSED" + (f": {', '.join(paused)}" if paused else "")


def banner(ports: dict[str, int], endpoint: str, rel_env: str, headline: str, users: dict[str, dict[str, str]]) -> str:
    """What ``make up`` prints last: where everything is, how to log in, what is paused and why."""
    return f"""
{headline}

  Airflow UI:  http://localhost:{ports['airflow']}
  Users:       (kept in .sandbox/users.json; the same for POST /auth/token)
{sandbox_users.banner_lines(users)}
               A replace restore triggered by admin is approved by approver (four eyes: never by whoever
               triggered it); viewer only reads.
  DAGs:        {paused_line(ports['airflow'], users['admin'])}
               New DAGs start paused, on purpose (Airflow's dags_are_paused_at_creation): unpausing a
               scheduled DAG runs it at once for its latest slot (the quarterly audit's is the end of the
               last quarter), then on schedule. A paused DAG's triggered runs wait; `make day` unpauses
               and triggers every DAG through the REST API.
  Booking app: http://127.0.0.1:{ports.get('app')}/api/bookings (backend, 2 replicas) and
               http://127.0.0.1:{ports.get('frontend')}/health (frontend); backup_restore mode=replace switches it.
  PostgreSQL:  postgresql://postgres@127.0.0.1:{ports['postgres']}/{DATABASE}
  S3 endpoint: {endpoint}  (bucket trixtech-backups; state kept in .sandbox/s3 across make down/up)
  By hand:     source {rel_env}   then e.g.  backupctl inventory   backupctl verify $BACKUP_ROOT/database/...
  Defects:     make defect NAME=bitflip (make defect lists them), make heal
  Stop:        make down   (keeps the data; `make clean` deletes .sandbox)
"""


# -- commands -------------------------------------------------------------------------
def up(layout: Layout = Layout(), *, days: int = HISTORY_DAYS, timeout: float = HEALTH_TIMEOUT, say=print) -> int:
    t0 = time.monotonic()
    layout.create()
    ports = load_ports(layout)
    pg = ensure_postgres(layout, ports, say)
    endpoint, _ = ensure_moto(layout, ports, say)
    for name in ("app", "frontend"):
        ports[name] = ports.get(name) or pick_port(PREFERRED_PORTS[name])
    save_ports(layout, ports)
    os.environ.update(sandbox_env(layout.root, ports["postgres"], endpoint, ports["app"], wal=True))
    ensure_history(layout, pg, endpoint, days=days, say=say)
    ensure_app(layout, ports, say)
    users = sandbox_users.ensure_users(layout.root)
    walarchive.start_writer(layout, ports, say)
    pid, _ = ensure_airflow(layout, ports, say)
    save_ports(layout, ports)
    layout.env_file.write_text(render_env_sh(airflow_env(layout, ports), venv_bin()))
    h = wait_healthy(ports["airflow"], pid, layout.logs / "airflow.log", timeout=timeout, say=say)
    states = ", ".join(f"{k}: {v.get('status')}" for k, v in h.items() if isinstance(v, dict))
    rel_env = os.path.relpath(layout.env_file, Path.cwd())
    say(banner(ports, endpoint, rel_env, f"Sandbox ready in {time.monotonic() - t0:.0f}s ({states}).", users))
    return 0


def down(layout: Layout = Layout(), say=print) -> int:
    stopped = [stop_airflow(layout, say), walarchive.stop_writer(layout, say), stop_app(layout, say),
               stop_moto(layout, say)]
    if (layout.pg_data / "postmaster.pid").exists():
        LocalPostgres(layout.pg_data).stop()
        say("PostgreSQL stopped")
        stopped.append(True)
    if not any(stopped):
        say("nothing was running")
    return 0


def status(layout: Layout = Layout(), say=print) -> int:
    ports = load_ports(layout)
    pg_running = (layout.pg_data / "postmaster.pid").exists() and LocalPostgres(layout.pg_data).running()
    say(f"PostgreSQL: {'running on port ' + str(_pg_port_of_running(layout.pg_data)) if pg_running else 'stopped'}")
    moto = running_pid(layout.pid_file("moto"), expect=S3_PROCESS)
    say("S3 (moto):  " + (f"running, pid {moto}, http://127.0.0.1:{ports.get('s3')}" if moto else "stopped"))
    app = running_pid(layout.pid_file("app"), expect=APP_PROCESS)
    say("Booking app: " + (f"running, supervisor pid {app}, http://127.0.0.1:{ports.get('app')}/health "
                           f"({layout.app})" if app else "stopped"))
    ww = running_pid(layout.pid_file("walwriter"), expect=walarchive.WAL_PROCESS)
    say("WAL writer: " + (f"running, pid {ww} (archive {layout.wal / 'archive'})" if ww else "stopped"))
    af = running_pid(layout.pid_file("airflow"), expect="airflow")
    if af:
        h = health(ports.get("airflow", 8080))
        state = ", ".join(f"{k}: {v.get('status')}" for k, v in (h or {}).items() if isinstance(v, dict))
        say(f"Airflow:    running, pid {af}, http://localhost:{ports.get('airflow')} "
            f"({state or 'API not answering yet'})")
    else:
        say("Airflow:    stopped")
    if _has_history(layout):
        n = sum(1 for p in layout.backups.rglob("*") if p.is_file() and not p.name.endswith((".sha256", ".json")))
        say(f"History:    {n} backups under {layout.backups}")
    if layout.env_file.exists():
        say(f"Shell:      source {layout.env_file}")
    return 0
