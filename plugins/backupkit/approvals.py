"""Who may approve a replace, and what an answer means: the four-eyes rule, pure.

Rules (docs/restore.md, "Approval"):

* The approvers are ``restore.approvers.users`` plus the members of ``restore.approvers.role``;
  none configured means anyone Airflow lets answer the run's Required Actions.
* With ``four_eyes`` the requester (Airflow's ``triggering_user_name`` of the run) is never an
  approver: taken out of the list offered to Airflow, and an approval that still comes from them
  (an auth manager that lets everyone answer, no approvers configured) is *refused*: the switch
  does not happen. A request whose only approver is its requester is refused before it waits.
* An approval from someone who is not an approver is refused the same way.
* No answer before ``approval_timeout``: Airflow answers the default, Reject, with nobody as the
  responder; that is a *timed out* rejection. Nothing changes on a rejection of either kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

APPROVED, REJECTED, TIMED_OUT, REFUSED = "approved", "rejected", "timed_out", "refused"


def eligible_approvers(users: Iterable[str], role_members: Iterable[str], *, requester: str | None,
                       four_eyes: bool) -> list[str] | None:
    """The user ids that may answer (None: anyone Airflow allows), the requester left out under four eyes."""
    named = list(dict.fromkeys([*users, *role_members]))
    if not named:
        return None
    return [u for u in named if not (four_eyes and requester is not None and u == requester)]


@dataclass(frozen=True)
class Verdict:
    outcome: str  # APPROVED, REJECTED, TIMED_OUT or REFUSED
    responder: str | None
    detail: str


def judge(chosen: Iterable[str], *, responder: str | None, requester: str | None, allowed: list[str] | None,
          four_eyes: bool, timeout: str) -> Verdict:
    """What an answer to the approval means (see the module's rules)."""
    chosen = list(chosen)
    if responder is None:
        return Verdict(TIMED_OUT, None, f"no answer within {timeout}: rejected, nothing was changed")
    if chosen != ["Approve"]:
        return Verdict(REJECTED, responder, f"rejected by {responder}: nothing was changed")
    if four_eyes and (requester is None or responder == requester):
        who = "the requester" if requester is not None else "an unknown requester's run (four eyes cannot be checked)"
        return Verdict(REFUSED, responder, f"four eyes: the approval by {responder} is refused, {who} cannot approve "
                                           "their own restore; nothing was changed")
    if allowed is not None and responder not in allowed:
        return Verdict(REFUSED, responder, f"the approval by {responder} is refused: not one of the approvers "
                                           f"({', '.join(allowed)}); nothing was changed")
    return Verdict(APPROVED, responder, f"approved by {responder}")


def describe_approvers(users: Iterable[str], role: str | None, allowed: list[str] | None, *,
                       requester: str | None, four_eyes: bool) -> str:
    """One line for the request: who may answer."""
    if allowed is None:
        who = "anyone allowed to answer Required Actions"
    else:
        who = ", ".join(allowed) + (f" (users {', '.join(users)}" if users else " (") + \
            (f"{'; ' if users else ''}role {role})" if role else ")")
    return who + (f", not the requester {requester} (four eyes)" if four_eyes and requester else "")


def format_seconds(seconds: int) -> str:
    """``14400`` -> ``4h``; ``5400`` -> ``1h30min`` (the configuration's own notation)."""
    parts, rest = [], int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


__all__ = ["APPROVED", "REJECTED", "TIMED_OUT", "REFUSED", "Verdict", "eligible_approvers", "judge",
           "describe_approvers", "format_seconds"]
