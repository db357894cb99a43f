"""What one retention sweep found and did (:class:`SweepReport`), and how it fails.

Kept apart from :mod:`.sweep` (the steps) so the report's shape, which the DAG, the CLI and
the run summaries (:mod:`backupkit.jobs.retention`) read, has one home.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from backupkit import clock
from backupkit.retention.plan import Plan, RetentionRefused


def utc_text(dt: datetime | None = None) -> str:
    return (dt or clock.now()).isoformat(timespec="seconds").replace("+00:00", "Z")


class SweepError(RuntimeError):
    """The sweep did not do all it should; ``report`` says what was and was not done."""

    def __init__(self, message: str, report: "SweepReport | None" = None):
        super().__init__(message)
        self.report = report


class SweepRefused(RetentionRefused, SweepError):
    """A guard rail refused the plan: nothing was deleted."""

    def __init__(self, report: "SweepReport"):
        RetentionRefused.__init__(self, report.violations)
        self.report = report


class SweepFailed(SweepError):
    """Some deletions, inspections or the audit mirror failed; the rest was done."""


class SweepBusy(SweepError):
    """Another sweep of the same source holds its lock: this one did nothing."""


@dataclass
class SweepReport:
    """What one sweep of one source found and did; :meth:`to_dict` is JSON-serialisable."""

    source: str
    run_id: str
    dry_run: bool
    bucket: str
    prefix: str
    local_dir: str
    policy: str = ""
    started: str = ""
    finished: str = ""
    listing_complete: bool = True
    total: int = 0
    kept: list[str] = field(default_factory=list)
    held: list[dict] = field(default_factory=list)  # {name, reason}
    protected: list[dict] = field(default_factory=list)  # {name, reason}: kept for their local copy
    deleted: list[str] = field(default_factory=list)
    would_delete: list[str] = field(default_factory=list)  # dry run, or what a refused plan listed
    failed: list[dict] = field(default_factory=list)  # {name, detail}
    not_attempted: list[str] = field(default_factory=list)
    finished_pending: list[str] = field(default_factory=list)  # interrupted deletions finished
    abandoned: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    bytes_to_free: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    refused: bool = False
    violations: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)  # {artifact, key, code, message}
    warnings: list[str] = field(default_factory=list)  # e.g. torn audit-log lines (skipped)
    locks: list[dict] = field(default_factory=list)  # lock what you keep: retain-until set (or, dry run, to set)
    future: list[str] = field(default_factory=list)  # backups dated in the future (the plan refused)
    requests: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # per phase: list, plan, delete, purge, audit
    purge: dict | None = None
    wal: dict | None = None  # WAL archives: what the archive's part of the sweep did (retention/wal.py)
    audit_log: str = ""
    audit_mirror: str = ""
    plan: Plan | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.refused and not self.errors

    def error(self, artifact: str | None, message: str, *, key: str | None = None, code: str = "") -> None:
        self.errors.append({"artifact": artifact, "key": key, "code": code, "message": message})

    def counts(self) -> dict[str, int]:
        return {"total": self.total, "kept": len(self.kept), "held": len(self.held),
                "protected": len(self.protected), "deleted": len(self.deleted),
                "would_delete": len(self.would_delete), "failed": len(self.failed),
                "not_attempted": len(self.not_attempted), "errors": len(self.errors), "locked": len(self.locks),
                "future": len(self.future)}

    def to_dict(self, names: bool = True) -> dict:
        """Everything but the plan; ``names=False`` leaves out the name lists (small enough for XCom)."""
        d = {"source": self.source, "run_id": self.run_id, "dry_run": self.dry_run, "ok": self.ok,
             "bucket": self.bucket, "prefix": self.prefix, "local_dir": self.local_dir, "policy": self.policy,
             "started": self.started, "finished": self.finished, "listing_complete": self.listing_complete,
             "counts": self.counts(), "bytes_freed": self.bytes_freed, "bytes_to_free": self.bytes_to_free,
             "by_rule": dict(self.by_rule), "refused": self.refused, "violations": list(self.violations),
             "errors": list(self.errors), "warnings": list(self.warnings), "locks": list(self.locks),
             "future": list(self.future), "requests": dict(self.requests),
             "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "purge": self.purge, "wal": self.wal,
             "audit_log": self.audit_log, "audit_mirror": self.audit_mirror,
             "held": list(self.held), "protected": list(self.protected), "failed": list(self.failed)}
        if names:
            d.update(kept=list(self.kept), deleted=list(self.deleted), would_delete=list(self.would_delete),
                     not_attempted=list(self.not_attempted), finished_pending=list(self.finished_pending),
                     abandoned=list(self.abandoned))
        return d



__all__ = ["SweepReport", "SweepError", "SweepRefused", "SweepFailed", "SweepBusy", "utc_text"]
