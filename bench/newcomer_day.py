"""A newcomer's day with the sandbox, scripted (``make day``): it must end with nothing broken.

1. ``make up`` (``python -m sandbox up``), then a token from ``POST /auth/token`` as the sandbox's
   ``admin`` (``.sandbox/users.json``), who triggers everything.
2. Every DAG unpaused and triggered through Airflow's REST API, the daily verification first
   (the audit and the retention cleanup build on it), ``backup_restore`` last and alone.
   Unpausing a scheduled DAG also makes Airflow run its latest slot: those runs count too.
   ``backup_restore`` runs in replace mode:
   while it waits under *Required Actions*, headless Chromium (Debian's ``chromium`` driven by
   Playwright) opens that page, saves a screenshot and the script reads the page's text for
   the DAG, the task and the backup; the admin's own approval is refused (403: four eyes), then
   the ``approver`` user approves the switch through the REST API.
3. ``python -m sandbox app settle`` (the DBA's step after a replace: the app's database gets
   its configured name again, so the backups protect what it uses).
4. The S3 state (every version, checksum, lock date, legal hold, tags, bucket configuration)
   is recorded, ``make down`` / ``make up``, recorded again: it must be identical.
5. Every DAG again (``backup_restore`` as verify_only). Throughout, the S3 server's body files
   and deleted-but-open files must not grow beyond the data stored (as bench_s3_soak.py).

Exit 0 only when every run of the day succeeded, the S3 state survived the restart and disk
stayed bounded. Installs what it needs itself: Debian's ``chromium`` through ``make browser``
when missing; Playwright is pinned in requirements.txt (``make venv``). Screenshots and a JSON
summary go to ``.sandbox/day/``.

    make day        # or: .venv/bin/python bench/newcomer_day.py [--skip-up]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(1, str(REPO))

from bench_s3_soak import deleted_open, disk, stored  # noqa: E402
from sandbox.stack import S3_PROCESS, Layout, load_ports, running_pid  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
REASON = "newcomer's day: rehearse the emergency restore"
RUN_TIMEOUT = 3600
APPROVE_AFTER = 30  # seconds the approval waits under Required Actions before it is given
TERMINAL = {"success", "failed"}
ORDER = ("backup_daily_verification", "backup_weekly_maintenance", "backup_quarterly_audit",
         "backup_monthly_restore_test", "backup_file_restore", "backup_annual_dr_drill", "backup_restore")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- tools ------------------------------------------------------------------------------------------------
def ensure_tools() -> None:
    """Debian's chromium through `make browser` (the one install step), Playwright from requirements.txt."""
    if not Path(CHROMIUM).exists():
        say("installing Debian's chromium (make browser) ...")
        subprocess.run(["make", "-C", str(REPO), "browser"], check=True)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: `sudo make browser` installs it")
    import playwright  # noqa: F401  (pinned in requirements.txt: `make venv` installs it)


# -- the REST API -----------------------------------------------------------------------------------------
class ApiError(RuntimeError):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def sandbox_user(key: str) -> dict:
    """A named user of the sandbox (``.sandbox/users.json``, written by ``make up``)."""
    return json.loads((REPO / ".sandbox" / "users.json").read_text())[key]


class Api:
    def __init__(self, port: int, user: str = "admin"):
        self.base, self.user = f"http://localhost:{port}", sandbox_user(user)
        body = json.dumps({"username": self.user["username"], "password": self.user["password"]}).encode()
        req = urllib.request.Request(self.base + "/auth/token", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            self.token = json.loads(r.read())["access_token"]

    def call(self, method: str, path: str, body: dict | None = None, *, tries: int = 6) -> dict:
        """One API call; a 5xx is retried (standalone Airflow's SQLite is busy while many tasks write)."""
        for attempt in range(1, tries + 1):
            req = urllib.request.Request(self.base + "/api/v2" + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return json.loads(r.read() or b"{}")
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:500]
                if exc.code < 500 or attempt == tries:
                    raise ApiError(exc.code, f"{method} {path}: HTTP {exc.code}: {detail!r}") from None
                say(f"  {method} {path}: HTTP {exc.code}, retrying ({attempt}/{tries})")
                time.sleep(5)
        raise AssertionError("unreachable")

    def runs(self, dag_id: str) -> list[dict]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns?limit=100&order_by=-run_after")["dag_runs"]

    def trigger(self, dag_id: str, conf: dict) -> str:
        return self.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
        return {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""): t["state"] for t in tis}


def wait_dags_parsed(api: Api, timeout: float = 300) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        dags = sorted(d["dag_id"] for d in api.call("GET", "/dags?limit=100")["dags"])
        if set(ORDER) <= set(dags) or time.monotonic() > deadline:
            return dags
        time.sleep(5)


def conf_for(dag_id: str, restore_root: str, replace: bool) -> dict:
    if dag_id == "backup_restore":
        return {"mode": "replace" if replace else "verify_only", "reason": REASON}
    if dag_id == "backup_file_restore":
        return {"target_directory": f"{restore_root}/newcomer-day", "reason": REASON, "existing": "overwrite"}
    if dag_id == "backup_retention_cleanup":
        return {}
    return {}


def queued(run: dict) -> str:
    """When a run was queued (a scheduled run's run_after is its slot, possibly months back)."""
    return (run.get("queued_at") or run.get("start_date") or run.get("run_after") or "")[:19]


def wait_all(api: Api, since: str, timeout: float = RUN_TIMEOUT, on_waiting=None) -> dict[str, list[dict]]:
    """Every run of every DAG started at or after ``since``, once none is running or queued."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while True:
        runs = {d: [r for r in api.runs(d) if queued(r) >= since] for d in (*ORDER, "backup_retention_cleanup")}
        pending = [(d, r) for d, rs in runs.items() for r in rs if r["state"] not in TERMINAL]
        if on_waiting is not None:
            on_waiting(api)
        if not pending:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 45:  # asset-triggered runs start a little after their cause
                return runs
        else:
            quiet_since = None
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs still going after {timeout:.0f}s: {[(d, r['dag_run_id']) for d, r in pending]}")
        time.sleep(10)


# -- the approval, seen in a real browser ------------------------------------------------------------------
def screenshot_required_actions(base: str, out: Path, expect: list[str], token: str) -> str:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
            ctx.add_cookies([{"name": "_token", "value": token, "url": base}])  # as the login form leaves it
            page = ctx.new_page()
            page.goto(f"{base}/required_actions", wait_until="networkidle", timeout=60_000)
            deadline = time.monotonic() + 60
            text = ""
            while time.monotonic() < deadline:
                text = page.inner_text("body")
                if all(e in text for e in expect):
                    break
                page.wait_for_timeout(1000)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    missing = [e for e in expect if e not in text]
    if missing:
        raise AssertionError(f"the Required Actions page does not show {missing}; it shows: {text[:1500]!r}")
    return text


class Approval:
    """Approves the pending switch of ``backup_restore`` once, after the screenshot, as the approver: the
    admin who triggered it is refused first (four eyes: Airflow answers 403, the requester is not assigned)."""

    def __init__(self, out_dir: Path, approver: Api):
        self.out_dir, self.done, self.evidence, self.approver = out_dir, False, {}, approver
        self.first_seen: float | None = None

    def __call__(self, api: Api) -> None:
        if self.done:
            return
        pending = api.call("GET", "/dags/backup_restore/dagRuns/~/hitlDetails?response_received=false")
        items = [h for h in pending.get("hitl_details", []) if h["task_instance"]["task_id"] == "approve_switch"]
        if not items:
            return
        h = items[0]
        ti = h["task_instance"]
        # Answer as a person would, not within seconds: an answer that arrives before the executor
        # has reported the deferral makes Airflow 3.3's scheduler mark the task failed (observed:
        # "finished with state success, but the task instance's state attribute is queued").
        self.first_seen = self.first_seen or time.monotonic()
        if ti.get("state") not in ("deferred", "awaiting_input") or time.monotonic() - self.first_seen < APPROVE_AFTER:
            return
        shot = self.out_dir / "required-actions.png"
        text = screenshot_required_actions(api.base, shot, ["backup_restore", "approve_switch", "Switch trixtech-db"],
                                           self.approver.token)
        path = f"/dags/backup_restore/dagRuns/{ti['dag_run_id']}/taskInstances/approve_switch/{ti['map_index']}/hitlDetails"
        try:  # the requester approving their own replace
            api.call("PATCH", path, {"chosen_options": ["Approve"]})
            raise AssertionError(f"{api.user['username']} approved the replace they triggered (four eyes broken)")
        except ApiError as exc:
            if exc.code != 403:
                raise
            refused = str(exc)
        say(f"  Required Actions shows the switch (screenshot {shot}); {api.user['username']} was refused (403), "
            f"approving as {self.approver.user['username']} through the REST API")
        try:
            self.approver.call("PATCH", path, {"chosen_options": ["Approve"]})
        except ApiError as exc:
            if exc.code != 409:  # 409: already answered (a retried PATCH whose first try went through)
                raise
        self.done = True
        self.evidence = {"screenshot": str(shot), "subject": h.get("subject"), "page_text": text[:3000],
                         "requester_refused": refused[:300], "approved_by": self.approver.user["username"]}


# -- S3 and disk ----------------------------------------------------------------------------------------
def s3_state(client, bucket: str) -> dict:
    """Everything about the bucket a restart must keep (bodies by ETag and stored SHA-256)."""
    versions = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", ()):
            h = client.head_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"], ChecksumMode="ENABLED")
            versions[f"{v['Key']}@{v['VersionId']}"] = [
                v["ETag"], v["Size"], v["LastModified"].isoformat(), v["IsLatest"], h.get("ChecksumSHA256"),
                h.get("ObjectLockMode"), str(h.get("ObjectLockRetainUntilDate")), h.get("ObjectLockLegalHoldStatus")]
        for m in page.get("DeleteMarkers", ()):
            versions[f"{m['Key']}@{m['VersionId']}"] = ["marker", m["LastModified"].isoformat(), m["IsLatest"]]
    return {"versions": versions,
            "versioning": client.get_bucket_versioning(Bucket=bucket).get("Status"),
            "encryption": client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"],
            "lock": client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"],
            "public_access": client.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]}


def s3_usage(layout: Layout, client, bucket: str) -> dict:
    pid = running_pid(layout.pid_file("moto"), expect=S3_PROCESS)
    files, held = deleted_open(pid) if pid else (0, 0)
    return {"disk": disk(layout.s3 / "blobs"), "deleted_open_files": files, "deleted_open_bytes": held,
            "data": stored(client, bucket)[1]}


def sandbox(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=REPO, check=True)


def context(layout: Layout):
    from sandbox.stack import running_sandbox

    config, client, _ = running_sandbox(layout)
    return config, client, Api(load_ports(layout)["airflow"])


def run_round(api: Api, name: str, replace: bool, restore_root: str, out_dir: Path) -> tuple[dict, dict]:
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 5))
    say(f"round {name}: daily verification first (unpaused with the retention cleanup it triggers)")
    for dag_id in ("backup_daily_verification", "backup_retention_cleanup"):
        api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    api.trigger("backup_daily_verification", {})
    wait_all(api, since)
    say(f"round {name}: every other DAG, unpaused only now: their latest-slot runs need verified backups")
    for dag_id in ORDER[1:-1]:
        api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        api.trigger(dag_id, conf_for(dag_id, restore_root, replace))
    wait_all(api, since)
    # Last, alone: a replace restores into a new database on the app's server, which an audit
    # running at the same time rightly reports as unprotected.
    say(f"round {name}: backup_restore ({'replace' if replace else 'verify_only'})")
    api.call("PATCH", "/dags/backup_restore", {"is_paused": False})
    api.trigger("backup_restore", conf_for("backup_restore", restore_root, replace))
    approval = Approval(out_dir, Api(int(api.base.rsplit(":", 1)[1]), "approver"))
    runs = wait_all(api, since, on_waiting=approval if replace else None)
    if replace and not approval.done:
        raise AssertionError("backup_restore never waited for approval under Required Actions")
    return runs, approval.evidence


def report(api: Api, runs: dict[str, list[dict]]) -> list[str]:
    failed = []
    for dag_id, rs in runs.items():
        for r in rs:
            line = f"  {r['state']:8} {dag_id} {r['dag_run_id']}"
            print(line)
            if r["state"] != "success":
                bad = {t: s for t, s in api.task_states(dag_id, r["dag_run_id"]).items() if s not in ("success", "skipped")}
                print(f"           tasks: {bad}")
                failed.append(f"{dag_id} {r['dag_run_id']}")
    return failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-up", action="store_true", help="use the sandbox as it runs now")
    args = ap.parse_args()
    t0 = time.monotonic()
    layout = Layout()
    out_dir = layout.root / "day"
    out_dir.mkdir(parents=True, exist_ok=True)
    ensure_tools()
    if not args.skip_up:
        say("make up")
        sandbox("up")
    config, client, api = context(layout)
    restore_root = os.environ["BACKUP_RESTORE_ROOT"]
    dags = wait_dags_parsed(api)
    say(f"{len(dags)} DAGs: {', '.join(dags)}")
    usage0 = s3_usage(layout, client, config.bucket)
    runs1, approval = run_round(api, "1", True, restore_root, out_dir)
    say("app settle (the DBA's step after a replace)")
    sandbox("app", "settle")
    before = s3_state(client, config.bucket)
    say(f"S3 state recorded ({len(before['versions'])} versions); make down / make up")
    sandbox("down")
    sandbox("up")
    config, client, api = context(layout)
    after = s3_state(client, config.bucket)
    lost = sorted(set(before["versions"]) - set(after["versions"]))
    changed = sorted(k for k in before["versions"] if k in after["versions"] and after["versions"][k] != before["versions"][k])
    same_config = all(before[k] == after[k] for k in before if k != "versions")
    runs2, _ = run_round(api, "2", False, restore_root, out_dir)
    time.sleep(3)
    usage1 = s3_usage(layout, client, config.bucket)
    print("\nruns of the day:")
    failed = report(api, {d: runs1.get(d, []) + runs2.get(d, []) for d in runs1})
    grew = usage1["disk"] + usage1["deleted_open_bytes"] - usage0["disk"] - usage0["deleted_open_bytes"]
    beyond = grew - (usage1["data"] - usage0["data"])
    print(f"\nS3 across the restart: {len(before['versions'])} versions before, {len(after['versions'])} after; "
          f"lost {len(lost)}, changed {len(changed)}; bucket configuration {'kept' if same_config else 'CHANGED'}")
    print(f"S3 server disk: {usage0['disk'] / 2**20:.1f} -> {usage1['disk'] / 2**20:.1f} MiB of bodies, data stored "
          f"{usage0['data'] / 2**20:.1f} -> {usage1['data'] / 2**20:.1f} MiB, deleted-open files "
          f"{usage0['deleted_open_files']} -> {usage1['deleted_open_files']}; growth beyond the data {beyond / 2**20:+.1f} MiB")
    ok = not failed and not lost and not changed and same_config and beyond <= 0 and usage1["deleted_open_files"] == 0
    summary = {"ok": ok, "failed_runs": failed, "lost_versions": lost[:20], "changed_versions": changed[:20],
               "approval": approval, "usage_before": usage0, "usage_after": usage1,
               "minutes": round((time.monotonic() - t0) / 60, 1)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\nnewcomer's day {'PASSED' if ok else 'FAILED'} in {summary['minutes']} min (summary: {out_dir / 'summary.json'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
