"""Failure notifiers: webhook over real HTTP, email over real SMTP, and the loud no-channel log line.

The full path (a failing task of the daily DAG firing these callbacks) is covered by
tests/test_daily_dag_e2e.py; here each channel is driven directly with a failure context.
"""

from __future__ import annotations

import dataclasses
import email
import json
import logging
import socketserver
import threading
from email import policy
from types import SimpleNamespace

import pytest

import airflow_env  # noqa: F401  (before airflow)
from _daily_helpers import http_server  # noqa: F401  (fixture)
from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import Connection
from backup_airflow.common import VerificationFailed
from backup_airflow.notifiers import (
    BackupEmailNotifier,
    JsonWebhookNotifier,
    PageOnce,
    alert_channels,
    channel_notifiers,
    failure_callbacks,
    failure_summary,
    webhook_url,
)
from backupkit.config import Alerting, ConfigError, load_config

PROBLEMS = [
    {"artifact": "database/trixtech_20250101_020000.dump", "check": "pg_restore", "ok": False,
     "detail": "pg_restore: error: could not read input file: end of file"},
    {"artifact": "files/files_20250101_030000.tar.gz", "check": "s3_copy", "ok": False,
     "detail": "missing in s3://trixtech-backups/files/ {{ not a template }}"},
]


def failure_context(exc: BaseException | None = None) -> dict:
    """What Airflow's task runner hands an on_failure_callback (the fields the notifiers read)."""
    ti = SimpleNamespace(dag_id="backup_daily_verification", task_id="summarize", map_index=-1,
                         run_id="scheduled__2025-01-02T08:00:00+00:00", try_number=1,
                         log_url="http://localhost:8080/dags/backup_daily_verification/runs/x/tasks/summarize")
    return {"ti": ti, "task_instance": ti, "run_id": ti.run_id, "logical_date": None,
            "exception": exc if exc is not None else VerificationFailed("2 verification problems", PROBLEMS)}


def config_with(state_dir=None, **alerting):
    config = dataclasses.replace(load_config(), alerting=Alerting(**alerting))
    return dataclasses.replace(config, state_dir=state_dir) if state_dir is not None else config


@pytest.mark.parametrize(
    "conn, url",
    [
        (Connection.from_uri("http://127.0.0.1:8123/hooks/backup", conn_id="w"), "http://127.0.0.1:8123/hooks/backup"),
        (Connection.from_uri("https://hooks.slack.com/services/T0/B0/XX", conn_id="w"),
         "https://hooks.slack.com/services/T0/B0/XX"),
        # Slack provider style: base URL in host, the secret path in the (masked) password.
        (Connection(conn_id="w", conn_type="http", host="https://hooks.slack.com/services", password="T1/B1/YY"),
         "https://hooks.slack.com/services/T1/B1/YY"),
        # HttpHook style: schema is the URL scheme.
        (Connection(conn_id="w", conn_type="http", host="chat.example.com", schema="https", port=8443),
         "https://chat.example.com:8443"),
        (Connection(conn_id="w", conn_type="http", host="ignored", extra=json.dumps({"webhook_url": "https://x/y"})),
         "https://x/y"),
    ],
)
def test_webhook_url_shapes(conn, url):
    assert webhook_url(conn) == url


def test_webhook_url_needs_a_host():
    with pytest.raises(ValueError, match="neither a host"):
        webhook_url(Connection(conn_id="w", conn_type="http"))


def test_webhook_posts_slack_json_to_a_real_server(http_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_ALERTS", f"http://127.0.0.1:{http_server.port}/hooks/backup-alerts")
    [notifier] = channel_notifiers(alert_channels(config_with(webhook_conn_id="backup_alerts")))
    assert isinstance(notifier, JsonWebhookNotifier)
    notifier(failure_context())  # as Airflow calls it: BaseNotifier.__call__(context)
    [req] = http_server.requests
    assert (req.method, req.path) == ("POST", "/hooks/backup-alerts")
    assert req.headers["Content-Type"] == "application/json"
    body = json.loads(req.body)
    assert set(body) == {"text"}  # Slack-compatible: exactly {"text": ...}
    text = body["text"]
    assert text.startswith("Backup job failed: backup_daily_verification.summarize")
    assert "VerificationFailed: 2 verification problems" in text
    assert "database/trixtech_20250101_020000.dump: pg_restore: pg_restore: error" in text
    assert "{{ not a template }}" in text  # details are never rendered as Jinja
    assert "Log: http://localhost:8080/dags/backup_daily_verification" in text


def test_webhook_details_retry_and_error(http_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_ALERTS", json.dumps({
        "conn_type": "http", "host": http_server.url, "password": "T9/B9/ZZ", "extra": {"include_details": True}}))
    http_server.statuses = [503, 200]  # a transient server error is retried
    JsonWebhookNotifier(webhook_conn_id="backup_alerts")(failure_context())
    assert [r.path for r in http_server.requests] == ["/T9/B9/ZZ", "/T9/B9/ZZ"]
    details = json.loads(http_server.requests[-1].body)["backupkit"]
    assert details["task_id"] == "summarize" and len(details["problems"]) == 2

    http_server.status = 404  # a wrong webhook URL is not retried and must not pass silently
    with pytest.raises(RuntimeError, match="answered HTTP 404"):
        JsonWebhookNotifier(webhook_conn_id="backup_alerts")(failure_context())


def test_the_webhook_token_is_in_no_error_message(monkeypatch):
    """Airflow masks the connection's password, but requests names the URL -- whose path is the token --
    in its errors, and a receiver may echo the path: neither reaches the message (issue 9.4)."""
    import socket

    token = "T77777/B77777/Zsecrettoken42"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once the socket is closed
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_ALERTS", f"http://127.0.0.1:{closed}/services/{token}")
    with pytest.raises(RuntimeError) as err:
        JsonWebhookNotifier(webhook_conn_id="backup_alerts", retries=0, timeout=2)(failure_context())
    message = str(err.value)
    assert "could not be reached: ConnectionError" in message and f"127.0.0.1:{closed}" in message
    assert "Zsecrettoken42" not in message and "B77777" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained error carrying the URL

    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Echo(BaseHTTPRequestHandler):  # a receiver that echoes the path it did not know
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = f"no route for {self.path}".encode()
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_BACKUP_ALERTS", f"http://127.0.0.1:{server.server_address[1]}/services/{token}")
        with pytest.raises(RuntimeError, match="answered HTTP 404: no route for \\*\\*\\*") as err:
            JsonWebhookNotifier(webhook_conn_id="backup_alerts", retries=0)(failure_context())
        assert "Zsecrettoken42" not in str(err.value)
    finally:
        server.shutdown()
        server.server_close()


def test_no_channel_configured_logs_a_clear_error(caplog, tmp_path):
    callbacks = failure_callbacks(config_with(tmp_path))
    assert len(callbacks) == 1 and isinstance(callbacks[0], PageOnce) and callbacks[0].channels == []
    with caplog.at_level(logging.ERROR, logger="backup_airflow.notifiers"):
        callbacks[0](failure_context(RuntimeError("S3 unreachable")))
    [record] = [r for r in caplog.records if r.name == "backup_airflow.notifiers"]
    assert record.levelno == logging.ERROR
    msg = record.getMessage()
    assert msg.startswith("no alert channel configured: backup_daily_verification.summarize failed")
    assert "RuntimeError: S3 unreachable" in msg and "alerting.webhook_conn_id" in msg


def test_both_channels_when_both_are_configured():
    channels = alert_channels(config_with(webhook_conn_id="hook", smtp_conn_id="mail", email_to=("a@b.c",)))
    assert [type(cb) for cb in channel_notifiers(channels)] == [JsonWebhookNotifier, BackupEmailNotifier]


def test_email_requires_recipients_and_a_connection():
    with pytest.raises(ConfigError, match="alerting.email_to"):
        failure_callbacks(config_with(smtp_conn_id="smtp_default"))
    with pytest.raises(ConfigError, match="alerting.smtp_conn_id"):
        failure_callbacks(config_with(email_to=("ops@example.com",)))


def test_summary_of_a_mapped_task_names_the_index():
    ctx = failure_context(RuntimeError("boom"))
    ctx["ti"].map_index = 2
    s = failure_summary(ctx)
    assert s["problems"] == [] and s["exception"] == "RuntimeError: boom"
    from backupkit.alerts import task_label

    assert task_label(s) == "backup_daily_verification.summarize[2]"


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for smtplib: EHLO, MAIL, RCPT, DATA, QUIT."""

    def handle(self) -> None:
        w = lambda line: self.wfile.write(line.encode() + b"\r\n")  # noqa: E731
        w("220 test ESMTP")
        mail = {"rcpt": []}
        while line := self.rfile.readline():
            cmd = line.decode().strip()
            verb = cmd.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                w("250 test")
            elif verb == "MAIL":
                mail["from"] = cmd
                w("250 ok")
            elif verb == "RCPT":
                mail["rcpt"].append(cmd)
                w("250 ok")
            elif verb == "DATA":
                w("354 end with .")
                data = []
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                mail["data"] = b"".join(data)
                self.server.mails.append(dict(mail))
                w("250 queued")
            elif verb == "QUIT":
                w("221 bye")
                return
            else:
                w("250 ok")


@pytest.fixture
def smtp_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.mails = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_email_notifier_sends_through_smtp(smtp_server, monkeypatch):
    port = smtp_server.server_address[1]
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_SMTP", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": port,
        "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "backups@example.com", "retry_limit": 0}}))
    cfg = config_with(smtp_conn_id="backup_smtp", email_to=("ops@example.com", "dba@example.com"))
    [notifier] = channel_notifiers(alert_channels(cfg))
    assert isinstance(notifier, SmtpNotifier) and isinstance(notifier, BackupEmailNotifier)
    assert notifier.to == ["ops@example.com", "dba@example.com"] and notifier.smtp_conn_id == "backup_smtp"

    notifier(failure_context())
    [mail] = smtp_server.mails
    assert mail["from"].split(":", 1)[1] == "<backups@example.com>"
    assert [r.split(":", 1)[1] for r in mail["rcpt"]] == ["<ops@example.com>", "<dba@example.com>"]
    msg = email.message_from_bytes(mail["data"], policy=policy.default)
    assert msg["Subject"] == "[backup] Backup job failed: backup_daily_verification.summarize (2 problems)"
    html_part = next(p for p in msg.walk() if p.get_content_type() == "text/html")
    body = html_part.get_content()
    assert "database/trixtech_20250101_020000.dump: pg_restore" in body
    # The next failure gets its own text, not the previous one's.
    assert notifier.subject is None and notifier.html_content is None
