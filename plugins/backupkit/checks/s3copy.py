"""Is the S3 copy of a backup there, the same size, and the same bytes?

The bytes are compared through the checksum S3 stored at upload time (HeadObject /
GetObjectAttributes with checksum mode), so checking a 1 GB copy costs a few small
requests instead of a 1 GB download. Which comparison applies depends on how the
object was uploaded:

* single-part upload with SHA-256: S3's value is the SHA-256 of the object, compared
  with the local SHA-256 (sidecar or state store) without reading either side;
* multipart upload with SHA-256: S3's value is a *composite*, the SHA-256 of the
  concatenated raw SHA-256 digests of the parts, shown with a ``-N`` part-count suffix.
  The same composite is computed from the local file (one streamed read) using the part
  layout S3 reports (GetObjectAttributes ``ObjectParts``; or, where an S3 implementation
  omits it, the size of part 1 and the part count from ``HeadObject(PartNumber=1)``);
* CRC64NVME (a full-object checksum, whatever the part layout): computed locally when
  ``awscrt`` (botocore's CRT extra) is installed; otherwise the next option applies;
* no usable stored checksum: the object is streamed (1 MiB chunks) and hashed.

:class:`S3CopyReport` counts the object bytes downloaded, so callers (and the
benchmark) can show that a stored-checksum check read 0 bytes of the object.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from backupkit.results import CheckResult

CHUNK = 1 << 20  # streamed reads, local and remote: memory stays at about this much
_SUFFIX = re.compile(r"^(?P<value>[A-Za-z0-9+/=]+)-(?P<parts>\d+)$")
_ETAG_PARTS = re.compile(r"-(\d+)\"?$")


@dataclass(frozen=True)
class StoredChecksum:
    """One checksum S3 reports for an object, normalised (part-count suffix split off)."""

    algorithm: str  # "SHA256", "CRC64NVME", "CRC32", ...
    value: str  # base64, without the "-N" suffix
    composite: bool  # True: a checksum of the part checksums
    parts: int | None  # part count when known (suffix, ETag, GetObjectAttributes)


@dataclass(frozen=True)
class S3CopyReport:
    results: tuple[CheckResult, ...]
    body_bytes_read: int = 0  # bytes of the object body downloaded from S3
    local_bytes_read: int = 0  # bytes of the local file read to compute a checksum
    method: str = "none"  # how the bytes were compared (see module doc)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def _is_not_found(exc: Exception) -> bool:
    resp = getattr(exc, "response", None) or {}
    code = str(resp.get("Error", {}).get("Code", ""))
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


def _b64_of_hex(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def stored_checksums(head: dict, attrs: dict | None = None) -> dict[str, StoredChecksum]:
    """The checksums S3 reports in a HeadObject (checksum mode) and GetObjectAttributes answer.

    AWS returns a multipart SHA-256 as ``VALUE-N`` with ``ChecksumType: COMPOSITE``; some
    S3 implementations (moto) drop the suffix and the type from HeadObject, so the part
    count is also taken from a multipart ETag (``"...-N"``) and from GetObjectAttributes.
    """
    attrs = attrs or {}
    sources = [head, attrs.get("Checksum") or {}]
    ctype = next((s.get("ChecksumType") for s in sources if s.get("ChecksumType")), None)
    parts = None
    m = _ETAG_PARTS.search(str(head.get("ETag") or attrs.get("ETag") or ""))
    if m:
        parts = int(m.group(1))
    total = (attrs.get("ObjectParts") or {}).get("TotalPartsCount")
    if total:
        parts = int(total)
    found: dict[str, StoredChecksum] = {}
    for src in sources:
        for field, raw in src.items():
            if not field.startswith("Checksum") or field == "ChecksumType" or not isinstance(raw, str):
                continue
            algo = field[len("Checksum"):]
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


def part_layout(client: Any, bucket: str, key: str, object_size: int,
                parts_hint: int | None = None) -> tuple[list[int], list[str | None], str]:
    """Part sizes (and per-part SHA-256 checksums where S3 lists them) of a multipart object.

    Prefers GetObjectAttributes ``ObjectParts`` (paginated); falls back to the size of part 1
    and ``PartsCount`` from ``HeadObject(PartNumber=1)``, taking parts as uniform except the
    last (how boto3, the AWS CLI and most uploaders split). Returns (sizes, checksums, how).
    """
    sizes: list[int] = []
    sums: list[str | None] = []
    marker = 0
    while True:
        kwargs = dict(Bucket=bucket, Key=key, ObjectAttributes=["ObjectParts"], MaxParts=1000)
        if marker:
            kwargs["PartNumberMarker"] = marker
        resp = client.get_object_attributes(**kwargs)
        obj_parts = resp.get("ObjectParts") or {}
        for p in obj_parts.get("Parts") or ():
            sizes.append(int(p["Size"]))
            sums.append(p.get("ChecksumSHA256"))
        if not obj_parts.get("IsTruncated"):
            break
        marker = int(obj_parts["NextPartNumberMarker"])
    if sizes and sum(sizes) == object_size:
        return sizes, sums, "listed by GetObjectAttributes"
    head1 = client.head_object(Bucket=bucket, Key=key, PartNumber=1)
    count = int(head1.get("PartsCount") or parts_hint or 1)
    first = int(head1["ContentLength"])
    last = object_size - first * (count - 1)
    if first > 0 and 0 < last <= first:
        return [first] * (count - 1) + [last], [None] * count, "uniform parts from HeadObject(PartNumber=1)"
    sizes = exact_part_sizes(client, bucket, key, count)
    if sum(sizes) != object_size:
        raise ValueError(f"cannot derive the part layout: {count} parts of {sum(sizes)} bytes, "
                         f"object is {object_size} bytes")
    return sizes, [None] * count, "HeadObject of every part"


def exact_part_sizes(client: Any, bucket: str, key: str, count: int) -> list[int]:
    """Every part's size, one ``HeadObject(PartNumber=n)`` each (no body is sent)."""
    return [int(client.head_object(Bucket=bucket, Key=key, PartNumber=n)["ContentLength"])
            for n in range(1, count + 1)]


def composite_sha256(path: Path, part_sizes: Sequence[int]) -> tuple[str, list[str], int]:
    """S3's composite SHA-256 of ``path`` split into ``part_sizes``, in one streamed read.

    Returns (base64 composite without suffix, base64 per-part digests, bytes read).
    """
    outer = hashlib.sha256()
    part_b64: list[str] = []
    read = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        for size in part_sizes:
            h = hashlib.sha256()
            left = size
            while left:
                n = f.readinto(view[:min(CHUNK, left)])
                if not n:
                    raise ValueError(f"{path} is shorter than the S3 part layout ({sum(part_sizes)} bytes)")
                h.update(view[:n])
                left -= n
                read += n
            digest = h.digest()
            outer.update(digest)
            part_b64.append(base64.b64encode(digest).decode())
        if f.read(1):
            raise ValueError(f"{path} is longer than the S3 part layout ({sum(part_sizes)} bytes)")
    return base64.b64encode(outer.digest()).decode(), part_b64, read


def _sha256_file(path: Path) -> tuple[str, int]:
    h, read = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            read += len(chunk)
    return h.hexdigest(), read


def _crc64nvme_file(path: Path) -> tuple[str, int] | None:
    """Base64 CRC64NVME of ``path`` via awscrt, or None when awscrt is not installed."""
    try:
        from awscrt.checksums import crc64nvme
    except ImportError:
        return None
    crc, read = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = crc64nvme(chunk, crc)
            read += len(chunk)
    return base64.b64encode(crc.to_bytes(8, "big")).decode(), read


def _layout_key(local_sha256: str, sizes: Sequence[int]) -> str:
    sig = hashlib.sha256(",".join(map(str, sizes)).encode()).hexdigest()[:16]
    return f"composite-sha256:{local_sha256}:{sig}"


class _Comparison:
    """Accumulates how one checksum comparison went (bytes read, method)."""

    def __init__(self) -> None:
        self.body = 0
        self.local = 0
        self.method = "none"


def s3_copy_report(client: Any, bucket: str, key: str, *, local_size: int, local_sha256: str | None,
                   local_path: Path | None, artifact: str,
                   composite_cache: MutableMapping[str, str] | None = None,
                   allow_download: bool = True) -> S3CopyReport:
    """Check the S3 copy ``s3://bucket/key`` of a local backup; see the module doc.

    ``local_sha256`` (hex) avoids reading the local file for single-part copies;
    ``local_path`` is read only when S3's checksum is a composite or CRC64NVME, or when
    no SHA-256 is known. ``composite_cache`` remembers composites that matched S3 (keyed
    by local SHA-256 and part layout), so a daily run does not re-read old files.
    ``allow_download=False`` never downloads the object (a cheap inventory).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    uri = f"s3://{bucket}/{key}"
    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if _is_not_found(exc):
            return S3CopyReport((CheckResult(artifact, "s3_present", False, f"{uri} missing in S3"),))
        return S3CopyReport((CheckResult(artifact, "s3_present", False, f"{uri}: cannot read: {exc}"),))
    except BotoCoreError as exc:
        return S3CopyReport((CheckResult(artifact, "s3_present", False, f"{uri}: cannot reach S3: {exc}"),))

    results = [CheckResult(artifact, "s3_present", True, uri)]
    remote_size = int(head.get("ContentLength", -1))
    if remote_size == local_size:
        results.append(CheckResult(artifact, "s3_size", True, f"{remote_size} bytes"))
    else:
        results.append(CheckResult(artifact, "s3_size", False,
                                   f"{uri} is {remote_size} bytes, the local backup {local_size} bytes"))
        results.append(CheckResult(artifact, "s3_checksum", False, "not compared: the sizes differ"))
        return S3CopyReport(tuple(results))

    cmp = _Comparison()
    try:
        result = _compare(client, bucket, key, head, remote_size, local_sha256, local_path, artifact,
                          composite_cache, allow_download, cmp)
    except (ClientError, BotoCoreError, OSError, ValueError) as exc:
        result = CheckResult(artifact, "s3_checksum", False, f"{uri}: checksum not compared: {exc}")
    results.append(result)
    return S3CopyReport(tuple(results), cmp.body, cmp.local, cmp.method)


def check_s3_copy(client: Any, bucket: str, key: str, *, local_size: int, local_sha256: str | None,
                  local_path: Path | None, artifact: str,
                  composite_cache: MutableMapping[str, str] | None = None,
                  allow_download: bool = True) -> list[CheckResult]:
    """Results ``s3_present``, ``s3_size``, ``s3_checksum`` for one copy (see :func:`s3_copy_report`)."""
    return list(s3_copy_report(client, bucket, key, local_size=local_size, local_sha256=local_sha256,
                               local_path=local_path, artifact=artifact, composite_cache=composite_cache,
                               allow_download=allow_download).results)


def _read_note(cmp: _Comparison) -> str:
    note = f"read {cmp.body} bytes of the object"
    if cmp.local:
        note += f", {_human(cmp.local)} of the local file"
    return note


def _compare(client: Any, bucket: str, key: str, head: dict, size: int, local_sha256: str | None,
             local_path: Path | None, artifact: str, cache: MutableMapping[str, str] | None,
             allow_download: bool, cmp: _Comparison) -> CheckResult:
    uri = f"s3://{bucket}/{key}"
    local_sha256 = local_sha256.lower() if local_sha256 else None
    stored = stored_checksums(head)
    multipart_hint = _ETAG_PARTS.search(str(head.get("ETag") or ""))
    if not stored or multipart_hint or any(c.composite for c in stored.values()):
        # GetObjectAttributes tells the checksum type (and part count) HeadObject may omit.
        attrs = client.get_object_attributes(Bucket=bucket, Key=key,
                                             ObjectAttributes=["Checksum", "ObjectParts", "ObjectSize", "ETag"])
        stored = stored_checksums(head, attrs)
    local_file = local_path if local_path is not None and local_path.is_file() else None

    def fail(detail: str) -> CheckResult:
        return CheckResult(artifact, "s3_checksum", False, f"{detail} ({_read_note(cmp)})")

    def ok(detail: str) -> CheckResult:
        return CheckResult(artifact, "s3_checksum", True, f"{detail} ({_read_note(cmp)})")

    sha = stored.get("SHA256")
    # 1. Single-part SHA-256: compare with the known local digest, reading nothing.
    if sha and not sha.composite:
        cmp.method = "sha256"
        if local_sha256 is None:
            if local_file is None:
                return CheckResult(artifact, "s3_checksum", True,
                                   "not compared: no local SHA-256 or file given (read 0 bytes of the object)")
            local_sha256, cmp.local = _sha256_file(local_file)
        want = _b64_of_hex(local_sha256)
        if sha.value == want:
            return ok("SHA-256 matches S3's stored checksum")
        parts = int(client.head_object(Bucket=bucket, Key=key, PartNumber=1).get("PartsCount") or 1)
        if parts > 1:
            # A multipart object whose S3 gave no hint of it: its checksum is a composite.
            sha = StoredChecksum("SHA256", sha.value, True, parts)
        else:
            return fail(f"{uri}: SHA-256 differs: S3 stored {sha.value}, local {want}")

    # 2. CRC64NVME full-object checksum, when awscrt can compute it locally.
    crc = stored.get("CRC64NVME")
    if crc and local_file is not None:
        local_crc = _crc64nvme_file(local_file)
        if local_crc is not None:
            cmp.method, cmp.local = "crc64nvme", local_crc[1]
            if local_crc[0] == crc.value:
                return ok("CRC64NVME matches S3's stored full-object checksum")
            return fail(f"{uri}: CRC64NVME differs: S3 stored {crc.value}, local {local_crc[0]}")

    # 3. Composite SHA-256 of a multipart upload: recompute it from the local file.
    if sha and sha.composite:
        cmp.method = "composite-sha256"
        return _compare_composite(client, bucket, key, size, sha, local_sha256, local_file, artifact,
                                  cache, cmp, ok, fail)

    # 4. No usable stored checksum: stream the object and hash it.
    if not allow_download:
        algos = ", ".join(sorted(stored)) or "none"
        return CheckResult(artifact, "s3_checksum", True,
                           f"not compared: no stored SHA-256 (stored: {algos}) and download not allowed "
                           f"(read 0 bytes of the object)")
    if local_sha256 is None:
        if local_file is None:
            return CheckResult(artifact, "s3_checksum", True,
                               "not compared: no local SHA-256 or file given (read 0 bytes of the object)")
        local_sha256, cmp.local = _sha256_file(local_file)
    cmp.method = "stream"
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    h = hashlib.sha256()
    try:
        for chunk in body.iter_chunks(CHUNK):
            h.update(chunk)
            cmp.body += len(chunk)
    finally:
        body.close()
    if cmp.body != size:
        return fail(f"{uri}: download ended after {cmp.body} of {size} bytes")
    if h.hexdigest() == local_sha256:
        return ok("SHA-256 of the streamed object matches (no stored checksum)")
    return fail(f"{uri}: SHA-256 of the streamed object differs: S3 {h.hexdigest()}, local {local_sha256}")


def _compare_composite(client: Any, bucket: str, key: str, size: int, sha: StoredChecksum,
                       local_sha256: str | None, local_file: Path | None, artifact: str,
                       cache: MutableMapping[str, str] | None, cmp: _Comparison, ok, fail) -> CheckResult:
    uri = f"s3://{bucket}/{key}"
    sizes, part_sums, how = part_layout(client, bucket, key, size, sha.parts)
    n = len(sizes)
    if sha.parts is not None and sha.parts != n:
        return fail(f"{uri}: S3 says {sha.parts} parts but lists {n}")
    cache_key = _layout_key(local_sha256, sizes) if local_sha256 else None
    if cache is not None and cache_key and cache.get(cache_key) == sha.value:
        return ok(f"composite SHA-256 of {n} parts matches (remembered for this SHA-256 and layout)")
    if local_file is None:
        return CheckResult(artifact, "s3_checksum", True,
                           f"not compared: S3 stores a composite SHA-256 of {n} parts; it needs the local file "
                           f"(read 0 bytes of the object)")
    composite, local_parts, cmp.local = composite_sha256(local_file, sizes)
    if composite != sha.value and how.startswith("uniform"):
        # The uniform-layout guess may be wrong (an uploader with varying part sizes):
        # confirm each part's size (HEAD only) and recompute if the layout differs.
        exact = exact_part_sizes(client, bucket, key, n)
        if exact != sizes:
            sizes, how = exact, "HeadObject of every part"
            composite, local_parts, read = composite_sha256(local_file, sizes)
            cmp.local += read
    if composite == sha.value:
        if cache is not None and local_sha256:
            cache[_layout_key(local_sha256, sizes)] = composite
        return ok(f"composite SHA-256 of {n} parts matches ({how})")
    first_bad = next((i + 1 for i, (a, b) in enumerate(zip(local_parts, part_sums)) if b and a != b), None)
    where = f"; first differing part: {first_bad} of {n}" if first_bad else ""
    return fail(f"{uri}: composite SHA-256 of {n} parts differs: S3 stored {sha.value}-{n}, "
                f"local {composite}-{n}{where}")


__all__ = ["check_s3_copy", "s3_copy_report", "S3CopyReport", "StoredChecksum", "stored_checksums",
           "composite_sha256", "part_layout"]
