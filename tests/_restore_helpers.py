"""Helpers for the restore tests: a recording Kubernetes API double, a small restore
configuration, a shared sandbox history, and a human who answers Required Actions.

The Kubernetes double stands exactly where a cluster would answer: it implements the
CoreV1Api / AppsV1Api methods the code calls, keeps the objects in memory, returns the
kubernetes client's own model classes (V1Pod, V1Deployment, ...) and raises the client's
``ApiException``. Everything else in these tests is real: pg_restore into real PostgreSQL,
S3 through a loopback moto server, Airflow running the DAGs with ``dag.test()``.
"""

from __future__ import annotations

import base64
import copy
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from urllib3.exceptions import ReadTimeoutError
from kubernetes.client import (
    ApiException,
    V1Container,
    V1Deployment,
    V1DeploymentSpec,
    V1DeploymentStatus,
    V1EnvVar,
    V1LabelSelector,
    V1ObjectMeta,
    V1Pod,
    V1PodList,
    V1PodSpec,
    V1PodStatus,
    V1PodTemplateSpec,
    V1Scale,
    V1ScaleSpec,
    V1Secret,
    V1SecretList,
    V1ContainerStatus,
)

from backupkit import clock
from _config_helpers import FILE_SET_AND_STATE_YAML, short_dir, trixtech_db_yaml  # noqa: F401  (short_dir: re-exported)

DATABASE = "trixtech_rt"  # our own copy: generate_history grows the database it dumps


def _matches(labels: dict, selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


def _meta(body: dict, created: datetime) -> V1ObjectMeta:
    m = body.get("metadata", {})
    return V1ObjectMeta(name=m["name"], namespace=m.get("namespace"), labels=dict(m.get("labels") or {}),
                        annotations=dict(m.get("annotations") or {}), creation_timestamp=created)


@dataclass
class Deployment:
    replicas: int
    env: dict[str, str]
    container: str = "app"
    generation: int = 1
    healthy_with: set[str] | None = None  # DATABASE_URL values whose pods become ready (None: any)


@dataclass
class FakeCluster:
    """In-memory objects of one namespace, every API call recorded as (method, args)."""

    namespace: str = "trixtech"
    deployments: dict[str, Deployment] = field(default_factory=dict)
    secrets: dict[str, dict] = field(default_factory=dict)  # name -> {"data": {...}, "labels":..., "created":...}
    pods: dict[str, dict] = field(default_factory=dict)  # name -> {"body":..., "created":..., "phase":...}
    calls: list[tuple] = field(default_factory=list)
    pod_phase: str = "Running"
    pod_ip: str = "127.0.0.1"
    polls_until_ready: int = 1
    fail: dict[str, Exception] = field(default_factory=dict)  # method name -> exception to raise
    flaky: dict[str, list[BaseException | None]] = field(default_factory=dict)  # method -> next calls (None: passes)
    hang: dict[str, int] = field(default_factory=dict)  # method -> how many next calls hang (until their timeout)
    timeouts: list[tuple[str, Any]] = field(default_factory=list)  # (method, _request_timeout) of every call
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, *args: Any, **kw: Any) -> None:
        """Record the call; a call without a request timeout fails the test (a hung API would hold it
        forever); injected hangs last the call's read timeout, then raise urllib3's ReadTimeoutError."""
        with self.lock:
            self.calls.append((method, *args))
            self.timeouts.append((method, kw.get("_request_timeout")))
        timeout = kw.get("_request_timeout")
        if not timeout:
            raise AssertionError(f"{method} called without _request_timeout")
        if self.hang.get(method, 0) > 0:
            self.hang[method] -= 1
            time.sleep(timeout[1] if isinstance(timeout, tuple) else timeout)
            raise ReadTimeoutError(None, "/apis", "Read timed out. (injected hang)")
        if self.flaky.get(method):
            exc = self.flaky[method].pop(0)
            if exc is not None:
                raise exc
        if method in self.fail:
            raise self.fail[method]

    def called(self, method: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == method]

    # -- CoreV1Api ------------------------------------------------------------------------
    def create_namespaced_secret(self, namespace, body, **kw):
        self.record("create_namespaced_secret", namespace, copy.deepcopy(body), **kw)
        name = body["metadata"]["name"]
        data = {k: base64.b64encode(v.encode()).decode() for k, v in (body.get("stringData") or {}).items()}
        self.secrets[name] = {"data": data, "body": body, "created": clock.now()}
        return V1Secret(metadata=_meta(body, self.secrets[name]["created"]), data=data)

    def create_namespaced_pod(self, namespace, body, **kw):
        self.record("create_namespaced_pod", namespace, copy.deepcopy(body), **kw)
        self.pods[body["metadata"]["name"]] = {"body": body, "created": clock.now(), "polls": 0}
        return self._pod(body["metadata"]["name"])

    def _pod(self, name: str) -> V1Pod:
        p = self.pods[name]
        ready = p["polls"] >= self.polls_until_ready and self.pod_phase == "Running"
        phase = self.pod_phase if p["polls"] >= self.polls_until_ready else "Pending"
        statuses = [V1ContainerStatus(name="postgres", image="postgres", image_id="", ready=ready, restart_count=0)]
        return V1Pod(metadata=_meta(p["body"], p["created"]), spec=V1PodSpec(containers=[]),
                     status=V1PodStatus(phase=phase, pod_ip=self.pod_ip if phase == "Running" else None,
                                        container_statuses=statuses))

    def read_namespaced_pod(self, name, namespace, **kw):
        self.record("read_namespaced_pod", name, namespace, **kw)
        if name not in self.pods:
            raise ApiException(status=404, reason="Not Found")
        self.pods[name]["polls"] += 1
        return self._pod(name)

    def delete_namespaced_pod(self, name, namespace, **kw):
        self.record("delete_namespaced_pod", name, namespace, kw, **kw)
        if self.pods.pop(name, None) is None:
            raise ApiException(status=404, reason="Not Found")

    def delete_namespaced_secret(self, name, namespace, **kw):
        self.record("delete_namespaced_secret", name, namespace, **kw)
        if self.secrets.pop(name, None) is None:
            raise ApiException(status=404, reason="Not Found")

    def list_namespaced_pod(self, namespace, label_selector=None, **kw):
        self.record("list_namespaced_pod", namespace, label_selector, **kw)
        return V1PodList(items=[self._pod_listed(n) for n, p in sorted(self.pods.items())
                                if _matches(p["body"]["metadata"].get("labels") or {}, label_selector)])

    def _pod_listed(self, name: str) -> V1Pod:
        p = self.pods[name]
        return V1Pod(metadata=_meta(p["body"], p["created"]), status=V1PodStatus(phase="Running"))

    def list_namespaced_secret(self, namespace, label_selector=None, **kw):
        self.record("list_namespaced_secret", namespace, label_selector, **kw)
        items = []
        for name, s in sorted(self.secrets.items()):
            body = s.get("body") or {"metadata": {"name": name}}
            if _matches(body["metadata"].get("labels") or {}, label_selector):
                items.append(V1Secret(metadata=_meta(body, s["created"])))
        return V1SecretList(items=items)

    def read_namespaced_secret(self, name, namespace, **kw):
        self.record("read_namespaced_secret", name, namespace, **kw)
        if name not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        return V1Secret(metadata=V1ObjectMeta(name=name), data=dict(self.secrets[name]["data"]))

    def patch_namespaced_secret(self, name, namespace, body, **kw):
        self.record("patch_namespaced_secret", name, namespace, copy.deepcopy(body), **kw)
        self.secrets[name]["data"].update(body.get("data") or {})

    # -- AppsV1Api ------------------------------------------------------------------------
    def _dep(self, name: str) -> Deployment:
        if name not in self.deployments:
            raise ApiException(status=404, reason=f"deployment {name} not found")
        return self.deployments[name]

    def read_namespaced_deployment_scale(self, name, namespace, **kw):
        self.record("read_namespaced_deployment_scale", name, namespace, **kw)
        return V1Scale(spec=V1ScaleSpec(replicas=self._dep(name).replicas))

    def patch_namespaced_deployment_scale(self, name, namespace, body, **kw):
        self.record("patch_namespaced_deployment_scale", name, namespace, copy.deepcopy(body), **kw)
        d = self._dep(name)
        d.replicas = int(body["spec"]["replicas"])
        d.generation += 1

    def read_namespaced_deployment(self, name, namespace, **kw):
        self.record("read_namespaced_deployment", name, namespace, **kw)
        d = self._dep(name)
        healthy = d.healthy_with is None or d.env.get("DATABASE_URL") in d.healthy_with
        ready = d.replicas if healthy else 0
        return V1Deployment(
            metadata=V1ObjectMeta(name=name, namespace=namespace, generation=d.generation),
            spec=V1DeploymentSpec(replicas=d.replicas, selector=V1LabelSelector(match_labels={"app": name}), template=V1PodTemplateSpec(spec=V1PodSpec(
                containers=[V1Container(name="sidecar", env=[V1EnvVar(name="LOG_LEVEL", value="info")]),
                            V1Container(name=d.container,
                                        env=[V1EnvVar(name=k, value=v) for k, v in d.env.items()])]))),
            status=V1DeploymentStatus(replicas=d.replicas, ready_replicas=ready, updated_replicas=d.replicas,
                                      available_replicas=ready, observed_generation=d.generation))

    def patch_namespaced_deployment(self, name, namespace, body, **kw):
        self.record("patch_namespaced_deployment", name, namespace, copy.deepcopy(body), **kw)
        d = self._dep(name)
        for c in body["spec"]["template"]["spec"]["containers"]:
            assert c["name"] == d.container, f"patched container {c['name']!r}, the app's is {d.container!r}"
            for e in c.get("env", []):  # strategic merge: by name
                d.env[e["name"]] = e["value"]
        d.generation += 1


def restore_config_yaml(*, database: str = DATABASE, allowed_root: Path, app_namespace: str = "trixtech",
                        deployments: tuple[str, ...] = ("trixtech-backend", "trixtech-frontend"), backend: str = "local",
                        rollout_timeout: int = 1, scratch_dir: Path | None = None, extra_restore: str = "",
                        extra_app: str = "") -> str:
    """One database (custom dumps, with manifests) and one file set; scratch and audit under the state dir."""
    deps = ", ".join(deployments)
    return f"""
bucket: {{name: trixtech-backups, aws_conn_id: aws_default}}
databases:
{trixtech_db_yaml(database)}{FILE_SET_AND_STATE_YAML}restore:
  backend: {backend}
  namespace: backup-tests
  image: postgres:18.1
  allowed_file_roots: ["{allowed_root}"]
  random_older_window_days: 30
  scratch_dir: "{scratch_dir or '${BACKUP_SCRATCH_DIR}'}"
{extra_restore}  app:
    namespace: {app_namespace}
    deployments: [{deps}]
    env_var: DATABASE_URL
    rollout_timeout_seconds: {rollout_timeout}
{extra_app}"""


class Approver:
    """Answers the Required Action of a running ``dag.test()`` from another thread, through the
    same handler the REST API (and the UI) call: ``PATCH .../hitlDetails``."""

    def __init__(self, dag_id: str, task_id: str, choice: str, user: str = "oncall-approver", timeout: float = 60,
                 before=None):
        self.dag_id, self.task_id, self.choice, self.user, self.timeout = dag_id, task_id, choice, user, timeout
        self.before = before  # called once the action waits, right before answering it
        self.answered: dict | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Approver":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
            from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
            from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
            from airflow.models.taskinstance import TaskInstance
            from airflow.utils.session import create_session
            from airflow.utils.state import TaskInstanceState
            from sqlalchemy import select

            deadline = time.monotonic() + self.timeout
            while not self._stop.is_set() and time.monotonic() < deadline:
                with create_session() as session:
                    ti = session.scalar(select(TaskInstance).where(
                        TaskInstance.dag_id == self.dag_id, TaskInstance.task_id == self.task_id,
                        TaskInstance.state == TaskInstanceState.AWAITING_INPUT))
                    if ti is not None:
                        if self.before is not None:
                            self.before()
                        resp = update_hitl_detail(
                            dag_id=self.dag_id, dag_run_id=ti.run_id, task_id=self.task_id,
                            update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=[self.choice]),
                            user=SimpleAuthManagerUser(username=self.user, role="admin"), session=session,
                            map_index=ti.map_index)
                        self.answered = resp.model_dump()
                        return
                time.sleep(0.3)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def hitl_detail(dag_id: str, run_id: str, task_id: str) -> dict:
    """What the approver was shown (subject, body, options) and answered."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalar(select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id,
                                                       TaskInstance.task_id == task_id))
        d = session.scalar(select(HITLDetail).where(HITLDetail.ti_id == ti.id))
        return {"subject": d.subject, "body": d.body, "options": d.options, "chosen_options": d.chosen_options,
                "responded_by": d.responded_by}
