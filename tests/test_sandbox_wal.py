"""The sandbox's WAL archive (sandbox/walarchive.py): a real server archiving 1 MB segments, a real
pg_basebackup, markers, the copy in moto, the shipped configuration's ``trixtech-wal`` source
passing the daily checks, and the ``wal-gap`` defect breaking (and healing) it."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timedelta

import pytest

from _config_helpers import short_dir
from _daily_helpers import airflow_db  # noqa: F401  (fixture)
from _wal_archive import wait_archived
from backupkit import clock
from backupkit.config import load_config
from backupkit.jobs import daily
from backupkit.pgserver import LocalPostgres
from backupkit.storage.objectstore import Bucket
from sandbox import walarchive
from sandbox.defects import Defects
from sandbox.stack import CONFIG_FILE, sandbox_env


@pytest.fixture
def archiving(moto_server, s3, bucket, monkeypatch):
    # As the sandbox's bucket: a default object-lock retention, which refuses uploads without a checksum.
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    root = short_dir("bk-sbwal-")
    archive, base = root / "wal" / "archive", root / "wal" / "base"
    walarchive.prepare_dirs(archive, base)
    pg = LocalPostgres(root / "pg", initdb_args=["--wal-segsize=1"], settings=walarchive.archive_settings(archive))
    pg.start()
    for k, v in sandbox_env(root, pg.port, moto_server.endpoint_url, wal=True).items():
        monkeypatch.setenv(k, v)
    yield root, pg, load_config(CONFIG_FILE)
    pg.destroy()
    shutil.rmtree(root, ignore_errors=True)


def _problems(results):
    return [r for r in results if not r["ok"]]


def _wal_checks(config, s3):
    b = Bucket(s3, config.bucket)
    return (daily.check_presence(config, "trixtech-wal") + daily.check_integrity(config, "trixtech-wal")
            + daily.check_cloud_copies(config, "trixtech-wal", b))


def test_the_healthy_sandbox_archive_passes_and_a_wal_gap_breaks_it(archiving, s3):
    root, pg, config = archiving
    said = []
    walarchive.ensure(config, pg, s3, say=said.append)
    assert any("taking a base backup" in s for s in said)
    for i in range(3):   # the writer's markers, and segments archived after the base backup
        walarchive.write_marker(pg, f"marker {i}")
        pg.psql("SELECT pg_logical_emit_message(true, 'pad', repeat('x', 300000))")
        wait_archived(pg, root / "wal" / "archive")
    assert walarchive.sync(config, s3, config.source("trixtech-wal")) > 0
    assert int(pg.psql(f"SELECT count(*) FROM {walarchive.MARKERS_TABLE}", walarchive.MARKERS_DB)) == 4
    results = _wal_checks(config, s3)
    assert _problems(results) == []
    assert next(r for r in results if r["check"] == "pitr_window")["detail"].startswith("recoverable from")
    assert not walarchive.base_backup_due(config.source("trixtech-wal"), clock.now())

    defects = Defects(root / "defects", config, s3)
    record = defects.inject("wal-gap")
    bad = _problems(daily.check_integrity(config, "trixtech-wal"))
    assert [r["check"] for r in bad if r["check"] == "wal_gap"] == ["wal_gap"], bad
    assert bad[0]["artifact"] == record["backups"][0]
    defects.heal()
    assert _problems(daily.check_integrity(config, "trixtech-wal")) == []


def test_an_older_sandbox_cluster_is_converted_to_archiving_with_1mb_segments(tmp_path):
    root = short_dir("bk-sbwal16-")
    try:
        archive = root / "archive"
        walarchive.prepare_dirs(archive, root / "base")
        plain = LocalPostgres(root / "pg").start()   # made before archiving existed: 16 MB segments
        assert walarchive.segment_size(plain) == 16 << 20
        pg = LocalPostgres(root / "pg", port=plain.port, settings=walarchive.archive_settings(archive))
        said = []
        walarchive.ensure_archiving(pg, say=said.append)
        assert walarchive.segment_size(pg) == 1 << 20 and pg.psql("SHOW archive_mode").strip() == "on"
        wait_archived(pg, archive)
        assert any(len(p.name) == 24 and p.stat().st_size == 1 << 20 for p in archive.iterdir())
        walarchive.ensure_archiving(pg, say=said.append)   # done once: nothing more to do
        assert len(said) == 2
        pg.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_shipped_configuration_has_the_wal_source_off_unless_enabled(monkeypatch):
    monkeypatch.delenv("BACKUP_WAL_ARCHIVE", raising=False)
    assert "trixtech-wal" not in [s.name for s in load_config(CONFIG_FILE).sources]
    monkeypatch.setenv("BACKUP_WAL_ARCHIVE", "true")
    src = load_config(CONFIG_FILE).source("trixtech-wal")
    assert src.kind == "wal_archive" and src.spec.keep_pitr_window.days == 2


def test_the_daily_dag_verifies_the_archive_and_the_restore_dag_restores_to_a_time(archiving, s3, airflow_db):  # noqa: F811,E501
    """dag.test() of backup_daily_verification with the WAL source on: every task succeeds on the healthy
    sandbox-like setup and the PITR gauges are exported; then backup_restore with a point in time
    replays to it on a scratch server (verify_only) and the run succeeds."""
    import airflow_env
    from _clock import SESSION_NOW
    from airflow.dag_processing.dagbag import DagBag
    from prometheus_client.parser import text_string_to_metric_families
    from sandbox.bookingdb import create_booking_db
    from sandbox.history import generate_history

    root, pg, config = archiving
    create_booking_db(pg, "trixtech", scale=200)   # its own server: the configuration's database name
    generate_history(config, pg, now=SESSION_NOW, days=10, s3_client=s3, database="trixtech")
    walarchive.ensure(config, pg, s3, say=lambda _: None)
    walarchive.write_marker(pg)
    wait_archived(pg, root / "wal" / "archive")
    walarchive.sync(config, s3, config.source("trixtech-wal"))
    bag = DagBag(dag_folder=str(airflow_env.DAGS))
    assert bag.import_errors == {}
    dag = bag.dags["backup_daily_verification"]
    dag.deadline = None   # apache/airflow#73428 (see test_daily_dag_e2e)
    dr = dag.test()
    from _daily_helpers import task_states

    states = task_states(dr)
    assert str(dr.state) in ("success", "DagRunState.SUCCESS"), states
    assert {t for t in states if t.startswith("check_integrity")} >= {"check_integrity[3]"}   # the 4th source
    samples = {(s.name, s.labels.get("source")): s.value
               for fam in text_string_to_metric_families(config.state.metrics_textfile("daily").read_text())
               for s in fam.samples}
    assert samples[("backup_pitr_window_end_timestamp_seconds", "trixtech-wal")] > \
        samples[("backup_pitr_window_start_timestamp_seconds", "trixtech-wal")]
    assert samples[("backup_verification_status", "trixtech-wal")] == 1

    # The window the daily run found makes the restore form's point in time usable.
    from backupkit.restore.journal import RestoreJournal
    from test_daily_dag_e2e import xcom

    at = walarchive.write_marker(pg, "before the target").replace(" ", "T")
    time.sleep(0.5)
    walarchive.write_marker(pg, "after the target")
    wait_archived(pg, root / "wal" / "archive")
    daily.check_integrity(config, "trixtech-wal")   # the window now reaches past both markers
    target = (datetime.fromisoformat(at) + timedelta(milliseconds=250)).isoformat()
    restore = DagBag(dag_folder=str(airflow_env.DAGS / "backup_restore.py")).dags["backup_restore"]
    dr = restore.test(run_conf={"source": "trixtech-db", "mode": "verify_only", "target_time": target,
                                "reason": "INC-42: bookings deleted at 10:02 by a bad script"})
    states = task_states(dr)
    assert str(dr.state) in ("success", "DagRunState.SUCCESS"), states
    assert states["restore_to_time"] == "success" and states["restore_verify"] == "skipped", states
    result = xcom(dr, "restore_to_time", "result")
    assert result["ok"] and "recovery stopped before commit" in result["checks"][0]["detail"]
    finished = [r for r in RestoreJournal(config.state_dir).records() if r["run_id"] == dr.run_id]
    assert finished[-1]["outcome"] == "verified"


def test_waiting_for_the_archive_when_nothing_was_written_since_the_last_switch(tmp_path):
    """pg_switch_wal() after a switch is a no-op that returns the first byte of the current, unfinished
    segment: the wait must mean the finished one before it (it used to wait its whole timeout)."""
    root = short_dir("bk-sbwalsw-")
    try:
        archive = root / "archive"
        walarchive.prepare_dirs(archive, root / "base")
        pg = LocalPostgres(root / "pg", initdb_args=["--wal-segsize=1"],
                           settings=walarchive.archive_settings(archive)).start()
        said: list[str] = []
        assert walarchive.wait_archived(pg, timeout=20, say=said.append)   # a switch, archived
        assert walarchive.wait_archived(pg, timeout=5, say=said.append), said   # nothing written since
        pg.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)
