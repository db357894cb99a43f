"""Day one of the sandbox looks maintained: a generated history pruned as retention would have
left it passes the daily freshness checks and the audit's retention and recoverability
controls, and the seeded records say plainly that they are sandbox history."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from backupkit.catalog import local_backups
from backupkit.checks.freshness import check_freshness
from backupkit.config import load_config
from backupkit.jobs.daily import backup_key
from backupkit.jobs.audit import backup_index, dr_drill_control, restore_tests_control, retention_controls
from backupkit.storage.objectstore import Bucket
from backupkit.storage.statedir import StateDir
from backupkit.state import VerificationState
from sandbox import seed
from sandbox.bookingdb import create_booking_db
from sandbox.history import generate_history
from sandbox.s3server import create_production_bucket
from sandbox.stack import CONFIG_FILE, sandbox_env

DAYS = 75


@pytest.fixture(scope="module")
def seeded(pg, moto_server, tmp_path_factory, now):
    root = tmp_path_factory.mktemp("seeded")
    mp = pytest.MonkeyPatch()
    try:
        for k, v in sandbox_env(root, pg.port, moto_server.endpoint_url).items():
            mp.setenv(k, v)
        mp.setenv("BACKUP_BUCKET", "seeded-history")
        config = load_config(CONFIG_FILE)
        client = moto_server.client()
        create_production_bucket(client, config.bucket)
        create_booking_db(pg, "seeded_db", scale=100)
        generate_history(config, pg, now=now, days=DAYS, database="seeded_db")
        report = seed.seed(config, now=now, say=lambda *_: None)
        from sandbox.history import sync_to_s3

        sync_to_s3(config, client)
        yield config, client, report
    finally:
        mp.undo()
        pg.psql('DROP DATABASE IF EXISTS "seeded_db" WITH (FORCE)', check=False)


def test_pruned_history_keeps_what_the_policy_keeps(seeded, now):
    config, _, report = seeded
    db = config.source("trixtech-db")
    kept = local_backups(db)
    assert report["pruned_by_policy"]["trixtech-db"] == DAYS - len(kept) > 0
    days = {b.timestamp.date() for b in kept}
    newest = kept[-1].timestamp.date()
    assert all(newest - timedelta(days=i) in days for i in range(30))  # keep_daily: 30
    assert len(kept) < DAYS


def test_the_daily_checks_pass_on_the_pruned_history(seeded, now):
    """Before the gap window followed keep_daily, every maintained history failed nightly_gaps
    between its dailies and its weeklies."""
    config, _, _ = seeded
    for src in config.sources:
        failed = [r for r in check_freshness(src, local_backups(src), now) if not r.ok]
        assert failed == [], (src.name, failed)


def test_the_audit_passes_on_the_seeded_sandbox_and_says_it_is_sandbox_history(seeded, now):
    config, client, report = seeded
    state = VerificationState(config.state_dir)
    for src in config.sources:
        for b in local_backups(src):
            state.record(backup_key(src, b), None, b.size, True, now)
    bucket = Bucket(client, config.bucket)
    index, notes = backup_index(config, bucket)
    for control in retention_controls(config, index, now=now, state=state, bucket=bucket, notes=notes):
        assert control.status == "pass", (control.id, control.summary)
    for control in (restore_tests_control(config, now=now), dr_drill_control(config, now=now)):
        assert control.status == "pass", (control.id, control.summary)
    lines = [json.loads(ln) for ln in StateDir(config.state_dir).restore_tests.read_text().splitlines()]
    assert {ln["run_id"] for ln in lines} == set(report["restore_tests"]) and len(report["restore_tests"]) == 3
    assert all(ln["run_id"].startswith("sandbox-seed-") and "nothing was run" in ln["detail"] for ln in lines)
    [drill] = [json.loads(ln) for ln in StateDir(config.state_dir).dr_drills.read_text().splitlines()]
    assert drill["run_id"].startswith("sandbox-seed-dr-drill-") and "nothing was run" in drill["detail"]
    assert all(s["sandbox"] is True for s in drill["scenarios"])


def test_seed_never_writes_over_real_records(seeded, now):
    config, _, _ = seeded
    before = StateDir(config.state_dir).restore_tests.read_text()
    again = seed.seed_records(config, now=now)
    assert again == {"restore_tests": [], "dr_drill": None}
    assert StateDir(config.state_dir).restore_tests.read_text() == before


@pytest.mark.parametrize("now, expected", [
    (datetime(2029, 1, 1, 9, 0, tzinfo=timezone.utc), ["2028-10-02", "2028-11-06", "2028-12-04"]),  # before 09:40
    (datetime(2029, 1, 1, 10, 0, tzinfo=timezone.utc), ["2028-11-06", "2028-12-04", "2029-01-01"]),
    (datetime(2028, 3, 1, 0, 0, tzinfo=timezone.utc), ["2027-12-06", "2028-01-03", "2028-02-07"]),
])
def test_first_mondays(now, expected):
    assert [d.date().isoformat() for d in seed.first_mondays(now, 3)] == expected
    assert all(d.weekday() == 0 and d.day <= 7 for d in seed.first_mondays(now, 3))
