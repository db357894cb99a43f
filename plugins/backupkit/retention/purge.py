"""Noncurrent versions of deleted backups: removed once old enough, never a held or a live one.

On a versioned bucket a sweep's deletion only adds a delete marker; the bytes stay as a
noncurrent version (billed, restorable) until an S3 lifecycle rule or this purge removes
them (``retention.purge_noncurrent_after_days``, off by default):

* ListObjectVersions, paginated and streamed, one key's versions at a time;
* only keys whose current version is a delete marker (the backup was deleted) and that
  the caller declares eligible (the sweep: a backup or companion of the source that the
  policy would not keep today, so a backup deleted by mistake is never purged);
* a noncurrent version older than the limit (counted from when it became noncurrent,
  as S3 lifecycle does) is deleted by VersionId, unless it is under object-lock
  retention, legal hold or carries the hold tag (inspected per version);
* noncurrent delete markers past the limit go too; the current delete marker is removed
  last, in a later request, and only once every version under it is gone (removing it
  earlier would make the newest noncurrent version current again). Noncurrent versions
  of objects that still exist (an overwritten upload) are never purged: the older
  version may be the good copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from backupkit.storage.objectstore import MAX_BATCH, Bucket, ObjectRef, Version, client_errors, error_code


@dataclass
class PurgeResult:
    versions: int = 0  # noncurrent object versions deleted (or that would be, dry run)
    markers: int = 0  # delete markers removed
    bytes_freed: int = 0
    young: int = 0  # noncurrent versions not old enough yet
    not_eligible: int = 0  # keys skipped: not a backup of the source, or the policy would keep it
    held: list[dict] = field(default_factory=list)  # {key, version_id, reason}
    errors: list[dict] = field(default_factory=list)  # {key, version_id, code, message}

    def to_dict(self) -> dict:
        return {"versions": self.versions, "markers": self.markers, "bytes_freed": self.bytes_freed,
                "young": self.young, "not_eligible": self.not_eligible, "held": list(self.held),
                "errors": list(self.errors)}


class _Purger:
    """Batches version deletions; a key's current delete marker goes after all its versions did."""

    def __init__(self, bucket: Bucket, result: PurgeResult, *, batch_size: int, attempts: int,
                 backoff: float, sleep: Callable[[float], None], dry_run: bool,
                 on_intent: Callable[[list[Version]], None], on_done: Callable[[list[Version], dict], None]):
        self.bucket, self.result = bucket, result
        self.batch_size, self.attempts, self.backoff, self.sleep = batch_size, attempts, backoff, sleep
        self.dry_run, self.on_intent, self.on_done = dry_run, on_intent, on_done
        self.queue: list[Version] = []
        self.waiting: dict[str, list] = {}  # key -> [current marker, versions still to delete]
        self.unreachable = False

    def add(self, v: Version) -> None:
        self.queue.append(v)
        if len(self.queue) >= self.batch_size:
            self.flush()

    def after(self, marker: Version, versions: int) -> None:
        """Remove ``marker`` once ``versions`` queued deletions of its key have succeeded."""
        if versions == 0:
            self.add(marker)
        else:
            self.waiting[marker.key] = [marker, versions]

    def flush(self) -> None:
        while self.queue and not self.unreachable:
            batch, self.queue = self.queue[:self.batch_size], self.queue[self.batch_size:]
            self.on_intent(batch)
            if self.dry_run:
                failed: dict[ObjectRef, tuple[str, str]] = {}
            else:
                res = self.bucket.delete_batch([ObjectRef(v.key, v.version_id) for v in batch],
                                               attempts=self.attempts, backoff=self.backoff, sleep=self.sleep)
                failed, self.unreachable = res.failed, res.unreachable
            self.on_done(batch, failed)
            for v in batch:
                err = failed.get(ObjectRef(v.key, v.version_id))
                if err is not None:
                    self.result.errors.append({"key": v.key, "version_id": v.version_id, "code": err[0],
                                               "message": err[1]})
                    self.waiting.pop(v.key, None)  # a version stays: keep the marker over it
                    continue
                if v.is_marker:
                    self.result.markers += 1
                else:
                    self.result.versions += 1
                    self.result.bytes_freed += v.size
                w = self.waiting.get(v.key)
                if w is not None and not v.is_latest:
                    w[1] -= 1
                    if w[1] == 0:
                        del self.waiting[v.key]
                        self.queue.append(w[0])  # a later request than its versions


def purge_noncurrent(bucket: Bucket, prefix: str, *, older_than: timedelta, now: datetime,
                     eligible: Callable[[str], bool], check_lock: bool, hold_tag: str | None,
                     batch_size: int = MAX_BATCH, attempts: int = 4, backoff: float = 0.5,
                     sleep: Callable[[float], None] = time.sleep, dry_run: bool = False,
                     on_intent: Callable[[list[Version]], None] = lambda batch: None,
                     on_done: Callable[[list[Version], dict], None] = lambda batch, failed: None) -> PurgeResult:
    """Delete noncurrent versions of deleted backups older than ``older_than`` (see the module doc).

    ``eligible(key)`` decides whether a deleted key's versions may go at all.
    ``on_intent`` is called before each DeleteObjects request (the audit), ``on_done``
    after it with the failures. Raises only when the listing fails.
    """
    result = PurgeResult()
    purger = _Purger(bucket, result, batch_size=min(batch_size, MAX_BATCH), attempts=attempts,
                     backoff=backoff, sleep=sleep, dry_run=dry_run, on_intent=on_intent, on_done=on_done)
    for group in bucket.version_groups(prefix):
        current = group[0]
        if not (current.is_latest and current.is_marker):
            continue  # the object exists (or the listing shows no current version): not ours to purge
        if len(group) == 1:
            continue  # a lone delete marker: removed when its versions were, or left by someone else
        if not eligible(current.key):
            result.not_eligible += 1
            continue
        doomed, remaining = [], 0
        for newer, v in zip(group, group[1:]):
            if now - newer.last_modified < older_than:  # noncurrent since the newer one was written
                remaining += 1
                result.young += 1
                continue
            if not v.is_marker and (check_lock or hold_tag):
                try:
                    reason = bucket.hold_reason(v.key, now=now, check_lock=check_lock, hold_tag=hold_tag,
                                                version_id=v.version_id)
                except client_errors() as exc:
                    code, msg = error_code(exc)
                    result.errors.append({"key": v.key, "version_id": v.version_id, "code": code,
                                          "message": f"hold status unknown, version kept: {msg}"})
                    remaining += 1
                    continue
                if reason:
                    result.held.append({"key": v.key, "version_id": v.version_id, "reason": reason})
                    remaining += 1
                    continue
            doomed.append(v)
        if remaining == 0:
            purger.after(current, len(doomed))
        for v in doomed:
            purger.add(v)
        if purger.unreachable:
            break
    purger.flush()
    if purger.unreachable:
        for v in purger.queue + [w[0] for w in purger.waiting.values()]:
            result.errors.append({"key": v.key, "version_id": v.version_id, "code": "NotAttempted",
                                  "message": "S3 unreachable; not attempted"})
    return result


__all__ = ["PurgeResult", "purge_noncurrent"]
