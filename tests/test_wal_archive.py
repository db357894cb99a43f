"""The WAL verifier against real archives of the bundled PostgreSQL 18 (1 MB segments),
good and damaged on copies, with pg_waldump as the oracle for what the WAL holds."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import time
from dataclasses import replace
from datetime import timedelta

import pytest
import zstandard

from _wal_archive import copy_archive, error_lsn, records, waldump
from backupkit.pgbin import pg_bin
from backupkit.wal.archive import LocalArchive
from backupkit.wal.backups import read_base_backup
from backupkit.wal.naming import classify, format_lsn, parse_lsn
from backupkit.wal.verify import verify_archive

MB = 1 << 20


def verify(path, **kwargs):
    reader = LocalArchive(path)
    return verify_archive(list(reader.entries()), reader, **kwargs)


def segments(path, tli=1):
    return sorted(p.name for p in path.iterdir()
                  if (c := classify(p.name)) and c.kind == "segment" and c.tli == tli)


def labels(path):
    """START/STOP WAL LOCATION of each .backup label, oldest first, read as text."""
    found = []
    for f in sorted(path.glob("*.backup")):
        text = f.read_text()
        start = re.search(r"START WAL LOCATION: (\S+)", text).group(1)
        stop = re.search(r"STOP WAL LOCATION: (\S+)", text).group(1)
        found.append((parse_lsn(start), parse_lsn(stop), f.name))
    return found


def waldump_end(path, first, last) -> tuple[int, str | None]:
    """pg_waldump's end of the last record (its statistics header) and its last COMMIT/ABORT time."""
    listing = waldump(path, first, last, quiet=False)
    assert listing.returncode == 0, listing.stderr
    stats = subprocess.run([pg_bin("pg_waldump"), "-z", "-p", str(path), "-t", str(int(first[:8], 16)), first, last],
                           capture_output=True, text=True).stdout
    end_lsn = parse_lsn(re.search(r"WAL statistics between \S+ and (\S+):", stats).group(1))
    commits = re.findall(r"desc: (?:COMMIT|ABORT) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC", listing.stdout)
    return end_lsn, commits[-1] if commits else None


def kinds(report):
    return sorted((p.kind, p.segment) for p in report.problems)


def middle(path, checked_from):
    """A segment well inside the checked range of timeline 1: not its first or last, not a base
    backup's start (those end in a switch record after a few records), full of records."""
    starts = {name[:24] for *_, name in labels(path)}
    names = [n for n in segments(path) if n >= checked_from and n not in starts]
    return names[len(names) // 2]


# -- sound archives ----------------------------------------------------------------------
def test_single_timeline_archive_is_sound_and_its_window_is_pg_waldumps(wal_archives):
    tl1 = wal_archives.tl1
    report = verify(tl1, jobs=2)
    assert report.ok, report.problems
    assert [t.timeline for t in report.timelines] == [1]
    first_label = labels(tl1)[0]
    t1 = report.timelines[0]
    assert t1.checked_from == first_label[2][:24]   # from the oldest base backup's start segment
    names = segments(tl1)
    end_lsn, commit = waldump_end(tl1, t1.checked_from, names[-1])
    window = report.window.to_dict()
    assert window["from"]["lsn"] == format_lsn(first_label[1])
    assert window["from"]["time"].endswith("Z")
    assert window["to"]["lsn"] == format_lsn(end_lsn)
    assert window["to"]["time"].replace("T", " ").rstrip("Z") == commit
    counted = waldump(tl1, t1.checked_from, names[-1], quiet=False).stdout.count("\nrmgr:") + 1
    assert t1.records == counted


def test_timeline_switch_is_followed_without_false_alarm(wal_archives):
    tl2 = wal_archives.tl2
    report = verify(tl2, jobs=2)
    assert report.ok, report.problems
    t1, t2 = report.timelines
    history = (tl2 / "00000002.history").read_text().split()
    assert (t2.parent, format_lsn(t2.switch_lsn)) == (int(history[0]), history[1])
    assert t2.switch_lsn == parse_lsn(wal_archives.rp_a_lsn)   # recovery stopped right after restore point rp_a
    two = segments(tl2, 2)
    assert t2.first_segment == two[0] and two[0][8:] == format_segment_of(t2.switch_lsn)
    end_lsn, _ = waldump_end(tl2, two[0], two[-1])
    assert report.window.end.timeline == 2 and report.window.end.lsn == end_lsn
    assert report.window.start.lsn == labels(tl2)[0][1]   # recovery to timeline 2 starts from base backup 1
    assert t1.window.end.timeline == 1 and t1.window.end.lsn > t2.switch_lsn  # timeline 1 went on


def format_segment_of(lsn: int) -> str:
    return f"{(lsn // MB) // 4096:08X}{(lsn // MB) % 4096:08X}"


def test_parallel_and_serial_reading_agree(wal_archives, tmp_path):
    merged = copy_archive(wal_archives.tl2, tmp_path / "m")
    copy_archive(wal_archives.fork_b, merged)
    one, two = verify(merged, jobs=1), verify(merged, jobs=2)
    assert one.to_dict() == two.to_dict() and not one.ok


def test_base_backups_decide_where_checking_starts_and_which_timelines_they_reach(wal_archives):
    plain, tar = read_base_backup(wal_archives.base_plain), read_base_backup(wal_archives.base_tar)
    assert (plain.format, tar.format) == ("plain", "tar")
    report = verify(wal_archives.tl2, base_backups=[plain, tar])
    assert report.ok, report.problems
    t1, t2 = report.timelines
    assert t1.window.start.lsn == plain.stop_lsn and t2.window.start.lsn == plain.stop_lsn
    assert t1.window.start.time is not None   # the stop time comes from the archive's .backup label
    only_tar = verify(wal_archives.tl2, base_backups=[tar])
    t1, t2 = only_tar.timelines
    assert t1.window.start.lsn == tar.stop_lsn
    assert t1.checked_from == f"00000001{format_segment_of(tar.start_lsn)}"
    # The tar backup was taken on timeline 1 after timeline 2 branched off: it cannot reach timeline 2.
    assert tar.start_lsn > t2.switch_lsn and t2.window is None
    assert only_tar.window is None


# -- damage, one kind at a time ------------------------------------------------------------
def test_a_deleted_middle_segment_is_a_gap_and_ends_the_window(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl1, tmp_path / "a")
    checked_from = verify(arch).timelines[0].checked_from
    victim = middle(arch, checked_from)
    (arch / victim).unlink()
    report = verify(arch)
    assert kinds(report) == [("gap", victim)]
    assert "1 segment(s) missing" in report.problems[0].detail
    before = segments(arch)[segments(arch).index(victim[:16] + f"{int(victim[16:], 16) - 1:08X}")]
    end_lsn, _ = waldump_end(arch, checked_from, before)
    assert report.window.end.lsn == end_lsn


def test_a_truncated_segment_is_truncated(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl1, tmp_path / "a")
    victim = middle(arch, verify(arch).timelines[0].checked_from)
    with open(arch / victim, "r+b") as f:
        f.truncate(300_000)
    report = verify(arch)
    assert kinds(report) == [("truncated", victim)]
    assert "300000 bytes" in report.problems[0].detail


def test_an_overwritten_page_header_is_corrupt_where_pg_waldump_fails(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl1, tmp_path / "a")
    checked_from = verify(arch).timelines[0].checked_from
    victim = middle(arch, checked_from)
    with open(arch / victim, "r+b") as f:
        f.seek(5 * 8192)
        f.write(b"\x00" * 24)
    report = verify(arch)
    assert kinds(report) == [("corrupt", victim)]
    assert "invalid magic number 0000" in report.problems[0].detail
    oracle = waldump(arch, checked_from, segments(arch)[-1])
    assert oracle.returncode != 0
    assert error_lsn(oracle.stderr) // MB == int(victim[16:], 16)


def test_flipped_bytes_inside_a_record_fail_its_crc_at_the_same_lsn_as_pg_waldump(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl1, tmp_path / "a")
    checked_from = verify(arch).timelines[0].checked_from
    victim = middle(arch, checked_from)
    seg_start = int(victim[16:], 16) * MB
    lsn, tot = next((lsn, tot) for lsn, tot in records(arch, victim)
                    if tot > 200 and (lsn % 8192) + tot < 8192 and lsn > seg_start + 8192)
    with open(arch / victim, "r+b") as f:
        f.seek(lsn - seg_start + 100)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x5A]))
    report = verify(arch)
    assert kinds(report) == [("corrupt", victim)]
    assert report.problems[0].detail == f"incorrect resource manager data checksum in record at {format_lsn(lsn)}"
    oracle = waldump(arch, checked_from, segments(arch)[-1])
    assert f"incorrect resource manager data checksum in record at {format_lsn(lsn)}" in oracle.stderr
    assert report.window.end.lsn <= lsn   # recovery replays up to the end of the record before


def test_a_removed_history_file_is_missing_history(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl2, tmp_path / "a")
    (arch / "00000002.history").unlink()
    report = verify(arch)
    assert [(p.kind, p.timeline) for p in report.problems] == [("missing_history", 2)]
    assert report.problems[0].segment == segments(arch, 2)[0]


def test_two_promotions_of_one_base_backup_archived_together_are_a_fork(wal_archives, tmp_path):
    # As `test ! -f` archiving leaves it: the second server's files that did not collide got in.
    kept_first = copy_archive(wal_archives.tl2, tmp_path / "no-overwrite")
    for f in wal_archives.fork_b.iterdir():
        if not (kept_first / f.name).exists():
            shutil.copy2(f, kept_first / f.name)
    report = verify(kept_first)
    assert {p.kind for p in report.problems} == {"timeline_fork"}
    assert all(p.timeline == 2 for p in report.problems)
    # As a plain `cp` leaves it: the second server's history and colliding segments won.
    last_wins = copy_archive(wal_archives.tl2, tmp_path / "overwrite")
    copy_archive(wal_archives.fork_b, last_wins)
    report = verify(last_wins)
    assert {p.kind for p in report.problems} == {"timeline_fork"}
    assert "before its switch point" in report.problems[0].detail


def test_an_old_newest_segment_is_stale(wal_archives, tmp_path, now):
    arch = copy_archive(wal_archives.tl1, tmp_path / "a")
    archived_at = (now - timedelta(hours=3)).timestamp()
    for f in arch.iterdir():
        os.utime(f, (archived_at, archived_at))
    report = verify(arch, max_age=timedelta(hours=1), now=now)
    assert kinds(report) == [("stale", segments(arch)[-1])]
    assert "3 h ago" in report.problems[0].detail or "180 min ago" in report.problems[0].detail
    assert verify(arch, max_age=timedelta(hours=4), now=now).ok


def test_a_newest_segment_from_the_future_is_reported_not_fresh(wal_archives, tmp_path, now):
    """Archive times come from another clock (the archiving host's, S3's): within CLOCK_SKEW ahead of
    now is fresh; further ahead, the clocks disagree and freshness cannot be judged: ``stale``."""
    from backupkit.wal.verify import CLOCK_SKEW

    arch = copy_archive(wal_archives.tl1, tmp_path / "a")
    for ahead, problems in ((CLOCK_SKEW - timedelta(seconds=30), []),
                            (CLOCK_SKEW + timedelta(minutes=5), [("stale", segments(arch)[-1])])):
        t = (now + ahead).timestamp()
        for f in arch.iterdir():
            os.utime(f, (t, t))
        report = verify(arch, max_age=timedelta(hours=1), now=now)
        assert kinds(report) == problems, ahead
    assert "10 min in the future" in report.problems[0].detail and "disagree" in report.problems[0].detail


def test_a_base_backup_whose_wal_is_gone(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl1, tmp_path / "a")
    tar = read_base_backup(wal_archives.base_tar)
    needed = f"00000001{format_segment_of(tar.start_lsn)}"
    (arch / needed).unlink()
    report = verify(arch, base_backups=[tar])
    assert kinds(report) == [("base_backup_wal_missing", needed)]
    assert str(wal_archives.base_tar) in report.problems[0].detail
    assert report.window is None
    # Without --base-backup the archive's labels stand for the base backups: the newest one's
    # WAL is gone, and for the older one it is a hole in the middle.
    assert kinds(verify(arch)) == [("base_backup_wal_missing", needed), ("gap", needed)]


def test_a_base_backup_of_another_database_system(wal_archives):
    plain = read_base_backup(wal_archives.base_plain)
    report = verify(wal_archives.tl1, base_backups=[replace(plain, sysid=plain.sysid + 1)])
    assert [p.kind for p in report.problems] == ["base_backup_wal_missing"]
    assert "database system" in report.problems[0].detail


# -- storage forms -----------------------------------------------------------------------------
def test_compressed_segments_are_read_through(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl2, tmp_path / "a")
    for i, name in enumerate(segments(arch, 1) + segments(arch, 2)):
        data = (arch / name).read_bytes()
        (arch / name).unlink()
        if i % 2:
            (arch / f"{name}.gz").write_bytes(gzip.compress(data, 1))
        else:
            (arch / f"{name}.zst").write_bytes(zstandard.ZstdCompressor(level=1).compress(data))
    gzipped = gzip.compress((arch / "00000002.history").read_bytes())
    (arch / "00000002.history").unlink()
    (arch / "00000002.history.gz").write_bytes(gzipped)
    report = verify(arch, jobs=2)
    plain = verify(wal_archives.tl2)
    assert report.ok, report.problems
    assert report.to_dict()["window"] == plain.to_dict()["window"]


def test_damaged_compressed_segments(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl1, tmp_path / "a")
    checked_from = verify(arch).timelines[0].checked_from
    names = [n for n in segments(arch) if n >= checked_from]
    cut, garbage, long, bomb = names[2], names[4], names[6], names[8]   # names[6] ends in a switch record
    data = gzip.compress((arch / cut).read_bytes())
    (arch / f"{cut}.gz").write_bytes(data[: len(data) // 2])
    (arch / f"{garbage}.zst").write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(500))
    (arch / f"{long}.gz").write_bytes(gzip.compress((arch / long).read_bytes() + b"\0" * 8192))
    # A few kB that inflate to 256 MB: read no further than the segment size and one byte.
    squeeze = zstandard.ZstdCompressor().compressobj()
    zeros = bytes(1 << 20)
    (arch / f"{bomb}.zst").write_bytes(b"".join(squeeze.compress(zeros) for _ in range(256)) + squeeze.flush())
    for name in (cut, garbage, long, bomb):
        (arch / name).unlink()
    started = time.monotonic()
    report = verify(arch)
    assert time.monotonic() - started < 10
    found = {p.segment: p.kind for p in report.problems}
    assert found == {f"{cut}.gz": "corrupt", f"{garbage}.zst": "corrupt", f"{long}.gz": "truncated",
                     f"{bomb}.zst": "truncated"}


def test_a_trailing_partial_segment_is_not_archived_wal(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl1, tmp_path / "a")
    names = segments(arch)
    last = names[-1]
    data = bytearray((arch / last).read_bytes())
    data[600_000:] = bytes(len(data) - 600_000)   # what pg_receivewal had written so far
    (arch / last).unlink()
    (arch / f"{last}.partial").write_bytes(data)
    report = verify(arch)
    assert report.ok, report.problems
    assert report.timelines[0].last_segment == names[-2]
    # In the middle, a partial segment is a hole: recovery only asks for full segment names.
    victim = names[-4]
    (arch / victim).rename(arch / f"{victim}.partial")
    report = verify(arch)
    assert kinds(report) == [("gap", victim)]
    assert f"only {victim}.partial is archived" in report.problems[0].detail


def test_files_that_are_not_wal_are_ignored_and_impossible_names_reported(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl1, tmp_path / "a")
    (arch / "README").write_text("archive of trixtech")
    (arch / "000000010000000000000014.tmp").write_bytes(b"x")
    (arch / "000000010000000100001000").write_bytes(b"\0" * MB)   # seg part 0x1000: not with 1 MB segments
    report = verify(arch)
    assert [(p.kind, p.segment) for p in report.problems] == [("corrupt", None)]
    assert "000000010000000100001000" in report.problems[0].detail


def test_an_empty_or_missing_archive(tmp_path):
    report = verify(tmp_path)
    assert [p.kind for p in report.problems] == ["gap"]
    assert [p.kind for p in verify(tmp_path, max_age=timedelta(hours=1)).problems] == ["gap", "stale"]
    with pytest.raises(Exception, match="cannot list"):
        list(LocalArchive(tmp_path / "nope").entries())


def test_a_history_file_that_misplaces_the_switch_is_a_fork(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl2, tmp_path / "a")
    switch = parse_lsn(wal_archives.rp_a_lsn)
    lie = switch - 0x100   # same segment, a little earlier: no page and no segment contradicts it
    (arch / "00000002.history").write_text(f"1\t{format_lsn(lie)}\tno recovery target specified\n")
    report = verify(arch)
    [problem] = report.problems
    assert (problem.kind, problem.timeline, problem.segment) == ("timeline_fork", 2, segments(arch, 2)[0])
    assert f"from timeline 1 at {format_lsn(switch)}" in problem.detail


def test_a_second_child_of_one_timeline_is_a_fork(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl2, tmp_path / "a")
    (arch / "00000003.history").write_bytes((wal_archives.fork_b / "00000002.history").read_bytes())
    report = verify(arch)
    assert [(p.kind, p.timeline) for p in report.problems] == [("timeline_fork", 3)]
    assert "all branch from timeline 1" in report.problems[0].detail
