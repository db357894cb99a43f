"""Retention: which backups to keep and which to delete, explained and guarded.

:mod:`.policy` is restic's ``forget`` algorithm; :mod:`.plan` adds verification,
holds and guard rails and is what sweeps and ``backupctl retention plan`` use.
"""

from backupkit.retention.plan import (
    ACTIONS,
    VERIFICATION_STATES,
    Candidate,
    Decision,
    Plan,
    PlanSummary,
    RetentionRefused,
    plan_retention,
)
from backupkit.retention.policy import Duration, apply_policy

__all__ = [
    "ACTIONS",
    "VERIFICATION_STATES",
    "Candidate",
    "Decision",
    "Duration",
    "Plan",
    "PlanSummary",
    "RetentionRefused",
    "apply_policy",
    "plan_retention",
]
