"""Restore time as a target: ``restore.target_duration`` per source, the monthly test's verdict and
rate, the audit's control, and the trend the health page and the weekly report show."""

from __future__ import annotations

from datetime import timedelta

import pytest

from _clock import SESSION_NOW
from backupkit.config import load_config
from backupkit.config.reader import ConfigError
from backupkit.jobs.audit import restore_time_control
from backupkit.jobs.restore_test import apply_restore_targets, summarize_restore_tests
from backupkit.jobs.weekly import collect_trends, findings
from backupkit.reports.weekly import weekly_doc
from backupkit.results import read_jsonl, record_restore_tests, restore_trend

CONFIG = """
bucket: {{name: target-backups}}
databases:
  - name: db
    database: app
    dump_format: custom
    local_dir: {root}/db
    s3_prefix: db/
    pattern: app_%Y%m%d_%H%M%S.dump
    restore: {{key_tables: [bookings], target_duration: {db_target}}}
file_sets:
  - name: files
    local_dir: {root}/files
    s3_prefix: files/
    pattern: files_%Y%m%d_%H%M%S.tar.gz
{files_restore}verification: {{state_dir: {root}/state}}
"""


def config(tmp_path, db_target="45min", files_restore=""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "backups.yaml"
    path.write_text(CONFIG.format(root=tmp_path, db_target=db_target, files_restore=files_restore))
    return load_config(path)


def result(source="db", seconds=60.0, size=600_000_000, ok=True, backup="app_20261201_020000.dump"):
    return {"source": source, "backup": backup, "role": "newest", "ok": ok, "duration_seconds": seconds,
            "restore_seconds": seconds - 5, "bytes": size, "problems": []}


def test_target_duration_is_read_for_every_kind(tmp_path):
    cfg = config(tmp_path, files_restore="    restore: {target_duration: 1h30min}\n")
    assert cfg.source("db").restore_target_seconds == 45 * 60
    assert cfg.source("db").restore.key_tables == ("bookings",)  # the kind still reads the rest
    assert cfg.source("files").restore_target_seconds == 90 * 60
    assert config(tmp_path / "none", files_restore="").source("files").restore_target_seconds is None


@pytest.mark.parametrize("db_target, files_restore, words", [
    ("30m", "", "databases[0].restore.target_duration: expected a duration like 15min"),  # m means months here
    ("0s", "", "databases[0].restore.target_duration: must be longer than 0"),
    ("[1]", "", "databases[0].restore.target_duration: expected a duration such as 45min"),
    ("1h", "    restore: {target_duration: 1h, key_tables: [x]}\n", "file_sets[0].restore: unknown key"),
])
def test_a_bad_target_is_refused_naming_the_key(tmp_path, db_target, files_restore, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        config(tmp_path, db_target=db_target, files_restore=files_restore)


def test_a_restore_over_its_target_fails_with_the_rate(tmp_path):
    cfg = config(tmp_path)  # db: 45 min; files: no target
    slow, fast, untargeted = apply_restore_targets(cfg, [
        result(seconds=45 * 60 + 1), result(seconds=600.0), result("files", seconds=9999.0, size=None)])
    assert slow["ok"] is False and slow["target_seconds"] == 2700
    (p,) = slow["problems"]
    assert p["check"] == "restore_time" and p["artifact"] == "db/app_20261201_020000.dump"
    assert "45.0 min (2701.0 s), over its target 45.0 min" in p["detail"]
    assert fast["ok"] is True and fast["mb_per_s"] == 1.0 and fast["problems"] == []  # 600 MB in 600 s
    assert untargeted["ok"] is True and untargeted["target_seconds"] is None and untargeted["mb_per_s"] is None
    report = summarize_restore_tests([slow, fast, untargeted])
    assert report["ok"] is False and report["sources"]["db"]["ok"] is False and report["sources"]["files"]["ok"]
    assert "MB/S" in report["table"].splitlines()[0]


def record(cfg, runs):
    for days_ago, seconds in runs:
        record_restore_tests(cfg.state_dir, apply_restore_targets(cfg, [result(seconds=seconds)]),
                             run_id=f"run-{days_ago}", now=SESSION_NOW - timedelta(days=days_ago))


def test_the_recorded_history_keeps_duration_bytes_rate_and_target(tmp_path):
    cfg = config(tmp_path)
    record(cfg, [(60, 100.0), (30, 200.0)])
    records, problems = read_jsonl(cfg.state.restore_tests)
    assert problems == [] and {(r["duration_seconds"], r["bytes"], r["mb_per_s"], r["target_seconds"])
                                for r in records} == {(100.0, 600_000_000, 6.0, 2700.0), (200.0, 600_000_000, 3.0,
                                                                                           2700.0)}
    trend = restore_trend(records, "db")
    assert [p["duration_seconds"] for p in trend] == [100.0, 200.0]  # oldest first
    assert restore_trend(records, "files") == []


@pytest.mark.parametrize("runs, status, words", [
    ([(60, 1000.0), (30, 1200.0)], "pass", "met it"),
    ([(60, 1000.0), (30, 2701.0)], "fail", "db: the newest restore test"),
    ([(60, 9999.0), (30, 100.0)], "pass", "met it"),  # only the newest counts
    ([], "fail", "db: no restore test recorded, target 45.0 min"),
])
def test_the_audit_control_compares_the_newest_test_with_the_target(tmp_path, runs, status, words):
    cfg = config(tmp_path)
    record(cfg, runs)
    c = restore_time_control(cfg, now=SESSION_NOW)
    assert c.status == status and words in c.summary, c.summary
    rows = {r[0]: r for r in c.rows}
    assert rows["files"][1] == "none" and rows["files"][-1] == "no target"


def test_the_audit_control_is_informational_without_targets(tmp_path):
    path = tmp_path / "backups.yaml"
    path.write_text(CONFIG.format(root=tmp_path, db_target="1h", files_restore="").replace(
        ", target_duration: 1h", ""))
    assert restore_time_control(load_config(path), now=SESSION_NOW).status == "info"


def test_the_weekly_report_shows_the_trend_and_flags_a_slow_newest_test(tmp_path):
    cfg = config(tmp_path)
    record(cfg, [(60, 1000.0), (30, 3000.0)])
    trends = collect_trends(cfg, now=SESSION_NOW)
    db = trends["sources"]["db"]
    assert [p["duration_seconds"] for p in db["restore_tests"]] == [1000.0, 3000.0]
    problems, warnings = findings({"trends": trends})
    assert any("db: the restore test of" in w and "over its target 2700 s" in w for w in warnings), warnings
    md = weekly_doc(report_date=SESSION_NOW.date(), trends=trends, failures=None, storage=None,
                    encryption=None).markdown()
    assert "Restore time of the last 2 restore test(s), target 45.0 min" in md
    assert "| 50.0 min | 0.2 | NO |" in md and "| 16.7 min | 0.6 | yes |" in md
