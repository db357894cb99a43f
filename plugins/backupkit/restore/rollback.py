"""The replace saga, backward: the application back on its old database with its replicas, from the journal.

The rules (docs/restore.md, "The replace saga"):

1. **Settings first.** Each target's *current* setting is read from the platform: pointing at
   the old database, nothing to do; at the new one, it is pointed back
   (:func:`~backupkit.restore.conninfo.point_setting_at`, every other byte unchanged) and read
   again to confirm; at any other database, it is left alone (someone changed it) and the
   rollback fails. Nothing remembered is written: the journal holds no password.
2. **Never scale up on a setting that could not be restored.** Only once every setting points
   at the old database is each deployment scaled back to the count the journal recorded before
   the first change, waited for, and health-checked.
3. **Every step is retried** with exponential backoff (:class:`Retry`); each attempt and its
   error go to the journal. A wait that timed out is not retried (it already waited).
4. The outcome is ``rollback_done``, or ``rollback_failed`` with the exact state read back from
   the platform (replicas per deployment, database per setting): what the alert says.

:func:`finish_unfinished` does this for every saga the journal shows unfinished -- the DAG's
rollback task for its own run (whatever killed the switch), and the next run for earlier ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from backupkit.restore.conninfo import point_setting_at, setting_database
from backupkit.restore.journal import RestoreJournal
from backupkit.restore.switch import (PLANNED, ROLLBACK_FAILED, ROLLBACK_STARTED, ROLLBACK_STEP, ROLLED_BACK, STEP,
                                      TERMINAL, AppPlatform, SagaLog, SwitchPlan)

T = TypeVar("T")
SAGA_ACTIONS = (PLANNED, STEP, "switch_done", ROLLBACK_STARTED, ROLLBACK_STEP, ROLLED_BACK, ROLLBACK_FAILED)


@dataclass(frozen=True)
class Retry:
    """``attempts`` tries, ``backoff * 2**n`` seconds apart (at most ``max_delay``)."""

    attempts: int = 5
    backoff: float = 1.0
    max_delay: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def call(self, fn: Callable[[], T], *, on_error: Callable[[int, Exception], None]) -> T:
        for attempt in range(1, max(1, self.attempts) + 1):
            try:
                return fn()
            except TimeoutError:
                raise
            except Exception as exc:  # noqa: BLE001 - an API error: try again, then give up
                on_error(attempt, exc)
                if attempt >= self.attempts:
                    raise
                self.sleep(min(self.max_delay, self.backoff * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")


@dataclass
class RollbackOutcome:
    ok: bool
    state: str  # the application's state as read back from the platform
    errors: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if self.ok:
            return f"rolled back: {self.state}"
        return "ROLLBACK INCOMPLETE, act now: " + "; ".join(self.errors) + f". The application is left: {self.state}"


class RollbackIncomplete(RuntimeError):
    """A rollback that could not finish; the message is the exact state the application is left in."""


def _attempt(log: SagaLog, retry: Retry, step: str, target: str, fn: Callable[[], T], errors: list[str]) -> T | None:
    def failed(attempt: int, exc: Exception) -> None:
        log.write(ROLLBACK_STEP, step=step, target=target, phase="failed", attempt=attempt,
                  error=f"{type(exc).__name__}: {exc}"[:500])

    log.write(ROLLBACK_STEP, step=step, target=target, phase="start")
    try:
        out = retry.call(fn, on_error=failed)
    except Exception as exc:  # noqa: BLE001 - recorded; the next steps decide what is still safe
        errors.append(f"{step} {target}: {type(exc).__name__}: {exc}"[:500])
        return None
    log.write(ROLLBACK_STEP, step=step, target=target, phase="done")
    return out if out is not None else True


def _restore_settings(platform: AppPlatform, plan: SwitchPlan, log: SagaLog, retry: Retry,
                      errors: list[str]) -> bool:
    ns = plan.namespace

    def restore(target: str) -> bool:
        current = platform.read_settings(ns, list(plan.deployments)).get(target)
        if current is None:
            raise LookupError(f"{target} has no database setting any more")
        db = setting_database(current)
        if db == plan.new_database:
            platform.write_setting(ns, target, point_setting_at(current, plan.new_database, plan.old_database))
            db = setting_database(platform.read_settings(ns, list(plan.deployments)).get(target) or "")
        if db != plan.old_database:
            raise RuntimeError(f"{target} points at database {db!r}, neither the old {plan.old_database!r} nor "
                               f"the new {plan.new_database!r}: left as it is")
        return True

    return all([_attempt(log, retry, "restore_setting", t, lambda t=t: restore(t), errors) is not None
                for t in plan.targets])


def describe_state(platform: AppPlatform, plan: SwitchPlan) -> str:
    """Replicas per deployment and database per setting, as the platform answers now."""
    ns, parts = plan.namespace, []
    for d in plan.deployments:
        try:
            parts.append(f"{d} at {platform.get_replicas(ns, d)} replicas (recorded {plan.replicas[d]})")
        except Exception as exc:  # noqa: BLE001 - the state is reported as unknown, not guessed
            parts.append(f"{d} replicas unknown ({type(exc).__name__}: {exc})")
    try:
        current = platform.read_settings(ns, list(plan.deployments))
        parts += [f"{t} on database {setting_database(current.get(t) or '')!r}" for t in plan.targets]
    except Exception as exc:  # noqa: BLE001
        parts.append(f"settings unknown ({type(exc).__name__}: {exc})")
    return "; ".join(parts) + f" (old database {plan.old_database!r}, new {plan.new_database!r})"


def roll_back(platform: AppPlatform, plan: SwitchPlan, *, log: SagaLog, reason: str, timeout: float,
              health_checks: Sequence[Callable[[], None]] = (), retry: Retry | None = None) -> RollbackOutcome:
    """Put the application back (module doc); every step journaled, the outcome too."""
    retry = retry or Retry()
    ns, errors = plan.namespace, []
    log.write(ROLLBACK_STARTED, reason=reason[:1000])
    restored = _restore_settings(platform, plan, log, retry, errors)
    if restored:
        scaled = [d for d in plan.deployments if _attempt(
            log, retry, "scale_back", d, lambda d=d: platform.scale(ns, d, plan.replicas[d]), errors) is not None]
        ready = [d for d in scaled if _attempt(
            log, retry, "wait_ready", d, lambda d=d: platform.wait_for_replicas(ns, d, plan.replicas[d], timeout),
            errors) is not None]
        if len(ready) == len(plan.deployments):
            for i, check in enumerate(health_checks, 1):
                _attempt(log, retry, "health_check", str(i), check, errors)
    else:
        errors.append("not scaled up: a setting could not be restored, and the application must not start on it")
    outcome = RollbackOutcome(not errors, describe_state(platform, plan), errors)
    log.write(ROLLED_BACK if outcome.ok else ROLLBACK_FAILED, state=outcome.state, errors=errors,
              detail=outcome.summary[:2000])
    return outcome


# -- sagas the journal shows unfinished -------------------------------------------------------------------
@dataclass
class Saga:
    run_id: str
    source: str
    plan: SwitchPlan
    last: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.last in TERMINAL


def sagas(journal: RestoreJournal) -> list[Saga]:
    """Every saga in the journal (one per run and source), in the order they began."""
    found: dict[tuple[str, str], Saga] = {}
    for rec in journal.records():
        action = rec.get("action")
        if action not in SAGA_ACTIONS:
            continue
        key = (str(rec.get("run_id")), str(rec.get("source")))
        if action == PLANNED:
            try:
                plan = SwitchPlan.from_record(rec["plan"])
            except (KeyError, TypeError, ValueError):
                continue  # unreadable: nothing can be rolled back from it (and nothing was changed after it)
            keep = {k: rec.get(k) for k in ("triggered_by", "reason", "backup", "mode")}
            found[key] = Saga(key[0], key[1], plan, action, keep)
        elif key in found:
            found[key].last = action
    return list(found.values())


def finish_unfinished(journal: RestoreJournal, platform: Callable[[], AppPlatform], *,
                      runs: Iterable[str] | None = None, skip_runs: Iterable[str] = (), by: str, timeout: float,
                      health_checks: Sequence[Callable[[], None]] = (), retry: Retry | None = None
                      ) -> list[tuple[Saga, RollbackOutcome]]:
    """Roll back every unfinished saga (of ``runs`` when given, never of ``skip_runs``); the platform
    is made only when there is one. Raises :class:`RollbackIncomplete` naming what is left, after trying all."""
    wanted = set(runs) if runs is not None else None
    todo = [s for s in sagas(journal) if not s.finished and s.run_id not in set(skip_runs)
            and (wanted is None or s.run_id in wanted)]
    done: list[tuple[Saga, RollbackOutcome]] = []
    app = platform() if todo else None
    for saga in todo:
        log = SagaLog(journal, saga.run_id, saga.source, {**saga.fields, "recovered_by": by})
        outcome = roll_back(app, saga.plan, log=log, timeout=timeout, health_checks=health_checks, retry=retry,
                            reason=f"unfinished saga (last record {saga.last!r}) finished by {by}")
        done.append((saga, outcome))
    failed = [(s, o) for s, o in done if not o.ok]
    if failed:
        raise RollbackIncomplete("; ".join(f"replace of {s.source} by run {s.run_id}: {o.summary}" for s, o in failed))
    return done


__all__ = ["Retry", "RollbackOutcome", "RollbackIncomplete", "roll_back", "describe_state", "Saga", "sagas",
           "finish_unfinished"]
