"""The replace saga, forward: scale the application down, point it at the restored database, scale it up, check it.

The application keeps running until a person approves (the DAG's approval task). Then
:func:`switch_database` writes the plan to the restore journal (replica counts, setting
targets, both database names; settings redacted) and, before each step, the step it is about
to take: scale each deployment to 0, wait until none runs, point each setting at the new
database, scale back to the recorded counts, wait until ready, run the health checks. Any
failure -- an exception, a timeout, ``AirflowTaskTimeout``/``AirflowTaskTerminated`` (which
are ``BaseException``) -- starts the rollback in the same process
(:func:`backupkit.restore.rollback.roll_back`); whatever kills the process instead, the
journal lets the rollback task, or the next run, put the application back
(:func:`backupkit.restore.rollback.finish_unfinished`). The states and how each is
recovered: docs/restore.md. Nothing here ever drops the application's current database.

Where the application runs is an :class:`AppPlatform` (Kubernetes in production,
:mod:`backupkit.restore.kubernetes.runtime`; local processes in the sandbox).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from backupkit import masking
from backupkit.restore.conninfo import point_setting_at, redact, secret_fragments
from backupkit.restore.journal import RestoreJournal

# Journal actions of a saga, in the order they happen (docs/restore.md, "The replace saga").
PLANNED, STEP, DONE = "switch_planned", "switch_step", "switch_done"
ROLLBACK_STARTED, ROLLBACK_STEP, ROLLED_BACK, ROLLBACK_FAILED = ("rollback_started", "rollback_step",
                                                                 "rollback_done", "rollback_failed")
TERMINAL = (DONE, ROLLED_BACK)


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
    """What the switch will do, read before anything changes (shown for approval).

    ``old``/``new`` hold the settings as read and as they will be written; only their redacted
    forms leave this object (:meth:`to_dict`, :meth:`describe`). A plan read back from the
    journal (:meth:`from_record`) holds the redacted forms only: a rollback never writes a
    remembered setting, it points the current one back (:mod:`backupkit.restore.rollback`).
    """

    namespace: str
    deployments: tuple[str, ...]
    replicas: dict[str, int]
    old: dict[str, str]  # target -> current setting
    new: dict[str, str]  # target -> setting pointing at the new database
    old_database: str
    new_database: str

    @property
    def targets(self) -> list[str]:
        return list(self.old)

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

    def to_dict(self) -> dict:
        return {"namespace": self.namespace, "deployments": list(self.deployments), "replicas": dict(self.replicas),
                "old": {t: redact(v) for t, v in self.old.items()}, "new": {t: redact(v) for t, v in self.new.items()},
                "old_database": self.old_database, "new_database": self.new_database}

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> "SwitchPlan":
        return cls(d["namespace"], tuple(d["deployments"]), {k: int(v) for k, v in d["replicas"].items()},
                   dict(d["old"]), dict(d["new"]), d["old_database"], d["new_database"])


def plan_switch(platform: AppPlatform, *, namespace: str, deployments: Sequence[str], old_database: str,
                new_database: str) -> SwitchPlan:
    """Read replica counts and current settings; compute the new settings. Changes nothing.

    Every secret fragment of the settings read is handed to the secrets masker first.
    """
    if not deployments:
        raise ValueError("no deployments to switch (give them in the form or restore.app.deployments)")
    if len(set(deployments)) != len(deployments):
        raise ValueError(f"deployments listed twice: {list(deployments)}")
    replicas = {d: int(platform.get_replicas(namespace, d)) for d in deployments}
    old = dict(platform.read_settings(namespace, list(deployments)))
    for value in old.values():
        masking.hide(secret_fragments(value))
    if not old:
        raise ValueError("the platform reported no database setting to switch")
    new = {t: point_setting_at(v, old_database, new_database) for t, v in old.items()}
    return SwitchPlan(namespace, tuple(deployments), replicas, old, new, old_database, new_database)


@dataclass
class SagaLog:
    """One saga's records in the restore journal: the run, the source, and fields every record carries."""

    journal: RestoreJournal
    run_id: str
    source: str
    fields: dict[str, Any] = field(default_factory=dict)  # triggered_by, reason, backup, approved_by, ...

    def write(self, action: str, **details: Any) -> dict:
        return self.journal.append(run_id=self.run_id, source=self.source, action=action,
                                   **{**self.fields, **details})


class SwitchFailed(RuntimeError):
    """The switch failed; the message says at which step and exactly what the rollback left."""

    def __init__(self, step: str, error: BaseException, outcome: Any):
        self.step, self.error, self.outcome = step, error, outcome
        super().__init__(f"switch failed at '{step}': {type(error).__name__}: {error}; {outcome.summary}")


def switch_database(platform: AppPlatform, plan: SwitchPlan, *, log: SagaLog, timeout: float,
                    health_checks: Sequence[Callable[[], None]] = (), retry: Any = None) -> dict:
    """Scale down, switch the setting, scale back up to the recorded counts, check health; journal first.

    On any failure the rollback runs here (``retry``: :class:`backupkit.restore.rollback.Retry`);
    an ``Exception`` becomes :class:`SwitchFailed`, a ``BaseException`` (a task timeout or kill)
    is raised again once the rollback has been tried.
    """
    from backupkit.restore.rollback import roll_back

    ns = plan.namespace
    log.write(PLANNED, plan=plan.to_dict(), changes=plan.describe())
    steps: list[str] = []
    step = "plan"

    def run(name: str, target: str, action: Callable[[], None]) -> None:
        nonlocal step
        step = f"{name} {target}"
        log.write(STEP, step=name, target=target)
        action()
        steps.append(step)

    try:
        for d in plan.deployments:
            run("scale_down", d, lambda d=d: platform.scale(ns, d, 0))
        for d in plan.deployments:
            run("wait_stopped", d, lambda d=d: platform.wait_for_replicas(ns, d, 0, timeout))
        for target, value in plan.new.items():
            run("switch_setting", target, lambda t=target, v=value: platform.write_setting(ns, t, v))
        for d in plan.deployments:
            run("scale_up", d, lambda d=d: platform.scale(ns, d, plan.replicas[d]))
        for d in plan.deployments:
            run("wait_ready", d, lambda d=d: platform.wait_for_replicas(ns, d, plan.replicas[d], timeout))
        for i, check in enumerate(health_checks, 1):
            run("health_check", str(i), check)
    except BaseException as exc:  # noqa: B902 - a timeout or a kill must still roll back
        outcome = roll_back(platform, plan, log=log, reason=f"{step} failed: {type(exc).__name__}: {exc}",
                            timeout=timeout, health_checks=health_checks, retry=retry)
        if not isinstance(exc, Exception):
            raise
        raise SwitchFailed(step, exc, outcome) from exc
    log.write(DONE, steps=steps, changes=plan.describe())
    return {"ok": True, "steps": steps, "plan": plan.to_dict(), "changes": plan.describe()}


__all__ = ["AppPlatform", "SwitchPlan", "SagaLog", "SwitchFailed", "plan_switch", "switch_database", "PLANNED",
           "STEP", "DONE", "ROLLBACK_STARTED", "ROLLBACK_STEP", "ROLLED_BACK", "ROLLBACK_FAILED", "TERMINAL"]
