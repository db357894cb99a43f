"""The object store: the one module of the product that talks to the S3 API.

Every S3 request the jobs make goes through a :class:`Bucket`, so paging, "404 means
None", error classification, the client's retry and checksum settings and request
counting are written once (as an Airflow provider hook hides them for its system).
boto3 and botocore are imported here, in :mod:`~backupkit.storage.s3client` (the client and its
errors) and in the sandbox only; the values returned live in :mod:`~backupkit.storage.s3records`.

Costs, because a first sweep over a neglected history may touch 100 000 objects:

* listing: ListObjectsV2 / ListObjectVersions pages of 1000 keys, yielded as they
  arrive (``ceil(N/1000)`` requests, memory of one page);
* deletion: DeleteObjects with up to 1000 keys per request in Quiet mode (only errors
  come back); per-key ``Errors`` are retried with exponential backoff a bounded number
  of times, except permanent ones such as AccessDenied;
* holds: object-lock retention and legal hold from HeadObject's ``ObjectLock*`` fields
  (one request instead of GetObjectRetention plus GetObjectLegalHold; S3 returns them
  only to a caller with ``s3:GetObjectRetention`` and ``s3:GetObjectLegalHold``), the
  hold tag from GetObjectTagging, inspected in a small thread pool. Retention sweeps do
  not ask per object by default: they read the hold records under ``holds/`` (one
  listing; :mod:`backupkit.retention.holds`).

Versioned buckets (production's is: object lock implies versioning): deleting a key
without a version id adds a *delete marker*; the bytes stay as a noncurrent version
until a lifecycle rule or :mod:`backupkit.retention.sweep`'s purge removes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from backupkit.storage.s3client import (  # noqa: F401  (re-exported: the object store's vocabulary)
    NOT_FOUND_CODES,
    PERMANENT_ERRORS,
    REGION,
    client_errors,
    describe_error,
    error_code,
    http_status,
    is_not_found,
    s3_client,
)
from backupkit.storage.s3records import (
    BatchResult,
    ObjectInfo,
    ObjectRef,
    RequestCounter,
    StoredChecksum,
    Version,
    etag_parts,
    stored_checksums,
)

MAX_BATCH = 1000  # S3's limit of keys per DeleteObjects request and per listing page
# Requests in flight for many small objects (a base backup is a thousand files): one at a time
# spends its time on round trips. Below botocore's default pool of 10 connections.
TRANSFER_WORKERS = 8
CHUNK = 1 << 20  # streamed reads: memory stays at about this much
HOLD_TAG = "backupkit-hold"
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})  # must be restored before they can be read


# --- the bucket ---------------------------------------------------------------------------------


class Bucket:
    """One S3 bucket through one boto3 client: every S3 call of the product is a method here.

    :param client: a boto3 S3 client (:func:`s3_client`, or an Airflow ``S3Hook``'s connection)
    :param name: the bucket name
    """

    def __init__(self, client: Any, name: str):
        self.client = client
        self.name = name
        self._exists: bool | None = None

    def __repr__(self) -> str:
        return f"Bucket({self.name!r})"

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    @contextmanager
    def counting(self, counter: RequestCounter) -> Iterator[RequestCounter]:
        """Count the requests sent while the block runs."""
        events = getattr(getattr(self.client, "meta", None), "events", None)
        uid = f"backupkit-count-{id(counter)}"
        if events is not None:
            events.register("before-send.s3.*", counter, unique_id=uid)
        try:
            yield counter
        finally:
            if events is not None:
                events.unregister("before-send.s3.*", counter, unique_id=uid)

    def exists(self) -> bool:
        """Whether the bucket itself exists (HeadBucket, asked once): HEAD of a missing object and
        of an object in a missing bucket both answer a bare 404, and the messages must differ."""
        if self._exists is None:
            try:
                self.client.head_bucket(Bucket=self.name)
                self._exists = True
            except client_errors()[0] as exc:
                if http_status(exc) != 404 and error_code(exc)[0] not in ("404", "NoSuchBucket"):
                    raise
                self._exists = False
        return self._exists

    def missing(self, key: str) -> str:
        """Why ``key`` is not there, in words: no such object, or no such bucket."""
        if not self.exists():
            return f"{self.uri(key)}: no such bucket ({self.name})"
        return f"{self.uri(key)} missing in S3"

    # -- listings -------------------------------------------------------------------------------
    def objects(self, prefix: str = "", *, delimiter: str | None = None,
                page_size: int = MAX_BATCH) -> Iterator[ObjectInfo]:
        """Every current object under ``prefix``, one ListObjectsV2 page at a time."""
        kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix,
                                  "PaginationConfig": {"PageSize": min(page_size, MAX_BATCH)}}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", ()):
                yield ObjectInfo(obj["Key"], int(obj["Size"]), obj.get("LastModified"), obj.get("ETag"),
                                 obj.get("StorageClass") or "STANDARD")

    def versions(self, prefix: str = "", *, page_size: int = MAX_BATCH) -> Iterator[Version]:
        """Every version and delete marker under ``prefix`` (ListObjectVersions, paged, streamed)."""
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.name, Prefix=prefix,
                                       PaginationConfig={"PageSize": min(page_size, MAX_BATCH)}):
            entries = [Version(v["Key"], v.get("VersionId") or "null", v["LastModified"], bool(v.get("IsLatest")),
                               False, int(v.get("Size", 0)), v.get("ETag"), v.get("StorageClass") or "STANDARD")
                       for v in page.get("Versions") or ()]
            entries += [Version(m["Key"], m.get("VersionId") or "null", m["LastModified"], bool(m.get("IsLatest")),
                                True) for m in page.get("DeleteMarkers") or ()]
            entries.sort(key=lambda v: v.key)  # stable: each key keeps S3's newest-first order
            yield from entries

    def version_groups(self, prefix: str = "") -> Iterator[list[Version]]:
        """Every key's versions and delete markers, current first then newest first, one key at a time."""
        group: list[Version] = []

        def ordered(g: list[Version]) -> list[Version]:
            return sorted(g, key=lambda v: (not v.is_latest, -v.last_modified.timestamp()))

        for v in self.versions(prefix):
            if group and v.key != group[0].key:
                yield ordered(group)
                group = []
            group.append(v)
        if group:
            yield ordered(group)

    # -- one object -----------------------------------------------------------------------------
    def head(self, key: str, *, version_id: str | None = None, checksums: bool = False,
             part_number: int | None = None) -> dict | None:
        """HeadObject, or None when the object (version) does not exist. Other errors raise."""
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        if checksums:
            kwargs["ChecksumMode"] = "ENABLED"
        if part_number:
            kwargs["PartNumber"] = part_number
        try:
            return self.client.head_object(**kwargs)
        except client_errors()[0] as exc:
            if is_not_found(exc):
                return None
            raise

    def heads(self, keys: Sequence[str], *, checksums: bool = False,
              workers: int = TRANSFER_WORKERS) -> dict[str, dict | None | Exception]:
        """:meth:`head` of each key, ``workers`` at a time: key -> the answer, None (absent) or the
        client error it raised (the caller judges errors per key, as it would one at a time)."""
        def one(key: str) -> dict | None | Exception:
            try:
                return self.head(key, checksums=checksums)
            except client_errors() as exc:
                return exc
        return dict(zip(keys, pooled(one, keys, workers)))

    def attributes(self, key: str, attributes: Sequence[str], *, version_id: str | None = None,
                   max_parts: int | None = None, part_marker: int | None = None) -> dict:
        """GetObjectAttributes (``Checksum``, ``ObjectParts``, ``ObjectSize``, ``ETag``, ...)."""
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key, "ObjectAttributes": list(attributes)}
        if version_id:
            kwargs["VersionId"] = version_id
        if max_parts:
            kwargs["MaxParts"] = max_parts
        if part_marker:
            kwargs["PartNumberMarker"] = part_marker
        return self.client.get_object_attributes(**kwargs)

    def part_layout(self, key: str, object_size: int, parts_hint: int | None = None, *,
                    version_id: str | None = None) -> tuple[list[int], list[str | None], str]:
        """Part sizes (and per-part SHA-256 checksums where S3 lists them) of a multipart object.

        Prefers GetObjectAttributes ``ObjectParts`` (paginated); falls back to the size of
        part 1 and ``PartsCount`` from ``HeadObject(PartNumber=1)``, taking parts as uniform
        except the last (how boto3, the AWS CLI and most uploaders split), and to a HeadObject
        of every part when that does not add up. Returns (sizes, checksums, how).
        """
        sizes: list[int] = []
        sums: list[str | None] = []
        marker = 0
        while True:
            resp = self.attributes(key, ["ObjectParts"], version_id=version_id, max_parts=1000,
                                   part_marker=marker or None)
            obj_parts = resp.get("ObjectParts") or {}
            for p in obj_parts.get("Parts") or ():
                sizes.append(int(p["Size"]))
                sums.append(p.get("ChecksumSHA256"))
            if not obj_parts.get("IsTruncated"):
                break
            marker = int(obj_parts["NextPartNumberMarker"])
        if sizes and sum(sizes) == object_size:
            return sizes, sums, "listed by GetObjectAttributes"
        head1 = self.head(key, version_id=version_id, part_number=1) or {}
        count = int(head1.get("PartsCount") or parts_hint or 1)
        first = int(head1.get("ContentLength", 0))
        last = object_size - first * (count - 1)
        if first > 0 and 0 < last <= first:
            return [first] * (count - 1) + [last], [None] * count, "uniform parts from HeadObject(PartNumber=1)"
        sizes = self.part_sizes(key, count, version_id=version_id)
        if sum(sizes) != object_size:
            raise ValueError(f"cannot derive the part layout: {count} parts of {sum(sizes)} bytes, "
                             f"object is {object_size} bytes")
        return sizes, [None] * count, "HeadObject of every part"

    def part_sizes(self, key: str, count: int, *, version_id: str | None = None) -> list[int]:
        """Every part's size, one ``HeadObject(PartNumber=n)`` each (no body is sent)."""
        return [int((self.head(key, version_id=version_id, part_number=n) or {}).get("ContentLength", 0))
                for n in range(1, count + 1)]

    def parts_count(self, key: str, *, version_id: str | None = None) -> int:
        """How many parts the object was uploaded in (1 for a single-part upload)."""
        return int((self.head(key, version_id=version_id, part_number=1) or {}).get("PartsCount") or 1)

    def body(self, key: str, *, version_id: str | None = None, if_match: str | None = None,
             byte_range: str | None = None) -> Any:
        """The object's streaming body (``read``, ``iter_chunks``; the caller closes it)."""
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        if if_match:
            kwargs["IfMatch"] = if_match
        if byte_range:
            kwargs["Range"] = byte_range
        return self.client.get_object(**kwargs)["Body"]

    def get(self, key: str, *, version_id: str | None = None) -> dict:
        """GetObject's whole answer (metadata and ``Body``) for callers that need both."""
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        return self.client.get_object(**kwargs)

    def read_small(self, key: str, *, limit: int = 1 << 20, version_id: str | None = None) -> bytes | None:
        """The whole body of a small object (a sidecar, a manifest), None when absent.

        Refuses an object larger than ``limit`` without reading it: a hostile "sidecar" of
        gigabytes is a verdict, not a download.
        """
        head = self.head(key, version_id=version_id)
        if head is None:
            return None
        if int(head.get("ContentLength", 0)) > limit:
            raise ValueError(f"{self.uri(key)} is {head['ContentLength']} bytes, more than the {limit} expected")
        body = self.body(key, version_id=version_id, if_match=head.get("ETag"))
        try:
            return body.read(limit + 1)[:limit]
        finally:
            body.close()

    def download(self, key: str, dest: Path, *, version_id: str | None = None) -> None:
        extra = {"VersionId": version_id} if version_id else None
        self.client.download_file(self.name, key, str(dest), ExtraArgs=extra)

    def put(self, key: str, data: bytes, *, content_type: str | None = None, sha256: bool = True,
            **extra: Any) -> dict:
        """PutObject of ``data`` (S3 stores its SHA-256 unless ``sha256`` is false)."""
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key, "Body": data, **extra}
        if content_type:
            kwargs["ContentType"] = content_type
        if sha256:
            kwargs["ChecksumAlgorithm"] = "SHA256"
        return self.client.put_object(**kwargs)

    def upload(self, path: Path, key: str, **extra: Any) -> None:
        """Upload a file (multipart when large) with S3's SHA-256 checksum."""
        self.client.upload_file(str(path), self.name, key, ExtraArgs={"ChecksumAlgorithm": "SHA256", **extra})

    def upload_many(self, items: Sequence[tuple[Path, str]], *, workers: int = TRANSFER_WORKERS) -> int:
        """:meth:`upload` of each (file, key), ``workers`` at a time; how many. The first failure
        raises once the uploads under way end (the rest are not started)."""
        pooled(lambda item: self.upload(*item), items, workers)
        return len(items)

    # -- deletion --------------------------------------------------------------------------------
    def delete_batch(self, refs: Sequence[ObjectRef], *, attempts: int = 4, backoff: float = 0.5,
                     sleep: Callable[[float], None] = time.sleep) -> BatchResult:
        """Delete up to 1000 objects (or versions) in one DeleteObjects request, retrying failures.

        A key is retried when S3 listed it in ``Errors`` with a transient code, or when the
        whole request failed (connection refused, 5xx after botocore's own retries); waits
        ``backoff * 2**n`` seconds between attempts. Never raises for S3 errors.
        """
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
                resp = self.client.delete_objects(Bucket=self.name, Delete={
                    "Objects": [r.as_param() for r in pending], "Quiet": True})
            except client_errors() as exc:
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

    def delete_version(self, key: str, version_id: str, *, bypass_governance: bool = False) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key, "VersionId": version_id}
        if bypass_governance:
            kwargs["BypassGovernanceRetention"] = True
        self.client.delete_object(**kwargs)

    # -- object lock, holds, tags ------------------------------------------------------------------
    def lock_configuration(self) -> dict | None:
        """The bucket's ObjectLockConfiguration, None when it has none. Other errors raise."""
        try:
            return self.client.get_object_lock_configuration(Bucket=self.name).get("ObjectLockConfiguration") or {}
        except client_errors()[0] as exc:
            if error_code(exc)[0] == "ObjectLockConfigurationNotFoundError":
                return None
            raise

    def object_lock_enabled(self) -> bool:
        """Whether objects of the bucket can be under retention or legal hold.

        When the answer is anything but a clear "no configuration" (e.g. AccessDenied),
        assume they can: a sweep then inspects holds rather than guess.
        """
        try:
            conf = self.lock_configuration()
        except client_errors():
            return True
        return conf is not None and conf.get("ObjectLockEnabled") == "Enabled"

    def put_retention(self, key: str, *, mode: str, until: datetime, version_id: str | None = None,
                      bypass_governance: bool = False) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key,
                                  "Retention": {"Mode": mode, "RetainUntilDate": until}}
        if version_id:
            kwargs["VersionId"] = version_id
        if bypass_governance:
            kwargs["BypassGovernanceRetention"] = True
        self.client.put_object_retention(**kwargs)

    def put_legal_hold(self, key: str, on: bool, *, version_id: str | None = None) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key, "LegalHold": {"Status": "ON" if on else "OFF"}}
        if version_id:
            kwargs["VersionId"] = version_id
        self.client.put_object_legal_hold(**kwargs)

    def put_tags(self, key: str, tags: dict[str, str], *, version_id: str | None = None) -> None:
        """Replace the object's tag set (PutObjectTagging; an empty dict: DeleteObjectTagging)."""
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        if not tags:
            self.client.delete_object_tagging(**kwargs)
            return
        self.client.put_object_tagging(**kwargs, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})

    def get_small(self, key: str, limit: int = 64 << 10) -> bytes | None:
        """The first ``limit`` bytes of an object in one ranged GetObject, None when absent."""
        try:
            body = self.body(key, byte_range=f"bytes=0-{limit - 1}")
        except client_errors()[0] as exc:
            if is_not_found(exc):
                return None
            raise
        try:
            return body.read(limit)
        finally:
            body.close()

    def tags(self, key: str, *, version_id: str | None = None) -> dict[str, str]:
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        return {t.get("Key", ""): t.get("Value", "") for t in self.client.get_object_tagging(**kwargs).get("TagSet") or ()}

    def hold_reason(self, key: str, *, now: datetime, check_lock: bool, hold_tag: str | None,
                    version_id: str | None = None, retention: bool = True) -> str | None:
        """Why the object (version) must not be deleted, or None. Raises on S3 errors other than 404.

        Holds: object-lock retention with a retain-until date after ``now`` (either mode:
        governance could be bypassed, but retention never does; ``retention=False`` leaves
        it out, for callers whose deletion only adds a delete marker, which S3 allows over a
        locked version), legal hold ON, or the tag ``hold_tag`` (its value is the reason,
        e.g. a case number).
        """
        reasons = []
        try:
            if check_lock:
                head = self.head(key, version_id=version_id)
                if head is None:
                    return None  # gone since the listing: nothing left to protect
                if head.get("ObjectLockLegalHoldStatus") == "ON":
                    reasons.append("S3 legal hold")
                until = head.get("ObjectLockRetainUntilDate")
                if retention and until is not None and until > now:
                    reasons.append(f"S3 object lock {head.get('ObjectLockMode') or ''} retention until "
                                   f"{until.isoformat()}".replace("  ", " "))
            if hold_tag:
                tags = self.tags(key, version_id=version_id)
                if hold_tag in tags:
                    reasons.append(f"tagged {hold_tag}={tags[hold_tag]}")
        except client_errors()[0] as exc:
            if is_not_found(exc):
                return None
            raise
        return "; ".join(reasons) or None

    def inspect_holds(self, keys: Iterable[str], *, now: datetime, check_lock: bool, hold_tag: str | None,
                      workers: int = 8, retention: bool = True) -> dict[str, tuple[str | None, str | None]]:
        """key -> (hold reason, error) for the keys that are held or could not be inspected.

        Inspected in a thread pool, 1000 keys at a time (bounded memory however many keys);
        keys without a hold are left out of the answer.
        """
        if not (check_lock or hold_tag):
            return {}

        def one(key: str) -> tuple[str | None, str | None]:
            try:
                return self.hold_reason(key, now=now, check_lock=check_lock, hold_tag=hold_tag,
                                        retention=retention), None
            except client_errors() as exc:
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

    # -- bucket settings (the audit and the weekly report) --------------------------------------------
    _SETTINGS = {
        "public_access_block": "get_public_access_block",
        "ownership_controls": "get_bucket_ownership_controls",
        "versioning": "get_bucket_versioning",
        "object_lock": "get_object_lock_configuration",
        "acl": "get_bucket_acl",
        "policy_status": "get_bucket_policy_status",
        "policy": "get_bucket_policy",
        "replication": "get_bucket_replication",
        "encryption": "get_bucket_encryption",
        "location": "get_bucket_location",
    }

    def setting(self, name: str) -> tuple[dict | None, tuple[str, str] | None]:
        """One bucket setting as (answer, None), or (None, (code, message)) when S3 refused it.

        "Not configured" is an error code here (``NoSuchPublicAccessBlockConfiguration``,
        ``ServerSideEncryptionConfigurationNotFoundError``, ...): the caller decides what it means.
        """
        method = getattr(self.client, self._SETTINGS[name])
        try:
            return method(Bucket=self.name), None
        except client_errors() as exc:
            return None, error_code(exc)

    def object_acl(self, key: str) -> list[dict]:
        return self.client.get_object_acl(Bucket=self.name, Key=key).get("Grants", [])


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"S3 URI needs a bucket and a key: {uri!r}")
    return bucket, key


def pooled(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> list[Any]:
    """``[fn(item) for item in items]`` in a thread pool; on the first exception the items not yet
    started are cancelled and it is raised."""
    if len(items) <= 1 or workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


__all__ = ["s3_client", "client_errors", "REGION", "MAX_BATCH", "CHUNK", "HOLD_TAG", "ARCHIVE_CLASSES",
           "error_code", "is_not_found", "describe_error", "ObjectInfo", "Version", "ObjectRef", "BatchResult",
           "StoredChecksum", "stored_checksums", "etag_parts", "RequestCounter", "Bucket", "split_s3_uri", "pooled",
           "TRANSFER_WORKERS"]
