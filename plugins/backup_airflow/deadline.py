"""Deadline Alert callback: alert when a backup DAG run has not finished in time.

Airflow 3 removed SLAs; a ``DeadlineAlert`` on the DAG replaces them. When the deadline passes
with the run unfinished, the scheduler queues :func:`deadline_missed` on the triggerer
(``AsyncCallback``), so it must stay a module-level coroutine importable there (plugins/ is on
the triggerer's path). It receives the ``kwargs`` given in the DAG plus a small ``context``
built by the scheduler: ``{"dag_run": <DAGRunResponse as JSON>, "deadline": {"id", "deadline_time"}}``.

The alert goes to the channels :func:`~backup_airflow.notifiers.alert_channels` chose (the same
as task failures): webhook and Slack through their notifiers' ``send`` (same URL resolution,
retries, errors without the token), email through the SMTP provider's native async path, or one
``no alert channel configured`` ERROR line when none is configured, so a missed deadline is
never silent. PagerDuty is not paged for a deadline (its channel takes failures and resolves). A run that had already ended (failed) before its deadline is not alerted again:
Airflow 3.3 keeps such a run's deadline and fires it anyway (apache/airflow#60927).
"""

from __future__ import annotations

import asyncio
import html
import logging
import socket
from datetime import datetime
from typing import Any, Mapping

from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import BaseHook

from backup_airflow.notifiers import alert_channels, channel_notifiers
from backupkit import alerts
from backupkit.config import Config

log = logging.getLogger(__name__)


def deadline_kwargs(config: Config) -> dict[str, Any]:
    """The ``AsyncCallback`` kwargs for a DAG: the alert channels, as plain JSON.

    Read at parse time like :func:`~backup_airflow.notifiers.failure_callbacks` (configuration
    only, no connection lookup); the connections themselves are resolved when the alert is sent.
    """
    return {"channels": alert_channels(config), "config_path": str(config.path)}


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def finished_before_deadline(summary: Mapping[str, Any]) -> bool:
    """True when the run had already ended when its deadline passed: nothing was missed.

    Airflow 3.3 prunes a run's deadlines only when it succeeds, so a run that *failed* before
    08:30 still fires its deadline at 08:30 (apache/airflow#60927); its failure was already
    alerted by the task callbacks.
    """
    end, deadline = _as_datetime(summary.get("end_date")), _as_datetime(summary.get("deadline_time"))
    return end is not None and deadline is not None and end <= deadline


def deadline_summary(context: Mapping[str, Any] | None) -> dict[str, Any]:
    """The JSON-safe facts of a missed deadline, from the scheduler's simple callback context."""
    context = context or {}
    run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    return {
        "dag_id": run.get("dag_id"),
        "run_id": run.get("dag_run_id") or run.get("run_id"),
        "state": run.get("state"),
        "logical_date": _iso(run.get("logical_date")),
        "queued_at": _iso(run.get("queued_at")),
        "start_date": _iso(run.get("start_date")),
        "end_date": _iso(run.get("end_date")),
        "deadline_time": _iso(deadline.get("deadline_time")),
        "deadline_id": deadline.get("id"),
    }


def deadline_title(summary: Mapping[str, Any]) -> str:
    return (f"Backup job missed its deadline: {summary.get('dag_id') or '?'} had not finished by "
            f"{summary.get('deadline_time') or 'its deadline'}")


def deadline_lines(summary: Mapping[str, Any]) -> list[str]:
    """The message as lines: which run, its state and times, what to do."""
    lines = [deadline_title(summary)]
    facts = [f"run {summary['run_id']}"] if summary.get("run_id") else []
    for key, label in (("state", "state"), ("queued_at", "queued"), ("start_date", "started")):
        if summary.get(key):
            facts.append(f"{label} {summary[key]}")
    if facts:
        lines.append(", ".join(facts))
    lines.append("The verdict on last night's backups is not in yet: a check is slow or stuck (a long "
                 "pg_restore, an unreachable S3 endpoint, no free worker). Open the run in the Airflow UI.")
    return lines


def deadline_text(summary: Mapping[str, Any]) -> str:
    return "\n".join(deadline_lines(summary))


def deadline_message(summary: Mapping[str, Any]) -> alerts.Message:
    return alerts.Message("deadline", tuple(deadline_lines(summary)), {"event": "deadline_missed", **summary})


async def _from_email(smtp_conn_id: str) -> str:
    """Sender as :class:`~backup_airflow.notifiers.BackupEmailNotifier` picks it: never lose the alert over it."""
    conn = await BaseHook.aget_connection(smtp_conn_id)
    extra = conn.extra_dejson or {}
    login = conn.login or ""
    return extra.get("from_email") or (login if "@" in login else None) or f"airflow-backups@{socket.getfqdn()}"


async def _send(sender: Any, context: Mapping[str, Any]) -> str:
    """A chat channel's ``send`` off the event loop (its connection lookup and HTTP are blocking)."""
    await asyncio.to_thread(sender.send, deadline_message(deadline_summary(context)), dict(context))
    return f"{sender.channel}:{getattr(sender, 'webhook_conn_id', None) or getattr(sender, 'slack_conn_id', '')}"


async def _send_email(conn_id: str, to: list[str], context: Mapping[str, Any]) -> str:
    summary = deadline_summary(context)
    body = "<br>\n".join(html.escape(line) for line in deadline_lines(summary))
    notifier = SmtpNotifier(
        to=to, smtp_conn_id=conn_id, from_email=await _from_email(conn_id),
        subject=f"[backup] {deadline_title(summary)}",
        html_content=f"<html><body><p style=\"font-family:monospace\">{body}</p></body></html>",
    )
    # async_notify directly (not ``await notifier``): no Jinja rendering of the message text.
    await notifier.async_notify(dict(context))
    log.info("deadline alert mailed to %s via connection %s", to, conn_id)
    return f"email:{conn_id}"


async def deadline_missed(*, channels: list[Mapping[str, Any]] = (), config_path: str | None = None,
                          context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Send the missed-deadline alert on every configured channel (run by the triggerer).

    Channels are sent concurrently and independently: one failing (a wrong webhook URL) does not
    stop the other; any failure is raised afterwards so the callback is marked failed in Airflow.
    Returns a JSON-safe record of what was sent (the callback's result).
    """
    context = dict(context or {})
    summary = deadline_summary(context)
    if finished_before_deadline(summary):
        log.info("%s run %s ended (%s) at %s, before its deadline %s: no deadline alert (a failure was "
                 "alerted by the task callbacks)", summary.get("dag_id"), summary.get("run_id"),
                 summary.get("state"), summary.get("end_date"), summary.get("deadline_time"))
        return {"sent": [], "skipped": "finished before the deadline", "summary": summary}
    sends = []
    for channel, sender in zip(channels, channel_notifiers(channels)):
        if channel["kind"] == "email":
            sends.append(_send_email(channel["conn_id"], list(channel["to"]), context))
        elif "deadline" in getattr(sender, "events", ("deadline",)):
            sends.append(_send(sender, context))
    if not sends:
        log.error(
            "no alert channel configured: %s run %s missed its deadline (%s, state %s) -- nobody was notified; "
            "set alerting.webhook_conn_id, alerting.slack_conn_id and/or alerting.smtp_conn_id with "
            "alerting.email_to in %s",
            summary.get("dag_id") or "?", summary.get("run_id"), summary.get("deadline_time"),
            summary.get("state"), config_path,
        )
        return {"sent": [], "summary": summary}
    results = await asyncio.gather(*sends, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    sent = [r for r in results if not isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"deadline alert for {summary.get('dag_id')} run {summary.get('run_id')} failed on "
                           f"{len(failed)} channel(s) (sent: {sent or 'none'}): "
                           + "; ".join(f"{type(e).__name__}: {e}" for e in failed)) from failed[0]
    return {"sent": sent, "summary": summary}


__all__ = ["deadline_missed", "deadline_kwargs", "deadline_summary", "deadline_lines", "deadline_text",
           "finished_before_deadline", "deadline_message"]
