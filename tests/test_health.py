"""The health core on real histories: each verdict is produced by a real defect, seen through the jobs.

Each case generates a small history with the sandbox's generator (real pg_dump, real tar.gz,
copies in moto's S3 with SHA-256 checksums), runs the daily job's checks for real, and reads the
page's facts through :class:`HealthService`, exactly as the plugin does.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from _clock import SESSION_NOW
from _health_helpers import build
from backupkit.health import copy_evidence, read_daily_run
from backupkit.health_cache import HealthService
from backupkit.metric_names import PITR_WINDOW_END, PITR_WINDOW_START
from backupkit.results import record_dr_drill, record_restore_tests
from backupkit.reports.health_page import render_page
from sandbox.bookingdb import create_booking_db
from sandbox.history import _flip_bit

DATABASE = "trixtech_health"
NIGHTS = 12


@pytest.fixture(scope="module")
def health_db(pg):
    create_booking_db(pg, DATABASE, scale=300)
    yield DATABASE
    pg.psql(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)', check=False)


@pytest.fixture
def sandbox(pg, moto_server, health_db, tmp_path, monkeypatch):
    """A fresh history per test (the tests damage it), its env restored afterwards."""
    def make(**kw):
        hs = build(pg, moto_server, tmp_path, monkeypatch, days=kw.pop("days", NIGHTS), database=health_db,
                   now=kw.pop("now", SESSION_NOW), **kw)
        return hs
    return make


def passing_restore_tests(hs, when=SESSION_NOW - timedelta(days=3), **extra):
    results = [{"source": s.name, "ok": True, "backup": hs.history.newest(s.name).name, "role": "newest",
                "duration_seconds": 12.5, **extra} for s in hs.config.sources]
    record_restore_tests(hs.config.state_dir, results, run_id="scheduled__monthly", now=when)


def service(hs, **kw) -> HealthService:
    return HealthService(lambda c: hs.bucket, config_path=hs.config.path, now=lambda: SESSION_NOW, **kw)


def _weekly_deletions(source) -> int:
    """What ``keep_weekly`` with count left deletes (docs/retention.md, rules 2-4): the newest backup
    of each ISO week (UTC) is kept, and so is the oldest backup; every other one goes."""
    from backupkit.catalog import local_backups

    policy = source.retention
    assert policy.keep_weekly >= NIGHTS and not (policy.keep_last or policy.keep_hourly or policy.keep_daily
                                                 or policy.keep_monthly or policy.keep_yearly or policy.keep_within)
    assert str(policy.timezone) in ("UTC", "Etc/UTC")
    stamps = sorted(b.timestamp for b in local_backups(source))
    newest_of_week = {t.isocalendar()[:2]: t for t in stamps}
    return len(stamps) - len(set(newest_of_week.values()) | {stamps[0]})


def by_name(snap) -> dict:
    return {s["name"]: s for s in snap["sources"]}


def test_a_healthy_history_is_ok_with_the_facts_the_jobs_recorded(sandbox):
    hs = sandbox(multipart_threshold=16 * 1024)  # the dumps (~60 KB) become multipart uploads
    passing_restore_tests(hs, verified_rows=1800)
    snap = service(hs).snapshot()
    got = by_name(snap)
    # A history of 12 nights that no sweep has maintained: the weekly-only Kubernetes source's next
    # sweep would delete most of them, more than the guard rail allows (the sandbox's `make up` prunes
    # as nightly sweeps would have). How many depends on where the nights fall in ISO weeks.
    k8s = got.pop("trixtech-k8s")
    doomed = _weekly_deletions(hs.config.source("trixtech-k8s"))
    assert doomed > NIGHTS // 2
    assert k8s["status"] == "warning" and k8s["reason"].startswith("the next retention sweep would be refused: "
                                                                   f"would delete {doomed} of {NIGHTS} backups")
    assert {n: s["status"] for n, s in got.items()} == dict.fromkeys(got, "ok"), \
        {n: s["problems"] for n, s in got.items()}
    db = got["trixtech-db"]
    newest = hs.history.newest("trixtech-db").name
    assert db["newest"]["name"] == newest and db["count"] == NIGHTS
    assert db["reason"].startswith(f"newest backup {newest} is ")
    assert db["verification"]["newest"]["verdict"] == "passed"
    assert db["verification"]["oldest_full_read"]["at"].startswith(SESSION_NOW.date().isoformat())
    # The multipart copies were proved by their composite checksums, as the daily run recorded.
    assert db["s3"]["newest_check"] == {"ok": True, "method": "composite-sha256"}
    assert db["s3"]["evidence"] == {"composite-sha256": NIGHTS}
    for name, src in got.items():  # below the threshold a copy is single-part: its plain SHA-256 proves it
        method = "composite-sha256" if src["newest"]["size"] > 16 * 1024 else "sha256"
        assert src["s3"]["evidence"] == {method: NIGHTS}, name
    assert db["restore_test"]["duration_seconds"] == 12.5 and db["restore_test"]["all_ok"]
    assert db["restore_test"]["rows"] == 1800
    assert len(db["charts"]["nights"]) == NIGHTS and db["charts"]["nights"][-1]["age_reached_hours"] == 24.0
    assert db["retention"]["total"] == NIGHTS and not db["retention"]["refused"]


def test_a_damaged_newest_backup_warns_until_read_then_fails_with_the_reason(sandbox):
    hs = sandbox()
    passing_restore_tests(hs)
    svc = service(hs)
    assert by_name(svc.snapshot())["trixtech-db"]["status"] == "ok"
    newest = hs.history.newest("trixtech-db")
    _flip_bit(newest)  # as the sandbox's "damaged" defect does: same size, same mtime
    s = by_name(svc.snapshot())["trixtech-db"]
    assert s["status"] == "warning"
    assert s["reason"] == (f"1 backup(s) changed since their last full read (e.g. {newest.name}): "
                           "re-read by the next daily run")
    hs.rerun_daily(SESSION_NOW)
    s = by_name(svc.snapshot())["trixtech-db"]
    assert s["status"] == "failed"
    assert s["reason"].startswith(f"newest backup {newest.name} failed verification on "
                                  f"{SESSION_NOW.date().isoformat()}: ")
    assert "sha256" in s["reason"]
    assert "\n" not in s["reason"] and len(s["reason"]) <= 400  # one line, however long pg_restore's output
    page = render_page(svc.snapshot())
    assert f'data-source="trixtech-db" data-status="failed"' in page
    assert by_name(svc.snapshot())["trixtech-files"]["status"] == "ok"  # the other sources are unaffected


def test_a_copy_missing_in_s3_fails_the_source_after_the_daily_run(sandbox):
    hs = sandbox()
    passing_restore_tests(hs)
    svc = service(hs)
    newest = hs.history.newest("trixtech-files").name
    hs.bucket.client.delete_object(Bucket=hs.bucket.name, Key=f"files/{newest}")
    hs.rerun_daily(SESSION_NOW)  # the facts file changes: the listing is taken again at once
    s = by_name(svc.snapshot())["trixtech-files"]
    assert s["status"] == "failed"
    assert s["reason"].startswith(f"daily run of {SESSION_NOW.date().isoformat()}: trixtech-files/{newest}: "
                                  "s3_present: ")
    assert s["s3"]["newest_has_copy"] is False
    assert {"level": "warning", "text": f"newest backup {newest} has no copy in S3 yet"} in s["problems"]


def test_an_old_newest_backup_and_a_stale_daily_run_are_judged_against_the_clock(sandbox):
    hs = sandbox()
    passing_restore_tests(hs)
    svc = service(hs)
    later = SESSION_NOW + timedelta(days=2)
    s = by_name(svc.snapshot(later))["trixtech-db-sql"]
    assert s["status"] == "failed"
    assert s["reason"].startswith(f"newest backup {hs.history.newest('trixtech-db-sql').name} is ")
    assert "(max_age_hours 25)" in s["reason"]
    assert any(p["text"].startswith("the last daily verification ran ") for p in s["problems"])


def test_restore_tests_failed_slow_or_missing(sandbox):
    hs = sandbox()
    svc = service(hs, s3_ttl=3600)
    assert by_name(svc.snapshot())["trixtech-db"]["reason"] == "no restore test recorded"
    passing_restore_tests(hs, duration_seconds=hs.config.drill.rto_target_minutes * 60 + 1)
    s = by_name(svc.snapshot())["trixtech-db"]
    assert s["status"] == "warning" and s["reason"].startswith("last restore test took ")
    record_restore_tests(hs.config.state_dir, [{"source": "trixtech-db", "ok": False, "role": "newest",
                                                "detail": "row count of public.users: 0 != 300"}],
                         run_id="manual__retest", now=SESSION_NOW - timedelta(hours=1))
    s = by_name(svc.snapshot())["trixtech-db"]
    assert s["status"] == "failed"
    assert s["reason"].endswith("failed: row count of public.users: 0 != 300")
    assert s["restore_test"]["run_id"] == "manual__retest"


def test_the_cache_recomputes_only_when_an_input_changes(sandbox):
    hs = sandbox()
    svc = service(hs, s3_ttl=3600)
    svc.snapshot()
    svc.snapshot()
    assert svc.refreshes == 1
    extra = hs.config.source("trixtech-files").local_dir / "unrelated.txt"
    extra.write_text("a file that is not a backup still changes the directory")
    svc.snapshot()
    assert svc.refreshes == 2
    # An S3-only change is seen after the TTL (here: never within the test) or any local change.
    newest = hs.history.newest("trixtech-db").name
    hs.bucket.client.delete_object(Bucket=hs.bucket.name, Key=f"database/{newest}")
    assert by_name(svc.snapshot())["trixtech-db"]["s3"]["newest_has_copy"] is True
    assert svc.refreshes == 2
    assert by_name(service(hs, s3_ttl=0).snapshot())["trixtech-db"]["s3"]["newest_has_copy"] is False


def test_drill_and_pitr_window_are_shown_when_recorded(sandbox):
    hs = sandbox()
    record_dr_drill(hs.config.state_dir, ok=False, run_id="manual__drill", now=SESSION_NOW - timedelta(days=10),
                    scenarios=[{"name": "database_corruption", "ok": False, "rto_seconds": 20000.0,
                                "rto_target_seconds": 14400.0, "rpo_seconds": 3600.0,
                                "rpo_target_seconds": 90000.0}])
    prom = hs.config.state.metrics_dir / "wal.prom"
    prom.parent.mkdir(parents=True, exist_ok=True)
    start, end = (SESSION_NOW - timedelta(days=7)).timestamp(), (SESSION_NOW - timedelta(minutes=5)).timestamp()
    prom.write_text(f'# TYPE {PITR_WINDOW_START} gauge\n{PITR_WINDOW_START}{{source="trixtech-db"}} {start}\n'
                    f'# TYPE {PITR_WINDOW_END} gauge\n{PITR_WINDOW_END}{{source="trixtech-db"}} {end}\n')
    snap = service(hs).snapshot()
    assert snap["drill"]["ok"] is False and snap["drill"]["scenarios"][0]["rto_seconds"] == 20000.0
    pitr = by_name(snap)["trixtech-db"]["pitr"]
    assert pitr["start"][:16] == (SESSION_NOW - timedelta(days=7)).isoformat()[:16]
    assert by_name(snap)["trixtech-files"]["pitr"] is None
    page = render_page(snap)
    assert "database_corruption: MISSED" in page


def test_a_size_jump_is_marked_on_the_chart(sandbox):
    hs = sandbox()
    newest = hs.history.newest("trixtech-files")
    with open(newest, "ab") as f:
        f.write(b"\0" * (3 * newest.stat().st_size))  # four times the usual size
    s = by_name(service(hs).snapshot())["trixtech-files"]
    assert s["charts"]["nights"][-1]["anomalies"][0].startswith("size jump: ")
    assert s["charts"]["anomalies"] == 1
    page = render_page(service(hs).snapshot())
    assert page.count('class="anomaly"') == 1


def test_unreadable_inputs_become_notes_not_errors(sandbox):
    hs = sandbox()
    hs.config.state.facts_file("daily").write_text('{"format": 1, "dag_id": 5}')
    hs.config.state.metrics_dir.mkdir(parents=True, exist_ok=True)
    (hs.config.state.metrics_dir / "broken.prom").write_text('metric{source="x" 1\n')
    hs.config.state.restore_tests.parent.mkdir(parents=True, exist_ok=True)
    hs.config.state.restore_tests.write_text('{"time": "yesterday", "ok": true}\n[1, 2]\n')
    snap = service(hs).snapshot()
    notes = " | ".join(snap["notes"])
    assert "daily.json: dag_id must be a string" in notes
    assert "metrics broken.prom: not a Prometheus textfile" in notes
    assert "restore_tests.jsonl line 1" in notes and "restore_tests.jsonl line 2" in notes
    assert all(s["daily_run"] is None for s in snap["sources"])


def test_the_daily_facts_name_the_evidence_of_every_copy(sandbox):
    hs = sandbox(daily_run=False)
    results = hs.rerun_daily(SESSION_NOW)
    details = [r["detail"] for r in results if r["check"] == "s3_checksum"]
    assert details and all(copy_evidence(d) == "sha256" for d in details)
    facts = read_daily_run(hs.config.state.facts_file("daily"))
    assert facts["run_id"] == f"manual__{SESSION_NOW.isoformat()}"
    assert [facts["sources"][s.name]["map_index"] for s in hs.config.sources] == list(range(len(hs.config.sources)))
    assert all(v == {"ok": True, "method": "sha256"} for v in facts["sources"]["trixtech-db"]["s3"].values())


def test_the_restore_time_trend_is_shown_against_the_sources_target(sandbox):
    hs = sandbox()
    svc = service(hs, s3_ttl=3600)
    target = hs.config.source("trixtech-db").restore_target_seconds
    assert target == 30 * 60  # restore.target_duration in the repository's configuration
    for days_ago, seconds in ((63, 100.0), (33, target + 60)):
        record_restore_tests(hs.config.state_dir, [{"source": "trixtech-db", "ok": True, "role": "newest",
                                                    "duration_seconds": seconds, "mb_per_s": 2.5}],
                             run_id=f"scheduled__{days_ago}", now=SESSION_NOW - timedelta(days=days_ago))
    s = by_name(svc.snapshot())["trixtech-db"]
    assert [p["duration_seconds"] for p in s["restore_test"]["trend"]] == [100.0, target + 60]
    assert s["restore_test"]["target_seconds"] == target
    assert s["status"] == "warning" and "over the target 1800 s" in s["reason"]
    page = render_page(svc.snapshot())
    assert "trixtech-db: restore time, last 2 restore tests" in page and "at 2.5 MB/s" in page
