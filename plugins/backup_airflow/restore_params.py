"""What the on-demand restore DAGs (database and files) share: the DAG settings, the form's
"which backup" and "reason" fields, reading the form into a request and checking it, and (for
``backup_restore``) the approver's text and the run's outcome.

One place so both forms offer the same choices, enforce the same minimum reason and record the
same "who and why" in the audit log.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

from airflow.sdk import Param

from backup_airflow.common import default_args
from backup_airflow.hooks import bucket
from backup_airflow.restore_operators import app_platform, triggered_by
from backupkit import clock
from backupkit.config import Config
from backupkit.restore.journal import RestoreJournal
from backupkit.restore.pipeline import new_database_name
from backupkit.restore.rollback import sagas
from backupkit.restore.selection import WHICH, SelectionError, resolve_request
from backupkit.restore.switch import plan_switch

MIN_REASON = 10
VALIDATE = "validate_request"
MODES = ("verify_only", "replace")


def on_demand_dag_args(config: Config) -> dict[str, Any]:
    """``@dag`` settings of a manually triggered restore: never scheduled, one run at a time, long tasks."""
    return dict(
        schedule=None,
        start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
        catchup=False,
        max_active_runs=1,
        default_args=default_args(config, execution_timeout=timedelta(hours=6)),
    )


def which_params(noun: str, *, section: str, key_help: str, before_help: str) -> dict[str, Param]:
    """The form's ``which``/``before``/``key`` fields choosing a backup (``noun``: "backup", "archive")."""
    return {
        "which": Param("latest", type="string", enum=list(WHICH), title=f"Which {noun}",
                       values_display={"latest": f"The newest {noun}", "latest_before": "The newest before a time",
                                       "key": "An exact S3 key"},
                       description="latest; latest_before (set 'Before'); or key (set 'S3 key').", section=section),
        "before": Param(None, type=["null", "string"], format="date-time", title="Before",
                        description=before_help, section=section),
        "key": Param(None, type=["null", "string"], maxLength=1024, title="S3 key", description=key_help,
                     section=section),
    }


def reason_param(description: str, *, section: str = "What") -> Param:
    """The mandatory reason, recorded in the audit log."""
    return Param(type="string", minLength=MIN_REASON, maxLength=2000, title="Reason", description=description,
                 section=section)


def read_request(context: Mapping[str, Any], fields: Iterable[str], list_field: str) -> dict[str, Any]:
    """The form's values as the request the tasks pass on, with who triggered it and the stripped reason."""
    params = context["params"]
    request = {k: params.get(k) for k in fields}
    request[list_field] = list(params.get(list_field) or [])
    request["reason"] = (params.get("reason") or "").strip()
    request["triggered_by"] = triggered_by(context)
    return request


def check_reason(request: Mapping[str, Any]) -> None:
    """Checked in the task as well as the form, so a short reason is refused (and audited) however the run started."""
    if len(request["reason"]) < MIN_REASON:
        raise SelectionError(f"give a reason of at least {MIN_REASON} characters")


def check_request(config: Config, request: dict) -> dict:
    """What a request adds once checked: the backup, where it is, the new database's name."""
    check_reason(request)
    if request["mode"] not in MODES:
        raise SelectionError(f"unknown mode {request['mode']!r}")
    ref = resolve_request(config, request["source"], which=request["which"], before=request["before"],
                          key=request["key"], bucket=bucket(config))
    out = {"backup": ref.name, "backup_time": ref.timestamp.isoformat(), "locations": ref.where(config.bucket)}
    if request["mode"] == "replace":
        source = config.source(request["source"])
        if not request["deployments"]:
            raise SelectionError("replace needs the deployments to scale (none given)")
        if not source.database or not source.conn_id:
            raise SelectionError(f"source {source.name!r} has no database/conn_id: cannot restore beside it")
        out["new_database"] = new_database_name(source, clock.now())
        # The platform and the setting to switch are checked now, before a database is restored.
        plan_switch(app_platform(config), namespace=request["namespace"], deployments=request["deployments"],
                    old_database=source.database, new_database=out["new_database"])
    return out


def approval_text(request: dict, restored: dict, plan: Any) -> str:
    return "\n".join([
        f"**Backup** `{request['backup']}` of `{request['source']}` was restored into the new database "
        f"`{restored['new_database']}` and verified ({restored['verified_rows']} rows in {restored['tables']} "
        f"tables, compared with {restored['compared_with']}).",
        "",
        f"**Requested by** {request['triggered_by']}: {request['reason']}",
        "",
        "**Approve to:**",
        *[f"1. {line}" for line in plan.describe()],
        "",
        "If any step after the scale-down fails (a timeout or a killed worker included), the previous setting "
        "and replica counts are put back.",
    ])


APPROVAL_OUTCOMES = {"approval_given": "approved", "approval_rejected": "rejected",
                     "approval_timed_out": "timed_out", "approval_refused": "refused"}


def approval_of(records: Iterable[Mapping[str, Any]], run_id: str) -> dict:
    """The run's last approval verdict from the restore journal (``ReplaceApprovalOperator`` writes it)."""
    last = None
    for rec in records:
        if rec.get("run_id") == run_id and rec.get("action") in APPROVAL_OUTCOMES:
            last = rec
    if last is None:
        return {}
    return {"verdict": APPROVAL_OUTCOMES[last["action"]], "answered_by": last.get("answered_by"),
            "approved_by": last.get("approved_by"), "detail": last.get("detail", "")}


def outcome_of(ti: Any, request: dict, run_id: str, config: Config) -> dict:
    """verified / failed (verify_only); switched / rolled_back / rollback_incomplete / rejected / timed_out /
    refused / failed (replace)."""
    if request["mode"] == "verify_only":
        result = ti.xcom_pull(task_ids="restore_verify", key="result")
        return {"outcome": "verified" if result and result.get("ok") else "failed", "result": result}
    restored = ti.xcom_pull(task_ids="restore_new_database")
    switched = ti.xcom_pull(task_ids="switch")
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[run_id]).get(run_id, {})
    journal = RestoreJournal(config.state_dir)
    saga = next((s for s in sagas(journal) if s.run_id == run_id), None)
    approval = approval_of(journal.records(request["source"]), run_id)
    if restored is None:
        outcome = "failed"
    elif switched is not None:
        outcome = "switched"
    elif saga is not None:
        outcome = {"rollback_done": "rolled_back"}.get(saga.last, "rollback_incomplete")
    elif approval.get("verdict") in ("rejected", "timed_out", "refused") and states.get("switch") != "success":
        outcome = approval["verdict"]  # nothing was switched: by the approver, by the clock, by four eyes
    else:
        outcome = "failed"
    return {"outcome": outcome, "new_database": (restored or {}).get("new_database"),
            "approved_by": approval.get("approved_by"), "answered_by": approval.get("answered_by"),
            "detail": approval.get("detail", ""), "changes": (switched or {}).get("changes", [])}


__all__ = ["MIN_REASON", "VALIDATE", "MODES", "check_reason", "check_request", "approval_text", "outcome_of",
           "approval_of",
           "on_demand_dag_args", "read_request", "reason_param", "which_params"]
