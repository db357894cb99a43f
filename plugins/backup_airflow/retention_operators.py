"""Retention sweeps in Airflow: one operator per source, and the run-level decisions around it.

:class:`RetentionSweepOperator` is a thin shell over :func:`backupkit.retention.sweep.sweep_source`
(configuration, S3 client and verification state resolved at run time), meant for mapping::

    RetentionSweepOperator.partial(task_id="sweep", dry_run=True).expand(source_name=sources)

It returns the sweep report (``SweepReport.to_dict(names=False)``: counts, bytes, rules, no
name lists, so it stays small in XCom; the names are in the task log and the audit log). A
sweep refused by a guard rail, or one that could not do everything, pushes that report under
the XCom key ``report`` and fails the task without retries (:class:`RetentionFailed`): a
refusal needs a person, and a partial failure is finished by the next run from the audit log.
Anything else (S3 unreachable before the sweep started) propagates and is retried; sweeps are
idempotent.

The helpers below are what the DAG decides once per run (:func:`resolve_dry_run`,
:func:`select_sources`); how it summarises the mapped sweeps (run table, alert lines, gauges)
is core code in :mod:`backupkit.jobs.retention`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from backup_airflow.common import triggered_by
from backup_airflow.hooks import BackupHook
from backupkit.config import Config
from backupkit.jobs.retention import (  # re-exported: the DAG and its tests import them from here
    DELETED,
    FREED,
    HELD,
    LAST_RUN,
    REFUSED,
    MetricValuesStore,
    failure_message,
    human_bytes,
    merge_metric_values,
    retention_metrics,
    summarize_sweeps,
    sweep_problems,
    sweep_status,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from backupkit.retention.sweep import SweepReport

REPORT_KEY = "report"  # XCom key of the report of a refused or failed sweep
ASSET_TRIGGERED = "asset_triggered"
LOGGED_NAMES = 200  # deleted / would-delete names written to the task log per sweep

class RetentionFailed(AirflowFailException):
    """A sweep was refused or incomplete: fail without retry; ``problems`` go into the alert."""

    def __init__(self, message: str, problems: Iterable[Mapping[str, Any]] = ()):
        super().__init__(message)
        self.problems = [dict(p) for p in problems]


# -- run-level decisions ------------------------------------------------------------------
def resolve_dry_run(run_type: Any, requested: Any) -> bool:
    """Whether this run only shows what it would delete.

    Runs the scheduler creates from the daily verification's asset event apply the policy:
    that is the automation, and such runs carry only default params. Every other run (manual,
    triggered by another DAG, materialised) follows the ``dry_run`` param, whose default is
    true, so nothing is deleted by hand unless someone unticks the box. A missing param means
    a dry run; a value that is not a boolean fails rather than being guessed at.
    """
    kind = str(getattr(run_type, "value", run_type))
    if kind == ASSET_TRIGGERED:
        return False
    if requested is None:
        return True
    if not isinstance(requested, bool):
        raise AirflowFailException(f"param dry_run must be true or false, got {requested!r}")
    return requested


def select_sources(config: Config, requested: Sequence[str] | None) -> list[str]:
    """The configured sources to sweep, in configuration order; empty or None means all.

    An unknown name fails the run before anything is swept (a typo must not silently
    sweep nothing or everything).
    """
    configured = [s.name for s in config.sources]
    if not requested:
        return configured
    if isinstance(requested, str) or not all(isinstance(n, str) for n in requested):
        raise AirflowFailException(f"param sources must be a list of source names, got {requested!r}")
    unknown = sorted({n for n in requested if n not in configured})
    if unknown:
        raise AirflowFailException(
            f"unknown source(s) in param sources: {', '.join(unknown)} (configured in {config.path}: "
            f"{', '.join(configured)})")
    wanted = set(requested)
    return [n for n in configured if n in wanted]


def _strict_bool(value: Any, what: str) -> bool:
    """A real boolean, or the text a Jinja template renders one to; anything else fails."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise AirflowFailException(f"{what} must be true or false, got {value!r} (refusing to guess whether "
                               f"to delete)")


# -- the operator ---------------------------------------------------------------------------
class RetentionSweepOperator(BaseOperator):
    """Sweep one source's local directory and S3 prefix with its retention policy.

    ``dry_run`` (default True: deleting must be asked for) may be a template or an XComArg
    that resolves to a boolean; a value that is not clearly true or false fails the task.
    ``aws_conn_id`` None uses the bucket's connection from the configuration.
    """

    template_fields: Sequence[str] = ("source_name", "dry_run", "config_path", "aws_conn_id")
    ui_color = "#fbe9e7"

    def __init__(self, *, source_name: str, dry_run: bool | str = True, config_path: str | None = None,
                 aws_conn_id: str | None = None, map_index_template: str | None = "{{ task.source_name }}",
                 **kwargs: Any) -> None:
        # The map index shows the source in the UI ("sweep [trixtech-db]").
        super().__init__(map_index_template=map_index_template, **kwargs)
        self.source_name = source_name
        self.dry_run = dry_run
        self.config_path = config_path
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Context) -> dict:
        from backupkit.retention.audit import AuditLog
        from backupkit.retention.sweep import SweepError, sweep_source

        dry_run = _strict_bool(self.dry_run, "dry_run")
        hook = BackupHook(self.config_path, self.aws_conn_id)
        hook.check_source(self.source_name)
        config, store = hook.config, hook.bucket
        self.log.info("%s retention sweep of %s (run %s)", "DRY RUN:" if dry_run else "APPLYING:",
                      self.source_name, context["run_id"])
        with _verification_state(config, dry_run) as state:
            try:
                report = sweep_source(config, self.source_name, bucket=store, state=state, dry_run=dry_run,
                                      run_id=context["run_id"], audit=AuditLog(config.state_dir),
                                      triggered_by=triggered_by(context))
            except SweepError as exc:
                if exc.report is None:
                    raise
                self._log_report(exc.report)
                result = exc.report.to_dict(names=False)
                context["ti"].xcom_push(key=REPORT_KEY, value=result)
                raise RetentionFailed(failure_message(result), sweep_problems(result)) from exc
        self._log_report(report)
        return report.to_dict(names=False)

    def _log_report(self, report: SweepReport) -> None:
        """Counts, then the names (deleted or would be deleted, held, protected) with reasons."""
        plan = report.plan
        verb = "would delete" if report.dry_run or report.refused else "deleted"
        names = report.would_delete if report.dry_run or report.refused else report.deleted
        self.log.info("%s: %d backups, kept %d, held %d, %s %d (%s); kept by rule: %s", report.source, report.total,
                      len(report.kept), len(report.held), verb, len(names),
                      human_bytes(report.bytes_to_free if report.dry_run or report.refused else report.bytes_freed),
                      ", ".join(f"{k}={v}" for k, v in report.by_rule.items()) or "-")
        for name in names[:LOGGED_NAMES]:
            reasons = ""
            if plan is not None:
                try:
                    reasons = "; ".join(plan.decision(name).reasons)
                except KeyError:
                    reasons = "finishing an interrupted deletion"
            self.log.info("  %s %s: %s", verb, name, reasons)
        if len(names) > LOGGED_NAMES:
            self.log.info("  ... and %d more (every deletion is in the audit log %s)", len(names) - LOGGED_NAMES,
                          report.audit_log or "(dry run: none written)")
        for h in report.held:
            self.log.info("  held %s: %s", h["name"], h["reason"])
        for p in report.protected:
            self.log.info("  kept %s: %s", p["name"], p["reason"])
        for lk in report.locks:
            self.log.info("  %s %s: %s until %s", "would lock" if report.dry_run else "locked", lk["key"], lk["mode"],
                          lk["until"])
        for w in report.warnings:
            self.log.warning("%s", w)
        for v in report.violations:
            self.log.error("REFUSED (nothing deleted): %s", v)
        for e in report.errors:
            self.log.error("error: %s: %s%s", e.get("key") or e.get("artifact") or report.source,
                           f"{e['code']}: " if e.get("code") else "", e["message"])
        if report.audit_mirror:
            self.log.info("audit: %s and %s", report.audit_log, report.audit_mirror)


@contextmanager
def _verification_state(config: Config, dry_run: bool) -> Iterator[Any]:
    """The daily verification's state store; a dry run with no store yet gets a scratch one.

    A dry run must create nothing (the CLI behaves the same): without a store every backup is
    unverified, so the dry run shows that nothing would be deleted yet.
    """
    import tempfile

    from backupkit.state import VerificationState

    if dry_run and not config.state.verification_db.is_file():
        with tempfile.TemporaryDirectory(prefix="retention-dry-run-") as scratch, VerificationState(scratch) as st:
            yield st
        return
    with VerificationState(config.state_dir) as st:
        yield st


def pull_reports(ti: Any, task_id: str, source_names: Sequence[str]) -> list[dict | None]:
    """The report of each mapped sweep: its return value, else what a failing sweep pushed."""
    if not source_names:
        return []
    indexes = list(range(len(source_names)))
    done = ti.xcom_pull(task_ids=task_id, map_indexes=indexes, default=None)
    failed = ti.xcom_pull(task_ids=task_id, key=REPORT_KEY, map_indexes=indexes, default=None)
    return [d if d is not None else f for d, f in zip(done, failed, strict=True)]


__all__ = ["RetentionSweepOperator", "RetentionFailed", "resolve_dry_run", "select_sources", "summarize_sweeps",
           "merge_metric_values", "retention_metrics", "MetricValuesStore", "pull_reports", "failure_message",
           "sweep_problems", "sweep_status", "human_bytes", "REPORT_KEY", "LAST_RUN", "DELETED", "FREED", "HELD",
           "REFUSED"]
