"""Retention cleanup: apply each source's retention policy after every successful daily verification.

Parse time reads only the configuration file (alerting, the source names offered in the trigger
form): no network, no database. The sources, the policies and whether this run deletes are
decided at run time by the ``sources`` task.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from airflow.sdk import Param, TriggerRule, dag, task

from backup_airflow.common import DAILY_VERIFIED, dag_tags, default_args
from backup_airflow.hooks import backup_config
from backup_airflow.retention_operators import (
    REPORT_KEY,
    MetricValuesStore,
    RetentionFailed,
    RetentionSweepOperator,
    merge_metric_values,
    pull_reports,
    resolve_dry_run,
    retention_metrics,
    select_sources,
    summarize_sweeps,
)
from backupkit import clock

log = logging.getLogger(__name__)

CONFIG = backup_config()  # parse time: the YAML only
SWEEP_TASK = "sweep"
DRY_RUN_KEY = "dry_run"  # XCom of the sources task: this run's mode
METRICS_JOB = "backup_retention_cleanup"

DOC_MD = """
# Retention cleanup (runbook: *Cleanup old backups*, done safely)

**When:** after every *successful* run of `backup_daily_verification` (scheduled on the asset
`x-backupkit://verification/daily`, which that DAG emits only when every check passed). A day whose
backups did not verify deletes nothing. One run at a time (`max_active_runs=1`: two sweeps of one
source at once are unsafe; the sweeps themselves run one at a time, `max_active_tis_per_dag=1`,
and each holds a lock on its source in the state directory, which `backupctl retention sweep` also
takes); no catch-up.

**Runs started by the asset apply the policy. Runs started by hand are dry runs unless you say
otherwise** (the decision is taken once per run from the run type, see below).

## What it deletes, and what it never deletes

Per source (`include/config/backups.yaml`, `retention:`), the local directory and the S3 prefix are
planned together with restic `forget` semantics: `keep_last`, `keep_hourly`, `keep_daily`,
`keep_weekly` (ISO weeks), `keep_monthly`, `keep_yearly`, `keep_within`; each rule keeps the newest
*verified* backup of each of its N most recent periods. A backup no rule keeps is deleted with its
companions (`.sha256`, `.manifest.json`), locally and in the bucket.

Never deleted:

* the newest backup of a source, and its newest backup that passed verification;
* a backup whose S3 copy is missing or does not match the verified SHA-256 (the local copy is
  kept until the copy is good);
* held backups (reported as **held**): on the configuration's `hold_list`, held with
  `backupctl retention hold` (a record under `holds/<source>/` in the bucket, read with one listing),
  or in use by a restore, an approval or a restore test (a lease). S3 object-lock retention is no
  hold: a dropped backup gets a delete marker and S3 keeps the locked version until its date;
* backups dated more than `future_tolerance_hours` (1 h) in the future: the sweep of that source
  is **refused**, naming them;
* unverified or failed backups whose period has no verified representative yet.

## Guard rails

A sweep that would delete more than `max_delete_fraction` (default 50%) of a source's backups,
leave fewer than `min_keep`, or that could not list everything, is **refused**: it deletes nothing
for that source, its `sweep` task fails (no retry) naming the rule that refused, and the run fails
(alert through the usual channels). Other sources are swept independently. Fix the policy or the
cause (a first run on a long backlog can need a higher `max_delete_fraction` once), then re-run.

## Tasks

| Task | What it does |
|---|---|
| `sources` | resolves the run: which sources (param `sources`, all when empty; an unknown name fails here, before anything is swept) and dry run or not |
| `sweep` (one per source, labelled with its name) | `RetentionSweepOperator`: lists, plans, checks holds and S3 copies, deletes in batches of up to 1000 keys, writes the audit log; returns the report |
| `report` | table of kept, held, deleted / would-delete, bytes freed, kept per rule, per source; **fails the run** when any sweep was refused or failed |
| `export_metrics` | applied runs only: `backup_retention_last_run_timestamp_seconds`, `backup_retention_deleted_backups`, `backup_retention_freed_bytes`, `backup_retention_held_backups`, `backup_retention_refused` (label `source`) to `<state_dir>/metrics/retention.prom` and to the Pushgateway when `metrics.pushgateway_url` is set. Dry runs export nothing, so they never overwrite what the last real sweep did |

`report` and `export_metrics` both run whatever happened upstream and are both leaves, so a failing
`report` fails the run.

## Reading the report

Open the `report` task's log. Columns: `STATUS` (`ok`, `REFUSED`: guard rail, nothing deleted;
`FAILED`: some deletions did not happen, the next run finishes them; `NO REPORT`: the sweep task
crashed, see its log), `TOTAL` backups seen, `KEPT`, `HELD`, `DELETED` and `FREED` (what this run
did), `WOULD DELETE` and `TO FREE` (what a dry run or a refused plan listed). Below the table:
how many backups each rule kept, then every problem. The `sweep [source]` task log lists each
deleted (or would-be deleted) backup with its reasons, the held and protected ones, and where the
audit records went. Per-backup detail without Airflow: `backupctl retention sweep --source NAME`
(dry run) or `backupctl retention plan --source NAME`.

## Dry run from the UI

*Trigger DAG* opens the form: **Dry run** is ticked by default: the run lists, plans and reports
what it would delete and changes nothing (no deletion, no audit record, no metrics). Untick it to
apply the policy by hand. **Sources**: pick some, or leave empty for all configured sources.
The decision, by run type: `asset_triggered` (after a daily verification) applies and ignores the
params; `manual` and every other run type follow the `dry_run` param (default true).

## Audit log

Every deletion is announced (`intent`, fsynced) before it happens and confirmed (`deleted` /
`failed`) after, with time, run id, artifact, S3 keys, local paths, size, SHA-256 and reasons:

* locally: `<state_dir>/audit/retention.jsonl` (the log of record, append-only);
* in the bucket: `audit/retention/<run_id>/<source>.jsonl` (one file per run and source, uploaded at
  the end of the sweep; one that failed to upload is uploaded by the next run).

Refusals are recorded too (`refused`). An interrupted run is safe to re-run or clear: the next
sweep finishes half-done deletions from the audit log and deletes nothing the plan keeps.
"""


@dag(
    dag_id="backup_retention_cleanup",
    schedule=[DAILY_VERIFIED],
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(CONFIG),
    tags=dag_tags("retention", "cleanup"),
    doc_md=DOC_MD,
    params={
        "dry_run": Param(
            True, type="boolean", title="Dry run",
            description="Ticked (default): only report what would be deleted; nothing is changed. Untick to "
                        "delete. Runs started by the daily verification's asset always apply the policy."),
        "sources": Param(
            [], type="array", items={"type": "string"}, uniqueItems=True, title="Sources",
            examples=[s.name for s in CONFIG.sources],
            description="Configured sources to sweep; empty: all of them. An unknown name fails the run "
                        "before anything is swept."),
    },
)
def backup_retention_cleanup():
    @task
    def sources(**context) -> list[str]:
        """This run's sources (map index i sweeps source i) and mode (XCom ``dry_run``), decided once
        so every sweep and the report agree."""
        config = backup_config()
        params, dag_run = context["params"], context["dag_run"]
        names = select_sources(config, params.get("sources"))
        dry_run = resolve_dry_run(dag_run.run_type, params.get("dry_run"))
        events = getattr(dag_run, "consumed_asset_events", None) or []
        trigger = f", after {len(events)} verification event(s)" if events else ""
        log.info("run type %s%s: %s of %s", getattr(dag_run.run_type, "value", dag_run.run_type), trigger,
                 "DRY RUN" if dry_run else "applying retention", ", ".join(names))
        context["ti"].xcom_push(key=DRY_RUN_KEY, value=dry_run)
        return names

    def run_mode(ti) -> bool | None:
        return ti.xcom_pull(task_ids="sources", key=DRY_RUN_KEY, default=None)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def report(source_names: list[str] | None, **context) -> dict:
        """The table of every sweep; fails the run (no retry) when any sweep was refused or failed."""
        ti = context["ti"]
        dry_run = run_mode(ti)
        if source_names is None or dry_run is None:
            raise RetentionFailed("the sources task failed: nothing was swept (see its log)")
        summary = summarize_sweeps(source_names, pull_reports(ti, SWEEP_TASK, source_names), dry_run)
        log.info("%s", summary["table"])
        if not summary["ok"]:
            ti.xcom_push(key=REPORT_KEY, value=summary)
            bad = [n for n, s in summary["sources"].items() if s["status"] != "ok"]
            raise RetentionFailed(f"retention: {len(bad)} of {len(source_names)} sweep(s) not done: "
                                  + "; ".join(f"{n} {summary['sources'][n]['status']}" for n in bad)
                                  + f"; first problem: {summary['problems'][0]['detail']}", summary["problems"])
        return summary

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def export_metrics(source_names: list[str] | None, **context) -> list[str]:
        """Gauges of an applied run, whatever the sweeps' outcome; dry runs publish nothing."""
        ti = context["ti"]
        dry_run = run_mode(ti)
        if source_names is None or dry_run is None:
            raise RetentionFailed("the sources task failed: no metrics to export")
        if dry_run:
            log.info("dry run: no metrics exported (they describe what retention did)")
            return []
        config = backup_config()
        store = MetricValuesStore(config.state.metrics_values("retention"))
        values = merge_metric_values(store.load(), source_names, pull_reports(ti, SWEEP_TASK, source_names),
                                     now=clock.now().timestamp(),
                                     configured=[s.name for s in config.sources])
        store.save(values)
        targets = retention_metrics(values).publish(job=METRICS_JOB, pushgateway_url=config.pushgateway_url,
                                                    textfile=config.state.metrics_textfile("retention"))
        log.info("retention metrics for %d sources published to %s", len(values), ", ".join(targets))
        return targets

    names = sources()
    # dry_run resolves (as a template field) to the boolean the sources task pushed; a missing
    # value fails the sweep instead of defaulting either way.
    # One sweep task instance at a time across every run of this DAG, on any worker: with
    # max_active_runs=1 and one map index per source, two sweeps of one source cannot overlap
    # even where the workers share no state directory (the sweep's SourceLock covers the CLI).
    sweeps = RetentionSweepOperator.partial(task_id=SWEEP_TASK, dry_run=names[DRY_RUN_KEY],
                                            max_active_tis_per_dag=1).expand(source_name=names)
    # Both leaves: the run's state comes from its leaf tasks, so a failing report must not sit
    # upstream of an all_done task that succeeds (the run would be marked success).
    sweeps >> report(names)
    sweeps >> export_metrics(names)


backup_retention_cleanup()
