"""Holds and locks of retention: what must not be deleted, and locking what the policy keeps.

**Holds** (a held backup is never deleted, whatever the policy says) come from:

* the configuration's ``hold_list`` (file names or S3 keys);
* leases (:class:`backupkit.storage.locks.Leases`): a backup in use by a restore, a
  pending approval or a restore test, until that run ends or the lease expires;
* the **hold records** in the bucket, ``holds/<source>/<backup name>`` (a small JSON body:
  reason, who, since), which ``backupctl retention hold`` writes together with the S3 hold
  tag and, with ``--legal-hold``, an S3 legal hold on the backup's objects (so S3 itself
  refuses to destroy them). A sweep learns every hold with one listing of that prefix
  plus one ranged GET per hold, instead of two requests per object it would delete;
* with ``retention.hold_discovery: objects``, also each candidate's own S3 legal hold and
  hold tag (one HeadObject and one GetObjectTagging per object), for teams that set holds
  by hand in the S3 console.

S3 Object Lock *retention* is not a hold: the policy decides what is kept, and a lock
cannot keep a backup the policy dropped. Deleting such a backup adds a delete marker
(which S3 allows); the locked version stays in the bucket, noncurrent, until its
retain-until passes (S3 refuses to remove it sooner, and the noncurrent purge inspects
every version before it deletes one).

**Lock what you keep** (``retention.lock_kept: GOVERNANCE | COMPLIANCE``, default off): each
backup the rules keep gets, on its S3 objects, a retain-until of one day after the earliest
moment the rules could stop keeping it (``Decision.keep_until``). A lock is only ever
extended: an object whose retain-until is already later is left alone, and an active
COMPLIANCE lock keeps its mode. A dry run reports what it would set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from backupkit import clock
from backupkit.storage.objectstore import HOLD_TAG, Bucket, ObjectRef, client_errors, error_code

PREFIX = "holds/"
_STRENGTH = {None: 0, "GOVERNANCE": 1, "COMPLIANCE": 2}


def record_key(source: str, name: str) -> str:
    return f"{PREFIX}{source}/{name}"


def recorded_holds(bucket: Bucket, source: str) -> dict[str, str]:
    """backup name -> reason, from the hold records of ``source`` (raises on S3 errors: the caller
    must then refuse to delete, since holds are unknown)."""
    found = {}
    prefix = record_key(source, "")
    for obj in bucket.objects(prefix):
        name = obj.key[len(prefix):]
        if not name or "/" in name:
            continue
        try:
            body = json.loads(bucket.get_small(obj.key) or b"{}")
        except ValueError:
            body = {}
        reason = str(body.get("reason") or "no reason given") if isinstance(body, dict) else "unreadable record"
        found[name] = f"hold recorded in {bucket.uri(obj.key)}: {reason}"
    return found


def set_hold(bucket: Bucket, source: str, name: str, keys: Iterable[str], *, reason: str, by: str,
             legal_hold: bool = False, hold_tag: str = HOLD_TAG) -> str:
    """Hold a backup: its record, the hold tag on each of its objects, optionally S3 legal holds."""
    record = {"source": source, "backup": name, "reason": reason, "by": by,
              "since": clock.now().isoformat(timespec="seconds"), "legal_hold": legal_hold}
    for key in keys:
        tags = bucket.tags(key)
        bucket.put_tags(key, {**tags, hold_tag: reason[:256]})
        if legal_hold:
            bucket.put_legal_hold(key, True)
    key = record_key(source, name)
    bucket.put(key, json.dumps(record, sort_keys=True).encode(), content_type="application/json")
    return key


def release_hold(bucket: Bucket, source: str, name: str, keys: Iterable[str], *, hold_tag: str = HOLD_TAG) -> bool:
    """Release a hold set by :func:`set_hold` (record, tag, legal hold). False when there was none."""
    key = record_key(source, name)
    raw = bucket.get_small(key)
    if raw is None:
        return False
    try:
        legal = bool(json.loads(raw).get("legal_hold"))
    except (ValueError, AttributeError):
        legal = True  # unreadable: release the legal hold too, to be sure none is left dangling
    for obj in keys:
        tags = bucket.tags(obj)
        if hold_tag in tags:
            bucket.put_tags(obj, {k: v for k, v in tags.items() if k != hold_tag})
        if legal:
            bucket.put_legal_hold(obj, False)
    bucket.delete_batch([ObjectRef(key)])
    return True


# --- lock what you keep -------------------------------------------------------------------------


@dataclass
class LockChange:
    """One object's retain-until, as found and as set (or, dry run, as it would be set)."""

    name: str
    key: str
    mode: str
    until: datetime
    previous_mode: str | None
    previous_until: datetime | None
    version_id: str | None
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "mode": self.mode, "until": self.until.isoformat(),
                "previous_mode": self.previous_mode,
                "previous_until": self.previous_until.isoformat() if self.previous_until else None,
                "version_id": self.version_id, "error": self.error}


def extend_locks(bucket: Bucket, targets: Iterable[tuple[str, str, datetime]], *, mode: str, now: datetime,
                 dry_run: bool) -> list[LockChange]:
    """For each ``(backup name, key, until)``: extend the object's retain-until to ``until``.

    Never shortens, never weakens an active COMPLIANCE lock. Returns the changes made (or
    that a dry run would make) and the objects that could not be inspected or locked
    (``error`` set); objects already locked long enough are left out. One HeadObject per
    object and one PutObjectRetention per change.
    """
    changes = []
    for name, key, until in targets:
        if until <= now:
            continue  # S3 refuses a retain-until in the past; nothing to protect
        try:
            head = bucket.head(key)
        except client_errors() as exc:
            changes.append(LockChange(name, key, mode, until, None, None, None, "{}: {}".format(*error_code(exc))))
            continue
        if head is None:
            continue  # no S3 copy (yet): nothing to lock
        cur_mode, cur_until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        active = cur_until is not None and cur_until > now
        if cur_until is not None and cur_until >= until:
            continue
        new_mode = cur_mode if active and _STRENGTH.get(cur_mode, 0) > _STRENGTH[mode] else mode
        change = LockChange(name, key, new_mode, until, cur_mode, cur_until, head.get("VersionId"))
        if not dry_run:
            try:
                bucket.put_retention(key, mode=new_mode, until=until, version_id=change.version_id)
            except client_errors() as exc:
                change.error = "{}: {}".format(*error_code(exc))
        changes.append(change)
    return changes


__all__ = ["PREFIX", "record_key", "recorded_holds", "set_hold", "release_hold", "LockChange", "extend_locks"]
