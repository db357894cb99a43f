"""The sandbox's named users: passwords generated once and kept, written for scripts, and a token from
``POST /auth/token`` with each opens the Backup health JSON inside Airflow's real API app, configured
exactly as ``make up`` configures Airflow (``sandbox.users.auth_env``)."""

from __future__ import annotations

import json
import stat

import pytest

import airflow_env
from sandbox import users as sandbox_users
from sandbox.stack import Layout, airflow_env as stack_airflow_env
from test_health_api import health_db, sandbox  # noqa: F401  (fixtures: a checked history for the page)


def test_passwords_are_generated_once_and_kept(tmp_path):
    first = sandbox_users.ensure_users(tmp_path)
    assert {k: (u["username"], u["role"]) for k, u in first.items()} == {
        "admin": ("admin", "ADMIN"), "approver": ("approver", "USER"), "viewer": ("viewer", "VIEWER")}
    assert len({u["password"] for u in first.values()}) == 3 and all(len(u["password"]) >= 20 for u in first.values())
    written = json.loads((tmp_path / "users.json").read_text())
    assert written == first and written["approver"]["username"] == "approver"
    airflow_file = json.loads((tmp_path / "airflow" / "passwords.json").read_text())
    assert airflow_file == {u["username"]: u["password"] for u in first.values()}
    for f in (tmp_path / "users.json", tmp_path / "airflow" / "passwords.json"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert sandbox_users.ensure_users(tmp_path) == first  # make down / make up: the same passwords
    kept = json.loads((tmp_path / "users.json").read_text())
    del kept["viewer"]
    (tmp_path / "users.json").write_text(json.dumps(kept))
    again = sandbox_users.ensure_users(tmp_path)
    assert again["admin"] == first["admin"] and again["approver"] == first["approver"]
    assert again["viewer"]["password"] != first["viewer"]["password"]  # only the missing one is new


def test_make_up_configures_the_simple_auth_manager_with_them_and_approvers(tmp_path):
    env = stack_airflow_env(Layout(tmp_path), {"postgres": 5433, "s3": 5055, "airflow": 8080})
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(sandbox_users.passwords_file(tmp_path.resolve()))
    assert env["BACKUP_APPROVERS"] == "approver"
    from sandbox.stack import banner

    users = sandbox_users.ensure_users(tmp_path)
    text = banner({"airflow": 1, "postgres": 2}, "http://127.0.0.1:3", ".sandbox/env.sh", "ready", users)
    assert all(u["username"] in text and u["password"] in text for u in users.values())
    assert "approved by approver" in text and ".sandbox/users.json" in text


@pytest.fixture(scope="module")
def client(sandbox, tmp_path_factory):  # noqa: F811
    """Airflow's API app with the auth settings ``make up`` gives Airflow."""
    from fastapi.testclient import TestClient

    from backup_airflow.health import app as health_app
    from backupkit.health_cache import HealthService

    root = tmp_path_factory.mktemp("sandbox-users")
    users = sandbox_users.ensure_users(root)
    mp = pytest.MonkeyPatch()
    for k, v in sandbox_users.auth_env(root).items():
        mp.setenv(k, v)
    mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "sandbox-users-test-secret-" + "y" * 64)
    airflow_env.ensure_db()
    from airflow.api_fastapi.app import create_app, purge_cached_app

    health_app.use_service(HealthService(lambda c: sandbox.bucket, config_path=sandbox.config.path))
    purge_cached_app()
    with TestClient(create_app()) as c:
        yield c, users
    purge_cached_app()
    health_app.use_service(None)
    mp.undo()


@pytest.mark.parametrize("who", ["admin", "approver", "viewer"])
def test_a_token_of_each_sandbox_user_opens_the_health_json(client, sandbox, who):  # noqa: F811
    c, users = client
    r = c.post("/auth/token", json={"username": users[who]["username"], "password": users[who]["password"]})
    assert r.status_code in (200, 201), r.text
    got = c.get("/backup-health/api/sources", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert got.status_code == 200, got.text
    assert [s["name"] for s in got.json()["sources"]] == [s.name for s in sandbox.config.sources]


def test_a_wrong_password_or_no_token_gets_nothing(client):
    c, users = client
    assert c.post("/auth/token", json={"username": "admin", "password": users["viewer"]["password"]}).status_code == 401
    assert c.post("/auth/token", json={"username": "admin", "password": "-"}).status_code == 401  # no more all-admins
    assert c.get("/backup-health/api/sources").status_code == 401
