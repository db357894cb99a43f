"""Point-in-time restores (backupkit/restore/pitr.py) from a real archive of a real server with marker
rows: base backup plus replay through our restore_command into a scratch server, paused or promoted at
the target, markers present up to it and absent after it; a target the archive cannot reach fails."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _config_helpers import short_dir
from _wal_archive import archiving_server, first_stop_after, pitr_yaml, wait_archived
from backupkit.config import load_config
from backupkit.jobs import daily
from backupkit.restore.pitr import PitrError, PitrTarget, marker_checks, parse_target_time, pitr_restore
from backupkit.wal.restore_command import check_destination
from sandbox import walarchive



@pytest.fixture(scope="module")
def site():
    """A server archiving 1 MB segments, one base backup, then 6 markers a second apart, all archived."""
    root = short_dir("bk-pitr-")
    pg = archiving_server(root / "archive", root / "base", root / "pg")
    (root / "backups.yaml").write_text(pitr_yaml("pitr-wal", root))
    config = load_config(root / "backups.yaml")
    source = config.source("pitr-wal")
    walarchive.ensure_markers(pg)
    from backupkit import clock

    walarchive.take_base_backup(pg, source, clock.now())
    marks = []
    for i in range(6):
        time.sleep(1.2)
        marks.append(parse_target_time(walarchive.write_marker(pg, f"m{i}").replace(" ", "T")))
    wait_archived(pg, root / "archive")
    results = daily.check_integrity(config, "pitr-wal")
    assert not [r for r in results if not r["ok"]], results
    yield root, pg, config, marks
    pg.destroy()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("action", ["pause", "promote"])
def test_restore_to_a_time_between_markers(site, action):
    root, pg, config, marks = site
    target = PitrTarget(marks[2] + (marks[3] - marks[2]) / 2, action=action)
    result = pitr_restore(config, "pitr-wal", target, checks=marker_checks(lambda sql: pg.psql(sql)), timeout=120)
    assert result["ok"], result["problems"][0]["detail"]
    checks = {c["check"]: c for c in result["checks"]}
    assert "recovery stopped before commit" in checks["pitr_reached"]["detail"]
    assert checks["pitr_markers_before"]["detail"].startswith("3 row(s)")   # m0..m2
    assert checks["pitr_markers_after"]["ok"]
    assert not list((root / "scratch" / "pitr").iterdir())   # torn down


def test_a_target_outside_the_verified_window_is_refused(site):
    root, pg, config, marks = site
    result = pitr_restore(config, "pitr-wal", PitrTarget(marks[-1] + timedelta(days=1)))
    assert not result["ok"] and "outside the verified window" in result["problems"][0]["detail"]


def test_a_gap_makes_the_restore_fail_not_pass_silently(site, tmp_path):
    root, pg, config, marks = site
    target = PitrTarget(marks[-1] - timedelta(milliseconds=500))
    # The live server goes on writing (timed checkpoints, archive_timeout): a later segment without
    # any marker is archived, as here on purpose. Removing the archive's last file then removed
    # nothing the restore needed, and it passed (the test failed once in a long 2-worker run).
    pg.psql("CHECKPOINT")
    wait_archived(pg, root / "archive")
    # The segment recovery must read to stop: where the first commit after the target ends (m5's).
    segment, xid = first_stop_after(root / "archive", target.time)
    assert segment < max(p.name for p in (root / "archive").iterdir() if len(p.name) == 24)
    victim = root / "archive" / segment
    stash = tmp_path / victim.name
    shutil.move(victim, stash)
    try:
        result = pitr_restore(config, "pitr-wal", target, checks=marker_checks(lambda sql: pg.psql(sql)), timeout=120)
    finally:
        shutil.move(stash, victim)
    [problem] = result["problems"]
    assert problem["check"] == "pitr_reached" and "recovery ended before the target time" in problem["detail"]
    assert f"recovery stopped at {segment}, which is not in" in problem["detail"], (xid, problem["detail"])


def test_target_parsing_rules():
    with pytest.raises(PitrError, match="time zone"):
        parse_target_time("2026-03-01T12:00:00")
    with pytest.raises(PitrError, match="ISO 8601"):
        parse_target_time("yesterday")
    t = parse_target_time("2026-03-01T12:00:00Z")
    assert PitrTarget(t).pg_time == "2026-03-01 12:00:00.000000+00"
    with pytest.raises(PitrError):
        PitrTarget(t, timeline="2; DROP")
    with pytest.raises(PitrError):
        PitrTarget(t, action="shutdown")


# -- the restore_command: hostile names and destinations ------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_restore_command_destination_rule(dest):
    try:
        p = check_destination(dest)
    except ValueError:
        return
    assert p.parts[0] == "pg_wal" and len(p.parts) == 2 and ".." not in p.parts and not p.is_absolute()


@pytest.mark.parametrize("name, dest", [("../../etc/passwd", "pg_wal/RECOVERYXLOG"),
                                        ("000000010000000000000001", "/tmp/x"),
                                        ("000000010000000000000001", "pg_wal/../../x"),
                                        ("000000010000000000000001.gz", "pg_wal/RECOVERYXLOG"),
                                        ("00000001000000000000000Z", "pg_wal/RECOVERYXLOG")])
def test_restore_command_refuses_without_traceback(site, tmp_path, name, dest):
    root = site[0]
    proc = subprocess.run([sys.executable, "-m", "backupkit.wal.restore_command", "--archive", str(root / "archive"),
                           "--segment-size", str(1 << 20), name, dest], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "backupkit restore_command" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_restore_command_copies_a_segment_whole(site, tmp_path):
    root = site[0]
    seg = sorted(p for p in (root / "archive").iterdir() if len(p.name) == 24)[0]
    (tmp_path / "pg_wal").mkdir()
    proc = subprocess.run([sys.executable, "-m", "backupkit.wal.restore_command", "--archive", str(root / "archive"),
                           "--segment-size", str(1 << 20), seg.name, "pg_wal/RECOVERYXLOG"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "pg_wal" / "RECOVERYXLOG").read_bytes() == seg.read_bytes()
    missing = subprocess.run([sys.executable, "-m", "backupkit.wal.restore_command", "--archive",
                              str(root / "archive"), "--segment-size", str(1 << 20), "00000009.history",
                              "pg_wal/RECOVERYHISTORY"], cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 1 and "is not in" in missing.stderr


# -- the monthly test's part ------------------------------------------------------------------------
def test_monthly_pitr_target_is_random_inside_the_window_and_passes(site):
    from backupkit import clock
    from backupkit.jobs.restore_test import pitr_targets, pitr_test

    root, pg, config, marks = site
    now = max(clock.now(), marks[-1] + timedelta(minutes=1))   # the server's times are real, the clock may be pinned
    [t] = pitr_targets(config, now=now, seed="run-1")
    assert pitr_targets(config, now=now, seed="run-1") == [t]          # a rerun repeats the choice
    others = {pitr_targets(config, now=now, seed=f"run-{i}")[0]["target_time"] for i in range(2, 12)}
    assert len(others) > 5                                              # and other runs draw other times
    start, end = (parse_target_time(x) for x in t["window"])
    for x in others | {t["target_time"]}:
        assert start <= parse_target_time(x) <= end
    result = pitr_test(config, t, live=lambda sql: pg.psql(sql))
    assert result["ok"], result["problems"]
    assert {c["check"] for c in result["checks"]} >= {"pitr_reached", "pitr_markers_before", "pitr_markers_after"}
