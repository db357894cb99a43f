"""Contract tests: the scratch-pod lifecycle, the sweeps and the application switch through the real
``kubernetes`` client, made by the cncf-kubernetes provider's ``KubernetesHook`` from an Airflow
connection, against an HTTP Kubernetes API on loopback (tests/_kube_api.py: real paths, JSON, Status
errors, selectors, strategic merge, the scale subresource, schema validation of creates).

The recording stand-in (tests/_restore_helpers.FakeCluster) stays for unit tests; here the bytes
cross a socket, so a wrong path, verb, content type or body fails.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

import airflow_env  # noqa: F401  (before anything imports airflow)
from _kube_api import Fault, KubeApi, PodScript, image_pull_back_off, kubeconfig, serve, unschedulable
from backup_airflow.restore_operators import kube_clients
from backupkit import clock
from backupkit.pgbin import pg_bin
from backupkit.config import AppSwitch
from backupkit.config.schema import RestoreSettings
from backupkit.restore.conninfo import setting_database
from backupkit.restore.journal import RestoreJournal
from backupkit.restore.kubernetes import manifests as k8s
from backupkit.restore.kubernetes import calls, runtime
from backupkit.restore.kubernetes.runtime import KubernetesAppPlatform, KubernetesScratch, sweep_kubernetes
from backupkit.restore.rollback import Retry
from backupkit.restore.scratch import ScratchError
from backupkit.restore.switch import SagaLog, SwitchFailed, plan_switch, switch_database

NS, APP_NS = "backup-tests", "trixtech"
RUN_ID = "scheduled__2026-12-07T09:00:00+00:00"
OLD_URL, NEW_DB = "postgresql://app:s3cret@db.trixtech:5432/trixtech", "trixtech_restored_20261207"
SETTINGS = RestoreSettings(backend="kubernetes", namespace=NS, image="postgres:18.1", active_deadline_seconds=600,
                           ready_timeout_seconds=5)
FAST = Retry(attempts=4, backoff=0.0, sleep=lambda s: None)


@pytest.fixture
def api(tmp_path, monkeypatch):
    """The API server, and an Airflow connection ``kube_mock`` whose kube config points at it."""
    state = KubeApi()
    server, url = serve(state)
    path = tmp_path / "kubeconfig.json"
    path.write_text(json.dumps(kubeconfig(url, NS)))
    monkeypatch.setenv("AIRFLOW_CONN_KUBE_MOCK", json.dumps({"conn_type": "kubernetes",
                                                              "extra": {"kube_config_path": str(path)}}))
    yield state
    server.shutdown()


@pytest.fixture
def clients(api):
    return kube_clients("kube_mock")


def scratch(core, settings=SETTINGS, backup="trixtech_20261207_020000.dump", **kw) -> KubernetesScratch:
    return KubernetesScratch(core, settings, run_id=RUN_ID, source="trixtech-db", backup=backup, poll_interval=0.02,
                             **kw)


# -- the scratch pod's lifecycle -----------------------------------------------------------------------
def test_scratch_pod_and_secret_are_created_read_and_deleted(api, clients):
    core, _ = clients
    s = scratch(core)
    api.ready_after = 3  # Pending twice, then Running and ready
    s.start()
    assert s.pod_ip == "127.0.0.1"
    secret = api.get("secrets", NS, s.secret_name)
    assert base64.b64decode(secret["data"]["password"]).decode() == s.client_env()["PGPASSWORD"]
    pod = api.get("pods", NS, s.pod_name)
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": s.secret_name, "key": "password",
                                                                     "optional": False}
    assert s.client_env()["PGPASSWORD"] not in json.dumps(pod)  # the password is only in the Secret
    s.teardown()
    assert api.get("pods", NS, s.pod_name) is None and api.get("secrets", NS, s.secret_name) is None
    # Waited for by list, then watch from the list's version (tests/test_k8s_watch.py for the rest).
    assert [r[:2] for r in api.requests] == [("create", "secrets"), ("create", "pods"), ("list", "pods"),
                                              ("watch", "pods"), ("delete", "pods"), ("delete", "secrets")]


def test_teardown_of_objects_already_gone_is_quiet_404(api, clients):
    core, _ = clients
    s = scratch(core).start()
    api.objects.clear()  # deleted meanwhile (the active deadline, a person, the orphan sweep)
    s.teardown()  # 404 twice: nothing left to do
    assert [r[:2] for r in api.requests[-2:]] == [("delete", "pods"), ("delete", "secrets")]


def test_409_an_earlier_attempt_of_this_run_is_replaced(api, clients):
    """A task retry meets the pod and secret its first attempt left (same names): replaced, with the
    new password, not reused and not a failure."""
    core, _ = clients
    first = scratch(core)
    secret, pod = first.manifests()
    api.add("secrets", NS, {**secret, "data": {"password": base64.b64encode(b"old").decode()}})
    api.add("pods", NS, pod)
    s = scratch(core).start()
    password = base64.b64decode(api.get("secrets", NS, s.secret_name)["data"]["password"]).decode()
    assert password == s.client_env()["PGPASSWORD"] != "old"
    verbs = [r[:2] for r in api.requests]
    assert verbs[:4] == [("create", "secrets"), ("get", "secrets"), ("delete", "secrets"), ("create", "secrets")]
    assert ("delete", "pods") in verbs
    s.teardown()


def test_409_an_object_that_is_not_this_runs_is_refused_and_left_alone(api, clients):
    core, _ = clients
    s = scratch(core)
    secret, _ = s.manifests()
    foreign = {**secret, "metadata": {"name": s.secret_name, "labels": {"team": "dba"}}}
    api.add("secrets", NS, foreign)
    with pytest.raises(ScratchError, match=r"409 AlreadyExists, and it is not this run's"):
        s.start()
    s.teardown()
    assert api.get("secrets", NS, s.secret_name)["metadata"]["labels"] == {"team": "dba"}
    assert ("delete", "secrets") not in api.verbs() and ("create", "pods") not in api.verbs()


def test_422_from_the_api_server_is_a_verdict_with_its_message(api, clients):
    core, _ = clients
    api.faults.append(Fault("create", "pods", status=422, reason="Invalid"))
    s = scratch(core)
    with pytest.raises(ScratchError, match=r"create pod backup-tests/backupkit-scratch-.*: 422 Invalid: injected 422"):
        s.start()
    s.teardown()
    assert api.get("secrets", NS, s.secret_name) is None  # the secret made before the refusal is gone too


def test_429_with_retry_after_is_waited_for_then_retried(api, clients):
    core, _ = clients
    waits = []
    api.faults += [Fault("create", "secrets", status=429, reason="TooManyRequests", headers={"Retry-After": "7"}),
                   Fault("create", "pods", status=429, reason="TooManyRequests", headers={"Retry-After": "120"})]
    s = scratch(core, sleep=waits.append).start()
    assert waits[:2] == [7.0, runtime.MAX_RETRY_AFTER]  # obeyed, and capped
    assert [r[:2] for r in api.requests[:4]] == [("create", "secrets")] * 2 + [("create", "pods")] * 2
    s.teardown()


def test_429_on_a_read_is_retried_once_by_us_not_four_times_by_urllib3(api, clients):
    core, _ = clients
    s = scratch(core, sleep=lambda _: None)
    api.faults.append(Fault("list", "pods", status=429, reason="TooManyRequests", headers={"Retry-After": "1"}))
    s.start()
    assert [r[:2] for r in api.requests].count(("list", "pods")) == 2
    s.teardown()


@pytest.mark.parametrize("failures, ok", [(runtime.MAX_ATTEMPTS - 1, True), (runtime.MAX_ATTEMPTS, False)])
def test_500_is_retried_a_bounded_number_of_times(api, clients, failures, ok):
    core, _ = clients
    api.faults.append(Fault("create", "secrets", status=500, times=failures))
    s = scratch(core, sleep=lambda _: None)
    if ok:
        s.start()
    else:
        with pytest.raises(ScratchError, match="500 InternalError"):
            s.start()
    assert [r[:2] for r in api.requests].count(("create", "secrets")) == min(failures + 1, runtime.MAX_ATTEMPTS)
    s.teardown()


# -- a pod that never starts -------------------------------------------------------------------------------
@pytest.mark.parametrize("script, words", [
    (lambda: image_pull_back_off("postgres:18.1"), ["ImagePullBackOff", 'Failed to pull image "postgres:18.1"']),
    (unschedulable, ["not scheduled: Unschedulable", "3 Insufficient memory", "event FailedScheduling"]),
])
def test_a_pod_stuck_pending_is_reported_with_the_reason_from_its_events(api, clients, script, words):
    core, _ = clients
    s = scratch(core, replace(SETTINGS, ready_timeout_seconds=0.3))
    api.pod_scripts[s.pod_name] = script()
    with pytest.raises(ScratchError) as err:
        s.start()
    assert "not ready after 0.3s (phase Pending" in str(err.value)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert ("list", "events") in api.verbs()
    s.teardown()
    assert api.get("pods", NS, s.pod_name) is None


def test_an_invalid_image_name_fails_at_once_not_after_the_ready_timeout(api, clients):
    core, _ = clients
    s = scratch(core, replace(SETTINGS, ready_timeout_seconds=300))
    api.pod_scripts[s.pod_name] = PodScript(waiting=("InvalidImageName", 'couldn\'t parse image name "x::y"'))
    t0 = time.monotonic()
    with pytest.raises(ScratchError, match="cannot start .* InvalidImageName"):
        s.start()
    assert time.monotonic() - t0 < 30
    s.teardown()


def test_the_active_deadline_ends_a_pod_and_the_wait_says_so(api, clients):
    """activeDeadlineSeconds is enforced by the kubelet even if nobody deletes the pod: the wait
    reports the DeadlineExceeded failure instead of waiting on."""
    core, _ = clients
    s = scratch(core, replace(SETTINGS, active_deadline_seconds=1, ready_timeout_seconds=20))
    api.pod_scripts[s.pod_name] = PodScript()  # pending, no reason given
    with pytest.raises(ScratchError, match=r"ended \(Failed\): DeadlineExceeded"):
        s.start()
    assert api.get("pods", NS, s.pod_name)["spec"]["activeDeadlineSeconds"] == 1
    s.teardown()


# -- sweeps ------------------------------------------------------------------------------------------------
def test_sweeps_select_by_label_over_http(api, clients):
    core, _ = clients
    mine = scratch(core).start()
    other_run = KubernetesScratch(core, SETTINGS, run_id="manual__other", source="trixtech-db", poll_interval=0.02)
    other_run.start()
    api.add("pods", NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "someone-elses", "labels": {}},
                         "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    report = sweep_kubernetes(core, NS, now=clock.now(), run_id=RUN_ID)
    assert report == {"pods": [mine.pod_name], "secrets": [mine.secret_name], "failed": []}
    assert api.get("pods", NS, other_run.pod_name) and api.get("pods", NS, "someone-elses")
    listed = [r for r in api.requests if r[0] == "list"]
    assert {r[1] for r in listed} == {"pods", "secrets"}
    # Orphans by age: the creation time the API server stamped, read back through the client.
    report = sweep_kubernetes(core, NS, now=clock.now() + timedelta(days=365), max_age=timedelta(hours=6))
    assert report["pods"] == [other_run.pod_name] and api.get("pods", NS, "someone-elses")


# -- the application switch ---------------------------------------------------------------------------------
def platform(core, apps, **kw) -> KubernetesAppPlatform:
    app = AppSwitch(namespace=APP_NS, deployments=("trixtech-backend", "trixtech-frontend"), **kw)
    return KubernetesAppPlatform(core, apps, app, poll_interval=0.01, sleep=lambda s: None)


def test_the_switch_scales_patches_env_by_name_and_scales_back(api, clients, tmp_path):
    env_switch(api, *clients, tmp_path)


def env_switch(api, core, apps, tmp_path):
    api.deployment(APP_NS, "trixtech-backend", replicas=2, env={"DATABASE_URL": OLD_URL, "LOG_LEVEL": "debug"})
    api.deployment(APP_NS, "trixtech-frontend", replicas=1, env={"API_URL": "http://backend"}, container="web")
    p = platform(core, apps)
    plan = plan_switch(p, namespace=APP_NS, deployments=["trixtech-backend", "trixtech-frontend"],
                       old_database="trixtech", new_database=NEW_DB)
    assert plan.replicas == {"trixtech-backend": 2, "trixtech-frontend": 1}
    out = switch_database(p, plan, log=SagaLog(RestoreJournal(tmp_path / "env"), RUN_ID, "trixtech-db"),
                          timeout=5, retry=FAST)
    assert out["ok"]
    env = api.env_of(APP_NS, "trixtech-backend")
    assert setting_database(env["DATABASE_URL"]) == NEW_DB and env["LOG_LEVEL"] == "debug"
    assert api.env_of(APP_NS, "trixtech-backend", "sidecar") == {"LOG_LEVEL": "info"}  # merged by name
    assert api.get("deployments", APP_NS, "trixtech-backend")["spec"]["replicas"] == 2
    assert {ct for _, ct in api.content_types} == {"application/strategic-merge-patch+json"}
    assert {("get", "deployments/scale"), ("patch", "deployments/scale"), ("get", "deployments"),
            ("patch", "deployments")} <= api.verbs()


def test_the_secret_setting_is_read_and_patched(api, clients, tmp_path):
    secret_switch(api, *clients, tmp_path)


def secret_switch(api, core, apps, tmp_path):
    api.deployment(APP_NS, "trixtech-backend", replicas=1, env={})
    api.deployment(APP_NS, "trixtech-frontend", replicas=1, env={})
    api.add("secrets", APP_NS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "trixtech-db"},
                                "data": {"DATABASE_URL": base64.b64encode(OLD_URL.encode()).decode()}})
    p = platform(core, apps, setting="secret", secret_name="trixtech-db")
    plan = plan_switch(p, namespace=APP_NS, deployments=["trixtech-backend", "trixtech-frontend"],
                       old_database="trixtech", new_database=NEW_DB)
    switch_database(p, plan, log=SagaLog(RestoreJournal(tmp_path / "secret"), RUN_ID, "trixtech-db"), timeout=5,
                    retry=FAST)
    stored = base64.b64decode(api.get("secrets", APP_NS, "trixtech-db")["data"]["DATABASE_URL"]).decode()
    assert stored.endswith(f"/{NEW_DB}")
    assert {("get", "secrets"), ("patch", "secrets")} <= {(v, r) for v, r, ns, _ in api.requests if ns == APP_NS}


def test_an_unhealthy_new_database_rolls_back_over_http(api, clients, tmp_path):
    core, apps = clients
    api.deployment(APP_NS, "trixtech-backend", replicas=2, env={"DATABASE_URL": OLD_URL})
    api.deployment(APP_NS, "trixtech-frontend", replicas=1, env={})
    api.healthy_with = {OLD_URL}  # pods on the new database never get ready
    p = platform(core, apps)
    plan = plan_switch(p, namespace=APP_NS, deployments=["trixtech-backend", "trixtech-frontend"],
                       old_database="trixtech", new_database=NEW_DB)
    with pytest.raises(SwitchFailed, match="rolled back"):
        switch_database(p, plan, log=SagaLog(RestoreJournal(tmp_path), RUN_ID, "trixtech-db"), timeout=0.2,
                        retry=FAST)
    assert api.env_of(APP_NS, "trixtech-backend")["DATABASE_URL"] == OLD_URL
    assert api.get("deployments", APP_NS, "trixtech-backend")["spec"]["replicas"] == 2


def test_404_for_a_missing_deployment_names_it(api, clients):
    core, apps = clients
    with pytest.raises(Exception) as err:
        platform(core, apps).get_replicas(APP_NS, "trixtech-backend")
    assert getattr(err.value, "status", None) == 404 and "trixtech-backend" in str(err.value)


# -- request timeouts on every call ---------------------------------------------------------------------------
def _teardown_pod(s: KubernetesScratch) -> None:
    s._pod_requested = True  # as after a create that timed out
    s.teardown()


def _operations(core, apps):
    s = scratch(core, sleep=lambda _: None)
    p = platform(core, apps)
    p.request_timeout = calls.REQUEST_TIMEOUT
    yield "create secret", s.start
    yield "delete pod", lambda: _teardown_pod(s)
    yield "list pods", lambda: sweep_kubernetes(core, NS, now=clock.now(), run_id=RUN_ID)
    yield "get deployments/scale", lambda: p.get_replicas(APP_NS, "trixtech-backend")
    yield "patch deployments/scale", lambda: p.scale(APP_NS, "trixtech-backend", 0)
    yield "list deployments", lambda: p.wait_for_replicas(APP_NS, "trixtech-backend", 0, 5)
    yield "patch deployments", lambda: p.write_setting(APP_NS, "deployment/trixtech-backend/app", OLD_URL)


def test_every_call_has_a_request_timeout_and_one_attempt(api, clients, monkeypatch):
    """The API server answers nothing for 3 s; each call gives up after one read timeout (0.3 s),
    not after urllib3's four attempts, and not never."""
    core, apps = clients
    monkeypatch.setattr(calls, "REQUEST_TIMEOUT", (1.0, 0.3))
    for verb, resource in [("create", "secrets"), ("delete", "pods"), ("list", "pods"), ("get", "deployments/scale"),
                           ("patch", "deployments/scale"), ("list", "deployments"), ("patch", "deployments")]:
        api.faults.append(Fault(verb, resource, hang=3.0, times=10))
    for name, op in _operations(core, apps):
        t0 = time.monotonic()
        with pytest.raises(Exception):
            op()
        elapsed = time.monotonic() - t0
        assert elapsed < 1.5, f"{name}: {elapsed:.1f}s"
    hung = [r for r in api.requests if r[:2] == ("get", "deployments/scale")]
    assert len(hung) == 1  # one attempt


# -- port-forward: workers outside the cluster --------------------------------------------------------------
PORT_FORWARD = replace(SETTINGS, kubernetes_access="port-forward")


def test_port_forward_mode_reaches_a_real_postgres_through_the_api_server(api, clients, pg):
    """restore.kubernetes_access: port-forward. The mock relays the pod's 5432 to a real PostgreSQL:
    psql connects to the loopback end, the client library's websocket port-forward carries the bytes."""
    core, _ = clients
    s = scratch(core, PORT_FORWARD).start()
    api.port_targets[(NS, s.pod_name, 5432)] = ("127.0.0.1", pg.port)
    host, port = s.address
    assert host == "127.0.0.1" and port != 5432 and s.conn_args()[:4] == ["-h", "127.0.0.1", "-p", str(port)]
    for _ in range(2):  # each connection gets its own stream
        out = subprocess.run([pg_bin("psql"), *s.conn_args("trixtech"), "-XAtc", "SELECT count(*) FROM users"],
                             env=pg.client_env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == pg.psql("SELECT count(*) FROM users", "trixtech").strip()
    assert [r for r in api.requests if r[1] == "pods/portforward"] == [("get", "pods/portforward", NS, s.pod_name)] * 2
    s.teardown()
    with pytest.raises(ConnectionRefusedError):  # the relay is gone with the pod
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_port_forward_that_cannot_open_fails_the_client_and_is_recorded(api, clients):
    core, _ = clients
    s = scratch(core, PORT_FORWARD).start()
    api.faults.append(Fault("get", "pods/portforward", status=403, reason="Forbidden"))
    with socket.create_connection(s.address, timeout=10) as c:
        c.settimeout(10)
        assert c.recv(1) == b""  # closed at once: psql reports the server closed the connection
    assert s._relay.errors and "port-forward to scratch pod" in s._relay.errors[0]
    s.teardown()


def test_the_port_forward_mode_is_configured_and_checked(tmp_path):
    from backupkit.config import load_config
    from backupkit.config.reader import ConfigError

    base = ("bucket: {name: pf-backups}\nverification: {state_dir: %s}\nrestore: {kubernetes_access: %s}\n"
            "file_sets: [{name: f, local_dir: /tmp/f, s3_prefix: f/, pattern: 'f_%%Y%%m%%d.tar.gz'}]\n")
    path = tmp_path / "b.yaml"
    path.write_text(base % (tmp_path, "port-forward"))
    assert load_config(path).restore.kubernetes_access == "port-forward"
    path.write_text(base % (tmp_path, "tunnel"))
    with pytest.raises(ConfigError, match="restore.kubernetes_access: must be one of pod-ip, port-forward"):
        load_config(path)


# -- the Role grants exactly what is used --------------------------------------------------------------------
# Role -> the namespace it is bound in (scratch: restore.namespace; app: restore.app.namespace)
ROLE_OF = {"backupkit-scratch": "scratch", "backupkit-app-switch": "app", "backupkit-scratch-port-forward": "scratch"}


def granted(file: str = "rbac.yaml") -> set[tuple[str, str, str]]:
    """(namespace role, verb, resource) for every rule of the Roles in deploy/kubernetes/FILE."""
    out = set()
    path = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / file
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] == "Role":
            for rule in doc["rules"]:
                out |= {(ROLE_OF[doc["metadata"]["name"]], v, r) for v in rule["verbs"] for r in rule["resources"]}
    return out


def test_the_port_forward_role_grants_what_the_relay_uses(api, clients, pg):
    """The websocket upgrade is a GET (observed); ``create`` is granted too, for API servers that
    also authorize the upgrade as a create (rbac-port-forward.yaml says why)."""
    core, _ = clients
    s = scratch(core, PORT_FORWARD).start()
    api.port_targets[(NS, s.pod_name, 5432)] = ("127.0.0.1", pg.port)
    out = subprocess.run([pg_bin("pg_isready"), *s.conn_args()[:4]], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    s.teardown()
    observed = {("scratch", v, r) for v, r, _, _ in api.requests if r == "pods/portforward"}
    assert observed == {("scratch", "get", "pods/portforward")}
    assert granted("rbac-port-forward.yaml") - observed == {("scratch", "create", "pods/portforward")}


def test_the_roles_grant_exactly_the_verbs_the_project_uses(api, clients, tmp_path):
    """Every path of the code that talks to Kubernetes, once, over HTTP: the (verb, resource) pairs the
    API server saw, per namespace, are exactly what the Roles grant -- no more, no fewer."""
    core, apps = clients
    first = scratch(core)
    secret, pod = first.manifests()
    api.add("secrets", NS, secret)  # an earlier attempt's objects: replaced (get, delete, create)
    api.add("pods", NS, pod)
    s = scratch(core, sleep=lambda _: None).start()
    sweep_kubernetes(core, NS, now=clock.now(), run_id=RUN_ID)
    sweep_kubernetes(core, NS, now=clock.now(), max_age=timedelta(hours=6))
    stuck = scratch(core, replace(SETTINGS, ready_timeout_seconds=0.1), backup="other.dump")
    api.pod_scripts[stuck.pod_name] = unschedulable()
    with pytest.raises(ScratchError):
        stuck.start()  # reads the pod's events
    stuck.teardown()
    s.teardown()
    api.rollout_step = 1  # pods get ready one by one: the rollout wait watches
    env_switch(api, core, apps, tmp_path)
    secret_switch(api, core, apps, tmp_path)
    observed = {("scratch" if ns == NS else "app", verb, res) for verb, res, ns, _ in api.requests}
    assert observed == granted()


def test_manifests_module_names_are_the_labels_the_mock_saw(api, clients):
    core, _ = clients
    s = scratch(core).start()
    labels = api.get("pods", NS, s.pod_name)["metadata"]["labels"]
    assert labels[k8s.MANAGED_BY_LABEL] == k8s.MANAGED_BY and labels[k8s.ROLE_LABEL] == k8s.ROLE_SCRATCH
    s.teardown()
