"""``backup_restore`` in replace mode on the local platform, end to end under ``dag.test()``:
approval, scale down, switch, scale up, health check against the real booking application on
a real PostgreSQL -- and the rollback when the restored database cannot serve the app."""

from __future__ import annotations

import shutil

import pytest

import airflow_env
from _clock import SESSION_NOW
from _daily_helpers import airflow_db  # noqa: F401  (fixture)
from _restore_helpers import DATABASE, Approver, restore_config_yaml, short_dir
from backupkit.config import load_config
from backupkit.restore.local_platform import read_spec
from backupkit.restore.journal import RestoreJournal
from sandbox.bookingdb import create_booking_db
from sandbox.history import generate_history
from sandbox.s3server import create_production_bucket, reset
from sandbox.stack import sandbox_env
from test_daily_dag_e2e import task_states
from test_local_platform import BACKEND, NS, App, get_json

REASON = "INC-2001: rehearse the emergency restore on the sandbox"


@pytest.fixture(scope="module")
def env(airflow_db, pg, moto_server, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("local-replace")
    scratch = short_dir()
    mp = pytest.MonkeyPatch()
    create_booking_db(pg, DATABASE, scale=300)
    app = None
    try:
        for k, v in sandbox_env(tmp, pg.port, moto_server.endpoint_url).items():
            mp.setenv(k, v)
        import test_local_platform

        mp.setattr(test_local_platform, "DB", DATABASE)
        app = App(tmp, pg)
        (tmp / "restore-root").mkdir()
        cfg = tmp / "backups.yaml"
        cfg.write_text(restore_config_yaml(database=DATABASE, allowed_root=tmp / "restore-root", app_namespace=NS,
                                           rollout_timeout=8,
                                           extra_app=f"    platform: local\n    control_dir: {app.control}\n"
                                                     f"    health_url: {app.health}\n"))
        mp.setenv("BACKUPKIT_CONFIG", str(cfg))
        mp.setenv("BACKUP_SCRATCH_DIR", str(scratch))
        mp.setenv("BACKUP_PUSHGATEWAY_URL", "")
        mp.delenv("BACKUP_WEBHOOK_CONN_ID", raising=False)
        reset(moto_server.endpoint_url)
        s3 = moto_server.client()
        config = load_config()
        create_production_bucket(s3, config.bucket)
        generate_history(config, pg, now=SESSION_NOW, days=3, s3_client=s3, database=DATABASE)
        yield config, app, pg
    finally:
        if app is not None:
            app.stop()
        mp.undo()
        for db in pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{DATABASE}%'").split():
            pg.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(airflow_env.DAGS / "backup_restore.py"))
    assert bag.import_errors == {}
    return bag.dags["backup_restore"]


def test_the_form_names_the_configured_platform(env):
    params = dag().params
    assert params.get_param("mode").schema["enum"] == ["verify_only", "replace"]
    assert "Kubernetes" not in str(params.get_param("mode").schema) + params.get_param("namespace").schema["title"]
    assert "local platform" in params.get_param("mode").schema["values_display"]["replace"]


def test_replace_switches_the_running_app_after_approval(env):
    config, app, pg = env
    with Approver("backup_restore", "approve_switch", "Approve") as approver:
        dr = dag().test(run_conf={"mode": "replace", "reason": REASON})
    assert approver.error is None and approver.answered is not None
    states = task_states(dr)
    assert states["switch"] == "success" and states["finish"] == "success", states
    status, health = get_json(app.health)
    assert status == 200 and health["database"].startswith(f"{DATABASE}_restored_")
    assert read_spec(app.control / NS / BACKEND).replicas == 2
    actions = [r["action"] for r in RestoreJournal(config.state_dir).records() if r["run_id"] == dr.run_id]
    assert actions == ["restore_requested", "restore_verified", "approval_requested", "approval_given", "switch_planned",
                       *["switch_step"] * 10, "switch_done", "restore_finished"]


def test_replace_rolls_back_when_the_app_cannot_use_the_restored_database(env):
    config, app, pg = env
    # A replace starts from an application on the source's database (the test before switched it).
    app.platform.write_setting(NS, f"deployment/{BACKEND}/app", f"postgresql://postgres@127.0.0.1:{pg.port}/{DATABASE}")
    app.platform.wait_for_replicas(NS, BACKEND, 2, 30)
    before = get_json(app.health)[1]["database"]
    assert before == DATABASE

    def break_new_database():  # after the restore was verified, before the switch
        for db in pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{DATABASE}_restored_%' "
                          ).split():
            pg.psql(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS false')

    with Approver("backup_restore", "approve_switch", "Approve", before=break_new_database) as approver:
        dr = dag().test(run_conf={"mode": "replace", "reason": REASON})
    assert approver.error is None
    states = task_states(dr)
    assert states["switch"] == "failed" and states["finish"] == "failed", states
    recs = [r for r in RestoreJournal(config.state_dir).records() if r["run_id"] == dr.run_id]
    assert recs[-2]["action"] == "rollback_done" and recs[-2]["errors"] == [] and recs[-1]["outcome"] == "rolled_back"
    assert get_json(app.health)[1]["database"] == before  # serving from the database it had
    assert read_spec(app.control / NS / BACKEND).replicas == 2


def test_replace_on_a_platform_that_is_not_there_fails_before_restoring(env, monkeypatch):
    config, app, pg = env
    monkeypatch.setenv("BACKUPKIT_CONFIG", str(config.path))
    cfg = config.path.read_text().replace(str(app.control), str(app.control) + "-missing")
    (config.path.parent / "missing.yaml").write_text(cfg)
    monkeypatch.setenv("BACKUPKIT_CONFIG", str(config.path.parent / "missing.yaml"))
    databases = pg.psql("SELECT count(*) FROM pg_database").strip()
    dr = dag().test(run_conf={"mode": "replace", "reason": REASON})
    states = task_states(dr)
    assert states["validate_request"] == "failed" and states["restore_new_database"] != "success", states
    assert pg.psql("SELECT count(*) FROM pg_database").strip() == databases  # nothing restored
