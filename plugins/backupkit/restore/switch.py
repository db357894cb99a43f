"""The replace saga: scale the application down, point it at the restored database, scale it up, check it.

The application keeps running until a person approves (the DAG's approval task); then
:func:`switch_database` records replica counts, scales down, points the application at the new
database, scales back up to the recorded counts and runs the health checks -- and on any
failure after the first scale-down puts the previous setting and replica counts back before
raising :class:`SwitchFailed`. Nothing here ever drops the application's current database.

Where the application runs is an :class:`AppPlatform` (Kubernetes in production,
:mod:`backupkit.restore.kubernetes.runtime`; local processes in the sandbox).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from backupkit.restore.conninfo import point_setting_at, redact


class AppPlatform(Protocol):
    """What the switch needs from where the application runs (Kubernetes in production)."""

    def get_replicas(self, namespace: str, deployment: str) -> int: ...

    def scale(self, namespace: str, deployment: str, replicas: int) -> None: ...

    def wait_for_replicas(self, namespace: str, deployment: str, replicas: int, timeout: float) -> None:
        """Return once exactly ``replicas`` pods run and are ready (0: all gone); raise on timeout."""

    def read_settings(self, namespace: str, deployments: Sequence[str]) -> dict[str, str]:
        """Current database setting per target (``deployment/<d>/<container>`` or ``secret/<s>/<key>``)."""

    def write_setting(self, namespace: str, target: str, value: str) -> None: ...


@dataclass(frozen=True)
class SwitchPlan:
    """What the switch will do, read before anything changes (shown for approval)."""

    namespace: str
    deployments: tuple[str, ...]
    replicas: dict[str, int]
    old: dict[str, str]  # target -> current setting
    new: dict[str, str]  # target -> setting pointing at the new database
    old_database: str
    new_database: str

    def describe(self) -> list[str]:
        """Human-readable lines, passwords redacted."""
        lines = [f"namespace {self.namespace}: scale down {', '.join(self.deployments)} "
                 f"(now {', '.join(f'{d}={self.replicas[d]}' for d in self.deployments)} replicas)"]
        for t in self.old:
            lines.append(f"{t}: {redact(self.old[t])} -> {redact(self.new[t])}")
        lines.append("scale back up to " + ", ".join(f"{d}={self.replicas[d]}" for d in self.deployments)
                     + " and run the health checks")
        lines.append(f"the old database {self.old_database!r} is kept (never dropped)")
        return lines

    def to_dict(self, redacted: bool = True) -> dict:
        show = redact if redacted else (lambda v: v)
        return {"namespace": self.namespace, "deployments": list(self.deployments), "replicas": dict(self.replicas),
                "old": {t: show(v) for t, v in self.old.items()}, "new": {t: show(v) for t, v in self.new.items()},
                "old_database": self.old_database, "new_database": self.new_database}


def plan_switch(platform: AppPlatform, *, namespace: str, deployments: Sequence[str], old_database: str,
                new_database: str) -> SwitchPlan:
    """Read replica counts and current settings; compute the new settings. Changes nothing."""
    if not deployments:
        raise ValueError("no deployments to switch (give them in the form or restore.app.deployments)")
    if len(set(deployments)) != len(deployments):
        raise ValueError(f"deployments listed twice: {list(deployments)}")
    replicas = {d: int(platform.get_replicas(namespace, d)) for d in deployments}
    old = dict(platform.read_settings(namespace, list(deployments)))
    if not old:
        raise ValueError("the platform reported no database setting to switch")
    new = {t: point_setting_at(v, old_database, new_database) for t, v in old.items()}
    return SwitchPlan(namespace, tuple(deployments), replicas, old, new, old_database, new_database)


class SwitchFailed(RuntimeError):
    """A step after the first scale-down failed; the previous state was put back (or not: see
    ``rollback_errors``). The message says which step failed and what the rollback did."""

    def __init__(self, step: str, error: BaseException, rollback_errors: list[str], plan: SwitchPlan):
        self.step, self.error, self.rollback_errors, self.plan = step, error, rollback_errors, plan
        if rollback_errors:
            after = ("ROLLBACK INCOMPLETE, act now: " + "; ".join(rollback_errors)
                     + f". Recorded state: replicas {plan.replicas}, settings {plan.to_dict()['old']}")
        else:
            after = (f"rolled back: settings restored, replicas back to {plan.replicas}, healthy again "
                     f"(database {plan.new_database!r} is left in place for inspection)")
        super().__init__(f"switch to {plan.new_database!r} failed at '{step}': {type(error).__name__}: {error}; "
                         f"{after}")


Journal = Callable[[str, dict], None]


def switch_database(platform: AppPlatform, plan: SwitchPlan, *, timeout: float,
                    health_checks: Sequence[Callable[[], None]] = (), journal: Journal | None = None) -> dict:
    """Scale down, switch the setting, scale back up to the recorded counts, check health.

    ``journal(action, details)`` is called before the first change (with the recorded
    state, so a crash mid-switch leaves what is needed to undo it by hand) and with the
    outcome. On any failure from the first scale-down on, the previous settings and
    replica counts are put back and :class:`SwitchFailed` is raised.
    """
    journal = journal or (lambda action, details: None)
    ns = plan.namespace
    steps: list[str] = []
    journal("switch_started", {"plan": plan.to_dict()})
    step = "scale down"
    try:
        for d in plan.deployments:
            step = f"scale down {d}"
            platform.scale(ns, d, 0)
            steps.append(f"scaled {d} to 0")
        for d in plan.deployments:
            step = f"wait for {d} to stop"
            platform.wait_for_replicas(ns, d, 0, timeout)
        for target, value in plan.new.items():
            step = f"switch {target}"
            platform.write_setting(ns, target, value)
            steps.append(f"set {target} to {redact(value)}")
        for d in plan.deployments:
            step = f"scale up {d}"
            platform.scale(ns, d, plan.replicas[d])
            steps.append(f"scaled {d} to {plan.replicas[d]}")
        for d in plan.deployments:
            step = f"wait for {d} to be ready"
            platform.wait_for_replicas(ns, d, plan.replicas[d], timeout)
        for i, check in enumerate(health_checks, 1):
            step = f"health check {i}"
            check()
    except Exception as exc:
        rollback_errors = _rollback(platform, plan, timeout, health_checks)
        journal("switch_rollback_failed" if rollback_errors else "switch_rolled_back",
                {"failed_step": step, "error": f"{type(exc).__name__}: {exc}", "steps": steps,
                 "rollback_errors": rollback_errors, "plan": plan.to_dict()})
        raise SwitchFailed(step, exc, rollback_errors, plan) from exc
    result = {"ok": True, "steps": steps, "plan": plan.to_dict(), "changes": plan.describe()}
    journal("switch_done", {"steps": steps, "plan": plan.to_dict()})
    return result


def _rollback(platform: AppPlatform, plan: SwitchPlan, timeout: float,
              health_checks: Sequence[Callable[[], None]]) -> list[str]:
    """Put the recorded state back; every step is attempted, errors are collected."""
    errors: list[str] = []
    ns = plan.namespace

    def attempt(what: str, fn: Callable[[], None]) -> bool:
        try:
            fn()
            return True
        except Exception as exc:  # noqa: BLE001 - keep undoing the rest
            errors.append(f"{what}: {type(exc).__name__}: {exc}")
            return False

    for target, value in plan.old.items():
        attempt(f"restore {target}", lambda t=target, v=value: platform.write_setting(ns, t, v))
    scaled = [d for d in plan.deployments
              if attempt(f"scale {d} back to {plan.replicas[d]}",
                         lambda d=d: platform.scale(ns, d, plan.replicas[d]))]
    ready = all([attempt(f"wait for {d}", lambda d=d: platform.wait_for_replicas(ns, d, plan.replicas[d], timeout))
                 for d in scaled])
    if ready and len(scaled) == len(plan.deployments):
        for i, check in enumerate(health_checks, 1):
            attempt(f"health check {i} after rollback", check)
    return errors


__all__ = ["AppPlatform", "SwitchPlan", "SwitchFailed", "plan_switch", "switch_database"]
