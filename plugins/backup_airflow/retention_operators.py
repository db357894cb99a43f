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
:func:`select_sources`) and how it summarises the mapped sweeps (:func:`summarize_sweeps`,
:func:`retention_metrics`); they are plain functions so both branches can be tested without a
scheduler.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from backup_airflow.hooks import backup_config, bucket
from backupkit.config import Config, ConfigError
from backupkit.metrics import MetricSet

if TYPE_CHECKING:
    from airflow.sdk import Context

    from backupkit.retention.sweep import SweepReport

REPORT_KEY = "report"  # XCom key of the report of a refused or failed sweep
ASSET_TRIGGERED = "asset_triggered"
LOGGED_NAMES = 200  # deleted / would-delete names written to the task log per sweep

# Metric names (Prometheus rules and dashboards refer to these).
LAST_RUN = "backup_retention_last_run_timestamp_seconds"
DELETED = "backup_retention_deleted_backups"
FREED = "backup_retention_freed_bytes"
HELD = "backup_retention_held_backups"
REFUSED = "backup_retention_refused"


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
        config = backup_config(self.config_path)
        try:
            config.source(self.source_name)
        except ConfigError as exc:  # fail now, naming the configured sources; no retry
            raise AirflowFailException(str(exc)) from exc
        store = bucket(config, self.aws_conn_id)
        self.log.info("%s retention sweep of %s (run %s)", "DRY RUN:" if dry_run else "APPLYING:",
                      self.source_name, context["run_id"])
        with _verification_state(config, dry_run) as state:
            try:
                report = sweep_source(config, self.source_name, bucket=store, state=state, dry_run=dry_run,
                                      run_id=context["run_id"], audit=AuditLog(config.state_dir))
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


# -- reports --------------------------------------------------------------------------------
def human_bytes(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def sweep_status(report: Mapping[str, Any] | None) -> str:
    if report is None:
        return "NO REPORT"
    if report.get("refused"):
        return "REFUSED"
    if report.get("errors"):
        return "FAILED"
    return "ok"


def sweep_problems(report: Mapping[str, Any]) -> list[dict]:
    """Alert lines (``artifact``, ``check``, ``detail``) for a refused or failed sweep."""
    source = report["source"]
    problems = [{"artifact": source, "check": "guard rail", "detail": f"refused, nothing deleted: {v}"}
                for v in report.get("violations", ())]
    for e in report.get("errors", ()):
        artifact = f"{source}/{e['artifact']}" if e.get("artifact") else source
        problems.append({"artifact": artifact, "check": "sweep",
                         "detail": f"{e['code']}: {e['message']}" if e.get("code") else e["message"]})
    return problems


def failure_message(report: Mapping[str, Any]) -> str:
    source = report["source"]
    if report.get("refused"):
        return (f"retention sweep of {source} refused by the guard rails, nothing deleted: "
                f"{'; '.join(report.get('violations', ()))}")
    errors = report.get("errors", ())
    counts = report.get("counts", {})
    first = errors[0]["message"] if errors else "unknown error"
    return (f"retention sweep of {source} incomplete: {len(errors)} error(s) ({counts.get('failed', 0)} backups "
            f"not deleted, {counts.get('not_attempted', 0)} not attempted; the next run finishes them); "
            f"first: {first}")


_COLUMNS = ("SOURCE", "STATUS", "TOTAL", "KEPT", "HELD", "DELETED", "FREED", "WOULD DELETE", "TO FREE")


def summarize_sweeps(source_names: Sequence[str], reports: Sequence[Mapping[str, Any] | None],
                     dry_run: bool) -> dict:
    """One view of the run's sweeps (map index i swept source i): a table and a verdict.

    ``reports[i]`` None means that sweep left no report (it crashed or never ran): a
    problem, never a silent gap.
    """
    rows, sources, problems = [], {}, []
    for name, rep in zip(source_names, reports, strict=True):
        status = sweep_status(rep)
        if rep is None:
            problems.append({"artifact": name, "check": "sweep",
                             "detail": "task did not finish (failed or upstream failed): no report; see its log"})
            rows.append((name, status, *("-",) * (len(_COLUMNS) - 2)))
            sources[name] = {"status": status}
            continue
        c = rep.get("counts", {})
        if status != "ok":
            problems += sweep_problems(rep)
        sources[name] = {"status": status, "counts": dict(c), "bytes_freed": rep.get("bytes_freed", 0),
                         "bytes_to_free": rep.get("bytes_to_free", 0), "by_rule": dict(rep.get("by_rule", {})),
                         "violations": list(rep.get("violations", ())), "errors": len(rep.get("errors", ())),
                         "audit_log": rep.get("audit_log", ""), "audit_mirror": rep.get("audit_mirror", "")}
        # Deleted / freed are what happened; would-delete / to-free what a dry run or a refused
        # plan listed (a refused plan deleted nothing).
        showing = rep.get("dry_run") or rep.get("refused")
        rows.append((name, status, str(c.get("total", 0)), str(c.get("kept", 0)), str(c.get("held", 0)),
                     str(c.get("deleted", 0)), human_bytes(rep.get("bytes_freed", 0)),
                     str(c.get("would_delete", 0)) if showing else "-",
                     human_bytes(rep.get("bytes_to_free", 0)) if showing else "-"))
    widths = [max(len(str(r[i])) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    lines = ["  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
             for r in [_COLUMNS, *rows]]
    lines.append("")
    lines.append("kept by rule (a backup kept by several rules counts for each):")
    for name in source_names:
        by_rule = sources[name].get("by_rule")
        if by_rule is not None:
            lines.append(f"  {name}: " + (", ".join(f"{k}={v}" for k, v in by_rule.items()) or "-"))
    if problems:
        lines.append("")
        lines.append("problems:")
        lines += [f"  {p['artifact']}  {p['check']}  {p['detail']}" for p in problems]
    mode = "DRY RUN (nothing deleted)" if dry_run else "applied"
    table = f"retention {mode}, {len(source_names)} source(s)\n" + "\n".join(lines)
    return {"ok": not problems, "dry_run": dry_run, "sources": sources, "problems": problems, "table": table}


def merge_metric_values(previous: Mapping[str, Mapping[str, float]], source_names: Sequence[str],
                        reports: Sequence[Mapping[str, Any] | None], *, now: float,
                        configured: Iterable[str]) -> dict[str, dict[str, float]]:
    """Per-source gauge values after this run: this run's sweeps over the previous values.

    A Pushgateway PUT (and the textfile) replaces every sample of the job, so a run that swept
    only some sources, or whose sweep of a source crashed without a report, carries the other
    sources' last values forward; their unchanged ``last_run`` is what shows a source that is
    no longer swept. Sources no longer configured are dropped.
    """
    values = {name: dict(v) for name, v in previous.items()}
    for name, rep in zip(source_names, reports, strict=True):
        if rep is None:
            continue
        c = rep.get("counts", {})
        values[name] = {"last_run": now, "deleted": c.get("deleted", 0), "freed": rep.get("bytes_freed", 0),
                        "held": c.get("held", 0), "refused": 1 if rep.get("refused") else 0}
    keep = set(configured)
    return {name: v for name, v in sorted(values.items()) if name in keep}


def retention_metrics(values: Mapping[str, Mapping[str, float]]) -> MetricSet:
    """The retention gauges, one sample per source and gauge (from :func:`merge_metric_values`)."""
    m = MetricSet()
    gauges = {
        "last_run": m.gauge(LAST_RUN, "Unix time of the last retention sweep of the source that produced a "
                                      "report (done, refused or incomplete)", ["source"]),
        "deleted": m.gauge(DELETED, "Backups deleted by the last retention sweep of the source", ["source"]),
        "freed": m.gauge(FREED, "Bytes freed (local and S3) by the last retention sweep of the source",
                         ["source"]),
        "held": m.gauge(HELD, "Backups the policy would delete but that are held (object lock, legal hold, "
                              "hold list) in the last retention sweep of the source", ["source"]),
        "refused": m.gauge(REFUSED, "1 if the guard rails refused the last retention sweep of the source "
                                    "(nothing deleted), else 0", ["source"]),
    }
    for name, v in values.items():
        for field, gauge in gauges.items():
            if field in v:
                gauge.labels(source=name).set(v[field])
    return m


class MetricValuesStore:
    """The last gauge values per source, in a JSON file next to the textfile (written atomically)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:  # a damaged file must not stop the export; this run rewrites it
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): {f: float(x) for f, x in v.items() if isinstance(x, (int, float))}
                for k, v in data.items() if isinstance(v, dict)}

    def save(self, values: Mapping[str, Mapping[str, float]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(values, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def pull_reports(ti: Any, task_id: str, source_names: Sequence[str]) -> list[dict | None]:
    """The report of each mapped sweep: its return value, else what a failing sweep pushed."""
    if not source_names:
        return []
    indexes = list(range(len(source_names)))
    done = ti.xcom_pull(task_ids=task_id, map_indexes=indexes, default=None)
    failed = ti.xcom_pull(task_ids=task_id, key=REPORT_KEY, map_indexes=indexes, default=None)
    return [d if d is not None else f for d, f in zip(done, failed, strict=True)]


__all__ = ["RetentionSweepOperator", "RetentionFailed", "resolve_dry_run", "select_sources", "summarize_sweeps",
           "merge_metric_values", "retention_metrics", "MetricValuesStore", "pull_reports", "failure_message", "sweep_problems", "human_bytes", "REPORT_KEY"]
