"""The ransomware scenario's proof that object lock protects the backups, on a probe copy.

A copy of a verified backup is uploaded under ``<reports prefix>dr-drill/lock-probes/<time>/``
and put under retention; then ``DeleteObject`` of that version must be refused
(``AccessDenied``), an overwrite must only add a version, and the locked version must read
back with the same SHA-256. Only the probe key is ever written to or deleted from: the drill
never attacks a production object. Every S3 call goes through :class:`~backupkit.storage.objectstore.Bucket`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backupkit.config import Config
from backupkit.model import CheckResult
from backupkit.reports.render import human_bytes
from backupkit.storage.localfs import CHUNK, sha256_file
from backupkit.storage.objectstore import Bucket, client_errors, error_code

PROBE_MODE = "GOVERNANCE"  # the probe's retention; removable afterwards with s3:BypassGovernanceRetention
PROBE_RETENTION = timedelta(days=1)
ATTACK_BODY = b"backupkit DR drill: this version simulates a ransomware overwrite of a locked backup\n"


def _ts(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _aware(when: datetime | None) -> datetime | None:
    return when if when is None or when.tzinfo else when.replace(tzinfo=timezone.utc)


def lock_status(bucket: Bucket, key: str, version_id: str | None, now: datetime) -> tuple[bool, str]:
    """(locked now, description) of one object version from HeadObject."""
    head = bucket.head(key, version_id=version_id) or {}
    mode, until = head.get("ObjectLockMode"), _aware(head.get("ObjectLockRetainUntilDate"))
    hold = head.get("ObjectLockLegalHoldStatus") == "ON"
    vid = head.get("VersionId") or version_id
    locked = hold or (mode is not None and until is not None and until > now)
    what = f"{bucket.uri(key)} version {vid}: "
    if mode and until:
        what += f"{mode} retention until {_ts(until)}" + ("" if until > now else " (expired)")
    else:
        what += "no retention"
    if hold:
        what += ", legal hold"
    return locked, what


def _read_back(bucket: Bucket, key: str, version_id: str) -> str:
    body, h = bucket.body(key, version_id=version_id), hashlib.sha256()
    try:
        for chunk in body.iter_chunks(CHUNK):
            h.update(chunk)
    finally:
        body.close()
    return h.hexdigest()


class _Proof:
    def __init__(self, uri: str):
        self.uri = uri
        self.checks: list[CheckResult] = []
        self.evidence: list[str] = []
        self.notes: list[str] = []

    def add(self, check: str, ok: bool, detail: str) -> bool:
        self.checks.append(CheckResult(self.uri, check, ok, detail))
        self.evidence.append(f"{'OK' if ok else 'FAILED'} {check}: {detail}")
        return ok

    def result(self) -> tuple[list[CheckResult], list[str], list[str]]:
        return self.checks, self.evidence, self.notes


def object_lock_proof(bucket: Bucket, config: Config, *, probe_body: Path | None, probe_key: str,
                      now: datetime) -> tuple[list[CheckResult], list[str], list[str]]:
    """Show on a probe copy that a locked version refuses deletion and survives an overwrite.

    Returns (checks, evidence lines, notes).
    """
    proof = _Proof(bucket.uri(probe_key))
    try:
        lock = bucket.lock_configuration()
    except client_errors() as exc:
        proof.add("bucket object lock", False, f"{bucket.uri()}: object lock configuration unreadable "
                                               f"({error_code(exc)[0]})")
        return proof.result()
    if lock is None:
        proof.add("bucket object lock", False, f"{bucket.uri()} has no object lock configuration")
        return proof.result()
    default = (lock.get("Rule") or {}).get("DefaultRetention") or {}
    span = f"{default.get('Days') or 0} days" if default.get("Days") else f"{default.get('Years') or 0} years"
    enabled = lock.get("ObjectLockEnabled") == "Enabled"
    proof.add("bucket object lock", enabled, f"{bucket.uri()}: object lock {lock.get('ObjectLockEnabled', 'not enabled')}"
              + (f", default retention {default.get('Mode')} {span}" if default else ", no default retention"))
    if not enabled:
        return proof.result()
    if probe_body is None:
        raise ValueError("no verified backup to copy as the lock probe")
    _probe(bucket, config, proof, probe_body, probe_key, now)
    return proof.result()


def _probe(bucket: Bucket, config: Config, proof: _Proof, body: Path, key: str, now: datetime) -> None:
    sse = {"ServerSideEncryption": config.reports.sse_algorithm} if config.reports.sse_algorithm else {}
    expected = sha256_file(body)[0]
    bucket.upload(body, key, **sse)
    head = bucket.head(key) or {}
    version = head["VersionId"]
    # A bucket default may already have locked the probe: keep its mode (COMPLIANCE cannot become
    # GOVERNANCE) and never shorten its retention (S3 refuses that without a bypass).
    mode = head.get("ObjectLockMode") or PROBE_MODE
    until = now + PROBE_RETENTION
    current = _aware(head.get("ObjectLockRetainUntilDate"))
    if current is not None:
        until = max(until, current)
    try:
        bucket.put_retention(key, mode=mode, until=until, version_id=version)
    except client_errors() as exc:
        code, msg = error_code(exc)
        proof.add("retention set", False, f"PutObjectRetention on version {version} refused: {code}: {msg}")
        proof.notes += _remove_probe(bucket, key, [version])
        return
    locked, status = lock_status(bucket, key, version, now)
    proof.add("retention set", locked, f"probe copy of a verified backup ({human_bytes(body.stat().st_size)}): "
              f"{status}")
    if not locked:
        proof.notes += _remove_probe(bucket, key, [version])
        return
    try:
        bucket.delete_version(key, version)
    except client_errors() as exc:
        code = error_code(exc)[0]
        proof.add("delete refused", code == "AccessDenied", f"DeleteObject of version {version} answered {code}"
                  + ("" if code == "AccessDenied" else " (expected AccessDenied)"))
    else:
        proof.add("delete refused", False, f"DeleteObject of locked version {version} SUCCEEDED: object lock did not "
                                           "protect it")
        return
    attack_version = None
    try:
        attack_version = bucket.put(key, ATTACK_BODY, **sse).get("VersionId")
    except client_errors() as exc:  # a policy refusing overwrites protects even more
        proof.add("overwrite adds a version", True, f"PutObject over the key was refused ({error_code(exc)[0]})")
    else:
        proof.add("overwrite adds a version", bool(attack_version) and attack_version != version,
                  f"PutObject over the key created version {attack_version}; the locked version {version} is no "
                  "longer current but still exists" if attack_version != version else
                  f"PutObject over the key REPLACED version {version} (is versioning suspended?)")
    try:
        got = _read_back(bucket, key, version)
        proof.add("locked version unchanged", got == expected,
                  f"version {version} read back: SHA-256 {got[:16]}... "
                  + ("equals the backup's" if got == expected else f"differs from the backup's {expected[:16]}..."))
    except client_errors() as exc:
        code, msg = error_code(exc)
        proof.add("locked version unchanged", False, f"version {version} cannot be read: {code}: {msg}")
    proof.notes += _remove_probe(bucket, key, [attack_version, version])


def _remove_probe(bucket: Bucket, key: str, versions: Sequence[str | None]) -> list[str]:
    """Delete the probe's versions; a locked one needs BypassGovernanceRetention -- which these
    credentials may hold, and so would a thief of them (said in the notes)."""
    removed, kept = [], []
    for vid in versions:
        if not vid:
            continue
        try:
            bucket.delete_version(key, vid, bypass_governance=True)
            removed.append(vid)
        except client_errors() as exc:
            kept.append(f"{vid} ({error_code(exc)[0]})")
    notes = []
    if removed:
        notes.append(f"probe versions {', '.join(removed)} were removed with BypassGovernanceRetention: these "
                     "credentials hold s3:BypassGovernanceRetention, so a thief of them could lift GOVERNANCE "
                     "retention too; COMPLIANCE mode (or denying that permission) closes this")
    if kept:
        notes.append(f"probe versions kept until their retention ends: {', '.join(kept)} at {bucket.uri(key)}")
    return notes


__all__ = ["lock_status", "object_lock_proof", "PROBE_MODE", "PROBE_RETENTION", "ATTACK_BODY"]
