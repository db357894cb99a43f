"""Daily backup verification: the runbook's 08:00 UTC checklist as an Airflow DAG.

Parse time reads only the configuration file (for alerting and defaults): no network, no
database. Which sources exist is read again at run time by the ``sources`` task, so a source
added to the YAML is checked on the next run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from airflow.sdk import (
    AsyncCallback,
    CronTriggerTimetable,
    DeadlineAlert,
    DeadlineReference,
    TriggerRule,
    dag,
    task,
)
from airflow.sdk.exceptions import AirflowFailException

from backup_airflow.common import DAILY_VERIFIED, VerificationFailed, dag_tags, default_args
from backup_airflow.deadline import deadline_kwargs, deadline_missed
from backup_airflow.hooks import backup_config
from backup_airflow.operators import (
    BackupFreshnessOperator,
    BackupIntegrityOperator,
    S3BackupCopyCheckOperator,
    collect_results,
)
from backupkit import clock
from backupkit.jobs import daily

log = logging.getLogger(__name__)

CONFIG = backup_config()  # parse time: the YAML only (alerting channels, defaults)

# The per-source checks, in the order the runbook's checklist gives them.
MAPPED_CHECKS = ("check_freshness", "check_integrity", "check_cloud_copies")
LOG_CHECK = "check_backup_logs"
METRICS_JOB = "backup_daily_verification"

# The on-call reads the verdict at 08:30 UTC: alert (same channels as failures) when the run has
# not finished by then. Scheduled runs are queued at 08:00, so queued + 30 min is 08:30; a run
# triggered by hand gets the same 30 minutes from when it was queued (a logical-date reference
# would make a back-dated manual run miss its deadline the moment it is created).
DEADLINE = DeadlineAlert(
    reference=DeadlineReference.DAGRUN_QUEUED_AT,
    interval=timedelta(minutes=30),
    callback=AsyncCallback(deadline_missed, kwargs=deadline_kwargs(CONFIG)),
    name="daily verification not finished by 08:30 UTC",
)

DOC_MD = """
# Daily backup verification (runbook: *Morning Backup Status Check*, 08:00 UTC)

Runs every day at **08:00 UTC** (no catch-up: a missed day is not replayed; the next run checks
the state as it is then). Sources come from `include/config/backups.yaml` (or `$BACKUPKIT_CONFIG`).

## What it checks, per configured source (mapped tasks, one per source)

| Task | Runbook step | What is checked |
|---|---|---|
| `check_freshness` | *Verify backup files* | a backup exists; the newest is younger than `max_age_hours` (25 h); its size is within `size_deviation` of the median of recent backups (an empty or halved dump fails); no night is missing |
| `check_integrity` | *Test backup integrity* | SHA-256 against the `.sha256` sidecar; custom/tar/directory dumps: **every data block** is read (`pg_restore -f /dev/null`, not only `--list`); `.sql.gz`: the gzip stream is whole and pg_dump's completion line ends the SQL; `.tar.gz`: read to the end, unsafe members (absolute paths, `..`, escaping links) reported. New backups are read in full, plus a rolling share (`reread_fraction`) of older ones, so every backup is re-read for bit rot about once a month |
| `check_cloud_copies` | *Verify cloud storage* | every local backup has its copy in the bucket with the same size and SHA-256, taken from S3's stored checksum (no download) |
| `check_backup_logs` (once) | *Check backup logs* | ERROR lines in the backup logs since the last run fail; WARNING lines are listed |

`summarize` collects every result, logs a table naming each failed artifact and check, and
**fails the run** when anything failed, which fires the alert (webhook and/or email, from
`alerting` in the configuration; with none configured the failure is logged as
`no alert channel configured: ...`). On success it emits the asset
`x-backupkit://verification/daily`, which the retention DAG waits for. `export_metrics` runs
whatever happened and publishes per-source gauges (`backup_verification_status`,
`backup_verification_problems`, `backup_verification_last_success_timestamp_seconds`,
`backup_age_seconds`, `backup_size_bytes`) to the Pushgateway when `metrics.pushgateway_url`
is set, and always to `<state_dir>/metrics/daily.prom` (node_exporter textfile collector); it also
writes `<state_dir>/facts/daily.json` (what this run found per source, with the S3 copy evidence),
which the *Backup health* page reads.

## When it fails

Open the `summarize` log: each row is `SOURCE/FILE  CHECK  FAIL  detail`. Then, by check:

* **freshness / missing night** (backup job failures): check the backup job's own log
  (`/var/log/backup/db_backup.log`, `files_backup.log`), the cron/systemd timer, database
  connectivity (`pg_isready`), disk space (`df -h /opt/backups`) and script permissions; run the
  backup command by hand. Do not delete older backups while the newest is missing.
* **size** (too small/large): compare with the previous nights (`backupctl inventory`); an empty
  or halved dump usually means pg_dump died early or the wrong database was dumped.
* **integrity / sha256 / pg_restore / gzip / tar** (backup corruption): re-run
  `backupctl verify <file>` to confirm; check memory and disk errors on the backup host
  (`dmesg`), then take a fresh backup now. Restore-test the previous good backup in an isolated
  environment before relying on it. Never let retention remove the last good backup.
* **s3 copy missing / size or checksum mismatch** (storage access issues): check
  `cloud_sync.log`, credentials and permissions of the sync job, network, bucket quotas;
  re-upload with `aws s3 cp --checksum-algorithm SHA256` and re-run this DAG.
* **wal_gap / wal_truncated / wal_corrupt / wal_timeline_fork / wal_missing_history /
  wal_base_backup_wal_missing / wal_stale / pitr_window** (a `wal_archives:` source): point-in-time
  recovery past the named segment is impossible, or archiving stopped. Check `archive_command`
  (`SELECT * FROM pg_stat_archiver`), the archive directory and its disk, then take a new base
  backup; `backupctl wal verify ARCHIVE --base-backup DIR` repeats the check (docs/wal.md).
* **log ERROR lines**: read the lines shown; they are reported once (the next run only reads new lines).
* **a check task itself failed** (`task did not finish`): it was retried twice; open that task's
  log (S3 endpoint unreachable, state directory not writable, configuration error).

A run still unfinished 30 minutes after it was queued (08:30 UTC for the scheduled run) sends
a *missed its deadline* alert on the same channels (Deadline Alert, run by the triggerer).

Re-run after fixing: *Clear* the failed tasks (checks are idempotent) or trigger the DAG.
"""


def run_results(ti, source_names: Sequence[str]) -> list[dict]:
    """Every check result of this run; a check instance that left none is itself a problem."""
    return collect_results(ti, source_names, MAPPED_CHECKS, [LOG_CHECK])


@dag(
    dag_id="backup_daily_verification",
    schedule=CronTriggerTimetable("0 8 * * *", timezone="UTC"),
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=20),
    deadline=DEADLINE,
    default_args=default_args(CONFIG),
    tags=dag_tags("verification", "daily"),
    doc_md=DOC_MD,
)
def backup_daily_verification():
    @task
    def sources() -> list[str]:
        """The configured source names, read at run time (map index i checks source i)."""
        return [s.name for s in backup_config().sources]

    @task(task_id=LOG_CHECK)
    def check_backup_logs() -> list[dict]:
        return daily.check_logs(backup_config())

    @task(trigger_rule=TriggerRule.ALL_DONE, outlets=[DAILY_VERIFIED])
    def summarize(source_names: list[str] | None, **context) -> dict:
        """One verdict; fails the run (no retry) when any check failed, so the alert fires."""
        if source_names is None:
            raise AirflowFailException("the sources task failed: nothing was verified (see its log)")
        report = daily.summarize(run_results(context["ti"], source_names))
        log.info("Backup verification of %d sources:\n%s", len(source_names), report["table"])
        if not report["ok"]:
            problems = report["problems"]
            context["ti"].xcom_push(key="report", value=report)
            affected = sorted({daily.source_of(p["artifact"]) for p in problems})
            raise VerificationFailed(f"{len(problems)} verification problem(s) in {', '.join(affected)}; "
                                     f"first: {problems[0]['artifact']}: {problems[0]['check']}", problems)
        return report

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def export_metrics(source_names: list[str] | None, **context) -> list[str]:
        """Per-source gauges from this run's results, whatever the verdict."""
        if source_names is None:
            raise AirflowFailException("the sources task failed: no metrics to export")
        from backupkit.health import record_daily_run  # run time only: the DAG file stays light to parse

        config = backup_config()
        now = clock.now()
        results = run_results(context["ti"], source_names)
        registry = daily.run_metrics(config, results, source_names, now=now)
        targets = registry.publish(job=METRICS_JOB, pushgateway_url=config.pushgateway_url,
                                   textfile=config.state.metrics_textfile("daily"))
        log.info("metrics for %d sources published to %s", len(source_names), ", ".join(targets))
        facts = record_daily_run(config.state, results, source_names=source_names, dag_id=context["dag"].dag_id,
                                 run_id=context["run_id"], now=now)
        log.info("facts for the health page written to %s", facts)
        return targets

    names = sources()
    checks = [
        BackupFreshnessOperator.partial(task_id="check_freshness").expand(source_name=names),
        BackupIntegrityOperator.partial(task_id="check_integrity",
                                        execution_timeout=timedelta(hours=4)).expand(source_name=names),
        S3BackupCopyCheckOperator.partial(task_id="check_cloud_copies").expand(source_name=names),
        check_backup_logs(),
    ]
    # summarize and export_metrics are both leaves: a run's state comes from its leaf tasks, so a
    # failing summarize must not sit upstream of an all_done task that succeeds (the run would
    # be marked success). Metrics are computed from the check results, not from the verdict.
    checks >> summarize(names)
    checks >> export_metrics(names)


backup_daily_verification()
