"""What every backup DAG shares: default_args, tags, the failure exception, the verification asset.

Keeping these in one place is what lets tests/test_dag_integrity.py hold every DAG (present and
future) to the same rules: owner, tags, retries and a failure callback on every task.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Iterable, Mapping

from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException

from backup_airflow.notifiers import failure_callbacks, success_callbacks
from backupkit.config import Config

OWNER = "devops"
BASE_TAGS = ("backups", "trixtech")

# Emitted when a daily verification run finds no problem; the retention DAG is scheduled on it,
# so nothing is ever deleted on a day whose backups did not verify. The "x-" scheme is Airflow's
# private-scheme convention: such URIs are not normalised by a provider, so creating the Asset
# does not make every DAG file load every provider's URI handlers (about 0.2 s a file).
DAILY_VERIFIED = Asset(name="backup_daily_verified", uri="x-backupkit://verification/daily")


class VerificationFailed(AirflowFailException):
    """Checks found problems: fail now (retrying cannot fix a damaged backup) and let callbacks alert.

    ``problems`` (result dicts) travels with the exception so notifiers can list every failed
    check in the alert, not only the message.
    """

    def __init__(self, message: str, problems: Iterable[Mapping[str, Any]] = ()):
        super().__init__(message)
        self.problems = [dict(p) for p in problems]


class RequestRejected(AirflowFailException):
    """A request (the trigger form's values) that cannot be carried out: the requester's to fix, shown in
    the run and its audit record, never paged (``page = False`` is what the failure callback reads)."""

    page = False


def dag_tags(*extra: str) -> list[str]:
    return [*BASE_TAGS, *extra]


def default_args(config: Config, *, retries: int = 2, retry_delay: timedelta = timedelta(minutes=5),
                 execution_timeout: timedelta | None = timedelta(hours=2), **overrides: Any) -> dict[str, Any]:
    """Task defaults for a backup DAG.

    Checks are idempotent, so transient trouble (S3 throttling, a busy disk) is retried;
    problems found in the backups themselves raise :class:`VerificationFailed`, which is not
    retried. ``execution_timeout`` stops a hung ``pg_restore`` from holding a worker slot forever.
    """
    args: dict[str, Any] = {
        "owner": OWNER,
        "depends_on_past": False,
        "retries": retries,
        "retry_delay": retry_delay,
        "execution_timeout": execution_timeout,
        "on_failure_callback": failure_callbacks(config),
        "on_success_callback": success_callbacks(config),
    }
    args.update(overrides)
    return args


def triggered_by(context: Mapping[str, Any]) -> str:
    """Who started this run: the UI/API user, else ``requested_by`` in the run's conf, else its type."""
    dr = context.get("dag_run")
    user = getattr(dr, "triggering_user_name", None)
    conf = getattr(dr, "conf", None) or {}
    if user:
        return str(user)
    if conf.get("requested_by"):
        return str(conf["requested_by"])
    return f"unknown ({getattr(dr, 'run_type', 'run')})"


__all__ = ["triggered_by", "OWNER", "BASE_TAGS", "DAILY_VERIFIED", "VerificationFailed", "RequestRejected", "dag_tags", "default_args"]
