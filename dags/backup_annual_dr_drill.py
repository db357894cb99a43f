"""Annual disaster-recovery drill: the runbook's *Annual Disaster Recovery Test*, each scenario measured.

Parse time reads only the configuration file (the drill date becomes the schedule); the
scenarios themselves are :mod:`backupkit.jobs.drill`, one task each.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta, timezone

from airflow.sdk import CronTriggerTimetable, Param, TaskGroup, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from backup_airflow.common import VerificationFailed, dag_tags, default_args, triggered_by
from backup_airflow.hooks import backup_config, bucket
from backup_airflow.restore_operators import ScratchCleanupOperator, make_scratch
from backupkit import clock
from backupkit.jobs import drill
from backupkit.metrics import LastSuccessStore
from backupkit.results import record_dr_drill
from backupkit.reports.drill import drill_doc
from backupkit.reports.render import publish_files, report_prefix
from backupkit.restore.scratch import run_scratch_dir

log = logging.getLogger(__name__)

CONFIG = backup_config()  # parse time: the YAML only (drill date, alerting channels)
DAG_ID = "backup_annual_dr_drill"
METRICS_JOB = DAG_ID
SCHEDULE = CONFIG.drill.cron  # "0 9 <day> <month> *" from drill.date (MM-DD)
GROUP = "scenarios"

DOC_MD = f"""
# Annual disaster-recovery drill (runbook: *Annual Disaster Recovery Test*)

Runs **once a year on `drill.date` ({CONFIG.drill.date}, MM-DD) at 09:00 UTC** (cron `{SCHEDULE}`, no
catch-up), and on demand from the trigger form. Every scenario is a real recovery into throwaway
targets (scratch PostgreSQL per `restore.backend`, scratch directories), timed and judged against
`drill.rto_target_minutes` and `drill.rpo_target_hours`.

| Task | Scenario | What it proves |
|---|---|---|
| `plan_drill` | | which scenarios run and the targets (form values override the configuration); refuses a compromise time in the future |
| `scenarios.database_corruption` | Database corruption | the newest backup of every database (from disk, else S3) restores into an empty server and holds exactly the rows of its manifest |
| `scenarios.datacenter_loss` | Loss of the data centre | every source is recovered from **S3 alone**: list the prefix, newest by the time in its name, download, SHA-256 against the sidecar object and S3's stored checksum, restore / safe extraction, rows against the manifest object; nothing local is read |
| `scenarios.ransomware` | Ransomware | the newest backup taken **before the compromise time** restores from each object's original version (an attacker can only add versions); the newest backups are under object-lock retention; a probe copy of a verified backup under retention refuses `DeleteObject` of its version (`AccessDenied`) and an overwrite only adds a version while the locked one reads back with the same SHA-256. Production objects are never deleted or overwritten |
| `scenarios.failed_deployment` | Failed deployment | the newest backups restore, then the application smoke check (`drill.smoke_check_url`, GET must answer 2xx) passes; without a URL: "skipped: no smoke check configured" (not a failure) |
| `teardown_scratch` (all_done) | | removes whatever this run's scratch databases left behind |
| `publish_report` (all_done) | | `report.md`, `report.html` (RTO/RPO charts) and `drill.json` to `<state_dir>/reports/dr-drill/<date>/` and `s3://<bucket>/reports/dr-drill/<date>/`; a complete drill is recorded in `<state_dir>/dr_drills.jsonl` for the quarterly audit; **fails the run** when a scenario failed or missed a target |
| `export_metrics` (all_done) | | `backup_dr_drill_status{{scenario}}`, `backup_dr_drill_rto_seconds{{scenario}}`, `backup_dr_drill_rpo_seconds{{scenario}}` (and their targets), `backup_dr_drill_last_success_timestamp_seconds` (kept across runs; only a complete drill that met every target moves it) |

## How to read RTO and RPO

* **RTO**: seconds from the scenario's start until every source has a *verified* restore (row counts
  equal to the manifest, archive checksums and paths; for a failed deployment, also the smoke check).
  A backup that fails is a problem, and the next older one is tried (as in a real disaster): the RTO
  then includes the failed attempt.
* **RPO**: the disaster time minus the timestamp (in its name) of the newest backup that restored, the
  worst over the sources. The disaster time is the scenario's start; for ransomware it is the
  compromise time (what was written after it is lost to the attack, not to the backup schedule).
* A scenario **passes** with no problem and both values at or below their targets. Any failure fails
  the run (failure callbacks alert).

## Runbook checklist

Planning phase (two weeks before `drill.date`):
- [ ] Define test scope and objectives: scenarios and targets in the `drill:` block of the configuration
- [ ] Prepare the test environment: restore back end able to start scratch databases; `drill.smoke_check_url` pointing at an application instance that uses restored data
- [ ] Notify stakeholders and prepare communications
- [ ] Assemble the recovery team for the evaluation (the automated run needs nobody)

Execution phase: this DAG (simulate, recover, verify, measure RTO and data loss).

Evaluation phase (after the run; the report lists everything):
- [ ] Assess the results against RTO/RPO
- [ ] Identify gaps and improvements (problems and notes of each scenario)
- [ ] Update procedures and documentation
- [ ] Report findings to stakeholders (report location: `publish_report` log and XCom `report_location`)

## Manual runs

Form fields: `scenarios` (a subset: a rehearsal, reported but **not recorded** as the annual drill),
`compromise_time` (ransomware; default `drill.compromise_time`, else the scenario's start),
`rto_target_minutes` / `rpo_target_hours` (override the targets; the report says so).

## When it fails

Open the report: each failed scenario lists its reasons. A restore or checksum failure names the
backup: run `backupctl verify` on it and take a fresh backup. "object lock" failures: enable object
lock with a default retention on the bucket (`aws s3api put-object-lock-configuration`). RTO missed:
compare the download and restore seconds per backup (bandwidth, `restore.jobs`). RPO missed: the
newest backup is older than the target (is the nightly job running?). A scenario task that failed
without a result (scratch database could not start, S3 unreachable) was retried; read its log.
"""


def _report_date(context) -> date:
    dr = context.get("dag_run")
    when = getattr(dr, "run_after", None) or context.get("logical_date") or clock.now()
    return when.date()


def collect(ti, plan: dict) -> list[dict]:
    """One result per planned scenario; a task that left none is a failed scenario."""
    results = []
    for name in plan["scenarios"]:
        value = ti.xcom_pull(task_ids=f"{GROUP}.{name}", default=None)
        results.append(value if value else drill.missing_result(
            name, plan, "the scenario's task did not finish (scratch database not provisioned, S3 unreachable, "
                        "crash): no result; see that task's log"))
    return results


def _scenario_task(name: str):
    @task(task_id=name, doc_md=f"**{drill.TITLES[name]}**: {drill.PROVES[name]}")
    def scenario(plan: dict, **context) -> dict:
        if name not in plan["scenarios"]:
            raise AirflowSkipException(f"{name} not selected for this run")
        config, run_id = backup_config(), context["run_id"]
        result = drill.run_scenario(
            name, config, plan=plan, bucket=bucket(config),
            scratch_factory=lambda: make_scratch(config, run_id=run_id, source_name=f"drill-{name}"),
            work_dir=run_scratch_dir(config, run_id))
        for r in result["restores"]:
            log.info("%s %s (attempt %s) from %s: %s", r["source"], r["backup"], r["attempt"],
                     r.get("location", "-"), "verified" if r["ok"] else "FAILED")
            for c in r["checks"]:
                (log.info if c["ok"] else log.warning)("    %s %s: %s", "OK  " if c["ok"] else "FAIL", c["check"],
                                                       c["detail"])
        for line in result["evidence"] + result["notes"]:
            log.info("%s", line)
        log.info("%s: %s; RTO %s s (target %s), RPO %s s (target %s)%s", name, result["status"].upper(),
                 result["rto_seconds"], result["rto_target_seconds"], result["rpo_seconds"],
                 result["rpo_target_seconds"], "".join(f"\n  - {r}" for r in result["reasons"]))
        return result

    return scenario


@dag(
    dag_id=DAG_ID,
    schedule=CronTriggerTimetable(SCHEDULE, timezone="UTC"),
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=24),
    default_args=default_args(CONFIG, execution_timeout=timedelta(hours=8)),
    tags=dag_tags("restore", "drill", "annual"),
    doc_md=DOC_MD,
    params={
        "scenarios": Param(list(drill.SCENARIOS), type="array",
                           items={"type": "string", "enum": list(drill.SCENARIOS)}, uniqueItems=True, minItems=1,
                           title="Scenarios",
                           description="Which scenarios to run. All four make the annual drill; a subset is a "
                                       "rehearsal (reported, not recorded for the audit)."),
        "compromise_time": Param(None, type=["null", "string"], format="date-time", title="Compromise time (UTC)",
                                 description="Ransomware scenario: restore the newest backup taken before this "
                                             "time, e.g. 2025-03-01T12:00:00Z (empty: drill.compromise_time, "
                                             "else the scenario's start)"),
        "rto_target_minutes": Param(None, type=["null", "number"], exclusiveMinimum=0, title="RTO target (minutes)",
                                    description="Override drill.rto_target_minutes for this run (empty: configured)"),
        "rpo_target_hours": Param(None, type=["null", "number"], exclusiveMinimum=0, title="RPO target (hours)",
                                  description="Override drill.rpo_target_hours for this run (empty: configured)"),
    },
)
def backup_annual_dr_drill():
    @task
    def plan_drill(**context) -> dict:
        """Scenarios and targets for this run; a compromise time in the future stops the run here."""
        config, p = backup_config(), context["params"]
        try:
            plan = drill.plan_drill(config, now=clock.now(), scenarios=p.get("scenarios"),
                                    compromise_time=p.get("compromise_time"),
                                    rto_target_minutes=p.get("rto_target_minutes"),
                                    rpo_target_hours=p.get("rpo_target_hours"))
        except drill.DrillError as exc:
            raise AirflowFailException(f"invalid drill request: {exc}") from exc
        log.info("drill plan: %s", json.dumps(plan, indent=1))
        return plan

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def publish_report(plan: dict | None, **context) -> dict:
        """Write the report whatever happened, record a complete drill for the audit, fail on any failure."""
        if plan is None:
            raise AirflowFailException("plan_drill failed: no scenario ran (see its log)")
        config, ti = backup_config(), context["ti"]
        results = collect(ti, plan)
        summary = drill.summarize(results)
        report_date = _report_date(context)
        prefix = report_prefix(config.reports.prefix, "dr-drill", report_date)
        location = f"s3://{config.bucket}/{prefix}report.md"
        doc = drill_doc(results, plan, summary=summary, report_date=report_date, location=location)
        files = {**doc.files(), "drill.json": json.dumps({"plan": plan, "summary": summary, "results": results},
                                                         indent=1, default=str) + "\n"}
        where = publish_files(files, bucket=bucket(config), prefix=prefix,
                              local_dir=config.state.report_dir("dr-drill", report_date.isoformat()),
                              sse=config.reports.sse_algorithm)
        ti.xcom_push(key="report_location", value=where["uri"])
        if plan["complete"]:
            detail = "; ".join(p["detail"] for p in summary["problems"][:5])
            if plan.get("targets_overridden"):
                detail = f"targets overridden {plan['targets_overridden']}; {detail}".rstrip("; ")
            record_dr_drill(config.state_dir, ok=summary["ok"], scenarios=drill.audit_scenarios(results),
                            run_id=context["run_id"], now=clock.now(), detail=detail,
                            triggered_by=triggered_by(context))
        else:
            log.info("partial drill (%s): reported, not recorded as the annual drill", ", ".join(plan["scenarios"]))
        log.info("DR drill report written to %s (HTML: %s, local copy: %s)\n\n%s\n\n%s", where["uri"], where["html"],
                 where["local"], summary["table"], doc.markdown())
        if not summary["ok"]:
            raise VerificationFailed(f"DR drill failed: {', '.join(summary['failed'])} (report: {where['uri']})",
                                     summary["problems"])
        return {**where, "summary": summary}

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def export_metrics(plan: dict | None, **context) -> list[str]:
        if plan is None:
            raise AirflowFailException("plan_drill failed: no metrics to export")
        config = backup_config()
        m = drill.drill_metrics(collect(context["ti"], plan), now=clock.now().timestamp(),
                                store=LastSuccessStore(config.state.metrics_values("dr_drill")),
                                complete=plan["complete"])
        targets = m.publish(job=METRICS_JOB, pushgateway_url=config.pushgateway_url,
                            textfile=config.state.metrics_textfile("dr_drill"))
        log.info("drill metrics published to %s", ", ".join(targets))
        return targets

    plan = plan_drill()
    with TaskGroup(GROUP, tooltip="One task per runbook scenario, each timed against the RTO/RPO targets") as group:
        for name in drill.SCENARIOS:
            _scenario_task(name)(plan)
    teardown = ScratchCleanupOperator(task_id="teardown_scratch", run_id="{{ run_id }}",
                                      trigger_rule=TriggerRule.ALL_DONE)
    group >> teardown
    # publish_report and export_metrics are leaves: the run's state comes from its leaves.
    group >> publish_report(plan)
    group >> export_metrics(plan)


backup_annual_dr_drill()
