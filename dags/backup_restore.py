"""On-demand database restore from the Airflow UI: verify a backup, or replace the application's
database with it -- reversibly, after a human approval.

Parse time reads only the configuration file (the form's choices and defaults).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import Param, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException

from backup_airflow.approval import ReplaceApprovalOperator
from backup_airflow.common import RequestRejected, dag_tags
from backup_airflow.hooks import backup_config, bucket
from backup_airflow.notifiers import alert_channels
from backup_airflow.restore_operators import (
    FinishRollbackOperator,
    ScratchRestoreOperator,
    SwitchDatabaseOperator,
    app_platform,
    lease_backups,
    live_counts_for,
    release_leases,
    restore_lock,
    server_target,
)
from backup_airflow.restore_params import (MODES, VALIDATE, approval_text, check_request, on_demand_dag_args,
                                            outcome_of, read_request, reason_param, which_params)
from backupkit.config import ConfigError
from backupkit.restore.database import RestoreFailed
from backupkit.restore.journal import RestoreJournal
from backupkit.restore.pipeline import restore_into_new_database
from backupkit.restore.scratch import run_scratch_dir
from backupkit.restore.selection import SelectionError, restorable
from backupkit.restore.switch import plan_switch

log = logging.getLogger(__name__)

CONFIG = backup_config()  # parse time: the YAML only (choices and defaults of the form)
K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DATABASES = restorable(CONFIG, "database") or ["(no database configured)"]
# The form offers only the platform the configuration names, and replace only when it names
# deployments to switch.
PLATFORM = {"kubernetes": "Kubernetes", "local": "the local platform (processes on this machine)"}[
    CONFIG.restore.app.platform]
_OFFERED = MODES if CONFIG.restore.app.deployments else MODES[:1]
# The run's longest path: restore, waiting for approval (restore.approval_timeout), switch.
LEASE_HOURS = CONFIG.restore.approval_timeout_seconds / 3600 + 2.0
SWITCH_TIMEOUT = timedelta(seconds=max(1800, 4 * CONFIG.restore.app.rollout_timeout_seconds))

DOC_MD = """
# Restore a database backup (on demand)

Trigger with the form. **verify_only** restores the chosen backup into a throwaway scratch
database, verifies it (row counts against the backup's manifest, key tables, assertions) and
tears it down: nothing else changes. **replace** follows the runbook's *Emergency Restore*, made
reversible:

0. `recover_unfinished` first finishes any replace an earlier run left half done (its switch was
   killed and its rollback never completed): the application goes back on its old database with
   its replicas before anything new starts. If that cannot be done, the run stops here.
1. `validate_request` checks the form before anything changes: unknown database, no backup
   before the given time, a malformed key or one outside the source's S3 prefix fail here with
   a message saying why. The chosen backup is held from retention until the run ends.
2. `restore_new_database` restores into a **new** database on the application's server
   (`<db>_restored_<UTC time>`, through the source's connection, as a role of its own that is
   not a superuser) and verifies it while the application keeps running on the old one.
3. `plan_switch` reads the deployments' replica counts and database setting (no change), and
   `approve_switch` waits for one of the approvers (`restore.approvers`) to **Approve** in *Required
   Actions*, showing exactly what will change (passwords never shown); the request is announced on
   the alert channels with a link. With `restore.four_eyes` the requester cannot approve: such an
   approval is refused and the switch does not run. Reject, or no answer within
   `restore.approval_timeout` (default 4h), changes nothing.
4. `switch_database` writes the plan to the restore journal, then each step before taking it:
   scale the deployments to 0, point the setting (`DATABASE_URL` env var, or a Secret key:
   `restore.app`) at the new database, scale back to the recorded counts, health checks (ready
   pods; `restore.app.health_url`). **On any failure -- a timeout or a kill included -- the previous
   setting and replica counts are put back.** The old database is never dropped.
5. `rollback` (runs whatever happened before it, with its own retries) reads the journal and
   finishes any rollback the switch could not: settings first, replicas only on a restored setting,
   every step retried with backoff.
6. `finish` records the outcome and fails the run unless the restore did what was asked (or was
   rejected by the approver, or not answered in time). One alert per failed run; an invalid request
   or a refused approval is shown in the run, not paged.

Every step is in the restore journal (`<state_dir>/audit/restore.jsonl`): who triggered it, who
approved or rejected it, the reason, the backup, what changed, each saga step (docs/restore.md).

## When it fails

* `recover_unfinished` / `rollback`: the message says exactly what state the application is left
  in (replicas per deployment, database per setting) and what could not be undone. A setting that
  could not be restored leaves the application scaled down on purpose: fix the setting by hand
  (`kubectl set env`), then rerun or scale up (`kubectl scale`).
* `validate_request`: the message says what is wrong with the form; nothing was changed.
* `restore_new_database`: the backup did not restore or verify; the new database was dropped,
  the application was never touched. Try the previous backup (`latest_before`).
* `switch_database`: read the message: "rolled back" means the application runs on the old
  database again with its previous replica counts; "ROLLBACK INCOMPLETE" is finished by `rollback`
  (by hand: `kubectl scale`, `kubectl set env`; on the local platform, `replicas` and `env` in
  `<control_dir>/<namespace>/<deployment>/spec.json`).
* A platform that is not set up (no Kubernetes client, no local control directory) fails
  `validate_request` at once, without retries, before anything is restored.
"""

PARAMS = {
    "source": Param(_DATABASES[0], type="string", enum=_DATABASES, title="Database",
                    description="The configured database source whose backup is restored.", section="Backup"),
    **which_params("backup", section="Backup",
                   before_help="With 'latest_before': restore the newest backup taken before this time "
                               "(ISO 8601; UTC when no zone is given).",
                   key_help="With 'key': the backup's key in the bucket, e.g. "
                            "database/trixtech_20250301_020000.dump (must be under the source's prefix)."),
    "mode": Param("verify_only", type="string", enum=list(_OFFERED), title="Mode",
                  values_display={"verify_only": "Verify only (scratch database, nothing changes)",
                                  "replace": f"Replace the application's database on {PLATFORM} (asks for approval)"},
                  description="verify_only restores into a throwaway database; replace restores into a new "
                              f"database and, after approval, switches the application on {PLATFORM} to it."
                              + ("" if len(_OFFERED) > 1 else " (replace is not offered: restore.app.deployments "
                                                              "is empty)"), section="What"),
    "namespace": Param(CONFIG.restore.app.namespace, type="string", pattern=K8S_NAME, maxLength=63,
                       title="Kubernetes namespace" if CONFIG.restore.app.platform == "kubernetes" else "Namespace",
                       description=f"replace only: namespace of the deployments on {PLATFORM}.", section="What"),
    "deployments": Param(list(CONFIG.restore.app.deployments), type="array", uniqueItems=True,
                         items={"type": "string", "pattern": K8S_NAME, "maxLength": 63},
                         title="Deployments",
                         description=f"replace only: deployments on {PLATFORM} to scale down, switch and scale "
                                     "back up.", section="What"),
    "target_time": Param(None, type=["null", "string"], format="date-time", title="Point in time (optional)",
                         description="verify_only: restore the source's WAL archive (base backup + replay) to this "
                                     "time (ISO 8601 with a zone) into a scratch server paused there, instead of "
                                     "a dump. Must lie inside the window the daily verification found.",
                         section="Point in time"),
    "target_timeline": Param("latest", type="string", pattern=r"^(latest|[1-9][0-9]{0,9})$", title="Target timeline",
                             description="With a point in time: recovery_target_timeline ('latest' or a number).",
                             section="Point in time"),
    "reason": reason_param("Why this restore is run (incident or ticket); recorded in the audit log."),
}


def _request(ti) -> dict:
    return ti.xcom_pull(task_ids=VALIDATE)


def _audit(request: dict, context, action: str, **fields) -> None:
    RestoreJournal(backup_config().state_dir).append(
        run_id=context["run_id"], source=request["source"], action=action, triggered_by=request["triggered_by"],
        reason=request["reason"], backup=request.get("backup"), mode=request.get("mode"), **fields)


@dag(
    dag_id="backup_restore",
    **on_demand_dag_args(CONFIG),
    params=PARAMS,
    tags=dag_tags("restore", "on-demand"),
    doc_md=DOC_MD,
    render_template_as_native_obj=False,
)
def backup_restore():
    recover = FinishRollbackOperator(task_id="recover_unfinished", scope="earlier_runs")

    @task(task_id=VALIDATE, retries=0)
    def validate_request(**context) -> dict:
        """Every check that needs no change, before any change: fail here with a clear message."""
        config = backup_config()
        request = read_request(context, ("source", "which", "before", "key", "mode", "namespace", "target_time",
                                         "target_timeline"), "deployments")
        try:
            request.update(check_request(config, request))
            if request.get("target_time"):
                from backupkit.restore.pitr import check_pitr_request

                request.update(check_pitr_request(config, request))
        except (SelectionError, ConfigError, ValueError) as exc:
            RestoreJournal(config.state_dir).append(
                run_id=context["run_id"], source=str(request["source"]), action="restore_refused",
                triggered_by=request["triggered_by"], reason=request["reason"], detail=str(exc), mode=request["mode"])
            raise RequestRejected(f"invalid restore request (nothing was changed): {exc}") from exc
        lease_backups(config, context["run_id"], [(request["source"], request["backup"])],
                      purpose=f"restore ({request['mode']})", hours=LEASE_HOURS)
        log.info("restore of %s requested by %s (%s): %s", request["backup"], request["triggered_by"],
                 request["mode"], request["reason"])
        _audit(request, context, "restore_requested", locations=request["locations"],
               new_database=request.get("new_database"))
        return request

    @task.branch
    def choose_mode(request: dict) -> str:
        if request.get("target_time"):
            return "restore_to_time"
        return "restore_verify" if request["mode"] == "verify_only" else "restore_new_database"

    @task(retries=0)
    def restore_to_time(request: dict, **context) -> dict:
        """Base backup + WAL replay to the target time on a scratch server, paused there, checked, torn down."""
        from backupkit.restore.pitr import PitrTarget, database_answers, parse_target_time, pitr_restore

        config = backup_config()
        target = PitrTarget(parse_target_time(request["target_time"]), request["target_timeline"], action="pause")
        with restore_lock(config, request["wal_source"], context["run_id"]):
            result = pitr_restore(config, request["wal_source"], target,
                                  checks=database_answers(config.source(request["source"]).database),
                                  work_root=run_scratch_dir(config, context["run_id"]),
                                  bucket=bucket(config), run_id=context["run_id"])
        context["ti"].xcom_push(key="result", value=result)
        _audit(request, context, "restore_verified" if result["ok"] else "restore_failed",
               detail=f"point in time {request['target_time']} from {result['backup']}: "
                      + ("; ".join(p["detail"] for p in result["problems"])[:2000] or "reached and verified"))
        if not result["ok"]:
            raise AirflowFailException(f"point-in-time restore to {request['target_time']} failed: "
                                       + "; ".join(f"{p['check']}: {p['detail']}" for p in result["problems"]))
        return result

    restore_verify = ScratchRestoreOperator(
        task_id="restore_verify", role="verify_only", map_index_template=None,
        source_name="{{ ti.xcom_pull(task_ids='validate_request')['source'] }}",
        backup="{{ ti.xcom_pull(task_ids='validate_request')['backup'] }}",
    )

    @task(retries=0)
    def restore_new_database(request: dict, **context) -> dict:
        """Restore into a new database beside the live one and verify it; the app keeps running."""
        config = backup_config()
        source = config.source(request["source"])
        try:
            with restore_lock(config, source.name, context["run_id"]):
                result = restore_into_new_database(config, source.name, request["backup"],
                                                   server=server_target(source.conn_id),
                                                   new_database=request["new_database"], bucket=bucket(config),
                                                   live_counts=live_counts_for(source),
                                                   work_dir=run_scratch_dir(config, context["run_id"]))
        except (RestoreFailed, SelectionError) as exc:
            _audit(request, context, "restore_failed", detail=str(exc)[:2000],
                   changes=[f"nothing: database {request['new_database']} was not kept"])
            raise AirflowFailException(str(exc)) from exc
        _audit(request, context, "restore_verified", new_database=result["new_database"],
               changes=[f"created database {result['new_database']} on {result['server']} from {result['location']}"],
               verified_rows=result["verified_rows"], tables=result["tables"])
        return result

    @task(task_id="plan_switch", retries=0)
    def plan_switch_task(request: dict, restored: dict) -> dict:
        """What the switch will change, read now (changes nothing); shown to the approver."""
        config = backup_config()
        source = config.source(request["source"])
        try:
            plan = plan_switch(app_platform(config), namespace=request["namespace"],
                               deployments=request["deployments"], old_database=source.database,
                               new_database=restored["new_database"])
        except ValueError as exc:  # the platform's setting changed since validate_request
            raise AirflowFailException(f"cannot plan the switch (nothing was changed; database "
                                       f"{restored['new_database']} stays for inspection): {exc}") from exc
        return {"plan": plan.to_dict(), "changes": plan.describe(), "body": approval_text(request, restored, plan)}

    approve = ReplaceApprovalOperator(
        task_id="approve_switch", config=CONFIG, request_task_id=VALIDATE, channels=alert_channels(CONFIG),
        subject="Switch {{ ti.xcom_pull(task_ids='validate_request')['source'] }} to backup "
                "{{ ti.xcom_pull(task_ids='validate_request')['backup'] }}?",
        body="{{ ti.xcom_pull(task_ids='plan_switch')['body'] }}",
        retries=0,
    )

    switched = SwitchDatabaseOperator(task_id="switch", request_task_id=VALIDATE,
                                      restored_task_id="restore_new_database", approval_task_id="approve_switch",
                                      retries=0, execution_timeout=SWITCH_TIMEOUT)
    rollback = FinishRollbackOperator(task_id="rollback", scope="this_run", trigger_rule=TriggerRule.ALL_DONE,
                                      retries=3, retry_delay=timedelta(minutes=1))

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=0)
    def finish(**context) -> dict:
        """The outcome in the journal; the backup's lease released; the run fails unless the restore did
        what was asked."""
        ti, config = context["ti"], backup_config()
        release_leases(config, context["run_id"])
        request = _request(ti)
        if request is None:
            raise RequestRejected("the request was invalid or could not be checked: nothing was changed "
                                  "(see validate_request)")
        summary = outcome_of(ti, request, context["run_id"], config)
        if request.get("target_time"):  # the point-in-time branch ran instead of restore_verify
            result = ti.xcom_pull(task_ids="restore_to_time", key="result")
            summary = {"outcome": "verified" if result and result.get("ok") else "failed", "result": result}
        _audit(request, context, "restore_finished", outcome=summary["outcome"], changes=summary.get("changes", []),
               approved_by=summary.get("approved_by"), answered_by=summary.get("answered_by"))
        log.info("restore of %s (%s): %s", request["backup"], request["mode"], summary["outcome"])
        if summary["outcome"] == "refused":
            raise RequestRejected(f"restore of {request['backup']}: the approval was refused ({summary['detail']}); "
                                  "nothing was changed")
        if summary["outcome"] not in ("verified", "switched", "rejected", "timed_out"):
            raise AirflowFailException(f"restore of {request['backup']} ({request['mode']}): {summary['outcome']}; "
                                       "see the failed task above")
        return summary

    request = validate_request()
    recover >> request
    restored = restore_new_database(request)
    branch = choose_mode(request)
    to_time = restore_to_time(request)
    branch >> [restore_verify, restored, to_time]
    plan = plan_switch_task(request, restored)
    plan >> approve >> switched >> rollback
    # finish is the only leaf: the run's state is its verdict. It must not be a direct
    # downstream of approve_switch (a rejection skips those).
    [restore_verify, rollback, to_time] >> finish()


backup_restore()
