"""Locks and leases in the state directory, across real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from backupkit import clock
from backupkit.storage.locks import Leases, LockBusy, SourceLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLDER = """
import sys, time
sys.path.insert(0, {plugins!r})
from backupkit.storage.locks import SourceLock
with SourceLock({state!r}, "trixtech-db", "sweep", owner="run-A"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(plugins=os.path.join(REPO, "plugins"),
                                                                state=str(tmp_path))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holder_frees_the_lock(tmp_path):
    proc = _hold(tmp_path)
    try:
        with pytest.raises(LockBusy) as err:
            with SourceLock(tmp_path, "trixtech-db", "sweep", owner="run-B", timeout=0.3, poll=0.05):
                pass
        assert "run run-A" in str(err.value) and "sweep of trixtech-db refused" in str(err.value)
        # Another action or another source is not blocked.
        with SourceLock(tmp_path, "trixtech-db", "restore", owner="run-B"), \
                SourceLock(tmp_path, "trixtech-files", "sweep", owner="run-B"):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The kernel dropped the dead run's lock: no stale lock file blocks the next run.
    with SourceLock(tmp_path, "trixtech-db", "sweep", owner="run-C", timeout=2) as lock:
        assert "run-C" in lock.holder()
    assert "run-C" not in SourceLock(tmp_path, "trixtech-db", "sweep", owner="x").holder()


def test_a_waiting_run_gets_the_lock_when_the_holder_finishes(tmp_path):
    proc = _hold(tmp_path)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    with SourceLock(tmp_path, "trixtech-db", "sweep", owner="run-B", timeout=30, poll=0.05):
        assert time.monotonic() - t0 < 30
    proc.wait()


def test_leases_hold_until_released_or_expired(tmp_path):
    leases = Leases(tmp_path)
    assert leases.held("trixtech-db") == {}
    leases.take("trixtech-db", "trixtech_20261101_020000.dump", run_id="manual__1", purpose="restore",
                for_=timedelta(hours=4))
    expired = leases.take("trixtech-db", "trixtech_20261001_020000.dump", run_id="manual__2", purpose="restore test",
                          for_=timedelta(hours=1))
    with clock.frozen(expired.until + timedelta(seconds=1)):
        assert list(Leases(tmp_path).held("trixtech-db")) == ["trixtech_20261101_020000.dump"]
    held = leases.held("trixtech-db")
    assert "in use by restore (run manual__1)" in held.get("trixtech_20261101_020000.dump", "")
    with clock.frozen(expired.until + timedelta(seconds=1)):
        assert len(list(leases.dir.glob("*.json"))) == 2  # reading removes nothing (dry runs read)
        assert leases.prune() == 1  # the expired one; the next take() prunes too
    assert len(list(leases.dir.glob("*.json"))) == 1
    assert leases.held("trixtech-files") == {}
    leases.release("trixtech-db", "trixtech_20261101_020000.dump", run_id="manual__1")
    assert leases.held("trixtech-db") == {}
    (leases.dir / "garbage.json").write_text("{not json")
    assert leases.active() == [] and (leases.dir / "garbage.json").exists()
    assert leases.prune() == 1 and not (leases.dir / "garbage.json").exists()
