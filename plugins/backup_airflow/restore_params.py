"""What the on-demand restore DAGs (database and files) share: the DAG settings, the form's
"which backup" and "reason" fields, and reading the form into a request.

One place so both forms offer the same choices, enforce the same minimum reason and record the
same "who and why" in the audit log.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

from airflow.sdk import Param

from backup_airflow.common import default_args
from backup_airflow.restore_operators import triggered_by
from backupkit.config import Config
from backupkit.restore.selection import WHICH, SelectionError

MIN_REASON = 10
VALIDATE = "validate_request"


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


__all__ = ["MIN_REASON", "VALIDATE", "check_reason", "on_demand_dag_args", "read_request", "reason_param",
           "which_params"]
