"""The verification state store: records, verdicts, log offsets and the rolling re-read."""

from __future__ import annotations

import math
import multiprocessing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupkit.state import VerificationState

T0 = datetime(2025, 1, 1, 8, 0, tzinfo=timezone.utc)


def test_record_get_verdict_roundtrip(tmp_path):
    with VerificationState(tmp_path / "state") as s:
        assert s.get("db/a.dump") is None and s.verdict("db/a.dump") is None
        s.record("db/a.dump", "ab" * 32, 100, True, T0, "")
        s.record("db/b.dump", None, 5, False, T0, "pg_restore: truncated")
        assert s.verdict("db/a.dump") == "passed" and s.verdict("db/b.dump") == "failed"
        rec = s.get("db/b.dump")
        assert (rec.size, rec.ok, rec.detail, rec.verified_at) == (5, False, "pg_restore: truncated", T0)
        s.record("db/b.dump", "cd" * 32, 6, True, T0 + timedelta(days=1))
        assert s.get("db/b.dump").sha256 == "cd" * 32 and s.verdict("db/b.dump") == "passed"
        assert set(s.records("db/")) == {"db/a.dump", "db/b.dump"} and s.records("files/") == {}
        s.forget(["db/a.dump"])
        assert s.get("db/a.dump") is None
    assert (tmp_path / "state" / "verification.sqlite").is_file()
    # Persisted: a new instance (a later run) sees the same.
    with VerificationState(tmp_path / "state") as s2:
        assert s2.verdict("db/b.dump") == "passed"
        with pytest.raises(ValueError, match="naive"):
            s2.record("x", None, 1, True, datetime(2025, 1, 1))


def test_log_offsets_and_checksum_cache_persist(tmp_path):
    with VerificationState(tmp_path) as s:
        assert s.load_log_offsets() == {}
        s.save_log_offsets({"db_backup": {"path": "/x", "inode": 5, "offset": 10}})
        s.checksum_cache["k"] = "v"
    with VerificationState(tmp_path) as s:
        assert s.load_log_offsets() == {"db_backup": {"path": "/x", "inode": 5, "offset": 10}}
        s.save_log_offsets({"other": {"offset": 1}})
        assert s.load_log_offsets() == {"other": {"offset": 1}}
        assert dict(s.checksum_cache) == {"k": "v"} and s.checksum_cache.get("nope") is None


def test_new_changed_and_failed_backups_are_always_selected(tmp_path):
    with VerificationState(tmp_path) as s:
        keys = {f"db/{i:03}": 100 for i in range(60)}
        first = s.select_full_reads(keys, fraction=1 / 30, now=T0)
        assert first == sorted(keys)  # nothing verified yet: everything is new
        for k in keys:
            s.record(k, None, 100, True, T0)
        s.record("db/007", None, 100, False, T0)
        keys["db/010"] = 99  # size changed
        keys["db/999"] = 100  # new
        sel = s.select_full_reads(keys, fraction=1 / 30, now=T0 + timedelta(days=1))
        must = ["db/007", "db/010", "db/999"]
        assert sel[:3] == must
        rolling = sel[3:]
        assert len(rolling) == math.ceil(len(keys) / 30)
        assert not set(rolling) & set(must)
        assert s.select_full_reads(keys, fraction=0, now=T0) == must


def test_rolling_share_picks_the_oldest_reads(tmp_path):
    with VerificationState(tmp_path) as s:
        keys = {f"k{i}": 1 for i in range(10)}
        for i, k in enumerate(keys):
            s.record(k, None, 1, True, T0 + timedelta(hours=10 - i))  # k9 read first, k0 last
        assert s.select_full_reads(keys, fraction=0.3, now=T0 + timedelta(days=1)) == ["k9", "k8", "k7"]
        # 0.1 * 30 is 3.0000000000000004 in floating point: still 3, not 4.
        many = {f"m{i:02}": 1 for i in range(30)}
        for k in many:
            s.record(k, None, 1, True, T0)
        assert len(s.select_full_reads(many, fraction=0.1, now=T0)) == 3


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.integers(0, 120), per_day=st.integers(1, 3), keep=st.integers(40, 200),
       fraction=st.sampled_from([1 / 30, 1 / 7, 0.0333, 0.25]))
def test_every_backup_is_reread_within_a_period_and_cost_stays_flat(tmp_path_factory, initial, per_day, keep,
                                                                    fraction):
    """Simulate 60 daily runs over a growing history that retention trims to ``keep``."""
    s = VerificationState(tmp_path_factory.mktemp("roll"))
    period = math.ceil(1 / fraction) + 1
    history = [f"b{i:05}" for i in range(initial)]
    counter = initial
    last_read: dict[str, datetime] = {}
    try:
        for day in range(60):
            now = T0 + timedelta(days=day)
            history += [f"b{counter + j:05}" for j in range(per_day)]
            counter += per_day
            history = history[-keep:]
            sizes = {k: 1000 for k in history}
            new = [k for k in history if k not in last_read]
            selected = s.select_full_reads(sizes, fraction=fraction, now=now)
            assert len(selected) == len(set(selected))
            assert set(new) <= set(selected)
            assert len(selected) <= len(new) + math.ceil(fraction * len(history) - 1e-9)
            for k in selected:
                s.record(k, None, 1000, True, now)
                last_read[k] = now
            for k in history:
                assert now - last_read[k] <= timedelta(days=period), (k, day)
    finally:
        s.close()


def _writer(state_dir: str, worker: int) -> None:
    s = VerificationState(Path(state_dir))
    for i in range(50):
        s.record(f"w{worker}/{i}", None, i, True, T0)
    s.close()


def test_concurrent_writers_from_separate_processes(tmp_path):
    """Mapped Airflow tasks of one run write the store from separate processes at once."""
    ctx = multiprocessing.get_context("spawn")  # no store yet: the writers also race to create it
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with VerificationState(tmp_path) as s:
        assert len(s.records()) == 150
