"""Monthly restore test: prove the backups restore, first Monday of the month at 09:00 UTC.

Parse time reads only the configuration file; which backups are restored is decided at run
time by ``plan_restores``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from airflow.sdk import CronTriggerTimetable, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException

from backup_airflow.common import VerificationFailed, dag_tags, default_args
from backup_airflow.hooks import backup_config, bucket
from backup_airflow.restore_operators import (ScratchCleanupOperator, ScratchRestoreOperator, lease_backups,
                                              release_leases, triggered_by)
from backupkit import clock
from backupkit.metrics import LastSuccessStore
from backupkit.results import record_restore_tests
from backupkit.jobs.restore_test import (apply_restore_targets, monthly_targets, pitr_targets, pitr_test,
                                         restore_test_metrics, summarize_restore_tests)
from backupkit.restore.journal import RestoreJournal

log = logging.getLogger(__name__)

CONFIG = backup_config()  # parse time: the YAML only
METRICS_JOB = "backup_monthly_restore_test"
# First Monday of the month. Not "0 9 1-7 * 1": in cron, a day-of-month range together with
# a weekday means EITHER (days 1-7, and every Monday), eight or more runs a month.
SCHEDULE = "0 9 * * 1#1"
DAGRUN_TIMEOUT = timedelta(hours=12)

DOC_MD = """
# Monthly restore test (runbook: *Monthly Restore Test*)

Runs on the **first Monday of every month at 09:00 UTC** (`0 9 * * 1#1`; a test proves the run
dates). For every configured database and file set it restores **the newest backup** and **one
older backup picked at random** from the last `restore.random_older_window_days` days (restoring
what is rarely read catches latent damage, as AWS Backup's restore testing does), each into a
throwaway target that is always torn down:

* databases: a scratch PostgreSQL (`restore.backend`: `local` = embedded binaries in a temporary
  directory; `kubernetes` = a labelled pod with limits, non-root, an active deadline and a
  per-run password in a Secret), `pg_restore --jobs N` (plain `.sql.gz` through `psql` with stop
  on error), then every table's row count against the manifest beside the backup
  (docs/manifest.md; without one, against the live database within `row_count_tolerance`), the
  key tables non-empty, and the configured SQL assertions;
* file sets: safe extraction into a scratch directory (no absolute paths, `..` or escaping links;
  size limits), each file against the archive's `SHA256SUMS`, the configured paths present.

| Task | What it does |
|---|---|
| `plan_restores` | lists the backups (disk and bucket), picks newest + random older per source, and holds them from retention until `summarize` |
| `restore_test` (mapped, one per backup) | restore, verify, tear down; the result is XCom `result`; a failed verification fails the instance |
| `plan_pitr`, `pitr_test` (mapped, one per WAL archive) | a point in time drawn at random (seeded by the run id) inside the window the daily verification found; base backup + WAL replayed to it through our `restore_command`, promoted on a scratch server; the marker rows (`markers_table`) present up to the target and absent after it (docs/wal.md) |
| `teardown_scratch` (all_done) | removes whatever this run's scratch databases left (a crashed worker) |
| `sweep_orphans` (all_done) | removes scratch databases of any run older than `orphan_max_age_hours` |
| `summarize` (all_done) | one table (seconds, rows or files, MB/s), a result per source; **fails the run** when any restore test failed or took longer than its source's `restore.target_duration` (check `restore_time`) |
| `export_metrics` (all_done) | `backup_restore_test_status`, `_duration_seconds`, `_verified_rows`, `_last_success_timestamp_seconds` per `source` to the Pushgateway and `<state_dir>/metrics/restore_test.prom` |

## When it fails

Open `summarize`: each failed test is listed with its backup and check.

* **restore** (pg_restore/psql error, damaged or incomplete dump): the backup does not restore.
  Run `backupctl verify` on it, check the previous backups the same way, and take a fresh backup
  now. Until one restores, the newest restorable backup is your recovery point.
* **rows TABLE: N rows missing / table missing**: the dump lacks data the manifest recorded at
  backup time (changed `pg_dump -t`/`-n` options, a dump of the wrong database or replica).
* **key table empty**, **assertion N**: the data restored but is not plausible; compare with
  production.
* **extract / checksums / path** (file sets): the archive is unsafe, damaged, or misses
  configured paths; check the file backup script.
* **teardown failed**, or `sweep_orphans` failed: a scratch copy of production data may still
  run; delete the pods labelled `app.kubernetes.io/managed-by=backupkit` by hand.
* a `restore_test` instance failed without a result (scratch could not start, S3 unreachable):
  it was retried; read its log.
"""


@dag(
    dag_id="backup_monthly_restore_test",
    schedule=CronTriggerTimetable(SCHEDULE, timezone="UTC"),
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=DAGRUN_TIMEOUT,
    default_args=default_args(CONFIG, execution_timeout=timedelta(hours=4)),
    tags=dag_tags("restore", "monthly"),
    doc_md=DOC_MD,
)
def backup_monthly_restore_test():
    @task
    def plan_restores(**context) -> list[dict]:
        """Newest + one random older backup per source (seeded by the run id: reruns repeat it)."""
        config = backup_config()
        now = clock.now()
        targets = monthly_targets(config, bucket(config), now=now, seed=context["run_id"])
        lease_backups(config, context["run_id"], [(t["source_name"], t["backup"]) for t in targets],
                      purpose="monthly restore test", hours=DAGRUN_TIMEOUT.total_seconds() / 3600)
        for t in targets:
            log.info("will restore %s %s (%s)", t["source_name"], t["backup"] or "(no backup!)", t["role"])
        return targets

    @task
    def plan_pitr(**context) -> list[dict]:
        """Per WAL archive: a random point inside its verified window (seeded by the run id)."""
        targets = pitr_targets(backup_config(), now=clock.now(), seed=context["run_id"])
        for t in targets:
            log.info("will restore %s to %s (window %s .. %s)", t["source_name"], t["target_time"], *t["window"])
        return targets

    @task(task_id="pitr_test")
    def pitr_test_task(target: dict, **context) -> dict:
        """Base backup + WAL to the target time, promoted on a scratch server; markers checked; torn down."""
        config = backup_config()
        source = config.source(target["source_name"])
        live = None
        if source.spec.markers_table and source.spec.database:
            from airflow.providers.postgres.hooks.postgres import PostgresHook

            hook = PostgresHook(postgres_conn_id=config.source(source.spec.database).conn_id,
                                database=source.spec.markers_table.split(".")[0])
            live = lambda sql: str(hook.get_first(sql)[0])  # noqa: E731
        from backupkit.restore.scratch import run_scratch_dir

        result = pitr_test(config, target, live=live, work_root=run_scratch_dir(config, context["run_id"]),
                           bucket=bucket(config), run_id=context["run_id"])
        context["ti"].xcom_push(key="result", value=result)
        if not result["ok"]:
            raise AirflowFailException(f"point-in-time restore test of {target['source_name']} to "
                                       f"{target['target_time']} failed: {result['problems'][0]['detail']}")
        return result

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def summarize(targets: list[dict] | None, **context) -> dict:
        """A result per source; fails the run (no retry) when any restore test failed."""
        config = backup_config()
        release_leases(config, context["run_id"])  # the backups may be swept again
        if targets is None:
            raise AirflowFailException("plan_restores failed: nothing was restored (see its log)")
        results = apply_restore_targets(config, collect(context["ti"], targets) + collect_pitr(context["ti"]))
        report = summarize_restore_tests(results)
        log.info("Restore tests of %d backups:\n%s", len(results), report["table"])
        who = triggered_by(context)
        journal = RestoreJournal(config.state_dir)
        for r in results:  # every restore is in the restore journal, tests included
            journal.append(run_id=context["run_id"], source=r["source"], action="restore_test", triggered_by=who,
                           reason="monthly restore test", backup=r.get("backup") or None, mode="restore_test",
                           outcome="passed" if r.get("ok") else "failed", location=r.get("location"),
                           changes=["nothing: restored into a scratch target that was torn down"])
        # The quarterly audit's recoverability control reads these records.
        record_restore_tests(config.state_dir, results, run_id=context["run_id"], now=clock.now(), triggered_by=who)
        context["ti"].xcom_push(key="report", value=report)
        if not report["ok"]:
            failed = sorted(n for n, s in report["sources"].items() if not s["ok"])
            raise VerificationFailed(f"restore test failed for {', '.join(failed)}", report["problems"])
        return report

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def export_metrics(targets: list[dict] | None, **context) -> list[str]:
        if targets is None:
            raise AirflowFailException("plan_restores failed: no metrics to export")
        config = backup_config()
        now = clock.now().timestamp()
        registry = restore_test_metrics(apply_restore_targets(config, collect(context["ti"], targets)
                                                              + collect_pitr(context["ti"])), now=now,
                                        store=LastSuccessStore(config.state.metrics_values("restore_test")),
                                        expected_sources=[t["source_name"] for t in targets])
        return registry.publish(job=METRICS_JOB, pushgateway_url=config.pushgateway_url,
                                textfile=config.state.metrics_textfile("restore_test"))

    targets = plan_restores()
    tests = ScratchRestoreOperator.partial(task_id="restore_test").expand_kwargs(targets)
    pitr = pitr_test_task.expand(target=plan_pitr())
    teardown = ScratchCleanupOperator(task_id="teardown_scratch", run_id="{{ run_id }}",
                                      trigger_rule=TriggerRule.ALL_DONE)
    sweep = ScratchCleanupOperator(task_id="sweep_orphans", trigger_rule=TriggerRule.ALL_DONE)
    [tests, pitr] >> teardown >> sweep
    # summarize and export_metrics are leaves: the run's state comes from its leaves.
    [tests, pitr] >> summarize(targets)
    [tests, pitr] >> export_metrics(targets)


def collect(ti, targets: list[dict]) -> list[dict]:
    """One result per target; an instance that left none (crashed, upstream failed) is a failure."""
    if not targets:
        return []
    values = ti.xcom_pull(task_ids="restore_test", key="result", map_indexes=list(range(len(targets))), default=None)
    if not isinstance(values, list):
        values = [values]
    out = []
    for t, value in zip(targets, values, strict=True):
        if value is None:
            artifact = f"{t['source_name']}/{t['backup']}" if t["backup"] else t["source_name"]
            value = {"source": t["source_name"], "backup": t["backup"], "role": t["role"], "ok": False,
                     "kind": None, "duration_seconds": None, "problems": [
                         {"artifact": artifact, "check": "restore_test", "ok": False,
                          "detail": "task did not finish (scratch not provisioned, S3 unreachable, crash): "
                                    "no result; see that task's log"}]}
        out.append(value)
    return out


def collect_pitr(ti) -> list[dict]:
    """The point-in-time tests' results; a planned one that left none is a failure."""
    planned = ti.xcom_pull(task_ids="plan_pitr") or []
    if not planned:
        return []
    values = ti.xcom_pull(task_ids="pitr_test", key="result", map_indexes=list(range(len(planned))), default=None)
    values = values if isinstance(values, list) else [values]
    return [v if v is not None else {
        "source": t["source_name"], "backup": "", "role": "pitr", "ok": False, "kind": "wal_archive",
        "duration_seconds": None, "problems": [{"artifact": t["source_name"], "check": "pitr_test", "ok": False,
                                                "detail": "task did not finish: no result; see its log"}]}
        for t, v in zip(planned, values, strict=True)]


backup_monthly_restore_test()
