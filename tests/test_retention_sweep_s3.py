"""Retention sweeps against the loopback S3 endpoint (moto server): batching, holds
(object lock, legal hold, tag, hold list), versioned-bucket behaviour, the noncurrent
purge, and faults injected mid-sweep followed by a re-run that must finish the job and
delete nothing the first plan kept."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import timedelta

import pytest

from _retention_sweep_helpers import (
    PREFIX, SOURCE, FaultyS3, SimulatedCrash, all_files_of, audit_records, backups_left, local_files,
    make_history, s3_keys, sweep, write_config,
)
from backupkit import clock
from backupkit.retention import sweep as sweep_module
from backupkit.retention.audit import AuditLog
from backupkit.retention.holds import release_hold, set_hold
from backupkit.retention.sweep import SweepFailed, SweepRefused
from backupkit.state import VerificationState
from backupkit.storage.locks import Leases
from backupkit.storage.objectstore import Bucket
from botocore.exceptions import ClientError


def first_plan(config, s3):
    """The dry-run plan: what must remain (kept) and what may go."""
    report = sweep(config, s3, dry_run=True)
    assert report.ok and not report.deleted
    return set(report.kept), set(report.would_delete)


def assert_exactly(config, s3, kept: set[str]) -> None:
    """Only the kept backups remain, on both sides, each with all its companions."""
    assert local_files(config) == all_files_of(kept)
    assert s3_keys(config, s3) == all_files_of(kept)


def test_sweep_deletes_the_plan_in_batches_with_companions(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    make_history(config, s3)
    kept, doomed = first_plan(config, s3)
    assert len(kept) == 5 and len(doomed) == 14

    local_dir = config.source(SOURCE).local_dir
    doomed_bytes = sum((local_dir / f).stat().st_size for f in all_files_of(doomed))
    client = FaultyS3(s3)  # no faults: records the DeleteObjects calls
    report = sweep(config, client, batch_size=7)
    assert report.ok and set(report.deleted) == doomed and set(report.kept) == kept
    assert_exactly(config, s3, kept)
    # 14 backups x 3 objects in requests of at most 7 keys; a backup's keys never split.
    assert [len(c) for c in client.delete_calls] == [6] * 7
    assert report.requests["DeleteObjects"] == 7 > math.ceil(42 / 7)
    assert report.requests["ListObjectsV2"] == 2  # the backups, and the hold records under holds/SOURCE/
    assert report.bytes_freed == report.bytes_to_free == 2 * doomed_bytes  # backups and companions, local and S3
    with VerificationState(config.state_dir) as state:
        assert set(state.records(f"{SOURCE}/")) == {f"{SOURCE}/{n}" for n in kept}  # deleted ones forgotten

    # Versioned bucket: each deleted key got a delete marker; the bytes are noncurrent versions now.
    versions = s3.list_object_versions(Bucket=bucket, Prefix=PREFIX)
    markers = {m["Key"][len(PREFIX):] for m in versions.get("DeleteMarkers", []) if m["IsLatest"]}
    noncurrent = {v["Key"][len(PREFIX):] for v in versions["Versions"] if not v["IsLatest"]}
    assert markers == noncurrent == all_files_of(doomed)


def test_audit_log_intent_before_deletion_and_mirrored_to_the_bucket(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    names = make_history(config, s3)
    local_dir = config.source(SOURCE).local_dir
    expected = {n: ((local_dir / n).stat().st_size, hashlib.sha256((local_dir / n).read_bytes()).hexdigest(),
                    2 * sum((local_dir / f).stat().st_size for f in all_files_of([n]))) for n in names}
    report = sweep(config, s3, run_id="manual__2024-05-09T12:00:00+00:00")
    records = audit_records(config)
    by_artifact: dict[str, list[str]] = {}
    for rec in records:
        if rec["artifact"]:
            by_artifact.setdefault(rec["artifact"], []).append(rec["action"])
    assert by_artifact == {n: ["intent", "deleted"] for n in report.deleted}
    rec = next(r for r in records if r["action"] == "deleted")
    assert rec["run_id"] == "manual__2024-05-09T12:00:00+00:00" and rec["source"] == SOURCE
    assert rec["keys"] == [PREFIX + rec["artifact"] + s for s in ("", ".sha256", ".manifest.json")]
    assert rec["paths"][-1].endswith("/" + rec["artifact"]) and len(rec["paths"]) == 3
    assert rec["dry_run"] is False
    for r in records:
        if r["artifact"]:  # intent and deleted: the backup's size, verified SHA-256, bytes on both sides
            assert (r["size"], r["sha256"], r["bytes"]) == expected[r["artifact"]]
    assert rec["reasons"] == ["not kept by any rule"]
    assert records[-1]["action"] == "run" and records[-1]["counts"]["deleted"] == 14

    key = AuditLog.mirror_key(report.run_id, SOURCE)
    assert report.audit_mirror == f"s3://{bucket}/{key}" and ":" in key  # Airflow run ids stay readable
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert [json.loads(line) for line in body.splitlines()] == records
    assert not list((tmp_path / "state" / "audit" / "runs").rglob("*.jsonl"))  # mirrored: local copy dropped


def hold(config, s3, name, reason, **kw):
    """A hold as ``backupctl retention hold`` sets it: record, tag, optionally S3 legal hold."""
    keys = [PREFIX + name + sfx for sfx in ("", ".sha256", ".manifest.json")]
    return set_hold(Bucket(s3, config.bucket), SOURCE, name, keys, reason=reason, by="test", **kw)


def test_holds_records_leases_and_hold_list_are_never_deleted_at_no_request_per_object(tmp_path, s3, bucket):
    names = make_history(write_config(tmp_path), s3)
    recorded, legal, leased, listed = names[0], names[1], names[2], names[3]
    config = write_config(tmp_path, hold_list=[PREFIX + listed])
    hold(config, s3, recorded, "case-42")
    hold(config, s3, legal, "litigation 7", legal_hold=True)
    Leases(config.state_dir).take(SOURCE, leased, run_id="manual__restore", purpose="restore",
                                  for_=timedelta(hours=2))
    report = sweep(config, s3)
    held = {h["name"]: h["reason"] for h in report.held}
    assert set(held) == {recorded, legal, leased, listed}
    assert held[recorded] == f"hold recorded in s3://{bucket}/holds/{SOURCE}/{recorded}: case-42"
    assert held[leased].startswith("in use by restore (run manual__restore) until ")
    assert held[listed] == "on the configured hold list"
    assert report.plan.decision(legal).action == "held" and report.by_rule["held"] == 4
    assert len(report.deleted) == 10 and not set(report.deleted) & set(held)
    assert_exactly(config, s3, set(report.kept) | set(held))
    # What the holds cost: one listing of holds/SOURCE/ and one ranged GET per hold record;
    # no GetObjectTagging at all, and HeadObject only for the S3-copy check of the 10 local
    # copies deleted (a local copy goes only when its S3 copy is verified).
    assert report.requests["ListObjectsV2"] == 2 and report.requests["GetObject"] == 2
    assert "GetObjectTagging" not in report.requests and report.requests["HeadObject"] == 10
    # The tag and the legal hold are on the objects too (S3 refuses to destroy a legal-held version).
    assert s3.get_object_tagging(Bucket=bucket, Key=PREFIX + legal)["TagSet"] == [
        {"Key": "backupkit-hold", "Value": "litigation 7"}]
    assert s3.head_object(Bucket=bucket, Key=PREFIX + legal)["ObjectLockLegalHoldStatus"] == "ON"

    release_hold(Bucket(s3, bucket), SOURCE, legal, [PREFIX + legal + s for s in ("", ".sha256", ".manifest.json")])
    assert s3.head_object(Bucket=bucket, Key=PREFIX + legal)["ObjectLockLegalHoldStatus"] == "OFF"
    assert s3.get_object_tagging(Bucket=bucket, Key=PREFIX + legal)["TagSet"] == []
    again = sweep(config, s3, run_id="run-2")
    assert legal in again.deleted and {h["name"] for h in again.held} == {recorded, leased, listed}


def test_a_lock_cannot_keep_what_the_policy_dropped(tmp_path, s3, bucket):
    """S3 Object Lock retention is no hold: the sweep deletes (a delete marker) and S3 keeps the
    locked version, refusing to destroy it before its retain-until."""
    config = write_config(tmp_path)
    names = make_history(config, s3)
    locked = names[0]
    until = clock.now() + timedelta(days=30)
    s3.put_object_retention(Bucket=bucket, Key=PREFIX + locked, Retention={"Mode": "COMPLIANCE",
                                                                            "RetainUntilDate": until})
    report = sweep(config, s3)
    assert locked in report.deleted and not report.held
    versions = s3.list_object_versions(Bucket=bucket, Prefix=PREFIX + locked)
    (version,) = [v for v in versions["Versions"] if v["Key"] == PREFIX + locked]
    assert not version["IsLatest"]  # hidden by the delete marker, still there
    head = s3.head_object(Bucket=bucket, Key=PREFIX + locked, VersionId=version["VersionId"])
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"] >= until - timedelta(seconds=1)
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=bucket, Key=PREFIX + locked, VersionId=version["VersionId"])


def test_objects_mode_sees_holds_set_by_hand(tmp_path, s3, bucket):
    names = make_history(write_config(tmp_path), s3)
    config = write_config(tmp_path, hold_discovery="objects")
    legal, tagged, locked = names[1], names[2], names[3]
    s3.put_object_legal_hold(Bucket=bucket, Key=PREFIX + legal, LegalHold={"Status": "ON"})
    s3.put_object_tagging(Bucket=bucket, Key=PREFIX + tagged,
                          Tagging={"TagSet": [{"Key": "backupkit-hold", "Value": "case-42"}]})
    s3.put_object_retention(Bucket=bucket, Key=PREFIX + locked, Retention={
        "Mode": "GOVERNANCE", "RetainUntilDate": clock.now() + timedelta(days=1)})
    report = sweep(config, s3)
    held = {h["name"]: h["reason"] for h in report.held}
    assert held == {legal: "S3 legal hold", tagged: "tagged backupkit-hold=case-42"}
    assert locked in report.deleted  # retention is not a hold, in this mode either
    # Per object: 14 HeadObject and 14 GetObjectTagging for the holds, 12 HeadObject for the
    # S3-copy checks of the local copies deleted.
    assert report.requests["HeadObject"] == 14 + 12 and report.requests["GetObjectTagging"] == 14


def test_unknown_hold_status_keeps_the_backup_and_fails_the_sweep(tmp_path, s3, bucket):
    config = write_config(tmp_path, hold_discovery="objects")
    names = make_history(config, s3)
    faulty = FaultyS3(s3, tagging_denied=[PREFIX + names[2]])
    with pytest.raises(SweepFailed) as info:
        sweep(config, faulty)
    report = info.value.report
    assert [h["name"] for h in report.held] == [names[2]]
    assert report.held[0]["reason"] == "hold status unknown (AccessDenied: Access Denied)"
    assert report.errors == [{"artifact": names[2], "key": PREFIX + names[2], "code": "HoldInspection",
                              "message": "hold status could not be read; kept: AccessDenied: Access Denied"}]
    assert len(report.deleted) == 13  # the others went
    assert_exactly(config, s3, set(report.kept) | {names[2]})


def test_unreadable_hold_records_refuse_the_sweep(tmp_path, s3, bucket, monkeypatch):
    config = write_config(tmp_path)
    names = make_history(config, s3)

    def denied(bucket, source):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "ListObjectsV2")

    monkeypatch.setattr(sweep_module, "recorded_holds", denied)
    with pytest.raises(SweepRefused) as info:
        sweep(config, s3)
    assert info.value.report.deleted == [] and "listing" in info.value.report.violations[0]
    assert backups_left(config, s3) == (set(names), set(names))


def test_unlocked_bucket_skips_lock_inspection_and_tags_can_be_off(tmp_path, s3):
    s3.create_bucket(Bucket="plain-backups")
    config = write_config(tmp_path, bucket="plain-backups")
    make_history(config, s3)
    report = sweep(config, s3, hold_tag=None)
    assert len(report.deleted) == 14
    # HeadObject only for the 14 S3-copy checks before local deletion; no lock or tag requests.
    assert report.requests["HeadObject"] == 14 and "GetObjectTagging" not in report.requests
    assert report.requests["DeleteObjects"] == 1
    assert_exactly(config, s3, set(report.kept))


FAULTS = {
    # A companion key fails for good: its backup's S3 main object is gone, the local copy stays.
    "permanent key error": dict(errors={PREFIX + "trixtech_20240422_020000.dump.sha256": ["AccessDenied"] * 9}),
    # The endpoint goes away on the second request.
    "endpoint gone": dict(unreachable_from=2),
    # The process dies right after S3 deleted the first batch (local files still there).
    "crash after S3 batch": dict(crash_after=1),
    "crash after second S3 batch": dict(crash_after=2),
    # The process dies with intents written but nothing deleted.
    "crash before S3 batch": dict(crash_before=2),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_mid_sweep_then_rerun_finishes_without_over_deleting(tmp_path, s3, bucket, fault):
    config = write_config(tmp_path)
    make_history(config, s3)
    kept, doomed = first_plan(config, s3)

    faulty = FaultyS3(s3, **FAULTS[fault])
    with pytest.raises((SweepFailed, SimulatedCrash)) as info:
        sweep(config, faulty, batch_size=6, attempts=2, run_id="run-1")
    local_left, s3_left = backups_left(config, s3)
    assert kept <= local_left and kept <= s3_left  # nothing the plan keeps was touched
    assert local_files(config) >= all_files_of(kept) and s3_keys(config, s3) >= all_files_of(kept)
    assert local_left | s3_left != kept  # the fault stopped the sweep short
    if isinstance(info.value, SweepFailed):
        rep = info.value.report
        assert rep.errors and not rep.ok
        assert set(rep.deleted) | {f["name"] for f in rep.failed} | set(rep.not_attempted) == doomed
    # Every backup the fault left half-deleted is announced in the audit log as pending.
    pending = AuditLog(config.state_dir).pending(SOURCE)
    local, remote = local_files(config), s3_keys(config, s3)
    half = set()
    for name in doomed:
        present = [f in local for f in all_files_of([name])] + [f in remote for f in all_files_of([name])]
        if any(present) and not all(present):
            half.add(name)
    assert half <= set(pending)
    for name in doomed:  # S3 goes first: no local file is gone while an S3 object of its backup is left
        if any(f in remote for f in all_files_of([name])):
            assert all(f in local for f in all_files_of([name])), name
    assert bool(half) == (fault not in ("endpoint gone", "crash before S3 batch"))  # those fail whole batches

    report = sweep(config, s3, run_id="run-2")
    assert report.ok, report.errors
    assert_exactly(config, s3, kept)
    assert set(report.kept) == kept
    assert set(report.finished_pending) == set(pending)
    assert AuditLog(config.state_dir).pending(SOURCE) == {}
    # Across both runs each doomed backup has an intent before its final "deleted".
    actions: dict[str, list[str]] = {}
    for rec in audit_records(config):
        if rec["artifact"]:
            actions.setdefault(rec["artifact"], []).append(rec["action"])
    assert set(actions) == doomed
    for name, acts in actions.items():
        assert acts[0] == "intent" and acts[-1] == "deleted", (name, acts)


def test_retryable_key_errors_are_retried(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    make_history(config, s3)
    key = PREFIX + "trixtech_20240425_020000.dump"
    faulty = FaultyS3(s3, errors={key: ["InternalError", "SlowDown"]})
    waits: list[float] = []
    report = sweep(config, faulty, attempts=3, backoff=0.5, sleep=waits.append)
    assert report.ok and len(report.deleted) == 14
    assert waits == [0.5, 1.0]  # exponential backoff
    assert [c.count(key) for c in faulty.delete_calls] == [1, 1, 1]
    assert [len(c) for c in faulty.delete_calls] == [42, 1, 1]  # only the failed key is sent again


def test_crash_during_local_deletion_then_rerun(tmp_path, s3, bucket, monkeypatch):
    config = write_config(tmp_path)
    make_history(config, s3)
    kept, _ = first_plan(config, s3)
    calls = []
    real_remove = sweep_module._remove

    def dying_remove(path):
        calls.append(path)
        if len(calls) == 5:  # second backup: its sidecar deleted, then the process dies
            raise SimulatedCrash("power cut")
        return real_remove(path)

    monkeypatch.setattr(sweep_module, "_remove", dying_remove)
    with pytest.raises(SimulatedCrash):
        sweep(config, s3)
    monkeypatch.setattr(sweep_module, "_remove", real_remove)
    assert len(AuditLog(config.state_dir).pending(SOURCE)) == 14  # intents written, no "deleted" yet
    report = sweep(config, s3, run_id="run-2")
    assert report.ok
    assert_exactly(config, s3, kept)


def test_noncurrent_purge_respects_locks_tags_and_accidental_deletions(tmp_path, s3, bucket):
    config = write_config(tmp_path)
    names = make_history(config, s3)
    first = sweep(config, s3)  # purge off: delete markers over noncurrent versions
    doomed = sorted(first.deleted)
    locked, tagged = doomed[0], doomed[1]
    versions = s3.list_object_versions(Bucket=bucket, Prefix=PREFIX)["Versions"]
    vid = {v["Key"]: v["VersionId"] for v in versions if not v["IsLatest"]}
    s3.put_object_retention(Bucket=bucket, Key=PREFIX + locked, VersionId=vid[PREFIX + locked],
                            Retention={"Mode": "COMPLIANCE",
                                       "RetainUntilDate": clock.now() + timedelta(days=1)})
    s3.put_object_tagging(Bucket=bucket, Key=PREFIX + tagged, VersionId=vid[PREFIX + tagged],
                          Tagging={"TagSet": [{"Key": "backupkit-hold", "Value": "audit 2024"}]})
    # Somebody deletes the S3 copy of a backup the policy keeps: it must stay recoverable.
    accident = names[-2]
    s3.delete_object(Bucket=bucket, Key=PREFIX + accident)

    purging = write_config(tmp_path, purge_noncurrent_after_days=0)
    dry = sweep(purging, s3, dry_run=True)
    assert dry.purge["versions"] == len(all_files_of(doomed)) - 2 and dry.ok
    assert len(s3.list_object_versions(Bucket=bucket, Prefix=PREFIX)["Versions"]) == 19 * 3  # nothing purged

    report = sweep(purging, s3, run_id="run-2")
    assert report.ok, report.errors
    assert report.deleted == [] and accident in report.kept  # the policy keeps it: not purged either
    held = {(h["key"][len(PREFIX):], h["reason"].split(" ")[0]) for h in report.purge["held"]}
    assert held == {(locked, "S3"), (tagged, "tagged")}
    assert report.purge["versions"] == len(all_files_of(doomed)) - 2
    assert report.purge["markers"] == len(all_files_of(doomed)) - 2  # markers over held versions stay
    after = s3.list_object_versions(Bucket=bucket, Prefix=PREFIX)
    left_versions = {v["Key"][len(PREFIX):] for v in after["Versions"] if not v["IsLatest"]}
    left_markers = {m["Key"][len(PREFIX):] for m in after.get("DeleteMarkers", [])}
    assert left_versions == {locked, tagged, accident}
    assert left_markers == {locked, tagged, accident}
    current = {v["Key"][len(PREFIX):] for v in after["Versions"] if v["IsLatest"]}
    assert current == all_files_of(first.kept) - {accident}
    purged = [r for r in audit_records(purging) if r["action"] == "purged"]
    assert len(purged) == 2 * (len(all_files_of(doomed)) - 2)
    assert all(r["version_id"] for r in purged)
