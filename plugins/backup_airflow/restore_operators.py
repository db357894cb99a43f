"""Airflow adapters for restores: the scratch-restore operator, the cleanup operators, the
Kubernetes scratch back end and the Kubernetes side of the replace procedure.

What a restore does and how it is verified is :mod:`backupkit.restore.service`; this module
builds its parts from Airflow connections and configuration at run time:

* S3 through ``S3Hook`` (:func:`backup_airflow.hooks.s3_client`);
* the application's PostgreSQL (live row counts; replace mode's new database) from the
  source's ``conn_id`` as a :class:`~backupkit.restore.service.ServerTarget`;
* Kubernetes through the cncf-kubernetes provider's ``KubernetesHook`` (``core_v1_client``,
  ``apps_v1_client``); :func:`kube_clients` is the one place clients are made, so tests swap
  in a recording double at exactly the client boundary.

Kubernetes scratch databases: the operator creates a Secret (a password generated for the
run) and a Pod (``backupkit.restore.kubernetes.scratch_pod_manifest``: labelled with the run
id, resource limits, non-root, active deadline; the password reaches the container only by
``secretKeyRef``), waits until it is ready, and connects to the pod IP on 5432 with the
password in ``PGPASSWORD`` of the client process (never in arguments or logs). That needs
the worker to reach pod IPs -- true for workers running in the cluster (KubernetesExecutor,
Celery workers in the cluster); a worker outside the cluster would need a port-forward,
which is not implemented (and cannot be exercised without a cluster). Pod and Secret are
deleted in a ``finally``, a per-run teardown task deletes whatever carries the run's label,
and the orphan sweep deletes scratch objects older than ``restore.orphan_max_age_hours``.

Application smoke check (``restore.smoke_check``, Kubernetes only): after a passing restore
and verification, while the scratch pod still runs, :class:`SmokeApp` creates a Secret with
the scratch database's URL (password included) and a Pod of the configured application image
reading it by ``secretKeyRef`` (``backupkit.restore.kubernetes.smoke_app_pod_manifest``),
waits until it is ready, GETs each configured path on the pod IP (``app_smoke <path>``
results), and deletes pod and Secret in a ``finally``; both carry the run's labels with role
``smoke-app``, so the per-run teardown and the orphan sweep find them too. The local back end
skips it with a log line: no application image runs in the sandbox.
"""

from __future__ import annotations

import base64
import dataclasses
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from backup_airflow.common import VerificationFailed
from backup_airflow.hooks import backup_config, s3_client
from backupkit import clock
from backupkit.config import AppSwitch, Config, ConfigError, RestoreSettings, SmokeCheck, Source
from backupkit.drill import smoke_check as http_smoke_check
from backupkit.restore import kubernetes as k8s
from backupkit.restore.scratch import LocalScratch, ScratchDatabase, ScratchError
from backupkit.restore.service import (
    ServerTarget,
    cleanup_local_scratch,
    local_scratch_root,
    restore_test,
    run_dir_name,
    run_scratch_dir,
)
from backupkit.restore.service import RESTORED_DB
from backupkit.restore.verify_rows import exact_row_counts
from backupkit.model import CheckResult

if TYPE_CHECKING:
    from airflow.sdk import Context

SCRATCH_PORT = 5432
SCRATCH_USER = "postgres"


# -- clients ---------------------------------------------------------------------------------
def kube_clients(conn_id: str | None) -> tuple[Any, Any]:
    """(CoreV1Api, AppsV1Api) from the provider's hook (in-cluster, kube config or connection)."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    hook = KubernetesHook(conn_id=conn_id)
    return hook.core_v1_client, hook.apps_v1_client


def server_target(conn_id: str) -> ServerTarget:
    """The PostgreSQL server of an Airflow connection (password stays in the client's environment)."""
    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson or {}
    if not conn.host:
        raise AirflowFailException(f"connection {conn_id!r} has no host")
    return ServerTarget(host=conn.host, port=conn.port or 5432, user=conn.login or "postgres",
                        password=conn.password or None, sslmode=extra.get("sslmode"))


def live_counts_for(source: Source) -> Callable[[], dict[str, int]]:
    """Row counts of the live source database, read only if the backup has no manifest."""
    return lambda: exact_row_counts(server_target(source.conn_id or "postgres_default"), source.database or "postgres")


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status", None)


def _wait_pod_ready(core: Any, name: str, namespace: str, timeout: float, *, what: str, poll_interval: float,
                    sleep: Callable[[float], None], clock: Callable[[], float]) -> str:
    """The pod's IP once it runs and every container is ready; ScratchError if it ends or times out."""
    deadline = clock() + timeout
    while True:
        pod = core.read_namespaced_pod(name, namespace)
        status = pod.status
        phase = getattr(status, "phase", None)
        if phase in ("Failed", "Succeeded"):
            raise ScratchError(f"{what} {namespace}/{name} ended ({phase}): "
                               f"{getattr(status, 'reason', None) or ''} {getattr(status, 'message', None) or ''}")
        ready = [c for c in (getattr(status, "container_statuses", None) or [])]
        if phase == "Running" and ready and all(c.ready for c in ready) and getattr(status, "pod_ip", None):
            return status.pod_ip
        last = f"phase {phase}, containers ready {[bool(c.ready) for c in ready]}"
        if clock() >= deadline:
            raise ScratchError(f"{what} {namespace}/{name} not ready after {timeout:g}s ({last})")
        sleep(poll_interval)


def _delete_quietly(core: Any, namespace: str, pod: str | None, secret: str | None) -> list[str]:
    """Delete a pod and a secret (both attempted; absent is fine); the errors as text."""
    errors = []
    if pod:
        try:
            core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)
        except Exception as exc:  # noqa: BLE001
            if _status(exc) != 404:
                errors.append(f"pod {pod}: {exc}")
    if secret:
        try:
            core.delete_namespaced_secret(secret, namespace)
        except Exception as exc:  # noqa: BLE001
            if _status(exc) != 404:
                errors.append(f"secret {secret}: {exc}")
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
        self._pod_requested = self._secret_requested = False
        # Set by the operator while an application smoke check still needs the database:
        # restore_test's teardown is then skipped and the operator tears down afterwards.
        self.hold_teardown = False

    def manifests(self) -> tuple[dict, dict]:
        """(secret, pod) as they are sent to the API."""
        if self._password is None:
            self._password = k8s.generate_password()
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
        self._secret_requested = True
        self.core.create_namespaced_secret(self.namespace, secret)
        self._pod_requested = True
        self.core.create_namespaced_pod(self.namespace, pod)
        self.pod_ip = self._wait_ready()
        return self

    def _wait_ready(self) -> str:
        return _wait_pod_ready(self.core, self.pod_name, self.namespace, self.settings.ready_timeout_seconds,
                               what="scratch pod", poll_interval=self.poll_interval, sleep=self._sleep,
                               clock=self._clock)

    def teardown(self) -> None:
        """Delete the pod and the secret (both attempted; absent is fine; other errors raise)."""
        if self.hold_teardown:
            return
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
        return ["-h", self.pod_ip, "-p", str(self.port), "-U", SCRATCH_USER, "-d", database]

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{SCRATCH_USER}@{self.pod_ip}:{self.port}/{database}"

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
            self.core.create_namespaced_secret(self.namespace, secret)
            pod_requested = True
            self.core.create_namespaced_pod(self.namespace, pod)
            ip = _wait_pod_ready(self.core, self.pod_name, self.namespace, self.settings.ready_timeout_seconds,
                                 what="application pod", poll_interval=self.poll_interval, sleep=self._sleep,
                                 clock=self._clock)
            for path in self.smoke.paths:
                c = http_smoke_check(f"http://{ip}:{self.smoke.port}{path}", timeout=self.smoke.timeout_seconds,
                                     artifact=artifact)
                checks.append(dataclasses.replace(c, check=f"app_smoke {path}"))
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


def _add_checks(result: dict, checks: Sequence[CheckResult]) -> dict:
    """``result`` with ``checks`` appended and ``ok``/``problems`` recomputed."""
    result["checks"] = list(result["checks"]) + [c.to_dict() for c in checks]
    result["problems"] = list(result["problems"]) + [c.to_dict() for c in checks if not c.ok]
    result["ok"] = not result["problems"]
    return result


def make_scratch(config: Config, *, run_id: str, source_name: str, backup: str = "") -> ScratchDatabase:
    """The configured back end's scratch database for one restore of one run."""
    if config.restore.backend == "kubernetes":
        core, _ = kube_clients(config.restore.kubernetes_conn_id)
        return KubernetesScratch(core, config.restore, run_id=run_id, source=source_name, backup=backup)
    return LocalScratch(base_dir=run_scratch_dir(config, run_id))


# -- the operator ---------------------------------------------------------------------------------
class ScratchRestoreOperator(BaseOperator):
    """Restore one backup into a throwaway database (or directory), verify it, always tear down.

    ``backup`` is the backup's file name (the part after the source's S3 prefix); ``role``
    labels the result (``newest``, ``random_older``, ``verify_only``). The result dict is
    pushed as XCom ``result`` whatever the outcome; a failed verification then fails the
    task with :class:`VerificationFailed` (no retry: a retry cannot repair a backup), unless
    ``fail_on_problem=False``. A scratch that cannot be provisioned raises and is retried.
    """

    template_fields: Sequence[str] = ("source_name", "backup", "role", "jobs", "config_path")
    ui_color = "#ede7f6"

    def __init__(self, *, source_name: str, backup: str = "", role: str = "requested", jobs: int | str | None = None,
                 fail_on_problem: bool = True, prefer: str = "s3", config_path: str | None = None,
                 map_index_template: str | None = "{{ task.source_name }} ({{ task.role }})", **kwargs: Any) -> None:
        super().__init__(map_index_template=map_index_template, **kwargs)
        if prefer not in ("s3", "local"):
            raise ValueError(f"prefer must be 's3' or 'local', got {prefer!r}")
        self.source_name, self.backup, self.role, self.jobs = source_name, backup, role, jobs
        self.fail_on_problem, self.prefer, self.config_path = fail_on_problem, prefer, config_path

    def execute(self, context: Context) -> dict:
        config = backup_config(self.config_path)
        try:
            source = config.source(self.source_name)
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from exc
        jobs = int(self.jobs) if self.jobs not in (None, "", "None") else None
        if jobs is not None and jobs < 1:
            raise AirflowFailException(f"jobs must be >= 1, got {jobs}")
        run_id = context["run_id"]
        client = s3_client(config.aws_conn_id)
        scratch = make_scratch(config, run_id=run_id, source_name=source.name, backup=self.backup) \
            if source.is_database else None
        smoke = config.restore.smoke_check if source.is_database else None
        if smoke is not None and not isinstance(scratch, KubernetesScratch):
            self.log.info("restore.smoke_check is only supported on the Kubernetes back end (backend %r): skipped",
                          config.restore.backend)
            smoke = None
        self.log.info("restore test of %s %s (%s) into %r", source.name, self.backup or "-", self.role, scratch)
        if smoke is not None:
            scratch.hold_teardown = True  # the application needs the restored database; torn down below
        result = None
        try:
            result = restore_test(config, source.name, self.backup, scratch=scratch, s3_client=client,
                                  live_counts=live_counts_for(source) if source.is_database else None,
                                  role=self.role, prefer=self.prefer, work_dir=run_scratch_dir(config, run_id),
                                  jobs=jobs)
            if smoke is not None and result["ok"]:
                artifact = f"{source.name}/{self.backup}"
                self.log.info("application smoke check: %s on port %s, paths %s", smoke.image, smoke.port,
                              ", ".join(smoke.paths))
                result = _add_checks(result, SmokeApp(scratch, smoke).run(artifact))
            elif smoke is not None:
                self.log.info("application smoke check skipped: the restore test already failed")
        finally:
            if smoke is not None:
                scratch.hold_teardown = False
                try:
                    scratch.teardown()
                except Exception as exc:  # noqa: BLE001 - reported in the result when there is one
                    problem = CheckResult(f"{source.name}/{self.backup}", "teardown", False,
                                          f"scratch teardown failed, the orphan sweep must remove it: "
                                          f"{type(exc).__name__}: {exc}")
                    if result is not None:
                        result = _add_checks(result, [problem])
                    else:
                        self.log.error("%s", problem.line())
        for c in result["checks"]:
            (self.log.info if c["ok"] else self.log.warning)("%s %s: %s", "OK  " if c["ok"] else "FAIL", c["check"],
                                                             c["detail"])
        self.log.info("%s: %s in %ss, %s rows verified", result["location"], "PASS" if result["ok"] else "FAIL",
                      result.get("duration_seconds"), result.get("verified_rows"))
        context["ti"].xcom_push(key="result", value=result)
        if not result["ok"] and self.fail_on_problem:
            first = result["problems"][0]
            raise VerificationFailed(f"restore test of {first['artifact']} failed: {first['check']}: "
                                     f"{first['detail'][:500]}", result["problems"])
        return result


# -- cleanup -----------------------------------------------------------------------------------------
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
                 for o in (lister(namespace, label_selector=selector).items or [])]
        if run_id is not None:
            names = sorted(o["metadata"]["name"] for o in items if k8s.is_scratch(o))
        else:
            names = k8s.orphans(items, now=now, max_age=max_age)
        for name in names:
            try:
                deleter(name, namespace, **extra)
                report[kind].append(name)
            except Exception as exc:  # noqa: BLE001 - try the others, fail at the end
                if _status(exc) == 404:
                    continue
                report["failed"].append(f"{kind[:-1]} {name}: {exc}")
    return report


class ScratchCleanupOperator(BaseOperator):
    """Remove scratch databases left behind: this run's (``run_id``) or orphans older than
    ``max_age_hours`` (default ``restore.orphan_max_age_hours``). Kubernetes: pods and
    secrets by label; local: scratch servers under the scratch directory (stopped, removed).
    Fails after trying everything when a deletion failed (a leak must be seen)."""

    template_fields: Sequence[str] = ("run_id", "config_path")
    ui_color = "#fbe9e7"
    force_backend: str | None = None

    def __init__(self, *, run_id: str | None = None, max_age_hours: float | None = None,
                 config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_id, self.max_age_hours, self.config_path = run_id, max_age_hours, config_path

    def execute(self, context: Context) -> dict:
        config = backup_config(self.config_path)
        backend = self.force_backend or config.restore.backend
        run_id = self.run_id or None
        hours = self.max_age_hours if self.max_age_hours is not None else config.restore.orphan_max_age_hours
        now = clock.now()
        if backend == "kubernetes":
            core, _ = kube_clients(config.restore.kubernetes_conn_id)
            report = sweep_kubernetes(core, config.restore.namespace, now=now, run_id=run_id,
                                      max_age=None if run_id else timedelta(hours=hours))
        else:
            runs = local_scratch_root(config) / "runs"
            if run_id:
                removed = cleanup_local_scratch(runs, names=[run_dir_name(run_id)])
            else:
                removed = cleanup_local_scratch(runs, older_than_seconds=hours * 3600, now=now.timestamp())
            report = {"directories": removed, "failed": []}
        what = f"run {run_id}" if run_id else f"orphans older than {hours:g}h"
        self.log.info("%s scratch cleanup (%s): %s", backend, what, report)
        if report["failed"]:
            raise AirflowException(f"could not delete {len(report['failed'])} scratch object(s): "
                                   + "; ".join(report["failed"][:10]))
        return report


class KubernetesScratchCleanupOperator(ScratchCleanupOperator):
    """The orphan sweep of Kubernetes scratch pods and secrets, whatever ``restore.backend`` says."""

    force_backend = "kubernetes"


# -- the application side of replace mode -----------------------------------------------------------
class KubernetesAppPlatform:
    """:class:`backupkit.restore.service.AppPlatform` over AppsV1Api/CoreV1Api clients."""

    def __init__(self, core_v1: Any, apps_v1: Any, app: AppSwitch, *, poll_interval: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.core, self.apps, self.app = core_v1, apps_v1, app
        self.poll_interval, self._sleep, self._clock = poll_interval, sleep, clock

    def get_replicas(self, namespace: str, deployment: str) -> int:
        scale = self.apps.read_namespaced_deployment_scale(deployment, namespace)
        return int(scale.spec.replicas or 0)

    def scale(self, namespace: str, deployment: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(deployment, namespace, {"spec": {"replicas": int(replicas)}})

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
        deadline = self._clock() + timeout
        while True:
            ok, detail = self._settled(self.apps.read_namespaced_deployment(deployment, namespace), replicas)
            if ok:
                return
            if self._clock() >= deadline:
                raise TimeoutError(f"deployment {namespace}/{deployment}: {detail} after {timeout:g}s")
            self._sleep(self.poll_interval)

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
            secret = self.core.read_namespaced_secret(self.app.secret_name, namespace)
            data = secret.data or {}
            if self.app.secret_key not in data:
                raise ValueError(f"secret {namespace}/{self.app.secret_name} has no key {self.app.secret_key!r}")
            value = base64.b64decode(data[self.app.secret_key]).decode()
            return {f"secret/{self.app.secret_name}/{self.app.secret_key}": value}
        out = {}
        for d in deployments:
            found = self._env(self.apps.read_namespaced_deployment(d, namespace), d)
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
            self.core.patch_namespaced_secret(name, namespace,
                                              {"data": {part: base64.b64encode(value.encode()).decode()}})
        elif kind == "deployment":
            # Strategic merge patch: the env list merges by name, other variables stay.
            body = {"spec": {"template": {"spec": {"containers": [
                {"name": part, "env": [{"name": self.app.env_var, "value": value}]}]}}}}
            self.apps.patch_namespaced_deployment(name, namespace, body)
        else:
            raise ValueError(f"unknown setting target {target!r}")


def app_platform(config: Config, **kwargs: Any) -> Any:
    """The platform ``restore.app.platform`` names: Kubernetes (production) or local processes
    (the sandbox). A platform that cannot be set up is a configuration error: the task fails at
    once (``AirflowFailException``, no retries), before anything was changed."""
    app = config.restore.app
    if app.platform == "local":
        from backupkit.restore.local_platform import ControlError, LocalAppPlatform

        if app.control_dir is None or not app.control_dir.is_dir():
            raise AirflowFailException(f"restore.app.platform is 'local' but its control_dir {app.control_dir} does "
                                       "not exist: is the application's supervisor running (`make up`)?")
        try:
            return LocalAppPlatform(app, **kwargs)
        except ControlError as exc:
            raise AirflowFailException(f"restore.app: {exc}") from exc
    try:
        core, apps = kube_clients(config.restore.kubernetes_conn_id)
    except Exception as exc:  # noqa: BLE001 - kube config missing or invalid: retrying cannot fix it
        raise AirflowFailException(
            f"restore.app.platform is 'kubernetes' but no Kubernetes client can be made from connection "
            f"{config.restore.kubernetes_conn_id!r}: {type(exc).__name__}: {exc}. Configure the connection, or "
            "set restore.app.platform: local where the application runs on this machine") from exc
    return KubernetesAppPlatform(core, apps, app, **kwargs)


# -- context helpers ---------------------------------------------------------------------------------
def triggered_by(context: Mapping[str, Any]) -> str:
    """Who started this run: the UI/API user, else ``requested_by`` in the run's conf, else its type."""
    dr = context.get("dag_run")
    user = getattr(dr, "triggering_user_name", None)
    conf = getattr(dr, "conf", None) or {}
    if user:
        return str(user)
    if conf.get("requested_by"):
        return str(conf["requested_by"])
    return f"unknown ({getattr(dr, 'run_type', 'run')})"


__all__ = ["ScratchRestoreOperator", "ScratchCleanupOperator", "KubernetesScratchCleanupOperator",
           "KubernetesScratch", "SmokeApp", "KubernetesAppPlatform", "make_scratch", "kube_clients", "server_target",
           "live_counts_for", "sweep_kubernetes", "app_platform", "triggered_by"]
