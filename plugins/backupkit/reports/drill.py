"""The DR drill's report: verdict, RTO/RPO per scenario against targets, evidence, problems, checklists.

Rendering only: the results come from :mod:`backupkit.jobs.drill`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from backupkit.reports.render import Doc, bar_chart, human_seconds


EVALUATION_CHECKLIST = (
    "[ ] Assess the results against RTO/RPO (table above; a FAIL names the reason)",
    "[ ] Identify gaps and improvements (every problem and note below is a candidate)",
    "[ ] Update procedures and documentation (runbook, restore DAG docs, this configuration's targets)",
    "[ ] Report findings to stakeholders (this report's location is in the run's log and XCom)",
)
PLANNING_CHECKLIST = (
    "[ ] Define test scope and objectives (scenarios and targets: the `drill:` configuration block)",
    "[ ] Prepare test environment (scratch databases need the restore back end; smoke check URL set)",
    "[ ] Notify stakeholders and prepare communications (the drill date is fixed in the configuration)",
    "[ ] Assemble recovery team (the automated run needs nobody; the evaluation does)",
)


def drill_doc(results: Sequence[Mapping[str, Any]], plan: Mapping[str, Any], *, summary: Mapping[str, Any],
              report_date: date, location: str) -> Doc:
    """The drill report: verdict (``summary``: :func:`backupkit.jobs.drill.summarize`), RTO/RPO per
    scenario against targets, evidence, problems, checklist."""
    doc = Doc(f"Disaster-recovery drill {report_date.isoformat()}")
    verdict = "PASSED: every scenario met its targets" if summary["ok"] else \
        f"FAILED: {', '.join(summary['failed']) or 'no scenario ran'}"
    doc.para(f"Verdict: {verdict}.")
    doc.para(f"Report: {location}. Drill started {plan.get('started_at', '-')}; scenarios run: "
             f"{', '.join(plan.get('scenarios') or [])}" +
             ("" if plan.get("complete") else " (a partial drill: not recorded as the annual drill)") + ".")
    if plan.get("targets_overridden"):
        doc.para(f"Targets overridden for this run: {plan['targets_overridden']}.")
    doc.heading("Results")
    doc.table(["Scenario", "Result", "RTO", "RTO target", "RPO", "RPO target", "Restored backups"],
              [[r.get("title", r["name"]), "PASS" if r.get("ok") else "FAIL", human_seconds(r.get("rto_seconds")),
                human_seconds(r.get("rto_target_seconds")), human_seconds(r.get("rpo_seconds")),
                human_seconds(r.get("rpo_target_seconds")),
                ", ".join(f"{x['backup']}" for x in r.get("restores") or [] if x.get("ok")) or "-"]
               for r in results])
    if results:
        doc.chart("rto", bar_chart("RTO per scenario (seconds to a verified restore)",
                                   [(r["name"], float(r.get("rto_seconds") or 0)) for r in results],
                                   fmt=human_seconds), "RTO per scenario")
        doc.chart("rpo", bar_chart("RPO per scenario (age of the newest restorable backup)",
                                   [(r["name"], float(r.get("rpo_seconds") or 0)) for r in results],
                                   fmt=human_seconds), "RPO per scenario")
    doc.heading("How to read RTO and RPO")
    doc.para("RTO is the time from a scenario's start until every source had a verified restore (row counts "
             "equal to the manifest, archive checksums, configured paths; for a failed deployment also the smoke "
             "check). RPO is the disaster time minus the timestamp of the newest backup that restored: the data "
             "a real disaster at that moment would lose. For ransomware the disaster time is the compromise time. "
             "A scenario passes with no problem and both values at or below their targets.")
    for r in results:
        doc.heading(f"{r.get('title', r['name'])}: {'PASS' if r.get('ok') else 'FAIL'}")
        doc.para(f"Proves: {r.get('proves', '')}")
        doc.para(f"RTO {human_seconds(r.get('rto_seconds'))} (target {human_seconds(r.get('rto_target_seconds'))}), "
                 f"RPO {human_seconds(r.get('rpo_seconds'))} (target {human_seconds(r.get('rpo_target_seconds'))}); "
                 f"disaster time {r.get('disaster_time', '-')}.")
        if r.get("restores"):
            doc.table(["Source", "Backup", "Attempt", "From", "Result", "Restore s", "Verified rows / files"],
                      [[x["source"], x["backup"], x.get("attempt"), x.get("location", "-") +
                        (f" ({x['version']})" if x.get("version") else ""), "ok" if x.get("ok") else "FAIL",
                        x.get("restore_seconds"), x.get("verified_rows", x.get("files"))]
                       for x in r["restores"]])
        doc.bullets(r.get("evidence") or [])
        if r.get("reasons"):
            doc.para("Problems:")
            doc.bullets(r["reasons"])
        if r.get("notes"):
            doc.para("Notes:")
            doc.bullets(r["notes"])
    doc.heading("Evaluation phase (runbook)")
    doc.bullets(EVALUATION_CHECKLIST)
    doc.heading("Before the next drill: planning phase (runbook, 2 weeks prior)")
    doc.bullets(PLANNING_CHECKLIST)
    return doc


__all__ = ["drill_doc", "EVALUATION_CHECKLIST", "PLANNING_CHECKLIST"]
