"""The written rules for names, LSNs, history files, backup labels, manifests and ages
(docs/wal.md), each with hostile input from hypothesis: a verdict, never a traceback."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from backupkit.wal.backups import BackupError, parse_label, parse_time, read_base_backup
from backupkit.wal.history import History, HistoryError, fork_findings, parse_history
from backupkit.wal.naming import classify, format_lsn, parse_lsn, segment_name, segment_number
from backupkit.wal.verify import parse_age

FAST = settings(max_examples=300, deadline=None)


# -- names and LSNs ----------------------------------------------------------------------
@FAST
@given(tli=st.integers(1, 0xFFFFFFFF), segno=st.integers(0, (1 << 44) - 1), shift=st.integers(20, 30))
def test_segment_names_round_trip_for_every_segment_size(tli, segno, shift):
    size = 1 << shift
    segno %= (1 << 64) // size
    name = segment_name(tli, segno, size)
    c = classify(name)
    assert (c.kind, c.tli, segment_number(c, size)) == ("segment", tli, segno)


def test_names_the_archive_uses():
    assert classify("000000020000000A000000FF.partial.gz").partial
    assert classify("000000020000000A000000FF.gz.partial").compression == ".gz"
    assert classify("00000003.history").tli == 3
    assert classify("000000010000000000000002.00000028.backup").offset == 0x28
    for not_ours in ("00000001.history", "000000000000000000000001", "00000001000000000000000g",
                     "000000010000000000000001.partial.partial", "0000000100000000000000010", "README",
                     "000000010000000000000001.lz4", "00000002.history.bz2"):
        assert classify(not_ours) is None, not_ours
    assert segment_number(classify("0000000100000000000000FF"), 16 << 20) == 0xFF
    assert segment_number(classify("000000010000000000000100"), 16 << 20) is None   # 256 segments per log


@FAST
@given(st.text(max_size=40))
def test_any_file_name_is_classified_or_ignored(name):
    c = classify(name)
    assert c is None or c.kind in ("segment", "history", "label")


@FAST
@given(st.integers(0, (1 << 64) - 1))
def test_lsns_round_trip(lsn):
    assert parse_lsn(format_lsn(lsn)) == lsn


@pytest.mark.parametrize("text", ["", "0", "0/", "/0", "123456789/0", "0/123456789", "0x1/2", "1/2/3", "g/0"])
def test_not_lsns(text):
    with pytest.raises(ValueError):
        parse_lsn(text)


# -- history files -------------------------------------------------------------------------
def test_a_real_history_file(wal_archives):
    h = parse_history(2, (wal_archives.tl2 / "00000002.history").read_bytes())
    assert h.entries == ((1, parse_lsn(wal_archives.rp_a_lsn)),)
    assert (h.parent, h.ancestors, h.switch_into(1), h.switch_into(5)) == (1, {1}, h.switch_lsn, None)


def test_history_rules():
    text = b"# made by hand\n\n1\t0/3000000\tno recovery target specified\n  2 0/5000000 at restore point \"x\"\n"
    assert parse_history(3, text).entries == ((1, 0x3000000), (2, 0x5000000))
    for bad, why in [(b"", "no parent"), (b"2\t0/1\n1\t0/2\n", "increasing"), (b"3\t0/1\n", "ancestor"),
                     (b"1\t0/5\n2\t0/4\n", "before the previous"), (b"one\t0/1\n", "expected"),
                     (b"1 0/1\n", None)]:
        if why is None:
            assert parse_history(2, bad).entries == ((1, 1),)
            continue
        with pytest.raises(HistoryError, match=why):
            parse_history(3, bad)
    with pytest.raises(HistoryError, match="larger"):
        parse_history(2, b"#" * (2 << 20))


@FAST
@given(st.binary(max_size=600), st.integers(2, 10))
def test_any_history_bytes_give_a_history_or_a_reason(data, tli):
    try:
        h = parse_history(tli, data)
    except HistoryError as exc:
        assert str(exc)
        return
    tlis = [t for t, _ in h.entries]
    assert tlis == sorted(set(tlis)) and all(0 < t < tli for t in tlis)
    assert [lsn for _, lsn in h.entries] == sorted(lsn for _, lsn in h.entries)


def test_histories_that_contradict_each_other_are_forks():
    two = History(2, ((1, 100),))
    three_from_two = History(3, ((1, 100), (2, 500)))
    assert fork_findings({2: two, 3: three_from_two}) == []
    three_from_another_two = History(3, ((1, 90), (2, 500)))
    [(tli, detail)] = fork_findings({2: two, 3: three_from_another_two})
    assert tli == 3 and "two different timelines were numbered 2" in detail
    sibling = History(3, ((1, 300),))
    [(tli, detail)] = fork_findings({2: two, 3: sibling})
    assert tli == 3 and "all branch from timeline 1" in detail


# -- backup labels and base backups ------------------------------------------------------
def test_a_real_backup_label(wal_archives):
    label = sorted(wal_archives.tl1.glob("*.backup"))[0]
    b = parse_label(label.read_bytes(), label.name)
    assert b.start_lsn % (1 << 20) == 0x28 and b.stop_lsn > b.start_lsn and (b.start_tli, b.stop_tli) == (1, 1)
    assert b.stop_time is not None and b.stop_time.tzinfo is timezone.utc


def test_label_times():
    assert parse_time("2025-03-01 02:00:04 UTC") == datetime(2025, 3, 1, 2, 0, 4, tzinfo=timezone.utc)
    assert parse_time("2025-03-01 02:00:04 +03") == datetime(2025, 2, 28, 23, 0, 4, tzinfo=timezone.utc)
    assert parse_time("2025-03-01 02:00:04 -0530") == datetime(2025, 3, 1, 7, 30, 4, tzinfo=timezone.utc)
    assert parse_time("2025-03-01 02:00:04 CET") is None   # an abbreviation says too little
    assert parse_time("yesterday") is None


def test_a_label_ended_by_the_second_after_its_stop_time():
    """STOP TIME is truncated to the second: a backup that ended at 18:03:54.9 prints 18:03:54, so a
    target of 18:03:54.4 must not be judged after its end (it was before)."""
    good = (b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
            b"STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\nSTOP TIME: 2026-12-01 18:03:54 UTC\n")
    b = parse_label(good, "l")
    assert b.stop_time == datetime(2026, 12, 1, 18, 3, 54, tzinfo=timezone.utc)
    assert b.ended_by == datetime(2026, 12, 1, 18, 3, 55, tzinfo=timezone.utc)
    assert parse_label(good.replace(b"STOP TIME", b"STOP_TIME"), "l").ended_by is None   # unknown stays unknown


@FAST
@given(st.binary(max_size=400))
def test_any_label_bytes_give_a_label_or_a_reason(data):
    try:
        b = parse_label(data, "x.backup")
    except BackupError as exc:
        assert str(exc).startswith("x.backup")
        return
    assert b.stop_lsn >= b.start_lsn


def test_label_rules():
    good = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n"
    assert parse_label(good, "l").stop_lsn == 0x2000100
    for bad, why in [(good.replace(b"STOP", b"STAP"), "no STOP"), (good + b"START TIMELINE: zero\n", "not a timeline"),
                     (good.replace(b"0/2000100", b"0/1000000"), "stops before"), (b"\xff\xfe", "UTF-8"),
                     (b"A: b\n" * 20000, "larger")]:
        with pytest.raises(BackupError, match=why):
            parse_label(bad, "l")


def test_base_backup_manifests(wal_archives, tmp_path):
    plain = read_base_backup(wal_archives.base_plain)
    manifest = json.loads((wal_archives.base_plain / "backup_manifest").read_text())
    [wal] = manifest["WAL-Ranges"]
    assert (format_lsn(plain.start_lsn), format_lsn(plain.stop_lsn), plain.start_tli) == (
        wal["Start-LSN"], wal["End-LSN"], wal["Timeline"])
    assert plain.sysid == manifest["System-Identifier"]
    fake = tmp_path / "b"
    fake.mkdir()
    (fake / "base.tar").write_bytes(b"")
    # a manifest of any size is read from its end
    big = {"PostgreSQL-Backup-Manifest-Version": 2, "Files": [{"Path": f"f{i}", "Size": i} for i in range(200_000)],
           "WAL-Ranges": [{"Timeline": 3, "Start-LSN": "1/28", "End-LSN": "1/F0"}]}
    (fake / "backup_manifest").write_text(json.dumps(big))
    b = read_base_backup(fake)
    assert (b.format, b.start_tli, b.start_lsn, b.stop_lsn, b.sysid) == ("tar", 3, 0x100000028, 0x1000000F0, None)
    for content, why in [('{"Files": []}', "no WAL-Ranges"), ('{"WAL-Ranges": [{"Timeline": "1"}]}', "must list"),
                         ('{"WAL-Ranges": nope', "not a JSON list"),
                         ('{"WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/9", "End-LSN": "0/1"}]}', "out of order")]:
        (fake / "backup_manifest").write_text(content)
        with pytest.raises(BackupError, match=why):
            read_base_backup(fake)
    (fake / "backup_manifest").unlink()
    with pytest.raises(BackupError, match="no backup_manifest"):
        read_base_backup(fake)
    plain_copy = tmp_path / "plain"
    plain_copy.mkdir()
    shutil.copy(wal_archives.base_plain / "backup_label", plain_copy / "backup_label")
    b = read_base_backup(plain_copy)
    assert (b.start_lsn, b.stop_lsn) == (plain.start_lsn, None)   # the stop comes from the archive's label


# -- ages --------------------------------------------------------------------------------
def test_ages():
    assert parse_age("15min") == timedelta(minutes=15)
    assert parse_age("1d12h") == timedelta(days=1, hours=12)
    assert parse_age(" 90s ") == timedelta(seconds=90)
    for bad in ("", "15m", "h", "2h1d", "1.5h", "-1h", "1w"):
        with pytest.raises(ValueError):
            parse_age(bad)


@FAST
@given(st.text(max_size=20))
def test_any_age_text_is_an_age_or_a_reason(text):
    try:
        assert parse_age(text) >= timedelta(0)
    except ValueError as exc:
        assert "expected a duration" in str(exc)
