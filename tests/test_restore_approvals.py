"""``backup_restore`` under ``dag.test()`` with the team's rules: four eyes, approvers, the approval
timeout, and alerts that page once -- counted on a real webhook receiver on loopback.

The sandbox (a real PostgreSQL, real pg_dump backups in the loopback S3, the recording Kubernetes
double) is the one of tests/test_restore_dags.py. Answers go through Airflow's own HITL handler
(what the REST API and the UI's Required Actions call) with a named user; the timeout is Airflow's
own scheduler sweep (``check_awaiting_input_timeouts``) run once the deadline has passed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest

import airflow_env  # noqa: F401  (before airflow)

from _daily_helpers import airflow_db, http_server  # noqa: F401  (fixtures)
from _restore_helpers import DATABASE, Approver, hitl_detail, restore_config_yaml
from test_daily_dag_e2e import task_states
from test_restore_dags import (REASON, _fast_platform_init, app_cluster, new_databases, records,  # noqa: F401
                               sandbox, state)
from backup_airflow import restore_operators as ro
from backupkit.restore.verify_rows import exact_row_counts

TOKEN = "T0ALERT/B0ALERT/s3cr3tWebhookToken"


@pytest.fixture
def alerting(sandbox, http_server, monkeypatch):  # noqa: F811
    """The webhook channel on a loopback receiver whose path is the token; a fresh alert state."""
    monkeypatch.setenv("BACKUP_WEBHOOK_CONN_ID", "backup_alerts")
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_ALERTS", f"http://127.0.0.1:{http_server.port}/services/{TOKEN}")
    sandbox.config.state.alert_state.unlink(missing_ok=True)
    return http_server


@pytest.fixture(scope="module", autouse=True)
def auth_manager():
    """Airflow's auth manager, as the API server holds it: it decides who may answer assigned approvals."""
    from airflow.api_fastapi.app import init_auth_manager

    return init_auth_manager()


def configure(sandbox, monkeypatch, extra_restore: str) -> None:
    """The sandbox's configuration with restore settings added (the DAG reads it when parsed)."""
    path = sandbox.tmp / "backups-approvals.yaml"
    path.write_text(restore_config_yaml(database=DATABASE, allowed_root=sandbox.tmp / "restore-root",
                                        extra_restore=extra_restore))
    monkeypatch.setenv("BACKUPKIT_CONFIG", str(path))


def alerts_sent(server) -> list[dict]:
    return [json.loads(r.body) for r in server.requests if r.method == "POST"]


def kube(monkeypatch, cluster) -> None:
    monkeypatch.setattr(ro, "kube_clients", lambda conn_id: (cluster, cluster))
    monkeypatch.setattr(ro.KubernetesAppPlatform, "__init__", _fast_platform_init)


class Answers:
    """Answers the waiting approval as each (user, choice) in turn, through Airflow's HITL handler; records
    each outcome (the response, or the HTTP status Airflow refused it with)."""

    def __init__(self, *answers: tuple[str, str], timeout: float = 120):
        self.answers, self.timeout, self.results = list(answers), timeout, []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._thread.join(10)

    def _run(self) -> None:
        for user, choice in self.answers:
            approver = Approver("backup_restore", "approve_switch", choice, user=user, timeout=self.timeout)
            approver._run()
            err = approver.error
            self.results.append(getattr(err, "status_code", repr(err)) if err is not None else "answered")
            if err is not None and not hasattr(err, "status_code"):
                raise err  # not Airflow refusing an answer: a broken test, fail it loudly


def sweep_timeouts_when_due(stop: threading.Event) -> None:
    """What the scheduler does every loop: resolve AWAITING_INPUT tasks past their deadline (its own code)."""
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk import timezone
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    while not stop.is_set():
        with create_session() as session:
            waiting = session.scalars(select(TaskInstance).where(
                TaskInstance.state == TaskInstanceState.AWAITING_INPUT)).all()
            if any(ti.trigger_timeout and ti.trigger_timeout < timezone.utcnow() for ti in waiting):
                SchedulerJobRunner.check_awaiting_input_timeouts(
                    SimpleNamespace(log=logging.getLogger("scheduler")), session=session)
        time.sleep(0.5)


# -- four eyes --------------------------------------------------------------------------------------------
def test_the_requester_approving_their_own_replace_is_refused_and_nothing_changes(sandbox, alerting, monkeypatch):
    """No approvers configured (anyone may answer), four eyes by default: the requester's Approve is refused."""
    cluster = app_cluster()
    kube(monkeypatch, cluster)
    before, existing = exact_row_counts(sandbox.pg, DATABASE), set(new_databases(sandbox))
    with Answers(("dag_test", "Approve")) as answers:  # dag.test() runs as the user "dag_test"
        dr = sandbox.dag("backup_restore").test(run_conf={"mode": "replace", "reason": REASON})
    assert answers.results == ["answered"]
    states = task_states(dr)
    assert state(dr) == "failed" and states["approve_switch"] == "failed", states
    assert states["switch"] == "upstream_failed" and states["finish"] == "failed"
    assert cluster.called("patch_namespaced_deployment_scale") == [] and cluster.called("patch_namespaced_deployment") == []
    assert exact_row_counts(sandbox.pg, DATABASE) == before
    recs = records(sandbox, dr.run_id)
    [refused] = [r for r in recs if r["action"] == "approval_refused"]
    assert refused["answered_by"] == "dag_test" and refused["triggered_by"] == "dag_test"
    assert "four eyes" in refused["detail"] and "nothing was changed" in refused["detail"]
    assert recs[-1]["action"] == "restore_finished" and recs[-1]["outcome"] == "refused"
    assert recs[-1]["approved_by"] is None
    # shown in the run, not paged (the requester's to fix): the channel got the request, no failure alert;
    # the restored database stays for inspection
    assert [a["text"].split(":")[0] for a in alerts_sent(alerting)] == ["Approval needed"]
    assert len(set(new_databases(sandbox)) - existing) == 1


def test_only_configured_approvers_other_than_the_requester_may_answer(sandbox, alerting, monkeypatch):
    configure(sandbox, monkeypatch, "  approvers: {users: [dag_test, oncall-approver]}\n")
    cluster = app_cluster()
    kube(monkeypatch, cluster)
    with Answers(("dag_test", "Approve"), ("viewer-bob", "Approve"), ("oncall-approver", "Approve")) as answers:
        dr = sandbox.dag("backup_restore").test(run_conf={"mode": "replace", "reason": REASON})
    # Airflow itself refuses the requester and a non-approver (403): only oncall-approver is assigned
    assert answers.results == [403, 403, "answered"]
    assert state(dr) == "success", task_states(dr)
    shown = hitl_detail("backup_restore", dr.run_id, "approve_switch")
    assert shown["responded_by"]["name"] == "oncall-approver"
    recs = records(sandbox, dr.run_id)
    [asked] = [r for r in recs if r["action"] == "approval_requested"]
    assert asked["approvers"] == ["oncall-approver"] and "not the requester dag_test (four eyes)" in asked["detail"]
    assert asked["timeout"] == "4h"
    [given] = [r for r in recs if r["action"] == "approval_given"]
    assert given["approved_by"] == "oncall-approver" and given["triggered_by"] == "dag_test"
    assert recs[-1]["outcome"] == "switched" and recs[-1]["approved_by"] == "oncall-approver"
    assert next(r for r in recs if r["action"] == "switch_done")["approved_by"] == "oncall-approver"
    # the request went to the alert channel, with the link to Required Actions, without the token
    [request] = alerts_sent(alerting)
    text = request["text"]
    assert text.startswith("Approval needed: Switch trixtech-db to backup trixtech_")
    assert f"/dags/backup_restore/runs/{dr.run_id}/tasks/approve_switch/required_actions" in text
    assert "requested by dag_test: " + REASON in text and "Who may approve: oncall-approver" in text
    assert TOKEN not in json.dumps(recs) and "s3cr3t" not in text


def test_a_request_whose_only_approver_is_the_requester_is_refused_before_waiting(sandbox, alerting, monkeypatch):
    configure(sandbox, monkeypatch, "  approvers: {users: [dag_test]}\n")
    cluster = app_cluster()
    kube(monkeypatch, cluster)
    dr = sandbox.dag("backup_restore").test(run_conf={"mode": "replace", "reason": REASON})
    assert state(dr) == "failed" and task_states(dr)["approve_switch"] == "failed"
    [refused] = [r for r in records(sandbox, dr.run_id) if r["action"] == "approval_refused"]
    assert "the only approver is the requester dag_test" in refused["detail"]
    assert cluster.called("patch_namespaced_deployment_scale") == [] and alerts_sent(alerting) == []


def test_no_answer_within_the_timeout_is_a_clear_rejection(sandbox, alerting, monkeypatch):
    configure(sandbox, monkeypatch, "  approval_timeout: 2s\n")
    cluster = app_cluster()
    kube(monkeypatch, cluster)
    stop = threading.Event()
    sweeper = threading.Thread(target=sweep_timeouts_when_due, args=(stop,), daemon=True)
    sweeper.start()
    try:
        dr = sandbox.dag("backup_restore").test(run_conf={"mode": "replace", "reason": REASON})
    finally:
        stop.set()
        sweeper.join(10)
    states = task_states(dr)
    assert state(dr) == "success" and states["switch"] == "skipped", states
    assert cluster.called("patch_namespaced_deployment_scale") == [] and cluster.called("patch_namespaced_deployment") == []
    recs = records(sandbox, dr.run_id)
    [timed_out] = [r for r in recs if r["action"] == "approval_timed_out"]
    assert timed_out["detail"] == "no answer within 2s: rejected, nothing was changed"
    assert timed_out["answered_by"] is None
    assert recs[-1]["outcome"] == "timed_out"
    assert [a["text"].split(":")[0] for a in alerts_sent(alerting)] == ["Approval needed"]  # and no failure alert


# -- alerts that page once ------------------------------------------------------------------------------------
def damaged_copy(sandbox) -> str:
    """A backup in S3 a minute before the newest, cut short, with the sidecar of the whole file: it
    lists and validates, and fails its restore (the SHA-256 differs)."""
    newest = sandbox.newest("trixtech-db")
    when = datetime.strptime(newest.name, "trixtech_%Y%m%d_%H%M%S.dump") - timedelta(minutes=1)
    name = when.strftime("trixtech_%Y%m%d_%H%M%S.dump")
    data = newest.read_bytes()
    sandbox.s3.put_object(Bucket=sandbox.config.bucket, Key=f"database/{name}", Body=data[: len(data) // 2],
                          ChecksumAlgorithm="SHA256")
    sidecar = f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()
    sandbox.s3.put_object(Bucket=sandbox.config.bucket, Key=f"database/{name}.sha256", Body=sidecar)
    return f"database/{name}"


def test_a_failed_restore_pages_once_repeats_are_held_typos_never_page_and_a_pass_resolves(sandbox, alerting):
    bad = damaged_copy(sandbox)
    verify = {"mode": "verify_only", "reason": REASON}
    runs = {}
    runs["failed"] = sandbox.dag("backup_restore").test(run_conf={**verify, "which": "key", "key": bad})
    assert [a["text"].splitlines()[0] for a in alerts_sent(alerting)] == [
        "Backup job failed: backup_restore.restore_verify"]  # not finish's "see the failed task above" too
    runs["again"] = sandbox.dag("backup_restore").test(run_conf={**verify, "which": "key", "key": bad})
    runs["typo"] = sandbox.dag("backup_restore").test(run_conf={**verify, "which": "key", "key": "databse/x.dump"})
    assert len(alerts_sent(alerting)) == 1  # the repeat is held back, the typo is the requester's
    assert "is outside the configured prefixes" in next(
        r for r in records(sandbox, runs["typo"].run_id) if r["action"] == "restore_refused")["detail"]
    runs["passes"] = sandbox.dag("backup_restore").test(run_conf={**verify, "which": "latest"})
    runs["fails_later"] = sandbox.dag("backup_restore").test(run_conf={**verify, "which": "key", "key": bad})
    assert [state(runs[k]) for k in runs] == ["failed", "failed", "failed", "success", "failed"]
    sent = alerts_sent(alerting)
    assert [a["text"].splitlines()[0] for a in sent] == [
        "Backup job failed: backup_restore.restore_verify",
        "Resolved: backup_restore.restore_verify (trixtech-db) passes again",
        "Backup job failed: backup_restore.restore_verify"]
    assert f"run {runs['passes'].run_id}" in sent[1]["text"] and "1 repeated failure(s) held back" in sent[1]["text"]
    assert runs["failed"].run_id in sent[0]["text"] and runs["fails_later"].run_id in sent[2]["text"]
    assert all(TOKEN not in json.dumps(a) and "s3cr3t" not in json.dumps(a) for a in sent)
    assert all(r.path == f"/services/{TOKEN}" for r in alerting.requests)  # the token is where it belongs
    assert sandbox.config.state.alert_state.exists() and TOKEN not in sandbox.config.state.alert_state.read_text()
