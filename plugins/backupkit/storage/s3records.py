"""What the object store returns: listing entries, versions, batch outcomes, stored checksums.

Plain values with no boto3 in them, so the catalog, retention and the checks can be tested
on them directly. :func:`stored_checksums` normalises the ways S3 implementations report a
checksum (AWS's ``VALUE-N`` composite suffix, moto's bare value, GetObjectAttributes' part count).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

_SUFFIX = re.compile(r"^(?P<value>[A-Za-z0-9+/=]+)-(?P<parts>\d+)$")
_ETAG_PARTS = re.compile(r"-(\d+)\"?$")


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    """One current object of a listing."""

    key: str
    size: int
    last_modified: datetime | None = None
    etag: str | None = None
    storage_class: str = "STANDARD"


@dataclass(frozen=True)
class Version:
    """One object version or delete marker of a version listing."""

    key: str
    version_id: str
    last_modified: datetime
    is_latest: bool
    is_marker: bool
    size: int = 0
    etag: str | None = None
    storage_class: str = "STANDARD"


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


@dataclass(frozen=True)
class StoredChecksum:
    """One checksum S3 reports for an object, normalised (part-count suffix split off)."""

    algorithm: str  # "SHA256", "CRC64NVME", "CRC32", "CRC32C", "MD5" (single-part ETag), ...
    value: str  # base64 (hex for MD5), without the "-N" suffix
    composite: bool  # True: a checksum of the part checksums
    parts: int | None  # part count when known (suffix, ETag, GetObjectAttributes)


def stored_checksums(head: dict, attrs: dict | None = None) -> dict[str, StoredChecksum]:
    """The checksums S3 reports in a HeadObject (checksum mode) and GetObjectAttributes answer.

    AWS returns a multipart SHA-256 as ``VALUE-N`` with ``ChecksumType: COMPOSITE``; some
    S3 implementations (moto) drop the suffix and the type from HeadObject, so the part
    count is also taken from a multipart ETag (``"...-N"``) and from GetObjectAttributes.
    """
    attrs = attrs or {}
    sources = [head, attrs.get("Checksum") or {}]
    ctype = next((s.get("ChecksumType") for s in sources if s.get("ChecksumType")), None)
    parts = etag_parts(str(head.get("ETag") or attrs.get("ETag") or ""))
    total = (attrs.get("ObjectParts") or {}).get("TotalPartsCount")
    if total:
        parts = int(total)
    found: dict[str, StoredChecksum] = {}
    for src in sources:
        for name, raw in src.items():
            if not name.startswith("Checksum") or name == "ChecksumType" or not isinstance(raw, str):
                continue
            algo = name[len("Checksum"):]
            value, n = raw, parts
            sm = _SUFFIX.match(raw)
            if sm:
                value, n = sm.group("value"), int(sm.group("parts"))
            if algo == "CRC64NVME":
                composite = False  # always a full-object checksum
            elif ctype:
                composite = ctype == "COMPOSITE"
            else:
                composite = n is not None
            # HeadObject's answer comes first; a later one only adds an explicit part count.
            if algo not in found or (sm and found[algo].parts is None):
                found[algo] = StoredChecksum(algo, value, composite, n)
    return found


def etag_parts(etag: str) -> int | None:
    """The part count of a multipart ETag (``"hex-N"``), None for a single-part one."""
    m = _ETAG_PARTS.search(etag)
    return int(m.group(1)) if m else None


# --- request counting -------------------------------------------------------------------------


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
