"""Alert messages for backup jobs, built from plain dicts: failures, resolves, approval requests.

The Airflow layer (``backup_airflow.notifiers``) turns a task's context into a summary and sends
the :class:`Message` to every configured channel; everything here is pure so the wording is tested
without Airflow and is the same for every channel (Slack, Slack-compatible webhook, email, PagerDuty).
Which alerts are sent at all (once per run, repeats held back) is :mod:`backupkit.alert_state`.

Summary keys (all optional except ``dag_id`` and ``task_id``)::

    dag_id, task_id, map_index, run_id, try_number, logical_date, exception, log_url,
    problems: [{"artifact", "check", "detail"}, ...]
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Mapping

# Slack shows up to 40k characters, but an alert that long is not read; the full table is in the log.
MAX_TEXT = 3500
MAX_PROBLEMS = 20


def task_label(summary: Mapping[str, Any]) -> str:
    """``dag.task`` or ``dag.task[3]`` for a mapped task instance."""
    label = f"{summary.get('dag_id') or '?'}.{summary.get('task_id') or '?'}"
    map_index = summary.get("map_index")
    if map_index is not None and map_index >= 0:
        label += f"[{map_index}]"
    return label


def alert_title(summary: Mapping[str, Any]) -> str:
    return f"Backup job failed: {task_label(summary)}"


def _problem_line(p: Mapping[str, Any]) -> str:
    detail = str(p.get("detail") or "").strip().replace("\n", " ")
    line = f"{p.get('artifact', '?')}: {p.get('check', '?')}"
    return f"{line}: {detail}" if detail else line


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def alert_lines(summary: Mapping[str, Any], *, max_problems: int = MAX_PROBLEMS) -> list[str]:
    """The message as lines: what failed, which run, why, every problem (up to a cap), the log link."""
    lines = [alert_title(summary)]
    run = [f"run {summary['run_id']}"] if summary.get("run_id") else []
    if summary.get("logical_date"):
        run.append(f"logical date {summary['logical_date']}")
    if summary.get("try_number") is not None:
        run.append(f"try {summary['try_number']}")
    if run:
        lines.append(", ".join(run))
    if summary.get("exception"):
        lines.append(f"Reason: {_clip(str(summary['exception']).strip(), 1000)}")
    problems = list(summary.get("problems") or [])
    if problems:
        lines.append(f"Problems ({len(problems)}):")
        lines.extend(f"- {_clip(_problem_line(p), 300)}" for p in problems[:max_problems])
        if len(problems) > max_problems:
            lines.append(f"- ... and {len(problems) - max_problems} more (see the task log)")
    if summary.get("log_url"):
        lines.append(f"Log: {summary['log_url']}")
    return lines


def alert_text(summary: Mapping[str, Any], *, max_chars: int = MAX_TEXT) -> str:
    return _clip("\n".join(alert_lines(summary)), max_chars)


@dataclass(frozen=True)
class Message:
    """One alert as every channel sends it: ``event`` is failure, resolve, approval or deadline."""

    event: str
    lines: tuple[str, ...]  # the first line is the title
    details: Mapping[str, Any] = field(default_factory=dict)
    dedup_key: str | None = None  # the alert's key (alert_state.AlertKey.id): a paging service's dedup key
    link: str | None = None

    @property
    def title(self) -> str:
        return self.lines[0]

    @property
    def text(self) -> str:
        return _clip("\n".join(self.lines), MAX_TEXT)

    @property
    def subject(self) -> str:
        n = len(self.details.get("problems") or []) if self.event == "failure" else 0
        return f"[backup] {self.title}" + (f" ({n} problem{'s' if n != 1 else ''})" if n else "")


def failure_message(summary: Mapping[str, Any], *, dedup_key: str | None = None) -> Message:
    return Message("failure", tuple(alert_lines(summary)), dict(summary), dedup_key, summary.get("log_url"))


def resolve_message(alert: Mapping[str, Any], *, log_url: str | None = None) -> Message:
    """The open alert ``alert`` (an ``AlertState`` record) passes again."""
    label = f"{alert.get('dag_id')}.{alert.get('check')}" + (f" ({alert['source']})" if alert.get("source") else "")
    lines = [f"Resolved: {label} passes again",
             f"run {alert.get('resolved_by_run')}; failing since {alert.get('since')} (run {alert.get('run_id')})"
             + (f", {alert['repeats']} repeated failure(s) held back" if alert.get("repeats") else ""),
             f"Was: {_clip(str(alert.get('last_reason') or alert.get('reason') or '?'), 500)}"]
    if log_url:
        lines.append(f"Log: {log_url}")
    return Message("resolve", tuple(lines), dict(alert), _alert_id(alert), log_url)


def _alert_id(alert: Mapping[str, Any]) -> str:
    return "/".join((str(alert.get("dag_id")), str(alert.get("source") or "*"), str(alert.get("check"))))


def approval_message(*, dag_id: str, run_id: str, subject: str, requested_by: str, reason: str,
                     approvers: str, timeout: str, link: str | None) -> Message:
    """A replace waits for a person: who asked, why, who may answer, until when, where."""
    lines = [f"Approval needed: {subject}", f"{dag_id} run {run_id}, requested by {requested_by}: {_clip(reason, 300)}",
             f"Who may approve: {approvers}; no answer within {timeout} rejects it (nothing is changed).",
             f"Required Actions: {link}" if link else "Open the run's Required Actions in the Airflow UI."]
    return Message("approval", tuple(lines), {"dag_id": dag_id, "run_id": run_id, "requested_by": requested_by},
                   None, link)


def webhook_payload(summary: Mapping[str, Any] | Message, *, include_details: bool = False) -> dict[str, Any]:
    """Slack-compatible body (``{"text": ...}``, also accepted by Mattermost and Rocket.Chat).

    ``include_details`` adds the summary itself under ``"backupkit"`` for receivers that route
    on structured fields (generic JSON webhooks); Slack ignores it.
    """
    message = summary if isinstance(summary, Message) else failure_message(summary)
    payload: dict[str, Any] = {"text": message.text}
    if include_details:
        payload["backupkit"] = {"event": message.event,
                                **{k: v for k, v in message.details.items() if _is_json_scalar_or_list(v)}}
        if message.dedup_key:
            payload["backupkit"]["alert_key"] = message.dedup_key
    return payload


def _is_json_scalar_or_list(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, list, dict))


def email_subject(summary: Mapping[str, Any] | Message) -> str:
    return (summary if isinstance(summary, Message) else failure_message(summary)).subject


def email_html(summary: Mapping[str, Any] | Message) -> str:
    """The same lines as the webhook text, escaped (problem details come from file names and logs)."""
    message = summary if isinstance(summary, Message) else failure_message(summary)
    body = "<br>\n".join(html.escape(line) for line in message.lines)
    return f"<html><body><p style=\"font-family:monospace\">{body}</p></body></html>"


__all__ = ["Message", "task_label", "alert_title", "alert_lines", "alert_text", "failure_message", "resolve_message",
           "approval_message", "webhook_payload", "email_subject", "email_html"]
