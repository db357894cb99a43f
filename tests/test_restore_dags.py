"""End to end: the restore DAGs under ``dag.test()`` against a generated sandbox.

Real parts: a booking database in a real PostgreSQL (the application's server), a history of
real pg_dump backups and file archives on disk and in a loopback S3 (moto server), Airflow
running every task in this process. Kubernetes is the recording double of
tests/_restore_helpers.py, installed where the provider's hook hands out clients. The human
approval of ``replace`` is given from another thread through the same handler the REST API
and the UI's Required Actions page call; ``dag.test()`` in Airflow 3.3 waits for it.
"""

from __future__ import annotations

import json

import hashlib
import io
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import airflow_env
from _clock import SESSION_NOW
from _daily_helpers import airflow_db  # noqa: F401  (fixture)
from _restore_helpers import DATABASE, Approver, Deployment, FakeCluster, hitl_detail, restore_config_yaml, short_dir
from airflow.sdk.exceptions import ParamValidationError
from backup_airflow import restore_operators as ro
from backupkit.config import load_config
from backupkit.restore.journal import RestoreJournal
from backupkit.restore.rollback import Retry
from backupkit.restore.switch import PLANNED, STEP, SagaLog
from backupkit.storage.locks import Leases
from backupkit.restore.scratch import run_dir_name
from backupkit.restore.verify_rows import exact_row_counts, read_manifest
from sandbox.bookingdb import create_booking_db
from sandbox.history import generate_history
from sandbox.s3server import create_production_bucket, reset
from sandbox.stack import sandbox_env
from test_daily_dag_e2e import task_states, xcom

DAYS = 8
REASON = "INC-1234: bookings table corrupted by a bad migration"


@dataclass
class Sandbox:
    config: object
    history: object
    s3: object
    tmp: Path
    pg: object

    def newest(self, source: str) -> Path:
        return self.history.newest(source)

    def dag(self, dag_id: str):
        """The DAG freshly parsed from its file: ``dag.test(run_conf=...)`` resolves the run's
        values into the DAG object's params, so a reused object would carry one test's form
        values into the next as defaults."""
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(airflow_env.DAGS / f"{dag_id}.py"))
        assert bag.import_errors == {}
        return bag.dags[dag_id]


@pytest.fixture(scope="module")
def sandbox(airflow_db, pg, moto_server, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("restore-dags")
    scratch = short_dir()
    mp = pytest.MonkeyPatch()
    create_booking_db(pg, DATABASE, scale=300)
    try:
        for k, v in sandbox_env(tmp, pg.port, moto_server.endpoint_url).items():
            mp.setenv(k, v)
        (tmp / "restore-root").mkdir()
        cfg_file = tmp / "backups.yaml"
        cfg_file.write_text(restore_config_yaml(database=DATABASE, allowed_root=tmp / "restore-root"))
        mp.setenv("BACKUPKIT_CONFIG", str(cfg_file))
        mp.setenv("BACKUP_SCRATCH_DIR", str(scratch))
        mp.setenv("BACKUP_PUSHGATEWAY_URL", "")
        mp.delenv("BACKUP_WEBHOOK_CONN_ID", raising=False)
        reset(moto_server.endpoint_url)
        s3 = moto_server.client()
        config = load_config()
        create_production_bucket(s3, config.bucket)
        history = generate_history(config, pg, now=SESSION_NOW, days=DAYS, s3_client=s3,
                                   database=DATABASE)
        yield Sandbox(config, history, s3, tmp, pg)
    finally:
        mp.undo()
        for db in pg.psql("SELECT datname FROM pg_database WHERE datname LIKE 'trixtech_rt%'").split():
            pg.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def state(dr) -> str:
    return str(dr.state.value if hasattr(dr.state, "value") else dr.state)


def records(sandbox, run_id) -> list[dict]:
    return [r for r in RestoreJournal(sandbox.config.state_dir).records() if r["run_id"] == run_id]


def no_leftover_scratch(sandbox) -> None:
    runs = sandbox.config.restore.scratch_dir / "runs"
    assert not runs.exists() or all(not any(d.iterdir()) for d in runs.iterdir()), list(runs.rglob("*"))[:5]


# -- the form ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("conf, why", [
    ({"source": "not-a-database", "reason": REASON}, "enum"),
    ({"mode": "drop_everything", "reason": REASON}, "enum"),
    ({"which": "oldest", "reason": REASON}, "enum"),
    ({"reason": "because"}, "too short"),
    ({"deployments": ["Trixtech_API"], "reason": REASON}, "does not match"),
    ({}, "reason"),
])
def test_the_form_rejects_invalid_input(sandbox, conf, why):
    with pytest.raises(ParamValidationError, match=why):
        sandbox.dag("backup_restore").test(run_conf=conf)


def test_form_fields_have_titles_and_descriptions(sandbox):
    for dag_id in ("backup_restore", "backup_file_restore"):
        params = sandbox.dag(dag_id).params
        for name in params:
            schema = params.get_param(name).schema
            assert schema.get("title") and params.get_param(name).description, (dag_id, name)
    assert sandbox.dag("backup_restore").params.get_param("source").schema["enum"] == ["trixtech-db"]


def test_the_validate_task_fails_clearly_before_anything_changes(sandbox):
    dr = sandbox.dag("backup_restore").test(run_conf={"which": "latest_before", "before": "2001-01-01T00:00:00Z", "mode": "replace",
                            "reason": REASON})
    states = task_states(dr)
    assert state(dr) == "failed" and states["validate_request"] == "failed"
    assert states["restore_new_database"] in ("upstream_failed", "skipped")
    assert states["finish"] == "failed"
    [refused] = [r for r in records(sandbox, dr.run_id) if r["action"] == "restore_refused"]
    assert "no backup of source 'trixtech-db' before 2001-01-01T00:00:00Z" in refused["detail"]
    assert refused["triggered_by"] == "dag_test" and refused["reason"] == REASON

    dr = sandbox.dag("backup_restore").test(run_conf={"which": "key", "key": f"files/{sandbox.newest('trixtech-files').name}",
                            "reason": REASON})
    assert state(dr) == "failed" and task_states(dr)["validate_request"] == "failed"
    [refused] = [r for r in records(sandbox, dr.run_id) if r["action"] == "restore_refused"]
    assert "is outside the configured prefixes 'database/'" in refused["detail"]


# -- verify_only ---------------------------------------------------------------------------------------
def test_verify_only_end_to_end(sandbox):
    before = exact_row_counts(sandbox.pg, DATABASE)
    older = sandbox.history.sources["trixtech-db"][-3]
    dr = sandbox.dag("backup_restore").test(run_conf={
        "which": "key", "key": f"database/{older.name}", "mode": "verify_only", "reason": REASON})
    states = task_states(dr)
    assert state(dr) == "success", states
    assert states["restore_verify"] == "success" and states["restore_new_database"] == "skipped"
    assert states["switch"] == "skipped" and states["approve_switch"] == "skipped"
    assert states["recover_unfinished"] == "success" and states["rollback"] == "success"  # nothing to do
    result = xcom(dr, "restore_verify", "result")
    manifest = read_manifest(older)
    assert result["ok"] and result["backup"] == older.name
    assert result["location"] == f"s3://{sandbox.config.bucket}/database/{older.name}"
    assert result["verified_rows"] == sum(manifest.tables.values()) > 0
    assert [r["action"] for r in records(sandbox, dr.run_id)] == ["restore_requested", "restore_finished"]
    assert records(sandbox, dr.run_id)[-1]["outcome"] == "verified"
    assert exact_row_counts(sandbox.pg, DATABASE) == before
    no_leftover_scratch(sandbox)


# -- replace ----------------------------------------------------------------------------------------------
OLD_URL = f"postgresql://trixtech:app-secret@db.trixtech.svc:5432/{DATABASE}"


def app_cluster(**kw) -> FakeCluster:
    """The runbook's application: a backend with DATABASE_URL, a frontend without one."""
    return FakeCluster(namespace="trixtech", deployments={
        "trixtech-backend": Deployment(3, {"DATABASE_URL": OLD_URL, "TZ": "UTC"}, **kw),
        "trixtech-frontend": Deployment(2, {"API_URL": "http://trixtech-backend"}, container="web")})


def run_replace(sandbox, monkeypatch, cluster, choice="Approve", before=None):
    monkeypatch.setattr(ro, "kube_clients", lambda conn_id: (cluster, cluster))
    monkeypatch.setattr(ro.KubernetesAppPlatform, "__init__", _fast_platform_init)
    with Approver("backup_restore", "approve_switch", choice, before=before) as approver:
        dr = sandbox.dag("backup_restore").test(run_conf={"mode": "replace", "reason": REASON})
    assert approver.error is None and approver.answered is not None, approver.error
    return dr


_platform_init = ro.KubernetesAppPlatform.__init__


def _fast_platform_init(self, *args, **kwargs):
    kwargs["poll_interval"] = 0.05  # the double settles at once; only the timeout case waits
    _platform_init(self, *args, **kwargs)


def new_databases(sandbox) -> list[str]:
    return sandbox.pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{DATABASE}_restored_%' "
                           "ORDER BY 1").split()


def test_replace_end_to_end_with_approval(sandbox, monkeypatch):
    before = exact_row_counts(sandbox.pg, DATABASE)
    existing = set(new_databases(sandbox))
    cluster = app_cluster()
    held: dict[str, str] = {}  # what retention must not delete while the approval is pending
    dr = run_replace(sandbox, monkeypatch, cluster,
                     before=lambda: held.update(Leases(sandbox.config.state_dir).held("trixtech-db")))
    states = task_states(dr)
    assert state(dr) == "success", states
    assert list(held) == [sandbox.newest("trixtech-db").name] and "restore (replace)" in held[list(held)[0]]
    assert {t: states[t] for t in ("restore_new_database", "plan_switch", "approve_switch", "switch", "finish")} == \
        dict.fromkeys(("restore_new_database", "plan_switch", "approve_switch", "switch", "finish"), "success")
    [new_db] = sorted(set(new_databases(sandbox)) - existing)
    newest = sandbox.newest("trixtech-db")
    assert exact_row_counts(sandbox.pg, new_db) == read_manifest(newest).tables  # the restored database
    assert exact_row_counts(sandbox.pg, DATABASE) == before  # the old one, untouched and kept
    # The approver saw what would change (without the password).
    shown = hitl_detail("backup_restore", dr.run_id, "approve_switch")
    assert shown["chosen_options"] == ["Approve"] and shown["responded_by"]["name"] == "oncall-approver"
    assert newest.name in shown["subject"] + shown["body"] and new_db in shown["body"]
    assert "trixtech-backend=3" in shown["body"] and "app-secret" not in shown["body"]
    # The application now points at the new database, with the replica counts it had.
    new_url = OLD_URL.rsplit("/", 1)[0] + "/" + new_db
    assert {n: (d.replicas, d.env.get("DATABASE_URL")) for n, d in cluster.deployments.items()} == {
        "trixtech-backend": (3, new_url), "trixtech-frontend": (2, None)}
    assert cluster.deployments["trixtech-backend"].env["TZ"] == "UTC"
    assert [c[1] for c in cluster.called("patch_namespaced_deployment")] == ["trixtech-backend"]
    recs = records(sandbox, dr.run_id)
    assert [r["action"] for r in recs] == ["restore_requested", "restore_verified", "approval_requested",
                                          "approval_given", "switch_planned", *["switch_step"] * 9, "switch_done",
                                          "restore_finished"]
    assert all(r["triggered_by"] == "dag_test" and r["reason"] == REASON and r["backup"] == newest.name
               for r in recs)
    assert recs[3]["approved_by"] == "oncall-approver"
    assert recs[4]["plan"]["replicas"] == {"trixtech-backend": 3, "trixtech-frontend": 2}
    assert recs[-2]["approved_by"] == "oncall-approver" and any(new_db in c for c in recs[-2]["changes"])
    assert "app-secret" not in str(recs)
    assert recs[-1]["outcome"] == "switched"
    assert all(t for _, t in cluster.timeouts)  # every Kubernetes call carried a request timeout
    assert Leases(sandbox.config.state_dir).active() == []  # the backup's lease ended with the run


def test_replace_failing_after_scale_down_rolls_back(sandbox, monkeypatch):
    cluster = app_cluster(healthy_with={OLD_URL})  # pods on the new database never get ready
    dr = run_replace(sandbox, monkeypatch, cluster)
    states = task_states(dr)
    assert state(dr) == "failed" and states["switch"] == "failed" and states["finish"] == "failed", states
    # Previous setting and replica counts are back.
    assert {n: (d.replicas, d.env.get("DATABASE_URL")) for n, d in cluster.deployments.items()} == {
        "trixtech-backend": (3, OLD_URL), "trixtech-frontend": (2, None)}
    scale_calls = [(c[1], c[3]["spec"]["replicas"]) for c in cluster.called("patch_namespaced_deployment_scale")]
    assert scale_calls[:2] == [("trixtech-backend", 0), ("trixtech-frontend", 0)]  # it did get scaled down
    assert scale_calls[-2:] == [("trixtech-backend", 3), ("trixtech-frontend", 2)]
    recs = records(sandbox, dr.run_id)
    assert [r["action"] for r in recs][-2:] == ["rollback_done", "restore_finished"]
    started = next(r for r in recs if r["action"] == "rollback_started")
    assert started["reason"].startswith("wait_ready trixtech-backend failed") and recs[-2]["errors"] == []
    assert states["rollback"] == "success" and recs[-1]["outcome"] == "rolled_back"


def test_replace_rejected_changes_nothing(sandbox, monkeypatch):
    cluster = app_cluster()
    dr = run_replace(sandbox, monkeypatch, cluster, choice="Reject")
    states = task_states(dr)
    assert state(dr) == "success" and states["switch"] == "skipped" and states["finish"] == "success", states
    assert cluster.called("patch_namespaced_deployment_scale") == []
    assert cluster.called("patch_namespaced_deployment") == []
    assert records(sandbox, dr.run_id)[-1]["outcome"] == "rejected"


def test_a_rollback_the_switch_could_not_finish_is_finished_by_the_rollback_task(sandbox, monkeypatch):
    """The pods on the new database never get ready, and the API refuses the first rollback writes
    more often than the switch retries: the switch fails with ROLLBACK INCOMPLETE, the rollback task
    (all_done, its own retries) puts the application back."""
    cluster = app_cluster(healthy_with={OLD_URL})
    monkeypatch.setattr(ro, "RETRY", Retry(attempts=2, backoff=0.0, sleep=lambda s: None))
    # The forward write passes; the next three (the rollback's) fail: two in the switch, one in the task.
    cluster.flaky["patch_namespaced_deployment"] = [None] + [RuntimeError("etcd leader changed")] * 3
    dr = run_replace(sandbox, monkeypatch, cluster)
    states = task_states(dr)
    assert states["switch"] == "failed" and states["rollback"] == "success" and state(dr) == "failed", states
    assert {n: (d.replicas, d.env.get("DATABASE_URL")) for n, d in cluster.deployments.items()} == {
        "trixtech-backend": (3, OLD_URL), "trixtech-frontend": (2, None)}
    actions_ = [r["action"] for r in records(sandbox, dr.run_id)]
    assert "rollback_failed" in actions_ and actions_[-2:] == ["rollback_done", "restore_finished"]
    assert records(sandbox, dr.run_id)[-1]["outcome"] == "rolled_back"


def test_the_next_run_first_finishes_a_switch_that_was_killed(sandbox, monkeypatch):
    """A worker died mid-switch (journal: planned, scaled down, switched; no rollback): the next run's
    first task puts the application back before anything else happens."""
    cluster = app_cluster()
    new_url = OLD_URL.rsplit("/", 1)[0] + f"/{DATABASE}_restored_20990101000000"
    log = SagaLog(RestoreJournal(sandbox.config.state_dir), "manual__killed-run", "trixtech-db")
    log.write(PLANNED, plan={"namespace": "trixtech", "deployments": ["trixtech-backend", "trixtech-frontend"],
                             "replicas": {"trixtech-backend": 3, "trixtech-frontend": 2},
                             "old": {"deployment/trixtech-backend/app": "***"},
                             "new": {"deployment/trixtech-backend/app": "***"},
                             "old_database": DATABASE, "new_database": f"{DATABASE}_restored_20990101000000"})
    log.write(STEP, step="switch_setting", target="deployment/trixtech-backend/app")
    cluster.deployments["trixtech-backend"].replicas = cluster.deployments["trixtech-frontend"].replicas = 0
    cluster.deployments["trixtech-backend"].env["DATABASE_URL"] = new_url
    monkeypatch.setattr(ro, "kube_clients", lambda conn_id: (cluster, cluster))
    monkeypatch.setattr(ro.KubernetesAppPlatform, "__init__", _fast_platform_init)
    dr = sandbox.dag("backup_restore").test(run_conf={"mode": "verify_only", "reason": REASON})
    states = task_states(dr)
    assert state(dr) == "success" and states["recover_unfinished"] == "success", states
    assert {n: (d.replicas, d.env.get("DATABASE_URL")) for n, d in cluster.deployments.items()} == {
        "trixtech-backend": (3, OLD_URL), "trixtech-frontend": (2, None)}
    done = records(sandbox, "manual__killed-run")[-1]
    assert done["action"] == "rollback_done" and done["recovered_by"] == dr.run_id


# -- file restore ---------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` but the journal (which records the refusal) and the locks and leases."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in sorted(root.rglob("*")) if p.is_file() and not {"audit", "locks", "alerts"} & set(p.relative_to(root).parts)}


def test_file_restore_dag(sandbox):
    src = sandbox.config.source("trixtech-files")
    target = sandbox.tmp / "restore-root" / "app"
    good = sandbox.newest("trixtech-files")
    # An archive with a traversal member, uploaded under a newer name than every real one.
    evil_name = src.pattern.name_for(SESSION_NOW.replace(microsecond=0))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("opt/trixtech/config/app.yml", b"x"), ("../../../../escaped.txt", b"pwned")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sandbox.s3.put_object(Bucket=sandbox.config.bucket, Key=f"files/{evil_name}", Body=buf.getvalue())
    before = snapshot(sandbox.tmp)
    try:
        dr = sandbox.dag("backup_file_restore").test(run_conf={"target_directory": str(target), "reason": REASON})
        assert state(dr) == "failed" and task_states(dr)["restore_files"] == "failed"
        assert snapshot(sandbox.tmp) == before and not target.exists()  # nothing written, anywhere
        [rec] = [r for r in records(sandbox, dr.run_id) if r["action"] == "files_restore_failed"]
        assert "escaped.txt" in rec["detail"] and "nothing extracted" in rec["detail"]
        assert rec["detail"].startswith(f"s3://{sandbox.config.bucket}/files/{evil_name}: refused")
    finally:
        sandbox.s3.delete_object(Bucket=sandbox.config.bucket, Key=f"files/{evil_name}")

    # A target outside the allowed roots is refused by the first task.
    dr = sandbox.dag("backup_file_restore").test(run_conf={"target_directory": str(sandbox.tmp / "elsewhere"), "reason": REASON})
    assert state(dr) == "failed" and task_states(dr)["validate_request"] == "failed"
    assert "not under an allowed restore root" in records(sandbox, dr.run_id)[-1]["detail"]

    # overwrite: present files are replaced, each original kept.
    (target / "opt/trixtech/config").mkdir(parents=True)
    edited = target / "opt/trixtech/config" / sorted(
        m for m in tarfile.open(good).getnames() if m.startswith("opt/trixtech/config/") and "." in m)[0].split("/")[-1]
    edited.write_text("edited by hand\n")
    dr = sandbox.dag("backup_file_restore").test(run_conf={"which": "key", "key": f"files/{good.name}", "paths": ["opt/trixtech/config"],
                            "target_directory": str(target), "existing": "overwrite", "reason": REASON})
    assert state(dr) == "success", task_states(dr)
    result = xcom(dr, "restore_files", "return_value")
    assert [p for p, _ in result["replaced"]] == [str(edited.relative_to(target))]
    assert Path(result["replaced"][0][1]).read_text() == "edited by hand\n"
    assert edited.read_text() != "edited by hand\n"
    assert not (target / "opt/trixtech/uploads").exists()
    assert records(sandbox, dr.run_id)[-1]["action"] == "files_restored"


# -- the monthly restore test ------------------------------------------------------------------------------------
def test_monthly_restore_test_end_to_end(sandbox):
    """The S3 copy of the newest database backup is cut short: that test fails before anything is
    restored (its SHA-256 is not the sidecar's), naming it; the random older backup and the file set
    pass; metrics say which; every scratch is gone."""
    config = sandbox.config
    newest = sandbox.newest("trixtech-db")
    key = f"database/{newest.name}"
    good = sandbox.s3.get_object(Bucket=config.bucket, Key=key)["Body"].read()
    sandbox.s3.put_object(Bucket=config.bucket, Key=key, Body=good[: len(good) // 2])
    try:
        dr = sandbox.dag("backup_monthly_restore_test").test()
    finally:
        sandbox.s3.put_object(Bucket=config.bucket, Key=key, Body=good)
    states = task_states(dr)
    assert state(dr) == "failed" and states["summarize"] == "failed", states
    assert {states[t] for t in ("export_metrics", "teardown_scratch", "sweep_orphans", "plan_restores")} == {"success"}
    targets = xcom(dr, "plan_restores", "return_value")
    assert [(t["source_name"], t["role"]) for t in targets] == [
        ("trixtech-db", "newest"), ("trixtech-db", "random_older"),
        ("trixtech-files", "newest"), ("trixtech-files", "random_older")]
    assert targets[0]["backup"] == newest.name
    assert states["restore_test[0]"] == "failed"
    assert [states[f"restore_test[{i}]"] for i in (1, 2, 3)] == ["success"] * 3
    labels = {ti.rendered_map_index for ti in dr.get_task_instances() if ti.task_id == "restore_test"}
    assert "trixtech-db (random_older)" in labels
    report = xcom(dr, "summarize", "report")
    assert report["sources"]["trixtech-files"]["ok"] and not report["sources"]["trixtech-db"]["ok"]
    [problem] = report["problems"]
    assert problem["artifact"] == f"trixtech-db/{newest.name}" and problem["check"] == "sidecar"
    assert f"s3://{config.bucket}/{key}.sha256" in problem["detail"] and "differs from the sidecar's" in problem["detail"]
    older = [t for t in report["sources"]["trixtech-db"]["tests"] if t["role"] == "random_older"][0]
    assert older["ok"] and older["verified_rows"] > 0
    prom = config.state_dir / "metrics" / "restore_test.prom"
    values = {(s.name, s.labels.get("source")): s.value
              for fam in text_string_to_metric_families(prom.read_text()) for s in fam.samples}
    assert values[("backup_restore_test_status", "trixtech-db")] == 0
    assert values[("backup_restore_test_status", "trixtech-files")] == 1
    assert values[("backup_restore_test_duration_seconds", "trixtech-files")] > 0
    assert values[("backup_restore_test_last_success_timestamp_seconds", "trixtech-files")] > 0
    assert ("backup_restore_test_last_success_timestamp_seconds", "trixtech-db") not in values
    audited = [(r["source"], r["backup"], r["outcome"]) for r in records(sandbox, dr.run_id)]
    assert audited == [(t["source_name"], t["backup"], "failed" if i == 0 else "passed")
                       for i, t in enumerate(targets)]
    # what the quarterly audit's recoverability control reads
    recorded = [json.loads(line) for line in config.state.restore_tests.read_text().splitlines()]
    assert [(r["source"], r["backup"], r["ok"]) for r in recorded if r["run_id"] == dr.run_id] == [
        (t["source_name"], t["backup"], i != 0) for i, t in enumerate(targets)]
    who = {r["triggered_by"] for r in records(sandbox, dr.run_id)}   # the journal's, in the results too
    assert len(who) == 1 and {r["triggered_by"] for r in recorded if r["run_id"] == dr.run_id} == who
    assert not (config.restore.scratch_dir / "runs" / run_dir_name(dr.run_id)).exists()  # teardown_scratch
    no_leftover_scratch(sandbox)
    assert Leases(config.state_dir).active() == []  # the four backups were held until summarize
