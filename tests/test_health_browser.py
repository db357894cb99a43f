"""The Backup Health page in a real ``airflow api-server`` and a real browser (headless Chromium).

One sandbox for the module: a generated history the daily checks ran on, the DAGs parsed and
stored in the metadata DB (so the UI can open backup_restore's trigger form), and the API server
as its own process with the simple auth manager's users (admin, approver, viewer).

* auth through the real server: no credential -> 401, a token from POST /auth/token -> 200;
* Chromium (Debian's, driven by Playwright with ``executable_path``) sees every source with its
  status; a damaged newest backup turns its row amber (changed since read), then red with the
  reason once the daily check has read it; the row's restore link opens backup_restore's
  trigger form with that backup's key filled in.

Screenshots go to ``$HEALTH_SCREENSHOTS`` (default ``.test-artifacts/health-browser`` in the
repository); the directory is printed. Browser tests are skipped when no Chromium is installed
(``make browser`` installs Debian's).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import airflow_env
from _clock import SESSION_NOW
from _health_helpers import build
from backupkit.pgserver import free_port
from sandbox.bookingdb import create_booking_db
from sandbox.history import _flip_bit
from sandbox.s3server import env_for_airflow

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("HEALTH_SCREENSHOTS") or airflow_env.REPO / ".test-artifacts" / "health-browser")
USERS = {"admin": "ADMIN", "approver": "USER", "viewer": "VIEWER"}
DATABASE = "trixtech_health_browser"
STARTUP = 180.0


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def server(pg, moto_server, tmp_path_factory):
    """The sandbox and a running ``airflow api-server`` in front of it."""
    create_booking_db(pg, DATABASE, scale=300)
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("health_browser")
    hs = build(pg, moto_server, root, mp, days=12, database=DATABASE, now=SESSION_NOW)
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({u: f"{u}-pw" for u in USERS}))
    port = free_port()
    env = {**os.environ, **airflow_env.settings_env(), **hs.env, **env_for_airflow(moto_server.endpoint_url),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_env.db_url(),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
           "AIRFLOW__API_AUTH__JWT_SECRET": "browser-test-secret-" + "x" * 64,
           "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "AIRFLOW__API__WORKERS": "1", "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False"}
    for key in ("BACKUP_ROOT", "BACKUP_LOG_DIR", "BACKUP_STATE_DIR", "BACKUPKIT_CONFIG", "AIRFLOW_CONN_AWS_DEFAULT"):
        mp.setenv(key, env[key])
    airflow_env.ensure_db()
    store_dags(env)
    log = open(root / "api-server.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "api-server", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"api-server exited {proc.returncode}: {(root / 'api-server.log').read_text()[-3000:]}")
            try:
                if _get(base + "/api/v2/monitor/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("api-server did not answer within %.0f s" % STARTUP)
        yield {"base": base, "sandbox": hs, "root": root}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        mp.undo()
        pg.psql(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)', check=False)


def store_dags(env: dict) -> None:
    """Parse dags/ with the sandbox's environment and store them, as the dag-processor would."""
    code = ("from airflow.dag_processing.bundles.manager import DagBundlesManager\n"
            "from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db\n"
            "from airflow.utils.session import create_session\n"
            "m = DagBundlesManager()\n"
            "with create_session() as s: m.sync_bundles_to_db(session=s)\n"
            "b = next(b for b in m.get_all_dag_bundles())\n"
            "bag = BundleDagBag(dag_folder=str(b.path), bundle_path=b.path, bundle_name=b.name)\n"
            "assert not bag.import_errors, bag.import_errors\n"
            "sync_bag_to_db(bag, b.name, b.version)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def token(base: str, user: str) -> str:
    req = urllib.request.Request(base + "/auth/token", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"username": user, "password": f"{user}-pw"}).encode())
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["access_token"]


def test_the_real_api_server_enforces_airflow_authentication(server):
    base = server["base"]
    assert _get(base + "/backup-health/api/sources")[0] == 401
    assert _get(base + "/backup-health/")[0] == 401
    assert _get(base + "/backup-health/api/sources", {"Authorization": "Bearer nonsense"})[0] == 403
    status, body = _get(base + "/backup-health/api/sources", {"Authorization": f"Bearer {token(base, 'viewer')}"})
    assert status == 200
    names = [s["name"] for s in json.loads(body)["sources"]]
    assert names == [s.name for s in server["sandbox"].config.sources]


# -- the browser ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(server):
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    print(f"\nscreenshots of the health page tests: {SHOTS}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def signed_in(browser, server, user: str):
    """A browser page holding the UI's session cookie for ``user`` (as the login form leaves it)."""
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
    ctx.add_cookies([{"name": "_token", "value": token(server["base"], user), "url": server["base"]}])
    return ctx.new_page()


def row(page, source: str):
    return page.locator(f'tr[data-source="{source}"]')


def test_the_page_lists_every_source_with_its_status(browser, server):
    page = signed_in(browser, server, "viewer")
    page.goto(server["base"] + "/backup-health/")
    for s in server["sandbox"].config.sources:
        r = row(page, s.name)
        assert r.count() == 1
        assert r.get_attribute("data-status") in ("ok", "warning")
        assert r.locator("td.reason").inner_text().strip()
    assert "signed in as viewer" in page.content()
    page.screenshot(path=str(SHOTS / "1-page.png"), full_page=True)
    page.goto(server["base"] + "/plugin/backup-health")  # the same page inside the UI's navigation
    page.frame_locator("iframe").locator('tr[data-source="trixtech-db"]').wait_for(timeout=30000)
    page.screenshot(path=str(SHOTS / "2-in-airflow-ui.png"), full_page=True)


def test_the_page_is_a_tab_on_each_backup_dag(browser, server):
    page = signed_in(browser, server, "viewer")
    page.goto(server["base"] + "/dags/backup_retention_cleanup")
    page.get_by_text("Backup health", exact=True).first.click()
    frame = page.frame_locator("iframe")
    frame.locator('tr[data-source="trixtech-db"]').wait_for(timeout=30000)
    assert "opened from backup_retention_cleanup" in frame.locator("body").inner_text()
    page.screenshot(path=str(SHOTS / "2b-dag-tab.png"), full_page=True)


def test_a_damaged_newest_backup_turns_its_row_red_with_the_reason(browser, server):
    hs = server["sandbox"]
    newest = hs.history.newest("trixtech-db")
    page = signed_in(browser, server, "viewer")
    _flip_bit(newest)  # the sandbox's "damaged" defect
    page.goto(server["base"] + "/backup-health/")
    assert row(page, "trixtech-db").get_attribute("data-status") == "warning"
    assert "changed since their last full read" in row(page, "trixtech-db").locator("td.reason").inner_text()
    page.screenshot(path=str(SHOTS / "3-damaged-not-yet-read.png"), full_page=True)
    hs.rerun_daily(SESSION_NOW)  # the daily verification reads it and records the failure
    page.reload()
    r = row(page, "trixtech-db")
    assert r.get_attribute("data-status") == "failed"
    reason = r.locator("td.reason").inner_text()
    assert f"newest backup {newest.name} failed verification" in reason
    color = r.locator("td.reason").evaluate("e => getComputedStyle(e).backgroundColor")
    assert color == "rgb(253, 226, 226)"  # the failed row's red
    assert row(page, "trixtech-files").get_attribute("data-status") != "failed"
    page.screenshot(path=str(SHOTS / "4-damaged-red.png"), full_page=True)


def test_the_restore_link_opens_the_trigger_form_with_the_backup_selected(browser, server):
    page = signed_in(browser, server, "admin")
    page.goto(server["base"] + "/backup-health/")
    link = row(page, "trixtech-files").locator("a.action")
    name = server["sandbox"].history.newest("trixtech-files").name
    assert link.inner_text() == f"restore {name}"
    link.click()
    page.wait_for_url("**/dags/backup_file_restore?conf=*")
    page.get_by_test_id("trigger-dag-button").click()
    dialog = page.get_by_role("dialog")
    key = dialog.locator("#element_key")  # the form's "S3 key" field (param "key")
    key.wait_for(state="attached", timeout=30000)
    assert key.input_value() == f"files/{name}"
    if not key.is_visible():  # the field sits in the form's collapsed "Archive" section
        dialog.get_by_text("Archive", exact=True).first.click()
        key.wait_for(state="visible", timeout=10000)
    text = dialog.inner_text()
    assert "An exact S3 key" in text and "trixtech-files" in text  # which = key, file set = this source
    page.wait_for_timeout(600)  # let the section finish opening before the picture
    page.screenshot(path=str(SHOTS / "5-trigger-form-prefilled.png"), full_page=True)
