"""S3 operations of the retention sweep: streamed listing, hold inspection, batched deletion.

Costs, because a first sweep over a neglected history may delete 100 000 objects:

* listing: ListObjectsV2 pages of 1000 keys, yielded as they arrive (``ceil(N/1000)``
  requests, memory of one page);
* deletion: DeleteObjects with up to 1000 keys per request in Quiet mode (only errors
  come back), so ``ceil(D/1000)`` requests instead of one DeleteObject per key. Per-key
  ``Errors`` are retried with exponential backoff a bounded number of times (except
  permanent ones such as AccessDenied); whatever still fails is returned to the caller;
* holds are inspected only for objects a plan would delete: one HeadObject (object-lock
  retention and legal hold) when the bucket has object lock enabled (one
  GetObjectLockConfiguration per sweep tells; without it no object can be locked) and
  one GetObjectTagging for the hold tag, in a small thread pool.

Object lock is read from HeadObject's ``ObjectLockMode`` / ``ObjectLockRetainUntilDate``
/ ``ObjectLockLegalHoldStatus``: one request instead of GetObjectRetention plus
GetObjectLegalHold (and moto, the loopback endpoint, does not implement
GetObjectRetention). S3 returns those fields only to a caller with
``s3:GetObjectRetention`` and ``s3:GetObjectLegalHold``: grant both to the sweep's role.

Versioned buckets (production's is: object lock implies versioning). Deleting a key
without a version id, as the sweep does, does not remove data: S3 adds a *delete
marker* as the current version and the backup's bytes become a *noncurrent version*,
still billed and still restorable (delete the marker) until it is removed. Object lock
does not prevent the marker, only the removal of a locked version, which is why holds
are inspected before the sweep. The noncurrent versions are removed either by an S3
lifecycle rule (``NoncurrentVersionExpiration``), or by :func:`purge_noncurrent`, which
the sweep runs when ``retention.purge_noncurrent_after_days`` is set (off by default):

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

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Iterator, Sequence

MAX_BATCH = 1000  # S3's limit of keys per DeleteObjects request
HOLD_TAG = "backupkit-hold"
# Per-key DeleteObjects errors that a retry cannot fix.
PERMANENT_ERRORS = frozenset({"AccessDenied", "InvalidArgument", "InvalidRequest", "MethodNotAllowed",
                              "NoSuchBucket", "NoSuchVersion", "InvalidObjectState"})


# --- request counting -----------------------------------------------------------------


class RequestCounter:
    """HTTP requests sent per S3 operation (retries included), via botocore's ``before-send`` event."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, event_name: str = "", **kwargs: Any) -> None:
        op = event_name.rsplit(".", 1)[-1]
        with self._lock:
            self.counts[op] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


@contextmanager
def counting(client: Any, counter: RequestCounter) -> Iterator[RequestCounter]:
    """Count the requests ``client`` sends while the block runs."""
    events = getattr(getattr(client, "meta", None), "events", None)
    uid = f"backupkit-count-{id(counter)}"
    if events is not None:
        events.register("before-send.s3.*", counter, unique_id=uid)
    try:
        yield counter
    finally:
        if events is not None:
            events.unregister("before-send.s3.*", counter, unique_id=uid)


def error_code(exc: BaseException) -> tuple[str, str]:
    """(code, message) of a botocore exception, for reports."""
    resp = getattr(exc, "response", None) or {}
    err = resp.get("Error") or {}
    code = str(err.get("Code") or type(exc).__name__)
    return code, str(err.get("Message") or exc)


def _is_not_found(exc: BaseException) -> bool:
    resp = getattr(exc, "response", None) or {}
    code = str((resp.get("Error") or {}).get("Code", ""))
    status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound", "NoSuchVersion") or status == 404


# --- listing --------------------------------------------------------------------------


def list_objects(client: Any, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under ``prefix``, one ListObjectsV2 page of 1000 at a time."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": MAX_BATCH}):
        for obj in page.get("Contents", ()):
            yield obj["Key"], int(obj["Size"])


# --- deletion -------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRef:
    key: str
    version_id: str | None = None

    def as_param(self) -> dict:
        return {"Key": self.key, "VersionId": self.version_id} if self.version_id else {"Key": self.key}


@dataclass
class BatchResult:
    """Outcome of one DeleteObjects batch after retries: what still failed and why."""

    failed: dict[ObjectRef, tuple[str, str]] = field(default_factory=dict)  # ref -> (code, message)
    requests: int = 0
    retried: int = 0  # keys sent again
    unreachable: bool = False  # the last attempt failed as a whole (endpoint gone, 5xx after retries)


def delete_batch(client: Any, bucket: str, refs: Sequence[ObjectRef], *, attempts: int = 4,
                 backoff: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> BatchResult:
    """Delete up to 1000 objects (or versions) in one DeleteObjects request, retrying failures.

    A key is retried when S3 listed it in ``Errors`` with a transient code, or when the
    whole request failed (connection refused, 5xx after botocore's own retries); waits
    ``backoff * 2**n`` seconds between attempts. Never raises for S3 errors.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    if len(refs) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} keys per DeleteObjects request, got {len(refs)}")
    result = BatchResult()
    pending = list(dict.fromkeys(refs))
    for attempt in range(max(1, attempts)):
        if not pending:
            break
        if attempt:
            result.retried += len(pending)
            sleep(backoff * 2 ** (attempt - 1))
        result.requests += 1
        try:
            resp = client.delete_objects(Bucket=bucket, Delete={"Objects": [r.as_param() for r in pending],
                                                                "Quiet": True})
        except (ClientError, BotoCoreError) as exc:
            result.unreachable = True
            code = error_code(exc)
            for r in pending:
                result.failed[r] = code
            continue
        result.unreachable = False
        errors: dict[str, list[dict]] = {}
        for e in resp.get("Errors") or ():
            errors.setdefault(e.get("Key", ""), []).append(e)
        retry = []
        for r in pending:
            # Some S3 implementations omit VersionId in Errors: then any error of the key counts.
            match = next((e for e in errors.get(r.key, ())
                          if e.get("VersionId") in (None, "", r.version_id)), None)
            if match is None:
                result.failed.pop(r, None)
                continue
            code = str(match.get("Code") or "Unknown")
            result.failed[r] = (code, str(match.get("Message") or ""))
            if code not in PERMANENT_ERRORS:
                retry.append(r)
        pending = retry
    return result


# --- holds ----------------------------------------------------------------------------


def object_lock_enabled(client: Any, bucket: str) -> bool:
    """Whether objects of ``bucket`` can be under retention or legal hold.

    Only a bucket with object lock enabled can hold locked objects; when the answer is
    anything but a clear "no configuration" (e.g. AccessDenied), assume it can.
    """
    from botocore.exceptions import ClientError

    try:
        resp = client.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        if error_code(exc)[0] == "ObjectLockConfigurationNotFoundError":
            return False
        return True
    return (resp.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") == "Enabled"


def hold_reason(client: Any, bucket: str, key: str, *, now: datetime, check_lock: bool,
                hold_tag: str | None, version_id: str | None = None) -> str | None:
    """Why the object (version) must not be deleted, or None. Raises on S3 errors other than 404.

    Holds: object-lock retention with a retain-until date after ``now`` (either mode:
    governance could be bypassed, but retention never does), legal hold ON, or the tag
    ``hold_tag`` (its value is the reason, e.g. a case number).
    """
    from botocore.exceptions import ClientError

    params = {"Bucket": bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}
    reasons = []
    try:
        if check_lock:
            head = client.head_object(**params)
            if head.get("ObjectLockLegalHoldStatus") == "ON":
                reasons.append("S3 legal hold")
            until = head.get("ObjectLockRetainUntilDate")
            if until is not None and until > now:
                reasons.append(f"S3 object lock {head.get('ObjectLockMode') or ''} retention until "
                               f"{until.isoformat()}".replace("  ", " "))
        if hold_tag:
            for tag in client.get_object_tagging(**params).get("TagSet") or ():
                if tag.get("Key") == hold_tag:
                    reasons.append(f"tagged {hold_tag}={tag.get('Value', '')}")
    except ClientError as exc:
        if _is_not_found(exc):
            return None  # gone since the listing: nothing left to protect
        raise
    return "; ".join(reasons) or None


def inspect_holds(client: Any, bucket: str, keys: Iterable[str], *, now: datetime, check_lock: bool,
                  hold_tag: str | None, workers: int = 8) -> dict[str, tuple[str | None, str | None]]:
    """key -> (hold reason, error) for the keys that are held or could not be inspected.

    Inspected in a thread pool, 1000 keys at a time (bounded memory however many keys);
    keys without a hold are left out of the answer.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    if not (check_lock or hold_tag):
        return {}

    def one(key: str) -> tuple[str | None, str | None]:
        try:
            return hold_reason(client, bucket, key, now=now, check_lock=check_lock, hold_tag=hold_tag), None
        except (ClientError, BotoCoreError) as exc:
            code, msg = error_code(exc)
            return None, f"{code}: {msg}"

    found: dict[str, tuple[str | None, str | None]] = {}
    it = iter(keys)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while batch := [k for _, k in zip(range(MAX_BATCH), it)]:
            for key, (reason, err) in zip(batch, pool.map(one, batch)):
                if reason or err:
                    found[key] = (reason, err)
    return found


# --- noncurrent versions --------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    last_modified: datetime
    is_latest: bool
    is_marker: bool
    size: int = 0


def iter_version_groups(client: Any, bucket: str, prefix: str) -> Iterator[list[Version]]:
    """Every key's versions and delete markers, newest first, one key at a time (ListObjectVersions, paged)."""
    paginator = client.get_paginator("list_object_versions")
    group: list[Version] = []

    def ordered(g: list[Version]) -> list[Version]:
        return sorted(g, key=lambda v: (not v.is_latest, -v.last_modified.timestamp()))

    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": MAX_BATCH}):
        entries = [Version(v["Key"], v.get("VersionId") or "null", v["LastModified"], bool(v.get("IsLatest")),
                           False, int(v.get("Size", 0))) for v in page.get("Versions") or ()]
        entries += [Version(m["Key"], m.get("VersionId") or "null", m["LastModified"], bool(m.get("IsLatest")),
                            True) for m in page.get("DeleteMarkers") or ()]
        entries.sort(key=lambda v: v.key)  # stable: each list keeps S3's newest-first order
        for v in entries:
            if group and v.key != group[0].key:
                yield ordered(group)
                group = []
            group.append(v)
    if group:
        yield ordered(group)


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

    def __init__(self, client: Any, bucket: str, result: PurgeResult, *, batch_size: int, attempts: int,
                 backoff: float, sleep: Callable[[float], None], dry_run: bool,
                 on_intent: Callable[[list[Version]], None], on_done: Callable[[list[Version], dict], None]):
        self.client, self.bucket, self.result = client, bucket, result
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
                res = delete_batch(self.client, self.bucket, [ObjectRef(v.key, v.version_id) for v in batch],
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


def purge_noncurrent(client: Any, bucket: str, prefix: str, *, older_than: timedelta, now: datetime,
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
    from botocore.exceptions import BotoCoreError, ClientError

    result = PurgeResult()
    purger = _Purger(client, bucket, result, batch_size=min(batch_size, MAX_BATCH), attempts=attempts,
                     backoff=backoff, sleep=sleep, dry_run=dry_run, on_intent=on_intent, on_done=on_done)
    for group in iter_version_groups(client, bucket, prefix):
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
                    reason = hold_reason(client, bucket, v.key, now=now, check_lock=check_lock, hold_tag=hold_tag,
                                         version_id=v.version_id)
                except (ClientError, BotoCoreError) as exc:
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


__all__ = ["MAX_BATCH", "HOLD_TAG", "ObjectRef", "BatchResult", "RequestCounter", "counting", "list_objects",
           "delete_batch", "object_lock_enabled", "hold_reason", "inspect_holds", "Version",
           "iter_version_groups", "PurgeResult", "purge_noncurrent", "error_code"]
