"""End to end: ``dag.test()`` of backup_daily_verification against a generated sandbox.

Real parts only: backups made by the real pg_dump of a real PostgreSQL, copies in a real S3 API
on loopback (moto server) uploaded with SHA-256 checksums, Airflow running every task in this
process against a migrated SQLite metadata DB, the alert webhook and the Pushgateway as real
HTTP servers. Each case generates its own ~5 weeks of history with one realistic defect and
expects the run to fail naming the artifact -- or to pass, and emit the asset, when healthy.
"""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

import airflow_env
from _clock import SESSION_NOW
from _daily_helpers import RecordingServer, airflow_db, task_states  # noqa: F401  (fixture)
from airflow.sdk.exceptions import AirflowFailException
from backup_airflow.common import VerificationFailed
from backup_airflow.operators import BackupFreshnessOperator, collect_results
from backupkit.config import load_config
from sandbox.bookingdb import create_booking_db
from sandbox.history import Defects, generate_history
from sandbox.s3server import create_production_bucket, reset
from sandbox.stack import sandbox_env

DAG_ID = "backup_daily_verification"
DAYS = 35
DATABASE = "trixtech_daily_e2e"  # our own copy: generate_history grows the database it dumps


@pytest.fixture(scope="module")
def e2e_db(pg):
    create_booking_db(pg, DATABASE, scale=400)
    yield DATABASE
    # Best effort: the whole cluster is a throwaway of the session.
    pg.psql(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)', check=False)


@pytest.fixture(scope="module")
def receiver():
    """One HTTP server for both the alert webhook (/hooks/...) and the Pushgateway (/metrics/...)."""
    server = RecordingServer()
    yield server
    server.close()


@pytest.fixture
def run_daily(airflow_db, pg, e2e_db, moto_server, receiver, tmp_path, monkeypatch):  # noqa: F811
    """Generate a history with ``defects``, point Airflow and backupkit at it, run the DAG once."""

    def run(defects: Defects | None = None) -> dict:
        reset(moto_server.endpoint_url)
        s3 = moto_server.client()
        for key, value in sandbox_env(tmp_path, pg.port, moto_server.endpoint_url).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("BACKUP_WEBHOOK_CONN_ID", "backup_alerts")
        monkeypatch.setenv("AIRFLOW_CONN_BACKUP_ALERTS", f"{receiver.url}/hooks/backup-alerts")
        monkeypatch.setenv("BACKUP_PUSHGATEWAY_URL", receiver.url)
        config = load_config()
        create_production_bucket(s3, config.bucket)
        now = SESSION_NOW
        history = generate_history(config, pg, now=now, days=DAYS, s3_client=s3, defects=defects or Defects(),
                                   database=e2e_db)
        receiver.requests.clear()

        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(airflow_env.DAGS))  # parsed now, with this case's environment
        assert bag.import_errors == {}
        dag = bag.dags[DAG_ID]
        # dag.test() crashes on a DAG with a deadline once the run succeeds in Airflow 3.3.2
        # (apache/airflow#73428); the deadline itself is covered by tests/test_deadline.py.
        dag.deadline = None
        dr = dag.test()
        return {"dr": dr, "history": history, "config": config, "states": task_states(dr),
                "report": xcom(dr, "summarize", "report"), "summary": xcom(dr, "summarize", "return_value"),
                "alerts": [json.loads(r.body) for r in receiver.requests if r.path.startswith("/hooks/")],
                "pushes": [r for r in receiver.requests if r.path.startswith("/metrics/")],
                "asset_events": asset_events(dr)}

    return run


def xcom(dr, task_id: str, key: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id,
                                                  key=key)).all()
        return XComModel.deserialize_value(rows[0]) if rows else None


def asset_events(dr) -> list[str]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        q = (select(AssetModel.uri).join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
             .where(AssetEvent.source_run_id == dr.run_id, AssetEvent.source_dag_id == dr.dag_id))
        return list(session.scalars(q))


def metric_values(path) -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            out[(s.name, s.labels.get("source", ""))] = s.value
    return out


def problem_lines(out: dict) -> list[str]:
    return [f"{p['artifact']}: {p['check']}: {p['detail']}" for p in out["report"]["problems"]]


def assert_failed_with_alert(out: dict, artifact: str) -> None:
    """The run failed in summarize (checks themselves succeeded), and the alert names ``artifact``."""
    assert str(out["dr"].state) in ("failed", "DagRunState.FAILED"), out["states"]
    states = out["states"]
    assert states["summarize"] == "failed"
    assert states["export_metrics"] == "success"  # metrics are exported whatever the verdict
    assert all(s == "success" for t, s in states.items() if t.startswith("check_")), states
    assert any(p["artifact"] == artifact for p in out["report"]["problems"]), problem_lines(out)
    assert out["asset_events"] == []  # retention must not run on a day that did not verify
    [alert] = out["alerts"]  # exactly one: the summary task's failure, through the webhook
    assert alert["text"].startswith(f"Backup job failed: {DAG_ID}.summarize")
    assert artifact in alert["text"]


def test_healthy_history_passes(run_daily):
    out = run_daily()
    config = out["config"]
    assert str(out["dr"].state) in ("success", "DagRunState.SUCCESS"), (out["states"], out["report"])
    n = len(config.sources)
    expected = {"sources", "check_backup_logs", "summarize", "export_metrics"}
    expected |= {f"{t}[{i}]" for t in ("check_freshness", "check_integrity", "check_cloud_copies")
                 for i in range(n)}
    assert out["states"] == {t: "success" for t in expected}
    # Mapped instances are labelled with their source in the UI (map_index_template).
    labels = {ti.rendered_map_index for ti in out["dr"].get_task_instances() if ti.task_id == "check_integrity"}
    assert labels == {s.name for s in config.sources}
    assert out["summary"]["ok"] is True and out["summary"]["problems"] == []
    assert out["alerts"] == []
    assert out["asset_events"] == ["x-backupkit://verification/daily"]
    # Metrics: textfile always, and one PUT to the Pushgateway with the same numbers.
    prom = config.state_dir / "metrics" / "daily.prom"
    values = metric_values(prom)
    for src in config.sources:
        newest = out["history"].newest(src.name)
        assert values[("backup_verification_status", src.name)] == 1
        assert values[("backup_verification_problems", src.name)] == 0
        assert values[("backup_size_bytes", src.name)] > 0
        assert 0 < values[("backup_age_seconds", src.name)] < 25 * 3600, newest
        assert values[("backup_verification_last_success_timestamp_seconds", src.name)] > 0
    [push] = out["pushes"]
    assert push.method == "PUT" and push.path == "/metrics/job/backup_daily_verification"
    assert push.body.decode() == prom.read_text()


def test_the_run_writes_the_health_pages_facts_with_its_run_id(run_daily):
    """export_metrics leaves facts/daily.json naming this run, each source's map index and the S3 evidence."""
    from backupkit.health import read_daily_run

    out = run_daily()
    config = out["config"]
    facts = read_daily_run(config.state.facts_file("daily"))
    assert (facts["dag_id"], facts["run_id"]) == (DAG_ID, out["dr"].run_id)
    assert [facts["sources"][s.name]["map_index"] for s in config.sources] == list(range(len(config.sources)))
    newest = out["history"].newest("trixtech-db").name
    assert facts["sources"]["trixtech-db"]["s3"][newest]["ok"] is True
    assert facts["sources"]["trixtech-db"]["s3"][newest]["method"] != "none"


def test_damaged_newest_backup_fails_naming_it(run_daily):
    out = run_daily(Defects(damaged="trixtech-db"))
    newest = out["history"].newest("trixtech-db").name
    artifact = f"trixtech-db/{newest}"
    assert_failed_with_alert(out, artifact)
    checks = {p["check"] for p in out["report"]["problems"] if p["artifact"] == artifact}
    assert checks, problem_lines(out)
    # Only the damaged source is red in the metrics.
    values = metric_values(out["config"].state_dir / "metrics" / "daily.prom")
    assert values[("backup_verification_status", "trixtech-db")] == 0
    assert values[("backup_verification_status", "trixtech-files")] == 1


def test_stale_backups_fail_naming_each_source(run_daily):
    out = run_daily(Defects(stale_days=2))
    stale = {(p["artifact"], p["check"]) for p in out["report"]["problems"]}
    for src in out["config"].sources:
        newest = out["history"].newest(src.name).name
        assert (f"{src.name}/{newest}", "fresh") in stale, problem_lines(out)
    assert_failed_with_alert(out, f"trixtech-db/{out['history'].newest('trixtech-db').name}")


def test_copy_missing_in_s3_fails_naming_it(run_daily):
    out = run_daily(Defects(missing_in_s3="trixtech-files"))
    newest = out["history"].newest("trixtech-files").name
    artifact = f"trixtech-files/{newest}"
    assert_failed_with_alert(out, artifact)
    [p] = [p for p in out["report"]["problems"]]
    assert p["artifact"] == artifact and "missing" in p["detail"].lower(), p


class _PulledXComs:
    """The two ``ti.xcom_pull`` call shapes collect_results uses, over a dict of pushed values
    (a failed check instance cannot be produced by dag.test() without waiting out its retries)."""

    def __init__(self, pushed: dict):
        self.pushed = pushed

    def xcom_pull(self, task_ids, map_indexes=None, default=None):
        if map_indexes is None:
            return self.pushed.get((task_ids, -1), default)
        return [self.pushed.get((task_ids, i), default) for i in map_indexes]


def test_a_check_instance_that_left_no_results_is_a_problem_naming_its_source():
    ok = {"artifact": "a/x.dump", "check": "sha256", "ok": True, "detail": ""}
    ti = _PulledXComs({("check_integrity", 0): [ok], ("check_backup_logs", -1): []})  # index 1 failed
    results = collect_results(ti, ["a", "b"], ["check_integrity"], ["check_backup_logs"])
    assert results[0] == ok
    assert [(r["artifact"], r["check"], r["ok"]) for r in results[1:]] == [("b", "check_integrity", False)]
    results = collect_results(_PulledXComs({}), [], ["check_integrity"], ["check_backup_logs"])
    assert [(r["artifact"], r["ok"]) for r in results] == [("check_backup_logs", False)]


def test_operator_as_a_gate_fails_with_its_results_pushed(tmp_path, monkeypatch):
    """``fail_on_problem=True``: the problems fail the task (no retry) and the results stay in XCom."""
    monkeypatch.setenv("BACKUP_ROOT", str(tmp_path / "empty"))
    pushed = {}
    ti = type("TI", (), {"xcom_push": lambda self, key, value: pushed.__setitem__(key, value)})()
    op = BackupFreshnessOperator(task_id="gate", source_name="trixtech-db", fail_on_problem=True)
    with pytest.raises(VerificationFailed) as err:
        op.execute({"ti": ti})
    assert isinstance(err.value, AirflowFailException)
    assert [(p["artifact"], p["check"]) for p in err.value.problems] == [("trixtech-db", "present")]
    assert pushed["results"][0]["ok"] is False
    # Without the flag the same problem is a result for a downstream summary, not a failure.
    results = BackupFreshnessOperator(task_id="check", source_name="trixtech-db").execute({"ti": ti})
    assert results == pushed["results"]
    with pytest.raises(AirflowFailException, match="unknown source 'nope'"):
        BackupFreshnessOperator(task_id="bad", source_name="nope").execute({"ti": ti})
