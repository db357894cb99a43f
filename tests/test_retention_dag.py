"""End to end: ``dag.test()`` of backup_retention_cleanup on a generated sandbox history.

Real parts only: ~60 nights of real pg_dump / tar.gz backups of every configured source, their
copies in a real S3 API on loopback (moto server, versioned bucket with object lock) uploaded
with SHA-256 checksums, Airflow running every task in this process against a migrated SQLite
metadata DB, the alert webhook and the Pushgateway as a real HTTP server.

Verification state: instead of running the daily integrity check (a pg_restore of every one
of ~180 backups, minutes), each backup's record is written as ``passed`` with the SHA-256 of
its sidecar and its size -- exactly what ``backupkit.jobs.daily.check_integrity`` stores for a
backup that verified (tests/test_state.py and the daily tests cover that path).

What the sweeps should delete is computed here independently of backupkit's policy engine:
restic's ``forget`` rules as docs/retention.md states them (newest backup of each of the N most
recent days / ISO weeks / months / years that have a backup, and the oldest backup while a rule
has count left) over the backups' own timestamps.

``dag.test()`` always creates a MANUAL run (Airflow 3.3: ``get_or_create_dagrun`` hard-codes
the run type), so the asset-triggered branch of the dry-run decision is tested on the function
that makes it (:func:`resolve_dry_run`), with the run type the task reads from its context.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import airflow_env
from _clock import SESSION_NOW
from _daily_helpers import RecordingServer, airflow_db, task_states  # noqa: F401  (fixture)
from airflow.sdk.api.datamodels._generated import DagRunType
from airflow.sdk.exceptions import AirflowFailException
from backup_airflow.common import DAILY_VERIFIED
from backup_airflow.retention_operators import (
    RetentionFailed,
    RetentionSweepOperator,
    merge_metric_values,
    resolve_dry_run,
    retention_metrics,
    select_sources,
    summarize_sweeps,
)
from backupkit import clock
from backupkit.catalog import local_backups, s3_key_for
from backupkit.storage.localfs import read_sidecar
from backupkit.storage.objectstore import Bucket
from backupkit.config import load_config
from backupkit.retention.audit import AuditLog
from sandbox.bookingdb import create_booking_db
from sandbox.history import generate_history, sync_to_s3
from sandbox.s3server import create_production_bucket, reset
from sandbox.stack import CONFIG_FILE, sandbox_env
from backupkit.state import VerificationState

DAG_ID = "backup_retention_cleanup"
DAYS = 60
DATABASE = "trixtech_retention_e2e"  # our own copy: generate_history grows the database it dumps
COMPANIONS = (".sha256", ".manifest.json")

# Policies of the applied run: the shipped ones, except that trixtech-db-sql's keep 7 daily +
# 4 weekly and trixtech-k8s's keep 12 weekly drop ~5/6 of a 60-night backlog, more than the
# default max_delete_fraction of 0.5.
APPLY_OVERRIDES = {"trixtech-db-sql": {"max_delete_fraction": 0.9}, "trixtech-k8s": {"max_delete_fraction": 0.9}}
# A policy that would delete far more than its guard rail allows.
GREEDY = {"keep_daily": 7, "keep_weekly": 0, "keep_monthly": 0, "keep_yearly": 0, "max_delete_fraction": 0.5,
          "min_keep": 3}


# -- an independent oracle of restic's forget rules -------------------------------------------
def _period(ts: datetime, rule: str) -> tuple:
    if rule == "keep_daily":
        return (ts.year, ts.month, ts.day)
    if rule == "keep_weekly":
        return tuple(ts.isocalendar()[:2])
    if rule == "keep_monthly":
        return (ts.year, ts.month)
    if rule == "keep_yearly":
        return (ts.year,)
    raise ValueError(rule)


def expected_keep(timestamps: dict[str, datetime], policy: dict) -> set[str]:
    """Names kept, by the engine's documented rules (docs/retention.md, "Semantics"), all verified:

    - walking newest first, each rule keeps a backup whose period differs from the period it
      kept last, while it has count left (gaps use no count);
    - a rule that still has count left when it reaches the oldest backup keeps the oldest too
      ("oldest daily snapshot"), whatever its period;
    - the newest backup is always kept (guard rail).
    """
    newest_first = sorted(timestamps, key=lambda n: (timestamps[n], n), reverse=True)
    keep = {newest_first[0]} if newest_first else set()
    for rule in ("keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"):
        left, last = int(policy.get(rule) or 0), None
        for position, name in enumerate(newest_first):
            if left <= 0:
                break
            period = _period(timestamps[name].astimezone(timezone.utc), rule)
            if period != last or position == len(newest_first) - 1:
                keep.add(name)
                left -= 1
                last = period
    return keep


# -- the sandbox ------------------------------------------------------------------------------
def write_config(path: Path, overrides: dict[str, dict] | None = None) -> Path:
    """The shipped configuration with some sources' retention changed (env expansions kept)."""
    doc = yaml.safe_load(CONFIG_FILE.read_text())
    for section in ("databases", "file_sets", "kubernetes_resources"):
        for src in doc.get(section) or []:
            src["retention"] = {**(src.get("retention") or {}), **(overrides or {}).get(src["name"], {})}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class Sandbox:
    root: Path
    moto: object
    config_path: Path
    s3: object
    bucket: str
    dirty: bool = False
    snapshot: dict[str, Path] = field(default_factory=dict)

    @property
    def config(self):
        return load_config(self.config_path)

    def timestamps(self, source: str) -> dict[str, datetime]:
        src = self.config.source(source)
        return {b.name: b.timestamp for b in local_backups(src)}

    def local_files(self) -> dict[str, set[str]]:
        return {s.name: {p.name for p in s.local_dir.iterdir()} for s in self.config.sources}

    def s3_keys(self) -> dict[str, set[str]]:
        return {s.name: {o.key for o in Bucket(self.s3, self.bucket).objects(s.s3_prefix)}
                for s in self.config.sources}

    def file_bytes(self, source: str, name: str) -> int:
        d = self.config.source(source).local_dir
        return sum((d / (name + suffix)).stat().st_size for suffix in ("", *COMPANIONS)
                   if (d / (name + suffix)).exists())

    def restore(self) -> None:
        """Back to the generated history: local files, state, bucket (after a run that deleted)."""
        config = self.config
        for what, copy in self.snapshot.items():
            target = self.root / what
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(copy, target)
        reset(self.moto.endpoint_url)
        self.s3 = self.moto.client()
        create_production_bucket(self.s3, self.bucket)
        sync_to_s3(config, self.s3)
        self.dirty = False


@pytest.fixture(scope="module")
def receiver():
    """One HTTP server for the alert webhook (/hooks/...) and the Pushgateway (/metrics/...)."""
    server = RecordingServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def sandbox(airflow_db, pg, moto_server, receiver, tmp_path_factory):  # noqa: F811
    """60 nights of every source on disk and in S3, all verified; generated once per module."""
    root = tmp_path_factory.mktemp("retention-dag")
    create_booking_db(pg, DATABASE, scale=400)
    mp = pytest.MonkeyPatch()
    for key, value in sandbox_env(root, pg.port, moto_server.endpoint_url).items():
        mp.setenv(key, value)
    mp.setenv("BACKUP_WEBHOOK_CONN_ID", "backup_alerts")
    mp.setenv("AIRFLOW_CONN_BACKUP_ALERTS", f"{receiver.url}/hooks/backup-alerts")
    mp.setenv("BACKUP_PUSHGATEWAY_URL", receiver.url)
    config_path = write_config(root / "backups.yaml", APPLY_OVERRIDES)
    mp.setenv("BACKUPKIT_CONFIG", str(config_path))
    try:
        reset(moto_server.endpoint_url)
        s3 = moto_server.client()
        config = load_config(config_path)
        create_production_bucket(s3, config.bucket)
        now = SESSION_NOW
        generate_history(config, pg, now=now, days=DAYS, s3_client=s3, database=DATABASE)
        with VerificationState(config.state_dir) as state:  # see the module docstring
            for src in config.sources:
                for b in local_backups(src):
                    state.record(f"{src.name}/{b.name}", read_sidecar(b.path), b.size, True, now)
        box = Sandbox(root, moto_server, config_path, s3, config.bucket)
        for what in ("backups", "state"):
            box.snapshot[what] = shutil.copytree(root / what, root / "pristine" / what)
        yield box
    finally:
        mp.undo()
        pg.psql(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)', check=False)


@pytest.fixture
def box(sandbox, receiver, monkeypatch):
    """The pristine sandbox for one test (restored only if an earlier test deleted something)."""
    if sandbox.dirty:
        sandbox.restore()
    receiver.requests.clear()
    monkeypatch.setenv("BACKUPKIT_CONFIG", str(sandbox.config_path))
    return sandbox


# -- running the DAG ------------------------------------------------------------------------
def run_dag(run_conf: dict | None = None) -> dict:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(airflow_env.DAGS))  # parsed now, with this test's environment
    assert DAG_ID not in {Path(f).stem for f in bag.import_errors}, bag.import_errors
    dr = bag.dags[DAG_ID].test(run_conf=run_conf)
    return {"dr": dr, "states": task_states(dr)}


def xcoms(dr, task_id: str, key: str = "return_value") -> dict[int, object]:
    """map_index -> value (-1 for an unmapped task)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id,
                                                  key=key, map_indexes=None)).all()
        return {row.map_index: XComModel.deserialize_value(row) for row in rows}


def state_of(out: dict) -> str:
    return str(getattr(out["dr"].state, "value", out["dr"].state))


def metric_values(path: Path) -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            out[(s.name, s.labels.get("source", ""))] = s.value
    return out


def expected_deletions(box: Sandbox, overrides: dict | None = None) -> dict[str, set[str]]:
    config = box.config
    out = {}
    for src in config.sources:
        r = src.retention
        assert not (r.keep_last or r.keep_hourly or r.keep_within) and r.timezone == "UTC", \
            f"{src.name}: the oracle covers only UTC keep_daily/weekly/monthly/yearly"
        policy = {k: getattr(r, k) for k in ("keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")}
        policy.update((overrides or {}).get(src.name, {}))
        ts = box.timestamps(src.name)
        out[src.name] = set(ts) - expected_keep(ts, policy)
    return out


# -- the tests ------------------------------------------------------------------------------
def test_dry_run_deletes_nothing_and_reports_what_it_would_delete(box, receiver):
    before_local, before_s3 = box.local_files(), box.s3_keys()
    expected = expected_deletions(box)
    assert all(expected.values()), expected  # the history is long enough for every policy to delete

    out = run_dag({"dry_run": True})

    assert state_of(out) == "success", out["states"]
    names = [s.name for s in box.config.sources]
    assert xcoms(out["dr"], "sources") == {-1: names}
    assert xcoms(out["dr"], "sources", "dry_run") == {-1: True}
    assert out["states"] == {"sources": "success", "report": "success", "export_metrics": "success",
                             **{f"sweep[{i}]": "success" for i in range(len(names))}}
    assert box.local_files() == before_local and box.s3_keys() == before_s3
    assert not (box.config.state_dir / "audit").exists()  # a dry run writes no audit record
    assert not (box.config.state_dir / "metrics" / "retention.prom").exists()
    assert box.s3.list_objects_v2(Bucket=box.bucket, Prefix="audit/").get("Contents", []) == []
    assert receiver.requests == []  # no metrics pushed, no alert

    sweeps = xcoms(out["dr"], "sweep")
    summary = xcoms(out["dr"], "report")[-1]
    assert summary["ok"] is True and summary["dry_run"] is True
    for i, name in enumerate(names):
        rep = sweeps[i]
        want = expected[name]
        assert rep["source"] == name and rep["dry_run"] is True
        assert rep["counts"]["would_delete"] == len(want), name
        assert rep["counts"]["deleted"] == 0 and rep["bytes_freed"] == 0
        assert rep["counts"]["total"] == len(box.timestamps(name))
        assert rep["bytes_to_free"] == 2 * sum(box.file_bytes(name, n) for n in want)  # local + identical S3
        assert summary["sources"][name]["counts"]["would_delete"] == len(want)
        assert summary["sources"][name]["by_rule"] == rep["by_rule"]
    for name in names:
        assert any(line.startswith(name) for line in summary["table"].splitlines()), summary["table"]
    assert "DRY RUN" in summary["table"]


def test_applied_run_deletes_exactly_the_plan_and_audits_it(box, receiver):
    before_local, before_s3 = box.local_files(), box.s3_keys()
    expected = expected_deletions(box)
    box.dirty = True

    out = run_dag({"dry_run": False})

    assert state_of(out) == "success", out["states"]
    config = box.config
    after_local, after_s3 = box.local_files(), box.s3_keys()
    sweeps = xcoms(out["dr"], "sweep")
    audit = [r for r in AuditLog(config.state_dir).records() if r["run_id"] == out["dr"].run_id]
    values = metric_values(config.state_dir / "metrics" / "retention.prom")
    for i, src in enumerate(config.sources):
        gone = expected[src.name]
        files = {n + suffix for n in gone for suffix in ("", *COMPANIONS)}
        assert before_local[src.name] - after_local[src.name] == files & before_local[src.name], src.name
        assert after_local[src.name] <= before_local[src.name]
        keys = {s3_key_for(src, f) for f in files}
        assert before_s3[src.name] - after_s3[src.name] == keys & before_s3[src.name], src.name
        assert after_s3[src.name] <= before_s3[src.name]
        rep = sweeps[i]
        assert rep["dry_run"] is False and rep["counts"]["deleted"] == len(gone)
        pristine = box.snapshot["backups"] / src.local_dir.name
        freed = 2 * sum((pristine / f).stat().st_size for f in files & before_local[src.name])  # local + S3
        assert rep["bytes_freed"] == freed, src.name
        # Audit: an intent before and a deleted record after, for each deleted backup, with its checksum.
        mine = [r for r in audit if r["source"] == src.name]
        assert {r["artifact"] for r in mine if r["action"] == "deleted"} == gone
        assert {r["artifact"] for r in mine if r["action"] == "intent"} == gone
        for r in mine:
            if r["action"] == "deleted":
                assert len(r["sha256"]) == 64 and r["size"] > 0 and r["reasons"], r
        run_record = [r for r in mine if r["action"] == "run"]
        assert len(run_record) == 1 and run_record[0]["detail"] == "ok"
        # Who started it, on every record (dag.test() has no user: the run type is named instead).
        who = {r.get("triggered_by") for r in mine}
        user = out["dr"].triggering_user_name
        assert who == {user} if user else (len(who) == 1 and next(iter(who)).startswith("unknown (")), who
        # ... mirrored to the bucket, line for line.
        mirror = rep["audit_mirror"]
        assert mirror.startswith(f"s3://{box.bucket}/audit/retention/") and mirror.endswith(f"/{src.name}.jsonl")
        body = box.s3.get_object(Bucket=box.bucket, Key=mirror.split("/", 3)[3])["Body"].read().decode()
        assert [json.loads(line) for line in body.splitlines()] == mine
        # Metrics: what happened, per source.
        assert values[("backup_retention_deleted_backups", src.name)] == len(gone)
        assert values[("backup_retention_freed_bytes", src.name)] == rep["bytes_freed"]
        assert values[("backup_retention_held_backups", src.name)] == 0
        assert values[("backup_retention_refused", src.name)] == 0
        assert values[("backup_retention_last_run_timestamp_seconds", src.name)] > 0
    [push] = [r for r in receiver.requests if r.path.startswith("/metrics/")]
    assert push.method == "PUT" and push.path == "/metrics/job/backup_retention_cleanup"
    assert push.body.decode() == (config.state_dir / "metrics" / "retention.prom").read_text()
    assert [r for r in receiver.requests if r.path.startswith("/hooks/")] == []  # no alert

    # Verification records of deleted backups are gone; the kept ones stay.
    with VerificationState(config.state_dir) as state:
        recorded = set(state.records())
    for src in config.sources:
        assert not {f"{src.name}/{n}" for n in expected[src.name]} & recorded
        assert {f"{src.name}/{n}" for n in box.timestamps(src.name)} <= recorded

    # A second applied run finds nothing more to delete (the sweep is idempotent).
    again = run_dag({"dry_run": False})
    assert state_of(again) == "success", again["states"]
    assert all(r["counts"]["deleted"] == 0 for r in xcoms(again["dr"], "sweep").values())
    assert box.local_files() == after_local and box.s3_keys() == after_s3


def test_guard_rail_refusal_fails_the_run_and_deletes_nothing(box, receiver, monkeypatch, tmp_path):
    greedy = write_config(tmp_path / "greedy.yaml", {"trixtech-db": GREEDY})
    monkeypatch.setenv("BACKUPKIT_CONFIG", str(greedy))
    ts = box.timestamps("trixtech-db")
    would = expected_deletions(box, {"trixtech-db": GREEDY})["trixtech-db"]
    assert len(would) > GREEDY["max_delete_fraction"] * len(ts)  # the precondition of a refusal
    before_local, before_s3 = box.local_files(), box.s3_keys()

    out = run_dag({"dry_run": False, "sources": ["trixtech-db"]})

    assert state_of(out) == "failed", out["states"]
    assert out["states"] == {"sources": "success", "sweep[0]": "failed", "report": "failed",
                             "export_metrics": "success"}
    assert box.local_files() == before_local and box.s3_keys() == before_s3
    pushed = xcoms(out["dr"], "sweep", "report")[0]
    assert pushed["refused"] is True and pushed["counts"]["deleted"] == 0
    assert pushed["counts"]["would_delete"] == len(would)
    assert any("max_delete_fraction" in v or "%" in v for v in pushed["violations"]), pushed["violations"]
    summary = xcoms(out["dr"], "report", "report")[-1]
    assert summary["ok"] is False and summary["sources"]["trixtech-db"]["status"] == "REFUSED"
    assert "REFUSED" in summary["table"]
    # The refusal is audited (locally and in the bucket) and alerted, naming the source and rule.
    records = [r for r in AuditLog(box.config.state_dir).records() if r["run_id"] == out["dr"].run_id]
    assert [r["action"] for r in records] == ["refused", "run"]
    assert records[0]["reasons"] == pushed["violations"]
    alerts = [json.loads(r.body)["text"] for r in receiver.requests if r.path.startswith("/hooks/")]
    assert any("sweep" in a and "trixtech-db" in a and "refused" in a for a in alerts), alerts
    values = metric_values(box.config.state_dir / "metrics" / "retention.prom")
    assert values[("backup_retention_refused", "trixtech-db")] == 1
    assert values[("backup_retention_deleted_backups", "trixtech-db")] == 0


def test_unknown_source_fails_the_first_task_and_sweeps_nothing(box, capfd):
    before_local, before_s3 = box.local_files(), box.s3_keys()

    out = run_dag({"dry_run": False, "sources": ["trixtech-db", "no-such-source"]})

    assert state_of(out) == "failed"
    assert out["states"]["sources"] == "failed"
    assert {k: v for k, v in out["states"].items() if k.startswith("sweep")} in ({}, {"sweep": "upstream_failed"})
    assert out["states"]["report"] == "failed" and out["states"]["export_metrics"] == "failed"
    assert box.local_files() == before_local and box.s3_keys() == before_s3
    logged = capfd.readouterr()
    assert "unknown source(s) in param sources: no-such-source" in logged.out + logged.err


# -- the run-level decisions, without a scheduler -----------------------------------------------
@pytest.mark.parametrize("run_type, requested, expected", [
    (DagRunType.ASSET_TRIGGERED, None, False),  # after a daily verification: apply
    (DagRunType.ASSET_TRIGGERED, True, False),  # asset-triggered runs carry only default params
    ("asset_triggered", True, False),
    (DagRunType.MANUAL, None, True),  # by hand: the param, default dry run
    (DagRunType.MANUAL, True, True),
    (DagRunType.MANUAL, False, False),
    (DagRunType.OPERATOR_TRIGGERED, None, True),
    (DagRunType.ASSET_MATERIALIZATION, False, False),
    (DagRunType.SCHEDULED, True, True),
])
def test_dry_run_decision_by_run_type(run_type, requested, expected):
    assert resolve_dry_run(run_type, requested) is expected


def test_dry_run_decision_refuses_to_guess():
    with pytest.raises(AirflowFailException, match="dry_run"):
        resolve_dry_run(DagRunType.MANUAL, "false")


def test_source_selection(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_ROOT", str(tmp_path))
    config = load_config(CONFIG_FILE)
    names = [s.name for s in config.sources]
    assert select_sources(config, None) == names == select_sources(config, [])
    assert select_sources(config, list(reversed(names[:2]))) == names[:2]  # configuration order
    with pytest.raises(AirflowFailException) as err:
        select_sources(config, ["nope", names[0]])
    assert "nope" in str(err.value) and all(n in str(err.value) for n in names)


def test_dag_shape_and_params():
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(airflow_env.DAGS)).dags[DAG_ID]
    assert dag.max_active_runs == 1 and not dag.catchup
    assert [a.uri for a in dag.timetable.asset_condition.objects] == [DAILY_VERIFIED.uri]
    assert dag.params["dry_run"] is True and dag.params["sources"] == []
    assert {t.task_id for t in dag.tasks if not t.downstream_task_ids} == {"report", "export_metrics"}
    for leaf in ("report", "export_metrics"):
        assert dag.task_dict[leaf].trigger_rule == "all_done"
        assert dag.task_dict[leaf].upstream_task_ids == {"sources", "sweep"}
    assert dag.task_dict["sweep"].is_mapped


def test_report_and_metrics_of_mixed_outcomes():
    ok = {"source": "a", "dry_run": False, "refused": False, "errors": [], "violations": [],
          "counts": {"total": 10, "kept": 7, "held": 1, "deleted": 2, "would_delete": 0}, "bytes_freed": 2048,
          "bytes_to_free": 2048, "by_rule": {"daily": 5, "weekly": 3}}
    refused = {**ok, "source": "b", "refused": True, "violations": ["would delete 9 of 10 (90%) > 50%"],
               "counts": {**ok["counts"], "deleted": 0, "would_delete": 9}, "bytes_freed": 0}
    summary = summarize_sweeps(["a", "b", "c"], [ok, refused, None], dry_run=False)
    assert summary["ok"] is False
    assert {n: s["status"] for n, s in summary["sources"].items()} == {"a": "ok", "b": "REFUSED", "c": "NO REPORT"}
    assert [p["artifact"] for p in summary["problems"]] == ["b", "c"]
    assert "2.0 KiB" in summary["table"] and "daily=5, weekly=3" in summary["table"]
    # A later run of only "a" keeps b's and c's last values (a PUT replaces the whole group).
    values = merge_metric_values({}, ["a", "b", "c"], [ok, refused, None], now=100.0, configured=["a", "b", "c"])
    assert "c" not in values and values["b"]["refused"] == 1
    values = merge_metric_values(values, ["a"], [{**ok, "counts": {**ok["counts"], "deleted": 0}}], now=200.0,
                                 configured=["a", "b"])
    assert values == {"a": {"last_run": 200.0, "deleted": 0, "freed": 2048, "held": 1, "refused": 0},
                      "b": {"last_run": 100.0, "deleted": 0, "freed": 0, "held": 1, "refused": 1}}
    text = retention_metrics(values).text()
    assert 'backup_retention_refused{source="b"} 1.0' in text
    assert 'backup_retention_last_run_timestamp_seconds{source="a"} 200.0' in text


def test_operator_refuses_an_unclear_dry_run_before_touching_anything():
    op = RetentionSweepOperator(task_id="sweep", source_name="trixtech-db", dry_run="None")
    with pytest.raises(AirflowFailException, match="dry_run must be true or false"):
        op.execute({"ti": None, "run_id": "r"})
    assert RetentionSweepOperator(task_id="s", source_name="x").dry_run is True  # deleting is opt-in
    assert issubclass(RetentionFailed, AirflowFailException)


def test_dry_run_without_a_state_store_creates_none(tmp_path, monkeypatch):
    """A dry run on a host where the daily verification never ran reads a scratch store (every
    backup unverified, so nothing would be deleted) and leaves the state directory as it was."""
    from backup_airflow.retention_operators import _verification_state

    monkeypatch.setenv("BACKUP_STATE_DIR", str(tmp_path / "state"))
    config = load_config(CONFIG_FILE)
    with _verification_state(config, dry_run=True) as state:
        assert state.records() == {}
    assert not (tmp_path / "state").exists()
    with _verification_state(config, dry_run=False) as state:  # an applied sweep uses (and creates) it
        state.record("x/y", None, 1, True, clock.now())
    with _verification_state(config, dry_run=True) as state:  # ... and a later dry run reads it
        assert set(state.records()) == {"x/y"}
