"""A file-backed application platform with injected faults, for the replace saga's tests.

:class:`FilePlatform` keeps the application's state (replicas per deployment, database setting
per target) in a JSON file, so a switch running in a child process that is killed mid-step and the
rollback run afterwards by this process act on the same application, as a worker and the DAG's
rollback task do. Faults are injected at exactly one call (or the next ``times`` calls matching):

* ``error``: an API error (``RuntimeError``), transient if ``times`` is small;
* ``timeout``: urllib3's ``ReadTimeoutError``, what a request timeout raises on a hung API call;
* ``task_timeout`` / ``terminated``: Airflow's ``AirflowTaskTimeout`` / ``AirflowTaskTerminated``,
  which are ``BaseException``;
* ``hang``: the call never returns (the parent kills the process; it writes ``hanging`` first).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from urllib3.exceptions import ReadTimeoutError

REPO = Path(__file__).resolve().parents[1]
OLD_DB, NEW_DB = "trixtech", "trixtech_restored_1"
OLD = {"api": f"postgresql://app:s3cret%23x@db.internal:5432/{OLD_DB}?sslmode=require",
       "worker": f"host=db.internal dbname={OLD_DB} user=app password='it\\'s s3cret'"}
REPLICAS = {"api": 3, "worker": 2}
KINDS = ("error", "timeout", "task_timeout", "terminated", "hang")


@dataclass
class Fault:
    call: tuple  # a prefix of the call: ("scale", "api", 0), ("write", "worker"), ("health",) ...
    kind: str = "error"
    times: int = 1  # how many matching calls fail
    skip: int = 0  # matching calls let through first


def _raise(kind: str, call: tuple) -> None:
    if kind == "error":
        raise RuntimeError(f"injected API error at {call}")
    if kind == "timeout":
        raise ReadTimeoutError(None, "/apis", f"Read timed out (injected at {call})")
    if kind == "task_timeout":
        from airflow.sdk.exceptions import AirflowTaskTimeout

        raise AirflowTaskTimeout(f"injected execution timeout at {call}")
    if kind == "terminated":
        from airflow.sdk.exceptions import AirflowTaskTerminated

        raise AirflowTaskTerminated(f"injected SIGTERM at {call}")
    raise ValueError(kind)


class FilePlatform:
    """The AppPlatform contract over a JSON file (see the module doc)."""

    def __init__(self, path: Path, faults: list[Fault] | None = None, healthy: set[str] | None = None):
        self.path, self.faults, self.healthy = Path(path), list(faults or []), healthy

    @classmethod
    def create(cls, path: Path, **kw: Any) -> "FilePlatform":
        Path(path).write_text(json.dumps({"replicas": REPLICAS, "urls": OLD, "log": []}))
        return cls(path, **kw)

    def state(self) -> dict:
        return json.loads(self.path.read_text())

    def _change(self, call: tuple, update=None) -> dict:
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            st = json.load(f)
            st["log"].append(list(call))
            for fault in self.faults:
                if fault.times > 0 and tuple(call[: len(fault.call)]) == tuple(fault.call):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.times -= 1
                    f.seek(0)
                    f.truncate()
                    json.dump(st, f)
                    f.flush()
                    if fault.kind == "hang":
                        (self.path.parent / "hanging").write_text(repr(call))
                        while True:
                            time.sleep(60)
                    _raise(fault.kind, call)
            if update is not None:
                update(st)
            f.seek(0)
            f.truncate()
            json.dump(st, f)
            return st

    # -- AppPlatform -------------------------------------------------------------------------------
    def get_replicas(self, ns: str, d: str) -> int:
        return int(self.state()["replicas"][d])

    def scale(self, ns: str, d: str, n: int) -> None:
        self._change(("scale", d, n), lambda st: st["replicas"].__setitem__(d, int(n)))

    def wait_for_replicas(self, ns: str, d: str, n: int, timeout: float) -> None:
        st = self._change(("wait", d, n))
        if st["replicas"][d] != n:
            raise TimeoutError(f"{d}: {st['replicas'][d]} replicas, waiting for {n}")
        url = st["urls"].get(d)
        if n and self.healthy is not None and url not in self.healthy:
            raise TimeoutError(f"{d}: 0/{n} ready (pods on {url!r} never get ready)")

    def read_settings(self, ns: str, deployments) -> dict[str, str]:
        st = self._change(("read",))
        return {f"deployment/{d}/app": st["urls"][d] for d in deployments if d in st["urls"]}

    def write_setting(self, ns: str, target: str, value: str) -> None:
        d = target.split("/")[1]
        self._change(("write", d), lambda st: st["urls"].__setitem__(d, value))

    def health(self) -> None:
        st = self._change(("health",))
        if self.healthy is not None and not all(u in self.healthy for u in st["urls"].values()):
            raise RuntimeError("HTTP 503 from /healthz")


def switch_calls() -> list[tuple]:
    """Every call the forward switch makes, in order: where a fault can strike."""
    out = [("scale", d, 0) for d in REPLICAS] + [("wait", d, 0) for d in REPLICAS]
    out += [("write", d) for d in REPLICAS]
    out += [("scale", d, n) for d, n in REPLICAS.items()] + [("wait", d, n) for d, n in REPLICAS.items()]
    return out + [("health",)]


CHILD = """
import sys
sys.path[:0] = [{plugins!r}, {tests!r}]
import airflow_env  # noqa: F401
from pathlib import Path
from _saga_helpers import Fault, FilePlatform, NEW_DB, OLD_DB
from backupkit.restore.journal import RestoreJournal
from backupkit.restore.switch import SagaLog, plan_switch, switch_database
p = FilePlatform(Path({state!r}), [Fault(tuple({call!r}), "hang")])
plan = plan_switch(p, namespace="trixtech", deployments=["api", "worker"], old_database=OLD_DB, new_database=NEW_DB)
log = SagaLog(RestoreJournal({journal!r}), {run_id!r}, "trixtech-db")
switch_database(p, plan, log=log, timeout=5, health_checks=[p.health])
"""


def killed_switch(state: Path, journal_dir: Path, run_id: str, call: tuple, timeout: float = 60) -> int:
    """Run a switch in a child process, hang it at ``call`` and kill it there with SIGKILL; returns its status."""
    marker = state.parent / "hanging"
    marker.unlink(missing_ok=True)
    code = CHILD.format(plugins=str(REPO / "plugins"), tests=str(REPO / "tests"), state=str(state),
                        call=list(call), journal=str(journal_dir), run_id=run_id)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": ""})
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the switch ended before hanging: {proc.stdout.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the switch never reached its hang")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()
