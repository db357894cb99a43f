"""The ``wal_archive`` source kind: configuration, the daily checks (with the verification memory),
the PITR gauges and the archive's S3 copy, on real archives (tests/_wal_archive.py) and moto."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from _config_helpers import short_dir
from _wal_archive import copy_archive
from backupkit.config import load_config
from backupkit.config.reader import ConfigError
from backupkit.jobs import daily
from backupkit.metric_names import PITR_RPO, PITR_WINDOW_END, PITR_WINDOW_START
from backupkit.state import VerificationState
from backupkit.storage.objectstore import Bucket

YAML = """bucket: {{name: {bucket}}}
wal_archives:
  - name: booking-wal
    database: booking-db
    local_dir: {root}/bases
    s3_prefix: basebackups/
    pattern: base_%Y%m%d_%H%M%S
    archive_dir: {archive_dir}
{extra}verification: {{state_dir: {root}/state, reread_fraction: {fraction}}}
"""


def write_config(root: Path, *, bucket: str = "trixtech-backups", archive_dir: str | None = None,
                 extra: str = "", fraction: float = 0.0) -> Path:
    path = root / "backups.yaml"
    path.write_text(YAML.format(bucket=bucket, root=root, archive_dir=archive_dir or f"{root}/archive",
                                extra=extra, fraction=fraction))
    return path


@pytest.fixture
def site(wal_archives, wal_now):
    """A WAL source on copies of the session's timeline-1 archive and its plain base backup."""
    root = short_dir("bk-walsrc-")
    copy_archive(wal_archives.tl1, root / "archive")
    (root / "bases").mkdir()
    name = (wal_now - timedelta(hours=3)).strftime("base_%Y%m%d_%H%M%S")
    shutil.copytree(wal_archives.base_plain, root / "bases" / name)
    yield root
    shutil.rmtree(root, ignore_errors=True)


# -- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, key, problem", [
    ("    segment_size: 3MB\n", "segment_size", "power of two"),
    ("    segment_size: 16 GB\n", "segment_size", "like 1MB"),
    ("    max_age: 15m\n", "max_age", "minutes are 'min'"),
    ("    max_age: 15\n", "max_age", "give a unit"),
    ("    keep_pitr_window: seven days\n", "keep_pitr_window", "duration"),
    ("    archive_s3_prefix: basebackups\n", "archive_s3_prefix", "must differ from s3_prefix"),
    ("    archive_s3_prefix: /wal\n", "archive_s3_prefix", "relative"),
    ("    archive_dr: /x\n", "archive_dr", "unknown key"),
])
def test_config_errors_name_the_key(tmp_path, extra, key, problem):
    with pytest.raises(ConfigError) as exc:
        load_config(write_config(tmp_path, extra=extra))
    assert exc.value.key.endswith(key) and problem in exc.value.problem


def test_config_needs_an_archive_location(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(YAML.format(bucket="trixtech-backups", root=tmp_path, archive_dir="x", extra="", fraction=0)
                    .replace("    archive_dir: x\n", ""))
    with pytest.raises(ConfigError, match="archive_dir, archive_s3_prefix or both"):
        load_config(path)


def test_config_reads_the_spec(tmp_path):
    cfg = load_config(write_config(tmp_path, extra="    segment_size: 1MB\n    max_age: 2h\n"
                                                   "    keep_pitr_window: 7d\n    archive_s3_prefix: wal\n"))
    src = cfg.source("booking-wal")
    assert src.kind == "wal_archive" and src.kind_impl.restorable is False
    assert src.spec.segment_size == 1 << 20 and src.spec.max_age == timedelta(hours=2)
    assert src.spec.keep_pitr_window == timedelta(days=7) and src.spec.archive_s3_prefix == "wal/"


# -- the daily integrity check -------------------------------------------------------------------
def _problems(results):
    return [r for r in results if not r["ok"]]


def test_healthy_archive_passes_and_unchanged_segments_are_not_read_again(site, wal_now):
    cfg = load_config(write_config(site))
    first = daily.check_integrity(cfg, "booking-wal", now=wal_now)
    assert _problems(first) == []
    window = next(r for r in first if r["check"] == "pitr_window")
    assert window["ok"] and "recoverable from" in window["detail"]
    summary = next(r for r in first if r["check"] == "wal_archive")["detail"]
    segments = len([p for p in (site / "archive").iterdir() if len(p.name) == 24])
    assert f"of {segments} segments (0 unchanged" in summary
    second = daily.check_integrity(cfg, "booking-wal", now=wal_now + timedelta(minutes=10))
    assert _problems(second) == []
    again = next(r for r in second if r["check"] == "wal_archive")["detail"]
    read = int(again.split("read ")[1].split(" of")[0])
    assert read < segments // 2, again   # only the newest (whose successor is unknown) and none else
    # The window is the same whether the segments were read or remembered.
    assert next(r for r in second if r["check"] == "pitr_window")["detail"].split(";")[0] == \
        window["detail"].split(";")[0]
    report = daily.summarize(second)
    assert "point-in-time recovery: recoverable from" in report["table"]


def test_a_bit_flip_in_a_remembered_segment_is_found_next_run(site, wal_now):
    cfg = load_config(write_config(site, extra="    max_age: 30d\n"))
    assert _problems(daily.check_integrity(cfg, "booking-wal", now=wal_now)) == []
    segs = sorted(p for p in (site / "archive").iterdir() if len(p.name) == 24)
    victim = segs[len(segs) // 2]
    st = os.stat(victim)
    with open(victim, "r+b") as f:   # inside a record, past the long page header
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))   # mtime put back: the ctime still differs
    bad = _problems(daily.check_integrity(cfg, "booking-wal", now=wal_now + timedelta(days=1)))
    # Reported where the damaged record starts (a segment before it when the record crosses segments).
    assert [r["check"] for r in bad if r["check"].startswith("wal_")] == ["wal_corrupt"], bad
    assert bad[0]["artifact"] <= f"booking-wal/{victim.name}"


def test_gap_stale_and_rolling_reread(site, wal_now):
    cfg = load_config(write_config(site, extra="    max_age: 1h\n", fraction=1.0))
    segs = sorted(p for p in (site / "archive").iterdir() if len(p.name) == 24)
    segs[len(segs) // 2].unlink()
    results = daily.check_integrity(cfg, "booking-wal", now=wal_now + timedelta(days=2))
    kinds = {r["check"] for r in _problems(results)}
    assert {"wal_gap", "wal_stale"} <= kinds, kinds
    # reread_fraction 1: every remembered segment is read again the next run.
    results = daily.check_integrity(cfg, "booking-wal", now=wal_now + timedelta(days=3))
    detail = next(r for r in results if r["check"] == "wal_archive")["detail"]
    assert "(0 unchanged since they passed)" in detail


def test_base_backup_verdicts_are_remembered_for_retention(site, wal_now):
    cfg = load_config(write_config(site))
    daily.check_integrity(cfg, "booking-wal", now=wal_now)
    name = next((site / "bases").iterdir()).name
    with VerificationState(cfg.state_dir) as st:
        assert st.verdict(f"booking-wal/{name}") == "passed"
    # Its WAL removed from the archive: the base backup is no longer restorable.
    for p in sorted((site / "archive").iterdir())[:3]:
        p.unlink()
    results = daily.check_integrity(cfg, "booking-wal", now=wal_now + timedelta(days=1))
    assert any(r["check"] == "wal_base_backup_wal_missing" for r in _problems(results))
    with VerificationState(cfg.state_dir) as st:
        assert st.verdict(f"booking-wal/{name}") == "failed"


def test_clocks_that_disagree_are_reported_not_a_fresh_archive(site, wal_now):
    """This host's clock an hour behind the archive's mtimes and the server's commit times: the newest
    segment "from the future" is stale and the window's RPO cannot be judged; 2 minutes behind is skew."""
    cfg = load_config(write_config(site))
    results = daily.check_integrity(cfg, "booking-wal", now=wal_now - timedelta(hours=1))
    behind = {r["check"]: r for r in _problems(results)}
    assert set(behind) == {"wal_stale", "pitr_window"}, behind
    assert "in the future" in behind["wal_stale"]["detail"]
    assert "the RPO cannot be judged" in behind["pitr_window"]["detail"]
    assert _problems(daily.check_integrity(cfg, "booking-wal", now=wal_now - timedelta(minutes=2))) == []


def test_pitr_gauges_and_rpo(site, wal_now):
    cfg = load_config(write_config(site))
    results = daily.check_integrity(cfg, "booking-wal", now=wal_now)
    later = wal_now + timedelta(hours=5)
    text = daily.run_metrics(cfg, results, ["booking-wal"], now=later).text()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("backup_pitr")}
    start = values[f'{PITR_WINDOW_START}{{source="booking-wal"}}']
    end = values[f'{PITR_WINDOW_END}{{source="booking-wal"}}']
    assert start < end
    assert values[f'{PITR_RPO}{{source="booking-wal"}}'] == pytest.approx(later.timestamp() - end)


# -- the copy in S3 ----------------------------------------------------------------------------
def _upload(s3, bucket_name: str, archive: Path, prefix: str = "wal/") -> None:
    for f in sorted(archive.iterdir()):
        s3.upload_file(str(f), bucket_name, prefix + f.name)


def test_s3_copy_compared_and_tampering_found(site, s3, bucket, wal_now):
    cfg = load_config(write_config(site, bucket=bucket, extra="    archive_s3_prefix: wal/\n"))
    _upload(s3, bucket, site / "archive")
    b = Bucket(s3, bucket)
    ok = daily.check_cloud_copies(cfg, "booking-wal", b)
    assert not [r for r in _problems(ok) if r["check"].startswith("wal_")], _problems(ok)
    from backupkit.wal.naming import classify

    files = len([f for f in (site / "archive").iterdir() if classify(f.name)])
    # Single-part uploads without an S3 checksum: their ETags are MD5s, recomputed from the local files.
    assert f"copies proved: {files} by md5-etag ({files} compared now)" in \
        next(r for r in ok if r["check"] == "wal_s3_copy")["detail"]
    segs = sorted(p.name for p in (site / "archive").iterdir() if len(p.name) == 24)
    s3.put_object(Bucket=bucket, Key=f"wal/{segs[3]}", Body=b"\0" * (1 << 20))  # same size, other bytes
    s3.delete_object(Bucket=bucket, Key=f"wal/{segs[5]}")
    old = wal_now - timedelta(hours=2)
    os.utime(site / "archive" / segs[5], (old.timestamp(), old.timestamp()))
    bad = {r["check"]: r for r in _problems(daily.check_cloud_copies(cfg, "booking-wal", b))}
    assert bad["wal_s3_checksum"]["artifact"] == f"booking-wal/{segs[3]}"
    assert bad["wal_s3_present"]["artifact"] == f"booking-wal/{segs[5]}"


def test_archive_in_s3_only_is_verified_there(site, s3, bucket, wal_now):
    _upload(s3, bucket, site / "archive")
    path = write_config(site, bucket=bucket, extra="    archive_s3_prefix: wal/\n")
    path.write_text(path.read_text().replace(f"    archive_dir: {site}/archive\n", ""))
    cfg = load_config(path)
    assert "kept in S3 only" in daily.check_integrity(cfg, "booking-wal", now=wal_now)[0]["detail"]
    segs = sorted(p.name for p in (site / "archive").iterdir() if len(p.name) == 24)
    s3.delete_object(Bucket=bucket, Key=f"wal/{segs[len(segs) // 2]}")
    results = daily.check_cloud_copies(cfg, "booking-wal", Bucket(s3, bucket))
    assert any(r["check"] == "wal_gap" for r in _problems(results)), _problems(results)


# -- remembered scans change nothing but the cost ---------------------------------------------------
def test_verdicts_with_remembered_segments_equal_a_full_read(wal_archives, tmp_path):
    """Damage one segment at a time: the verifier reusing the other segments' remembered scans
    finds exactly what a full read finds (same problems, same window)."""
    from backupkit.wal.archive import LocalArchive
    from backupkit.wal.backups import read_base_backup
    from backupkit.wal.verify import verify_archive

    base = [read_base_backup(wal_archives.base_plain)]
    pristine = LocalArchive(wal_archives.tl1)
    known_all = verify_archive(list(pristine.entries()), pristine, base_backups=base).scans
    names = sorted(known_all)
    for k, victim in enumerate(names[::3]):
        a = copy_archive(wal_archives.tl1, tmp_path / f"a{k}")
        with open(a / victim, "r+b") as f:
            f.seek(9000 + 4096 * k)
            byte = f.read(1)
            f.seek(9000 + 4096 * k)
            f.write(bytes([byte[0] ^ 0x5A]))
        reader = LocalArchive(a)
        full = verify_archive(list(reader.entries()), reader, base_backups=base)
        known = {n: s for n, s in known_all.items() if n != victim}
        quick = verify_archive(list(reader.entries()), reader, base_backups=base, known=known)
        assert quick.problems == full.problems, victim
        assert quick.window == full.window, victim
        assert len(quick.read) < len(full.read), victim


def test_window_reaches_the_weekly_report_and_the_health_page(site, wal_now):
    from backupkit.health_cache import read_metrics
    from backupkit.jobs.weekly import collect_trends
    from backupkit.reports.weekly import weekly_doc

    cfg = load_config(write_config(site))
    results = daily.check_integrity(cfg, "booking-wal", now=wal_now)
    later = wal_now + timedelta(hours=2)
    trends = collect_trends(cfg, now=later)
    w = trends["sources"]["booking-wal"]["pitr_window"]
    end = datetime.fromisoformat(w["end"])
    assert w["start"] < w["end"] and w["rpo_seconds"] == pytest.approx((later - end).total_seconds(), abs=0.01)
    doc = weekly_doc(report_date=wal_now.date(), trends=trends, failures=None, storage=None, encryption=None)
    assert "Point-in-time recovery window" in doc.markdown()
    daily.run_metrics(cfg, results, ["booking-wal"], now=wal_now).publish(
        job="backup_daily_verification", textfile=cfg.state.metrics_textfile("daily"))
    metrics = read_metrics(cfg.state.metrics_dir, [])
    from backupkit.health import _pitr
    pitr = _pitr(cfg.source("booking-wal"), metrics)
    assert pitr is not None and pitr["start"][:16] == w["start"][:16]


def test_drill_reports_the_archive_rpo_against_the_dumps(site, wal_now):
    """The database-corruption scenario's note: RPO with the archive (disaster minus the window's end)
    beside the dumps' (disaster minus the newest restorable dump)."""
    from backupkit.jobs.drill import Targets, _Run, archive_rpo
    from backupkit.wal.source import load_window

    cfg = load_config(write_config(site))
    daily.check_integrity(cfg, "booking-wal", now=wal_now)
    end = load_window(cfg, cfg.source("booking-wal"))["end"]
    disaster = end + timedelta(minutes=7)
    run = _Run("database_corruption", cfg, Targets(3600, 90000), lambda: 0.0, disaster, 0.0, disaster)
    run.backup_times = {"trixtech-db": disaster - timedelta(hours=20)}
    archive_rpo(run)
    assert run.pitr["booking-wal"]["rpo_seconds"] == pytest.approx(420, abs=1)
    assert run.pitr["booking-wal"]["dumps_rpo_seconds"] == pytest.approx(20 * 3600, abs=1)
    assert "RPO 7.0 min with the WAL archive" in run.notes[0] and "20.0 h with the dumps alone" in run.notes[0]


# -- hostile state: the memory and the window file are read back defensively ----------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=6),
                     max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_json.map(__import__("json").dumps), st.text(max_size=200)))
def test_a_damaged_remembered_scan_is_a_reread_not_a_crash(text):
    from backupkit.wal.memory import scan_from_json
    from backupkit.wal.scan import SegmentScan

    out = scan_from_json(text)
    assert out is None or isinstance(out, SegmentScan)


def test_a_remembered_scan_round_trips(wal_archives):
    from backupkit.wal.archive import LocalArchive
    from backupkit.wal.memory import scan_from_json, scan_to_json
    from backupkit.wal.verify import verify_archive

    reader = LocalArchive(wal_archives.tl2)
    scans = verify_archive(list(reader.entries()), reader).scans
    assert scans and all(scan_from_json(scan_to_json(s)) == s for s in scans.values())


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_a_damaged_window_file_means_no_window(tmp_path_factory, data):
    from backupkit.wal.source import load_window

    root = tmp_path_factory.mktemp("win")
    cfg = load_config(write_config(root))
    path = cfg.state.facts_file("pitr-booking-wal")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    w = load_window(cfg, cfg.source("booking-wal"))
    assert w is None or (w["start"].tzinfo is not None and w["end"].tzinfo is not None)


def test_a_window_file_with_naive_or_reversed_times_is_ignored(tmp_path):
    import json

    from backupkit.wal.source import load_window

    cfg = load_config(write_config(tmp_path))
    path = cfg.state.facts_file("pitr-booking-wal")
    path.parent.mkdir(parents=True, exist_ok=True)
    for start, end in (("2026-01-01T00:00:00", "2026-01-02T00:00:00"), ("2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z")):
        path.write_text(json.dumps({"start": start, "end": end, "checked_at": "2026-01-02T00:00:00Z"}))
        assert load_window(cfg, cfg.source("booking-wal")) is None
    path.write_text(json.dumps({"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z",
                                "checked_at": "2026-01-02T00:00:00Z", "timeline": 1}))
    assert load_window(cfg, cfg.source("booking-wal"))["timeline"] == 1


def test_base_backups_are_re_verified_in_rolling_turns(site, wal_archives, wal_now):
    """Two base backups, reread_fraction 0.5: each run pg_verifybackup-reads one, the one read longest ago."""
    shutil.copytree(wal_archives.base_tar, site / "bases" / (wal_now - timedelta(hours=1)).strftime("base_%Y%m%d_%H%M%S"))
    cfg = load_config(write_config(site, extra="    max_age: 30d\n", fraction=0.5))
    names = sorted(p.name for p in (site / "bases").iterdir())
    stamps = []
    for day in range(1, 4):
        daily.check_integrity(cfg, "booking-wal", now=wal_now + timedelta(days=day))
        with VerificationState(cfg.state_dir) as st:
            stamps.append(tuple(st.get(f"booking-wal/{n}").verified_at for n in names))
    # Day 1 reads both (new); then they take turns: each later day refreshes exactly one, alternating.
    assert stamps[0][0] == stamps[0][1]
    changed = [[a != b for a, b in zip(x, y)] for x, y in zip(stamps, stamps[1:])]
    assert changed in ([[True, False], [False, True]], [[False, True], [True, False]]), changed


def test_a_wal_source_is_not_offered_as_a_dump_restore(tmp_path):
    from backupkit.restore.selection import restorable

    cfg = load_config(write_config(tmp_path))
    assert "booking-wal" not in restorable(cfg, "database") + restorable(cfg, "files")
