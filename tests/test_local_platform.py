"""The local application platform: LocalAppPlatform over a control directory, the sandbox's
supervisor running the booking application as real processes on a real PostgreSQL, the
replace procedure switching (and rolling back) for real, the control files' rules, the
configuration keys, and configuration errors that fail at once.

Before this, the sandbox had no platform at all: replace mode ended in a raw
``ConfigException: Invalid kube-config file`` after 2 x 5 minutes of retries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupkit import clock
from backupkit.config import AppSwitch, ConfigError, load_config
from backupkit.pgserver import free_port
from backupkit.restore.local_platform import (ControlError, LocalAppPlatform, Spec, Status, read_spec, read_status,
                                              settled, write_json)
from backupkit.restore.health import http_health_check
from backupkit.restore.journal import RestoreJournal
from backupkit.restore.rollback import Retry
from backupkit.restore.switch import SagaLog, SwitchFailed, plan_switch, switch_database
from sandbox import appsupervisor
from sandbox.bookingdb import create_booking_db

REPO = Path(__file__).resolve().parents[1]
NS, BACKEND, FRONTEND = "default", "trixtech-backend", "trixtech-frontend"
DB, OTHER = "trixtech_lp", "trixtech_lp_new"


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class App:
    """The booking application on the local platform: seeded specs and a running supervisor."""

    def __init__(self, root: Path, pg):
        self.control = root / "app"
        self.backend_port, self.frontend_port = free_port(), free_port()
        appsupervisor.seed(self.control, namespace=NS, backend=BACKEND, frontend=FRONTEND,
                           database_url=f"postgresql://postgres@127.0.0.1:{pg.port}/{DB}",
                           backend_port=self.backend_port, frontend_port=self.frontend_port, pg_port=pg.port,
                           say=lambda *_: None)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
        self.proc = subprocess.Popen([sys.executable, "-m", "sandbox.appsupervisor", "--control-dir", str(self.control)],
                                     env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.switch = AppSwitch(platform="local", control_dir=self.control, namespace=NS,
                                deployments=(BACKEND, FRONTEND), rollout_timeout_seconds=30)
        self.platform = LocalAppPlatform(self.switch)
        self.platform.wait_for_replicas(NS, BACKEND, 2, 30)
        self.platform.wait_for_replicas(NS, FRONTEND, 1, 30)

    @property
    def health(self) -> str:
        return f"http://127.0.0.1:{self.backend_port}/health"

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)


@pytest.fixture(scope="module")
def app(pg, tmp_path_factory):
    create_booking_db(pg, DB, scale=300)
    create_booking_db(pg, OTHER, scale=100)
    a = App(tmp_path_factory.mktemp("local-platform"), pg)
    yield a
    a.stop()
    for db in (DB, OTHER):
        pg.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', check=False)


def _plan(app, old: str, new: str):
    return plan_switch(app.platform, namespace=NS, deployments=[BACKEND, FRONTEND], old_database=old, new_database=new)


def test_the_booking_app_answers_from_its_database(app):
    assert get_json(app.health) == (200, {"status": "ok", "database": DB, "bookings": 1200})
    status, body = get_json(f"http://127.0.0.1:{app.frontend_port}/api/bookings?limit=3")
    assert status == 200 and body["database"] == DB and len(body["bookings"]) == 3
    assert get_json(f"http://127.0.0.1:{app.backend_port}/api/bookings?limit=0")[0] == 400


def test_scale_to_zero_and_back(app):
    app.platform.scale(NS, FRONTEND, 0)
    app.platform.wait_for_replicas(NS, FRONTEND, 0, 20)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{app.frontend_port}/health", timeout=2)
    app.platform.scale(NS, FRONTEND, 1)
    app.platform.wait_for_replicas(NS, FRONTEND, 1, 20)
    assert get_json(f"http://127.0.0.1:{app.frontend_port}/health")[0] == 200
    assert app.platform.get_replicas(NS, FRONTEND) == 1


def test_switch_and_a_failing_switch_that_rolls_back(app, pg, tmp_path):
    log = SagaLog(RestoreJournal(tmp_path / "state"), "run-lp", "trixtech-db")
    fast = Retry(attempts=3, backoff=0.1)
    plan = _plan(app, DB, OTHER)
    assert plan.replicas == {BACKEND: 2, FRONTEND: 1}
    assert list(plan.old) == [f"deployment/{BACKEND}/app"]  # the frontend has no DATABASE_URL: scaled, not switched
    result = switch_database(app.platform, plan, log=log, timeout=30, retry=fast,
                             health_checks=[http_health_check(app.health, timeout=10)])
    assert result["ok"] and get_json(app.health)[1]["database"] == OTHER
    assert read_spec(app.control / NS / BACKEND).env["DATABASE_URL"].endswith("/" + OTHER)

    # A database the application cannot use: the new replicas never get ready, the old
    # setting and replica counts come back, and the app answers from its database again.
    pg.psql("CREATE DATABASE trixtech_lp_empty")
    try:
        broken = _plan(app, OTHER, "trixtech_lp_empty")
        with pytest.raises(SwitchFailed, match="wait_ready trixtech-backend.*rolled back") as err:
            switch_database(app.platform, broken, log=log, timeout=5, retry=fast,
                            health_checks=[http_health_check(app.health, timeout=3)])
        assert err.value.outcome.ok and err.value.outcome.errors == []
        assert get_json(app.health)[1]["database"] == OTHER
        assert app.platform.get_replicas(NS, BACKEND) == 2
        # and back to where the module started
        switch_database(app.platform, _plan(app, OTHER, DB), log=log, timeout=30, retry=fast)
        assert get_json(app.health)[1]["database"] == DB
    finally:
        pg.psql('DROP DATABASE IF EXISTS "trixtech_lp_empty" WITH (FORCE)', check=False)


def test_a_stopped_supervisor_is_named_not_waited_for(app):
    stale = LocalAppPlatform(app.switch, wall=lambda: clock.timestamp() + 3600, sleep=lambda s: None)
    with pytest.raises(RuntimeError, match=r"supervisor has not updated .* \(is the sandbox running"):
        stale.wait_for_replicas(NS, BACKEND, 3, timeout=60)


def test_unknown_deployments_and_targets_are_refused(app):
    with pytest.raises(ControlError, match="no deployment 'api' in namespace 'default'.*known: trixtech-backend"):
        app.platform.get_replicas(NS, "api")
    with pytest.raises(ControlError, match="not a valid name"):
        app.platform.get_replicas("../etc", BACKEND)
    with pytest.raises(ControlError, match="deployment/<name>/<container>"):
        app.platform.write_setting(NS, "secret/db/url", "x")


# -- the control files' rules (docs/local-platform.md) -------------------------------------------------
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                                            children, max_size=3),
                           max_leaves=12)
docs = st.fixed_dictionaries({}, optional={"format": st.sampled_from([1, 2, "1"]), "generation": json_values,
                                           "replicas": json_values, "env": json_values, "observed_generation": json_values,
                                           "ready_replicas": json_values, "updated_replicas": json_values,
                                           "heartbeat": json_values, "message": json_values})


@settings(max_examples=300, deadline=None)
@given(doc=docs | json_values, raw=st.none() | st.binary(max_size=64))
def test_control_files_load_or_are_refused_with_the_file_named(tmp_path_factory, doc, raw):
    d = tmp_path_factory.mktemp("ctl", numbered=True)
    for name in ("spec.json", "status.json"):
        (d / name).write_bytes(raw if raw is not None else json.dumps(doc).encode())
    for read in (read_spec, read_status):
        try:
            out = read(d)
        except ControlError as exc:
            assert str(d) in str(exc)
        else:
            assert isinstance(out, (Spec, Status))


def test_control_file_size_is_limited_while_reading(tmp_path):
    (tmp_path / "spec.json").write_text('{"format": 1, "env": {"A": "' + "x" * 70_000 + '"}}')
    with pytest.raises(ControlError, match="larger than 65536 bytes"):
        read_spec(tmp_path)


def test_settled_needs_the_observed_generation_and_every_replica():
    spec = Spec(4, 2, {})
    assert settled(spec, Status(4, 2, 2, 2, 0.0), 2)[0]
    assert not settled(spec, Status(3, 2, 2, 2, 0.0), 2)[0]  # the supervisor has not seen the change yet
    assert not settled(spec, Status(4, 2, 1, 2, 0.0), 2)[0]
    assert not settled(spec, Status(4, 2, 2, 1, 0.0), 2)[0]  # one replica still has the old env
    assert settled(Spec(5, 0, {}), Status(5, 0, 0, 0, 0.0), 0)[0]
    assert not settled(spec, None, 0)[0]


def test_writes_are_atomic_and_bump_the_generation(app, tmp_path):
    before = read_spec(app.control / NS / FRONTEND).generation
    app.platform.scale(NS, FRONTEND, 1)  # no change: no new generation
    assert read_spec(app.control / NS / FRONTEND).generation == before
    write_json(tmp_path / "x.json", {"format": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# -- configuration ---------------------------------------------------------------------------------------
def _load(tmp_path, app_yaml: str):
    f = tmp_path / "backups.yaml"
    f.write_text(f"""
bucket: {{name: b-ucket, aws_conn_id: aws_default}}
databases:
  - {{name: db, database: d, conn_id: c, dump_format: custom, local_dir: /tmp/x, s3_prefix: database/,
     pattern: "d_%Y%m%d_%H%M%S.dump"}}
restore:
  app:
{app_yaml}
""")
    return load_config(f)


def test_configuration_of_the_platform(tmp_path):
    app = _load(tmp_path, "    platform: local\n    control_dir: /srv/app\n    deployments: [api]").restore.app
    assert (app.platform, app.control_dir) == ("local", Path("/srv/app"))
    assert _load(tmp_path, "    deployments: [api]").restore.app.platform == "kubernetes"
    for bad, why in (("    platform: nomad", "must be one of kubernetes, local; got 'nomad'"),
                     ("    platform: local", "platform 'local' needs control_dir"),
                     ("    platform: local\n    control_dir: relative/dir", "needs control_dir, an absolute path"),
                     ("    platform: local\n    control_dir: /x\n    setting: secret\n    secret_name: s",
                      "supports only setting 'env'")):
        with pytest.raises(ConfigError, match=why):
            _load(tmp_path, bad)


def test_platform_configuration_errors_fail_the_task_at_once(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from backup_airflow import restore_operators as ro

    config = _load(tmp_path, f"    platform: local\n    control_dir: {tmp_path / 'nope'}\n    deployments: [api]")
    with pytest.raises(AirflowFailException, match="control_dir .* does not exist"):
        ro.app_platform(config)
    config = _load(tmp_path, "    deployments: [api]")

    def no_kube_config(conn_id):
        from kubernetes.config.config_exception import ConfigException

        raise ConfigException("Invalid kube-config file. No configuration found.")

    monkeypatch.setattr(ro, "kube_clients", no_kube_config)
    with pytest.raises(AirflowFailException, match="no Kubernetes client .* set restore.app.platform: local"):
        ro.app_platform(config)
    (tmp_path / "ctl").mkdir()
    config = _load(tmp_path, f"    platform: local\n    control_dir: {tmp_path / 'ctl'}\n    deployments: [api]")
    assert isinstance(ro.app_platform(config), LocalAppPlatform)


def test_seed_keeps_a_switched_database_and_follows_postgres_to_a_new_port(tmp_path):
    args = dict(namespace=NS, backend=BACKEND, frontend=FRONTEND, backend_port=1, frontend_port=2, say=lambda *_: None)
    appsupervisor.seed(tmp_path, database_url="postgresql://postgres@127.0.0.1:5433/trixtech", pg_port=5433, **args)
    d = tmp_path / NS / BACKEND
    platform = LocalAppPlatform(AppSwitch(platform="local", control_dir=tmp_path))
    platform.write_setting(NS, f"deployment/{BACKEND}/app", "postgresql://postgres@127.0.0.1:5433/trixtech_restored_1")
    generation = read_spec(d).generation
    appsupervisor.seed(tmp_path, database_url="postgresql://postgres@127.0.0.1:5433/trixtech", pg_port=5433, **args)
    assert read_spec(d).generation == generation  # a restart keeps what the replace switched
    appsupervisor.seed(tmp_path, database_url="postgresql://postgres@127.0.0.1:6000/trixtech", pg_port=6000, **args)
    spec = read_spec(d)
    assert spec.env["DATABASE_URL"] == "postgresql://postgres@127.0.0.1:6000/trixtech_restored_1"
    assert spec.generation == generation + 1 and spec.extra["program"] == {"role": "backend", "port": 1}
