"""The approval of ``backup_restore``'s replace: Airflow's ``ApprovalOperator`` with the team's rules.

:class:`ReplaceApprovalOperator` offers the request only to the configured approvers
(``assigned_users``; the requester left out under four eyes), announces it on the alert channels
with a link to *Required Actions* (:class:`ApprovalRequestNotifier`, through
:func:`~backup_airflow.notifiers.alert_channels`), waits at most ``restore.approval_timeout`` (then
Airflow answers the default, Reject) and judges the answer by :mod:`backupkit.approvals`: a refused
approval fails the task (the switch never runs) and every outcome is in the restore journal with
who asked and who answered.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Mapping

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import BaseNotifier

from backup_airflow.common import RequestRejected
from backup_airflow.hooks import backup_config
from backup_airflow.notifiers import channel_notifiers, send_all
from backupkit import alerts
from backupkit.approvals import (APPROVED, REFUSED, TIMED_OUT, describe_approvers, eligible_approvers,
                                 format_seconds, judge)
from backupkit.config import Config
from backupkit.restore.journal import RestoreJournal

log = logging.getLogger(__name__)
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def requester_of(context: Mapping[str, Any]) -> str | None:
    """Who triggered the run, as Airflow recorded it (never the run's conf: a form cannot claim a name)."""
    name = getattr(context.get("dag_run"), "triggering_user_name", None)
    return str(name) if name else None


def role_members(role: str | None) -> list[str]:
    """User ids holding ``role``: the simple auth manager lists its users in the configuration; other auth
    managers keep roles elsewhere, so a role cannot be resolved here (list the users instead)."""
    if not role:
        return []
    from airflow.configuration import conf

    manager = conf.get("core", "auth_manager", fallback=SIMPLE_AUTH_MANAGER)
    if manager != SIMPLE_AUTH_MANAGER:
        raise RequestRejected(f"restore.approvers.role {role!r} cannot be resolved with the auth manager {manager}: "
                              "list the approvers' user ids in restore.approvers.users (nothing was changed)")
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    return [u.username for u in SimpleAuthManager.get_users() if (u.role or "").upper() == role.upper()]


def required_actions_link(context: Mapping[str, Any]) -> str | None:
    """The run's Required Actions page (``[api] base_url``, else the local API server's port)."""
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback=None) or f"http://localhost:{conf.get('api', 'port', fallback='8080')}"
    try:
        return context["task"].generate_link_to_ui_from_context(context=context, base_url=base)
    except (KeyError, ValueError, AttributeError):
        return None


class ApprovalRequestNotifier(BaseNotifier):
    """Tells the alert channels that a replace waits for approval (never fails the approval: a broken chat
    webhook must not cost the restore; the request is in Required Actions regardless)."""

    template_fields = ()

    def __init__(self, *, channels: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = channels

    def notify(self, context: Any) -> None:
        task, request = context["task"], context["ti"].xcom_pull(task_ids=context["task"].request_task_id) or {}
        message = alerts.approval_message(
            dag_id=context["ti"].dag_id, run_id=context["run_id"], subject=str(task.subject),
            requested_by=requester_of(context) or str(request.get("triggered_by")),
            reason=str(request.get("reason") or ""), approvers=getattr(task, "approvers_text", "?"),
            timeout=format_seconds(int(task.response_timeout.total_seconds())), link=required_actions_link(context))
        if not self.channels:
            log.warning("no alert channel configured: nobody was told that %s waits for approval (%s)",
                        context["run_id"], message.link)
            return
        try:
            send_all(channel_notifiers(self.channels), message, context)
        except Exception as exc:  # noqa: BLE001 - logged; the request waits in Required Actions anyway
            log.error("the approval request could not be sent to every channel (%s); it waits in Required "
                      "Actions: %s", exc, message.link)


class ReplaceApprovalOperator(ApprovalOperator):
    """Approve or reject the switch; only the configured approvers, never the requester under four eyes."""

    def __init__(self, *, config: Config, request_task_id: str, channels: list[dict[str, Any]], **kwargs: Any) -> None:
        r = config.restore
        super().__init__(defaults="Reject", response_timeout=timedelta(seconds=r.approval_timeout_seconds),
                         execution_timeout=None, notifiers=[ApprovalRequestNotifier(channels=channels)], **kwargs)
        self.request_task_id = request_task_id
        self.approver_users, self.approver_role = list(r.approvers.users), r.approvers.role
        self.four_eyes = r.four_eyes
        self.approvers_text = ""

    def _allowed(self, context: Mapping[str, Any]) -> list[str] | None:
        return eligible_approvers(self.approver_users, role_members(self.approver_role),
                                  requester=requester_of(context), four_eyes=self.four_eyes)

    def execute(self, context: Any) -> Any:
        allowed, requester = self._allowed(context), requester_of(context)
        self.approvers_text = describe_approvers(self.approver_users, self.approver_role, allowed,
                                                 requester=requester, four_eyes=self.four_eyes)
        if allowed == []:
            detail = (f"nobody may approve: the only approver is the requester {requester} and four eyes apply "
                      "(restore.approvers); nothing was changed")
            self._audit(context, "approval_refused", detail=detail)
            raise RequestRejected(detail)
        self.assigned_users = [{"id": u, "name": u} for u in allowed] if allowed is not None else None
        self._audit(context, "approval_requested", approvers=allowed, detail=self.approvers_text,
                    timeout=format_seconds(int(self.response_timeout.total_seconds())))
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" in event:  # no defaults (never here) or a failed resume: the provider's error
            return super().execute_complete(context, event)
        responder = (event.get("responded_by_user") or {}).get("id")
        verdict = judge(event.get("chosen_options") or [], responder=responder, requester=requester_of(context),
                        allowed=self._allowed(context), four_eyes=self.four_eyes,
                        timeout=format_seconds(int(self.response_timeout.total_seconds())))
        action = {APPROVED: "approval_given", REFUSED: "approval_refused", TIMED_OUT: "approval_timed_out"}.get(
            verdict.outcome, "approval_rejected")
        self._audit(context, action, detail=verdict.detail, answered_by=verdict.responder,
                    approved_by=verdict.responder if verdict.outcome == APPROVED else None)
        if verdict.outcome == REFUSED:
            raise RequestRejected(verdict.detail)
        log.info("%s", verdict.detail)
        return super().execute_complete(context, event)

    def _audit(self, context: Mapping[str, Any], action: str, **fields: Any) -> None:
        request = context["ti"].xcom_pull(task_ids=self.request_task_id) or {}
        RestoreJournal(backup_config().state_dir).append(
            run_id=context["run_id"], source=str(request.get("source")), action=action,
            triggered_by=request.get("triggered_by"), reason=request.get("reason"), backup=request.get("backup"),
            mode=request.get("mode"), **fields)


__all__ = ["ReplaceApprovalOperator", "ApprovalRequestNotifier", "requester_of", "role_members",
           "required_actions_link"]
