"""The quarterly audit's report: verdict text for the task log, and the control-by-control document.

The controls themselves are evaluated by :mod:`backupkit.jobs.audit`.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Mapping, Sequence

from backupkit.jobs.audit import Control
from backupkit.reports.render import Doc


AREAS = ("coverage", "retention", "security", "recoverability")


def audit_summary(controls: Sequence[Control | Mapping[str, Any]]) -> dict:
    cs = [c if isinstance(c, Control) else Control.from_dict(c) for c in controls]
    failed = [c for c in cs if c.failed]
    return {"ok": not failed, "total": len(cs), "failed": [c.id for c in failed],
            "passed": sum(1 for c in cs if c.status == "pass"), "info": sum(1 for c in cs if c.status == "info"),
            "problems": [{"artifact": c.id, "check": "audit", "ok": False, "detail": c.summary} for c in failed]}


def verdict_text(controls: Sequence[Control | Mapping[str, Any]], *, missing: Sequence[str] = ()) -> str:
    """What the task log opens with: the verdict, then one line per control (failures first)."""
    cs = [c if isinstance(c, Control) else Control.from_dict(c) for c in controls]
    s = audit_summary(cs)
    verdict = "FAILED" if (s["failed"] or missing) else "PASSED"
    lines = [f"AUDIT {verdict}: {s['passed']} passed, {len(s['failed'])} failed, {s['info']} informational, "
             f"{len(missing)} not evaluated, of {s['total'] + len(missing)} controls", ""]
    order = {"fail": 0, "pass": 1, "info": 2}
    width = max([len(c.id) for c in cs] + [len("CONTROL")])
    lines.append(f"{'STATUS':<6}  {'CONTROL':<{width}}  SUMMARY")
    for c in sorted(cs, key=lambda c: (order.get(c.status, 3), AREAS.index(c.area) if c.area in AREAS else 99, c.id)):
        summary = " ".join(c.summary.split())
        lines.append(f"{c.status.upper():<6}  {c.id:<{width}}  {summary[:160]}{'...' if len(summary) > 160 else ''}")
    lines += [f"{'-':<6}  {m}" for m in missing]
    return "\n".join(lines)


def audit_doc(controls: Sequence[Control | Mapping[str, Any]], *, report_date: date, bucket: str,
              location: str | None = None, missing: Sequence[str] = ()) -> Doc:
    """The control-by-control report: summary table, then each control with its evidence."""
    cs = [c if isinstance(c, Control) else Control.from_dict(c) for c in controls]
    s = audit_summary(cs)
    doc = Doc(f"Quarterly backup audit {report_date.isoformat()}")
    doc.heading("Summary")
    if location:
        doc.para(f"Report location: {location}")
    verdict = "FAILED" if (s["failed"] or missing) else "PASSED"
    doc.para(f"Verdict: {verdict}: {s['passed']} passed, {len(s['failed'])} failed, {s['info']} informational, "
             f"of {s['total']} controls (bucket s3://{bucket}).")
    doc.bullets(f"NOT EVALUATED: {m}" for m in missing)
    doc.table(["Area", "Control", "Status", "Summary"],
              [[c.area, c.id, c.status.upper(), c.summary[:300]]
               for c in sorted(cs, key=lambda c: (AREAS.index(c.area) if c.area in AREAS else 99, c.id))])
    for area in AREAS:
        mine = [c for c in cs if c.area == area]
        if not mine:
            continue
        doc.heading(area.capitalize())
        for c in mine:
            doc.heading(f"{c.id}: {c.status.upper()}", 3)
            doc.para(f"{c.title}. Modelled on: {c.model}.")
            doc.para(c.summary)
            if c.headers:
                doc.table(c.headers, c.rows)
            doc.bullets(c.evidence)
    return doc


__all__ = ["AREAS", "audit_summary", "verdict_text", "audit_doc"]
