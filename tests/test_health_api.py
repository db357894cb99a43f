"""The Backup Health plugin inside Airflow's real API app (``create_app``), through TestClient.

The app is Airflow's own: the plugin is loaded from plugins/ by the plugin manager and mounted
at /backup-health, authentication is the simple auth manager with real users (an admin, an
approver with role USER, a viewer) and passwords, tokens come from ``POST /auth/token``.
The facts come from a generated history the daily checks really ran on.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

import airflow_env
from _clock import SESSION_NOW
from _health_helpers import build
from sandbox.bookingdb import create_booking_db
from sandbox.s3server import SANDBOX_SECRET

DATABASE = "trixtech_health_api"
USERS = {"admin": ("admin", "ADMIN"), "approver": ("approver", "USER"), "viewer": ("viewer", "VIEWER")}
PUSH_SECRET = "pushgateway-password-s3cr3t"


@pytest.fixture(scope="module")
def health_db(pg):
    create_booking_db(pg, DATABASE, scale=300)
    yield DATABASE
    pg.psql(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)', check=False)


@pytest.fixture(scope="module")
def sandbox(pg, moto_server, health_db, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("health_api")
    mp.setenv("BACKUP_PUSHGATEWAY_URL", f"https://ops:{PUSH_SECRET}@push.example.invalid")
    hs = build(pg, moto_server, root, mp, days=12, database=health_db, now=SESSION_NOW)
    yield hs
    mp.undo()


@pytest.fixture(scope="module")
def client(sandbox, tmp_path_factory):
    """Airflow's API app with the simple auth manager and three named users."""
    from fastapi.testclient import TestClient

    from backup_airflow.health import app as health_app
    from backupkit.health_cache import HealthService

    mp = pytest.MonkeyPatch()
    passwords = tmp_path_factory.mktemp("auth") / "passwords.json"
    passwords.write_text(json.dumps({name: pw for name, (pw, _) in USERS.items()}))
    mp.setenv("AIRFLOW__CORE__AUTH_MANAGER",
              "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")
    mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", ",".join(f"{n}:{r}" for n, (_, r) in USERS.items()))
    mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
    mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "test-secret-for-this-session-only-0123456789-0123456789-0123456789-abcdef")
    airflow_env.ensure_db()
    from airflow.api_fastapi.app import create_app, purge_cached_app

    health_app.use_service(HealthService(lambda c: sandbox.bucket, config_path=sandbox.config.path))
    purge_cached_app()
    app = create_app()
    with TestClient(app) as c:
        yield c
    purge_cached_app()
    health_app.use_service(None)
    mp.undo()


def token(client, user: str) -> str:
    r = client.post("/auth/token", json={"username": user, "password": USERS[user][0]})
    assert r.status_code in (200, 201), r.text
    return r.json()["access_token"]


def bearer(client, user: str) -> dict:
    return {"Authorization": f"Bearer {token(client, user)}"}


def test_unauthenticated_requests_are_refused(client):
    for path in ("/backup-health/", "/backup-health/api/sources", "/backup-health/api/sources/trixtech-db"):
        r = client.get(path)
        assert r.status_code == 401, (path, r.status_code)
        assert "trixtech_" not in r.text  # nothing of the facts leaks into the refusal
    page = client.get("/backup-health/")
    assert "Sign in" in page.text and "/auth/login" in page.text


def test_an_invalid_or_forged_token_is_forbidden(client):
    good = token(client, "viewer")
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for value in ("not-a-jwt", forged):
        r = client.get("/backup-health/api/sources", headers={"Authorization": f"Bearer {value}"})
        assert r.status_code == 403, r.text


@pytest.mark.parametrize("user", list(USERS))
def test_a_token_from_auth_token_opens_the_json_for_every_role(client, sandbox, user):
    r = client.get("/backup-health/api/sources", headers=bearer(client, user))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["name"] for s in body["sources"]] == [s.name for s in sandbox.config.sources]
    assert all(s["status"] in ("ok", "warning", "failed") and s["reason"] for s in body["sources"])
    newest = {s.name: sandbox.history.newest(s.name).name for s in sandbox.config.sources}
    assert {s["name"]: s["newest"]["name"] for s in body["sources"]} == newest


def test_the_ui_session_cookie_opens_the_page(client):
    """The page is an iframe in the UI: the browser sends the UI's JWT cookie, not a header."""
    client.cookies.set("_token", token(client, "viewer"))
    try:
        r = client.get("/backup-health/")
    finally:
        client.cookies.clear()
    assert r.status_code == 200
    assert "signed in as viewer" in r.text
    assert r.headers["content-security-policy"].startswith("default-src 'none'")


def test_only_a_role_that_may_trigger_gets_the_restore_action(client, sandbox):
    admin = client.get("/backup-health/api/sources/trixtech-db", headers=bearer(client, "admin")).json()
    viewer = client.get("/backup-health/api/sources/trixtech-db", headers=bearer(client, "viewer")).json()
    assert viewer["restore"] == {"denied": "your role may not trigger backup_restore"}
    action = admin["restore"]
    name = sandbox.history.newest("trixtech-db").name
    assert action["dag_id"] == "backup_restore"
    assert action["conf"] == {"source": "trixtech-db", "which": "key", "key": f"database/{name}"}
    url = urlsplit(action["href"])
    assert url.path == "/dags/backup_restore"
    assert json.loads(unquote(parse_qs(url.query)["conf"][0])) == action["conf"]
    files = client.get("/backup-health/api/sources/trixtech-files", headers=bearer(client, "approver")).json()
    assert files["restore"]["dag_id"] == "backup_file_restore" and files["restore"]["conf"]["file_set"] == \
        "trixtech-files"


def test_each_fact_links_to_the_task_log_that_produced_it(client):
    s = client.get("/backup-health/api/sources/trixtech-files", headers=bearer(client, "viewer")).json()
    run = quote_run(s["daily_run"]["run_id"])
    index = s["daily_run"]["map_index"]
    assert index == 2  # the third configured source is the third mapped task instance
    assert s["links"]["verification"] == f"/dags/backup_daily_verification/runs/{run}/tasks/check_integrity/mapped/2"
    assert s["links"]["s3"].endswith("/tasks/check_cloud_copies/mapped/2")


def quote_run(run_id: str) -> str:
    from urllib.parse import quote

    return quote(run_id, safe="")


def test_unknown_source_is_404(client):
    r = client.get("/backup-health/api/sources/no-such", headers=bearer(client, "viewer"))
    assert r.status_code == 404


def test_nothing_secret_from_the_configuration_is_shown(client):
    headers = bearer(client, "admin")
    text = client.get("/backup-health/", headers=headers).text + client.get("/backup-health/api/sources",
                                                                            headers=headers).text
    for secret in (PUSH_SECRET, SANDBOX_SECRET, "push.example.invalid"):
        assert secret not in text


def test_the_plugin_is_in_the_ui_navigation_and_on_every_dag(client):
    r = client.get("/api/v2/plugins", headers=bearer(client, "admin"))
    assert r.status_code == 200
    plugin = next(p for p in r.json()["plugins"] if p["name"] == "backup_health")
    views = {v["destination"]: v for v in plugin["external_views"]}
    assert views["nav"]["href"] == "backup-health/" and views["nav"]["url_route"] == "backup-health"
    assert views["dag"]["href"] == "backup-health/?dag_id={DAG_ID}"
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/backup-health"]


def test_the_links_and_the_prefill_name_tasks_and_fields_the_dags_have(sandbox):
    """The adapter's task ids and form fields are plain strings: hold them to the DAGs themselves."""
    from airflow.dag_processing.dagbag import DagBag

    from backup_airflow.health.links import DAILY_DAG, RESTORE_DAGS, TASK_OF_FACT

    bag = DagBag(dag_folder=str(airflow_env.DAGS))
    assert not bag.import_errors
    assert set(TASK_OF_FACT.values()) <= set(bag.dags[DAILY_DAG].task_ids)
    for dag_id, field in RESTORE_DAGS.values():
        assert {field, "which", "key"} <= set(bag.dags[dag_id].params), dag_id


def test_the_middleware_prefills_only_the_restore_form_asked_from_a_prefill_link(client, sandbox):
    """Through Airflow's real ``/api/v2/dags/{id}/details`` (the DAGs stored as the dag-processor does)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    from backup_airflow.health.links import UiLinks

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    bundle = next(iter(manager.get_all_dag_bundles()))
    bag = BundleDagBag(dag_folder=str(airflow_env.DAGS / "backup_restore.py"), bundle_path=bundle.path,
                       bundle_name=bundle.name)
    sync_bag_to_db(bag, bundle.name, bundle.version)
    name = sandbox.history.newest("trixtech-db-sql").name
    conf = {"source": "trixtech-db-sql", "which": "key", "key": f"database-sql/{name}"}
    page = "http://testserver" + UiLinks("").trigger_form("backup_restore", conf)
    headers = bearer(client, "admin")
    plain = client.get("/api/v2/dags/backup_restore/details", headers=headers).json()["params"]
    filled = client.get("/api/v2/dags/backup_restore/details", headers={**headers, "Referer": page}).json()["params"]
    assert plain["key"]["value"] is None and plain["which"]["value"] == "latest"
    assert {k: filled[k]["value"] for k in conf} == conf
    assert {k: v for k, v in filled.items() if k not in conf} == {k: v for k, v in plain.items() if k not in conf}
    hostile = page.replace("database-sql%2F", "files%2F")  # a key outside the source's prefix
    refused = client.get("/api/v2/dags/backup_restore/details", headers={**headers, "Referer": hostile}).json()
    assert refused["params"] == plain
