"""Retention that cannot be tricked (issue 9, items 11, 13, 14): backups dated in the future,
a sweep killed between the S3 and the local deletion, a torn audit log, two sweeps of one
source at once. Real files, the loopback S3 with object lock, the real CLI."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from _retention_sweep_helpers import (
    NOW, PREFIX, SOURCE, FaultyS3, SimulatedCrash, all_files_of, audit_records, backups_left, local_files,
    make_history, s3_keys, sweep, write_config,
)
from backupkit.cli import main
from backupkit.jobs.daily import check_cloud_copies, summarize
from backupkit.retention.audit import AuditLog
from backupkit.retention.sweep import SweepBusy, SweepRefused
from backupkit.storage.locks import SourceLock
from backupkit.storage.objectstore import Bucket

REAL = [datetime(2024, 4, 8, 2, tzinfo=timezone.utc) + timedelta(days=i) for i in range(31)]  # 8 Apr .. 8 May
PLANTED = [datetime(2031, 1, 1, 2, tzinfo=timezone.utc) + timedelta(days=i) for i in range(7)]


def test_backups_dated_in_2031_refuse_the_sweep_and_displace_nothing(tmp_path, s3, bucket):
    config = write_config(tmp_path, keep_last=7, keep_daily=0, keep_weekly=0, max_delete_fraction=1.0, min_keep=1)
    real = make_history(config, s3, REAL)
    planted = make_history(config, s3, PLANTED)  # verified too: the attack the issue describes
    with pytest.raises(SweepRefused) as info:
        sweep(config, s3)
    report = info.value.report
    assert report.deleted == [] and sorted(report.future) == planted
    assert report.violations[0].startswith("7 backup(s) dated more than 1 h in the future: " + planted[0])
    assert all(name in report.violations[0] for name in planted)
    assert backups_left(config, s3) == (set(real + planted), set(real + planted))
    plan = report.plan
    for name in planted:  # flagged, counted by no rule, deleted by nothing
        d = plan.decision(name)
        assert d.action == "keep" and d.rules == ("future",) and "counted by no rule" in d.reasons[0]
    # The rules counted only the real nights: keep_last 7 keeps the 7 newest real ones.
    assert [d.name for d in plan.decisions if "last" in d.rules] == real[-7:]
    assert [r["action"] for r in audit_records(config)] == ["refused", "run"]


def test_the_cli_refuses_too(capsys, tmp_path, s3, bucket, moto_server):
    config = write_config(tmp_path, keep_last=7, keep_daily=0, keep_weekly=0, max_delete_fraction=1.0, min_keep=1)
    real = make_history(config, s3, REAL)
    planted = make_history(config, s3, PLANTED)
    code = main(["--config", str(config.path), "retention", "sweep", "--source", SOURCE, "--apply",
                 "--endpoint-url", moto_server.endpoint_url])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("refused: 7 backup(s) dated more than 1 h in the future: ")
    assert all(name in err for name in planted)
    assert backups_left(config, s3) == (set(real + planted), set(real + planted))
    code = main(["--config", str(config.path), "retention", "plan", "--source", SOURCE])
    assert code == 1 and planted[-1] in capsys.readouterr().err


def test_the_tolerance_is_configurable(tmp_path, s3, bucket):
    config = write_config(tmp_path, future_tolerance_hours=48)
    make_history(config, s3, [NOW + timedelta(hours=30)])  # within 48 h: an ordinary newest backup
    report = sweep(config, s3, dry_run=True)
    assert report.ok and report.future == []


def test_sweep_killed_between_s3_and_local_deletion_does_not_fail_the_daily_check(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    make_history(config, s3)
    kept = set(sweep(config, s3, dry_run=True).kept)
    with pytest.raises(SimulatedCrash):
        sweep(config, FaultyS3(s3, crash_after=1))  # S3 deleted, local files untouched
    local, remote = backups_left(config, s3)
    doomed = local - remote
    assert doomed and local == kept | doomed
    # The daily check recognises the deletions the audit log records as intended.
    results = check_cloud_copies(config, SOURCE, Bucket(s3, config.bucket))
    in_progress = [r for r in results if r["detail"].startswith("deletion in progress: retention run run-1")]
    assert {r["artifact"].split("/", 1)[1] for r in in_progress} == doomed
    verdict = summarize(results)
    assert verdict["ok"], verdict["table"]  # so the asset event still triggers the retention run
    # ... which finishes the deletion.
    report = sweep(config, s3, run_id="run-2")
    assert set(report.finished_pending) == doomed
    assert backups_left(config, s3) == (kept, kept)
    results = check_cloud_copies(config, SOURCE, Bucket(s3, config.bucket))
    assert not any("deletion in progress" in r["detail"] for r in results) and summarize(results)["ok"]


def test_a_real_missing_copy_still_fails_the_daily_check(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    names = make_history(config, s3)
    s3.delete_object(Bucket=bucket, Key=PREFIX + names[-1])  # nobody announced this one
    results = check_cloud_copies(config, SOURCE, Bucket(s3, config.bucket))
    assert not summarize(results)["ok"]


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    make_history(config, s3)
    log = AuditLog(config.state_dir)
    log.append([{"run_id": "run-0", "source": SOURCE, "artifact": "x", "action": "run"}])
    torn = b'{"action": "intent", "artifact": "trixtech_2024'  # the disk filled up mid-append
    with open(log.path, "ab") as f:
        f.write(torn)
    report = sweep(config, s3, run_id="run-1")
    assert report.ok and len(report.deleted) == 14
    assert report.warnings == [f"{log.path}: line 2 is a torn record (a crash or a full disk mid-append), "
                               f"skipped: {torn.decode()!r}"]
    records = list(log.records())
    assert log.torn == [(2, torn.decode())]
    deleted = [r["artifact"] for r in records if r["action"] == "deleted"]
    intents = [r["artifact"] for r in records if r["action"] == "intent"]
    assert sorted(deleted) == sorted(intents) == sorted(report.deleted)  # the first new record survived
    assert log.path.read_bytes().count(torn + b"\n{") == 1
    assert log.pending(SOURCE) == {}


def test_two_sweeps_of_one_source_never_run_at_once(capsys, tmp_path, s3, bucket, moto_server):
    config = write_config(tmp_path)
    names = make_history(config, s3)
    with SourceLock(config.state_dir, SOURCE, "sweep", owner="scheduled__2024-05-09"):
        with pytest.raises(SweepBusy) as info:
            sweep(config, s3, lock_timeout=0.3)
        assert "sweep of trixtech-db refused: run scheduled__2024-05-09" in str(info.value)
        assert info.value.report.errors[0]["code"] == "LockBusy"
        code = main(["--config", str(config.path), "retention", "sweep", "--source", SOURCE, "--apply",
                     "--wait", "0", "--endpoint-url", moto_server.endpoint_url])
        assert code == 1 and "holds" in capsys.readouterr().err
        assert sweep(config, s3, dry_run=True).ok  # a dry run deletes nothing: it needs no lock
        assert backups_left(config, s3) == (set(names), set(names))
        assert not AuditLog(config.state_dir).path.exists()
    assert len(sweep(config, s3).deleted) == 14  # released: the next one runs


def test_the_json_report_names_future_backups(capsys, tmp_path, s3, bucket, moto_server):
    config = write_config(tmp_path)
    make_history(config, s3)
    planted = make_history(config, s3, PLANTED[:1])
    code = main(["--config", str(config.path), "retention", "sweep", "--source", SOURCE, "--json",
                 "--endpoint-url", moto_server.endpoint_url])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["future"] == planted and report["counts"]["future"] == 1
    assert s3_keys(config, s3) >= all_files_of(planted) and local_files(config) >= all_files_of(planted)


# --- lock what you keep (issue 13) -----------------------------------------------------------

def lock_history(now: datetime) -> list[datetime]:
    """The last 9 nights, and the 28th of each of the 14 months before (the real clock: S3
    refuses a retain-until in the past)."""
    today = now.replace(hour=2, minute=0, second=0, microsecond=0)
    nights = [today - timedelta(days=i) for i in range(1, 10)]
    months, first = [], today.replace(day=1)
    for _ in range(14):
        first = (first - timedelta(days=1)).replace(day=1)
        months.append(first.replace(day=28))
    return sorted({t for t in nights + months if t < nights[-1] or t in nights})


def first_drop(policy, history: list[datetime], name: str, now: datetime) -> datetime:
    """When the policy first drops ``name``, backups continuing every night (the plan alone)."""
    from _retention_sweep_helpers import name_for
    from backupkit.retention import Candidate, plan_retention

    stamps = list(history)
    day = now.replace(hour=2, minute=0, second=0, microsecond=0)
    while True:
        day += timedelta(days=1)
        stamps.append(day)
        cands = [Candidate(name_for(t), t, "passed") for t in stamps]
        if plan_retention(cands, policy, now=day + timedelta(hours=6)).decision(name).action == "delete":
            return day + timedelta(hours=6)


def test_a_monthly_backup_kept_for_12_months_is_locked_until_the_policy_drops_it(tmp_path, s3, bucket, now):
    from _retention_sweep_helpers import name_for

    config = write_config(tmp_path, keep_daily=3, keep_weekly=0, keep_monthly=12, lock_kept="governance")
    history = lock_history(now)
    make_history(config, s3, history)
    prev_month = (now.replace(day=1) - timedelta(days=1))
    monthly = name_for(max(t for t in history if (t.year, t.month) == (prev_month.year, prev_month.month)))
    two_back = prev_month.replace(day=1) - timedelta(days=1)
    preset = name_for(max(t for t in history if (t.year, t.month) == (two_back.year, two_back.month)))
    # ... kept too, and already locked longer, in COMPLIANCE
    far = now.replace(microsecond=0) + timedelta(days=3000)
    s3.put_object_retention(Bucket=bucket, Key=PREFIX + preset, Retention={"Mode": "COMPLIANCE",
                                                                            "RetainUntilDate": far})

    dry = sweep(config, s3, dry_run=True, now=now)
    planned = {lk["key"]: lk for lk in dry.locks}
    assert PREFIX + monthly in planned and PREFIX + preset not in planned
    assert "ObjectLockRetainUntilDate" not in s3.head_object(Bucket=bucket, Key=PREFIX + monthly)  # dry: nothing set

    report = sweep(config, s3, now=now)
    assert report.ok and {lk["key"] for lk in report.locks} == set(planned)
    assert report.plan.decision(monthly).action == "keep" and "monthly" in report.plan.decision(monthly).rules
    head = s3.head_object(Bucket=bucket, Key=PREFIX + monthly)
    until = head["ObjectLockRetainUntilDate"]
    assert head["ObjectLockMode"] == "GOVERNANCE"
    dropped = first_drop(config.source(SOURCE).retention, history, monthly, now)
    assert dropped <= until <= dropped + timedelta(days=2)  # locked while kept, not much longer
    year_on = prev_month.replace(day=1, year=prev_month.year + 1, hour=0, minute=0, second=0, microsecond=0)
    assert until >= year_on  # the previous month's backup: locked through its 12 months
    for sfx in (".sha256", ".manifest.json"):  # the companions a restore needs are locked alike
        assert s3.head_object(Bucket=bucket, Key=PREFIX + monthly + sfx)["ObjectLockRetainUntilDate"] == until
    # Never shortened, never weakened.
    head = s3.head_object(Bucket=bucket, Key=PREFIX + preset)
    assert (head["ObjectLockMode"], head["ObjectLockRetainUntilDate"]) == ("COMPLIANCE", far)
    assert [r["action"] for r in audit_records(config)].count("locked") == 1
    again = sweep(config, s3, run_id="run-2", now=now)
    assert again.locks == []  # already long enough: no request to change anything


def test_lock_kept_on_a_bucket_without_object_lock_is_an_error(tmp_path, s3):
    s3.create_bucket(Bucket="plain-backups")
    config = write_config(tmp_path, bucket="plain-backups", lock_kept="COMPLIANCE")
    make_history(config, s3)
    from backupkit.retention.sweep import SweepFailed

    with pytest.raises(SweepFailed) as info:
        sweep(config, s3)
    assert info.value.report.errors[0]["code"] == "NoObjectLock"
