"""The DR drill's core (backupkit.jobs.drill): RTO/RPO arithmetic and verdicts, backup selection, the
configuration block, and each scenario against real parts -- a history made by the real pg_dump,
its copies in a loopback S3 with object lock (moto server), restores into real scratch PostgreSQL.

moto, checked here rather than assumed: it refuses ``DeleteObject`` of a version under GOVERNANCE
or COMPLIANCE retention (``AccessDenied``), keeps a locked version readable and unchanged under an
overwrite, and applies a bucket's default retention to new objects. It does not check IAM, so
``BypassGovernanceRetention`` always works there (the drill's cleanup relies on it only where
allowed), and its ``GetObjectRetention`` answers 500, which is why the drill reads the lock from
``HeadObject``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _clock import SESSION_NOW
from _daily_helpers import RecordingServer
from _drill_helpers import damage_newest_in_s3, drill_config_yaml, encrypt_all, history_now, short_dir
from backupkit import clock
from backupkit.jobs import drill, drill_lock
from backupkit.config import DEFAULT_CONFIG, ConfigError, load_config
from backupkit.metrics import LastSuccessStore
from backupkit.jobs.audit import dr_drill_control
from backupkit.results import record_dr_drill
from backupkit.reports.drill import drill_doc
from backupkit.restore import fetch
from backupkit.restore.health import smoke_check
from backupkit.restore.scratch import LocalScratch
from backupkit.restore.verify_rows import read_manifest
from backupkit.model import Backup, CheckResult
from backupkit.storage.objectstore import Bucket
from sandbox.bookingdb import create_booking_db
from sandbox.history import generate_history
from sandbox.s3server import create_production_bucket, reset

DATABASE = "trixtech_drill"
DAYS = 3
UTC = timezone.utc
T = datetime(2026, 11, 15, 9, 0, tzinfo=UTC)


def plan_for(config, **kw) -> dict:
    return drill.plan_drill(config, now=clock.now(), **kw)


# -- pure: targets, plan, RTO/RPO, verdicts ---------------------------------------------------------
def load_config_defaults():
    """The repository's configuration (it has no drill block: every drill default)."""
    return load_config(DEFAULT_CONFIG)


def test_targets_come_from_the_configuration_and_overrides_replace_them():
    defaults = load_config_defaults().drill
    base = drill.Targets.from_config(defaults)
    assert (base.rto_seconds, base.rpo_seconds) == (240 * 60, 25 * 3600)
    t = drill.Targets.from_config(defaults, rto_minutes=15, rpo_hours=1.5)
    assert (t.rto_seconds, t.rpo_seconds) == (900, 5400)
    for bad in (0, -1, True):
        with pytest.raises(drill.DrillError, match="must be a number > 0"):
            drill.Targets.from_config(defaults, rto_minutes=bad)


def test_scenarios_are_validated_and_kept_in_drill_order():
    assert drill.select_scenarios(None) == list(drill.SCENARIOS) == drill.select_scenarios([])
    assert drill.select_scenarios(["ransomware", "database_corruption", "ransomware"]) == [
        "database_corruption", "ransomware"]
    with pytest.raises(drill.DrillError, match="unknown scenario.*'meteor'"):
        drill.select_scenarios(["meteor"])


def test_the_plan_refuses_a_compromise_in_the_future_and_prefers_the_form_over_the_configuration():
    config = load_config_defaults()
    config = dataclasses.replace(config, drill=dataclasses.replace(config.drill, compromise_time=T))
    plan = drill.plan_drill(config, now=T + timedelta(days=1))
    assert plan["compromise_time"] == T.isoformat() and plan["complete"] is True
    assert plan["targets_overridden"] == {}
    plan = drill.plan_drill(config, now=T + timedelta(days=1), compromise_time="2026-11-14T12:00:00",
                            scenarios=["ransomware"], rpo_target_hours=2)
    assert plan["compromise_time"] == "2026-11-14T12:00:00+00:00"  # naive = UTC
    assert plan["complete"] is False and plan["scenarios"] == ["ransomware"]
    assert plan["rpo_target_seconds"] == 7200 and plan["targets_overridden"] == {"rpo_target_hours": 2}
    with pytest.raises(drill.DrillError, match="in the future"):
        drill.plan_drill(config, now=T, compromise_time=(T + timedelta(minutes=1)).isoformat())
    with pytest.raises(drill.DrillError, match="not a date-time"):
        drill.plan_drill(config, now=T, compromise_time="last tuesday")


def test_rpo_is_the_disaster_time_minus_the_oldest_restored_backup():
    nights = {"db": T - timedelta(hours=7), "files": T - timedelta(hours=31)}
    assert drill.rpo_seconds(T, nights) == 31 * 3600
    assert drill.rpo_seconds(T, {"db": T - timedelta(hours=7)}) == 7 * 3600
    assert drill.rpo_seconds(T, {"db": T - timedelta(hours=7), "files": None}) is None  # a source not restored
    assert drill.rpo_seconds(T, {}) is None
    assert drill.rpo_seconds(T, {"db": T + timedelta(minutes=5)}) == 0.0  # a clock ahead is not negative data loss


@pytest.mark.parametrize("rto, rpo, ok, reason", [
    (600.0, 3600.0, True, None),
    (1800.0, 7200.0, True, None),  # exactly at the targets passes
    (1800.5, 3600.0, False, "RTO 30.0 min exceeds the target 30.0 min"),
    (60.0, 7200.5, False, "RPO 2.0 h exceeds the target 2.0 h"),
    (None, 3600.0, False, "RTO not reached"),
    (60.0, None, False, "RPO unknown"),
])
def test_a_scenario_passes_only_when_both_targets_are_met(rto, rpo, ok, reason):
    v = drill.judge("database_corruption", rto=rto, rpo=rpo, targets=drill.Targets(1800, 7200))
    assert v["ok"] is ok and v["status"] == ("pass" if ok else "fail")
    assert v["rto_met"] is (rto is not None and rto <= 1800) and v["rpo_met"] is (rpo is not None and rpo <= 7200)
    assert (v["reasons"] == []) if ok else any(reason in r for r in v["reasons"]), v["reasons"]


def test_a_problem_fails_a_scenario_that_met_its_targets():
    v = drill.judge("ransomware", rto=1, rpo=1, targets=drill.Targets(10, 10),
                    problems=[CheckResult("s3://b/k", "delete refused", False, "DeleteObject SUCCEEDED")])
    assert not v["ok"] and v["reasons"] == ["s3://b/k: delete refused: DeleteObject SUCCEEDED"]


def test_attempts_go_newest_first_strictly_before_the_compromise_and_are_bounded():
    cands = [Backup("db", f"n{i}", T - timedelta(days=i)) for i in range(6)]
    assert [c.name for c in drill.attempt_order(cands)] == ["n0", "n1", "n2"]
    assert [c.name for c in drill.attempt_order(cands, before=T - timedelta(days=1))] == ["n2", "n3", "n4"]
    assert [c.name for c in drill.attempt_order(cands, before=T - timedelta(days=1, seconds=-1))] == ["n1", "n2",
                                                                                                     "n3"]
    assert drill.attempt_order(cands, before=T - timedelta(days=9)) == []


# -- configuration ---------------------------------------------------------------------------------
def _config_with(tmp_path, block: str):
    path = tmp_path / "c.yaml"
    path.write_text("bucket: {name: trixtech-backups}\nfile_sets:\n  - {name: f, local_dir: /x, s3_prefix: f/, "
                    "pattern: 'f_%Y%m%d.tar.gz'}\n" + block)
    return load_config(path)


def test_the_drill_block_is_parsed_and_validated(tmp_path):
    d = _config_with(tmp_path, "drill: {date: '03-31', rto_target_minutes: 90, rpo_target_hours: 12.5,\n"
                               "  compromise_time: '2026-03-01T12:00:00Z', smoke_check_url: 'https://app/health'}")
    assert d.drill.cron == "0 9 31 3 *" and d.drill.month_day == (3, 31)
    assert (d.drill.rto_target_minutes, d.drill.rpo_target_hours) == (90.0, 12.5)
    assert d.drill.compromise_time == datetime(2026, 3, 1, 12, tzinfo=UTC)
    unquoted = _config_with(tmp_path, "drill: {compromise_time: 2026-03-01 12:00:00}")  # YAML's own timestamp
    assert unquoted.drill.compromise_time == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert _config_with(tmp_path, "").drill.cron == "0 9 15 11 *"
    for block, key in (("drill: {date: '02-29'}", "drill.date"), ("drill: {date: '13-01'}", "drill.date"),
                       ("drill: {date: '4-1'}", "drill.date"), ("drill: {date: '04-31'}", "drill.date"),
                       ("drill: {rpo_target_hours: 0}", "drill.rpo_target_hours"),
                       ("drill: {compromise_time: 'soon'}", "drill.compromise_time"),
                       ("drill: {smoke_check_url: 'app:8080'}", "drill.smoke_check_url"),
                       ("drill: {rto_minutes: 5}", "drill.rto_minutes")):
        with pytest.raises(ConfigError) as exc:
            _config_with(tmp_path, block)
        assert exc.value.key == key, block


# -- recording, metrics and the report -------------------------------------------------------------
def _results(ok_ransomware: bool = True) -> list[dict]:
    out = []
    for i, name in enumerate(drill.SCENARIOS):
        rpo = 3600.0 * (i + 1) if ok_ransomware or name != "ransomware" else 90000.0
        v = drill.judge(name, rto=100.0 + i, rpo=rpo, targets=drill.Targets(1800, 86400))
        out.append({**v, "title": drill.TITLES[name], "proves": drill.PROVES[name], "restores": [],
                    "evidence": [], "notes": []})
    return out


def test_the_quarterly_audit_reads_what_the_drill_records(tmp_path):
    config = dataclasses.replace(load_config_defaults(), state_dir=tmp_path)
    record_dr_drill(tmp_path, ok=True, scenarios=drill.audit_scenarios(_results()), run_id="r1", now=T)
    control = dr_drill_control(config, now=T + timedelta(days=30))
    assert control.status == "pass", control.summary
    assert [row[0] for row in control.rows] == list(drill.SCENARIOS)
    results = _results(ok_ransomware=False)
    summary = drill.summarize(results)
    assert not summary["ok"] and summary["failed"] == ["ransomware"]
    record_dr_drill(tmp_path, ok=summary["ok"], scenarios=drill.audit_scenarios(results), run_id="r2",
                    now=T + timedelta(days=1))
    control = dr_drill_control(config, now=T + timedelta(days=30))
    assert control.status == "fail" and "scenario ransomware: RPO 90000 s > target 86400 s" in control.evidence


def samples(m) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(m.text()) for s in fam.samples}


def test_the_last_success_survives_failed_and_partial_drills(tmp_path):
    store = LastSuccessStore(tmp_path / "last.json")
    good = samples(drill.drill_metrics(_results(), now=1000.0, store=store, complete=True))
    assert good[("backup_dr_drill_last_success_timestamp_seconds", ())] == 1000.0  # no labels
    assert good[("backup_dr_drill_rto_seconds", (("scenario", "ransomware"),))] == 102.0
    assert good[("backup_dr_drill_rpo_seconds", (("scenario", "failed_deployment"),))] == 4 * 3600.0
    assert good[("backup_dr_drill_status", (("scenario", "datacenter_loss"),))] == 1.0
    assert good[("backup_dr_drill_rpo_target_seconds", (("scenario", "datacenter_loss"),))] == 86400.0
    bad = samples(drill.drill_metrics(_results(ok_ransomware=False), now=2000.0, store=store, complete=True))
    assert bad[("backup_dr_drill_last_success_timestamp_seconds", ())] == 1000.0
    assert bad[("backup_dr_drill_status", (("scenario", "ransomware"),))] == 0.0
    assert bad[("backup_dr_drill_last_run_timestamp_seconds", ())] == 2000.0
    partial = samples(drill.drill_metrics(_results()[:1], now=3000.0, store=store, complete=False))
    assert partial[("backup_dr_drill_last_success_timestamp_seconds", ())] == 1000.0
    fresh = samples(drill.drill_metrics(_results(ok_ransomware=False), now=1.0,
                                        store=LastSuccessStore(tmp_path / "never.json"), complete=True))
    assert not any(k[0] == "backup_dr_drill_last_success_timestamp_seconds" for k in fresh)  # absent, not 0


def test_the_report_shows_rto_and_rpo_of_every_scenario_and_the_checklists():
    results = _results(ok_ransomware=False)
    doc = drill_doc(results, {"scenarios": list(drill.SCENARIOS), "complete": True, "started_at": T.isoformat()},
                    summary=drill.summarize(results), report_date=T.date(), location="s3://b/r.md")
    md = doc.markdown()
    assert "Verdict: FAILED: ransomware." in md
    assert "| Database corruption | PASS | 100 s | 30.0 min | 60.0 min | 24.0 h | - |" in md
    assert "| Ransomware attack | FAIL | 102 s | 30.0 min | 25.0 h | 24.0 h | - |" in md
    assert "- [ ] Assess the results against RTO/RPO (table above; a FAIL names the reason)" in md
    assert "- RPO 25.0 h exceeds the target 24.0 h" in md
    assert set(doc.files()) == {"report.md", "report.html", "rto.svg", "rpo.svg"}


def test_a_missing_scenario_result_is_a_failure_naming_the_task():
    r = drill.missing_result("ransomware", {"rto_target_seconds": 60, "rpo_target_seconds": 60}, "task crashed")
    assert not r["ok"] and r["rto_seconds"] is None and "ransomware: scenario: task crashed" in r["reasons"]


# -- real parts: S3 objects, checksums, the smoke check ------------------------------------------------
def test_a_multipart_copy_is_checked_against_s3s_composite_checksum(moto_server, tmp_path):
    from boto3.s3.transfer import TransferConfig

    s3, bucket = moto_server.client(), "drill-composite-test"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    data = os.urandom(11 * 1024 * 1024 + 17)
    src = tmp_path / "big.dump"
    src.write_bytes(data)
    s3.upload_file(str(src), bucket, "db/big.dump", ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                   Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20))
    store, dest = Bucket(s3, bucket), tmp_path / "dl" / "big.dump"
    digest, size, version_id = fetch.download_object(store, "db/big.dump", None, dest)
    assert size == len(data) and version_id
    check = fetch.stored_checksum_check(store, "db/big.dump", version_id, dest, digest, "db/big.dump")
    assert check.ok and "composite SHA-256 of 3 parts matches" in check.detail, check
    dest.write_bytes(data[:100] + b"X" + data[101:])  # the download got damaged on the way
    check = fetch.stored_checksum_check(store, "db/big.dump", version_id, dest, digest, "db/big.dump")
    assert not check.ok and "differs from S3's stored" in check.detail


def test_versions_original_and_current(moto_server, tmp_path):
    s3, bucket = moto_server.client(), "drill-versions-test"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket=bucket, Key="a/x", Body=b"one")["VersionId"]
    s3.put_object(Bucket=bucket, Key="a/x.sha256", Body=b"sidecar")  # a longer key with the same prefix
    time.sleep(1.05)  # S3 times have whole seconds
    s3.put_object(Bucket=bucket, Key="a/x", Body=b"two")
    store = Bucket(s3, bucket)
    versions = sorted((v for v in store.versions("a/x") if v.key == "a/x"), key=lambda v: v.last_modified)
    assert [v.version_id for v in versions][0] == first and len(versions) == 2
    vid, note, written = fetch.pick_version(store, "a/x", "original")
    assert vid == first and "1 later version(s) ignored" in note  # a/x.sha256 is not a version of a/x
    assert written == versions[0].last_modified
    fetch.download_object(store, "a/x", vid, tmp_path / "x")
    assert (tmp_path / "x").read_bytes() == b"one"
    assert fetch.pick_version(store, "a/x", "current") == (None, "current version", None)


def test_the_smoke_check_passes_on_2xx_fails_otherwise_and_is_skipped_without_a_url():
    server = RecordingServer(status=204)
    try:
        ok = smoke_check(f"{server.url}/health", timeout=2)
        assert ok.ok and ok.detail == f"GET {server.url}/health answered 2xx"
        assert [(r.method, r.path) for r in server.requests] == [("GET", "/health")]
        server.status = 503
        t0 = time.monotonic()
        bad = smoke_check(f"{server.url}/health", timeout=1)
        assert not bad.ok and "HTTP 503" in bad.detail and time.monotonic() - t0 < 10
    finally:
        server.close()
    skipped = smoke_check(None, timeout=1)
    assert skipped.ok and skipped.detail == "skipped: no smoke check configured"


# -- the scenarios on a real sandbox -----------------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox(pg, moto_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("drill")
    scratch = short_dir()
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("BACKUP_ROOT", str(root / "backups"))
        mp.setenv("BACKUP_STATE_DIR", str(root / "state"))
        mp.setenv("BACKUP_SCRATCH_DIR", str(scratch))
        mp.delenv("BACKUP_SMOKE_URL", raising=False)
        cfg = root / "backups.yaml"
        cfg.write_text(drill_config_yaml(database=DATABASE))
        config = load_config(cfg)
        reset(moto_server.endpoint_url)
        s3 = moto_server.client()
        create_production_bucket(s3, config.bucket, object_lock_days=7)
        create_booking_db(pg, DATABASE, scale=300)
        history = generate_history(config, pg, now=history_now(), days=DAYS, s3_client=s3, database=DATABASE)
        yield SimpleNamespace(config=config, cfg=cfg, s3=s3, history=history, root=root, scratch=scratch, mp=mp)
    finally:
        mp.undo()
        pg.psql(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)', check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def run(sb, name: str, config=None, **plan_kw) -> dict:
    config = config or sb.config
    plan = plan_for(config, **plan_kw)
    return drill.run_scenario(name, config, plan=plan, bucket=Bucket(sb.s3, config.bucket),
                              scratch_factory=lambda: LocalScratch(base_dir=sb.scratch), work_dir=sb.scratch)


def restores_by_source(result) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in result["restores"]:
        out.setdefault(r["source"], []).append(r)
    return out


def expected_rpo(result, backup_time: datetime) -> float:
    return (datetime.fromisoformat(result["disaster_time"]) - backup_time).total_seconds()


def test_database_corruption_restores_the_newest_backups_from_disk_and_matches_their_manifests(sandbox):
    result = run(sandbox, "database_corruption")
    assert result["ok"], result["reasons"]
    by = restores_by_source(result)
    assert set(by) == {"trixtech-db", "trixtech-db-sql"}
    for source, [r] in by.items():
        newest = sandbox.history.newest(source)
        assert r["location"] == str(newest) and r["attempt"] == 1 and r["ok"]
        assert r["verified_rows"] == sum(read_manifest(newest).tables.values()) > 0
        assert {"sidecar", "restore", "manifest", "rows public.bookings", "key table public.users"} <= \
            {c["check"] for c in r["checks"]}
    assert result["rpo_seconds"] == pytest.approx(expected_rpo(result, sandbox.history.nights[-1]), abs=0.01)
    assert 0 < result["rto_seconds"] < result["rto_target_seconds"]
    assert result["rto_seconds"] >= sum(r["restore_seconds"] for r in result["restores"])
    assert not list(sandbox.scratch.glob("backupkit-scratch-*"))  # the scratch server is gone


def test_each_backup_is_leased_from_retention_while_the_drill_restores_it(sandbox, monkeypatch):
    from backupkit.storage.locks import Leases

    leases, seen = Leases(sandbox.config.state_dir), []
    real = drill.restore_backup

    def restoring(job, *args, **kwargs):
        seen.append((job.source.name, job.backup.name, leases.held(job.source.name)))
        return real(job, *args, **kwargs)

    monkeypatch.setattr(drill, "restore_backup", restoring)
    result = run(sandbox, "database_corruption")
    assert result["ok"], result["reasons"]
    assert {source for source, _, _ in seen} == {"trixtech-db", "trixtech-db-sql"}
    for source, backup, held in seen:   # what the retention plan reads: the backup under restore is held
        assert list(held) == [backup] and "in use by disaster-recovery drill" in held[backup], held
    assert leases.active() == []        # released when the drill is done


def test_datacenter_loss_recovers_from_s3_alone(sandbox, tmp_path):
    """BACKUP_ROOT points at an empty directory: every source still recovers, from the bucket."""
    empty = tmp_path / "lost-site"
    empty.mkdir()
    sandbox.mp.setenv("BACKUP_ROOT", str(empty))
    try:
        config = load_config(sandbox.cfg)
    finally:
        sandbox.mp.setenv("BACKUP_ROOT", str(sandbox.root / "backups"))
    assert all(str(s.local_dir).startswith(str(empty)) for s in config.sources)
    result = run(sandbox, "datacenter_loss", config=config)
    assert result["ok"], result["reasons"]
    by = restores_by_source(result)
    assert set(by) == {"trixtech-db", "trixtech-db-sql", "trixtech-files"}
    for source, [r] in by.items():
        src = config.source(source)
        assert r["location"] == f"s3://trixtech-backups/{src.s3_prefix}{sandbox.history.newest(source).name}"
        assert r["version_id"] and r["version"] == "current version"
        checks = {c["check"]: c for c in r["checks"]}
        assert checks["sidecar"]["ok"] and checks["s3_checksum"]["ok"]
        assert checks["s3_checksum"]["detail"] == "SHA-256 of the download matches S3's stored checksum"
    assert by["trixtech-files"][0]["files"] > 0 and by["trixtech-db"][0]["verified_rows"] > 0
    assert result["rpo_seconds"] == pytest.approx(expected_rpo(result, sandbox.history.nights[-1]), abs=0.01)
    assert list(empty.iterdir()) == []
    assert not list(sandbox.scratch.glob("backupkit-drill-*"))  # downloads and extractions removed


def test_a_damaged_newest_copy_in_s3_fails_the_scenario_after_recovering_from_an_older_one(sandbox):
    injected = damage_newest_in_s3(sandbox.config, sandbox.history, sandbox.s3, "trixtech-db")
    try:
        result = run(sandbox, "datacenter_loss")
    finally:
        injected.undo()
    assert not result["ok"]
    assert all(r["location"].startswith("s3://") for r in result["restores"])  # the good local copy is not read
    first, second = restores_by_source(result)["trixtech-db"]
    bad = {c["check"]: c for c in first["checks"] if not c["ok"]}
    assert set(bad) == {"sidecar"}  # S3's own checksum is of the damaged bytes: only the sidecar knows
    assert "differs from the sidecar's" in bad["sidecar"]["detail"]
    assert second["ok"] and second["backup"] == sandbox.history.sources["trixtech-db"][-2].name
    # RPO is that of the older backup that did restore: a night more.
    assert result["rpo_seconds"] == pytest.approx(expected_rpo(result, sandbox.history.nights[-2]), abs=0.01)
    assert any("differs from the sidecar's" in r for r in result["reasons"])
    assert any("recovered from" in n for n in result["notes"])


def test_ransomware_restores_original_versions_and_object_lock_holds(sandbox):
    """Every backup object was overwritten after the compromise: the original versions restore, a
    locked probe refuses deletion and survives an overwrite, and the probe is cleaned up."""
    time.sleep(1.05)
    compromise = clock.now().replace(microsecond=0)
    time.sleep(1.05)
    attack = encrypt_all(sandbox.config, sandbox.s3)
    try:
        result = run(sandbox, "ransomware", compromise_time=compromise.isoformat())
    finally:
        attack.undo()
    assert result["ok"], result["reasons"]
    assert result["disaster_time"] == compromise.isoformat()
    for source, [r] in restores_by_source(result).items():
        assert r["backup"] == sandbox.history.newest(source).name
        assert "original version" in r["version"] and "1 later version(s) ignored" in r["version"]
    assert result["rpo_seconds"] == pytest.approx((compromise - sandbox.history.nights[-1]).total_seconds())
    assert not any("uploaded after it" in n for n in result["notes"])  # the originals predate the compromise
    checks = {c["check"]: c for c in result["checks"]}
    assert checks["delete refused"]["ok"] and "answered AccessDenied" in checks["delete refused"]["detail"]
    assert checks["overwrite adds a version"]["ok"] and checks["locked version unchanged"]["ok"]
    assert checks["retention set"]["ok"] and "GOVERNANCE retention until" in checks["retention set"]["detail"]
    assert checks["newest backup locked"]["ok"]
    assert any(line.startswith("OK delete refused") for line in result["evidence"])
    probes = sandbox.s3.list_object_versions(Bucket="trixtech-backups", Prefix="reports/dr-drill/lock-probes/")
    assert not probes.get("Versions") and any("BypassGovernanceRetention" in n for n in result["notes"])


def test_the_lock_proof_fails_on_a_bucket_without_object_lock(sandbox, tmp_path):
    s3, bucket = sandbox.s3, "drill-unlocked-bucket"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    config = dataclasses.replace(sandbox.config, bucket=bucket)
    body = tmp_path / "probe.dump"
    body.write_bytes(b"backup bytes")
    checks, evidence, _ = drill_lock.object_lock_proof(Bucket(s3, bucket), config, probe_body=body,
                                                       probe_key="p/probe.dump", now=clock.now())
    assert [(c.check, c.ok) for c in checks] == [("bucket object lock", False)]
    assert "has no object lock configuration" in evidence[0]


def test_the_lock_proof_sets_its_own_retention_where_the_bucket_has_no_default(sandbox, tmp_path):
    """Object lock enabled without a default retention: the probe gets GOVERNANCE for a day from
    PutObjectRetention, then refuses deletion and survives an overwrite."""
    s3, bucket = sandbox.s3, "drill-lock-no-default"
    create_production_bucket(s3, bucket)  # object lock on, no default retention
    config = dataclasses.replace(sandbox.config, bucket=bucket)
    body = tmp_path / "trixtech_20260101_020000.dump"
    shutil.copyfile(sandbox.history.newest("trixtech-db"), body)
    now = SESSION_NOW
    checks, evidence, notes = drill_lock.object_lock_proof(Bucket(s3, bucket), config, probe_body=body,
                                                           probe_key="p/probe.dump", now=now)
    by = {c.check: c for c in checks}
    assert [c.check for c in checks] == ["bucket object lock", "retention set", "delete refused",
                                         "overwrite adds a version", "locked version unchanged"]
    assert all(c.ok for c in checks), checks
    assert "no default retention" in by["bucket object lock"].detail
    until = (now + drill_lock.PROBE_RETENTION).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"GOVERNANCE retention until {until}" in by["retention set"].detail
    assert not s3.list_object_versions(Bucket=bucket, Prefix="p/").get("Versions")  # cleaned up
    assert len(evidence) == 5 and any("BypassGovernanceRetention" in n for n in notes)


def test_failed_deployment_ends_with_the_smoke_check(sandbox):
    server = RecordingServer(status=200)
    try:
        config = dataclasses.replace(sandbox.config, drill=dataclasses.replace(
            sandbox.config.drill, smoke_check_url=f"{server.url}/healthz"))
        result = run(sandbox, "failed_deployment", config=config)
    finally:
        server.close()
    assert result["ok"], result["reasons"]
    assert [r.path for r in server.requests] == ["/healthz"]
    assert {c["check"]: c["ok"] for c in result["checks"]} == {"smoke check": True}
    assert set(restores_by_source(result)) == {"trixtech-db", "trixtech-db-sql"}
    without = run(sandbox, "failed_deployment")
    assert without["ok"] and "smoke check: skipped: no smoke check configured" in without["evidence"]
