"""The audit controls one by one: coverage from a database listing and the verification state,
retention compliance from the real retention planner, bucket security over a real (loopback) S3
API, and the recoverability records of the restore tests and the DR drill."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from _reports_helpers import create_audited_bucket, tls_only_policy, utc, write_config
from backupkit.config import RetentionPolicy
from backupkit import results as result_files
from backupkit.jobs import audit, audit_security
from backupkit.reports import audit as audit_report
from backupkit.storage.objectstore import Bucket
from backupkit.jobs.audit import Control, overdue_backups, policy_gaps
from backupkit.jobs.audit_security import denies_insecure_transport
from backupkit.retention.plan import Candidate
from sandbox.history import write_archive
from backupkit.state import VerificationState

NOW = utc(2026, 12, 25, 9)  # the last Friday of 2026, 09:00 UTC

CONFIG = """
bucket: {name: audit-backups}
databases:
  - name: db
    database: app
    conn_id: app_db
    dump_format: custom
    local_dir: {root}/backups/db
    s3_prefix: db/
    pattern: app_%Y%m%d_%H%M%S.dump
    retention: {keep_daily: 30, keep_weekly: 8, min_keep: 1}
  - name: other
    conn_id: app_db
    dump_format: custom
    local_dir: {root}/backups/other
    s3_prefix: other/
    pattern: other_%Y%m%d_%H%M%S.dump
file_sets:
  - name: files
    local_dir: {root}/backups/files
    s3_prefix: files/
    pattern: files_%Y%m%d_%H%M%S.tar.gz
    paths: [opt/app/config, /opt/app/uploads/]
verification: {state_dir: {root}/state}
hold_list: [app_20261101_020000.dump]
"""


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path, CONFIG)


@pytest.fixture
def state(config):
    with VerificationState(config.state_dir) as st:
        yield st


def daily(days: int, *, end: datetime = NOW, skip: tuple[int, ...] = ()) -> list[datetime]:
    """02:00 UTC of the ``days`` nights up to ``end`` (index 0 = oldest), without ``skip``."""
    last = end.replace(hour=2, minute=0, second=0, microsecond=0)
    return [last - timedelta(days=days - 1 - i) for i in range(days) if i not in skip]


def write_backups(source, stamps, size: int = 100) -> list:
    source.local_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for ts in stamps:
        p = source.local_dir / source.pattern.name_for(ts)
        p.write_bytes(b"\0" * size)
        out.append(p)
    return out


def record_verified(state, source, path, ok=True, when=NOW):
    state.record(f"{source.name}/{path.name}", "ab" * 32, path.stat().st_size, ok, when)


# -- coverage -------------------------------------------------------------------------------------------
def test_every_listed_database_needs_a_recent_verified_backup(config, state):
    db, other = config.source("db"), config.source("other")
    paths = write_backups(db, daily(3))
    record_verified(state, db, paths[-2])  # the night before: 31 h old at 09:00
    other_paths = write_backups(other, daily(2))
    servers = {"app_db": {"databases": ["app", "crm", "main", "postgres"], "default_database": "main", "error": None}}
    c = audit.coverage_databases(config, servers, now=NOW, state=state)
    assert c.status == "fail"
    rows = {r[1]: r for r in c.rows}
    assert set(rows) == {"app", "crm", "main"}  # postgres is the maintenance database, not application data
    assert rows["app"][-1] == "ok" and rows["app"][3].startswith(f"db/{paths[-2].name}") and rows["app"][4] == "31.0 h"
    assert rows["crm"] == ["app_db", "crm", "none", "-", "-", "FAIL"]
    assert rows["main"][2:4] == ["other", "none verified"]  # "other" has no database: the connection's one
    record_verified(state, other, other_paths[-1])
    c = audit.coverage_databases(config, servers | {"app_db": {**servers["app_db"], "databases": ["app", "main"]}},
                                 now=NOW, state=state)
    assert c.status == "pass", c.summary
    # Too old, a failed read, a changed size, or an unreachable server: not covered.
    assert audit.coverage_databases(config, servers, now=NOW + timedelta(hours=20), state=state).status == "fail"
    record_verified(state, db, paths[-2], ok=False)
    assert "app_db/app: no backup of db has passed" in audit.coverage_databases(
        config, {"app_db": {"databases": ["app"], "default_database": None, "error": None}}, now=NOW,
        state=state).summary
    down = audit.coverage_databases(config, {"app_db": {"databases": [], "error": "OperationalError: refused"}},
                                    now=NOW, state=state)
    assert down.status == "fail" and "cannot list databases: OperationalError" in down.summary
    assert audit.coverage_databases(config, {}, now=NOW, state=state).status == "fail"


def test_every_configured_path_must_be_in_the_latest_archive(config):
    files = config.source("files")
    files.local_dir.mkdir(parents=True)
    when = daily(1)[0]
    older = files.local_dir / files.pattern.name_for(when - timedelta(days=1))
    write_archive(older, [("opt/app/config/app.yml", b"a", when), ("opt/app/uploads/x.pdf", b"b", when)], when)
    newest = files.local_dir / files.pattern.name_for(when)
    write_archive(newest, [("opt/app/config/app.yml", b"a", when), ("opt/app/uploads-old/x.pdf", b"b", when)], when)
    c = audit.coverage_file_paths(config, now=NOW)
    assert c.status == "fail"
    assert c.rows == [["files", newest.name, "opt/app/config", 2, "ok"],  # the directory entry and the file
                      ["files", newest.name, "/opt/app/uploads/", 0, "FAIL"]]  # a prefix of a name is not the path
    newest.write_bytes(older.read_bytes())
    assert audit.coverage_file_paths(config, now=NOW).status == "pass"
    newest.write_bytes(b"not a tar archive")
    assert "cannot read" in audit.coverage_file_paths(config, now=NOW).summary


def test_last_recovery_point_per_source(config):
    write_backups(config.source("db"), daily(2))
    write_backups(config.source("files"), daily(1, end=NOW - timedelta(days=2)))
    index, notes = audit.backup_index(config)
    c = audit.last_recovery_point(config, index, now=NOW, notes=notes)
    assert c.status == "fail"
    assert [r[-1] for r in c.rows] == ["ok", "FAIL", "FAIL"]  # db, other (nothing at all), files (55 h old)
    assert "other: no backup at all" in c.summary and "files: newest backup" in c.summary


# -- retention compliance -----------------------------------------------------------------------------
def test_gaps_in_periods_the_policy_keeps():
    policy = RetentionPolicy(keep_daily=30, keep_weekly=8)
    stamps = daily(70, skip=(55,) + tuple(range(20, 30)))  # one missing night, and ten in a row
    gaps = policy_gaps(stamps, policy, NOW)
    missing = daily(70)[55].date().isoformat()
    assert ("daily", missing) in gaps and len([g for g in gaps if g[0] == "daily"]) == 1
    # Nights 20-29 span a whole ISO week (and beyond the 30 daily days): one weekly gap.
    weekly = [g for g in gaps if g[0] == "weekly"]
    year, week, _ = daily(70)[25].isocalendar()
    assert len(weekly) == 1 and weekly[0][1] == f"{year}-W{week:02d}"
    # A young source has no gap before its first backup; today's backup is never "missing".
    assert policy_gaps(daily(5), policy, NOW) == []
    assert policy_gaps(daily(5, end=NOW - timedelta(days=1)), policy, NOW) == []
    assert policy_gaps(daily(5, end=NOW - timedelta(days=2)), policy, NOW) == [
        ("daily", (NOW - timedelta(days=1)).date().isoformat())]
    assert policy_gaps([], policy, NOW) == []


def test_overdue_means_dropped_by_the_policy_for_longer_than_the_grace_period():
    policy = RetentionPolicy(keep_daily=30, min_keep=1, max_delete_fraction=1)
    stamps = daily(45)
    cands = [Candidate(f"b{ts:%Y%m%d}", ts, "passed", 10) for ts in stamps]
    overdue, plan = overdue_backups(cands, policy, now=NOW, grace=timedelta(days=2))
    assert len(plan.planned_deletions()) == 15  # 45 nights, 30 daily kept
    # Dropped two days ago already: the 13 oldest. The two dropped since are not findings yet.
    assert [c.timestamp for c in overdue] == stamps[:13]
    held, _ = overdue_backups(cands, policy, now=NOW, grace=timedelta(days=2), held={cands[0].name})
    assert cands[0] not in held and len(held) == 12
    # Unverified backups are kept while their day has no verified backup: never overdue.
    unverified = [Candidate(c.name, c.timestamp, "unverified", 10) for c in cands]
    assert overdue_backups(unverified, policy, now=NOW, grace=timedelta(days=2))[0] == []


def test_retention_controls_report_the_age_distribution_and_overdue_backups(config, state):
    db = config.source("db")
    paths = write_backups(db, daily(80))
    for p in paths:
        record_verified(state, db, p)
    index, notes = audit.backup_index(config)
    freq, past = audit.retention_controls(config, index, now=NOW, state=state, notes=notes)
    row = next(r for r in freq.rows if r[0] == "db")
    assert row[2:7] == [1, 6, 23, 50, 0]  # <= 1 day, <= 7, <= 30, <= 365, older
    assert freq.status == "fail"  # "other" and "files" have no backup at all
    assert "other: no backups at all" in freq.summary and "db:" not in freq.summary
    assert past.status == "fail"
    overdue_row = next(r for r in past.rows if r[0] == "db")
    # 30 daily + 8 weekly kept; of the rest, those dropped more than two days ago are overdue
    # (one of them, app_20261101_020000.dump, is on the hold list).
    assert overdue_row[2] == 0  # all verified
    assert overdue_row[4] > 30 and "app_20261101_020000.dump" not in " ".join(past.evidence)
    assert overdue_row[6].startswith("would delete")  # the guard rail blocks the sweep: said in the evidence
    assert "the retention sweep refuses to run" in " ".join(past.evidence)
    # Nothing past the policy once the sweep has run: keep only what the plan keeps.
    from backupkit.retention.plan import plan_retention

    kept = {d.name for d in plan_retention(
        [Candidate(n, e["timestamp"], "passed", e["size"]) for n, e in index["db"].items()], db.retention,
        held=config.hold_list, now=NOW).retained()}
    for p in paths:
        if p.name not in kept:
            p.unlink()
    index, notes = audit.backup_index(config)
    _, past = audit.retention_controls(config, index, now=NOW, state=state, notes=notes)
    assert next(r for r in past.rows if r[0] == "db")[4] == 0


# -- security -------------------------------------------------------------------------------------------
AWS_EXAMPLE = tls_only_policy("audit-backups")


@pytest.mark.parametrize("policy, ok", [
    (AWS_EXAMPLE, True),
    (AWS_EXAMPLE.replace('"Principal": "*"', '"Principal": {"AWS": "*"}'), True),
    (AWS_EXAMPLE.replace('"Bool"', '"BoolIfExists"').replace('"false"', '["false"]'), True),
    (AWS_EXAMPLE.replace('"Deny"', '"Allow"'), False),
    (AWS_EXAMPLE.replace('"false"', '"true"'), False),
    (AWS_EXAMPLE.replace('"s3:*"', '"s3:GetObject"'), False),
    (AWS_EXAMPLE.replace(', "arn:aws:s3:::audit-backups/*"', ""), False),  # the bucket, not its objects
    (AWS_EXAMPLE.replace('"Principal": "*"', '"Principal": {"AWS": "arn:aws:iam::1:root"}'), False),
    ("{not json", False),
    (None, False),
])
def test_the_tls_policy_must_deny_plain_http_to_everyone_for_every_object(policy, ok):
    assert denies_insecure_transport(policy, "audit-backups")[0] is ok


def statuses(controls) -> dict[str, str]:
    return {c.id: c.status for c in controls}


def test_security_controls_pass_on_a_bucket_set_up_like_production(s3, config):
    create_audited_bucket(s3, config.bucket)
    controls = audit_security.security_controls(config, Bucket(s3, config.bucket))
    assert statuses(controls) == {"security.recovery_points_encrypted": "pass",
                                  "security.manual_deletion_prevented": "pass",
                                  "security.public_access_blocked": "pass",
                                  "security.secure_transport_required": "pass",
                                  "security.cross_region_copy": "info"}
    assert any("object ACLs not inspected: IgnorePublicAcls is on" in e
               for e in next(c for c in controls if c.id == "security.public_access_blocked").evidence)


def test_security_controls_name_what_is_missing(s3, config):
    s3.create_bucket(Bucket=config.bucket)  # no encryption, versioning, lock, public access block or policy
    s3.put_object(Bucket=config.bucket, Key="db/app_20261224_020000.dump", Body=b"x", ACL="public-read")
    s3.put_object(Bucket=config.bucket, Key="files/files_20261224_020000.tar.gz", Body=b"x",
                  ServerSideEncryption="AES256")
    controls = {c.id: c for c in audit_security.security_controls(config, Bucket(s3, config.bucket))}
    assert {k: c.status for k, c in controls.items()} == {
        "security.recovery_points_encrypted": "fail", "security.manual_deletion_prevented": "fail",
        "security.public_access_blocked": "fail", "security.secure_transport_required": "fail",
        "security.cross_region_copy": "info"}
    enc = controls["security.recovery_points_encrypted"].summary
    assert "no default encryption" in enc and "db/app_20261224_020000.dump" in enc and "files/" not in enc
    assert "versioning is never enabled" in controls["security.manual_deletion_prevented"].summary
    assert "object lock is not enabled" in controls["security.manual_deletion_prevented"].summary
    pub = controls["security.public_access_blocked"].summary
    assert "no Block Public Access" in pub and "db/app_20261224_020000.dump (AllUsers:READ)" in pub
    assert controls["security.secure_transport_required"].summary == "no bucket policy"


def test_lock_without_default_retention_and_optional_controls(s3, tmp_path):
    config = write_config(tmp_path, CONFIG + "reports: {require_cross_region_copy: true, "
                                             "require_secure_transport: false}\n")
    from sandbox.s3server import create_production_bucket

    create_production_bucket(s3, config.bucket)  # object lock enabled, but no default retention
    controls = {c.id: c for c in audit_security.security_controls(config, Bucket(s3, config.bucket))}
    assert controls["security.manual_deletion_prevented"].summary == \
        "object lock has no default retention: new backups are not locked"
    assert controls["security.cross_region_copy"].status == "fail"
    tls = controls["security.secure_transport_required"]
    assert tls.status == "info" and "not required" in tls.summary


# -- recoverability -------------------------------------------------------------------------------------
def write_lines(path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def restore_run(days_ago: float, ok: bool = True, run_id: str | None = "auto", sources=("db", "files")) -> list[dict]:
    when = NOW - timedelta(days=days_ago)
    rid = f"scheduled__{when:%Y-%m-%d}" if run_id == "auto" else run_id
    return [{"time": when.isoformat(), "source": s, "ok": ok if s == "db" else True,
             **({"run_id": rid} if rid else {})} for s in sources]


def test_restore_tests_control(config):
    path = config.state.restore_tests
    c = audit.restore_tests_control(config, now=NOW)
    assert c.status == "fail" and c.summary.startswith("no restore test recorded")
    write_lines(path, restore_run(80) + restore_run(50) + restore_run(20))
    c = audit.restore_tests_control(config, now=NOW)
    assert c.status == "pass" and [r[-1] for r in c.rows] == ["ok", "ok", "ok"]
    write_lines(path, restore_run(110, ok=False) + restore_run(80) + restore_run(50) + restore_run(20))
    assert audit.restore_tests_control(config, now=NOW).status == "pass"  # older than the last three
    write_lines(path, restore_run(80) + restore_run(50, ok=False) + restore_run(20))
    assert "db failed" in audit.restore_tests_control(config, now=NOW).summary
    write_lines(path, restore_run(50) + restore_run(20))
    assert "only 2 restore test(s) recorded" in audit.restore_tests_control(config, now=NOW).summary
    write_lines(path, restore_run(100) + restore_run(70) + restore_run(40))
    assert "the newest restore test is 40 days old" in audit.restore_tests_control(config, now=NOW).summary
    # Without run ids a month is one test; a broken line is a finding, not a crash.
    write_lines(path, restore_run(80, run_id=None) + restore_run(50, run_id=None) + restore_run(20, run_id=None)
                + ['{"time": "yesterday", "ok": true}'])
    c = audit.restore_tests_control(config, now=NOW)
    assert c.status == "fail" and len(c.rows) == 3 and "line 7" in c.summary


def test_recorded_restore_tests_and_drills_are_what_the_controls_read(config):
    """The writers the restore-test and drill DAGs call, read back by the controls."""
    for days_ago, ok in ((70, True), (40, True), (10, True)):
        results = [{"source": "db", "ok": ok, "backup": "app_x.dump", "role": "newest", "duration_seconds": 3.2,
                    "problems": []},
                   {"source": "files", "ok": True, "role": "random-older"}]
        assert result_files.record_restore_tests(config.state_dir, results, run_id=f"run-{days_ago}",
                                          now=NOW - timedelta(days=days_ago)) == 2
    assert audit.restore_tests_control(config, now=NOW).status == "pass"
    result_files.record_restore_tests(config.state_dir, [{"source": "db", "ok": False, "problems": [
        {"check": "row_counts", "detail": "public.bookings: 10 != 12"}]}], run_id="run-1", now=NOW)
    c = audit.restore_tests_control(config, now=NOW)
    assert c.status == "fail" and "run-1: db failed: row_counts: public.bookings: 10 != 12" in c.summary
    result_files.record_dr_drill(config.state_dir, ok=True, run_id="drill", now=NOW - timedelta(days=3), scenarios=[
        {"name": "ransomware", "ok": True, "rto_seconds": 100, "rto_target_seconds": 50}])
    assert "RTO 100 s > target 50 s" in audit.dr_drill_control(config, now=NOW).summary


def test_dr_drill_control(config):
    path = config.state.dr_drills
    assert audit.dr_drill_control(config, now=NOW).summary.startswith("no DR drill recorded")
    scenario = {"name": "ransomware", "ok": True, "rto_seconds": 1200, "rto_target_seconds": 3600,
                "rpo_seconds": 3600, "rpo_target_seconds": 86400}
    old_failed = {"time": (NOW - timedelta(days=400)).isoformat(), "ok": False}
    latest = {"time": (NOW - timedelta(days=30)).isoformat(), "ok": True, "scenarios": [scenario]}
    write_lines(path, [old_failed, latest])
    c = audit.dr_drill_control(config, now=NOW)
    assert c.status == "pass" and c.rows == [["ransomware", 1200, 3600, 3600, 86400, "ok"]]
    write_lines(path, [{**latest, "scenarios": [{**scenario, "rto_seconds": 4000}]}])
    assert "scenario ransomware: RTO 4000 s > target 3600 s" in audit.dr_drill_control(config, now=NOW).summary
    write_lines(path, [{**latest, "time": (NOW - timedelta(days=500)).isoformat()}])
    assert "500 days old" in audit.dr_drill_control(config, now=NOW).summary


# -- the verdict -----------------------------------------------------------------------------------------
def test_summary_and_report():
    controls = [Control("coverage.x", "coverage", "X", "M", "pass", "fine"),
                Control("security.y", "security", "Y", "M", "fail", "bad | worse", ["evidence line"],
                        ["A", "B"], [["1", "2"]]),
                Control("security.z", "security", "Z", "M", "info", "fyi")]
    s = audit_report.audit_summary([c.to_dict() for c in controls])
    assert (s["ok"], s["failed"], s["passed"], s["info"]) == (False, ["security.y"], 1, 1)
    assert s["problems"] == [{"artifact": "security.y", "check": "audit", "ok": False, "detail": "bad | worse"}]
    md = audit_report.audit_doc(controls, report_date=NOW.date(), bucket="b", missing=["audit_retention did not finish"]
                         ).markdown()
    assert "Verdict: FAILED: 1 passed, 1 failed, 1 informational, of 3 controls" in md
    assert "| security | security.y | FAIL | bad \\| worse |" in md
    assert "- NOT EVALUATED: audit_retention did not finish" in md and "### security.y: FAIL" in md
    assert Control.from_dict(controls[1].to_dict()) == controls[1]
    with pytest.raises(ValueError):
        Control("a", "b", "c", "d", "maybe", "e")


def test_the_log_opens_with_the_verdict_and_one_line_per_control():
    """Issue 12: a tired on-call reads the verdict first, failures on top, not 1,100 lines of evidence."""
    long = "past the policy but held " * 40
    controls = [Control("coverage.x", "coverage", "X", "M", "pass", "fine", [long] * 200),
                Control("security.y", "security", "Y", "M", "fail", "bad\nworse"),
                Control("security.z", "security", "Z", "M", "info", long)]
    text = audit_report.verdict_text(controls, missing=["audit_retention did not finish"])
    lines = text.splitlines()
    assert lines[0] == "AUDIT FAILED: 1 passed, 1 failed, 1 informational, 1 not evaluated, of 4 controls"
    rows = lines[3:]
    assert rows[0].split()[:2] == ["FAIL", "security.y"] and "bad worse" in rows[0]
    assert [r.split()[0] for r in rows[:3]] == ["FAIL", "PASS", "INFO"]
    assert rows[-1].endswith("audit_retention did not finish")
    assert len(lines) == 3 + 4 and all(len(line) < 200 for line in lines)  # no evidence in the log
    assert audit_report.verdict_text(controls[:1]).startswith("AUDIT PASSED: 1 passed, 0 failed")


def test_config_defaults_and_validation(tmp_path, monkeypatch):
    from backupkit.config import ConfigError

    config = write_config(tmp_path, CONFIG)
    assert config.reports.servers(config.databases) == ("app_db",)
    assert config.reports.prices_usd_per_gb_month["STANDARD"] == 0.023
    custom = write_config(tmp_path, CONFIG + "reports: {prices_usd_per_gb_month: {STANDARD: 0.02, MY_TIER: 1}, "
                                             "database_servers: [a, b], sse_algorithm: 'aws:kms'}\n")
    assert custom.reports.prices_usd_per_gb_month["STANDARD"] == 0.02
    assert custom.reports.prices_usd_per_gb_month["MY_TIER"] == 1.0
    assert custom.reports.prices_usd_per_gb_month["GLACIER"] == 0.0036  # the rest of the table stays
    assert custom.reports.servers(custom.databases) == ("a", "b")
    monkeypatch.setenv("BACKUP_REQUIRE_TLS_POLICY", "false")
    assert write_config(tmp_path, CONFIG + "reports: {require_secure_transport: '${BACKUP_REQUIRE_TLS_POLICY:-true}'}\n"
                        ).reports.require_secure_transport is False
    for bad, key in [("{sse_algorithm: aes}", "reports.sse_algorithm"),
                     ("{require_secure_transport: maybe}", "reports.require_secure_transport"),
                     ("{anomaly_factor: 1}", "reports.anomaly_factor"),
                     ("{prices_usd_per_gb_month: {standard: 1}}", "reports.prices_usd_per_gb_month.standard"),
                     ("{prices_usd_per_gb_month: {STANDARD: -1}}", "reports.prices_usd_per_gb_month.STANDARD"),
                     ("{trend_weeks: 0}", "reports.trend_weeks"), ("{typo: 1}", "reports.typo")]:
        with pytest.raises(ConfigError) as err:
            write_config(tmp_path, CONFIG + f"reports: {bad}\n")
        assert err.value.key == key


def test_times_must_be_aware(config):
    with pytest.raises(ValueError):
        audit.coverage_file_paths(config, now=datetime(2026, 1, 1))
