"""The Kubernetes side of restores at run time: scratch pods, the smoke check, sweeps, the app platform.

Every function takes the kubernetes client objects (``CoreV1Api``, ``AppsV1Api``) as
arguments, so the whole lifecycle is tested against a recording stand-in at exactly the
client boundary; the Airflow layer only makes the clients (the cncf-kubernetes provider's
``KubernetesHook``).

Kubernetes scratch databases: a Secret (a password generated for the run) and a Pod
(:func:`~backupkit.restore.kubernetes.manifests.scratch_pod_manifest`: labelled with the run
id, resource limits, non-root, active deadline; the password reaches the container only by
``secretKeyRef``), waited for until ready, reached with the password in ``PGPASSWORD`` of the
client process (never in arguments or logs) on the pod IP on 5432 (``restore.kubernetes_access:
pod-ip``, workers in the cluster) or through the API server's port-forward on a loopback port
(``port-forward``, workers outside it: :mod:`~backupkit.restore.kubernetes.portforward`). Pod and Secret are deleted in a
``finally``, a per-run sweep deletes whatever carries the run's label, and the orphan sweep
deletes scratch objects older than ``restore.orphan_max_age_hours``.

Application smoke check (``restore.smoke_check``): after a passing restore, while the scratch
pod still runs, :class:`SmokeApp` creates a Secret with the scratch database's URL and a Pod of
the application image reading it by ``secretKeyRef``, GETs each configured path on the pod IP
and deletes pod and Secret in a ``finally`` (role ``smoke-app``: the sweeps find them too).
"""

from __future__ import annotations

import base64
import dataclasses
import time
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from backupkit.config import AppSwitch, RestoreSettings, SmokeCheck
from backupkit.model import CheckResult
from backupkit.restore.health import smoke_check as http_smoke_check
from backupkit.restore.kubernetes import manifests as k8s
from backupkit.restore.kubernetes.calls import (MAX_ATTEMPTS, MAX_RETRY_AFTER, REQUEST_TIMEOUT,  # noqa: F401
                                                api_error, call, status_of)
from backupkit.restore.kubernetes.waiting import Target, Verdict, wait_for
from backupkit.restore.kubernetes.portforward import PortForwardRelay, api_port_forward
from backupkit.restore.scratch import RESTORED_DB, ScratchDatabase, ScratchError, generate_password

SCRATCH_PORT = 5432
SCRATCH_USER = "postgres"
# Container waiting reasons that no amount of waiting fixes: reported at once.
PERMANENT_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull"})
class NotOurs(ScratchError):
    """An object of the name a run wanted exists and is someone else's: neither replaced nor deleted."""


def _create_own(core: Any, kind: str, namespace: str, body: dict, run_id: str,
                sleep: Callable[[float], None]) -> None:
    """Create a pod or secret of this run. Names are fixed per source, run and backup, so a 409
    is this run's object from an earlier attempt (a task retry, a create answered 5xx after it
    happened): it is replaced. An object of the same name that is not this run's is refused."""
    create = getattr(core, f"create_namespaced_{kind}")
    name = body["metadata"]["name"]
    try:
        call(create, namespace, body, sleep=sleep)
        return
    except Exception as exc:  # noqa: BLE001
        if status_of(exc) != 409:
            raise ScratchError(f"create {kind} {namespace}/{name}: {api_error(exc)}") from exc
    try:
        existing = call(getattr(core, f"read_namespaced_{kind}"), name, namespace, sleep=sleep)
        existing = existing.to_dict() if hasattr(existing, "to_dict") else existing
        labels = (existing.get("metadata") or {}).get("labels") or {}
        if not k8s.is_scratch(existing) or labels.get(k8s.RUN_ID_LABEL) != k8s.label_value(run_id):
            raise NotOurs(f"create {kind} {namespace}/{name}: 409 AlreadyExists, and it is not this run's "
                               f"(labels {labels}): not replaced")
        call(getattr(core, f"delete_namespaced_{kind}"), name, namespace, sleep=sleep,
             **({"grace_period_seconds": 0} if kind == "pod" else {}))
        call(create, namespace, body, sleep=sleep)
    except ScratchError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ScratchError(f"create {kind} {namespace}/{name} (replacing this run's earlier one): "
                           f"{api_error(exc)}") from exc


def _pending_reasons(core: Any, pod: Any, name: str, namespace: str) -> list[str]:
    """Why a pod is not running: its PodScheduled condition, its containers' waiting reasons and
    the Warning events recorded for it (scheduler, kubelet), as the API reports them."""
    status = getattr(pod, "status", None)
    reasons = []
    for c in getattr(status, "conditions", None) or []:
        if c.type == "PodScheduled" and c.status == "False":
            reasons.append(f"not scheduled: {c.reason}: {c.message}")
    for cs in getattr(status, "container_statuses", None) or []:
        waiting = getattr(getattr(cs, "state", None), "waiting", None)
        if waiting is not None and waiting.reason:
            reasons.append(f"container {cs.name} waiting: {waiting.reason}: {waiting.message or ''}".rstrip(": "))
    try:
        events = call(core.list_namespaced_event, namespace,
                      field_selector=f"involvedObject.name={name},involvedObject.kind=Pod").items or []
    except Exception as exc:  # noqa: BLE001 - the reasons above still stand
        return reasons + [f"events not readable: {api_error(exc)}"]
    for e in events:
        if e.type == "Warning" or e.reason in ("Failed", "BackOff", "FailedScheduling"):
            line = f"event {e.reason}: {e.message}"
            if line not in reasons:
                reasons.append(line)
    return reasons[:6]


def _pod_verdict(core: Any, name: str, namespace: str, what: str) -> Callable[[Any], Verdict]:
    """The judge of a pod: done with its IP once it runs and every container is ready; ScratchError if
    it is gone, ended, or cannot start (reasons from the API: scheduling, image pull, events)."""
    def judge(pod: Any) -> Verdict:
        if pod is None:
            raise ScratchError(f"{what} {namespace}/{name} is gone (deleted while it was awaited)")
        status = pod.status
        phase = getattr(status, "phase", None)
        if phase in ("Failed", "Succeeded"):
            raise ScratchError(f"{what} {namespace}/{name} ended ({phase}): "
                               f"{getattr(status, 'reason', None) or ''} {getattr(status, 'message', None) or ''}")
        containers = list(getattr(status, "container_statuses", None) or [])
        if phase == "Running" and containers and all(c.ready for c in containers) and getattr(status, "pod_ip", None):
            return Verdict(True, status.pod_ip)
        detail = f"phase {phase}, containers ready {[bool(c.ready) for c in containers]}"
        if any(getattr(getattr(getattr(c, "state", None), "waiting", None), "reason", None) in PERMANENT_WAITING
               for c in containers):
            why = "; ".join(_pending_reasons(core, pod, name, namespace)) or "no reason reported"
            raise ScratchError(f"{what} {namespace}/{name} cannot start ({detail}): {why}")
        return Verdict(False, detail=detail)
    return judge


def _wait_pod_ready(core: Any, name: str, namespace: str, timeout: float, *, what: str, poll_interval: float,
                    sleep: Callable[[float], None], clock: Callable[[], float]) -> str:
    """The pod's IP once it is ready, by list-then-watch (:mod:`.waiting`); at the deadline a
    ScratchError with the reasons the API gives for the last state seen."""
    def timed_out(pod: Any, detail: str) -> ScratchError:
        why = "; ".join(_pending_reasons(core, pod, name, namespace)) if pod is not None else ""
        return ScratchError(f"{what} {namespace}/{name} not ready after {timeout:g}s ({detail}): "
                            f"{why or 'no reason reported'}")

    return wait_for(Target(core, "pod", namespace, name), _pod_verdict(core, name, namespace, what),
                    timeout=timeout, clock=clock, sleep=sleep, poll_interval=poll_interval, on_timeout=timed_out)


def _delete_quietly(core: Any, namespace: str, pod: str | None, secret: str | None) -> list[str]:
    """Delete a pod and a secret (both attempted; absent is fine); the errors as text."""
    errors = []
    if pod:
        try:
            call(core.delete_namespaced_pod, pod, namespace, grace_period_seconds=0)
        except Exception as exc:  # noqa: BLE001
            if status_of(exc) != 404:
                errors.append(f"pod {pod}: {api_error(exc)}")
    if secret:
        try:
            call(core.delete_namespaced_secret, secret, namespace)
        except Exception as exc:  # noqa: BLE001
            if status_of(exc) != 404:
                errors.append(f"secret {secret}: {api_error(exc)}")
    return errors


# -- the Kubernetes scratch database ------------------------------------------------------------
class KubernetesScratch(ScratchDatabase):
    """One run's scratch PostgreSQL as a Pod plus a Secret, through a CoreV1Api client."""

    backend = "kubernetes"

    def __init__(self, core_v1: Any, settings: RestoreSettings, *, run_id: str, source: str, backup: str = "",
                 port: int | None = None, poll_interval: float = 2.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.core, self.settings, self.run_id, self.source = core_v1, settings, run_id, source
        self.port = int(port or SCRATCH_PORT)
        self.namespace = settings.namespace
        # Unique per source, run AND backup: the monthly test restores two backups of a source.
        self.pod_name = k8s.scratch_pod_name(source, f"{run_id}\0{backup}")
        self.secret_name = f"{self.pod_name}-pw"
        self.poll_interval, self._sleep, self._clock = poll_interval, sleep, clock
        self._password: str | None = None
        self.pod_ip: str | None = None
        self._relay: PortForwardRelay | None = None  # restore.kubernetes_access: port-forward
        self._pod_requested = self._secret_requested = False
        # Set by the operator while an application smoke check still needs the database:
        # restore_test's teardown is then skipped and the operator tears down afterwards.
        self.hold_teardown = False

    def manifests(self) -> tuple[dict, dict]:
        """(secret, pod) as they are sent to the API."""
        if self._password is None:
            self._password = generate_password()
        labels = {"backupkit/source": k8s.label_value(self.source)}
        secret = k8s.scratch_secret_manifest(self.secret_name, self.namespace, self._password, labels,
                                             run_id=self.run_id)
        pod = k8s.scratch_pod_manifest(name=self.pod_name, namespace=self.namespace, image=self.settings.image,
                                       run_id=self.run_id, secret_name=self.secret_name,
                                       resources=self.settings.resources,
                                       active_deadline_seconds=self.settings.active_deadline_seconds,
                                       labels=labels, user=SCRATCH_USER, port=self.port)
        return secret, pod

    def start(self) -> "KubernetesScratch":
        if self.pod_ip:
            return self
        secret, pod = self.manifests()
        # Marked before the call: a timeout after the API server created the object must
        # still be cleaned up (deleting an absent object is a 404, ignored).
        for kind, body in (("secret", secret), ("pod", pod)):
            setattr(self, f"_{kind}_requested", True)
            try:
                _create_own(self.core, kind, self.namespace, body, self.run_id, self._sleep)
            except NotOurs:
                setattr(self, f"_{kind}_requested", False)  # the teardown must not delete it
                raise
        self.pod_ip = self._wait_ready()
        if self.settings.kubernetes_access == "port-forward":
            self._relay = PortForwardRelay(api_port_forward(self.core, self.pod_name, self.namespace, self.port),
                                           what=f"scratch pod {self.namespace}/{self.pod_name}")
            self._relay.start()
        return self

    @property
    def address(self) -> tuple[str, int]:
        """Where this worker connects: the pod IP, or the loopback end of the port-forward."""
        if self._relay is not None:
            return "127.0.0.1", int(self._relay.port)
        return str(self.pod_ip), self.port

    def _wait_ready(self) -> str:
        return _wait_pod_ready(self.core, self.pod_name, self.namespace, self.settings.ready_timeout_seconds,
                               what="scratch pod", poll_interval=self.poll_interval, sleep=self._sleep,
                               clock=self._clock)

    def teardown(self) -> None:
        """Delete the pod and the secret (both attempted; absent is fine; other errors raise)."""
        if self.hold_teardown:
            return
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
        errors = _delete_quietly(self.core, self.namespace, self.pod_name if self._pod_requested else None,
                                 self.secret_name if self._secret_requested else None)
        self._pod_requested = self._secret_requested = False
        self.pod_ip = None
        self._password = None
        if errors:
            raise ScratchError("could not delete " + "; ".join(errors))

    def conn_args(self, database: str = "postgres") -> list[str]:
        if not self.pod_ip:
            raise ScratchError("scratch pod is not ready")
        host, port = self.address
        return ["-h", host, "-p", str(port), "-U", SCRATCH_USER, "-d", database]

    def uri(self, database: str = "postgres") -> str:
        host, port = self.address
        return f"postgresql://{SCRATCH_USER}@{host}:{port}/{database}"

    def url_with_password(self, database: str = RESTORED_DB) -> str:
        """The URL an application needs, password included: only ever put into a Secret."""
        if not self.pod_ip or not self._password:
            raise ScratchError("scratch pod is not ready")
        return (f"postgresql://{SCRATCH_USER}:{urllib.parse.quote(self._password, safe='')}@{self.pod_ip}:"
                f"{self.port}/{database}")

    def client_env(self) -> dict[str, str]:
        env = super().client_env()
        if self._password:
            env["PGPASSWORD"] = self._password
        env["PGCONNECT_TIMEOUT"] = "15"
        return env

    def __repr__(self) -> str:
        return f"KubernetesScratch({self.namespace}/{self.pod_name})"


class SmokeApp:
    """The application image pointed at a ready Kubernetes scratch database, its paths GET-checked,
    its pod and URL Secret always deleted. Every outcome is a list of CheckResults: by now the
    restore itself has passed, and a smoke failure is a finding, not a reason to redo it."""

    URL_KEY = "database-url"

    def __init__(self, scratch: KubernetesScratch, smoke: SmokeCheck, *, poll_interval: float = 2.0,
                 sleep: Callable[[float], None] | None = None, clock: Callable[[], float] | None = None):
        self.scratch, self.smoke, self.core = scratch, smoke, scratch.core
        self.settings, self.namespace = scratch.settings, scratch.namespace
        self.pod_name = k8s.smoke_app_pod_name(scratch.pod_name)
        self.secret_name = f"{self.pod_name}-url"
        self.poll_interval = poll_interval
        self._sleep, self._clock = sleep or scratch._sleep, clock or scratch._clock

    def manifests(self, database: str = RESTORED_DB) -> tuple[dict, dict]:
        """(secret, pod) as they are sent to the API; the URL is only in the Secret."""
        labels = {"backupkit/source": k8s.label_value(self.scratch.source)}
        secret = k8s.scratch_secret_manifest(self.secret_name, self.namespace, self.scratch.url_with_password(database),
                                             labels, run_id=self.scratch.run_id, key=self.URL_KEY,
                                             role=k8s.ROLE_SMOKE_APP)
        pod = k8s.smoke_app_pod_manifest(
            name=self.pod_name, namespace=self.namespace, image=self.smoke.image, run_id=self.scratch.run_id,
            port=self.smoke.port, db_secret_name=self.secret_name, db_secret_key=self.URL_KEY,
            env_var=self.smoke.env_var, resources=self.settings.resources,
            active_deadline_seconds=self.settings.active_deadline_seconds, readiness_path=self.smoke.paths[0],
            labels=labels)
        return secret, pod

    def run(self, artifact: str, database: str = RESTORED_DB) -> list[CheckResult]:
        checks: list[CheckResult] = []
        pod_requested = secret_requested = False
        try:
            secret, pod = self.manifests(database)
            secret_requested = True  # before the call: a timed-out create may still have happened
            try:
                _create_own(self.core, "secret", self.namespace, secret, self.scratch.run_id, self._sleep)
            except NotOurs:
                secret_requested = False
                raise
            pod_requested = True
            try:
                _create_own(self.core, "pod", self.namespace, pod, self.scratch.run_id, self._sleep)
            except NotOurs:
                pod_requested = False
                raise
            ip = _wait_pod_ready(self.core, self.pod_name, self.namespace, self.settings.ready_timeout_seconds,
                                 what="application pod", poll_interval=self.poll_interval, sleep=self._sleep,
                                 clock=self._clock)
            host, port, relay = ip, self.smoke.port, None
            if self.settings.kubernetes_access == "port-forward":
                relay = PortForwardRelay(api_port_forward(self.core, self.pod_name, self.namespace, port),
                                         what=f"application pod {self.namespace}/{self.pod_name}")
                host, port = "127.0.0.1", relay.start()
            try:
                for path in self.smoke.paths:
                    c = http_smoke_check(f"http://{host}:{port}{path}", timeout=self.smoke.timeout_seconds,
                                         artifact=artifact)
                    checks.append(dataclasses.replace(c, check=f"app_smoke {path}"))
            finally:
                if relay is not None:
                    relay.stop()
        except Exception as exc:  # noqa: BLE001 - API errors and a pod that never gets ready are findings
            checks.append(CheckResult(artifact, "app_smoke", False,
                                      f"application {self.smoke.image} against the restored database: "
                                      f"{type(exc).__name__}: {exc}"[:4000]))
        finally:
            errors = _delete_quietly(self.core, self.namespace, self.pod_name if pod_requested else None,
                                     self.secret_name if secret_requested else None)
            if errors:
                checks.append(CheckResult(artifact, "app_smoke teardown", False,
                                          "could not delete " + "; ".join(errors) + " (the orphan sweep must)"))
        return checks


# -- sweeps ------------------------------------------------------------------------------------------
def sweep_kubernetes(core_v1: Any, namespace: str, *, now: datetime, run_id: str | None = None,
                     max_age: timedelta | None = None) -> dict:
    """Delete backupkit scratch pods and secrets: those of ``run_id`` (any age), or those
    older than ``max_age`` (orphans of crashed runs). Every deletion is attempted."""
    if (run_id is None) == (max_age is None):
        raise ValueError("give exactly one of run_id and max_age")
    # No role term: the selector cannot say "one of" in equality form (the application smoke
    # pods and secrets have their own role); k8s.is_scratch/orphans keep only disposable roles.
    selector = f"{k8s.MANAGED_BY_LABEL}={k8s.MANAGED_BY}"
    if run_id is not None:
        selector += f",{k8s.RUN_ID_LABEL}={k8s.label_value(run_id)}"
    report: dict[str, list[str]] = {"pods": [], "secrets": [], "failed": []}
    for kind, lister, deleter, extra in (
            ("pods", core_v1.list_namespaced_pod, core_v1.delete_namespaced_pod, {"grace_period_seconds": 0}),
            ("secrets", core_v1.list_namespaced_secret, core_v1.delete_namespaced_secret, {})):
        items = [o.to_dict() if hasattr(o, "to_dict") else o
                 for o in (call(lister, namespace, label_selector=selector).items or [])]
        if run_id is not None:
            names = sorted(o["metadata"]["name"] for o in items if k8s.is_scratch(o))
        else:
            names = k8s.orphans(items, now=now, max_age=max_age)
        for name in names:
            try:
                call(deleter, name, namespace, **extra)
                report[kind].append(name)
            except Exception as exc:  # noqa: BLE001 - try the others, fail at the end
                if status_of(exc) == 404:
                    continue
                report["failed"].append(f"{kind[:-1]} {name}: {api_error(exc)}")
    return report


# -- the application side of the replace saga ------------------------------------------------------
class KubernetesAppPlatform:
    """:class:`backupkit.restore.switch.AppPlatform` over AppsV1Api/CoreV1Api clients."""

    def __init__(self, core_v1: Any, apps_v1: Any, app: AppSwitch, *, poll_interval: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 request_timeout: tuple[float, float] = REQUEST_TIMEOUT):
        self.core, self.apps, self.app = core_v1, apps_v1, app
        self.poll_interval, self._sleep, self._clock = poll_interval, sleep, clock
        self.request_timeout = request_timeout

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return call(fn, *args, request_timeout=self.request_timeout, sleep=self._sleep, **kwargs)

    def get_replicas(self, namespace: str, deployment: str) -> int:
        scale = self._call(self.apps.read_namespaced_deployment_scale, deployment, namespace)
        return int(scale.spec.replicas or 0)

    def scale(self, namespace: str, deployment: str, replicas: int) -> None:
        self._call(self.apps.patch_namespaced_deployment_scale, deployment, namespace,
                   {"spec": {"replicas": int(replicas)}})

    @staticmethod
    def _settled(dep: Any, replicas: int) -> tuple[bool, str]:
        st = dep.status
        have = int(getattr(st, "replicas", None) or 0)
        ready = int(getattr(st, "ready_replicas", None) or 0)
        updated = int(getattr(st, "updated_replicas", None) or 0)
        observed = int(getattr(st, "observed_generation", None) or 0)
        generation = int(getattr(dep.metadata, "generation", None) or 0)
        detail = f"{ready}/{replicas} ready, {have} pods, {updated} updated"
        if replicas == 0:
            return have == 0, detail
        return observed >= generation and have == replicas and ready == replicas and updated == replicas, detail

    def wait_for_replicas(self, namespace: str, deployment: str, replicas: int, timeout: float) -> None:
        """By list-then-watch (:mod:`.waiting`): returns once the rollout has settled at ``replicas``."""
        def judge(dep: Any) -> Verdict:
            if dep is None:
                raise LookupError(f"deployment {namespace}/{deployment} not found")
            ok, detail = self._settled(dep, replicas)
            return Verdict(ok, detail=detail)

        wait_for(Target(self.apps, "deployment", namespace, deployment), judge, timeout=timeout, clock=self._clock,
                 sleep=self._sleep, poll_interval=self.poll_interval, request_timeout=self.request_timeout,
                 on_timeout=lambda dep, detail: TimeoutError(
                     f"deployment {namespace}/{deployment}: {detail} after {timeout:g}s"))

    def _env(self, dep: Any, deployment: str) -> tuple[str, str] | None:
        """(container, value) of the database variable, or None when the deployment has none."""
        containers = dep.spec.template.spec.containers or []
        var = self.app.env_var
        for c in containers:
            if self.app.container and c.name != self.app.container:
                continue
            for e in c.env or []:
                if e.name == var:
                    if e.value_from is not None:
                        raise ValueError(f"{var} of deployment {deployment} (container {c.name}) comes from a Secret "
                                         "or ConfigMap (valueFrom): configure restore.app.setting: secret")
                    return c.name, e.value or ""
        return None

    def read_settings(self, namespace: str, deployments: Sequence[str]) -> dict[str, str]:
        """The database setting to switch. In env mode, deployments without the variable (a
        frontend that talks to the backend) are scaled down and up with the others but not
        switched; at least one must have it."""
        if self.app.setting == "secret":
            secret = self._call(self.core.read_namespaced_secret, self.app.secret_name, namespace)
            data = secret.data or {}
            if self.app.secret_key not in data:
                raise ValueError(f"secret {namespace}/{self.app.secret_name} has no key {self.app.secret_key!r}")
            value = base64.b64decode(data[self.app.secret_key]).decode()
            return {f"secret/{self.app.secret_name}/{self.app.secret_key}": value}
        out = {}
        for d in deployments:
            dep = self._call(self.apps.read_namespaced_deployment, d, namespace)
            found = self._env(dep, d)
            if found is not None:
                out[f"deployment/{d}/{found[0]}"] = found[1]
        if not out:
            where = f"container {self.app.container}" if self.app.container else "any container"
            raise ValueError(f"none of the deployments {', '.join(deployments)} has the environment variable "
                             f"{self.app.env_var} in {where}")
        return out

    def write_setting(self, namespace: str, target: str, value: str) -> None:
        kind, name, part = target.split("/", 2)
        if kind == "secret":
            self._call(self.core.patch_namespaced_secret, name, namespace,
                       {"data": {part: base64.b64encode(value.encode()).decode()}})
        elif kind == "deployment":
            # Strategic merge patch: the env list merges by name, other variables stay.
            body = {"spec": {"template": {"spec": {"containers": [
                {"name": part, "env": [{"name": self.app.env_var, "value": value}]}]}}}}
            self._call(self.apps.patch_namespaced_deployment, name, namespace, body)
        else:
            raise ValueError(f"unknown setting target {target!r}")


__all__ = ["KubernetesScratch", "SmokeApp", "KubernetesAppPlatform", "sweep_kubernetes", "SCRATCH_PORT",
           "SCRATCH_USER", "REQUEST_TIMEOUT"]
