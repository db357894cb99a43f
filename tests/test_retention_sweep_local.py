"""Retention sweeps and the local side of a backup: local copies kept while their S3
copy is missing or differs, dry runs, refusals, interrupted deletions finished (or
abandoned), directory backups, and the audit trail. Real files in tmp_path, the real
loopback S3 endpoint."""

from __future__ import annotations

import json

import pytest

from _retention_sweep_helpers import (
    NIGHTS, PREFIX, SOURCE, all_files_of, audit_records, backups_left, local_files, make_history, name_for,
    s3_keys, sweep, write_config,
)
from backupkit.retention.audit import AuditLog, make_record
from backupkit.retention.plan import RetentionRefused
from backupkit.retention.sweep import SweepRefused
from backupkit.state import VerificationState


def test_local_copies_kept_while_their_s3_copy_is_missing(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    names = make_history(config, s3, remote=False)
    make_history(config, s3, NIGHTS[:2], local=False)  # only the two oldest were ever uploaded
    report = sweep(config, s3)
    assert report.ok
    assert sorted(report.deleted) == names[:2]  # their S3 copies verified: both copies go
    protected = {p["name"]: p["reason"] for p in report.protected}
    assert set(protected) == set(names[2:14])
    assert set(protected.values()) == {"S3 copy missing; local copy kept until it is uploaded and verified"}
    d = report.plan.decision(names[5])
    assert d.action == "keep" and d.rules[0] == "s3-copy" and "not kept by any rule" in d.reasons[0]
    assert local_files(config) == all_files_of(names[2:]) and s3_keys(config, s3) == set()


def test_local_copy_kept_when_the_s3_copy_has_other_bytes(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    names = make_history(config, s3)
    victim = names[3]
    good = (config.source(SOURCE).local_dir / victim).read_bytes()
    s3.put_object(Bucket=bucket, Key=PREFIX + victim, Body=bytes(reversed(good)), ChecksumAlgorithm="SHA256")
    report = sweep(config, s3)
    assert report.ok and len(report.deleted) == 13 and victim not in report.deleted
    [p] = report.protected
    assert p["name"] == victim and p["reason"].startswith("S3 copy unverified (") and "SHA-256 differs" in p["reason"]
    local_left, s3_left = backups_left(config, s3)
    assert victim in local_left and victim in s3_left  # the whole backup stays


def test_s3_only_backups_are_swept_in_s3(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    names = make_history(config, s3, local=False)
    report = sweep(config, s3)
    assert report.ok and sorted(report.deleted) == names[:14] and not report.protected
    assert s3_keys(config, s3) == all_files_of(names[14:])
    assert "HeadObject" not in report.requests  # no local copy to protect, no per-object hold request


def test_unverified_backups_are_not_deleted(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    names = make_history(config, s3, verdict=None)
    report = sweep(config, s3)
    assert report.ok and report.deleted == [] and report.plan.summary.not_verified == 19
    assert backups_left(config, s3) == (set(names), set(names))


def test_dry_run_changes_nothing_and_predicts_the_applied_run(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    make_history(config, s3)
    before = (local_files(config), s3_keys(config, s3),
              len(s3.list_object_versions(Bucket=bucket)["Versions"]))
    dry = sweep(config, s3, dry_run=True)
    assert dry.ok and len(dry.would_delete) == 14 and dry.deleted == [] and dry.bytes_freed == 0
    assert dry.bytes_to_free > 0 and dry.audit_log == "" and dry.audit_mirror == ""
    assert (local_files(config), s3_keys(config, s3),
            len(s3.list_object_versions(Bucket=bucket)["Versions"])) == before
    assert not (tmp_path / "state" / "audit").exists()  # no audit record for a dry run
    assert "DeleteObjects" not in dry.requests and "PutObject" not in dry.requests
    applied = sweep(config, s3)
    assert applied.deleted == dry.would_delete and applied.kept == dry.kept
    assert json.loads(json.dumps(dry.to_dict()))["counts"]["would_delete"] == 14


@pytest.mark.parametrize("dry_run", [False, True])
def test_refused_plan_deletes_nothing_and_fails_loudly(tmp_path, s3, bucket, dry_run):
    config = write_config(tmp_path, max_delete_fraction=0.5)
    make_history(config, s3)
    before = (local_files(config), s3_keys(config, s3))
    with pytest.raises(SweepRefused) as info:
        sweep(config, s3, dry_run=dry_run)
    assert isinstance(info.value, RetentionRefused)
    report = info.value.report
    assert report.refused and not report.ok and report.deleted == [] and len(report.would_delete) == 14
    assert report.violations == ["would delete 14 of 19 backups (74%), more than max_delete_fraction 0.5"]
    assert str(info.value) == "retention refused: " + report.violations[0]
    assert (local_files(config), s3_keys(config, s3)) == before
    records = audit_records(config)
    if dry_run:
        assert records == []
    else:
        assert [r["action"] for r in records] == ["refused", "run"]
        assert records[0]["reasons"] == report.violations
        mirrored = s3.get_object(Bucket=bucket, Key=AuditLog.mirror_key("run-1", SOURCE))["Body"].read()
        assert len(mirrored.splitlines()) == 2


def test_failed_listing_refuses(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    make_history(config, s3)
    broken = write_config(tmp_path, bucket="no-such-bucket")
    with pytest.raises(SweepRefused) as info:
        sweep(broken, s3)
    report = info.value.report
    assert not report.listing_complete
    assert report.violations[0] == "the listing of backups was incomplete or failed; nothing may be deleted"
    assert report.errors[0]["code"] == "NoSuchBucket"
    assert len(local_files(config)) == 19 * 3


def _interrupt(config, name: str, run_id: str = "run-0") -> None:
    """What a crashed run leaves: the intent record for ``name``."""
    src = config.source(SOURCE)
    AuditLog(config.state_dir).append([make_record(
        run_id=run_id, source=SOURCE, action="intent", artifact=name,
        keys=[PREFIX + name + s for s in ("", ".sha256", ".manifest.json")],
        paths=[str(src.local_dir / (name + s)) for s in (".sha256", ".manifest.json", "")],
        reasons=["not kept by any rule"])])


def test_leftover_companions_of_an_interrupted_deletion_are_finished(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    names = make_history(config, s3)
    victim = names[0]
    _interrupt(config, victim)
    # The crashed run deleted the backup itself on both sides, not its companions.
    (config.source(SOURCE).local_dir / victim).unlink()
    s3.delete_object(Bucket=bucket, Key=PREFIX + victim)
    report = sweep(config, s3)
    assert report.ok and victim in report.finished_pending and victim not in report.deleted
    assert len(report.deleted) == 13
    assert not any(f.startswith(victim) for f in local_files(config) | s3_keys(config, s3))
    last = [r for r in audit_records(config) if r["artifact"] == victim][-1]
    assert last["action"] == "deleted" and last["detail"] == "finished an interrupted deletion"
    # The crashed run's own audit lines reached the bucket with this run.
    assert s3.head_object(Bucket=bucket, Key=AuditLog.mirror_key("run-0", SOURCE))["ContentLength"] > 0
    assert AuditLog(config.state_dir).unmirrored() == []


def test_interrupted_directory_backup_is_finished_locally(tmp_path, s3, bucket):
    """A directory-format dump (never uploaded) whose S3 side the crashed run had already handled."""
    config = write_config(tmp_path)
    make_history(config, s3)
    name = name_for(NIGHTS[0].replace(hour=1))
    d = config.source(SOURCE).local_dir / name
    (d / "sub").mkdir(parents=True)
    (d / "toc.dat").write_bytes(b"x" * 100)
    (d / "sub" / "3001.dat.gz").write_bytes(b"y" * 50)
    with VerificationState(config.state_dir) as state:
        state.record(f"{SOURCE}/{name}", None, 150, True, NIGHTS[0])
    dry = sweep(config, s3, dry_run=True)
    assert name not in dry.would_delete  # never uploaded: protected ...
    _interrupt(config, name)
    report = sweep(config, s3)
    assert name in report.deleted and name in report.finished_pending  # ... unless we were deleting it
    assert not d.exists()


def test_interrupted_deletion_of_a_backup_now_kept_is_abandoned(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    names = make_history(config, s3)
    _interrupt(config, names[-1])  # e.g. the policy changed since
    report = sweep(config, s3)
    assert report.abandoned == [names[-1]] and names[-1] in report.kept
    assert backups_left(config, s3)[0] >= {names[-1]}
    last = [r for r in audit_records(config) if r["artifact"] == names[-1]][-1]
    assert last["action"] == "abandoned" and "newest backup" in last["reasons"]
    assert AuditLog(config.state_dir).pending(SOURCE) == {}


def test_torn_audit_line_is_ignored(tmp_path):
    log = AuditLog(tmp_path)
    log.append([make_record(run_id="r", source=SOURCE, action="intent", artifact="a")])
    with open(log.path, "ab") as f:
        f.write(b'{"action": "deleted", "artif')  # the crash hit mid-write
    assert set(log.pending(SOURCE)) == {"a"}
    assert [r["action"] for r in log.records()] == ["intent"]


def test_purge_setting_is_validated(tmp_path):
    from backupkit.config import ConfigError

    assert write_config(tmp_path).source(SOURCE).retention.purge_noncurrent_after_days is None
    assert write_config(tmp_path, purge_noncurrent_after_days=30).source(SOURCE).retention \
        .purge_noncurrent_after_days == 30
    with pytest.raises(ConfigError, match="purge_noncurrent_after_days: must be >= 0, got -1"):
        write_config(tmp_path, purge_noncurrent_after_days=-1)
