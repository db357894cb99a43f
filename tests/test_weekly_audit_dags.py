"""End to end: ``dag.test()`` of backup_weekly_maintenance and backup_quarterly_audit in a sandbox.

Real parts only: nine weeks of backups made by the real pg_dump of a real PostgreSQL (its own
server: the audit lists *every* database on it, so the session's shared server, where other
modules create scratch databases, could never be "healthy"), copies in a real S3 API on
loopback (moto server) in a bucket configured like production through the S3 API, backups
verified by reading them in full, Airflow running every task in this process, the alert webhook
and the Pushgateway as a real HTTP server. Each case injects one realistic defect and undoes it.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

import airflow_env
from _clock import SESSION_NOW
from _daily_helpers import RecordingServer, airflow_db  # noqa: F401  (fixture)
from _reports_helpers import (
    create_audited_bucket,
    restore_default_encryption,
    sandbox_config_file,
    verify_newest,
    write_recoverability,
)
from backupkit.config import load_config
from backupkit.pgserver import LocalPostgres
from sandbox.bookingdb import create_booking_db
from sandbox.history import generate_history
from sandbox.s3server import reset
from sandbox.stack import sandbox_env
from test_daily_dag_e2e import task_states, xcom

pytestmark = pytest.mark.airflow

WEEKLY, AUDIT = "backup_weekly_maintenance", "backup_quarterly_audit"
HISTORY_DAYS = 63  # the eight-week trend window plus a baseline week before it


@pytest.fixture(scope="module")
def app_pg(tmp_path_factory):
    server = LocalPostgres(tmp_path_factory.mktemp("app-pg") / "data").start()
    create_booking_db(server, "trixtech", scale=300)
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def sandbox(app_pg, moto_server, airflow_db, tmp_path_factory):  # noqa: F811
    """A healthy sandbox: history, bucket like production, newest backups verified, restore tests
    and a DR drill recorded; the environment points Airflow and backupkit at it."""
    root = tmp_path_factory.mktemp("reports-sandbox")
    receiver = RecordingServer()
    reset(moto_server.endpoint_url)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in sandbox_env(root, app_pg.port, moto_server.endpoint_url).items():
            mp.setenv(key, value)
        mp.setenv("BACKUP_WEBHOOK_CONN_ID", "backup_alerts")
        mp.setenv("AIRFLOW_CONN_BACKUP_ALERTS", f"{receiver.url}/hooks/backup-alerts")
        mp.setenv("BACKUP_PUSHGATEWAY_URL", receiver.url)
        mp.setenv("BACKUPKIT_CONFIG", str(sandbox_config_file(root)))
        config = load_config()
        s3 = moto_server.client()
        create_audited_bucket(s3, config.bucket, tls_policy=False)
        now = SESSION_NOW
        history = generate_history(config, app_pg, now=now, days=HISTORY_DAYS, s3_client=s3)
        verify_newest(config, now)
        write_recoverability(config, now)
        yield SimpleNamespace(config=config, s3=s3, history=history, pg=app_pg, receiver=receiver)
    receiver.close()


def run(sb, dag_id: str, **conf) -> SimpleNamespace:
    """Parse the DAG file now (with this environment) and run it once with dag.test()."""
    from airflow.dag_processing.dagbag import DagBag

    sb.receiver.requests.clear()
    bag = DagBag(dag_folder=str(airflow_env.DAGS / f"{dag_id}.py"))
    assert bag.import_errors == {}
    dr = bag.dags[dag_id].test(run_conf=conf or None)
    day = dr.run_after.date().isoformat()
    kind = "weekly" if dag_id == WEEKLY else "audit"
    prefix = f"{sb.config.reports.prefix}{kind}/{day}/"
    return SimpleNamespace(
        dr=dr, state=str(getattr(dr.state, "value", dr.state)), states=task_states(dr), prefix=prefix,
        location=xcom(dr, "publish_report", "report_location"), result=xcom(dr, "publish_report", "return_value"),
        xcom=lambda task_id, key="return_value": xcom(dr, task_id, key),
        alerts=[json.loads(r.body) for r in sb.receiver.requests if r.path.startswith("/hooks/")],
        pushes=[r for r in sb.receiver.requests if r.path.startswith("/metrics/")])


def s3_text(sb, key: str) -> str:
    return sb.s3.get_object(Bucket=sb.config.bucket, Key=key)["Body"].read().decode()


def metrics(path) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# -- weekly ---------------------------------------------------------------------------------------
def test_weekly_report_flags_a_shrunken_backup(sandbox):
    """The newest trixtech-db dump is cut to a third (pg_dump died early): flagged, the run passes."""
    newest = sandbox.history.newest("trixtech-db")
    original = newest.read_bytes()
    newest.write_bytes(original[: len(original) // 3])
    try:
        out = run(sandbox, WEEKLY)
    finally:
        newest.write_bytes(original)
    assert out.state == "success", out.states
    assert set(out.states.values()) == {"success"} and len(out.states) == 6

    trends = out.xcom("collect_trends")
    size_anomalies = [(a["source"], a["name"], a["kind"]) for t in trends["sources"].values()
                      for a in t["anomalies"] if a["metric"] == "size"]
    assert size_anomalies == [("trixtech-db", newest.name, "drop")]
    assert all(len(t["weeks"]) == 8 and sum(w["count"] for w in t["weeks"]) >= 50
               for t in trends["sources"].values()), trends["sources"]
    durations = [w["duration_median"] for w in trends["sources"]["trixtech-db"]["weeks"]]
    assert all(d is not None and d > 0 for d in durations)  # from the backup logs

    # The report: in the bucket (Markdown, HTML, SVG charts), its location in XCom and the log.
    assert out.location == f"s3://{sandbox.config.bucket}/{out.prefix}report.md"
    assert out.result["uri"] == out.location and out.result["problems"] == []
    md = s3_text(sandbox, out.prefix + "report.md")
    assert f"| trixtech-db | {newest.name} | size | drop |" in md
    assert "Cost Explorer not reachable: endpoint http://127.0.0.1" in md
    keys = {o["Key"][len(out.prefix):] for o in sandbox.s3.list_objects_v2(
        Bucket=sandbox.config.bucket, Prefix=out.prefix)["Contents"]}
    assert {"report.md", "report.html", "size-trixtech-db.svg", "storage-by-prefix.svg"} <= keys
    assert "<svg" in s3_text(sandbox, out.prefix + "report.html")
    head = sandbox.s3.head_object(Bucket=sandbox.config.bucket, Key=out.prefix + "report.md")
    assert head["ServerSideEncryption"] == "AES256" and head["ContentType"].startswith("text/markdown")

    storage = out.xcom("storage_usage")
    uploaded = sum(o["Size"] for p in ("database/", "database-sql/", "files/")
                   for o in sandbox.s3.list_objects_v2(Bucket=sandbox.config.bucket, Prefix=p, MaxKeys=1000)
                   .get("Contents", []))
    assert storage["bucket"]["by_prefix"]["database/"]["current_objects"] == HISTORY_DAYS * 3  # dump, sidecar, manifest
    assert storage["bucket"]["total_bytes"] >= uploaded > 0
    assert storage["cost"]["usd_per_month"] > 0

    values = metrics(sandbox.config.state_dir / "metrics" / "weekly.prom")
    assert values[("backup_weekly_anomalies", (("source", "trixtech-db"),))] >= 1
    assert values[("backup_storage_used_bytes", (("location", f"s3://{sandbox.config.bucket}"),))] == \
        storage["bucket"]["total_bytes"]
    assert values[("backup_storage_unencrypted_objects", (("location", f"s3://{sandbox.config.bucket}"),))] == 0
    [push] = out.pushes
    assert push.method == "PUT" and push.path == "/metrics/job/backup_weekly_maintenance"
    assert out.alerts == []


def test_weekly_report_lists_an_unencrypted_object_and_fails(sandbox):
    """Default encryption removed and a dump uploaded without SSE: listed, the run fails and alerts."""
    bucket, key = sandbox.config.bucket, "database/trixtech_manual_export.dump"
    sandbox.s3.delete_bucket_encryption(Bucket=bucket)
    sandbox.s3.put_object(Bucket=bucket, Key=key, Body=sandbox.history.newest("trixtech-db").read_bytes(),
                          ChecksumAlgorithm="SHA256")  # object lock requires a checksum, not SSE
    assert "ServerSideEncryption" not in sandbox.s3.head_object(Bucket=bucket, Key=key)
    try:
        out = run(sandbox, WEEKLY, scan_objects=True)
    finally:
        sandbox.s3.delete_object(Bucket=bucket, Key=key)
        restore_default_encryption(sandbox.s3, bucket)
    assert out.state == "failed"
    assert out.states["publish_report"] == "failed"
    assert {t: s for t, s in out.states.items() if t != "publish_report"} == {
        t: "success" for t in ("collect_trends", "failure_pattern", "storage_usage", "encryption_check",
                               "export_metrics")}
    enc = out.xcom("encryption_check")
    assert enc["objects"]["unencrypted"] == [key]
    assert enc["default"]["ok"] is False
    # Written anyway, and found through the XCom the failed task pushed before failing.
    assert out.location == f"s3://{bucket}/{out.prefix}report.md"
    md = s3_text(sandbox, out.prefix + "report.md")
    assert "Verdict: PROBLEMS FOUND" in md and f"- {key}" in md and "has no default encryption" in md
    [alert] = out.alerts
    assert alert["text"].startswith(f"Backup job failed: {WEEKLY}.publish_report")
    assert key in alert["text"]
    values = metrics(sandbox.config.state_dir / "metrics" / "weekly.prom")
    assert values[("backup_storage_unencrypted_objects", (("location", f"s3://{bucket}"),))] == 1


# -- quarterly audit --------------------------------------------------------------------------------
def controls_of(out) -> dict[str, dict]:
    return {c["id"]: c for t in ("audit_coverage", "audit_retention", "audit_security", "audit_recoverability")
            for c in out.xcom(t)}


def test_audit_passes_on_the_healthy_sandbox(sandbox):
    out = run(sandbox, AUDIT)
    controls = controls_of(out)
    assert out.state == "success", {k: (c["status"], c["summary"]) for k, c in controls.items()}
    assert set(out.states.values()) == {"success"} and len(out.states) == 7
    assert {k: c["status"] for k, c in controls.items()} == {
        "coverage.databases_protected": "pass", "coverage.file_paths_protected": "pass",
        "coverage.last_recovery_point_created": "pass", "retention.minimum_frequency": "pass",
        "retention.not_kept_past_policy": "pass", "security.recovery_points_encrypted": "pass",
        "security.manual_deletion_prevented": "pass", "security.public_access_blocked": "pass",
        "security.secure_transport_required": "info", "security.cross_region_copy": "info",
        "recoverability.restore_tests_passed": "pass", "recoverability.restore_time_meets_target": "pass",
        "recoverability.dr_drill_met_targets": "pass"}
    # Coverage came from the server, not from the configuration.
    assert [r[:2] for r in controls["coverage.databases_protected"]["rows"]] == [["trixtech_app_db", "trixtech"]]
    report = json.loads(s3_text(sandbox, out.prefix + "controls.json"))
    assert report["summary"]["ok"] is True and len(report["controls"]) == 13
    assert "Verdict: PASSED" in s3_text(sandbox, out.prefix + "report.md")
    assert out.location == f"s3://{sandbox.config.bucket}/{out.prefix}report.md"
    values = metrics(sandbox.config.state_dir / "metrics" / "audit.prom")
    assert values[("backup_audit_controls_failed", ())] == 0
    assert values[("backup_audit_controls_total", ())] == 13
    assert out.alerts == []


def test_audit_fails_for_an_unbacked_database_and_an_unencrypted_bucket(sandbox):
    bucket = sandbox.config.bucket
    sandbox.pg.create_database("crm")  # a new application database nobody configured a backup for
    sandbox.s3.delete_bucket_encryption(Bucket=bucket)
    try:
        out = run(sandbox, AUDIT)
    finally:
        sandbox.pg.psql('DROP DATABASE IF EXISTS "crm" WITH (FORCE)')
        restore_default_encryption(sandbox.s3, bucket)
    assert out.state == "failed"
    assert out.states["publish_report"] == "failed"
    assert all(s == "success" for t, s in out.states.items() if t != "publish_report"), out.states
    controls = controls_of(out)
    failed = sorted(k for k, c in controls.items() if c["status"] == "fail")
    assert failed == ["coverage.databases_protected", "security.recovery_points_encrypted"]
    cov = controls["coverage.databases_protected"]
    assert ["trixtech_app_db", "crm", "none", "-", "-", "FAIL"] in cov["rows"]
    assert "crm: no backup source is configured" in cov["summary"]
    assert "has no default encryption" in controls["security.recovery_points_encrypted"]["summary"]
    summary = json.loads(s3_text(sandbox, out.prefix + "controls.json"))["summary"]
    assert summary["failed"] == failed
    [alert] = out.alerts
    assert alert["text"].startswith(f"Backup job failed: {AUDIT}.publish_report")
    assert all(c in alert["text"] for c in failed)
    values = metrics(sandbox.config.state_dir / "metrics" / "audit.prom")
    assert values[("backup_audit_controls_failed", ())] == 2
    assert values[("backup_audit_control_status", (("control", "coverage.databases_protected"),))] == 0
    assert values[("backup_audit_control_status", (("control", "retention.minimum_frequency"),))] == 1
