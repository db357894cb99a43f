"""The restore operators and the Kubernetes back end up to the API boundary.

No cluster runs here: a recording double of CoreV1Api/AppsV1Api (tests/_restore_helpers.py)
answers with the kubernetes client's own model classes. The scratch PostgreSQL "inside" the
fake pod is a real local server, so the Kubernetes scratch's whole lifecycle -- secret, pod,
readiness, restore over the network with the password in the client's environment,
deletion -- runs for real except the cluster itself.
"""

from __future__ import annotations

import base64
import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import airflow_env  # noqa: F401  (before anything imports airflow)
from _config_helpers import scratch_base  # noqa: F401  (fixture)
from _restore_helpers import Deployment, FakeCluster, restore_config_yaml, short_dir
from airflow.sdk.exceptions import AirflowException
from backup_airflow import restore_operators as ro
from backup_airflow.common import VerificationFailed
from backupkit import clock
from backupkit.config import load_config
from backupkit.pgserver import LocalPostgres
from backupkit.restore.kubernetes import manifests as k8s
from backupkit.restore.scratch import ScratchError
from backupkit.restore.pipeline import restore_test
from backupkit.restore.scratch import run_dir_name
from backupkit.restore.journal import RestoreJournal
from backupkit.restore.rollback import Retry
from backupkit.restore.switch import SagaLog, SwitchFailed, plan_switch, switch_database
from backupkit.restore.verify_rows import RowManifest, exact_row_counts, manifest_path
from sandbox.s3server import env_for_airflow
from kubernetes.client import ApiException

RUN_ID = "scheduled__2025-03-03T09:00:00+00:00"
SEED = (1.0, 1.0)  # the request timeout of calls a test makes itself to seed the stand-in
T0 = datetime(2025, 3, 1, 2, 0, tzinfo=timezone.utc)


@pytest.fixture
def cfg(tmp_path, monkeypatch, scratch_base, moto_server):
    monkeypatch.setenv("BACKUP_ROOT", str(tmp_path / "backups"))
    monkeypatch.setenv("BACKUP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BACKUP_SCRATCH_DIR", str(scratch_base))
    for k, v in env_for_airflow(moto_server.endpoint_url).items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "backups.yaml"
    path.write_text(restore_config_yaml(database="trixtech", allowed_root=tmp_path))
    monkeypatch.setenv("BACKUPKIT_CONFIG", str(path))
    config = load_config(path)
    for s in config.sources:
        s.local_dir.mkdir(parents=True)
    return config


@pytest.fixture
def kube(monkeypatch):
    """The cluster double, installed where the provider's hook would hand out clients."""
    cluster = FakeCluster(namespace="backup-tests")
    monkeypatch.setattr(ro, "kube_clients", lambda conn_id: (cluster, cluster))
    return cluster


def backup(cfg, dumps, counts=None) -> Path:
    src = cfg.source("trixtech-db")
    dest = src.local_dir / src.pattern.name_for(T0)
    shutil.copyfile(dumps["custom"], dest)
    if counts is not None:
        manifest_path(dest).write_text(RowManifest("trixtech", T0, counts).to_json())
    return dest


class TI:
    def __init__(self):
        self.pushed = {}

    def xcom_push(self, key, value):
        self.pushed[key] = value


def strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)
    else:
        yield str(obj)


# -- the scratch pod ---------------------------------------------------------------------------
def test_the_scratch_pod_field_by_field(cfg, kube):
    scratch = ro.KubernetesScratch(kube, cfg.restore, run_id=RUN_ID, source="trixtech-db", backup="b1",
                                   sleep=lambda s: None)
    scratch.start()
    [(_, ns, secret)] = kube.called("create_namespaced_secret")
    [(_, pod_ns, pod)] = kube.called("create_namespaced_pod")
    password = secret["stringData"]["password"]
    assert ns == pod_ns == "backup-tests" and len(password) >= 40
    meta, spec = pod["metadata"], pod["spec"]
    [c] = spec["containers"]
    assert c["image"] == "postgres:18.1"  # restore.image
    assert c["resources"] == cfg.restore.resources == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                                        "limits": {"cpu": "2", "memory": "4Gi"}}
    assert spec["activeDeadlineSeconds"] == cfg.restore.active_deadline_seconds
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False
    assert meta["labels"][k8s.MANAGED_BY_LABEL] == "backupkit" and meta["labels"][k8s.ROLE_LABEL] == "scratch-db"
    assert meta["labels"][k8s.RUN_ID_LABEL] == k8s.label_value(RUN_ID)
    assert meta["labels"]["backupkit/source"] == "trixtech-db" and meta["annotations"]["backupkit/run-id"] == RUN_ID
    assert secret["metadata"]["labels"] == meta["labels"]
    # The password reaches the container only by reference, never as a value or argument.
    assert password not in json.dumps(pod)
    assert all(password not in s for s in strings(pod))
    env = {e["name"]: e for e in c["env"]}
    assert env["POSTGRES_PASSWORD"] == {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {
        "name": secret["metadata"]["name"], "key": "password", "optional": False}}}
    assert all("value" not in e or password not in e["value"] for e in c["env"])
    # The client gets it through its environment only.
    assert password not in " ".join(scratch.conn_args("restored"))
    assert scratch.client_env()["PGPASSWORD"] == password
    assert scratch.conn_args()[:4] == ["-h", "127.0.0.1", "-p", "5432"]
    # Two backups of one source in one run get two pods.
    other = ro.KubernetesScratch(kube, cfg.restore, run_id=RUN_ID, source="trixtech-db", backup="b2")
    assert other.pod_name != scratch.pod_name and len(other.secret_name) <= 63
    scratch.teardown()
    assert [c[1] for c in kube.called("delete_namespaced_pod")] == [scratch.pod_name]
    assert [c[1] for c in kube.called("delete_namespaced_secret")] == [scratch.secret_name]
    assert kube.pods == {} and kube.secrets == {}


def test_kubernetes_scratch_restores_verifies_and_is_deleted(cfg, kube, dumps, pg, tmp_path):
    """Success: the "pod" answers on a real PostgreSQL; restore and verification go over TCP."""
    counts = exact_row_counts(pg, "trixtech")
    dump = backup(cfg, dumps, counts)
    server = LocalPostgres(short_dir() / "data")
    try:
        server.start()
        kube.polls_until_ready = 3  # Pending, Pending, Running
        scratch = ro.KubernetesScratch(kube, cfg.restore, run_id=RUN_ID, source="trixtech-db", port=server.port,
                                       sleep=lambda s: None)
        r = restore_test(cfg, "trixtech-db", dump.name, new_database=lambda: scratch, role="newest")
        assert r["ok"], r["problems"]
        assert r["backend"] == "kubernetes" and r["verified_rows"] == sum(counts.values())
        assert len(kube.called("read_namespaced_pod")) == 3
        assert exact_row_counts(server, "restored") == counts  # it really went into the "pod"
    finally:
        server.destroy()
        shutil.rmtree(server.data_dir.parent, ignore_errors=True)
    assert kube.pods == {} and kube.secrets == {}
    assert len(kube.called("delete_namespaced_pod")) == 1 and len(kube.called("delete_namespaced_secret")) == 1


def test_a_pod_that_never_gets_ready_is_deleted_and_the_task_fails(cfg, kube, dumps, bucket):
    dump = backup(cfg, dumps)
    kube.pod_phase = "Failed"  # e.g. the image cannot start
    cfg.path.write_text(cfg.path.read_text().replace("backend: local", "backend: kubernetes"))
    op = ro.ScratchRestoreOperator(task_id="t", source_name="trixtech-db", backup=dump.name)
    with pytest.raises(ScratchError, match=r"ended \(Failed\)"):  # infrastructure: raised, so retried
        op.execute({"run_id": RUN_ID, "ti": TI()})
    assert kube.pods == {} and kube.secrets == {}
    assert kube.called("delete_namespaced_pod") and kube.called("delete_namespaced_secret")


def test_a_failed_restore_in_a_pod_is_a_result_and_the_pod_is_deleted(cfg, kube, dumps):
    """Nothing answers at the pod's address: the restore fails, is reported, and teardown still runs."""
    dump = backup(cfg, dumps)
    kube.pod_ip = "127.0.0.1"
    scratch = ro.KubernetesScratch(kube, cfg.restore, run_id=RUN_ID, source="trixtech-db", port=1,
                                   sleep=lambda s: None)
    r = restore_test(cfg, "trixtech-db", dump.name, new_database=lambda: scratch)
    assert not r["ok"] and [p["check"] for p in r["problems"]] == ["restore"]
    assert str(dump) in r["problems"][0]["detail"]
    assert kube.pods == {} and kube.secrets == {}
    # A teardown that fails is a problem of its own: a copy of production data may have leaked.
    kube.fail["delete_namespaced_pod"] = ApiException(status=500, reason="etcd timeout")
    scratch = ro.KubernetesScratch(kube, cfg.restore, run_id=RUN_ID, source="trixtech-db", port=1,
                                   sleep=lambda s: None)
    r = restore_test(cfg, "trixtech-db", dump.name, new_database=lambda: scratch)
    assert [p["check"] for p in r["problems"]] == ["restore", "teardown"]
    assert "orphan sweep" in r["problems"][1]["detail"]
    assert kube.secrets == {}  # the secret was still deleted


# -- the operator with the local back end --------------------------------------------------------
def test_operator_local_backend_pass_and_fail(cfg, dumps, pg, s3, bucket):
    counts = exact_row_counts(pg, "trixtech")
    dump = backup(cfg, dumps, counts)
    ti = TI()
    op = ro.ScratchRestoreOperator(task_id="t", source_name="trixtech-db", backup=dump.name, role="newest", jobs="1")
    result = op.execute({"run_id": RUN_ID, "ti": ti})
    assert result["ok"] and ti.pushed["result"] == result and result["jobs"] == 1
    assert result["location"] == str(dump)  # not in the bucket: restored from disk
    run_dir = cfg.restore.scratch_dir / "runs" / run_dir_name(RUN_ID)
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []  # the scratch server is gone
    # A wrong manifest: the task fails (no retry) after pushing the result naming the table.
    manifest_path(dump).write_text(RowManifest("trixtech", T0, dict(counts, **{"public.users": 1})).to_json())
    ti = TI()
    with pytest.raises(VerificationFailed, match="rows public.users"):
        op.execute({"run_id": RUN_ID, "ti": ti})
    assert ti.pushed["result"]["ok"] is False
    with pytest.raises(AirflowException, match="unknown source 'nope'"):
        ro.ScratchRestoreOperator(task_id="x", source_name="nope", backup="b").execute({"run_id": RUN_ID, "ti": ti})


# -- cleanup ---------------------------------------------------------------------------------------
def _scratch_objects(kube, cfg, run_id, age: timedelta, source="trixtech-db"):
    s = ro.KubernetesScratch(kube, cfg.restore, run_id=run_id, source=source, sleep=lambda s: None)
    secret, pod = s.manifests()
    kube.create_namespaced_secret(s.namespace, secret, _request_timeout=SEED)
    kube.create_namespaced_pod(s.namespace, pod, _request_timeout=SEED)
    created = clock.now() - age
    kube.pods[s.pod_name]["created"] = kube.secrets[s.secret_name]["created"] = created
    return s.pod_name, s.secret_name


def test_orphan_sweep_deletes_only_old_scratch_objects_and_reports_failures(cfg, kube):
    old = _scratch_objects(kube, cfg, "crashed-run", timedelta(hours=30))
    young = _scratch_objects(kube, cfg, "running-run", timedelta(minutes=10))
    foreign = {"metadata": {"name": "app-db", "labels": {"app": "trixtech"}}, "spec": {}}
    kube.create_namespaced_pod("backup-tests", foreign, _request_timeout=SEED)
    kube.pods["app-db"]["created"] = clock.now() - timedelta(days=90)
    report = ro.KubernetesScratchCleanupOperator(task_id="sweep").execute({})
    assert report == {"pods": [old[0]], "secrets": [old[1]], "failed": []}
    assert set(kube.pods) == {young[0], "app-db"} and set(kube.secrets) == {young[1]}
    [(_, ns, selector)] = kube.called("list_namespaced_pod")
    assert ns == "backup-tests" and "app.kubernetes.io/managed-by=backupkit" in selector

    # A failing delete: the others are still deleted, then the task fails naming it.
    a = _scratch_objects(kube, cfg, "crash-a", timedelta(hours=30))
    b = _scratch_objects(kube, cfg, "crash-b", timedelta(hours=30), source="trixtech-db-2")
    failing = a[0]
    real_delete = kube.delete_namespaced_pod

    def delete(name, namespace, **kw):
        if name == failing:
            raise ApiException(status=403, reason="Forbidden")
        return real_delete(name, namespace, **kw)

    kube.delete_namespaced_pod = delete
    with pytest.raises(AirflowException, match=f"pod {failing}"):
        ro.KubernetesScratchCleanupOperator(task_id="sweep").execute({})
    assert b[0] not in kube.pods and a[1] not in kube.secrets and b[1] not in kube.secrets


def test_run_teardown_deletes_that_runs_objects_whatever_their_age(cfg, kube):
    mine = _scratch_objects(kube, cfg, RUN_ID, timedelta(seconds=5))
    other = _scratch_objects(kube, cfg, "another-run", timedelta(seconds=5))
    cfg.path.write_text(cfg.path.read_text().replace("backend: local", "backend: kubernetes"))
    report = ro.ScratchCleanupOperator(task_id="teardown", run_id=RUN_ID).execute({})
    assert report["pods"] == [mine[0]] and report["secrets"] == [mine[1]]
    assert set(kube.pods) == {other[0]}


# -- the application platform (replace mode) ----------------------------------------------------------
def app_cluster(**healthy) -> FakeCluster:
    url = "postgresql://app:pw@db.trixtech.svc:5432/trixtech"
    return FakeCluster(namespace="trixtech", deployments={
        "trixtech-api": Deployment(3, {"DATABASE_URL": url, "LOG_LEVEL": "info"}, **healthy),
        "trixtech-worker": Deployment(2, {"DATABASE_URL": url}, container="worker", **healthy)})


FAST = Retry(attempts=3, backoff=0.0, sleep=lambda s: None)


def saga_log(cfg) -> SagaLog:
    return SagaLog(RestoreJournal(cfg.state_dir), RUN_ID, "trixtech-db")


def platform(cluster, cfg, app=None):
    clock = iter(range(0, 10_000)).__next__  # one second per look: timeouts pass without waiting
    return ro.KubernetesAppPlatform(cluster, cluster, app or cfg.restore.app, sleep=lambda s: None,
                                    clock=lambda: float(clock()))


def test_kubernetes_switch_and_rollback(cfg):
    cluster = app_cluster()
    p = platform(cluster, cfg)
    plan = plan_switch(p, namespace="trixtech", deployments=["trixtech-api", "trixtech-worker"],
                       old_database="trixtech", new_database="trixtech_restored_1")
    assert plan.replicas == {"trixtech-api": 3, "trixtech-worker": 2}
    assert set(plan.old) == {"deployment/trixtech-api/app", "deployment/trixtech-worker/worker"}
    switch_database(p, plan, log=saga_log(cfg), timeout=5, retry=FAST)
    assert {n: (d.replicas, d.env["DATABASE_URL"]) for n, d in cluster.deployments.items()} == {
        "trixtech-api": (3, "postgresql://app:pw@db.trixtech.svc:5432/trixtech_restored_1"),
        "trixtech-worker": (2, "postgresql://app:pw@db.trixtech.svc:5432/trixtech_restored_1")}
    assert cluster.deployments["trixtech-api"].env["LOG_LEVEL"] == "info"  # the patch merged, not replaced
    patch = cluster.called("patch_namespaced_deployment")[0][3]
    assert patch == {"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [
        {"name": "DATABASE_URL", "value": "postgresql://app:pw@db.trixtech.svc:5432/trixtech_restored_1"}]}]}}}}

    # Pods on the new database never get ready: timeout after the scale-up, then everything back.
    old = "postgresql://app:pw@db.trixtech.svc:5432/trixtech"
    cluster = app_cluster(healthy_with={old})
    p = platform(cluster, cfg)
    plan = plan_switch(p, namespace="trixtech", deployments=["trixtech-api", "trixtech-worker"],
                       old_database="trixtech", new_database="trixtech_restored_1")
    with pytest.raises(SwitchFailed, match="wait_ready trixtech-api.*0/3 ready.*rolled back"):
        switch_database(p, plan, log=saga_log(cfg), timeout=5, retry=FAST)
    assert {n: (d.replicas, d.env["DATABASE_URL"]) for n, d in cluster.deployments.items()} == {
        "trixtech-api": (3, old), "trixtech-worker": (2, old)}
    scales = [(c[1], c[3]["spec"]["replicas"]) for c in cluster.called("patch_namespaced_deployment_scale")]
    assert scales == [("trixtech-api", 0), ("trixtech-worker", 0), ("trixtech-api", 3), ("trixtech-worker", 2),
                      ("trixtech-api", 3), ("trixtech-worker", 2)]


def test_deployments_without_the_variable_are_scaled_but_not_switched(cfg):
    cluster = app_cluster()
    cluster.deployments["trixtech-frontend"] = Deployment(2, {"API_URL": "http://backend"}, container="web")
    p = platform(cluster, cfg)
    plan = plan_switch(p, namespace="trixtech", deployments=["trixtech-api", "trixtech-frontend"],
                       old_database="trixtech", new_database="n1")
    assert list(plan.old) == ["deployment/trixtech-api/app"] and plan.replicas["trixtech-frontend"] == 2
    del cluster.deployments["trixtech-api"].env["DATABASE_URL"]
    with pytest.raises(ValueError, match="none of the deployments trixtech-api, trixtech-frontend has"):
        plan_switch(p, namespace="trixtech", deployments=["trixtech-api", "trixtech-frontend"],
                    old_database="trixtech", new_database="n1")


def test_kubernetes_switch_through_a_secret(cfg):
    from dataclasses import replace

    app = replace(cfg.restore.app, setting="secret", secret_name="trixtech-db", secret_key="url")
    old = "postgresql://app:pw@db:5432/trixtech"
    cluster = FakeCluster(namespace="trixtech", deployments={"trixtech-api": Deployment(2, {})},
                          secrets={"trixtech-db": {"data": {"url": base64.b64encode(old.encode()).decode()},
                                                   "created": clock.now()}})
    p = platform(cluster, cfg, app)
    plan = plan_switch(p, namespace="trixtech", deployments=["trixtech-api"], old_database="trixtech",
                       new_database="trixtech_restored_2")
    assert list(plan.old) == ["secret/trixtech-db/url"]
    switch_database(p, plan, log=saga_log(cfg), timeout=5, retry=FAST)
    assert base64.b64decode(cluster.secrets["trixtech-db"]["data"]["url"]).decode() == \
        "postgresql://app:pw@db:5432/trixtech_restored_2"
    assert cluster.deployments["trixtech-api"].replicas == 2


# -- configuration errors, locks, leases ---------------------------------------------------------------
def test_configuration_errors_fail_the_task_at_once(cfg, monkeypatch):
    """A missing kube config is not transient: AirflowFailException (no retries), before any change."""
    from dataclasses import replace

    from airflow.sdk.exceptions import AirflowFailException

    def broken(conn_id):
        raise RuntimeError("Invalid kube-config file. No configuration found.")

    monkeypatch.setattr(ro, "kube_clients", broken)
    with pytest.raises(AirflowFailException, match="no Kubernetes client .*Invalid kube-config"):
        ro.app_platform(cfg)
    on_k8s = replace(cfg, restore=replace(cfg.restore, backend="kubernetes"))
    with pytest.raises(AirflowFailException, match="restore.backend is 'kubernetes'"):
        ro.make_scratch(on_k8s, run_id=RUN_ID, source_name="trixtech-db")
    with pytest.raises(AirflowFailException, match="restore.backend is 'kubernetes'"):
        ro.ScratchCleanupOperator(task_id="t", run_id=RUN_ID).__class__._sweep(on_k8s, "kubernetes", RUN_ID, 1)


def test_one_changing_restore_per_source_and_leases_until_the_run_ends(cfg):
    from backupkit.storage.locks import Leases

    with ro.restore_lock(cfg, "trixtech-db", "run-A"):
        with pytest.raises(AirflowException, match="restore of trixtech-db refused: run run-A"):
            with ro.restore_lock(cfg, "trixtech-db", "run-B", wait=0.2):
                pass
        with ro.restore_lock(cfg, "trixtech-files", "run-B", wait=0):  # another source: no wait
            pass
    ro.lease_backups(cfg, "run-A", [("trixtech-db", "trixtech_20250301_020000.dump"), ("trixtech-files", "")],
                     purpose="monthly restore test", hours=12)
    held = Leases(cfg.state_dir).held("trixtech-db")
    assert list(held) == ["trixtech_20250301_020000.dump"] and "monthly restore test (run run-A)" in held[
        "trixtech_20250301_020000.dump"]
    assert ro.release_leases(cfg, "run-B") == 0 and ro.release_leases(cfg, "run-A") == 1
    assert Leases(cfg.state_dir).active() == []
