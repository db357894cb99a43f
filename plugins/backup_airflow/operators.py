"""Reusable operators for the runbook's verification checklist, one backup source each.

Each operator is a thin shell over a function of :mod:`backupkit.jobs.daily`: load the configuration
at run time, run the check, log the problems, return the result dicts (``artifact``, ``check``,
``ok``, ``detail``) as XCom. They are meant for dynamic task mapping::

    BackupIntegrityOperator.partial(task_id="check_integrity").expand(source_name=sources)

Finding a problem is a *result*, not an error: by default the task succeeds and a downstream
summary decides (so one run reports every problem of every source). ``fail_on_problem=True``
makes the task itself fail with :class:`~backup_airflow.common.VerificationFailed` (not retried)
after pushing the results under the XCom key ``results`` -- for DAGs that use one check as a gate.
Exceptions (S3 unreachable, unreadable configuration) propagate and are retried.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from backup_airflow.common import VerificationFailed
from backup_airflow.hooks import BackupHook
from backupkit.jobs import daily

if TYPE_CHECKING:
    from airflow.sdk import Context


class _BackupCheckOperator(BaseOperator):
    """Shared shell: config at run time, one check, logged problems, results as XCom."""

    template_fields: Sequence[str] = ("source_name", "config_path")
    ui_color = "#e8f4ea"
    check_name = "check"

    def __init__(self, *, source_name: str, config_path: str | None = None, fail_on_problem: bool = False,
                 map_index_template: str | None = "{{ task.source_name }}", **kwargs: Any) -> None:
        # The map index shows the source name in the UI ("check_integrity [trixtech-db]").
        super().__init__(map_index_template=map_index_template, **kwargs)
        self.source_name = source_name
        self.config_path = config_path
        self.fail_on_problem = fail_on_problem

    def hook(self) -> BackupHook:
        return BackupHook(self.config_path)

    def run_check(self, hook: BackupHook, context: Context) -> list[dict]:
        raise NotImplementedError

    def execute(self, context: Context) -> list[dict]:
        hook = self.hook()
        hook.check_source(self.source_name)
        results = self.run_check(hook, context)
        problems = [r for r in results if not r["ok"]]
        for r in results:
            if not r["ok"]:
                self.log.warning("FAIL %s: %s: %s", r["artifact"], r["check"], r["detail"])
        self.log.info("%s of %s: %d results, %d problems", self.check_name, self.source_name, len(results),
                      len(problems))
        if problems and self.fail_on_problem:
            context["ti"].xcom_push(key="results", value=results)
            raise VerificationFailed(
                f"{self.check_name} of {self.source_name}: {len(problems)} problem(s), first: "
                f"{problems[0]['artifact']}: {problems[0]['check']}: {problems[0]['detail']}", problems)
        return results


class BackupFreshnessOperator(_BackupCheckOperator):
    """A backup exists, is younger than ``max_age_hours``, has a plausible size, no night is missing.

    Reads directory listings only (the runbook's ``ls``/``du``/age check); cheap enough to run first.
    """

    check_name = "freshness"

    def run_check(self, hook: BackupHook, context: Context) -> list[dict]:
        return daily.check_presence(hook.config, self.source_name)


class BackupIntegrityOperator(_BackupCheckOperator):
    """Full reads: SHA-256 against the sidecar, every data block of dumps (``pg_restore`` to
    /dev/null), gzip/tar to the end -- for new backups plus the configured rolling share of older ones."""

    check_name = "integrity"
    ui_color = "#fdf3e1"

    def run_check(self, hook: BackupHook, context: Context) -> list[dict]:
        return daily.check_integrity(hook.config, self.source_name)


class S3BackupCopyCheckOperator(_BackupCheckOperator):
    """Every local backup has its copy in the bucket: present, same size, same SHA-256 (from S3's
    stored checksum; nothing is downloaded when S3 has one)."""

    check_name = "cloud copies"
    ui_color = "#e6eef9"
    template_fields: Sequence[str] = (*_BackupCheckOperator.template_fields, "aws_conn_id")

    def __init__(self, *, aws_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id  # None: the bucket's aws_conn_id from the configuration

    def hook(self) -> BackupHook:
        return BackupHook(self.config_path, self.aws_conn_id)

    def run_check(self, hook: BackupHook, context: Context) -> list[dict]:
        return daily.check_cloud_copies(hook.config, self.source_name, hook.bucket)


def collect_results(ti: Any, source_names: Sequence[str], mapped_task_ids: Iterable[str],
                    task_ids: Iterable[str] = ()) -> list[dict]:
    """All result dicts of the check tasks of this run, for a summary task downstream of them.

    ``mapped_task_ids`` were expanded over ``source_names`` (map index i checks source i) and are
    pulled per map index, so an instance that left no results (failed, upstream failed) becomes
    a problem naming its source and task instead of silently shrinking the list. ``task_ids``
    are unmapped checks (e.g. the backup logs), reported the same way when they left nothing.
    """
    results: list[dict] = []
    indexes = list(range(len(source_names)))
    for task_id in mapped_task_ids:
        values = ti.xcom_pull(task_ids=task_id, map_indexes=indexes, default=None) if indexes else []
        for name, value in zip(source_names, values, strict=True):
            results.extend(_unfinished(name, task_id) if value is None else value)
    for task_id in task_ids:
        value = ti.xcom_pull(task_ids=task_id, default=None)
        results.extend(_unfinished(task_id, task_id) if value is None else value)
    return results


def _unfinished(artifact: str, task_id: str) -> list[dict]:
    """The problem that stands in for the results of a check task that left none."""
    return [{"artifact": artifact, "check": task_id, "ok": False,
             "detail": "task did not finish (failed or upstream failed): no results; see that task's log"}]


__all__ = ["BackupFreshnessOperator", "BackupIntegrityOperator", "S3BackupCopyCheckOperator", "collect_results"]
