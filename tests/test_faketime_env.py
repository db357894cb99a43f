"""Under ``faketime`` as root, PostgreSQL's user shares the wrapper's libfaketime state (tests/_faketime.py)
instead of making a pair per process, which is what made server programs exit at random."""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest

from _faketime import shared_objects
from backupkit.pgserver import server_user


@pytest.mark.skipif(not shared_objects() or not server_user(), reason="only under faketime, as root")
def test_a_server_user_process_uses_the_wrappers_shared_state():
    pw = pwd.getpwnam(server_user())
    seen = subprocess.run(["sh", "-c", 'printf %s "$FAKETIME_SHARED"'], capture_output=True, text=True,
                          user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], check=True).stdout
    # A process that cannot open the wrapper's pair makes its own and names it here instead.
    assert seen == os.environ["FAKETIME_SHARED"]
    assert all(p.stat().st_uid == pw.pw_uid for p in shared_objects())


def test_after_runs_its_action_on_any_clock():
    """tests/_faketime.after replaces threading.Timer, whose timed wait never ends under faketime."""
    import threading
    import time

    from _faketime import after

    fired = threading.Event()
    thread = after(0.05, fired.set)
    deadline = time.monotonic() + 30
    while not fired.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)   # polled: Event.wait(timeout) is the very wait that does not end under faketime
    assert fired.is_set() and thread.daemon
