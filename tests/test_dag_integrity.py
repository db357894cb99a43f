"""Every DAG file imports cleanly and follows the house rules; parsing does no network or process I/O.

New DAG files are picked up automatically: the rules (owner, tags, retries, a failure callback
on every task, doc_md) apply to all of them; add a DAG's schedule to ``EXPECTED_SCHEDULES``
to have it checked against the runbook.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from contextlib import contextmanager

import pytest

import airflow_env
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import Asset
from backup_airflow.common import DAILY_VERIFIED
from backup_airflow.notifiers import PageOnce, ResolveOnPass

# dag_id -> (cron, timezone) as the runbook gives it, or (asset, None) for an asset-scheduled DAG.
EXPECTED_SCHEDULES = {
    "backup_daily_verification": ("0 8 * * *", "UTC"),  # Morning Backup Status Check (8:00 AM UTC)
    "backup_weekly_maintenance": ("0 10 * * 0", "UTC"),  # Sunday Backup System Review (10:00 AM UTC)
    "backup_quarterly_audit": ("0 9 * 3,6,9,12 L5", "UTC"),  # End of Quarter Backup Audit (last Friday 09:00 UTC)
    "backup_monthly_restore_test": ("0 9 * * 1#1", "UTC"),  # First Monday Backup Restoration Test (9:00 AM UTC)
    "backup_retention_cleanup": (DAILY_VERIFIED, None),  # asset: after each successful daily verification
    "backup_annual_dr_drill": ("0 9 15 11 *", "UTC"),  # Annual DR Test: drill.date (default 11-15) 09:00 UTC
}

UNROUTABLE = "10.255.255.1"  # RFC 5737-style blackhole: a connect would hang, not fail fast


class IOAttempt(AssertionError):
    pass


@contextmanager
def no_network_or_processes(attempts: list[str]):
    """Record (and refuse) any socket connect, DNS lookup or subprocess while the block runs."""
    mp = pytest.MonkeyPatch()

    def refuse(kind):
        def _refuse(*args, **kwargs):
            attempts.append(f"{kind} {args[:2]!r}")
            raise IOAttempt(f"{kind} during DAG parsing: {args[:2]!r}")
        return _refuse

    mp.setattr(socket.socket, "connect", refuse("connect"))
    mp.setattr(socket.socket, "connect_ex", refuse("connect"))
    mp.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    mp.setattr(subprocess.Popen, "__init__", refuse("subprocess"))
    try:
        yield
    finally:
        mp.undo()


def unroutable_env(mp: pytest.MonkeyPatch, tmp_path) -> None:
    """Connections and endpoints that would hang if anything touched them at parse time."""
    mp.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "k", "password": "s",
        "extra": {"endpoint_url": f"http://{UNROUTABLE}:9", "region_name": "us-east-1"}}))
    mp.setenv("AIRFLOW_CONN_TRIXTECH_APP_DB", f"postgresql://u:p@{UNROUTABLE}:1/trixtech")
    mp.setenv("AIRFLOW_CONN_BACKUP_ALERTS", f"http://{UNROUTABLE}:9/hook")
    mp.setenv("BACKUP_WEBHOOK_CONN_ID", "backup_alerts")
    mp.setenv("BACKUP_PUSHGATEWAY_URL", f"http://{UNROUTABLE}:9091")
    mp.setenv("BACKUP_ROOT", str(tmp_path / "does-not-exist"))  # parse must not list backup dirs
    mp.setenv("BACKUP_STATE_DIR", str(tmp_path / "state-not-created"))
    mp.setenv("BACKUP_LOG_DIR", str(tmp_path / "logs-not-created"))
    mp.delenv("BACKUPKIT_CONFIG", raising=False)


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """The DagBag of dags/, parsed under unroutable connections with network and processes refused."""
    airflow_env.configure()
    tmp = tmp_path_factory.mktemp("parse")
    attempts: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        unroutable_env(mp, tmp)
        DagBag(dag_folder=str(airflow_env.DAGS))  # warm-up: first use imports providers, not our code
        with no_network_or_processes(attempts):
            t0 = time.monotonic()
            bag = DagBag(dag_folder=str(airflow_env.DAGS))
            elapsed = time.monotonic() - t0
    assert not (tmp / "state-not-created").exists() and not (tmp / "does-not-exist").exists()
    return bag, elapsed, attempts


def test_every_dag_file_imports_without_errors(parsed):
    bag, _, _ = parsed
    assert bag.import_errors == {}
    files = sorted(p for p in airflow_env.DAGS.glob("*.py") if not p.name.startswith("_"))
    assert files, "no DAG files found"
    loaded_from = {dag.fileloc for dag in bag.dags.values()}
    assert [f.name for f in files if str(f) not in loaded_from] == [], "a DAG file defines no DAG"


def test_parsing_does_no_io_and_is_fast(parsed):
    bag, elapsed, attempts = parsed
    assert attempts == []
    assert bag.dags, "nothing parsed"
    assert elapsed < 10 * max(1, len(bag.dags)), f"parsing took {elapsed:.1f}s"


def test_expected_dags_and_schedules(parsed):
    bag, _, _ = parsed
    for dag_id, (cron, tz) in EXPECTED_SCHEDULES.items():
        assert dag_id in bag.dags, f"{dag_id} missing from dags/"
        tt = bag.dags[dag_id].timetable
        if isinstance(cron, Asset):  # asset-scheduled: runs after each event of exactly that asset
            objects = getattr(getattr(tt, "asset_condition", None), "objects", ())
            assert [getattr(o, "uri", None) for o in objects] == [cron.uri], f"{dag_id}: schedule {tt!r}"
            continue
        assert getattr(tt, "expression", None) == cron, f"{dag_id}: schedule {tt!r}, runbook says {cron}"
        assert str(getattr(tt, "timezone", "")) in (tz, f"Timezone('{tz}')"), f"{dag_id}: timezone {tt.timezone}"


def test_every_dag_follows_the_house_rules(parsed):
    bag, _, _ = parsed
    broken = []
    for dag_id, dag in sorted(bag.dags.items()):
        args = dag.default_args or {}
        if args.get("owner") in (None, "", "airflow"):
            broken.append(f"{dag_id}: default_args has no real owner ({args.get('owner')!r})")
        if not dag.tags:
            broken.append(f"{dag_id}: no tags")
        if int(args.get("retries") or 0) < 1:
            broken.append(f"{dag_id}: default_args retries < 1")
        if len((dag.doc_md or "").strip()) < 200:
            broken.append(f"{dag_id}: doc_md missing or too short to explain checks and failures")
        if dag.catchup:
            broken.append(f"{dag_id}: catchup is on (a backlog of backup jobs must not replay)")
        for t in dag.tasks:
            if not t.on_failure_callback:
                broken.append(f"{dag_id}.{t.task_id}: no on_failure_callback")
            if t.owner in (None, "", "airflow"):
                broken.append(f"{dag_id}.{t.task_id}: owner {t.owner!r}")
    assert broken == []


def test_failure_callbacks_follow_the_alerting_config(parsed):
    bag, _, _ = parsed
    # parsed with BACKUP_WEBHOOK_CONN_ID set: every task pages once through the webhook and resolves
    for dag in bag.dags.values():
        for t in dag.tasks:
            assert any(isinstance(cb, PageOnce) and cb.channels == [{"kind": "webhook", "conn_id": "backup_alerts"}]
                       for cb in t.on_failure_callback), f"{dag.dag_id}.{t.task_id}"
            assert any(isinstance(cb, ResolveOnPass) and cb.channels == [{"kind": "webhook", "conn_id": "backup_alerts"}]
                       for cb in t.on_success_callback), f"{dag.dag_id}.{t.task_id}"
    with pytest.MonkeyPatch.context() as mp:  # no channel: the loud log line (tests/test_notifiers.py), never nothing
        mp.delenv("BACKUP_WEBHOOK_CONN_ID", raising=False)
        mp.delenv("BACKUP_SMTP_CONN_ID", raising=False)
        dag = DagBag(dag_folder=str(airflow_env.DAGS)).dags["backup_daily_verification"]
    for t in dag.tasks:
        assert [(type(cb), cb.channels) for cb in t.on_failure_callback] == [(PageOnce, [])]


def test_daily_dag_structure(parsed):
    bag, _, _ = parsed
    dag = bag.dags["backup_daily_verification"]
    assert dag.max_active_runs == 1
    ids = set(dag.task_dict)
    assert ids == {"sources", "check_freshness", "check_integrity", "check_cloud_copies", "check_backup_logs",
                   "summarize", "export_metrics"}
    mapped = {t.task_id for t in dag.tasks if getattr(t, "is_mapped", False)}
    assert mapped == {"check_freshness", "check_integrity", "check_cloud_copies"}
    summarize = dag.task_dict["summarize"]
    assert summarize.upstream_task_ids == {"sources", "check_freshness", "check_integrity", "check_cloud_copies",
                                           "check_backup_logs"}
    assert summarize.trigger_rule == "all_done"
    assert [o.uri for o in summarize.outlets] == [DAILY_VERIFIED.uri]
    export = dag.task_dict["export_metrics"]
    assert export.upstream_task_ids == summarize.upstream_task_ids and export.trigger_rule == "all_done"
    # The run's state comes from its leaves: the failing verdict must be one of them.
    assert {t.task_id for t in dag.tasks if not t.downstream_task_ids} == {"summarize", "export_metrics"}


def test_invalid_config_is_an_import_error_naming_file_and_key(tmp_path):
    bad = tmp_path / "backups.yaml"
    bad.write_text("bucket: {name: trixtech-backups}\ndatabases:\n  - name: db\n    typo_key: 1\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKUPKIT_CONFIG", str(bad))
        bag = DagBag(dag_folder=str(airflow_env.DAGS))
    errors = [e for f, e in bag.import_errors.items() if f.endswith("backup_daily_verification.py")]
    assert errors and str(bad) in errors[0] and "databases[0]" in errors[0]


def test_airflow_does_not_exec_our_packages_as_plugin_files():
    """Airflow's plugin manager execs every ``.py`` under plugins/ as a top-level module named by its
    stem (``config``, ``daily``, ... and ``__main__``: a __main__.py would run its
    sandbox CLI inside every Airflow process) unless ``plugins/.airflowignore`` excludes it. Our
    packages are imported as packages (plugins/ is on sys.path); the one file meant to be exec'd is
    ``backup_health_plugin.py``, which registers the Backup Health plugin from backup_airflow.health."""
    from airflow._shared.module_loading import find_path_from_directory

    scanned = [p for p in find_path_from_directory(str(airflow_env.PLUGINS), ".airflowignore")
               if p.endswith(".py")]
    expected = [str(airflow_env.PLUGINS / "backup_health_plugin.py")]
    assert scanned == expected, f"add plugins/.airflowignore excluding the others ({len(scanned)} files)"
