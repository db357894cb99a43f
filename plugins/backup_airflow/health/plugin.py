"""The AirflowPlugin: the page in the UI's navigation and on every DAG, its FastAPI app, the form pre-fill.

Registered by ``plugins/backup_health_plugin.py`` (the plugin loader skips the packages under
plugins/, see plugins/.airflowignore). Every component is resolved when Airflow asks for it,
so loading the plugin in a scheduler or worker imports neither FastAPI nor the health code.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

NAME = "backup_health"
MOUNT = "/backup-health"  # backup_airflow.health.app.MOUNT (that module imports FastAPI)

# External views (iframes in the UI): relative hrefs, so a base path in front of the UI still works.
NAV_VIEW = {"name": "Backup health", "href": "backup-health/", "url_route": "backup-health", "destination": "nav",
            "category": "Browse"}
DAG_VIEW = {"name": "Backup health", "href": "backup-health/?dag_id={DAG_ID}", "url_route": "backup-health-dag",
            "destination": "dag"}


class BackupHealthPlugin(AirflowPlugin):
    name = NAME
    external_views = [NAV_VIEW, DAG_VIEW]

    @property
    def fastapi_apps(self):  # type: ignore[override]
        from backup_airflow.health.app import app

        return [{"app": app, "url_prefix": MOUNT, "name": "Backup health"}]

    @property
    def fastapi_root_middlewares(self):  # type: ignore[override]
        from backup_airflow.health.prefill import TriggerFormPrefill

        return [{"middleware": TriggerFormPrefill, "args": [], "kwargs": {},
                 "name": "backup_restore trigger form pre-fill"}]


__all__ = ["BackupHealthPlugin", "NAME", "NAV_VIEW", "DAG_VIEW"]
