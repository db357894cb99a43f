"""Quarterly backup audit: the runbook's end-of-quarter audit (last Friday, 09:00 UTC) as an Airflow DAG.

Parse time reads only the configuration file. The controls are :mod:`backupkit.jobs.audit`
(security: :mod:`~backupkit.jobs.audit_security`), the report :mod:`backupkit.reports.audit`;
this file lists the databases through Airflow connections and publishes the report.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta, timezone

from airflow.sdk import BaseHook, CronTriggerTimetable, Param, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException

from backup_airflow.common import VerificationFailed, dag_tags, default_args
from backup_airflow.hooks import backup_config, bucket
from backupkit import clock
from backupkit import metric_names as names
from backupkit.metrics import MetricSet
from backupkit.jobs import audit
from backupkit.jobs.audit_security import security_controls
from backupkit.reports import audit as audit_report
from backupkit.reports.render import publish_files, report_prefix
from backupkit.state import VerificationState

log = logging.getLogger(__name__)

CONFIG = backup_config()  # parse time: the YAML only (alerting channels, defaults)
METRICS_JOB = "backup_quarterly_audit"
CONTROL_TASKS = ("audit_coverage", "audit_retention", "audit_security", "audit_recoverability")

DOC_MD = """
# Quarterly backup audit (runbook: *End of Quarter Backup Audit*, last Friday 09:00 UTC)

Runs at **09:00 UTC on the last Friday of March, June, September and December** (cron
`0 9 * 3,6,9,12 L5`; no catch-up). A control-by-control report modelled on AWS Backup Audit
Manager; every control is PASS or FAIL (or INFO when not required) with its evidence.

| Task | Controls |
|---|---|
| `list_databases` | lists `pg_database` on every server of `reports.database_servers` (default: the conn ids of the database sources) -- the real databases, not the configured ones |
| `audit_coverage` | `coverage.databases_protected` (every listed database except templates and `postgres` has a backup verified by the daily run and younger than `reports.coverage_max_age_hours`), `coverage.file_paths_protected` (every configured path is in the latest archive), `coverage.last_recovery_point_created` |
| `audit_retention` | `retention.minimum_frequency` (age distribution per source; no gap in the periods the policy keeps), `retention.not_kept_past_policy` (nothing the policy dropped more than `reports.retention_grace_days` ago is still kept, unless held) |
| `audit_security` | `security.recovery_points_encrypted`, `security.manual_deletion_prevented` (versioning, object lock with default retention), `security.public_access_blocked` (Block Public Access, ACLs, policy, every backup object's ACL), `security.secure_transport_required` (policy denies `aws:SecureTransport=false`), `security.cross_region_copy` (INFO unless `reports.require_cross_region_copy`) |
| `audit_recoverability` | `recoverability.restore_tests_passed` (last three monthly restore tests in `<state_dir>/restore_tests.jsonl`), `recoverability.restore_time_meets_target` (the newest restore test of each source with `restore.target_duration` took no longer; INFO when none declares one), `recoverability.dr_drill_met_targets` (latest drill in `<state_dir>/dr_drills.jsonl`) |
| `publish_report` | writes `report.md`, `report.html` and `controls.json` to `<state_dir>/reports/audit/<date>/` and `s3://<bucket>/reports/audit/<date>/`, logs the report, returns its location; **fails the run when a control failed** |
| `export_metrics` | `backup_audit_controls_failed`, `backup_audit_controls_total`, `backup_audit_control_status{control}` |

## When it fails

Open the report (its location is in the `publish_report` log and XCom): each failed control lists
its evidence. Typical fixes: add a backup source for a new database (or drop the database);
run the retention DAG (overdue backups) or fix what blocks it (guard rails in the evidence);
`aws s3api put-bucket-encryption` / `put-object-lock-configuration` / `put-public-access-block` /
`put-bucket-policy` (deny `aws:SecureTransport=false`); run the monthly restore test or the DR
drill when their records are missing or stale. Then trigger the DAG again. The manual-run
parameter `fail_on_findings=false` writes the report without failing the run (a pre-audit check).
"""


def _report_date(context) -> date:
    dr = context.get("dag_run")
    when = getattr(dr, "run_after", None) or context.get("logical_date") or clock.now()
    return when.date()


@dag(
    dag_id="backup_quarterly_audit",
    schedule=CronTriggerTimetable("0 9 * 3,6,9,12 L5", timezone="UTC"),
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=8),
    default_args=default_args(CONFIG),
    tags=dag_tags("audit", "quarterly"),
    doc_md=DOC_MD,
    params={
        "fail_on_findings": Param(True, type="boolean", title="Fail the run when a control fails",
                                  description="Off: write the report only (a pre-audit check)"),
    },
)
def backup_quarterly_audit():
    @task
    def list_databases() -> dict:
        """Databases per server from pg_database; a server that cannot be listed is recorded, not raised,
        so the other servers are still audited and the coverage control fails naming it."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        config = backup_config()
        servers = {}
        for conn_id in config.reports.servers(config.databases):
            try:
                default_db = BaseHook.get_connection(conn_id).schema or None
                rows = PostgresHook(postgres_conn_id=conn_id).get_records(audit.LIST_DATABASES_SQL)
                servers[conn_id] = {"databases": [r[0] for r in rows], "default_database": default_db, "error": None}
                log.info("%s: %s", conn_id, ", ".join(r[0] for r in rows))
            except Exception as exc:
                log.error("cannot list the databases of %s: %s", conn_id, exc)
                servers[conn_id] = {"databases": [], "default_database": None, "error": f"{type(exc).__name__}: {exc}"}
        return servers

    @task
    def audit_coverage(servers: dict) -> list[dict]:
        config = backup_config()
        now = clock.now()
        index, notes = audit.backup_index(config, bucket(config))
        with VerificationState(config.state_dir) as state:
            controls = [audit.coverage_databases(config, servers, now=now, state=state),
                        audit.coverage_file_paths(config, now=now),
                        audit.last_recovery_point(config, index, now=now, notes=notes)]
        return [c.to_dict() for c in controls]

    @task
    def audit_retention() -> list[dict]:
        config = backup_config()
        store = bucket(config)
        index, notes = audit.backup_index(config, store)
        with VerificationState(config.state_dir) as state:
            controls = audit.retention_controls(config, index, now=clock.now(), state=state,
                                                bucket=store, notes=notes)
        return [c.to_dict() for c in controls]

    @task
    def audit_security() -> list[dict]:
        config = backup_config()
        return [c.to_dict() for c in security_controls(config, bucket(config))]

    @task
    def audit_recoverability() -> list[dict]:
        config = backup_config()
        now = clock.now()
        return [audit.restore_tests_control(config, now=now).to_dict(),
                audit.restore_time_control(config, now=now).to_dict(),
                audit.dr_drill_control(config, now=now).to_dict()]

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def publish_report(**context) -> dict:
        """Write the report whatever happened; fail (and alert) when a control failed or was not evaluated."""
        config, ti = backup_config(), context["ti"]
        controls, missing = [], []
        for task_id in CONTROL_TASKS:
            value = ti.xcom_pull(task_ids=task_id, default=None)
            if value is None:
                missing.append(f"{task_id} did not finish (failed or upstream failed); see its log")
            else:
                controls.extend(value)
        report_date = _report_date(context)
        prefix = report_prefix(config.reports.prefix, "audit", report_date)
        location = f"s3://{config.bucket}/{prefix}report.md"
        doc = audit_report.audit_doc(controls, report_date=report_date, bucket=config.bucket, location=location,
                              missing=missing)
        summary = audit_report.audit_summary(controls)
        files = {**doc.files(), "controls.json": json.dumps({"date": report_date.isoformat(), "summary": summary,
                                                             "missing": missing, "controls": controls},
                                                            indent=1, default=str) + "\n"}
        where = publish_files(files, bucket=bucket(config), prefix=prefix,
                              local_dir=config.state.report_dir("audit", report_date.isoformat()),
                              sse=config.reports.sse_algorithm)
        ti.xcom_push(key="report_location", value=where["uri"])
        # The verdict first (one line per control); the evidence is in the report, not the log.
        log.info("%s\n\nFull report with every control's evidence: %s (HTML: %s, local copy: %s)",
                 audit_report.verdict_text(controls, missing=missing), where["uri"], where["html"], where["local"])
        result = {**where, "summary": summary, "missing": missing}
        not_evaluated = [m.split(" ", 1)[0] for m in missing]
        problems = summary["problems"] + [{"artifact": task_id, "check": "audit", "ok": False, "detail": m}
                                          for task_id, m in zip(not_evaluated, missing)]
        if problems and context["params"].get("fail_on_findings", True):
            raise VerificationFailed(
                f"quarterly audit: {len(problems)} control(s) failed or not evaluated: "
                f"{', '.join(summary['failed'] + not_evaluated)} (report: {where['uri']})", problems)
        return result

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def export_metrics(**context) -> list[str]:
        config, ti = backup_config(), context["ti"]
        controls = [c for task_id in CONTROL_TASKS for c in (ti.xcom_pull(task_ids=task_id, default=None) or [])]
        if not controls:
            raise AirflowFailException("no control was evaluated: no metrics to export")
        summary = audit_report.audit_summary(controls)
        missing = sum(1 for t in CONTROL_TASKS if ti.xcom_pull(task_ids=t, default=None) is None)
        m = MetricSet()
        m.set(names.AUDIT_LAST_RUN, clock.now().timestamp(),
              "Unix time of the last quarterly audit run")
        m.set(names.AUDIT_CONTROLS_TOTAL, summary["total"], "Audit controls evaluated in the last audit")
        m.set(names.AUDIT_CONTROLS_FAILED, len(summary["failed"]) + missing,
              "Audit controls that failed (or could not be evaluated) in the last audit")
        for c in controls:
            m.set(names.AUDIT_CONTROL_STATUS, 0 if c["status"] == "fail" else 1,
                  "1 if the audit control passed (or is informational) in the last audit, else 0", control=c["id"])
        targets = m.publish(job=METRICS_JOB, pushgateway_url=config.pushgateway_url,
                            textfile=config.state.metrics_textfile("audit"))
        log.info("audit metrics published to %s", ", ".join(targets))
        return targets

    checks = [audit_coverage(list_databases()), audit_retention(), audit_security(), audit_recoverability()]
    # Both leaves: the failing verdict must be a leaf for the run to fail.
    checks >> publish_report()
    checks >> export_metrics()


backup_quarterly_audit()
