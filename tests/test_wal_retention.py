"""Retention of WAL archives: the pure plan (golden and property tests) and real sweeps of a real
archive with two real base backups, locally and in S3 (moto)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _config_helpers import short_dir
from _wal_archive import copy_archive
from backupkit.config import load_config
from backupkit.jobs import daily
from backupkit.retention.audit import AuditLog
from backupkit.retention.plan import Candidate
from backupkit.retention.sweep import sweep_source
from backupkit.retention.wal import WalFile, plan_wal, window_hold
from backupkit.state import VerificationState
from backupkit.storage.objectstore import Bucket
from backupkit.wal.naming import classify, segment_name, segment_number

MB = 1 << 20
T0 = datetime(2024, 2, 28, 23, 0, tzinfo=timezone.utc)   # across a leap day
GOLDEN = Path(__file__).parent / "golden" / "wal_retention_expected.json"


def _seg(tli: int, segno: int) -> str:
    return segment_name(tli, segno, MB)


def _golden_archive() -> list[WalFile]:
    """Timeline 1 segments 1-40 (one an hour), a timeline 2 from segment 30, labels, histories, a partial."""
    files = [WalFile(_seg(1, n), T0 + timedelta(hours=n), local=True, s3=True) for n in range(1, 41)]
    files += [WalFile(_seg(2, n), T0 + timedelta(hours=n, minutes=30), local=True) for n in range(30, 45)]
    files += [WalFile(_seg(1, 10) + ".00000028.backup", T0 + timedelta(hours=10), local=True),
              WalFile(_seg(1, 25) + ".00000028.backup", T0 + timedelta(hours=25), s3=True),
              WalFile("00000002.history", T0 + timedelta(hours=30), local=True, s3=True),
              WalFile(_seg(1, 41) + ".partial", T0 + timedelta(hours=41), local=True)]
    return files


CASES = {
    "oldest base backup deleted": dict(starts=[("b25", 25 * MB + 0x28)], window_hours=0),
    "both kept": dict(starts=[("b10", 10 * MB + 0x28), ("b25", 25 * MB + 0x28)], window_hours=0),
    "window reaches before the boundary": dict(starts=[("b25", 25 * MB + 0x28)], window_hours=60),
    "unknown start keeps everything": dict(starts=[("b25", 25 * MB), ("b40", None)], window_hours=0),
    "no base backup left": dict(starts=[], window_hours=0),
}


def _golden_results() -> dict:
    now = T0 + timedelta(hours=50)
    out = {}
    for name, case in CASES.items():
        p = plan_wal(_golden_archive(), case["starts"], segment_size=MB, now=now,
                     keep_window=timedelta(hours=case["window_hours"]))
        out[name] = {**p.to_dict(names=False), "deleted_names": [f.name for f in p.delete]}
    return out


def test_golden_plans():
    """The expected file was written once by hand-checked runs; a change in the rules shows as a diff."""
    expected = json.loads(GOLDEN.read_text())
    assert _golden_results() == expected


def test_golden_file_is_what_the_rules_say():
    """Independent of the golden file: the first case deletes exactly the files below 25 (no history)."""
    got = _golden_results()["oldest base backup deleted"]["deleted_names"]
    want = sorted([_seg(1, n) for n in range(1, 25)] + [_seg(1, 10) + ".00000028.backup"])
    assert got == want
    # The window starts 10 h before the oldest file: nothing is old enough to go.
    assert _golden_results()["window reaches before the boundary"]["deleted_names"] == []


# -- properties ----------------------------------------------------------------------------------
files_st = st.lists(st.tuples(st.integers(1, 3), st.integers(0, 200), st.integers(0, 400),
                              st.sampled_from(["", ".partial", ".00000028.backup", "history"])),
                    max_size=80)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=files_st, starts=st.lists(st.integers(0, 200 * MB), max_size=4), window=st.integers(0, 500),
       unknown=st.booleans())
def test_properties(files, starts, window, unknown):
    now = T0 + timedelta(hours=400)
    archive = [WalFile(f"{tli:08X}.history" if kind == "history" else _seg(tli, segno) + kind,
                       T0 + timedelta(hours=hour), local=True) for tli, segno, hour, kind in files]
    remaining = [(f"b{i}", s) for i, s in enumerate(starts)] + ([("bx", None)] if unknown else [])
    plan = plan_wal(archive, remaining, segment_size=MB, now=now, keep_window=timedelta(hours=window))
    deleted = {f.name for f in plan.delete}
    if not starts or unknown:
        assert not deleted
        return
    boundary = min(starts) // MB
    for f in plan.delete:
        c = classify(f.name)
        assert c is not None and c.kind != "history"
        assert segment_number(c, MB) < boundary                     # never what a kept base backup needs
        assert f.mtime < now - timedelta(hours=window)              # never inside keep_pitr_window
    # More base backups kept (an older one) never deletes more.
    wider = plan_wal(archive, remaining + [("older", max(0, min(starts) - 5 * MB))], segment_size=MB, now=now,
                     keep_window=timedelta(hours=window))
    assert {f.name for f in wider.delete} <= deleted
    assert plan.kept + len(plan.delete) == len(archive)


def test_window_hold_picks_the_base_backup_before_the_window():
    now = T0 + timedelta(days=10)
    cands = [Candidate(f"base_{d}", T0 + timedelta(days=d), "passed" if d != 3 else "failed", 1, None)
             for d in range(0, 10)]
    assert list(window_hold(cands, timedelta(days=7), now)) == ["base_2"]   # day 3 failed: day 2 it is
    assert list(window_hold(cands, timedelta(days=30), now)) == ["base_0"]  # older than every backup: the oldest
    assert window_hold(cands, timedelta(0), now) == {}


# -- real sweeps ---------------------------------------------------------------------------------
YAML = """bucket: {{name: {bucket}}}
wal_archives:
  - name: booking-wal
    local_dir: {root}/bases
    s3_prefix: basebackups/
    pattern: base_%Y%m%d_%H%M%S
    archive_dir: {root}/archive
    archive_s3_prefix: wal/
    max_age: 30d
    keep_pitr_window: {window}
    retention: {{keep_last: 1, min_keep: 1}}
verification: {{state_dir: {root}/state}}
"""


@pytest.fixture
def site(wal_archives, wal_now, s3, bucket):
    root = short_dir("bk-walret-")
    copy_archive(wal_archives.tl1, root / "archive")
    (root / "bases").mkdir()
    names = [(wal_now - timedelta(days=d)).strftime("base_%Y%m%d_%H%M%S") for d in (2, 1)]
    shutil.copytree(wal_archives.base_plain, root / "bases" / names[0])   # older: taken first
    shutil.copytree(wal_archives.base_tar, root / "bases" / names[1])
    items = [(f, "wal/" + f.name) for f in sorted((root / "archive").iterdir())]
    for name in names:
        items += [(f, f"basebackups/{name}/{f.relative_to(root / 'bases' / name)}")
                  for f in sorted((root / "bases" / name).rglob("*")) if f.is_file()]
    Bucket(s3, bucket).upload_many(items)
    yield root, names
    shutil.rmtree(root, ignore_errors=True)


def _config(root: Path, bucket: str, window: str = "0s"):
    path = root / "backups.yaml"
    path.write_text(YAML.format(bucket=bucket, root=root, window=window))
    return load_config(path)


def _sweep(cfg, s3, now, *, dry_run: bool):
    with VerificationState(cfg.state_dir) as state:
        return sweep_source(cfg, "booking-wal", bucket=Bucket(s3, cfg.bucket), state=state, dry_run=dry_run,
                            run_id="run-wal", now=now, audit=AuditLog(cfg.state_dir), backoff=0)


def _wal_keys(s3, bucket) -> set[str]:
    return {o["Key"][4:] for o in s3.list_objects_v2(Bucket=bucket, Prefix="wal/").get("Contents", [])}


def test_deleting_a_base_backup_frees_its_wal_up_to_the_next_ones_start(site, s3, bucket, wal_now):
    root, names = site
    cfg = _config(root, bucket)
    later = wal_now + timedelta(minutes=5)
    assert not [r for r in daily.check_integrity(cfg, "booking-wal", now=wal_now) if not r["ok"]]
    before = set(p.name for p in (root / "archive").iterdir())
    dry = _sweep(cfg, s3, later, dry_run=True)
    assert dry.would_delete == [names[0]] and dry.wal["would_delete"], (dry.protected, dry.held, dry.kept, dry.wal)
    assert set(p.name for p in (root / "archive").iterdir()) == before   # a dry run deletes nothing
    report = _sweep(cfg, s3, later, dry_run=False)
    assert report.deleted == [names[0]]
    from backupkit.wal.backups import read_base_backup

    tar_start = read_base_backup(root / "bases" / names[1]).start_lsn
    left = set(p.name for p in (root / "archive").iterdir())
    gone = before - left
    assert gone and report.wal["deleted_files"] == len(gone)
    assert all(classify(n).kind != "history" and segment_number(classify(n), MB) < tar_start // MB for n in gone)
    assert all(segment_number(classify(n), MB) >= tar_start // MB for n in left if classify(n).kind == "segment")
    assert _wal_keys(s3, bucket) == left                                   # S3 and disk together
    actions = [(r["artifact"], r["action"]) for r in AuditLog(cfg.state_dir).records("booking-wal")
               if (r["artifact"] or "").startswith("wal/")]
    for name in gone:   # the intent is written before the deletion
        assert actions.index((f"wal/{name}", "intent")) < actions.index((f"wal/{name}", "deleted"))
    # The archive is still sound for the base backup that is left, and the window starts at it.
    results = daily.check_integrity(cfg, "booking-wal", now=later)
    assert not [r for r in results if not r["ok"]], [r for r in results if not r["ok"]]


def test_keep_pitr_window_holds_the_base_backup_and_its_wal(site, s3, bucket, wal_now):
    root, names = site
    cfg = _config(root, bucket, window="3d")
    daily.check_integrity(cfg, "booking-wal", now=wal_now)
    before = set(p.name for p in (root / "archive").iterdir())
    report = _sweep(cfg, s3, wal_now + timedelta(minutes=5), dry_run=False)
    assert report.deleted == [] and [h["name"] for h in report.held] == [names[0]]
    assert "keep_pitr_window 3d" in report.held[0]["reason"]
    assert set(p.name for p in (root / "archive").iterdir()) == before


def test_a_base_backup_without_readable_start_keeps_all_wal(site, s3, bucket, wal_now):
    root, names = site
    cfg = _config(root, bucket)
    daily.check_integrity(cfg, "booking-wal", now=wal_now)
    (root / "bases" / names[1] / "backup_manifest").write_text("{}")
    before = set(p.name for p in (root / "archive").iterdir())
    report = _sweep(cfg, s3, wal_now + timedelta(minutes=5), dry_run=False)
    assert "cannot be read" in report.wal["reason"]
    assert set(p.name for p in (root / "archive").iterdir()) == before
