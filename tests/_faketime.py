"""The suite under Debian's ``faketime`` (README, "Tests on any date") with PostgreSQL as another user.

The ``faketime`` wrapper creates libfaketime's semaphore and shared memory (named in
``FAKETIME_SHARED``) for the calling user only (mode 0600). When the tests run as root, PostgreSQL's
programs run as ``nobody`` (:func:`backupkit.pgserver.server_user`) and cannot open them, so
libfaketime 0.9.10 makes a pair of their own per process, named by pid, in ``/dev/shm``; pairs of
processes that end without running destructors stay behind. A later process whose pid has such a
leftover cannot create its pair, gives up ("sem_open failed and recreation attempts failed") and
exits 1 before its ``main``: an ``initdb`` or ``pg_ctl`` fails, or a ``restore_command`` shell
"finds no file", so recovery ends before its target (FATAL, "server closed the connection
unexpectedly"). Given to the server's user, the wrapper's pair is shared by every process of the run,
as libfaketime intends; the clock itself is the same either way (the wrapper passes an offset).

Timed waits: under the wrapper ``CLOCK_MONOTONIC`` reads the faked date (about 1.8e9 s), and Python
3.11's lock waits (``Event.wait``, ``Lock.acquire``, ``Thread.join`` and ``Queue.get`` with a timeout,
``threading.Timer``) sleep until an absolute monotonic deadline through ``sem_clockwait``, which
libfaketime 0.9.10 does not wrap: the kernel reads that deadline as decades away, and the wait never
times out (a ``Timer`` never fires). ``time.sleep`` and socket/``selectors`` timeouts (relative
``poll``) work. So tests schedule with :func:`after`, and wait by polling with ``time.sleep``.
"""

from __future__ import annotations

import os
import pwd
import threading
import time
from collections.abc import Callable
from pathlib import Path

from backupkit.pgserver import server_user

SHM = Path("/dev/shm")


def shared_objects() -> list[Path]:
    """The wrapper's semaphore and shared memory files, if this process runs under ``faketime``."""
    names = os.environ.get("FAKETIME_SHARED", "").split()
    if len(names) < 2 or not all(n.startswith("/") and "/" not in n[1:] for n in names[:2]):
        return []
    sem, shm = names[:2]
    return [SHM / f"sem.{sem[1:]}", SHM / shm[1:]]


def share_with_server_user() -> None:
    """Let PostgreSQL's user open the faketime wrapper's semaphore and shared memory (see above)."""
    user = server_user()
    if not user:
        return
    pw = pwd.getpwnam(user)
    for path in shared_objects():
        try:
            os.chown(path, pw.pw_uid, pw.pw_gid)   # root keeps access; the server's user gains it
        except OSError:
            pass   # not there (another libfaketime set-up): nothing to share


def after(seconds: float, action: Callable[[], object]) -> threading.Thread:
    """``action()`` on a daemon thread after ``seconds``: a ``threading.Timer`` that fires under faketime."""
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, name="after", daemon=True)
    thread.start()
    return thread


__all__ = ["share_with_server_user", "shared_objects", "after"]
