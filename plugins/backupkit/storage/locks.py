"""Locks and leases in the state directory: two runs never act on one source at once, and a
backup in use by a restore is not deleted under it.

* :class:`SourceLock` -- an exclusive ``flock`` on ``locks/<source>.<action>.lock`` for the
  duration of a sweep or a restore step. The kernel drops it when the process dies (a
  killed task leaves no stale lock); the file records who holds it, so the second run can
  say *which* run it waits for. A second run waits up to ``timeout`` seconds, then refuses
  with :class:`LockBusy`. Across Airflow workers on different hosts the state directory
  must be shared (or the DAGs limited with ``max_active_tis_per_dag``/pools, as they are).
* :class:`Leases` -- "backup B of source S is in use by run R until T": written by restores,
  restore tests and pending approvals, read by retention, which holds every leased backup.
  A lease expires by itself (``until``), so a run that died cannot pin a backup forever.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from backupkit import clock
from backupkit.storage.localfs import atomic_write
from backupkit.storage.statedir import StateDir, safe_segment


class LockBusy(RuntimeError):
    """Another run holds the lock; the message names it."""


class SourceLock:
    """``with SourceLock(state_dir, "trixtech-db", "sweep", owner=run_id): ...``

    :param timeout: seconds to wait for the other run (0: refuse at once)
    """

    def __init__(self, state_dir: Path | str, source: str, action: str, *, owner: str, timeout: float = 0.0,
                 poll: float = 0.5):
        self.path = StateDir(state_dir).lock(f"{safe_segment(source)}.{safe_segment(action)}")
        self.source, self.action, self.owner = source, action, owner
        self.timeout, self.poll = timeout, poll
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "an unknown run"
        except OSError:
            return "an unknown run"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    raise LockBusy(f"{self.action} of {self.source} refused: {holder} holds {self.path} "
                                   f"(waited {self.timeout:g} s); try again when it has finished") from None
                time.sleep(self.poll)
        os.ftruncate(fd, 0)
        os.write(fd, f"run {self.owner} (pid {os.getpid()}) since {clock.now():%Y-%m-%dT%H:%M:%SZ}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "SourceLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class Lease:
    source: str
    backup: str
    run_id: str
    purpose: str
    until: datetime

    def to_dict(self) -> dict:
        return {"source": self.source, "backup": self.backup, "run_id": self.run_id, "purpose": self.purpose,
                "until": self.until.isoformat()}


class Leases:
    """Backups in use, one small JSON file each under ``locks/leases/``."""

    def __init__(self, state_dir: Path | str):
        self.dir = StateDir(state_dir).root / "locks" / "leases"

    def _path(self, source: str, backup: str, run_id: str) -> Path:
        return self.dir / f"{safe_segment(source)}__{safe_segment(backup)}__{safe_segment(run_id)}.json"

    def take(self, source: str, backup: str, *, run_id: str, purpose: str, for_: timedelta) -> Lease:
        self.prune()
        lease = Lease(source, backup, run_id, purpose, clock.now() + for_)
        atomic_write(self._path(source, backup, run_id), json.dumps(lease.to_dict(), sort_keys=True))
        return lease

    def release(self, source: str, backup: str, *, run_id: str) -> None:
        try:
            self._path(source, backup, run_id).unlink()
        except FileNotFoundError:
            pass

    def active(self, source: str | None = None) -> list[Lease]:
        """Unexpired leases (of ``source``). Reads only: a dry run may call it."""
        out = []
        if not self.dir.is_dir():
            return out
        now = clock.now()
        for path in sorted(self.dir.glob("*.json")):
            lease = self._read(path)
            if lease is not None and lease.until > now and (source is None or lease.source == source):
                out.append(lease)
        return out

    def prune(self) -> int:
        """Remove expired and unreadable lease files (a run that died cannot pin a backup); how many."""
        if not self.dir.is_dir():
            return 0
        now, removed = clock.now(), 0
        for path in sorted(self.dir.glob("*.json")):
            lease = self._read(path)
            if lease is None or lease.until <= now:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    @staticmethod
    def _read(path: Path) -> Lease | None:
        try:
            d = json.loads(path.read_text())
            return Lease(d["source"], d["backup"], d["run_id"], d.get("purpose", ""), datetime.fromisoformat(d["until"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def held(self, source: str) -> dict[str, str]:
        """backup name -> why it is held (for the retention plan)."""
        return {lease.backup: f"in use by {lease.purpose} (run {lease.run_id}) until {lease.until:%Y-%m-%d %H:%M}Z"
                for lease in self.active(source)}


__all__ = ["SourceLock", "LockBusy", "Lease", "Leases"]
