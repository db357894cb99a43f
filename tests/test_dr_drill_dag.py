"""End to end: ``dag.test()`` of backup_annual_dr_drill on a sandbox history.

Real parts only: backups made by the real pg_dump of a real PostgreSQL, their copies in a loopback
S3 (moto server) in a bucket with object lock and a default GOVERNANCE retention, every restore
into a real scratch PostgreSQL, Airflow running every task in this process, and one real HTTP
server standing in for the alert webhook, the Pushgateway and the application's smoke check.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

import airflow_env
from _daily_helpers import RecordingServer, airflow_db  # noqa: F401  (fixture)
from _drill_helpers import damage_newest_in_s3, drill_config_yaml, history_now, short_dir
from airflow.sdk.exceptions import ParamValidationError
from backupkit import clock
from backupkit.jobs import drill
from backupkit.config import load_config
from backupkit.jobs.audit import dr_drill_control
from backupkit.results import read_jsonl
from backupkit.reports.render import human_seconds
from sandbox.bookingdb import create_booking_db
from sandbox.history import generate_history
from sandbox.s3server import create_production_bucket, reset
from sandbox.stack import sandbox_env
from test_daily_dag_e2e import task_states, xcom

pytestmark = pytest.mark.airflow

DAG_ID = "backup_annual_dr_drill"
DATABASE = "trixtech_drill_dag"
DAYS = 4
SCENARIO_TASKS = [f"scenarios.{s}" for s in drill.SCENARIOS]


@pytest.fixture(scope="module")
def sandbox(airflow_db, pg, moto_server, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("dr-drill-dag")
    scratch = short_dir()
    receiver = RecordingServer()
    mp = pytest.MonkeyPatch()
    try:
        for key, value in sandbox_env(root, pg.port, moto_server.endpoint_url).items():
            mp.setenv(key, value)
        cfg = root / "backups.yaml"
        cfg.write_text(drill_config_yaml(database=DATABASE))
        mp.setenv("BACKUPKIT_CONFIG", str(cfg))
        mp.setenv("BACKUP_SCRATCH_DIR", str(scratch))
        mp.setenv("BACKUP_WEBHOOK_CONN_ID", "backup_alerts")
        mp.setenv("AIRFLOW_CONN_BACKUP_ALERTS", f"{receiver.url}/hooks/backup-alerts")
        mp.setenv("BACKUP_PUSHGATEWAY_URL", receiver.url)
        mp.setenv("BACKUP_SMOKE_URL", f"{receiver.url}/healthz")
        config = load_config()
        reset(moto_server.endpoint_url)
        s3 = moto_server.client()
        create_production_bucket(s3, config.bucket, object_lock_days=7)
        create_booking_db(pg, DATABASE, scale=300)
        history = generate_history(config, pg, now=history_now(), days=DAYS, s3_client=s3, database=DATABASE)
        yield SimpleNamespace(config=config, s3=s3, history=history, receiver=receiver, root=root, mp=mp,
                              scratch=scratch)
    finally:
        mp.undo()
        receiver.close()
        pg.psql(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)', check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def run(sb, **conf) -> SimpleNamespace:
    """Parse the DAG file now (this environment) and run it once with dag.test()."""
    from airflow.dag_processing.dagbag import DagBag

    sb.receiver.requests.clear()
    bag = DagBag(dag_folder=str(airflow_env.DAGS / f"{DAG_ID}.py"))
    assert bag.import_errors == {}
    dr = bag.dags[DAG_ID].test(run_conf=conf or None)
    prefix = f"{sb.config.reports.prefix}dr-drill/{dr.run_after.date().isoformat()}/"
    location = xcom(dr, "publish_report", "report_location")  # pushed once this run's report is written
    report = None
    if location:
        report = json.loads(sb.s3.get_object(Bucket=sb.config.bucket, Key=prefix + "drill.json")["Body"].read())
    return SimpleNamespace(
        dr=dr, state=str(getattr(dr.state, "value", dr.state)), states=task_states(dr), prefix=prefix, report=report,
        results={r["name"]: r for r in (report or {}).get("results", [])},
        location=location,
        alerts=[json.loads(r.body) for r in sb.receiver.requests if r.path.startswith("/hooks/")],
        pushes=[r for r in sb.receiver.requests if r.path.startswith("/metrics/")],
        smoke=[r for r in sb.receiver.requests if r.path == "/healthz"])


def drills(sb) -> list[dict]:
    path = sb.config.state.dr_drills
    return read_jsonl(path)[0] if path.exists() else []


def metrics(sb) -> dict[tuple, float]:
    text = (sb.config.state_dir / "metrics" / "dr_drill.prom").read_text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def no_leftover_scratch(sb) -> None:
    assert not list(sb.scratch.rglob("postmaster.pid")), "a scratch server is still there"


def test_the_annual_drill_passes_and_reports_rto_and_rpo_for_every_scenario(sandbox):
    nights = sandbox.history.nights
    compromise = nights[-1] - timedelta(hours=1)  # between the two newest backups
    before = len(drills(sandbox))
    out = run(sandbox, compromise_time=compromise.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert out.state == "success", {n: r["reasons"] for n, r in out.results.items()}
    assert out.states == {t: "success" for t in ["plan_drill", *SCENARIO_TASKS, "teardown_scratch",
                                                 "publish_report", "export_metrics"]}

    # Every scenario measured, within its targets, in the report in the bucket and on disk.
    assert list(out.results) == list(drill.SCENARIOS)
    for name, r in out.results.items():
        assert r["ok"] and 0 < r["rto_seconds"] <= r["rto_target_seconds"] == 30 * 60, name
        assert 0 < r["rpo_seconds"] <= r["rpo_target_seconds"] == 48 * 3600, name
    assert out.location == f"s3://{sandbox.config.bucket}/{out.prefix}report.md"
    md = sandbox.s3.get_object(Bucket=sandbox.config.bucket, Key=out.prefix + "report.md")["Body"].read().decode()
    local = sandbox.config.state_dir / "reports" / "dr-drill" / out.prefix.rstrip("/").rsplit("/", 1)[1]
    assert (local / "report.md").read_text() == md and (local / "report.html").exists()
    assert "Verdict: PASSED: every scenario met its targets." in md
    for name, r in out.results.items():
        row = [line for line in md.splitlines() if line.startswith(f"| {drill.TITLES[name]} | PASS | ")]
        assert len(row) == 1, name
        assert f"| {human_seconds(r['rto_seconds'])} | 30.0 min | {human_seconds(r['rpo_seconds'])} | 48.0 h |" \
            in row[0]

    # Ransomware: the locked probe refused deletion; the backup before the compromise was restored.
    ransomware = out.results["ransomware"]
    assert "OK delete refused: DeleteObject of version" in "\n".join(ransomware["evidence"])
    assert any(line.startswith("- OK delete refused:") and "answered AccessDenied" in line for line in md.splitlines())
    restored = {r["source"]: r["backup"] for r in ransomware["restores"] if r["ok"]}
    assert restored == {s: paths[-2].name for s, paths in sandbox.history.sources.items()}
    assert ransomware["rpo_seconds"] == pytest.approx((compromise - nights[-2]).total_seconds())
    assert ransomware["disaster_time"] == compromise.isoformat()
    # The sandbox uploaded its whole history just now, after the simulated compromise: said so.
    assert any("uploaded after it" in n for n in ransomware["notes"])
    # Database corruption restored the newest backups; RPO = the scenario's start minus the newest night.
    corruption = out.results["database_corruption"]
    assert {r["backup"] for r in corruption["restores"]} == {sandbox.history.newest("trixtech-db").name,
                                                             sandbox.history.newest("trixtech-db-sql").name}
    start = datetime.fromisoformat(corruption["disaster_time"])
    assert corruption["rpo_seconds"] == pytest.approx((start - nights[-1]).total_seconds(), abs=0.01)
    # The smoke check ran against the application (once per run, after the restores).
    assert len(out.smoke) == 1 and out.smoke[0].method == "GET"

    # Recorded for the quarterly audit, which now passes its drill control.
    records = drills(sandbox)
    assert len(records) == before + 1 and records[-1]["ok"] is True
    assert isinstance(records[-1]["triggered_by"], str) and records[-1]["triggered_by"]   # who started it
    assert [s["name"] for s in records[-1]["scenarios"]] == list(drill.SCENARIOS)
    assert dr_drill_control(sandbox.config, now=clock.now()).status == "pass"

    # Metrics: exported to the textfile and pushed; the last success is this run's.
    values = metrics(sandbox)
    last = values[("backup_dr_drill_last_success_timestamp_seconds", ())]
    assert abs(last - clock.now().timestamp()) < 600
    for name, r in out.results.items():
        assert values[("backup_dr_drill_rto_seconds", (("scenario", name),))] == r["rto_seconds"]
        assert values[("backup_dr_drill_rpo_seconds", (("scenario", name),))] == r["rpo_seconds"]
        assert values[("backup_dr_drill_status", (("scenario", name),))] == 1.0
    [push] = out.pushes
    assert push.method == "PUT" and push.path == f"/metrics/job/{DAG_ID}"
    assert out.alerts == []
    no_leftover_scratch(sandbox)


def test_the_s3_scenarios_recover_with_the_local_site_gone(sandbox, tmp_path):
    """BACKUP_ROOT points at an empty directory: the S3-only scenarios still pass. A partial run is
    reported but not recorded as the annual drill."""
    empty = tmp_path / "lost-site"
    empty.mkdir()
    before = len(drills(sandbox))
    sandbox.mp.setenv("BACKUP_ROOT", str(empty))
    try:
        out = run(sandbox, scenarios=["ransomware", "datacenter_loss"])
    finally:
        sandbox.mp.setenv("BACKUP_ROOT", str(sandbox.root / "backups"))
    assert out.state == "success", {n: r["reasons"] for n, r in out.results.items()}
    assert out.states["scenarios.database_corruption"] == out.states["scenarios.failed_deployment"] == "skipped"
    assert list(out.results) == ["datacenter_loss", "ransomware"]
    for r in out.results.values():
        assert {x["source"] for x in r["restores"]} == {"trixtech-db", "trixtech-db-sql", "trixtech-files"}
        assert all(x["ok"] and x["location"].startswith("s3://") for x in r["restores"])
    assert list(empty.iterdir()) == []
    assert len(drills(sandbox)) == before  # a rehearsal, not the annual drill
    assert out.report["plan"]["complete"] is False


def test_a_missed_rpo_target_fails_the_run_and_alerts(sandbox):
    """The newest backup is at least two hours old: a one-hour RPO target cannot be met."""
    store = sandbox.config.state.metrics_values("dr_drill")
    last_before = store.read_text() if store.exists() else None
    out = run(sandbox, scenarios=["database_corruption"], rpo_target_hours=1)
    assert out.state == "failed"
    assert out.states["scenarios.database_corruption"] == "success"  # the restore itself worked
    assert out.states["publish_report"] == "failed" and out.states["export_metrics"] == "success"
    r = out.results["database_corruption"]
    assert not r["ok"] and r["rpo_seconds"] > 3600 and r["rto_seconds"] is not None
    assert any("RPO" in reason and "exceeds the target 60.0 min" in reason for reason in r["reasons"])
    [alert] = out.alerts
    assert alert["text"].startswith(f"Backup job failed: {DAG_ID}.publish_report")
    assert "exceeds the target 60.0 min" in alert["text"]
    assert metrics(sandbox)[("backup_dr_drill_status", (("scenario", "database_corruption"),))] == 0.0
    assert (store.read_text() if store.exists() else None) == last_before  # a failure never moves it


def test_a_damaged_newest_backup_in_s3_fails_the_drill(sandbox):
    injected = damage_newest_in_s3(sandbox.config, sandbox.history, sandbox.s3, "trixtech-db-sql")
    try:
        out = run(sandbox, scenarios=["datacenter_loss"])
    finally:
        injected.undo()
    assert out.state == "failed" and out.states["publish_report"] == "failed"
    r = out.results["datacenter_loss"]
    attempts = [x for x in r["restores"] if x["source"] == "trixtech-db-sql"]
    assert [x["ok"] for x in attempts] == [False, True]
    assert attempts[0]["backup"] == sandbox.history.newest("trixtech-db-sql").name
    assert any("differs from the sidecar's" in reason for reason in r["reasons"])
    [alert] = out.alerts
    assert "datacenter_loss" in alert["text"]


def test_invalid_requests_stop_before_anything_is_restored(sandbox):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(airflow_env.DAGS / f"{DAG_ID}.py")).dags[DAG_ID]
    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"scenarios": ["meteor_strike"]})
    future = (clock.now() + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = run(sandbox, compromise_time=future)
    assert out.state == "failed" and out.states["plan_drill"] == "failed"
    assert all(out.states[t] == "upstream_failed" for t in SCENARIO_TASKS)
    assert out.states["publish_report"] == "failed" and out.location is None and out.report is None
    assert any("is in the future" in a["text"] for a in out.alerts)


def test_form_fields_have_titles_and_descriptions(sandbox):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(airflow_env.DAGS / f"{DAG_ID}.py")).dags[DAG_ID]
    for name in dag.params:
        param = dag.params.get_param(name)
        assert param.schema.get("title") and param.description, name
    assert dag.params.get_param("scenarios").schema["items"]["enum"] == list(drill.SCENARIOS)
    assert "Evaluation phase" in dag.doc_md and "How to read RTO and RPO" in dag.doc_md
