"""Where each fact came from, as Airflow UI links, and the "restore this backup" action.

The UI's routes (Airflow 3.3): ``/dags/{dag}/runs/{run}`` for a run and
``/dags/{dag}/runs/{run}/tasks/{task}/mapped/{index}`` for one mapped task instance (its log).
Links are built from the UI root of the request, so they work behind a base path too.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping
from urllib.parse import quote

from backupkit.prefill import FIELDS

DAILY_DAG = "backup_daily_verification"
# The daily DAG's mapped checks (dags/backup_daily_verification.py MAPPED_CHECKS; a test holds them equal).
TASK_OF_FACT = {"freshness": "check_freshness", "verification": "check_integrity", "s3": "check_cloud_copies"}
RESTORE_TEST_DAG = "backup_monthly_restore_test"
RETENTION_DAG = "backup_retention_cleanup"
DRILL_DAG = "backup_annual_dr_drill"
# What a restore of each kind opens: the DAG and the form field naming the source.
RESTORE_DAGS = {kind: (dag_id, field) for dag_id, (field, kind) in FIELDS.items()}


class UiLinks:
    """Hrefs into the Airflow UI rooted at ``ui_root`` (``""`` when the UI is at ``/``)."""

    def __init__(self, ui_root: str):
        self.root = ui_root.rstrip("/")

    def dag(self, dag_id: str, tail: str = "") -> str:
        return f"{self.root}/dags/{quote(dag_id, safe='')}{tail}"

    def run(self, dag_id: str, run_id: str | None) -> str | None:
        return None if not run_id else self.dag(dag_id, f"/runs/{quote(run_id, safe='')}")

    def task(self, dag_id: str, run_id: str, task_id: str, map_index: int | None = None) -> str:
        tail = "" if map_index is None else f"/mapped/{int(map_index)}"
        return f"{self.run(dag_id, run_id)}/tasks/{quote(task_id, safe='')}{tail}"

    def trigger_form(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        """The DAG's page carrying the form values in ``conf`` (:mod:`.prefill` puts them in the form)."""
        return self.dag(dag_id, "?conf=" + quote(json.dumps(dict(conf), separators=(",", ":")), safe=""))

    def for_source(self, s: Mapping[str, Any]) -> dict[str, str | None]:
        """fact -> href of the run or task log that produced it."""
        run = s.get("daily_run")
        links: dict[str, str | None] = {}
        if run:
            for fact, task_id in TASK_OF_FACT.items():
                links[fact] = self.task(run["dag_id"], run["run_id"], task_id, run["map_index"])
            links["daily_run"] = self.run(run["dag_id"], run["run_id"])
        rt = s.get("restore_test")
        if rt and rt.get("run_id"):
            links["restore_test"] = self.run(RESTORE_TEST_DAG, rt["run_id"])
        links["retention"] = self.dag(RETENTION_DAG, "/runs")
        return links


def restore_action(s: Mapping[str, Any], links: UiLinks, may_trigger: Callable[[str], bool]) -> dict:
    """``{"href", "label", "dag_id", "conf"}`` for the newest verified backup, or ``{"denied": why}``."""
    target = s["verification"]["newest_verified"]
    dag = RESTORE_DAGS.get(s.get("restores_into") or "")
    if target is None or dag is None:
        return {"denied": "no verified backup to restore"}
    dag_id, field = dag
    if not may_trigger(dag_id):
        return {"denied": f"your role may not trigger {dag_id}"}
    conf = {field: s["name"], "which": "key", "key": target["key"]}
    return {"href": links.trigger_form(dag_id, conf), "label": f"restore {target['name']}", "dag_id": dag_id,
            "conf": conf}


__all__ = ["UiLinks", "restore_action", "DAILY_DAG", "TASK_OF_FACT", "RESTORE_DAGS", "DRILL_DAG"]
