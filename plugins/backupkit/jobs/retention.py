"""The retention job around the sweeps: the run's table, the alert lines, the gauges.

What the ``backup_retention_cleanup`` DAG does once the mapped sweeps
(:func:`backupkit.retention.sweep.sweep_source`, one per source) have returned their
reports (``SweepReport.to_dict(names=False)``): one table and verdict for the run
(:func:`summarize_sweeps`), the problems an alert lists (:func:`sweep_problems`), and the
Prometheus gauges per source (:func:`merge_metric_values`, :func:`retention_metrics`,
kept between runs by :class:`MetricValuesStore`). Plain functions over plain dicts, so the
Airflow adapter stays a few lines and everything here is tested without a scheduler.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from backupkit.metrics import MetricSet

from backupkit.metric_names import (  # the one home of metric names and help texts
    RETENTION_DELETED as DELETED,
    RETENTION_FREED as FREED,
    RETENTION_HELD as HELD,
    RETENTION_LAST_RUN as LAST_RUN,
    RETENTION_REFUSED as REFUSED,
    help_of,
)



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
    gauges = {field: m.gauge(name, help_of(name), ["source"])
              for field, name in (("last_run", LAST_RUN), ("deleted", DELETED), ("freed", FREED), ("held", HELD),
                                  ("refused", REFUSED))}
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



__all__ = ["LAST_RUN", "DELETED", "FREED", "HELD", "REFUSED", "human_bytes", "sweep_status", "sweep_problems",
           "failure_message", "summarize_sweeps", "merge_metric_values", "retention_metrics", "MetricValuesStore"]
