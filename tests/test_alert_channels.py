"""The alert channels beside the generic webhook, over real HTTP on loopback: the Slack provider's
incoming webhook (its own hook and ``slackwebhook`` connection) and PagerDuty's Events API v2 through
the provider's hook -- trigger and resolve by the alert's key, the routing key in no message. And the
one channel selection: failures, resolves, approval requests and the deadline use the same list."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import airflow_env  # noqa: F401  (before airflow)
from _daily_helpers import http_server  # noqa: F401  (fixture)
from backup_airflow.deadline import deadline_kwargs
from backup_airflow.notifiers import (PageOnce, PagerDutyAlertNotifier, ResolveOnPass, SlackAlertNotifier,
                                      alert_channels, channel_notifiers, failure_callbacks, send_all,
                                      success_callbacks)
from backupkit import alerts
from test_notifiers import PROBLEMS, config_with, failure_context
from backup_airflow.common import RequestRejected, VerificationFailed

SLACK_TOKEN = "T0SLACK/B0SLACK/slackSecretToken99"
ROUTING_KEY = "R0UTINGKEYpagerduty0000000000042"


def test_slack_provider_posts_the_text_to_its_webhook(http_server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_SLACK", json.dumps({
        "conn_type": "slackwebhook", "host": f"http://127.0.0.1:{http_server.port}/services", "password": SLACK_TOKEN}))
    [slack] = channel_notifiers(alert_channels(config_with(slack_conn_id="backup_slack")))
    assert isinstance(slack, SlackAlertNotifier)
    slack(failure_context())  # as Airflow calls a notifier
    [req] = http_server.requests
    assert req.path == f"/services/{SLACK_TOKEN}"
    text = json.loads(req.body)["text"]
    assert text.startswith("Backup job failed: backup_daily_verification.summarize") and "{{ not a template }}" in text

    http_server.status = 404
    with pytest.raises(RuntimeError, match="Slack webhook 'backup_slack' failed") as err:
        slack.send(alerts.failure_message({"dag_id": "d", "task_id": "t"}))
    assert "slackSecretToken99" not in str(err.value) and err.value.__cause__ is None


def self_signed(tmp_path) -> tuple[str, str]:
    """(cert, key) PEM files for 127.0.0.1: the PagerDuty client speaks only HTTPS, and verifies it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)  # valid on any date the suite runs
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=365 * 30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "pd.crt", tmp_path / "pd.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


class PagerDutyReceiver:
    """A loopback TLS stand-in for events.pagerduty.com answering like the Events API v2 (202 + dedup_key)."""

    def __init__(self, cert: str, key: str):
        import ssl

        self.events: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.events.append({"path": self.path, **event})
                body = json.dumps({"status": "success", "message": "Event processed",
                                   "dedup_key": event.get("dedup_key") or "generated"}).encode()
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def pagerduty(monkeypatch, tmp_path_factory):
    import pagerduty as pd

    cert, key = self_signed(tmp_path_factory.mktemp("pd-tls"))
    receiver = PagerDutyReceiver(cert, key)
    # The provider's hook has no endpoint setting: point the client library's base URL at loopback,
    # and trust the loopback certificate (the client verifies TLS; SSL_CERT_FILE is its documented override).
    monkeypatch.setattr(pd.EventsApiV2Client, "default_base_url", property(lambda self: receiver.url))
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_PAGERDUTY", json.dumps({"conn_type": "pagerduty_events",
                                                                    "password": ROUTING_KEY}))
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def test_a_failure_triggers_and_its_pass_resolves_the_same_pagerduty_incident(pagerduty, tmp_path, caplog):
    config = config_with(tmp_path, pagerduty_conn_id="backup_pagerduty")
    [page] = failure_callbacks(config)
    [resolve] = success_callbacks(config)
    assert isinstance(page, PageOnce) and isinstance(resolve, ResolveOnPass)
    failed = failure_context(VerificationFailed("2 verification problems", PROBLEMS))
    page(failed)
    page(failed | {"run_id": "next", "ti": failed["ti"]})  # the same run (ti.run_id): not paged twice
    passed = failure_context()
    passed["ti"] = type(failed["ti"])(**{**vars(failed["ti"]), "run_id": "scheduled__2025-01-03T08:00:00+00:00"})
    resolve(passed)
    assert [(e["event_action"], e["dedup_key"]) for e in pagerduty.events] == [
        ("trigger", "backup_daily_verification/*/summarize"), ("resolve", "backup_daily_verification/*/summarize")]
    trigger = pagerduty.events[0]
    assert trigger["path"] == "/v2/enqueue" and trigger["routing_key"] == ROUTING_KEY
    assert trigger["payload"]["summary"] == "Backup job failed: backup_daily_verification.summarize"
    assert "pg_restore: error" in trigger["payload"]["custom_details"]
    assert ROUTING_KEY not in caplog.text


def test_pagerduty_is_not_sent_approval_requests_or_deadlines(pagerduty, http_server, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_ALERTS", f"http://127.0.0.1:{http_server.port}/hook")
    config = config_with(tmp_path, pagerduty_conn_id="backup_pagerduty", webhook_conn_id="backup_alerts")
    senders = channel_notifiers(alert_channels(config))
    assert [type(s) for s in senders][1] is PagerDutyAlertNotifier
    message = alerts.approval_message(dag_id="backup_restore", run_id="r", subject="Switch?", requested_by="alice",
                                      reason="INC-1", approvers="bob", timeout="4h", link="http://x/required_actions")
    assert send_all(senders, message) == ["webhook"]
    assert pagerduty.events == [] and len(http_server.requests) == 1
    # the deadline callback gets the very same channel list (chosen once)
    assert deadline_kwargs(config)["channels"] == alert_channels(config) == [
        {"kind": "webhook", "conn_id": "backup_alerts"}, {"kind": "pagerduty", "conn_id": "backup_pagerduty"}]


def test_a_rejected_request_is_never_paged(pagerduty, tmp_path):
    [page] = failure_callbacks(config_with(tmp_path, pagerduty_conn_id="backup_pagerduty"))
    page(failure_context(RequestRejected("invalid restore request (nothing was changed): give a reason")))
    assert pagerduty.events == [] and not (tmp_path / "alerts" / "state.json").exists()


def test_one_channel_failing_does_not_stop_the_others(http_server, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_ALERTS", f"http://127.0.0.1:{http_server.port}/hook")
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_SLACK", json.dumps({
        "conn_type": "slackwebhook", "host": "http://127.0.0.1:9/services", "password": SLACK_TOKEN}))  # nothing there
    [page] = failure_callbacks(config_with(tmp_path, slack_conn_id="backup_slack", webhook_conn_id="backup_alerts"))
    with pytest.raises(RuntimeError, match="failed on 1 channel") as err:
        page(failure_context())
    assert len(http_server.requests) == 1 and "slackSecretToken99" not in str(err.value)
