"""The optional application smoke check after a Kubernetes scratch restore.

Up to the API boundary, as the other Kubernetes tests: the recording cluster double answers
the API calls, the scratch "pod" is a real local PostgreSQL, and the "application pod" is a
real HTTP server on 127.0.0.1 (the double reports 127.0.0.1 as every pod's IP). The server
resolves its database URL the way the kubelet would -- through the pod's ``secretKeyRef`` into
the Secret the operator created -- and queries the restored database with it, so a wrong URL,
password or reference fails the check.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import airflow_env  # noqa: F401  (before anything imports airflow)
from _restore_helpers import FakeCluster, short_dir
from backup_airflow import restore_operators as ro
from backupkit.restore.kubernetes import runtime
from backupkit.restore.kubernetes.runtime import SmokeApp, sweep_kubernetes
from backup_airflow.common import VerificationFailed
from backupkit import clock
from backupkit.config import ConfigError, SmokeCheck, load_config
from backupkit.pgbin import pg_bin
from backupkit.pgserver import LocalPostgres
from backupkit.restore.kubernetes import manifests as k8s
from backupkit.restore.verify_rows import exact_row_counts
from kubernetes.client import ApiException
from test_restore_operators import RUN_ID, SEED, TI, backup, cfg, kube, scratch_base, strings  # noqa: F401 - fixtures

RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
SECRET_URL = "postgresql://postgres:s3cr3t-Pa55@10.1.2.3:5432/restored"


# -- the manifests --------------------------------------------------------------------------------
@pytest.fixture
def app_pod():
    return k8s.smoke_app_pod_manifest(
        name="backupkit-smoke-trixtech-db-1", namespace="backup-tests", image="ghcr.io/trixtech/backend:1.4.2",
        run_id=RUN_ID, port=8080, db_secret_name="backupkit-smoke-trixtech-db-1-url", db_secret_key="database-url",
        env_var="DATABASE_URL", resources=RESOURCES, active_deadline_seconds=900, readiness_path="/healthz",
        labels={"backupkit/source": "trixtech-db"})


def test_smoke_pod_field_by_field(app_pod):
    meta, spec = app_pod["metadata"], app_pod["spec"]
    assert (app_pod["apiVersion"], app_pod["kind"]) == ("v1", "Pod")
    assert (meta["name"], meta["namespace"]) == ("backupkit-smoke-trixtech-db-1", "backup-tests")
    assert meta["labels"] == {k8s.MANAGED_BY_LABEL: "backupkit", k8s.RUN_ID_LABEL: k8s.label_value(RUN_ID),
                              k8s.ROLE_LABEL: "smoke-app", "backupkit/source": "trixtech-db"}
    assert meta["annotations"] == {"backupkit/run-id": RUN_ID}
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 900
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    [c] = spec["containers"]
    assert c["image"] == "ghcr.io/trixtech/backend:1.4.2"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["resources"] == RESOURCES
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080, "scheme": "HTTP"}
    # The database URL only by reference: the one env entry has no value at all.
    assert c["env"] == [{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {
        "name": "backupkit-smoke-trixtech-db-1-url", "key": "database-url", "optional": False}}}]
    assert "args" not in c and "command" not in c
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and "runAsUser" not in sc  # the image's own non-root USER
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def test_smoke_pod_refuses_bad_input():
    base = dict(name="backupkit-smoke-x", namespace="ns", image="app:1", run_id="r", port=3000,
                db_secret_name="backupkit-smoke-x-url", db_secret_key="database-url", env_var="DATABASE_URL",
                resources=None, active_deadline_seconds=60)
    assert k8s.smoke_app_pod_manifest(**base)["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == \
        "/health"
    for bad, match in (({"image": "app 1"}, "image"), ({"port": 70000}, "port"), ({"name": "Bad_Name"}, "pod name"),
                       ({"readiness_path": "health"}, "readiness path"), ({"active_deadline_seconds": 0}, "deadline")):
        with pytest.raises(ValueError, match=match):
            k8s.smoke_app_pod_manifest(**{**base, **bad})
    with pytest.raises(ValueError, match="cannot be overridden"):
        k8s.smoke_app_pod_manifest(**base, labels={k8s.ROLE_LABEL: "scratch-db"})


def test_url_secret_and_the_sweep_selects_smoke_objects():
    secret = k8s.scratch_secret_manifest("backupkit-smoke-x-url", "ns", SECRET_URL, run_id=RUN_ID,
                                         key="database-url", role=k8s.ROLE_SMOKE_APP)
    assert secret["stringData"] == {"database-url": SECRET_URL} and secret["immutable"] is True
    assert secret["metadata"]["labels"][k8s.ROLE_LABEL] == "smoke-app"
    with pytest.raises(ValueError, match="role"):
        k8s.scratch_secret_manifest("x", "ns", "v", run_id=RUN_ID, role="application")
    now = datetime(2025, 3, 3, 12, tzinfo=timezone.utc)

    def obj(name, role, hours, owner="backupkit"):
        return {"metadata": {"name": name, "creationTimestamp": (now - timedelta(hours=hours)).isoformat(),
                             "labels": {k8s.MANAGED_BY_LABEL: owner, k8s.ROLE_LABEL: role}}}

    items = [obj("old-smoke", "smoke-app", 30), obj("young-smoke", "smoke-app", 1), obj("old-db", "scratch-db", 30),
             obj("old-other-role", "backup-job", 30), obj("foreign-smoke", "smoke-app", 30, owner="helm")]
    assert k8s.orphans(items, now=now, max_age=timedelta(hours=6)) == ["old-db", "old-smoke"]
    assert k8s.smoke_app_pod_name(k8s.scratch_pod_name("trixtech-db", "r")).startswith("backupkit-smoke-trixtech-db-")


# -- configuration ---------------------------------------------------------------------------------
def _config(tmp_path, smoke: str):
    path = tmp_path / "c.yaml"
    path.write_text(f"""
bucket: {{name: trixtech-backups}}
databases:
  - {{name: db, database: trixtech, dump_format: custom, local_dir: {tmp_path}, s3_prefix: database/,
     pattern: db_%Y%m%d.dump}}
restore:
  backend: kubernetes
{smoke}
""")
    return load_config(path)


def test_config_smoke_check(tmp_path):
    assert _config(tmp_path, "").restore.smoke_check is None  # absent: off
    assert _config(tmp_path, "  smoke_check:").restore.smoke_check is None  # empty: off
    s = _config(tmp_path, "  smoke_check: {image: 'ghcr.io/trixtech/backend:1.4'}").restore.smoke_check
    assert (s.image, s.port, s.paths, s.env_var, s.timeout_seconds) == \
        ("ghcr.io/trixtech/backend:1.4", 3000, ("/health",), "DATABASE_URL", 60)
    s = _config(tmp_path, "  smoke_check: {image: app:2, port: 8080, paths: [/healthz, /api/services], "
                          "env_var: DB_URL, timeout_seconds: 5}").restore.smoke_check
    assert (s.port, s.paths, s.env_var, s.timeout_seconds) == (8080, ("/healthz", "/api/services"), "DB_URL", 5)
    for bad, key in (("{port: 3000}", "smoke_check.image"), ("{image: a, paht: [/x]}", "smoke_check.paht"),
                     ("{image: a, paths: [health]}", "smoke_check.paths[0]"), ("{image: a, paths: []}", "paths"),
                     ("{image: a, port: 0}", "smoke_check.port"), ("{image: a, port: 99999}", "smoke_check.port"),
                     ("{image: a, env_var: 'DB URL'}", "env_var"), ("{image: a, timeout_seconds: 0}", "timeout")):
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            _config(tmp_path, f"  smoke_check: {bad}")


# -- the operator -------------------------------------------------------------------------------------
class App:
    """The "application pod": answers like a small backend, reading its DATABASE_URL the way the
    kubelet would hand it over (the smoke pod's secretKeyRef into the cluster's Secret)."""

    def __init__(self, cluster: FakeCluster):
        self.cluster, self.urls = cluster, []
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                code, body = app.answer(self.path)
                self.send_response(code)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def database_url(self) -> str:
        [pod] = [p["body"] for n, p in self.cluster.pods.items() if n.startswith("backupkit-smoke-")]
        [env] = pod["spec"]["containers"][0]["env"]
        ref = env["valueFrom"]["secretKeyRef"]
        return base64.b64decode(self.cluster.secrets[ref["name"]]["data"][ref["key"]]).decode()

    def answer(self, path: str) -> tuple[int, str]:
        if path == "/health":
            return 200, "ok"
        if path == "/api/services":
            url = self.database_url()
            self.urls.append(url)
            out = subprocess.run([str(pg_bin("psql")), url, "-XtAc", "select count(*) from services"],
                                 capture_output=True, text=True, timeout=10)
            if out.returncode != 0:
                return 503, out.stderr
            return (200, out.stdout) if int(out.stdout) > 0 else (503, "no services")
        return 500, "internal error"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scratch_server(monkeypatch):
    """The scratch "pod"'s PostgreSQL: a real local server on the port the operator connects to."""
    server = LocalPostgres(short_dir() / "data")
    server.start()
    monkeypatch.setattr(runtime, "SCRATCH_PORT", server.port)
    yield server
    server.destroy()
    shutil.rmtree(server.data_dir.parent, ignore_errors=True)


@pytest.fixture
def app(kube):
    a = App(kube)
    yield a
    a.close()


def _enable(cfg, app, paths: str, backend: str = "kubernetes") -> None:
    block = (f"  smoke_check: {{image: 'ghcr.io/trixtech/backend:1.4.2', port: {app.port}, paths: {paths}, "
             f"timeout_seconds: 1}}\n")
    text = cfg.path.read_text().replace("backend: local", f"backend: {backend}").replace("  app:\n", block + "  app:\n")
    cfg.path.write_text(text)


def _names(kube, method):
    return [c[2]["metadata"]["name"] for c in kube.called(method)]


def test_operator_smoke_passes_against_the_restored_database(cfg, kube, dumps, pg, bucket, scratch_server, app):
    counts = exact_row_counts(pg, "trixtech")
    dump = backup(cfg, dumps, counts)
    _enable(cfg, app, "[/health, /api/services]")
    result = ro.ScratchRestoreOperator(task_id="t", source_name="trixtech-db", backup=dump.name).execute(
        {"run_id": RUN_ID, "ti": TI()})
    assert result["ok"], result["problems"]
    smoke = [c for c in result["checks"] if c["check"].startswith("app_smoke")]
    assert [(c["check"], c["ok"], c["artifact"]) for c in smoke] == [
        ("app_smoke /health", True, f"trixtech-db/{dump.name}"),
        ("app_smoke /api/services", True, f"trixtech-db/{dump.name}")]
    # Two secrets and two pods: scratch database first, then the application; all deleted.
    secrets, pods = _names(kube, "create_namespaced_secret"), _names(kube, "create_namespaced_pod")
    assert [n.split("-")[1] for n in pods] == ["scratch", "smoke"] and secrets[1] == pods[1] + "-url"
    assert kube.pods == {} and kube.secrets == {}
    assert sorted(c[1] for c in kube.called("delete_namespaced_pod")) == sorted(pods)
    assert sorted(c[1] for c in kube.called("delete_namespaced_secret")) == sorted(secrets)
    # The application pod is deleted before the database it needs.
    order = [c[1] for c in kube.calls if c[0] == "delete_namespaced_pod"]
    assert order == [pods[1], pods[0]]
    # The URL reached the app only through the Secret and pointed at the restored database.
    [(_, _, url_secret)] = [c for c in kube.called("create_namespaced_secret") if c[2]["metadata"]["name"] == secrets[1]]
    [(_, _, db_secret)] = [c for c in kube.called("create_namespaced_secret") if c[2]["metadata"]["name"] == secrets[0]]
    url = url_secret["stringData"]["database-url"]
    password = db_secret["stringData"]["password"]
    assert app.urls == [url] and url.endswith(f"@127.0.0.1:{scratch_server.port}/restored") and password in url
    [(_, _, app_pod)] = [c for c in kube.called("create_namespaced_pod") if c[2]["metadata"]["name"] == pods[1]]
    assert url not in json.dumps(app_pod) and all(password not in s for s in strings(app_pod))
    assert app_pod["metadata"]["labels"][k8s.ROLE_LABEL] == "smoke-app"
    assert app_pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"


def test_operator_smoke_failure_fails_the_task_and_still_deletes_everything(cfg, kube, dumps, pg, bucket, scratch_server,
                                                                          app):
    dump = backup(cfg, dumps, exact_row_counts(pg, "trixtech"))
    _enable(cfg, app, "[/health, /broken]")
    ti = TI()
    with pytest.raises(VerificationFailed, match=r"app_smoke /broken: .*HTTP 500"):
        ro.ScratchRestoreOperator(task_id="t", source_name="trixtech-db", backup=dump.name).execute(
            {"run_id": RUN_ID, "ti": ti})
    r = ti.pushed["result"]
    assert [(p["check"]) for p in r["problems"]] == ["app_smoke /broken"]
    assert any(c["check"] == "app_smoke /health" and c["ok"] for c in r["checks"])
    assert kube.pods == {} and kube.secrets == {}
    assert len(kube.called("delete_namespaced_pod")) == 2 and len(kube.called("delete_namespaced_secret")) == 2

    # The API refuses the application pod: a finding; its secret and the scratch are still deleted.
    real_create = kube.create_namespaced_pod

    def create(namespace, body, **kw):
        if body["metadata"]["name"].startswith("backupkit-smoke-"):
            kube.record("create_namespaced_pod", namespace, body, **kw)
            raise ApiException(status=403, reason="Forbidden by admission policy")
        return real_create(namespace, body, **kw)

    kube.create_namespaced_pod = create
    kube.calls.clear()
    scratch_server.psql("DROP DATABASE restored")  # a real scratch pod would be a fresh server
    ti = TI()
    with pytest.raises(VerificationFailed, match="app_smoke"):
        ro.ScratchRestoreOperator(task_id="t", source_name="trixtech-db", backup=dump.name).execute(
            {"run_id": RUN_ID, "ti": ti})
    [problem] = ti.pushed["result"]["problems"]
    assert problem["check"] == "app_smoke" and "Forbidden by admission policy" in problem["detail"]
    assert kube.pods == {} and kube.secrets == {}
    assert len(kube.called("delete_namespaced_secret")) == 2


def test_the_sweep_deletes_this_runs_smoke_objects(cfg, kube):
    scratch = ro.KubernetesScratch(kube, cfg.restore, run_id=RUN_ID, source="trixtech-db", sleep=lambda s: None)
    scratch.start()
    smoke = SmokeApp(scratch, SmokeCheck(image="app:1"))
    secret, pod = smoke.manifests()
    kube.create_namespaced_secret(scratch.namespace, secret, _request_timeout=SEED)
    kube.create_namespaced_pod(scratch.namespace, pod, _request_timeout=SEED)
    scratch.hold_teardown = True
    scratch.teardown()  # held: nothing deleted
    assert len(kube.pods) == 2
    report = sweep_kubernetes(kube, scratch.namespace, now=clock.now(), run_id=RUN_ID)
    assert report == {"pods": sorted([scratch.pod_name, smoke.pod_name]),
                      "secrets": sorted([scratch.secret_name, smoke.secret_name]), "failed": []}
    assert kube.pods == {} and kube.secrets == {}


def test_local_backend_ignores_smoke_check(cfg, kube, dumps, pg, bucket, app, capsys):
    dump = backup(cfg, dumps, exact_row_counts(pg, "trixtech"))
    _enable(cfg, app, "[/broken]", backend="local")
    op = ro.ScratchRestoreOperator(task_id="t", source_name="trixtech-db", backup=dump.name)
    result = op.execute({"run_id": RUN_ID, "ti": TI()})
    assert result["ok"] and not [c for c in result["checks"] if c["check"].startswith("app_smoke")]
    assert kube.calls == []
    # The task log (structlog, printed) says why there is no smoke result.
    assert "smoke_check is only supported on the Kubernetes back end" in capsys.readouterr().out
