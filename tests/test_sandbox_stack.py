"""The sandbox's process management: environment, env.sh, pid files, process groups, ports.

Airflow itself is not started here (``make up`` does that); the loopback S3 endpoint is,
to prove that a second ``up`` reuses the running process instead of starting another."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

from backupkit.config import load_config
from backupkit.pgserver import ServerUnreachable, free_port, make_traversable
from sandbox import stack
from sandbox.stack import (Layout, airflow_env, ensure_moto, pick_port, pid_alive,
                                     port_free, read_pid, render_env_sh, running_pid, sandbox_env, stop_group,
                                     stop_moto, write_pid)

ENDPOINT = "http://127.0.0.1:5055"


def test_sandbox_env_gives_every_variable_the_configuration_and_airflow_need(tmp_path, monkeypatch):
    env = sandbox_env(tmp_path, 5433, ENDPOINT)
    assert env["BACKUP_ROOT"] == str(tmp_path.resolve() / "backups")
    assert env["BACKUP_LOG_DIR"] == str(tmp_path.resolve() / "logs")
    assert env["BACKUP_STATE_DIR"] == str(tmp_path.resolve() / "state")
    assert env["AWS_ENDPOINT_URL"] == ENDPOINT
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"] and env["AWS_DEFAULT_REGION"]
    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert aws["conn_type"] == "aws" and aws["extra"]["endpoint_url"] == ENDPOINT
    assert aws["login"] == env["AWS_ACCESS_KEY_ID"] and aws["password"] == env["AWS_SECRET_ACCESS_KEY"]
    assert env["AIRFLOW_CONN_TRIXTECH_APP_DB"] == "postgresql://postgres@127.0.0.1:5433/trixtech"
    assert Path(env["BACKUPKIT_CONFIG"]).is_file()

    # With exactly these variables the configuration resolves into the sandbox, and every
    # connection it names is defined.
    for k in list(os.environ):
        if k.startswith(("BACKUP", "AIRFLOW_CONN_")):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config = load_config()
    for src in config.sources:
        assert tmp_path.resolve() / "backups" in src.local_dir.parents
    for log in config.logs:
        assert log.path.parent == tmp_path.resolve() / "logs"
    assert config.state_dir == tmp_path.resolve() / "state"
    conn_ids = {config.aws_conn_id} | {s.conn_id for s in config.databases}
    for conn_id in conn_ids:
        assert f"AIRFLOW_CONN_{conn_id.upper()}" in env, conn_id
    db_uri = env["AIRFLOW_CONN_TRIXTECH_APP_DB"]
    assert {s.database for s in config.databases} == {db_uri.rsplit("/", 1)[1]}


def test_airflow_env_points_airflow_at_the_repo_with_named_users(tmp_path):
    layout = Layout(tmp_path)
    env = airflow_env(layout, {"postgres": 5433, "s3": 5055, "airflow": 8080})
    assert env["AIRFLOW_HOME"] == str(tmp_path.resolve() / "airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"].endswith("/dags")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"].endswith("/plugins")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin,approver:user,viewer:viewer"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(tmp_path.resolve() / "airflow" / "passwords.json")
    assert env["BACKUP_APPROVERS"] == "approver"
    assert env["AIRFLOW__API__PORT"] == "8080" and "AIRFLOW__API__BASE_URL" not in env
    moved = airflow_env(layout, {"postgres": 5433, "s3": 5055, "airflow": 18080})
    assert moved["AIRFLOW__API__BASE_URL"] == "http://localhost:18080"


def test_the_sandbox_metadata_database_waits_a_minute_for_a_lock(tmp_path):
    """The scheduler exited for good on "database is locked" under load (SQLite's 5 s default):
    both engines Airflow makes from the URL (pysqlite, aiosqlite) wait 60 s and open the sandbox's file."""
    import sqlite3

    from airflow.settings import _get_async_conn_uri_from_sync
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    url = airflow_env(Layout(tmp_path), {"postgres": 5433, "s3": 5055, "airflow": 8080})[
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    for engine in (create_engine(url), create_async_engine(_get_async_conn_uri_from_sync(url)).sync_engine):
        args, kwargs = engine.dialect.create_connect_args(make_url(url))
        assert args == [str(tmp_path.resolve() / "airflow" / "airflow.db")] and kwargs["timeout"] == 60.0
    (tmp_path / "airflow").mkdir()
    writer = sqlite3.connect(tmp_path / "airflow" / "airflow.db", isolation_level=None)
    writer.execute("CREATE TABLE t (x int)")
    with create_engine(url).connect() as conn:   # a real connection through the URL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60000
    writer.close()


def test_env_sh_round_trips_through_bash(tmp_path):
    env = airflow_env(Layout(tmp_path), {"postgres": 5433, "s3": 5055, "airflow": 8080})
    env["WEIRD"] = "it's \"quoted\" $HOME `x`"
    f = tmp_path / "env.sh"
    f.write_text(render_env_sh(env, Path("/opt/venv/bin")))
    out = subprocess.run(["bash", "-c", f"source {f} && {sys.executable} -c 'import json,os; print(json.dumps(dict(os.environ)))'"],
                         capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
    seen = json.loads(out)
    for k, v in env.items():
        assert seen[k] == v, k
    assert seen["PATH"].startswith("/opt/venv/bin:") and seen["PATH"].endswith(os.environ["PATH"])


def test_pid_alive_tells_live_dead_zombie_and_recycled_pids(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 5  # between fork and exec the child is still "python"
        while not pid_alive(sleeper.pid, expect="sleep"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert pid_alive(sleeper.pid)
        assert pid_alive(sleeper.pid, expect="sleep")
        assert not pid_alive(sleeper.pid, expect=stack.S3_PROCESS)  # a recycled pid is not ours
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not pid_alive(sleeper.pid)
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not pid_alive(zombie.pid)  # exited, not yet reaped: not running
    zombie.wait()
    assert not pid_alive(0) and not pid_alive(-1)


def test_running_pid_reuses_a_live_process_and_drops_stale_files(tmp_path):
    pid_file = tmp_path / "run" / "x.pid"
    assert running_pid(pid_file) is None
    # A child of known command line (this process's title may have been changed by Airflow's
    # setproctitle in an earlier test).
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "backupkit-pid-probe"])
    try:
        write_pid(pid_file, live.pid)
        assert read_pid(pid_file) == live.pid
        assert running_pid(pid_file, expect="backupkit-pid-probe") == live.pid
        assert running_pid(pid_file, expect="some-other-program") is None  # a recycled pid is not ours
    finally:
        live.kill()
        live.wait()
    write_pid(pid_file, live.pid)
    assert pid_file.exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_pid(pid_file, dead.pid)
    assert running_pid(pid_file) is None and not pid_file.exists()
    pid_file.write_text("not a pid\n")
    assert running_pid(pid_file) is None and not pid_file.exists()


def test_stop_group_escalates_until_the_whole_group_is_gone():
    # A leader that ignores SIGINT (Ctrl-C) with a child in the background: the first signal
    # is not enough, so SIGTERM must follow, and the child must go too.
    proc = subprocess.Popen(["sh", "-c", 'trap "" INT; sleep 60 & wait'], start_new_session=True)
    time.sleep(0.3)
    t0 = time.monotonic()
    assert stop_group(proc.pid, first=signal.SIGINT, timeout=1.0)
    assert time.monotonic() - t0 < 10
    proc.wait(5)
    assert not stack._group_alive(proc.pid)
    deadline = time.monotonic() + 5  # the orphaned child's zombie is reaped by init
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "a member of the group survived"
        time.sleep(0.05)


def test_ports_taken_are_not_picked():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert not port_free(taken)
        other = pick_port(taken)
        assert other != taken and port_free(other)
    assert pick_port(other) == other


def test_make_traversable_adds_only_the_search_bit_the_user_is_judged_by(tmp_path):
    a = tmp_path / "a"
    b = a / "b"
    data = b / "data"
    data.mkdir(parents=True)
    a.chmod(0o700)
    b.chmod(0o750)
    data.chmod(0o700)
    # The server user is not in the directories' group: their "other" x bit decides.
    changed = make_traversable(data, "nobody", within=tmp_path, groups=set())
    assert a in changed and b in changed and data in changed
    for d in (a, b, data):
        mode = stat.S_IMODE(d.stat().st_mode)
        assert mode & 0o001 and not mode & 0o004  # searchable, not listable
    assert stat.S_IMODE(a.stat().st_mode) == 0o701
    assert make_traversable(data, "nobody", within=tmp_path, groups=set()) == []
    # In the directory's group: the group x bit decides, "other" stays closed.
    c = tmp_path / "c"
    c.mkdir(mode=0o700)
    c.chmod(0o700)
    assert make_traversable(c, "nobody", within=c, groups={c.stat().st_gid}) == [c]
    assert stat.S_IMODE(c.stat().st_mode) == 0o710
    assert make_traversable(data, None) == []  # not root: the server runs as ourselves


def test_make_traversable_names_the_directory_it_cannot_open(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    locked.chmod(0o700)

    def refuse(self, mode):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "chmod", refuse)
    with pytest.raises(ServerUnreachable) as err:
        make_traversable(locked, "nobody", within=locked, groups=set())
    message = str(err.value)
    assert str(locked) in message and "'nobody'" in message and "BACKUPKIT_PG_USER" in message


def test_ensure_moto_twice_starts_one_server_and_stop_ends_it(tmp_path):
    layout = Layout(tmp_path / "sbx")
    layout.create()
    ports: dict[str, int] = {}
    endpoint, started = ensure_moto(layout, ports, say=lambda *_: None, preferred=free_port())
    try:
        pid = read_pid(layout.pid_file("moto"))
        assert started and pid_alive(pid, expect=stack.S3_PROCESS)
        assert endpoint == f"http://127.0.0.1:{ports['s3']}"
        again, started_again = ensure_moto(layout, ports, say=lambda *_: None)
        assert (again, started_again) == (endpoint, False)
        assert read_pid(layout.pid_file("moto")) == pid
        # It is detached (own session), so it outlives the process that started it.
        assert os.getsid(pid) == pid != os.getsid(0)
        assert (layout.logs / "moto.log").exists()
    finally:
        assert stop_moto(layout, say=lambda *_: None)
    assert not pid_alive(pid) and not layout.pid_file("moto").exists()
    assert stop_moto(layout, say=lambda *_: None) is False


def test_layout_keeps_everything_under_its_root(tmp_path):
    layout = Layout(tmp_path / "sbx")
    layout.create()
    for p in (layout.pg_data, layout.backups, layout.logs, layout.state, layout.airflow_home, layout.run,
              layout.s3, layout.ports_file, layout.env_file, layout.pid_file("airflow")):
        assert layout.root in p.parents
    stack.save_ports(layout, {"postgres": 5433, "s3": 5055, "airflow": 8080})
    assert stack.load_ports(layout) == {"postgres": 5433, "s3": 5055, "airflow": 8080}
    layout.ports_file.write_text("garbage")
    assert stack.load_ports(layout) == {}
    assert stat.S_IMODE(layout.root.stat().st_mode) & 0o005 == 0o005  # others may enter (postgres user)


def test_the_product_never_imports_the_sandbox():
    """The sandbox is a development tool beside the product: nothing under plugins/ or dags/
    (what production Airflow loads) imports it, so it is never deployed by accident."""
    import ast

    offenders = []
    for root in (REPO / "plugins", REPO / "dags"):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "sandbox"]
    assert offenders == []


def test_python_m_sandbox_is_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "sandbox", "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "up" in proc.stdout and "down" in proc.stdout


def test_ensure_app_twice_starts_one_supervisor_and_stop_ends_it_with_its_replicas(tmp_path, pg, monkeypatch):
    from backupkit.restore.local_platform import read_status

    layout = Layout(tmp_path / "sbx")
    layout.create()
    for k, v in sandbox_env(layout.root, pg.port, ENDPOINT).items():
        monkeypatch.setenv(k, v)
    ports = {"postgres": pg.port, "app": free_port(), "frontend": free_port()}
    pid = stack.ensure_app(layout, ports, say=lambda *_: None)
    try:
        assert stack.ensure_app(layout, ports, say=lambda *_: None) == pid
        assert os.getsid(pid) == pid  # detached: outlives `make up`
        status = layout.app / "default" / "trixtech-backend"
        deadline = time.monotonic() + 30
        while (read_status(status) or None) is None or read_status(status).replicas != 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        assert stack.stop_app(layout, say=lambda *_: None)
    assert not pid_alive(pid) and not stack._group_alive(pid)  # the replicas went with it
    assert stack.stop_app(layout, say=lambda *_: None) is False


def test_a_running_airflow_is_reused_only_with_the_same_environment_and_plugin_code(tmp_path, monkeypatch):
    env = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False", "BACKUP_APPROVERS": "approver"}
    same = stack.airflow_fingerprint(dict(env))
    assert stack.airflow_fingerprint(env) == same
    assert stack.airflow_fingerprint({**env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True"}) != same
    # Plugin code is loaded at start: a changed plugin module means a restart.
    fake = tmp_path / "repo"
    (fake / "plugins" / "p").mkdir(parents=True)
    (fake / "plugins" / "p" / "m.py").write_text("X = 1\n")
    monkeypatch.setattr(stack, "REPO_ROOT", fake)
    before = stack.airflow_fingerprint(env)
    (fake / "plugins" / "p" / "m.py").write_text("X = 2\n")
    assert stack.airflow_fingerprint(env) != before


def test_an_airflow_that_lost_a_component_is_restarted_not_reused(tmp_path, monkeypatch):
    """`airflow standalone` keeps running when its scheduler exits (a zombie child): `make up` restarts it."""
    from sandbox.procs import dead_children

    # A stand-in supervisor named like Airflow: one child alive, one exited and never reaped.
    code = ("import subprocess, time; subprocess.Popen(['sleep', '60']); p = subprocess.Popen(['true']); "
            "time.sleep(60)  # airflow")
    parent = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not dead_children(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(dead_children(parent.pid)) == 1
        layout = Layout(tmp_path)
        layout.create()
        stack.write_pid(layout.pid_file("airflow"), parent.pid)
        ports = {"postgres": 5433, "s3": 5055, "airflow": 8080}
        (layout.run / "airflow.fingerprint").write_text(stack.airflow_fingerprint(airflow_env(layout, ports)) + "\n")
        started = []
        monkeypatch.setattr(stack, "start_detached", lambda argv, **kw: started.append(argv) or 424242)
        said = []
        assert stack.ensure_airflow(layout, ports, say=said.append) == (424242, True)
        assert "lost 1 of its components" in said[0] and started[0][-1] == "standalone"
        parent.wait(timeout=30)   # the old one was stopped, its whole group
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
