"""The Backup Health FastAPI app, mounted by the Airflow API server at ``/backup-health``.

A plugin's FastAPI app is not behind Airflow's login: every route here depends on
:func:`authorized`, which resolves the caller exactly as Airflow's own ``/api/v2`` routes do
(``airflow.api_fastapi.core_api.security.get_user``: a ``Bearer`` token from ``POST /auth/token``,
else the UI's session cookie) and asks the configured auth manager whether that user may read
the daily verification DAG (``requires_access_dag("GET", ...)``, the check its runs' pages make).
No credential: 401; an invalid token or a user without that permission: 403.

Nothing runs at import: the configuration, the S3 client and the Airflow security module are
loaded on the first request.
"""

from __future__ import annotations

import html
import threading
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from backup_airflow.health.links import DAILY_DAG, DRILL_DAG, UiLinks, restore_action

MOUNT = "/backup-health"
READ_DAG = DAILY_DAG  # read access to the daily verification's runs is read access to their facts
PAGE_HEADERS = {"Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                           "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"}

app = FastAPI(title="Backup health", docs_url=None, redoc_url=None, openapi_url=None)
_bearer = HTTPBearer(auto_error=False)
_lock = threading.Lock()
_service = None


def service():
    """The process's :class:`~backupkit.health_cache.HealthService` (made on first use)."""
    global _service
    with _lock:
        if _service is None:
            from backup_airflow.hooks import bucket
            from backupkit.health_cache import HealthService

            _service = HealthService(bucket)
        return _service


def use_service(svc) -> None:
    """Replace the process's service (tests: one with its own configuration and bucket)."""
    global _service
    with _lock:
        _service = svc


async def signed_in(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Any:
    """The caller as Airflow's own routes resolve it (401 without a credential, 403 for a bad token)."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, None, credentials)


def authorized(request: Request, user: Any = Depends(signed_in)) -> Any:
    """The signed-in user, if the auth manager lets them read the daily verification DAG (else 403).

    A plain function: FastAPI runs it in its thread pool, as Airflow's own ``requires_access_*``
    (the check may query the metadata DB for the DAG's team).
    """
    from airflow.api_fastapi.core_api.security import requires_access_dag

    requires_access_dag("GET", param_dag_id=READ_DAG)(request, user)
    return user


def _may_trigger(user: Any):
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    def check(dag_id: str) -> bool:
        return get_auth_manager().is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN,
                                                    details=DagDetails(id=dag_id), user=user)

    return check


def ui_links(request: Request) -> UiLinks:
    """Links rooted where the UI is: this app's root path without its mount point."""
    root = request.scope.get("root_path", "")
    return UiLinks(root[: -len(MOUNT)] if root.endswith(MOUNT) else "")


def decorated(request: Request, user: Any) -> dict:
    """The snapshot with each source's links and restore action for this user."""
    snap = service().snapshot()
    links, may = ui_links(request), _may_trigger(user)
    for s in snap["sources"]:
        s["links"] = links.for_source(s)
        s["restore"] = restore_action(s, links, may)
    drill = snap.get("drill")
    snap["drill_link"] = links.run(DRILL_DAG, drill.get("run_id")) if drill else None
    return snap


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException):
    """401/403 as Airflow answers them; the page also says where to sign in."""
    if request.url.path.rstrip("/").endswith(MOUNT) or request.url.path.endswith(f"{MOUNT}/"):
        try:
            from airflow.api_fastapi.app import get_auth_manager

            login = get_auth_manager().get_url_login(next_url=str(request.url))
        except Exception:  # no auth manager initialised (an app outside the API server)
            login = ui_links(request).root + "/auth/login"
        login = html.escape(login, quote=True)
        body = (f"<!DOCTYPE html><title>Backup health</title><p>{exc.status_code}: {exc.detail}. "
                f'<a href="{login}" target="_top">Sign in to Airflow</a></p>')
        return HTMLResponse(body, status_code=exc.status_code, headers=PAGE_HEADERS)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers={"Cache-Control": "no-store"})


@app.get("/", response_class=HTMLResponse)
def page(request: Request, dag_id: str | None = None, user: Any = Depends(authorized)) -> HTMLResponse:
    from backupkit.reports.health_page import render_page

    snap = decorated(request, user)
    context = dag_id if dag_id and len(dag_id) <= 250 else None
    return HTMLResponse(render_page(snap, user=user.get_name(), context=context, drill_link=snap["drill_link"]),
                        headers=PAGE_HEADERS)


@app.get("/api/sources")
def sources(request: Request, user: Any = Depends(authorized)) -> JSONResponse:
    return JSONResponse(decorated(request, user), headers={"Cache-Control": "no-store"})


@app.get("/api/sources/{name}")
def one_source(name: str, request: Request, user: Any = Depends(authorized)) -> JSONResponse:
    snap = decorated(request, user)
    found = next((s for s in snap["sources"] if s["name"] == name), None)
    if found is None:
        raise HTTPException(404, f"no configured source {name[:100]!r}")
    return JSONResponse({**found, "generated_at": snap["generated_at"], "drill": snap["drill"]},
                        headers={"Cache-Control": "no-store"})


__all__ = ["app", "MOUNT", "service", "use_service", "authorized"]
