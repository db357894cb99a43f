"""The per-source daily service the DAG calls, on a real history and the loopback S3."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from datetime import timedelta

import pytest

from _daily_service_helpers import NIGHTS, NOW, make_history, upload_history, write_sidecar
from backupkit.jobs import daily
from backupkit.storage.objectstore import Bucket
from backupkit.catalog import local_backups, s3_key_for
from backupkit.state import VerificationState


@pytest.fixture
def history(tmp_path, dumps):
    return make_history(tmp_path / "h", dumps["custom"], dumps["plain_gz"])


def _problems(results):
    return [r for r in results if not r["ok"]]


def _json_roundtrip(results):
    assert json.loads(json.dumps(results)) == results  # XCom-safe
    return results


def test_presence_on_a_healthy_history_and_after_a_missed_night(history):
    config = history.config()
    for source in config.sources:
        results = _json_roundtrip(daily.check_presence(config, source.name, now=NOW))
        assert not _problems(results), results
        assert {r["check"] for r in results} == {"present", "fresh", "size", "nightly_gaps"}
    backups = local_backups(config.source("trixtech-db"))
    backups[-3].path.unlink()
    gaps = _problems(daily.check_presence(config, "trixtech-db", now=NOW))
    assert [g["check"] for g in gaps] == ["nightly_gaps"]
    assert backups[-3].timestamp.date().isoformat() in gaps[0]["detail"]
    stale = _problems(daily.check_presence(config, "trixtech-db", now=NOW + timedelta(days=2)))
    assert "fresh" in {g["check"] for g in stale}


def test_integrity_reads_new_backups_then_a_rolling_share(history):
    config = history.config()
    state = VerificationState(config.state_dir)
    first = _json_roundtrip(daily.check_integrity(config, "trixtech-db", now=NOW, state=state))
    assert not _problems(first), _problems(first)
    summary = [r for r in first if r["check"] == "integrity" and r["artifact"] == "trixtech-db"]
    assert summary and summary[0]["detail"].startswith(f"read {NIGHTS} of {NIGHTS} backups in full")
    keys = [f"trixtech-db/{b.name}" for b in local_backups(config.source("trixtech-db"))]
    assert all(state.verdict(k) == "passed" for k in keys)
    assert all(state.get(k).sha256 for k in keys)

    # The next day only the rolling share is read: ceil(0.25 * 8) = 2, the oldest reads.
    second = daily.check_integrity(config, "trixtech-db", now=NOW + timedelta(days=1), state=state)
    rolling = math.ceil(config.reread_fraction * NIGHTS)
    assert f"read {rolling} of {NIGHTS} backups" in second[-1]["detail"]
    read = {r["artifact"] for r in second if r["artifact"] != "trixtech-db"}
    assert read == set(keys[:rolling])  # ties on the read time broken by key: the oldest names


def test_integrity_catches_a_damaged_backup_and_keeps_failing_until_fixed(history):
    config = history.config()
    state = VerificationState(config.state_dir)
    daily.check_integrity(config, "trixtech-db-sql", now=NOW, state=state)
    victim = local_backups(config.source("trixtech-db-sql"))[-2]
    data = victim.path.read_bytes()
    victim.path.write_bytes(data[: len(data) // 2])  # cut gzip: size changes, so it is re-read
    key = f"trixtech-db-sql/{victim.name}"
    for day in (1, 2):  # failed backups are re-read every run, not only by the rolling share
        results = daily.check_integrity(config, "trixtech-db-sql", now=NOW + timedelta(days=day), state=state)
        bad = _problems(results)
        assert bad and {r["artifact"] for r in bad} == {key}, bad
        assert state.verdict(key) == "failed"
    victim.path.write_bytes(data)  # restored from S3
    fixed = daily.check_integrity(config, "trixtech-db-sql", now=NOW + timedelta(days=3), state=state)
    assert not _problems(fixed) and state.verdict(key) == "passed"


def test_integrity_notices_content_replaced_with_its_sidecar(tmp_path, dumps):
    """Same size, sidecar rewritten to match: only the remembered SHA-256 can tell."""
    h = make_history(tmp_path / "h", dumps["custom"], dumps["plain_gz"], fraction=1.0)
    config = h.config()
    state = VerificationState(config.state_dir)
    daily.check_integrity(config, "trixtech-files", now=NOW, state=state)
    victim = local_backups(config.source("trixtech-files"))[3]
    body = bytearray(victim.path.read_bytes())
    body[4] ^= 0xFF  # the gzip header's mtime: still a valid archive, but not the bytes that passed
    victim.path.write_bytes(bytes(body))
    write_sidecar(victim.path)
    results = daily.check_integrity(config, "trixtech-files", now=NOW + timedelta(days=1), state=state)
    history_problems = [r for r in _problems(results) if r["check"] == "sha256_history"]
    assert [r["artifact"] for r in history_problems] == [f"trixtech-files/{victim.name}"]
    assert "content changed since it passed on 2025-06-15" in history_problems[0]["detail"]
    assert state.verdict(f"trixtech-files/{victim.name}") == "failed"


def test_cloud_copies_reads_no_object_bytes_and_names_bad_copies(history, s3, bucket):
    config = history.config()
    upload_history(s3, config)
    state = VerificationState(config.state_dir)
    for source in config.sources:
        results = _json_roundtrip(daily.check_cloud_copies(config, source.name, Bucket(s3, config.bucket), state=state))
        assert not _problems(results), _problems(results)
        summary = [r for r in results if r["check"] == "s3_copies"][0]
        assert (f"{NIGHTS} copies checked, {NIGHTS} by what S3 stored, 0 not compared (no SHA-256 known); "
                "read 0 bytes from S3") in summary["detail"]

    src = config.source("trixtech-db")
    backups = local_backups(src)
    s3.delete_object(Bucket=bucket, Key=s3_key_for(src, backups[-1].name))
    other = local_backups(config.source("trixtech-db-sql"))[0].path.read_bytes()
    body = bytearray(backups[2].path.read_bytes())
    body[100] ^= 1
    s3.put_object(Bucket=bucket, Key=s3_key_for(src, backups[2].name), Body=bytes(body), ChecksumAlgorithm="SHA256")
    s3.put_object(Bucket=bucket, Key="database/trixtech_20240101_020000.dump", Body=other)  # only in S3
    results = daily.check_cloud_copies(config, "trixtech-db", Bucket(s3, config.bucket), state=state)
    bad = {(r["artifact"], r["check"]): r["detail"] for r in _problems(results)}
    assert set(bad) == {(f"trixtech-db/{backups[-1].name}", "s3_present"),
                        (f"trixtech-db/{backups[2].name}", "s3_checksum")}
    assert bad[(f"trixtech-db/{backups[-1].name}", "s3_present")].endswith("missing in S3")
    s3_only = [r for r in results if r["check"] == "s3_only"][0]
    assert s3_only["ok"] and s3_only["detail"].startswith("1 backups")


def test_cloud_copies_without_any_known_sha(history, s3, bucket):
    """No sidecar and nothing in the state: only the newest is hashed; the rest are not compared."""
    config = history.config()
    upload_history(s3, config)
    for side in (history.root / "database").glob("*.sha256"):
        side.unlink()
    results = daily.check_cloud_copies(config, "trixtech-db", Bucket(s3, config.bucket),
                                      state=VerificationState(config.state_dir))
    assert not _problems(results)
    checks = [r for r in results if r["check"] == "s3_checksum"]
    compared = [r for r in checks if not r["detail"].startswith("not compared")]
    assert len(checks) == NIGHTS and len(compared) == 1
    assert compared[0]["artifact"].endswith(local_backups(config.source("trixtech-db"))[-1].name)
    summary = [r for r in results if r["check"] == "s3_copies"][0]
    assert f"1 by what S3 stored, {NIGHTS - 1} not compared" in summary["detail"]


def test_logs_report_new_lines_once(history):
    config = history.config()
    state = VerificationState(config.state_dir)
    assert not _problems(daily.check_logs(config, state))
    with open(history.log_dir / "db_backup.log", "a") as f:
        f.write("2025-06-16 02:00:03 - ERROR: pg_dump: error: connection refused\n")
    results = daily.check_logs(config, state)
    assert [(r["artifact"], r["ok"]) for r in _problems(results)] == [("logs/db_backup", False)]
    assert not _problems(daily.check_logs(config, state))  # reported once
    os.remove(history.log_dir / "cloud_sync.log")
    assert "log file missing" in _problems(daily.check_logs(config, state))[0]["detail"]


def test_latest_backup_and_default_state(history):
    config = history.config()
    latest = daily.latest_backup(config, "trixtech-files", now=NOW)
    newest = local_backups(config.source("trixtech-files"))[-1]
    assert latest == {"name": newest.name, "timestamp": newest.timestamp.isoformat(), "age_hours": 6.0,
                      "size": newest.size, "local_path": str(newest.path), "count": NIGHTS}
    for b in local_backups(config.source("trixtech-files")):
        b.path.unlink()
    assert daily.latest_backup(config, "trixtech-files", now=NOW) is None
    with daily.default_state(config) as st:
        assert st.path.parent == config.state_dir


def test_summarize_names_every_problem_in_a_table():
    results = [
        {"artifact": "trixtech-db/a.dump", "check": "s3_present", "ok": False,
         "detail": "s3://trixtech-backups/database/a.dump missing in S3"},
        {"artifact": "trixtech-db/a.dump", "check": "s3_size", "ok": True, "detail": "5 bytes"},
        {"artifact": "trixtech-db", "check": "fresh", "ok": True, "detail": "6.0 h old"},
        {"artifact": "logs/db_backup", "check": "log", "ok": True, "detail": "WARNING: line 3: retrying"},
        {"artifact": "trixtech-files/f.tar.gz", "check": "archive", "ok": False, "detail": "unsafe member ../x"},
    ]
    s = daily.summarize(results)
    assert s["ok"] is False
    assert [p["check"] for p in s["problems"]] == ["s3_present", "archive"]
    lines = s["table"].splitlines()
    assert lines[0].split() == ["SOURCE/ARTIFACT", "CHECK", "STATUS", "DETAIL"]
    row = next(line for line in lines if "s3_present" in line)
    assert row.split()[:3] == ["trixtech-db/a.dump", "s3_present", "FAIL"] and "missing in S3" in row
    assert any("WARN" in line and "retrying" in line for line in lines)
    assert "trixtech-db: 3 checks, 1 problems" in lines
    assert "trixtech-files: 1 checks, 1 problems" in lines
    assert "logs: 1 checks, 0 problems, 1 warnings" in lines
    ok = daily.summarize([r for r in results if r["ok"]])
    assert ok["ok"] and ok["problems"] == []


def _flip_in_place(path, offset: int) -> None:
    """A same-size bit flip written into the file itself (what a failing disk or a stray `dd` does)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_a_changed_file_is_re_read_even_when_the_rolling_share_would_skip_it(history):
    """Issue 9.7: a same-size bit flip in last night's already-verified dump fails the next daily run."""
    config = history.config()
    state = VerificationState(config.state_dir)
    assert not _problems(daily.check_integrity(config, "trixtech-db", now=NOW, state=state))
    newest = local_backups(config.source("trixtech-db"))[-1]
    stat_before = newest.path.stat()
    _flip_in_place(newest.path, stat_before.st_size // 2)
    os.utime(newest.path, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))  # even with the mtime put back
    assert newest.path.stat().st_size == stat_before.st_size
    quiet = dataclasses.replace(config, reread_fraction=0.0)  # no rolling re-read at all
    second = daily.check_integrity(quiet, "trixtech-db", now=NOW + timedelta(days=1), state=state)
    bad = {(p["artifact"], p["check"]) for p in _problems(second)}
    assert (f"trixtech-db/{newest.name}", "sha256") in bad or (f"trixtech-db/{newest.name}", "sha256_history") in bad
    summary = [r for r in second if r["check"] == "integrity" and r["artifact"] == "trixtech-db"][0]
    assert summary["detail"].startswith(f"read 1 of {NIGHTS} backups in full (1 new, changed or failed before")
    assert state.verdict(f"trixtech-db/{newest.name}") == "failed"


def test_records_made_before_identities_were_kept_still_load(tmp_path):
    """A store from before the ``identity`` column is migrated in place; its records compare by size."""
    import sqlite3

    from backupkit.state import FileIdentity

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    db = sqlite3.connect(state_dir / "verification.sqlite")
    db.executescript("CREATE TABLE verifications (key TEXT PRIMARY KEY, sha256 TEXT, size INTEGER NOT NULL, "
                     "ok INTEGER NOT NULL, verified_at TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');"
                     "INSERT INTO verifications VALUES ('s/a', NULL, 10, 1, '2026-01-01T00:00:00+00:00', '');")
    db.commit()
    db.close()
    with VerificationState(state_dir) as st:
        rec = st.get("s/a")
        assert rec.identity is None and rec.unchanged(FileIdentity(10, 1, 2, 3)) and not rec.unchanged(FileIdentity(11))
        f = tmp_path / "a"
        f.write_bytes(b"0123456789")
        st.record("s/a", None, FileIdentity.of(f), True, NOW)
        assert st.get("s/a").unchanged(FileIdentity.of(f))
        f.write_bytes(b"0123456780")  # same size, new content
        assert not st.get("s/a").unchanged(FileIdentity.of(f))
