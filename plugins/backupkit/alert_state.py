"""Which alerts are open: page once per failed run, hold back repeats, resolve when it passes again.

An alert is keyed by (DAG, source, check): the check is the task that failed, the source the
configured source it worked on ("" when the task covers all of them). The rules, in order:

1. A run pages at most once: the first failing task of a run decides (later failures of the same
   run -- ``finish`` saying "see the failed task above" -- are the same incident).
2. A key that is already open is not paged again (a failing nightly check pages once, not nightly);
   the repeat is counted on the open alert -- unless the failure names a problem the open alert did
   not have (a task that covers many sources or scenarios, like the daily ``summarize``, failing for
   one more of them): that pages again, as the same open alert.
3. When that check passes in a later run of the same DAG and source, the alert is closed and a
   *resolve* is sent, once.

The state is one small JSON file under the state directory (``StateDir.alert_state``), read and
replaced under an exclusive lock, so parallel tasks of one run cannot both page. Pure: no Airflow.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

PAGE, SAME_RUN, REPEAT = "page", "same_run", "repeat"
MAX_FACETS = 200  # problems remembered per open alert
MAX_RUNS = 2000  # runs remembered for rule 1 (oldest dropped first)


@dataclass(frozen=True)
class AlertKey:
    dag_id: str
    source: str
    check: str

    @property
    def id(self) -> str:
        """Stable and readable; also the dedup key a paging service gets (PagerDuty ``dedup_key``)."""
        return "/".join((self.dag_id, self.source or "*", self.check))


@dataclass(frozen=True)
class Decision:
    action: str  # PAGE, SAME_RUN or REPEAT
    key: AlertKey
    open_since: str | None = None  # when the open alert was paged (REPEAT)
    repeats: int = 0

    @property
    def page(self) -> bool:
        return self.action == PAGE


class AlertState:
    """The open alerts and the runs that already paged, in ``path`` (JSON, replaced atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_failure(self, key: AlertKey, *, run_id: str, reason: str, now: datetime,
                   problems: Iterable[str] = ()) -> Decision:
        """``problems``: what the failure names (``artifact: check`` of each problem), if it names any."""
        problems = sorted(set(problems))
        with self._state() as state:
            run = f"{key.dag_id}\t{run_id}"
            if run in state["runs"]:
                return Decision(SAME_RUN, key)
            state["runs"][run] = key.id
            while len(state["runs"]) > MAX_RUNS:
                state["runs"].pop(next(iter(state["runs"])))
            alert = state["open"].get(key.id)
            if alert is not None:
                alert["last_run_id"], alert["last_reason"] = run_id, reason[:500]
                known = set(alert.get("problems") or [])
                if set(problems) - known:  # something new is broken: worth a page
                    alert["problems"] = sorted(known | set(problems))[:MAX_FACETS]
                    return Decision(PAGE, key, open_since=alert["since"], repeats=alert["repeats"])
                alert["repeats"] += 1
                return Decision(REPEAT, key, open_since=alert["since"], repeats=alert["repeats"])
            state["open"][key.id] = {"dag_id": key.dag_id, "source": key.source, "check": key.check,
                                     "since": now.isoformat(), "run_id": run_id, "last_run_id": run_id,
                                     "reason": reason[:500], "last_reason": reason[:500], "repeats": 0,
                                     "problems": problems[:MAX_FACETS]}
            return Decision(PAGE, key)

    def on_success(self, key: AlertKey, *, run_id: str, now: datetime) -> dict | None:
        """The alert this pass closes (to send its resolve), or None. A pass in the run that failed does not
        close it: only a later run can say the check passes again."""
        if not self.path.exists():  # the common case (nothing ever failed): no lock, no write
            return None
        with self._state() as state:
            alert = state["open"].get(key.id)
            if alert is None or alert["last_run_id"] == run_id:
                return None
            del state["open"][key.id]
            return {**alert, "resolved_at": now.isoformat(), "resolved_by_run": run_id}

    def open_alerts(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self._state() as state:
            return list(state["open"].values())

    @contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = _read(self.path)
            before = json.dumps(state, sort_keys=True)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state, sort_keys=True, indent=1))
                os.replace(tmp, self.path)


def _read(path: Path) -> dict[str, Any]:
    """The state, or a fresh one when the file is missing or unreadable (a lost state can only re-page)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"open": {}, "runs": {}}
    if not isinstance(state, dict) or not isinstance(state.get("open"), dict) or not isinstance(state.get("runs"), dict):
        return {"open": {}, "runs": {}}
    return state


__all__ = ["AlertKey", "AlertState", "Decision", "PAGE", "SAME_RUN", "REPEAT"]
