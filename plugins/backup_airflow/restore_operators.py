"""Airflow adapters for restores: the scratch-restore operator, the cleanup operators, and the parts
(connections, Kubernetes clients, the application platform) the restore DAGs hand to the core.

What a restore does and how it is verified is :mod:`backupkit.restore.pipeline`; the
Kubernetes runtime is :mod:`backupkit.restore.kubernetes.runtime`. This module builds their
parts from Airflow connections and configuration at run time:

* S3 through ``S3Hook`` (:func:`backup_airflow.hooks.bucket`);
* the application's PostgreSQL (live row counts; replace mode's new database) from the
  source's ``conn_id`` as a :class:`~backupkit.restore.scratch.ServerTarget`;
* Kubernetes through the cncf-kubernetes provider's ``KubernetesHook`` (``core_v1_client``,
  ``apps_v1_client``); :func:`kube_clients` is the one place clients are made, so tests swap
  in a recording double at exactly the client boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.sdk.log import mask_secret

from backup_airflow.common import VerificationFailed, triggered_by
from backup_airflow.hooks import backup_config, bucket
from backupkit import clock, masking
from backupkit.config import Config, ConfigError, Source
from backupkit.model import CheckResult
from backupkit.restore.health import http_health_check
from backupkit.restore.journal import RestoreJournal
from backupkit.restore.kubernetes.runtime import KubernetesAppPlatform, KubernetesScratch, SmokeApp, sweep_kubernetes
from backupkit.restore.pipeline import add_checks, restore_test
from backupkit.restore.rollback import Retry, RollbackIncomplete, finish_unfinished, sagas
from backupkit.restore.scratch import (LocalScratch, ScratchDatabase, ServerTarget, cleanup_local_scratch,
                                       local_scratch_root, run_dir_name, run_scratch_dir)
from backupkit.restore.switch import SagaLog, SwitchFailed, plan_switch, switch_database
from backupkit.restore.verify_rows import exact_row_counts
from backupkit.storage.locks import Leases, LockBusy, SourceLock

masking.register_masker(mask_secret)  # every secret the core finds is masked in task logs and errors
RETRY = Retry()  # each rollback step: 5 attempts, 1 s doubling (tests make it instant)
LOCK_WAIT_SECONDS = 900.0  # another restore of the same source: wait this long, then refuse

if TYPE_CHECKING:
    from airflow.sdk import Context


# -- clients and targets ---------------------------------------------------------------------
def kube_clients(conn_id: str | None) -> tuple[Any, Any]:
    """(CoreV1Api, AppsV1Api) from the provider's hook (in-cluster, kube config or connection).

    One HTTP attempt per call: urllib3's default (3 retries of a read timeout on GET and DELETE)
    would hold a hung call four request timeouts long; ``runtime.call`` retries what is worth it
    (429 after Retry-After, 5xx), and nothing else."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.client import Configuration
    from urllib3.util.retry import Retry as HttpRetry

    configuration = Configuration()
    configuration.retries = HttpRetry(total=0, redirect=0, raise_on_status=False)
    hook = KubernetesHook(conn_id=conn_id, client_configuration=configuration)
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


def make_scratch(config: Config, *, run_id: str, source_name: str, backup: str = "") -> ScratchDatabase:
    """The configured back end's scratch database for one restore of one run; a back end that cannot
    be set up (no kube config, a scratch path too long) fails the task at once, without retries."""
    if config.restore.backend == "kubernetes":
        return KubernetesScratch(_core_client(config), config.restore, run_id=run_id, source=source_name,
                                 backup=backup)
    return LocalScratch(base_dir=scratch_dir(config, run_id))


def scratch_dir(config: Config, run_id: str):
    """:func:`~backupkit.restore.scratch.run_scratch_dir`, its configuration error made final."""
    try:
        return run_scratch_dir(config, run_id)
    except ValueError as exc:
        raise AirflowFailException(f"restore.scratch_dir: {exc}") from exc


def _core_client(config: Config) -> Any:
    try:
        return kube_clients(config.restore.kubernetes_conn_id)[0]
    except Exception as exc:  # noqa: BLE001 - kube config missing or invalid: retrying cannot fix it
        raise AirflowFailException(f"restore.backend is 'kubernetes' but no client can be made from connection "
                                   f"{config.restore.kubernetes_conn_id!r}: {type(exc).__name__}: {exc}") from exc


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


def health_checks(config: Config) -> list[Callable[[], None]]:
    app = config.restore.app
    return [http_health_check(app.health_url, timeout=app.rollout_timeout_seconds)] if app.health_url else []


# -- locks and leases ---------------------------------------------------------------------------
@contextlib.contextmanager
def restore_lock(config: Config, source: str, run_id: str, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """One restore that changes something per source at a time -- a new database beside the live one,
    the switch, a rollback, a file restore -- a second waits, then fails clearly (nothing was changed).
    Restore tests only read their backup: they hold a lease on it instead, and may run side by side."""
    try:
        with SourceLock(config.state_dir, source, "restore", owner=run_id, timeout=wait):
            yield
    except LockBusy as exc:
        raise AirflowException(str(exc)) from exc


def lease_backups(config: Config, run_id: str, backups: Iterable[tuple[str, str]], *, purpose: str,
                  hours: float) -> None:
    """Hold these ``(source, backup)`` from retention until the run releases them (or ``hours`` pass)."""
    leases = Leases(config.state_dir)
    for source, backup in backups:
        if backup:
            leases.take(source, backup, run_id=run_id, purpose=purpose, for_=timedelta(hours=hours))


def release_leases(config: Config, run_id: str) -> int:
    leases = Leases(config.state_dir)
    mine = [lease for lease in leases.active() if lease.run_id == run_id]
    for lease in mine:
        leases.release(lease.source, lease.backup, run_id=run_id)
    return len(mine)


# -- the replace saga ------------------------------------------------------------------------------
class SwitchDatabaseOperator(BaseOperator):
    """The approved switch of the replace saga (:func:`backupkit.restore.switch.switch_database`):
    journal first, scale down, switch, scale up, health check; rolls back here on any failure.

    :param request_task_id: the task whose XCom is the validated request (source, namespace, deployments, ...)
    :param restored_task_id: the task whose XCom names the restored, verified new database
    :param approval_task_id: the approval task (who approved goes into the journal)
    :param config_path: the configuration file (default ``$BACKUPKIT_CONFIG``)
    """

    template_fields: Sequence[str] = ("request_task_id", "restored_task_id", "approval_task_id", "config_path")
    ui_color = "#ffe0b2"

    def __init__(self, *, request_task_id: str, restored_task_id: str, approval_task_id: str,
                 config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request_task_id, self.restored_task_id = request_task_id, restored_task_id
        self.approval_task_id, self.config_path = approval_task_id, config_path

    def execute(self, context: Context) -> dict:
        config, ti = backup_config(self.config_path), context["ti"]
        request, restored = ti.xcom_pull(task_ids=self.request_task_id), ti.xcom_pull(task_ids=self.restored_task_id)
        approval = ti.xcom_pull(task_ids=self.approval_task_id) or {}
        with restore_lock(config, request["source"], context["run_id"]):
            return run_switch(config, request, restored["new_database"], context["run_id"],
                              approved_by=(approval.get("responded_by_user") or {}).get("name"))


def run_switch(config: Config, request: Mapping[str, Any], new_database: str, run_id: str, *,
               approved_by: str | None) -> dict:
    source = config.source(request["source"])
    platform = app_platform(config)
    try:
        plan = plan_switch(platform, namespace=request["namespace"], deployments=request["deployments"],
                           old_database=source.database, new_database=new_database)
    except ValueError as exc:  # the application's setting is not what the source says: nothing was changed
        raise AirflowFailException(f"switch refused before any change: {exc}") from exc
    log = SagaLog(RestoreJournal(config.state_dir), run_id, source.name, {
        "triggered_by": request["triggered_by"], "reason": request["reason"], "backup": request["backup"],
        "mode": "replace", "approved_by": approved_by})
    try:
        return switch_database(platform, plan, log=log, timeout=config.restore.app.rollout_timeout_seconds,
                               health_checks=health_checks(config), retry=RETRY)
    except SwitchFailed as exc:
        raise AirflowFailException(str(exc)) from exc


class FinishRollbackOperator(BaseOperator):
    """Finish any replace saga the restore journal shows unfinished, whatever stopped it (a timeout, a
    kill, a failed rollback): settings back first, replicas only on restored settings, each step retried.

    Runs with trigger rule ``all_done`` after the switch (``scope="this_run"``) and first thing in every
    run (``scope="earlier_runs"``). Fails naming exactly the state left when it cannot finish.

    :param scope: ``this_run`` (the saga of this run) or ``earlier_runs`` (every other run's)
    :param config_path: the configuration file (default ``$BACKUPKIT_CONFIG``)
    """

    template_fields: Sequence[str] = ("scope", "config_path")
    ui_color = "#ffcdd2"

    def __init__(self, *, scope: str, config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if scope not in ("this_run", "earlier_runs"):
            raise ValueError(f"scope must be 'this_run' or 'earlier_runs', got {scope!r}")
        self.scope, self.config_path = scope, config_path

    def execute(self, context: Context) -> list[dict]:
        config, run_id = backup_config(self.config_path), context["run_id"]
        runs = {"runs": [run_id]} if self.scope == "this_run" else {"skip_runs": [run_id]}
        try:
            done = finish_rollbacks(config, run_id, **runs)
        except RollbackIncomplete as exc:
            raise AirflowException(str(exc)) from exc
        for saga, outcome in done:
            self.log.warning("replace of %s by run %s: %s", saga.source, saga.run_id, outcome.summary)
        return [{"run_id": s.run_id, "source": s.source, "ok": o.ok, "state": o.state} for s, o in done]


def finish_rollbacks(config: Config, run_id: str, **runs: Any) -> list:
    """:func:`backupkit.restore.rollback.finish_unfinished` holding the restore lock of each source
    concerned (a switch process still alive holds it: the rollback waits for it to end)."""
    journal = RestoreJournal(config.state_dir)
    sources = {s.source for s in sagas(journal) if not s.finished}
    with contextlib.ExitStack() as locks:
        for source in sorted(sources):
            locks.enter_context(restore_lock(config, source, run_id, wait=LOCK_WAIT_SECONDS * 2))
        return finish_unfinished(journal, lambda: app_platform(config), by=run_id,
                                 timeout=config.restore.app.rollout_timeout_seconds,
                                 health_checks=health_checks(config), retry=RETRY, **runs)


# -- the restore test -------------------------------------------------------------------------
class _Scratches:
    """Scratch databases made for one restore test (lazily: a file set needs none); a Kubernetes one is
    kept for the application smoke check when ``restore.smoke_check`` is set, and torn down after it."""

    def __init__(self, config: Config, run_id: str, source: str, backup: str, log: Any):
        self.config, self.run_id, self.source, self.backup, self.log = config, run_id, source, backup, log
        self.made: list[ScratchDatabase] = []

    def new(self) -> ScratchDatabase:
        scratch = make_scratch(self.config, run_id=self.run_id, source_name=self.source, backup=self.backup)
        if self.config.restore.smoke_check is not None and isinstance(scratch, KubernetesScratch):
            scratch.hold_teardown = True  # the application needs the restored database; torn down after it
        self.made.append(scratch)
        return scratch

    def smoke(self, result: dict) -> dict:
        """The application smoke check against the still-running scratch pod, then its teardown."""
        pods = [s for s in self.made if isinstance(s, KubernetesScratch) and s.hold_teardown]
        if self.config.restore.smoke_check is not None and self.made and not pods:
            self.log.info("restore.smoke_check is only supported on the Kubernetes back end (backend %r): skipped",
                          self.config.restore.backend)
        for scratch in pods:
            if result["ok"]:
                result = add_checks(result, SmokeApp(scratch, self.config.restore.smoke_check)
                                    .run(f"{self.source}/{self.backup}"))
            else:
                self.log.info("application smoke check skipped: the restore test already failed")
        return add_checks(result, self.teardown())

    def teardown(self) -> list[CheckResult]:
        problems = []
        for scratch in self.made:
            if isinstance(scratch, KubernetesScratch) and scratch.hold_teardown:
                scratch.hold_teardown = False
                try:
                    scratch.teardown()
                except Exception as exc:  # noqa: BLE001 - a leaked copy of production data is a finding
                    problems.append(CheckResult(f"{self.source}/{self.backup}", "teardown", False,
                                                f"scratch teardown failed, the orphan sweep must remove it: "
                                                f"{type(exc).__name__}: {exc}"))
        return problems


class ScratchRestoreOperator(BaseOperator):
    """Restore one backup into a throwaway database (or directory), verify it, always tear down.

    The result dict is pushed as XCom ``result`` whatever the outcome; a failed verification
    then fails the task with :class:`VerificationFailed` (no retry: a retry cannot repair a
    backup), unless ``fail_on_problem``. A scratch that cannot be provisioned raises and is retried.

    :param source_name: the configured source
    :param backup: the backup's file name (the part after the source's S3 prefix)
    :param role: labels the result (``newest``, ``random_older``, ``verify_only``)
    :param jobs: pg_restore jobs (default: the source's ``restore.jobs``)
    :param fail_on_problem: fail the task when a check fails
    :param prefer: restore the ``s3`` copy (default) or the ``local`` one when both exist
    :param config_path: the configuration file (default ``$BACKUPKIT_CONFIG``)
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
        config, source, jobs = self._request()
        result = self._restore(config, source, jobs, context["run_id"])
        self._log(result)
        context["ti"].xcom_push(key="result", value=result)
        if not result["ok"] and self.fail_on_problem:
            first = result["problems"][0]
            raise VerificationFailed(f"restore test of {first['artifact']} failed: {first['check']}: "
                                     f"{first['detail'][:500]}", result["problems"])
        return result

    def _request(self) -> tuple[Config, Source, int | None]:
        config = backup_config(self.config_path)
        try:
            source = config.source(self.source_name)
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from exc
        jobs = int(self.jobs) if self.jobs not in (None, "", "None") else None
        if jobs is not None and jobs < 1:
            raise AirflowFailException(f"jobs must be >= 1, got {jobs}")
        return config, source, jobs

    def _restore(self, config: Config, source: Source, jobs: int | None, run_id: str) -> dict:
        scratches = _Scratches(config, run_id, source.name, self.backup, self.log)
        self.log.info("restore test of %s %s (%s)", source.name, self.backup or "-", self.role)
        try:
            result = restore_test(config, source.name, self.backup, new_database=scratches.new, bucket=bucket(config),
                                  live_counts=live_counts_for(source), role=self.role, prefer=self.prefer,
                                  work_dir=scratch_dir(config, run_id), jobs=jobs)
        except BaseException:
            for problem in scratches.teardown():
                self.log.error("%s", problem.line())
            raise
        return scratches.smoke(result)

    def _log(self, result: dict) -> None:
        for c in result["checks"]:
            (self.log.info if c["ok"] else self.log.warning)("%s %s: %s", "OK  " if c["ok"] else "FAIL", c["check"],
                                                             c["detail"])
        self.log.info("%s: %s in %ss, %s rows verified", result["location"], "PASS" if result["ok"] else "FAIL",
                      result.get("duration_seconds"), result.get("verified_rows"))


# -- cleanup -----------------------------------------------------------------------------------------
class ScratchCleanupOperator(BaseOperator):
    """Remove scratch databases left behind: this run's, or orphans of any run.

    Kubernetes: pods and secrets by label; local: scratch servers under the scratch directory
    (stopped, removed). Fails after trying everything when a deletion failed (a leak must be seen).

    :param run_id: remove this run's scratch objects, whatever their age
    :param max_age_hours: otherwise remove those older than this (default ``restore.orphan_max_age_hours``)
    :param config_path: the configuration file (default ``$BACKUPKIT_CONFIG``)
    """

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
        hours = self.max_age_hours if self.max_age_hours is not None else config.restore.orphan_max_age_hours
        report = self._sweep(config, backend, self.run_id or None, hours)
        what = f"run {self.run_id}" if self.run_id else f"orphans older than {hours:g}h"
        self.log.info("%s scratch cleanup (%s): %s", backend, what, report)
        if report["failed"]:
            raise AirflowException(f"could not delete {len(report['failed'])} scratch object(s): "
                                   + "; ".join(report["failed"][:10]))
        return report

    @staticmethod
    def _sweep(config: Config, backend: str, run_id: str | None, hours: float) -> dict:
        now = clock.now()
        if backend == "kubernetes":
            return sweep_kubernetes(_core_client(config), config.restore.namespace, now=now, run_id=run_id,
                                    max_age=None if run_id else timedelta(hours=hours))
        runs = local_scratch_root(config) / "runs"
        if run_id:
            removed = cleanup_local_scratch(runs, names=[run_dir_name(run_id)])
        else:
            removed = cleanup_local_scratch(runs, older_than_seconds=hours * 3600, now=now.timestamp())
        return {"directories": removed, "failed": []}


class KubernetesScratchCleanupOperator(ScratchCleanupOperator):
    """The orphan sweep of Kubernetes scratch pods and secrets, whatever ``restore.backend`` says."""

    force_backend = "kubernetes"


__all__ = ["ScratchRestoreOperator", "ScratchCleanupOperator", "KubernetesScratchCleanupOperator",
           "SwitchDatabaseOperator", "FinishRollbackOperator", "make_scratch", "kube_clients", "server_target",
           "live_counts_for", "app_platform", "health_checks", "scratch_dir", "restore_lock", "lease_backups", "release_leases",
           "run_switch", "finish_rollbacks", "triggered_by", "RETRY"]
