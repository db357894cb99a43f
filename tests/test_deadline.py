"""The daily verification's Deadline Alert (not finished by 08:30 UTC) and its triggerer callback.

Airflow's own code path, minus the daemons: the DAG stored as the dag-processor stores it, the
scheduled run created by the scheduler's method (materialising the Deadline row), the miss
handled by ``Deadline.handle_miss`` (queuing the callback as a Trigger row), the
``CallbackTrigger`` inflated from that row and run as the triggerer runs it; the alert goes to
a real HTTP server on loopback and through a real SMTP conversation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import inspect
import json
import logging
import socketserver
import threading
from datetime import datetime, time, timedelta, timezone
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import select

import airflow_env
from _daily_helpers import airflow_db, http_server  # noqa: F401  (fixtures)
from airflow import settings
from airflow._shared.module_loading import import_string
from airflow.dag_processing.bundles.manager import DagBundlesManager
from airflow.dag_processing.dagbag import BundleDagBag, DagBag, sync_bag_to_db
from airflow.models.callback import CallbackState
from airflow.models.deadline import Deadline
from airflow.models.serialized_dag import SerializedDagModel
from airflow.models.trigger import Trigger
from airflow.sdk import AsyncCallback, DeadlineReference
from airflow.serialization.decoders import smart_decode_trigger_kwargs
from airflow.serialization.definitions.deadline import SerializedReferenceModels
from airflow.serialization.serialized_objects import DagSerialization
from airflow.timetables.base import TimeRestriction
from airflow.triggers.callback import CallbackTrigger
from airflow.utils.state import DagRunState
from airflow.utils.types import DagRunTriggeredByType, DagRunType
from backup_airflow import deadline as deadline_mod
from backup_airflow.deadline import deadline_kwargs, deadline_missed
from backupkit.config import Alerting, load_config

DAG_ID = "backup_daily_verification"
CALLBACK_PATH = "backup_airflow.deadline.deadline_missed"
RUN_AFTER = datetime(2025, 3, 4, 8, 0, tzinfo=timezone.utc)
RUN_ID = "scheduled__2025-03-04T08:00:00+00:00"


@pytest.fixture(scope="module")
def daily_dag():
    bag = DagBag(dag_folder=str(airflow_env.DAGS / f"{DAG_ID}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[DAG_ID]


@dataclasses.dataclass
class Missed:
    run: object  # the DagRun
    deadline: object  # its Deadline row
    trigger: CallbackTrigger  # inflated from its Trigger row, as the triggerer does


@pytest.fixture
def missed_deadline(airflow_db, monkeypatch):
    """Factory: what the scheduler and triggerer do, up to running the callback.

    Parse and store the DAG (with ``env`` set at parse time, as the dag-processor would have it),
    create the 08:00 scheduled run in state queued as the scheduler does (which materialises its
    Deadline row), miss the deadline (``Deadline.handle_miss`` queues the callback as a Trigger
    row), and inflate the CallbackTrigger from that row's stored kwargs as the triggerer does.
    Everything is rolled back afterwards.
    """
    session = settings.Session()

    # Store every parse (the dag-processor skips a DAG written less than 30 s ago), so the
    # stored deadline kwargs are this test's, not those of an earlier parse.
    monkeypatch.setenv("AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL", "0")

    def make(**env: str) -> Missed:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        manager = DagBundlesManager()
        manager.sync_bundles_to_db(session=session)
        session.commit()
        [bundle] = [b for b in manager.get_all_dag_bundles() if Path(b.path) == airflow_env.DAGS]
        bag = BundleDagBag(dag_folder=str(airflow_env.DAGS / f"{DAG_ID}.py"), bundle_path=bundle.path,
                           bundle_name=bundle.name)
        assert not bag.import_errors, bag.import_errors
        sync_bag_to_db(bag, bundle.name, bundle.version)
        session.expire_all()
        scheduler_dag = SerializedDagModel.get_dag(DAG_ID, session=session)
        run = scheduler_dag.create_dagrun(
            run_id=RUN_ID, logical_date=RUN_AFTER, data_interval=(RUN_AFTER, RUN_AFTER), run_after=RUN_AFTER,
            conf=None, run_type=DagRunType.SCHEDULED, state=DagRunState.QUEUED,
            triggered_by=DagRunTriggeredByType.TIMETABLE, session=session)
        session.flush()
        [deadline] = session.scalars(select(Deadline).where(Deadline.dagrun_id == run.id)).all()
        deadline.handle_miss(session)
        session.flush()
        row = deadline.callback.trigger
        kwargs = {k: smart_decode_trigger_kwargs(v) for k, v in Trigger._decrypt_kwargs(row.encrypted_kwargs).items()}
        return Missed(run, deadline, import_string(row.classpath)(**kwargs))

    yield make
    session.rollback()
    session.close()


def run_trigger(trigger: CallbackTrigger) -> list[dict]:
    """Run the trigger as the triggerer does and return its events' payloads."""
    async def collect():
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


def test_daily_dag_alerts_when_not_finished_30_minutes_after_queueing(daily_dag):
    [alert] = daily_dag.deadline
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval == timedelta(minutes=30)
    assert isinstance(alert.callback, AsyncCallback) and alert.callback.path == CALLBACK_PATH
    assert alert.callback.kwargs == deadline_kwargs(load_config())
    assert inspect.iscoroutinefunction(deadline_missed)


def test_scheduled_run_is_queued_at_0800_so_the_deadline_is_0830(daily_dag):
    """What the dag-processor stores is what the scheduler evaluates: queued-at + 1800 s."""
    scheduled = DagSerialization.from_dict(json.loads(json.dumps(DagSerialization.to_dict(daily_dag))))
    info = scheduled.timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=datetime(2025, 3, 4, 7, 0, tzinfo=timezone.utc), latest=None,
                                    catchup=True))
    assert info.run_after == RUN_AFTER
    [stored] = scheduled.deadline
    ref = SerializedReferenceModels.get_reference_class(stored["reference"]["reference_type"])
    assert ref in SerializedReferenceModels.TYPES.DAGRUN_QUEUED  # evaluated when the run is queued
    assert (info.run_after + timedelta(seconds=stored["interval"]["__data__"])).time() == time(8, 30)


def test_scheduler_materialises_the_deadline_from_queued_at(missed_deadline):
    missed = missed_deadline()
    assert missed.run.queued_at is not None
    assert missed.deadline.deadline_time - missed.run.queued_at == timedelta(minutes=30)
    assert missed.trigger.callback_path == CALLBACK_PATH
    context = missed.trigger.callback_kwargs["context"]
    # The fields the alert reads exist in what the scheduler really sends.
    assert {"dag_run_id", "dag_id", "state", "queued_at", "start_date", "end_date"} <= set(context["dag_run"])
    assert context["deadline"]["deadline_time"] == missed.deadline.deadline_time


def test_missed_deadline_posts_to_the_webhook(missed_deadline, http_server):
    missed = missed_deadline(BACKUP_WEBHOOK_CONN_ID="backup_alerts",
                             AIRFLOW_CONN_BACKUP_ALERTS=f"{http_server.url}/hooks/backup-alerts")
    events = run_trigger(missed.trigger)
    assert [e["state"] for e in events] == [CallbackState.RUNNING, CallbackState.SUCCESS], events
    assert events[-1]["body"]["sent"] == ["webhook:backup_alerts"]
    [req] = http_server.requests
    assert (req.method, req.path) == ("POST", "/hooks/backup-alerts")
    body = json.loads(req.body)
    assert set(body) == {"text"}  # Slack-compatible
    lines = body["text"].splitlines()
    assert lines[0] == ("Backup job missed its deadline: backup_daily_verification had not finished by "
                        f"{missed.deadline.deadline_time.isoformat()}")
    assert lines[1].startswith(f"run {RUN_ID}, state queued, queued {missed.run.queued_at:%Y-%m-%dT%H:%M}")
    assert "Open the run in the Airflow UI" in lines[2]


def test_webhook_error_marks_the_callback_failed(missed_deadline, http_server):
    missed = missed_deadline(BACKUP_WEBHOOK_CONN_ID="backup_alerts", AIRFLOW_CONN_BACKUP_ALERTS=json.dumps(
        {"conn_type": "http", "host": http_server.url, "password": "T1/B1/XX", "extra": {"include_details": True}}))
    http_server.status = 404
    events = run_trigger(missed.trigger)
    assert events[-1]["state"] == CallbackState.FAILED
    assert "answered HTTP 404" in events[-1]["body"]
    req = http_server.requests[0]
    assert req.path == "/T1/B1/XX"
    details = json.loads(req.body)["backupkit"]
    assert details["event"] == "deadline_missed" and details["run_id"] == RUN_ID


def test_no_channel_configured_logs_a_clear_error(missed_deadline, caplog):
    missed = missed_deadline()
    assert missed.trigger.callback_kwargs["channels"] == []
    with caplog.at_level(logging.INFO, logger=deadline_mod.__name__):
        events = run_trigger(missed.trigger)
    assert events[-1]["state"] == CallbackState.SUCCESS and events[-1]["body"]["sent"] == []
    [record] = [r for r in caplog.records if r.name == deadline_mod.__name__]
    assert record.levelno == logging.ERROR
    msg = record.getMessage()
    assert msg.startswith(f"no alert channel configured: backup_daily_verification run {RUN_ID} missed its "
                          f"deadline ({missed.deadline.deadline_time.isoformat()}, state queued)")
    assert "alerting.webhook_conn_id" in msg and "backups.yaml" in msg


def test_run_that_failed_before_its_deadline_is_not_alerted_again(missed_deadline, http_server, caplog):
    """Airflow 3.3 keeps a failed run's deadline (apache/airflow#60927); its failure was already alerted."""
    missed = missed_deadline(BACKUP_WEBHOOK_CONN_ID="backup_alerts",
                             AIRFLOW_CONN_BACKUP_ALERTS=f"{http_server.url}/hooks/backup-alerts")
    run = missed.trigger.callback_kwargs["context"]["dag_run"]
    ended = missed.deadline.deadline_time - timedelta(minutes=12)
    run.update(state="failed", end_date=ended.isoformat())
    with caplog.at_level(logging.INFO, logger=deadline_mod.__name__):
        events = run_trigger(missed.trigger)
    assert events[-1]["state"] == CallbackState.SUCCESS
    assert events[-1]["body"]["skipped"] == "finished before the deadline"
    assert http_server.requests == []
    assert any("before its deadline" in r.getMessage() for r in caplog.records)
    # Ended after the deadline (it was still running when the deadline passed): alerted.
    run.update(end_date=(missed.deadline.deadline_time + timedelta(minutes=1)).isoformat())
    missed.trigger.callback_kwargs["context"] = {"dag_run": run,
                                                 "deadline": {"deadline_time": missed.deadline.deadline_time}}
    assert run_trigger(missed.trigger)[-1]["body"]["sent"] == ["webhook:backup_alerts"]
    assert len(http_server.requests) == 1


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for aiosmtplib: EHLO, MAIL, RCPT, DATA, QUIT."""

    def handle(self) -> None:
        def reply(line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")
            self.wfile.flush()

        reply("220 test ESMTP")
        mail: dict = {"rcpt": []}
        while line := self.rfile.readline():
            cmd = line.decode().strip()
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "DATA":
                reply("354 end with .")
                data = []
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                mail["data"] = b"".join(data)
                self.server.mails.append(dict(mail))
                reply("250 queued")
            elif verb == "QUIT":
                reply("221 bye")
                return
            else:
                if verb == "RCPT":
                    mail["rcpt"].append(cmd)
                reply("250 ok")


@pytest.fixture
def smtp_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.daemon_threads = True
    server.mails = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_missed_deadline_is_mailed_through_async_smtp(missed_deadline, smtp_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_SMTP", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_server.server_address[1],
        "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "backups@example.com", "retry_limit": 0}}))
    missed = missed_deadline()
    # email_to is a list in the YAML (no environment override): set the channel as the DAG would pass it.
    missed.trigger.callback_kwargs.update(
        deadline_kwargs(_config(smtp_conn_id="backup_smtp", email_to=("ops@example.com",))))
    events = run_trigger(missed.trigger)
    assert events[-1]["state"] == CallbackState.SUCCESS, events
    [mail] = smtp_server.mails
    assert [r.split(":", 1)[1] for r in mail["rcpt"]] == ["<ops@example.com>"]
    msg = email.message_from_bytes(mail["data"], policy=policy.default)
    assert msg["Subject"] == ("[backup] Backup job missed its deadline: backup_daily_verification had not "
                              f"finished by {missed.deadline.deadline_time.isoformat()}")
    assert msg["From"] == "backups@example.com"
    body = next(p for p in msg.walk() if p.get_content_type() == "text/html").get_content()
    assert f"run {RUN_ID}, state queued" in body


def _config(**alerting):
    return dataclasses.replace(load_config(), alerting=Alerting(**alerting))
