"""Alerts: the channels chosen once from the configuration, and who pages, when.

:func:`alert_channels` reads the ``alerting`` section -- the one place channels are chosen; task
failure callbacks, success (resolve) callbacks, the approval request and the deadline alert
(:mod:`backup_airflow.deadline`) all send through :func:`channel_notifiers` of that list:
the Slack provider's webhook notifier, a Slack-compatible JSON webhook (Mattermost, Rocket.Chat,
any receiver), email over SMTP, and PagerDuty's Events API through its provider (failures and
resolves only: an approval request or a deadline is not an incident to page on).

:class:`PageOnce` (every task's ``on_failure_callback``) sends one alert per failed run, keyed by
DAG, source and check, holds back repeats of an open alert and never pages a rejected request
(:class:`~backup_airflow.common.RequestRejected`: shown in the run, the requester's to fix);
:class:`ResolveOnPass` (``on_success_callback``) sends the resolve when the check passes again
(:mod:`backupkit.alert_state`). With no channel configured a failure logs
``no alert channel configured: <dag>.<task> failed ...`` at ERROR, never a silent pass.
Message texts come from :mod:`backupkit.alerts`, so every channel says the same thing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import BaseHook, BaseNotifier
from airflow.sdk.log import mask_secret

from backupkit import alerts, clock
from backupkit.alert_state import AlertKey, AlertState
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
    channel = "webhook"

    def __init__(self, *, webhook_conn_id: str, timeout: float = 10.0, include_details: bool | None = None,
                 retries: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.webhook_conn_id = webhook_conn_id
        self.timeout = timeout
        self.include_details = include_details
        self.retries = retries

    def build_request(self, message: alerts.Message | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """(url, JSON body) for a message (or a failure context); separate from sending so it can be inspected."""
        if not isinstance(message, alerts.Message):
            message = alerts.failure_message(failure_summary(message))
        conn = BaseHook.get_connection(self.webhook_conn_id)
        include = self.include_details
        if include is None:
            include = bool((conn.extra_dejson or {}).get("include_details", False))
        return webhook_url(conn), alerts.webhook_payload(message, include_details=include)

    def notify(self, context: Context) -> None:
        self.send(alerts.failure_message(failure_summary(context)), context)

    def send(self, message: alerts.Message, context: Mapping[str, Any] | None = None) -> None:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        url, payload = self.build_request(message)
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
        log.info("%s sent to webhook connection %s (HTTP %s)", message.event, self.webhook_conn_id,
                 response.status_code)

    async def async_notify(self, context: Context) -> None:
        """For Deadline Alerts run by the triggerer: the same POST, off the event loop."""
        await asyncio.to_thread(self.notify, context)


class SlackAlertNotifier(BaseNotifier):
    """The Slack provider's incoming webhook (``slackwebhook`` connection: host and token), our text.

    The provider's ``SlackWebhookNotifier`` renders its text as Jinja; ours sends the message as
    written (problem details come from file names and logs) and keeps the token out of errors.
    """

    template_fields = ()
    channel = "slack"

    def __init__(self, *, slack_conn_id: str, timeout: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slack_conn_id, self.timeout = slack_conn_id, timeout

    def notify(self, context: Context) -> None:
        self.send(alerts.failure_message(failure_summary(context)), context)

    def send(self, message: alerts.Message, context: Mapping[str, Any] | None = None) -> None:
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

        conn = BaseHook.get_connection(self.slack_conn_id)
        secrets = [s for s in (conn.password or "", *(conn.password or "").split("/")) if len(s) >= 4]
        for fragment in secrets:
            mask_secret(fragment)
        try:
            response = SlackWebhookHook(slack_webhook_conn_id=self.slack_conn_id, timeout=self.timeout).send(
                text=message.text)
        except Exception as exc:  # the provider's errors may carry the URL, whose path is the token
            raise RuntimeError(f"Slack webhook {self.slack_conn_id!r} failed: "
                               f"{_scrub(f'{type(exc).__name__}: {exc}'[:300], secrets)}") from None
        log.info("%s sent to Slack connection %s (HTTP %s)", message.event, self.slack_conn_id,
                 getattr(response, "status_code", "?"))


class PagerDutyAlertNotifier(BaseNotifier):
    """PagerDuty Events API v2 through the provider's hook: a failure triggers, a pass resolves, by the
    alert's key as ``dedup_key`` (so PagerDuty's own incident closes with it). Only incidents: approval
    requests and deadlines are not sent here."""

    template_fields = ()
    channel = "pagerduty"
    events = ("failure", "resolve")

    def __init__(self, *, pagerduty_conn_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pagerduty_conn_id = pagerduty_conn_id

    def notify(self, context: Context) -> None:
        self.send(alerts.failure_message(failure_summary(context)), context)

    def send(self, message: alerts.Message, context: Mapping[str, Any] | None = None) -> None:
        from airflow.providers.pagerduty.hooks.pagerduty_events import PagerdutyEventsHook

        hook = PagerdutyEventsHook(pagerduty_events_conn_id=self.pagerduty_conn_id)
        mask_secret(hook.integration_key)
        action = "resolve" if message.event == "resolve" else "trigger"
        try:
            hook.send_event(summary=message.title[:1024], severity="error", source="backupkit", action=action,
                            dedup_key=message.dedup_key, custom_details=message.text,
                            links=[{"href": message.link, "text": "Airflow"}] if message.link else None)
        except Exception as exc:
            raise RuntimeError(f"PagerDuty connection {self.pagerduty_conn_id!r} failed: "
                               f"{_scrub(f'{type(exc).__name__}: {exc}'[:300], [hook.integration_key])}") from None
        log.info("%s sent to PagerDuty connection %s (%s %s)", message.event, self.pagerduty_conn_id, action,
                 message.dedup_key)


class BackupEmailNotifier(SmtpNotifier):
    """The provider's :class:`SmtpNotifier`, with subject and body from :mod:`backupkit.alerts`.

    Subject and body are set per message inside :meth:`send` (after the provider's template
    rendering), so problem details are never rendered as Jinja, and reset afterwards so one
    instance shared by many tasks never repeats a previous failure's text.
    """

    channel = "email"

    def notify(self, context: Context) -> None:
        self.send(alerts.failure_message(failure_summary(context)), context)

    def send(self, message: alerts.Message, context: Mapping[str, Any] | None = None) -> None:
        if self.from_email is None:
            # The provider insists on a sender; fall back to the connection's login, then to a
            # recognisable local address, rather than losing the alert over a missing field.
            conn = BaseHook.get_connection(self.smtp_conn_id)
            self.from_email = ((conn.extra_dejson or {}).get("from_email") or (conn.login if "@" in (conn.login or "")
                               else None) or f"airflow-backups@{socket.getfqdn()}")
        self.subject = message.subject
        self.html_content = alerts.email_html(message)
        try:
            super().notify(dict(context or {}))
        finally:
            self.subject = self.html_content = None
        log.info("%s mailed to %s via connection %s", message.event, self.to, self.smtp_conn_id)


# -- the channels, chosen once ------------------------------------------------------------------------
def alert_channels(config: Config) -> list[dict[str, Any]]:
    """Every configured channel as plain JSON (``{"kind", "conn_id"[, "to"]}``): the one place channels are
    chosen. Reads only the configuration, so it is safe at DAG parse time and in a deadline's kwargs."""
    a = config.alerting
    if a.smtp_conn_id and not a.email_to:
        raise ConfigError(config.path, "alerting.email_to", "is required when alerting.smtp_conn_id is set")
    if a.email_to and not a.smtp_conn_id:
        raise ConfigError(config.path, "alerting.smtp_conn_id", "is required when alerting.email_to is set")
    channels = [{"kind": kind, "conn_id": conn_id} for kind, conn_id in
                (("webhook", a.webhook_conn_id), ("slack", a.slack_conn_id), ("pagerduty", a.pagerduty_conn_id))
                if conn_id]
    if a.smtp_conn_id:
        channels.append({"kind": "email", "conn_id": a.smtp_conn_id, "to": list(a.email_to)})
    return channels


def channel_notifiers(channels: Iterable[Mapping[str, Any]]) -> list[Any]:
    """One sender per channel (each has ``send(message, context)``)."""
    out: list[Any] = []
    for c in channels:
        if c["kind"] == "webhook":
            out.append(JsonWebhookNotifier(webhook_conn_id=c["conn_id"]))
        elif c["kind"] == "slack":
            out.append(SlackAlertNotifier(slack_conn_id=c["conn_id"]))
        elif c["kind"] == "pagerduty":
            out.append(PagerDutyAlertNotifier(pagerduty_conn_id=c["conn_id"]))
        elif c["kind"] == "email":
            out.append(BackupEmailNotifier(to=list(c["to"]), smtp_conn_id=c["conn_id"]))
        else:
            raise ValueError(f"unknown alert channel {c['kind']!r}")
    return out


def send_all(senders: Iterable[Any], message: alerts.Message, context: Mapping[str, Any] | None = None) -> list[str]:
    """Send ``message`` on every channel that takes its kind of event; one failing channel does not stop the
    others, and any failure is raised afterwards (so Airflow marks the callback failed)."""
    sent, failed = [], []
    for sender in senders:
        if message.event not in getattr(sender, "events", (message.event,)):
            continue
        try:
            sender.send(message, context)
            sent.append(sender.channel)
        except Exception as exc:  # noqa: BLE001 - reported below, after the other channels
            failed.append(exc)
    if failed:
        raise RuntimeError(f"{message.event} alert failed on {len(failed)} channel(s) (sent: {sent or 'none'}): "
                           + "; ".join(str(e) for e in failed))
    return sent


# -- who pages, when ------------------------------------------------------------------------------------
def alert_key(context: Mapping[str, Any]) -> AlertKey:
    """(DAG, source, check) of a task: the source it worked on (a mapped task's ``source_name``, the form's
    source or file set), "" when it covers every source; the check is the task."""
    s = failure_summary(context)
    task = context.get("task")
    source = getattr(task, "source_name", None)
    if not (isinstance(source, str) and source and "{{" not in source):
        params = context.get("params") or {}
        source = next((params[k] for k in ("source", "file_set") if isinstance(params.get(k), str)), "")
    return AlertKey(str(s["dag_id"]), source, str(s["task_id"]))


class PageOnce:
    """Every task's ``on_failure_callback``: one alert per failed run on every channel, repeats of an open
    alert held back, rejected requests never paged (:mod:`backupkit.alert_state` has the rules)."""

    def __init__(self, *, channels: list[dict[str, Any]], state_file: str, config_path: str) -> None:
        self.channels, self.state_file, self.config_path = channels, state_file, config_path

    def __call__(self, context: Mapping[str, Any]) -> None:
        s, exc = failure_summary(context), context.get("exception")
        if getattr(exc, "page", True) is False:
            log.info("not paged: %s refused the request (%s); the reason is shown in the run", alerts.task_label(s),
                     s.get("exception"))
            return
        key = alert_key(context)
        decision = AlertState(Path(self.state_file)).on_failure(
            key, run_id=str(s.get("run_id")), reason=str(s.get("exception") or ""), now=clock.now(),
            problems=[f"{p['artifact']}: {p['check']}" for p in s["problems"]])
        if not decision.page:
            log.info("not paged again: %s (%s; %s)", key.id, decision.action,
                     "this run already alerted" if decision.action == "same_run"
                     else f"open since {decision.open_since}, {decision.repeats} repeat(s) held back")
            return
        if not self.channels:
            UnalertedFailureLogger(self.config_path)(context)
            return
        send_all(channel_notifiers(self.channels), alerts.failure_message(s, dedup_key=key.id), context)

    def __repr__(self) -> str:
        return f"PageOnce({[c['kind'] for c in self.channels]})"


class ResolveOnPass:
    """Every task's ``on_success_callback``: close the open alert of this DAG/source/check, and say so."""

    def __init__(self, *, channels: list[dict[str, Any]], state_file: str) -> None:
        self.channels, self.state_file = channels, state_file

    def __call__(self, context: Mapping[str, Any]) -> None:
        s = failure_summary(context)
        alert = AlertState(Path(self.state_file)).on_success(alert_key(context), run_id=str(s.get("run_id")),
                                                             now=clock.now())
        if alert is None:
            return
        message = alerts.resolve_message(alert, log_url=s.get("log_url"))
        log.info("%s", message.title)
        if self.channels:
            send_all(channel_notifiers(self.channels), message, context)

    def __repr__(self) -> str:
        return f"ResolveOnPass({[c['kind'] for c in self.channels]})"


class UnalertedFailureLogger:
    """What a failure does when no alert channel is configured: one clear ERROR line."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path

    def __call__(self, context: Mapping[str, Any]) -> None:
        s = failure_summary(context)
        log.error(
            "no alert channel configured: %s failed (run %s, try %s): %s -- nobody was notified; set "
            "alerting.webhook_conn_id, alerting.slack_conn_id, alerting.pagerduty_conn_id and/or "
            "alerting.smtp_conn_id with alerting.email_to in %s",
            alerts.task_label(s), s.get("run_id"), s.get("try_number"), s.get("exception") or "no exception",
            self.config_path,
        )

    def __repr__(self) -> str:
        return f"UnalertedFailureLogger({self.config_path!r})"


def failure_callbacks(config: Config) -> list[Callable[..., None]]:
    """Every task's ``on_failure_callback``: :class:`PageOnce` over the configured channels (logging loudly
    when there are none). Reads only the configuration; connections are resolved when an alert is sent."""
    return [PageOnce(channels=alert_channels(config), state_file=str(config.state.alert_state),
                     config_path=str(config.path))]


def success_callbacks(config: Config) -> list[Callable[..., None]]:
    """Every task's ``on_success_callback``: the resolve of an open alert (a file check when there is none)."""
    return [ResolveOnPass(channels=alert_channels(config), state_file=str(config.state.alert_state))]


__all__ = ["JsonWebhookNotifier", "SlackAlertNotifier", "PagerDutyAlertNotifier", "BackupEmailNotifier",
           "UnalertedFailureLogger", "PageOnce", "ResolveOnPass", "alert_channels", "channel_notifiers", "send_all",
           "alert_key", "failure_callbacks", "success_callbacks", "failure_summary", "webhook_url", "webhook_secrets"]
