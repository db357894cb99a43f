"""Weekly backup maintenance: the runbook's Sunday review (10:00 UTC) as an Airflow DAG.

Parse time reads only the configuration file; every listing, log read and S3 request
happens in the tasks. The analysis itself is :mod:`backupkit.jobs.weekly`, the rendering
:mod:`backupkit.reports.weekly`.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone

from airflow.sdk import CronTriggerTimetable, Param, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException

from backup_airflow.common import VerificationFailed, dag_tags, default_args
from backup_airflow.hooks import backup_config, bucket
from backupkit import clock
from backupkit import metric_names as names
from backupkit.config import Config
from backupkit.metrics import MetricSet
from backupkit.jobs import weekly
from backupkit.reports.weekly import weekly_doc
from backupkit.reports.render import publish_files, report_prefix

log = logging.getLogger(__name__)

CONFIG = backup_config()  # parse time: the YAML only (alerting channels, defaults)
METRICS_JOB = "backup_weekly_maintenance"
SECTIONS = {"trends": "collect_trends", "failures": "failure_pattern", "storage": "storage_usage",
            "encryption": "encryption_check"}

DOC_MD = """
# Weekly backup maintenance (runbook: *Sunday Backup System Review*, 10:00 UTC)

Runs every **Sunday at 10:00 UTC** (no catch-up). Sources, bucket, price table and thresholds come
from `include/config/backups.yaml` (`reports:` block; `$BACKUPKIT_CONFIG` overrides the file).

| Task | Runbook item | What it produces |
|---|---|---|
| `collect_trends` | *Review backup performance and duration trends* | per source and ISO week over `reports.trend_weeks` (8) weeks: backup count, size, duration (from the backup logs' `backup completed ... duration=` lines, else the manifests); **anomalies**: a backup whose size or duration is >= `anomaly_factor` x (or <= 1/factor) the median of the previous backups |
| `failure_pattern` | *Analyze backup failure patterns* | missing nights, ERROR lines of the backup logs and failed verifications, by weekday, source and (normalised) error |
| `storage_usage` | *Check backup storage costs and usage* | every object version of the bucket by prefix and storage class (paginated), local disk usage and free space, bytes added per week, net growth since the last run, a monthly cost estimate from `reports.prices_usd_per_gb_month`, and AWS Cost Explorer's figure when it is reachable |
| `encryption_check` | *Verify backup encryption settings* | bucket default encryption present and of `reports.sse_algorithm`; every backup object without server-side encryption (or of another kind) listed |
| `publish_report` | | renders the report (Markdown with SVG charts, and one HTML page), writes it to `<state_dir>/reports/weekly/<date>/` and to `s3://<bucket>/reports/weekly/<date>/`, logs it, and returns its location (XCom `return_value` / `report_location`) |
| `export_metrics` | | `backup_storage_used_bytes{location}`, `backup_storage_filesystem_size_bytes` / `_free_bytes{location}`, `backup_storage_cost_estimate_usd_per_month`, `backup_storage_unencrypted_objects`, `backup_weekly_anomalies{source}` to the Pushgateway (`metrics.pushgateway_url`) and `<state_dir>/metrics/weekly.prom` |

## When it fails

`publish_report` fails the run (and alerts) when encryption is wrong -- no or another default
encryption on the bucket, or backup objects without it -- or when a collection task failed; the
report is still written and its location logged. Anomalies and failure events are **flagged** in
the report and the metrics, not failures: review them.

* **unencrypted objects**: re-upload them with `--sse AES256` (or KMS as configured) or copy them
  in place (`aws s3 cp s3://b/k s3://b/k --sse AES256`); restore the bucket default with
  `aws s3api put-bucket-encryption`.
* **size drop**: a dump that shrank usually means pg_dump stopped early or dumped the wrong
  database: check the backup job's log and run the daily verification on that file.
* **duration jump**: compare with the database growth, lock waits in the log, disk and network.
* **a collection task failed**: it was retried twice; open its log (S3 unreachable, log file
  unreadable, state directory not writable).

Manual runs take parameters: `trend_weeks`, `anomaly_factor`, `scan_objects` (skip the per-object
HEAD requests for a quick look).
"""


def _params(context) -> dict:
    return dict(context.get("params") or {})


def _report_date(context) -> date:
    dr = context.get("dag_run")
    when = getattr(dr, "run_after", None) or context.get("logical_date") or clock.now()
    return when.date()


def _cost_explorer(config: Config):
    """A callable asking Cost Explorer (through the bucket's AWS connection), or None when disabled."""
    if not config.reports.cost_explorer:
        return None

    def query() -> dict:
        try:
            from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
            from botocore.config import Config as BotoConfig

            client = AwsBaseHook(aws_conn_id=config.aws_conn_id, client_type="ce").get_client_type(
                region_name="us-east-1",
                config=BotoConfig(connect_timeout=5, read_timeout=20, retries={"max_attempts": 2}))
        except Exception as exc:  # optional figure: say why, never fail the report over it
            return {"reachable": False, "reason": f"cannot create a Cost Explorer client: {exc}"}
        return weekly.cost_explorer_figure(client, today=clock.now().date())

    return query


@dag(
    dag_id="backup_weekly_maintenance",
    schedule=CronTriggerTimetable("0 10 * * 0", timezone="UTC"),
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args=default_args(CONFIG),
    tags=dag_tags("maintenance", "weekly"),
    doc_md=DOC_MD,
    params={
        "trend_weeks": Param(None, type=["null", "integer"], minimum=1, maximum=260, title="Trend weeks",
                             description="Weeks of history to analyse (empty: reports.trend_weeks)"),
        "anomaly_factor": Param(None, type=["null", "number"], exclusiveMinimum=1, title="Anomaly factor",
                                description="Flag sizes/durations this many times above or below the recent "
                                            "median (empty: reports.anomaly_factor)"),
        "scan_objects": Param(True, type="boolean", title="Check every object's encryption",
                              description="HEAD every backup object for its server-side encryption"),
    },
)
def backup_weekly_maintenance():
    @task
    def collect_trends(**context) -> dict:
        config, p = backup_config(), _params(context)
        out = weekly.collect_trends(config, now=clock.now(), bucket=bucket(config),
                                    weeks=p.get("trend_weeks"), factor=p.get("anomaly_factor"))
        for src, t in out["sources"].items():
            for a in t["anomalies"]:
                log.warning("ANOMALY %s %s: %s %s, %.2fx the median of the previous backups", src, a["name"],
                            a["metric"], a["kind"], a["ratio"])
        return out

    @task
    def failure_pattern(**context) -> dict:
        config = backup_config()
        out = weekly.failure_pattern(config, now=clock.now(), bucket=bucket(config),
                                     weeks=_params(context).get("trend_weeks"))
        log.info("%d failure events since %s", len(out["events"]), out["since"][:10])
        return out

    @task
    def storage_usage(**context) -> dict:
        config = backup_config()
        out = weekly.storage_usage(config, bucket(config), now=clock.now(),
                                   weeks=_params(context).get("trend_weeks"), cost_explorer=_cost_explorer(config))
        ce = out["cost_explorer"]
        log.info("s3://%s holds %d bytes; estimate %.2f USD/month; Cost Explorer: %s", config.bucket,
                 out["bucket"]["total_bytes"], out["cost"]["usd_per_month"],
                 f"{ce['amount']:.2f} {ce['unit']}" if ce.get("reachable") else f"not reachable: {ce['reason']}")
        return out

    @task
    def encryption_check(**context) -> dict:
        config = backup_config()
        out = weekly.encryption_report(config, bucket(config),
                                       scan=bool(_params(context).get("scan_objects", True)))
        for problem in out["problems"]:
            log.warning("ENCRYPTION %s", problem)
        return out

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def publish_report(**context) -> dict:
        """Render and publish the report whatever the collectors did; fail on encryption problems."""
        config, ti = backup_config(), context["ti"]
        sections = {name: ti.xcom_pull(task_ids=task_id, default=None) for name, task_id in SECTIONS.items()}
        report_date = _report_date(context)
        prefix = report_prefix(config.reports.prefix, "weekly", report_date)
        location = f"s3://{config.bucket}/{prefix}report.md"
        doc = weekly_doc(report_date=report_date, location=location, **sections)
        problems, warnings = weekly.findings(sections)
        where = publish_files(doc.files(), bucket=bucket(config),
                              prefix=prefix, sse=config.reports.sse_algorithm,
                              local_dir=config.state.report_dir("weekly", report_date.isoformat()))
        result = {**where, "problems": problems, "flagged": warnings}
        ti.xcom_push(key="report_location", value=where["uri"])
        log.info("Weekly report written to %s (HTML: %s, local copy: %s)\n\n%s", where["uri"], where["html"],
                 where["local"], doc.markdown())
        if problems:
            raise VerificationFailed(
                f"weekly review found {len(problems)} problem(s) (report: {where['uri']}): {problems[0]}",
                [{"artifact": f"s3://{config.bucket}", "check": "weekly review", "ok": False, "detail": p}
                 for p in problems])
        return result

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def export_metrics(**context) -> list[str]:
        config, ti = backup_config(), context["ti"]
        trends = ti.xcom_pull(task_ids=SECTIONS["trends"], default=None)
        storage = ti.xcom_pull(task_ids=SECTIONS["storage"], default=None)
        encryption = ti.xcom_pull(task_ids=SECTIONS["encryption"], default=None)
        if trends is None and storage is None and encryption is None:
            raise AirflowFailException("no collection task left results: no metrics to export")
        m = MetricSet()
        m.set(names.WEEKLY_LAST_RUN, clock.now().timestamp(),
              "Unix time of the last weekly maintenance run")
        bucket_loc = f"s3://{config.bucket}"
        if storage is not None:
            m.set(names.STORAGE_USED, storage["bucket"]["total_bytes"],
                  "Bytes of backups at a location (bucket: all object versions; directory: its files)",
                  location=bucket_loc)
            m.set(names.STORAGE_COST, storage["cost"]["usd_per_month"],
                  "Monthly storage cost estimated from the configured price table", location=bucket_loc)
            for r in storage["local"]:
                if not r["exists"]:
                    continue
                m.set(names.STORAGE_USED, r["bytes"],
                      "Bytes of backups at a location (bucket: all object versions; directory: its files)",
                      location=r["path"])
                m.set(names.STORAGE_FS_SIZE, r["fs_size"],
                      "Size of the filesystem holding a backup directory", location=r["path"])
                m.set(names.STORAGE_FS_FREE, r["fs_free"],
                      "Free bytes of the filesystem holding a backup directory", location=r["path"])
        if trends is not None:
            for src, t in trends["sources"].items():
                m.set(names.WEEKLY_ANOMALIES, len(t["anomalies"]),
                      "Size or duration anomalies of the source in the weekly trend window", source=src)
        if encryption is not None and encryption["objects"] is not None:
            o = encryption["objects"]
            m.set(names.STORAGE_UNENCRYPTED, o["counts"]["unencrypted"] + o["counts"]["wrong_kind"],
                  "Backup objects without the configured server-side encryption", location=bucket_loc)
        targets = m.publish(job=METRICS_JOB, pushgateway_url=config.pushgateway_url,
                            textfile=config.state.metrics_textfile("weekly"))
        log.info("weekly metrics published to %s", ", ".join(targets))
        return targets

    collectors = [collect_trends(), failure_pattern(), storage_usage(), encryption_check()]
    # Both leaves: the run's state comes from its leaf tasks, so the failing verdict must be one.
    collectors >> publish_report()
    collectors >> export_metrics()


backup_weekly_maintenance()
