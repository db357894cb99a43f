"""Alert messages for failed backup jobs, built from a plain summary dict.

The Airflow layer (``backup_airflow.notifiers``) turns a task's failure context into the
summary; everything here is pure so the wording is tested without Airflow and is the same
for every channel (Slack-compatible webhook, email).

Summary keys (all optional except ``dag_id`` and ``task_id``)::

    dag_id, task_id, map_index, run_id, try_number, logical_date, exception, log_url,
    problems: [{"artifact", "check", "detail"}, ...]
"""

from __future__ import annotations

import html
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


def webhook_payload(summary: Mapping[str, Any], *, include_details: bool = False) -> dict[str, Any]:
    """Slack-compatible body (``{"text": ...}``, also accepted by Mattermost and Rocket.Chat).

    ``include_details`` adds the summary itself under ``"backupkit"`` for receivers that route
    on structured fields (generic JSON webhooks); Slack ignores it.
    """
    payload: dict[str, Any] = {"text": alert_text(summary)}
    if include_details:
        payload["backupkit"] = {k: v for k, v in summary.items() if _is_json_scalar_or_list(v)}
    return payload


def _is_json_scalar_or_list(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, list, dict))


def email_subject(summary: Mapping[str, Any]) -> str:
    n = len(summary.get("problems") or [])
    suffix = f" ({n} problem{'s' if n != 1 else ''})" if n else ""
    return f"[backup] {alert_title(summary)}{suffix}"


def email_html(summary: Mapping[str, Any]) -> str:
    """The same lines as the webhook text, escaped (problem details come from file names and logs)."""
    body = "<br>\n".join(html.escape(line) for line in alert_lines(summary))
    return f"<html><body><p style=\"font-family:monospace\">{body}</p></body></html>"


__all__ = ["task_label", "alert_title", "alert_lines", "alert_text", "webhook_payload", "email_subject",
           "email_html"]
