"""Failure notifications: a Slack-compatible JSON webhook, email over SMTP, or a loud log line.

:func:`failure_callbacks` turns the ``alerting`` section of the backup configuration into the
list every task gets as ``on_failure_callback``. When no channel is configured the list holds a
callback that logs ``no alert channel configured: <dag>.<task> failed ...`` at ERROR, so a
failed verification is never a silent pass.

The message text is built by :mod:`backupkit.alerts` from a plain summary of the failure context
(:func:`failure_summary`), so every channel says the same thing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any, Callable, Mapping

from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import BaseHook, BaseNotifier
from airflow.sdk.log import mask_secret

from backupkit import alerts
from backupkit.config import Config, ConfigError

if TYPE_CHECKING:
    from airflow.sdk import Connection, Context

log = logging.getLogger(__name__)


def failure_summary(context: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-safe facts of a failure context that :mod:`backupkit.alerts` formats.

    Structured problems come from the exception when it carries them (``VerificationFailed``
    raised by the summary task has ``.problems``), so the alert lists every failed check
    rather than only the exception's first line.
    """
    ti = context.get("ti") or context.get("task_instance")
    exc = context.get("exception")
    summary: dict[str, Any] = {
        "dag_id": getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", None),
        "task_id": getattr(ti, "task_id", None) or getattr(context.get("task"), "task_id", None),
        "map_index": getattr(ti, "map_index", None),
        "run_id": getattr(ti, "run_id", None) or context.get("run_id"),
        "try_number": getattr(ti, "try_number", None),
        "logical_date": _iso(context.get("logical_date")),
        "exception": f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else exc,
        "log_url": None,
        "problems": [],
    }
    try:
        summary["log_url"] = ti.log_url if ti is not None else None
    except Exception:  # the URL is a convenience; never lose the alert over it
        summary["log_url"] = None
    problems = getattr(exc, "problems", None) or []
    summary["problems"] = [
        {"artifact": str(p.get("artifact", "")), "check": str(p.get("check", "")), "detail": str(p.get("detail", ""))}
        for p in problems if isinstance(p, Mapping)
    ]
    return summary


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def webhook_url(conn: Connection) -> str:
    """Where to POST, from an Airflow connection (the secret part stays in a masked field).

    Accepted shapes, first match wins:

    * extra ``{"webhook_url": "https://..."}`` (or ``"url"``);
    * host holding a base URL and password holding the secret path, as Slack's own
      connection does: host ``https://hooks.slack.com/services``, password ``T000/B000/XXXX``;
    * a URI connection ``AIRFLOW_CONN_X='https://hooks.example.com/path/token'`` (scheme in
      conn_type, path in schema); an HttpHook-style ``schema`` of ``http``/``https`` is the scheme.
    """
    extra = conn.extra_dejson or {}
    url = extra.get("webhook_url") or extra.get("url")
    if url:
        return str(url)
    host = (conn.host or "").strip()
    if not host:
        raise ValueError(f"webhook connection {conn.conn_id!r} has neither a host nor extra.webhook_url")
    path = conn.schema or ""
    if "://" in host:
        base = host.rstrip("/")
        if conn.port and base.count(":") < 2:
            base += f":{conn.port}"
    else:
        if path in ("http", "https"):
            scheme, path = path, ""
        else:
            scheme = "http" if conn.conn_type == "http" else "https"
        base = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    for part in (path, conn.password or ""):
        if part:
            base = f"{base}/{part.strip('/')}"
    return base


def webhook_secrets(url: str) -> tuple[str, list[str]]:
    """(``scheme://host[:port]``, the secret parts: the path, its segments, the query, the userinfo)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    found = [parts.path, parts.path.strip("/"), parts.query, parts.password or "", unquote(parts.path)]
    found += [seg for seg in parts.path.split("/") if len(seg) >= 4]
    return origin, [f for f in dict.fromkeys(found) if f and f != "/"]


def _scrub(text: str, secrets: list[str]) -> str:
    for fragment in sorted(secrets, key=len, reverse=True):
        text = text.replace(fragment, "***")
    return text


class JsonWebhookNotifier(BaseNotifier):
    """POST a Slack-compatible ``{"text": ...}`` JSON alert to the webhook of an Airflow connection.

    Works with Slack/Mattermost/Rocket.Chat incoming webhooks and any JSON receiver. Set
    ``include_details=True`` (or connection extra ``"include_details": true``) to add the
    structured summary under ``"backupkit"`` for receivers that route on fields.
    """

    # The message is built from the failure context, not from Jinja templates: file names and
    # log lines in problem details must never be interpreted as template code.
    template_fields = ()

    def __init__(self, *, webhook_conn_id: str, timeout: float = 10.0, include_details: bool | None = None,
                 retries: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.webhook_conn_id = webhook_conn_id
        self.timeout = timeout
        self.include_details = include_details
        self.retries = retries

    def build_request(self, context: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """(url, JSON body) for this failure; separate from sending so it can be inspected."""
        conn = BaseHook.get_connection(self.webhook_conn_id)
        include = self.include_details
        if include is None:
            include = bool((conn.extra_dejson or {}).get("include_details", False))
        return webhook_url(conn), alerts.webhook_payload(failure_summary(context), include_details=include)

    def notify(self, context: Context) -> None:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        url, payload = self.build_request(context)
        origin, secrets = webhook_secrets(url)
        for fragment in secrets:  # the token is the path: Airflow masks the password field, not the URL's path
            mask_secret(fragment)
        # Retry throttling and server errors (Slack answers 429 with Retry-After), POST included.
        retry = Retry(total=self.retries, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                      allowed_methods=None, respect_retry_after_header=True, raise_on_status=False)
        with requests.Session() as session:
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            try:
                response = session.post(url, json=payload, timeout=self.timeout)
            except requests.RequestException as exc:
                # requests names the URL (its path: the token) in its messages: say only what failed, and
                # drop the chained exception, which would carry it into the task log.
                raise RuntimeError(f"webhook {self.webhook_conn_id!r} at {origin} could not be reached: "
                                   f"{type(exc).__name__}") from None
        if response.status_code >= 400:
            raise RuntimeError(f"webhook {self.webhook_conn_id!r} at {origin} answered HTTP {response.status_code}: "
                               f"{_scrub(response.text[:200], secrets)}")
        log.info("alert sent to webhook connection %s (HTTP %s)", self.webhook_conn_id, response.status_code)

    async def async_notify(self, context: Context) -> None:
        """For Deadline Alerts run by the triggerer: the same POST, off the event loop."""
        await asyncio.to_thread(self.notify, context)


class BackupEmailNotifier(SmtpNotifier):
    """The provider's :class:`SmtpNotifier`, with subject and body from :mod:`backupkit.alerts`.

    Subject and body are set per failure inside :meth:`notify` (after the provider's template
    rendering), so problem details are never rendered as Jinja, and reset afterwards so one
    instance shared by many tasks never repeats a previous failure's text.
    """

    def notify(self, context: Context) -> None:
        if self.from_email is None:
            # The provider insists on a sender; fall back to the connection's login, then to a
            # recognisable local address, rather than losing the alert over a missing field.
            conn = BaseHook.get_connection(self.smtp_conn_id)
            self.from_email = ((conn.extra_dejson or {}).get("from_email") or (conn.login if "@" in (conn.login or "")
                               else None) or f"airflow-backups@{socket.getfqdn()}")
        summary = failure_summary(context)
        self.subject = alerts.email_subject(summary)
        self.html_content = alerts.email_html(summary)
        try:
            super().notify(context)
        finally:
            self.subject = self.html_content = None
        log.info("alert mailed to %s via connection %s", self.to, self.smtp_conn_id)


class UnalertedFailureLogger:
    """The callback used when no alert channel is configured: one clear ERROR line per failure."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path

    def __call__(self, context: Mapping[str, Any]) -> None:
        s = failure_summary(context)
        log.error(
            "no alert channel configured: %s failed (run %s, try %s): %s -- nobody was notified; set "
            "alerting.webhook_conn_id and/or alerting.smtp_conn_id with alerting.email_to in %s",
            alerts.task_label(s), s.get("run_id"), s.get("try_number"), s.get("exception") or "no exception",
            self.config_path,
        )

    def __repr__(self) -> str:
        return f"UnalertedFailureLogger({self.config_path!r})"


def failure_callbacks(config: Config) -> list[Callable[..., None]]:
    """The configured notifiers, or the loud log callback when there are none.

    Reads only the configuration (no connection lookup), so it is safe at DAG parse time;
    connections are resolved when a notification is sent.
    """
    a = config.alerting
    callbacks: list[Callable[..., None]] = []
    if a.webhook_conn_id:
        callbacks.append(JsonWebhookNotifier(webhook_conn_id=a.webhook_conn_id))
    if a.smtp_conn_id:
        if not a.email_to:
            raise ConfigError(config.path, "alerting.email_to", "is required when alerting.smtp_conn_id is set")
        callbacks.append(BackupEmailNotifier(to=list(a.email_to), smtp_conn_id=a.smtp_conn_id))
    elif a.email_to:
        raise ConfigError(config.path, "alerting.smtp_conn_id", "is required when alerting.email_to is set")
    if not callbacks:
        callbacks.append(UnalertedFailureLogger(str(config.path)))
    return callbacks


__all__ = ["JsonWebhookNotifier", "BackupEmailNotifier", "UnalertedFailureLogger", "failure_callbacks",
           "failure_summary", "webhook_url", "webhook_secrets"]
