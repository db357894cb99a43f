"""Freshness, size and gap checks over backup files; the backup-log scan."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backupkit.catalog import local_backups
from backupkit.checks.freshness import check_freshness
from backupkit.checks.logs import MAX_LINES_PER_FILE, scan_logs
from backupkit.config import LogSource, Source, Thresholds
from backupkit.kinds.postgres import DatabaseSpec
from backupkit.naming import NamePattern

NOW = datetime(2025, 6, 15, 8, 0, tzinfo=timezone.utc)
PATTERN = NamePattern("trixtech_%Y%m%d_%H%M%S.dump")


def _source(tmp_path: Path, **thresholds) -> Source:
    return Source(name="trixtech-db", kind="database", local_dir=tmp_path, s3_prefix="database/",
                  pattern=PATTERN, spec=DatabaseSpec(dump_format="custom"), thresholds=Thresholds(**thresholds))


def _history(tmp_path: Path, nights: int, *, size=1000, skip=(), last_hours_ago=6.0, sizes=None) -> None:
    """Nightly files named by their timestamp, the newest ``last_hours_ago`` before NOW."""
    newest = NOW - timedelta(hours=last_hours_ago)
    for i in range(nights):
        if i in skip:
            continue
        ts = newest - timedelta(days=i)
        n = sizes.get(i, size) if sizes else size
        (tmp_path / PATTERN.name_for(ts)).write_bytes(b"x" * n)
    (tmp_path / "README.txt").write_text("not a backup")


def _check(tmp_path, **kw):
    src = _source(tmp_path, **kw)
    results = check_freshness(src, local_backups(src), NOW)
    return {r.check: r for r in results}, results


def test_healthy_history_passes(tmp_path):
    _history(tmp_path, 40)
    by, results = _check(tmp_path)
    assert all(r.ok for r in results), results
    assert {r.check for r in results} == {"present", "fresh", "size", "nightly_gaps"}
    assert by["fresh"].detail.startswith("6.0 h old")
    assert by["fresh"].artifact == "trixtech-db/" + PATTERN.name_for(NOW - timedelta(hours=6))


def test_no_backup_is_a_problem(tmp_path):
    results = check_freshness(_source(tmp_path), [], NOW)
    assert [(r.check, r.ok) for r in results] == [("present", False)]
    assert str(tmp_path) in results[0].detail


def test_stale_backup_is_a_problem_with_its_age(tmp_path):
    _history(tmp_path, 10, last_hours_ago=30)
    by, _ = _check(tmp_path)
    assert not by["fresh"].ok
    assert "30.0 h old" in by["fresh"].detail and "threshold 25 h" in by["fresh"].detail
    by2, _ = _check(tmp_path, max_age_hours=36)
    assert by2["fresh"].ok


def test_future_timestamp_is_a_problem(tmp_path):
    _history(tmp_path, 3, last_hours_ago=-5)
    by, _ = _check(tmp_path)
    assert not by["fresh"].ok and "future" in by["fresh"].detail


def test_empty_halved_and_doubled_backups(tmp_path):
    for newest_size, ok, word in ((0, False, "empty"), (400, False, "too small"), (2600, False, "too large"),
                                  (1400, True, "1.40x")):
        d = tmp_path / str(newest_size)
        d.mkdir()
        _history(d, 10, sizes={0: newest_size})
        by, _ = _check(d)
        assert by["size"].ok is ok, by["size"]
        assert word in by["size"].detail


def test_size_median_uses_only_the_window(tmp_path):
    # Old backups were tiny; the last 7 before the newest are normal: no false alarm.
    _history(tmp_path, 30, sizes={i: 10 for i in range(8, 30)})
    by, _ = _check(tmp_path, size_window=7)
    assert by["size"].ok, by["size"]
    by2, _ = _check(tmp_path, size_window=29)
    assert not by2["size"].ok  # the median over 29 is the tiny size: the newest looks too large


def test_missing_night_is_reported_with_its_date(tmp_path):
    _history(tmp_path, 30, skip=(5,))
    by, results = _check(tmp_path)
    gaps = [r for r in results if r.check == "nightly_gaps"]
    assert len(gaps) == 1 and not gaps[0].ok
    missing = (NOW - timedelta(hours=6) - timedelta(days=5)).date().isoformat()
    assert missing in gaps[0].detail and "48.0 h" in gaps[0].detail


def test_missing_range_and_old_gaps_outside_the_window(tmp_path):
    _history(tmp_path, 80, skip=(3, 4, 5, 60, 61))
    _, results = _check(tmp_path)
    gaps = [r for r in results if r.check == "nightly_gaps"]
    assert len(gaps) == 1, gaps  # the gap 60 nights ago is outside the 35-day window
    first = (NOW - timedelta(hours=6) - timedelta(days=5)).date().isoformat()
    last = (NOW - timedelta(hours=6) - timedelta(days=3)).date().isoformat()
    assert f"{first} to {last}" in gaps[0].detail


# -- logs ----------------------------------------------------------------------------------
def _logs(tmp_path):
    return [LogSource("db_backup", tmp_path / "db_backup.log"), LogSource("cloud_sync", tmp_path / "cloud_sync.log")]


def _append(path: Path, *lines: str, newline=True) -> None:
    with open(path, "a") as f:
        f.write("\n".join(lines) + ("\n" if newline else ""))


def test_log_scan_reports_only_new_lines_and_survives_rotation(tmp_path):
    logs = _logs(tmp_path)
    db, sync = logs[0].path, logs[1].path
    _append(db, "2025-06-14 02:00:00 - Starting backup", "2025-06-14 02:00:05 - ERROR: pg_dump failed: disk full",
            "2025-06-14 02:00:06 - WARNING: retrying", "2025-06-14 02:01:00 - backup completed")
    _append(sync, "2025-06-14 03:00:00 - upload: ./a.dump to s3://trixtech-backups/database/a.dump")
    results, offsets = scan_logs(logs, {})
    errors = [r for r in results if not r.ok]
    assert len(errors) == 1 and errors[0].artifact == "logs/db_backup"
    assert "line 2: " in errors[0].detail and "disk full" in errors[0].detail
    warnings = [r for r in results if r.ok and r.detail.startswith("WARNING:")]
    assert len(warnings) == 1 and "retrying" in warnings[0].detail
    assert any(r.artifact == "logs/cloud_sync" and r.ok and "no ERROR" in r.detail for r in results)

    # Nothing new: nothing reported. A half-written last line waits for the next run.
    _append(db, "2025-06-15 02:00:00 - ERROR: still being writ", newline=False)
    again, offsets = scan_logs(logs, offsets)
    assert all(r.ok for r in again), again
    _append(db, "ten")
    _append(db, "pg_dump: error: connection to server failed")
    third, offsets = scan_logs(logs, offsets)
    errs = [r.detail for r in third if not r.ok]
    assert len(errs) == 2 and "line 5:" in errs[0] and "still being written" in errs[0]
    assert "line 6:" in errs[1]

    # Rotation: the old file moves away, a new one starts (smaller, new inode).
    os.rename(db, tmp_path / "db_backup.log.1")
    _append(db, "2025-06-16 02:00:00 - FATAL: no space left")
    rotated, offsets = scan_logs(logs, offsets)
    assert [r.detail for r in rotated if not r.ok] == ["line 1: 2025-06-16 02:00:00 - FATAL: no space left"]

    # Truncation in place (same inode, shorter than the offset): read from the start.
    _append(sync, "x" * 200)
    _, offsets = scan_logs(logs, offsets)
    with open(sync, "w") as f:
        f.write("ERROR: after truncate\n")
    trunc, _ = scan_logs(logs, offsets)
    assert [r.detail for r in trunc if not r.ok] == ["line 1: ERROR: after truncate"]


def test_log_scan_caps_lines_and_reports_missing_files(tmp_path):
    logs = _logs(tmp_path)
    _append(logs[0].path, *[f"ERROR: failure {i}" for i in range(MAX_LINES_PER_FILE + 7)],
            "all 0 errors fixed", "error count: 0")  # no false alarm on lower-case prose
    results, offsets = scan_logs(logs, {})
    db = [r for r in results if r.artifact == "logs/db_backup"]
    assert len(db) == MAX_LINES_PER_FILE + 1
    assert "7 more ERROR lines" in db[-1].detail and not db[-1].ok
    missing = [r for r in results if r.artifact == "logs/cloud_sync"]
    assert [(r.ok, r.detail) for r in missing] == [(False, f"log file missing: {logs[1].path}")]
    assert set(offsets) == {"db_backup"}
