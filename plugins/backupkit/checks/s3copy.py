"""Is the S3 copy of a backup there, the same size, and the same bytes? And which evidence says so?

The bytes are compared through what S3 stored at upload time, so checking a 1 GB copy
costs a few small requests instead of a 1 GB download. The evidence, strongest and
cheapest first (the result's detail and :attr:`S3CopyReport.method` name the one used):

1. ``remembered``: this copy (same ETag/version and size) was already proved equal to a
   local file with this SHA-256 by one of the methods below: no read at all;
2. ``sha256``: a single-part SHA-256 checksum, compared with the known local SHA-256
   (sidecar or verification memory) without reading either side;
3. ``composite-sha256``: a multipart upload's composite SHA-256 (the SHA-256 of the part
   SHA-256s, ``-N`` suffix), recomputed from the local file with S3's part layout;
4. ``crc64nvme`` / ``crc32c`` / ``crc32``: S3's CRC checksums (full-object, or composite
   over parts), recomputed locally (CRC32C and CRC64NVME need ``awscrt``);
5. ``md5-etag``: an ETag that is an MD5 -- single part, not SSE-KMS/SSE-C -- or a multipart
   ETag (MD5 of the part MD5s, ``-N``), recomputed locally;
6. ``stream``: nothing usable is stored: the object is downloaded (1 MiB chunks) and hashed.

Methods 3-5 read the local file once (every digest they need in that one pass) and, when
they match, remember the pairing (3-6 likewise), so an unchanged copy is not read again;
a copy whose ETag or size changes is compared afresh. :class:`S3CopyReport` counts the
object and local bytes read, so callers and the benchmark show what a check cost.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from backupkit import clock
from backupkit.model import CheckResult
from backupkit.storage.objectstore import (
    CHUNK,
    Bucket,
    StoredChecksum,
    client_errors,
    describe_error,
    etag_parts,
    stored_checksums,
)

CRC_ALGORITHMS = ("CRC64NVME", "CRC32C", "CRC32")
KMS_ENCRYPTIONS = ("aws:kms", "aws:kms:dsse")


@dataclass(frozen=True)
class S3CopyReport:
    results: tuple[CheckResult, ...]
    body_bytes_read: int = 0  # bytes of the object body downloaded from S3
    local_bytes_read: int = 0  # bytes of the local file read to compute a checksum
    method: str = "none"  # the evidence used (see the module doc)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def compared(self) -> bool:
        """The bytes were compared (by whatever evidence), not skipped."""
        return self.method not in ("none", "")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _b64_of_hex(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


# --- local digests, all in one read ---------------------------------------------------------


def _crc_functions() -> dict[str, Callable[[bytes, int], int]]:
    fns: dict[str, Callable[[bytes, int], int]] = {"CRC32": lambda data, crc: zlib.crc32(data, crc)}
    try:
        from awscrt import checksums
    except ImportError:
        return fns
    fns["CRC32C"] = checksums.crc32c
    fns["CRC64NVME"] = checksums.crc64nvme
    return fns


_CRC_BYTES = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8}


def local_digests(path: Path, *, algorithms: Sequence[str], part_sizes: Sequence[int] | None = None
                  ) -> tuple[dict[str, str], dict[str, list[str]], int]:
    """Digests of ``path`` in one streamed read: whole-file and, with ``part_sizes``, per part.

    ``algorithms`` among SHA256, MD5, CRC32, CRC32C, CRC64NVME. Returns (whole-file values,
    per-part values, bytes read); SHA256 whole is hex, the rest base64 (MD5 hex, as ETags).
    Composites are the caller's business (:func:`composite`). Raises ValueError when the
    file does not have the parts' total length.
    """
    crcs = _crc_functions()
    wanted = list(dict.fromkeys(a for a in algorithms if a in ("SHA256", "MD5") or a in crcs))
    whole = {a: _new(a) for a in wanted}
    sizes = list(part_sizes) if part_sizes else None
    per_part: dict[str, list[str]] = {a: [] for a in wanted} if sizes else {}
    read = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        for size in (sizes or [None]):
            part = {a: _new(a) for a in wanted} if sizes else None
            left = size
            while left is None or left:
                n = f.readinto(view[:CHUNK if left is None else min(CHUNK, left)])
                if not n:
                    if left is None:
                        break
                    raise ValueError(f"{path} is shorter than the S3 part layout ({sum(sizes)} bytes)")
                chunk = view[:n]
                for a in wanted:
                    whole[a] = _update(a, whole[a], chunk, crcs)
                    if part is not None:
                        part[a] = _update(a, part[a], chunk, crcs)
                read += n
                if left is not None:
                    left -= n
            if part is not None:
                for a in wanted:
                    per_part[a].append(_final(a, part[a]))
        if sizes and f.read(1):
            raise ValueError(f"{path} is longer than the S3 part layout ({sum(sizes)} bytes)")
    return {a: _final(a, whole[a]) for a in wanted}, per_part, read


def _new(algorithm: str):
    if algorithm == "SHA256":
        return hashlib.sha256()
    if algorithm == "MD5":
        return hashlib.md5(usedforsecurity=False)
    return 0


def _update(algorithm: str, state, chunk, crcs):
    if algorithm in ("SHA256", "MD5"):
        state.update(chunk)
        return state
    return crcs[algorithm](chunk, state)


def _final(algorithm: str, state) -> str:
    if algorithm == "SHA256":
        return state.hexdigest()
    if algorithm == "MD5":
        return state.hexdigest()
    return base64.b64encode(int(state).to_bytes(_CRC_BYTES[algorithm], "big")).decode()


def composite(algorithm: str, part_values: Sequence[str]) -> str:
    """S3's composite checksum: the algorithm over the concatenated raw part checksums.

    SHA-256 and CRC parts are base64 (SHA-256 whole digests come as hex and are converted
    by the caller); MD5 parts are hex and the result is hex (a multipart ETag).
    """
    if algorithm == "MD5":
        return hashlib.md5(b"".join(bytes.fromhex(v) for v in part_values), usedforsecurity=False).hexdigest()
    raw = b"".join(base64.b64decode(v) for v in part_values)
    if algorithm == "SHA256":
        return base64.b64encode(hashlib.sha256(raw).digest()).decode()
    crcs = _crc_functions()
    return base64.b64encode(int(crcs[algorithm](raw, 0)).to_bytes(_CRC_BYTES[algorithm], "big")).decode()


def composite_sha256(path: Path, part_sizes: Sequence[int]) -> tuple[str, list[str], int]:
    """S3's composite SHA-256 of ``path`` split into ``part_sizes``, in one streamed read.

    Returns (base64 composite without suffix, base64 per-part digests, bytes read).
    """
    _, parts, read = local_digests(path, algorithms=["SHA256"], part_sizes=part_sizes)
    b64 = [_b64_of_hex(h) for h in parts["SHA256"]]
    return composite("SHA256", b64), b64, read


# --- the check ---------------------------------------------------------------------------------


class _Comparison:
    """How one comparison went: bytes read, method, and what to remember."""

    def __init__(self) -> None:
        self.body = 0
        self.local = 0
        self.method = "none"
        self.local_sha256: str | None = None

    def note(self) -> str:
        note = f"read {self.body} bytes of the object"
        if self.local:
            note += f", {_human(self.local)} of the local file"
        return note


def _pair_key(bucket: Bucket, key: str, head: dict, size: int, local_sha256: str) -> str:
    version = head.get("VersionId") or ""
    etag = str(head.get("ETag") or "").strip('"')
    return f"s3pair:{bucket.name}/{key}:{version}:{etag}:{size}:{local_sha256}"


def s3_copy_report(bucket: Bucket, key: str, *, local_size: int, local_sha256: str | None,
                   local_path: Path | None, artifact: str,
                   composite_cache: MutableMapping[str, str] | None = None,
                   allow_download: bool = True, local_sha256_origin: str = "the local backup",
                   head: dict | None | Exception | str = "ask") -> S3CopyReport:
    """Check the S3 copy ``key`` in ``bucket`` of a local backup; see the module doc.

    :param local_sha256: the local backup's SHA-256 (hex) when known; saves reading it
    :param local_path: the local file, read only when the evidence needs it
    :param composite_cache: remembered pairings (the verification memory's ``checksum_cache``)
    :param allow_download: False never downloads the object (a cheap inventory)
    :param local_sha256_origin: where ``local_sha256`` comes from, for messages ("the sidecar", "the
        last verified read of the local backup"): a remembered digest is not the file as it is now
    :param head: the object's HeadObject (with checksums) when the caller asked already
        (:meth:`Bucket.heads` for the files of a directory backup): the answer, None or the error
    """
    uri = bucket.uri(key)
    try:
        if head == "ask":
            head = bucket.head(key, checksums=True)
        elif isinstance(head, Exception):
            raise head
    except client_errors() as exc:
        return S3CopyReport((CheckResult(artifact, "s3_present", False, describe_error(exc, uri)),))
    if head is None:
        try:
            why = bucket.missing(key)
        except client_errors() as exc:
            why = describe_error(exc, uri)
        return S3CopyReport((CheckResult(artifact, "s3_present", False, why),))

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
        result = _compare(bucket, key, head, remote_size, local_sha256.lower() if local_sha256 else None,
                          local_path if local_path is not None and local_path.is_file() else None,
                          artifact, composite_cache, allow_download, cmp, local_sha256_origin)
    except client_errors() as exc:
        result = CheckResult(artifact, "s3_checksum", False, f"checksum not compared: {describe_error(exc, uri)}")
    except (OSError, ValueError) as exc:
        result = CheckResult(artifact, "s3_checksum", False, f"{uri}: checksum not compared: {exc}")
    results.append(result)
    return S3CopyReport(tuple(results), cmp.body, cmp.local, cmp.method)


def check_s3_copy(bucket: Bucket, key: str, **kwargs) -> list[CheckResult]:
    """Results ``s3_present``, ``s3_size``, ``s3_checksum`` for one copy (see :func:`s3_copy_report`)."""
    return list(s3_copy_report(bucket, key, **kwargs).results)


def _compare(bucket: Bucket, key: str, head: dict, size: int, local_sha256: str | None, local_file: Path | None,
             artifact: str, cache: MutableMapping[str, str] | None, allow_download: bool,
             cmp: _Comparison, origin: str = "the local backup") -> CheckResult:
    uri = bucket.uri(key)

    def done(ok: bool, detail: str) -> CheckResult:
        text = f"{detail} (evidence: {cmp.method}; {cmp.note()})"
        if ok and cache is not None and cmp.method not in ("sha256", "remembered"):
            sha = local_sha256 or cmp.local_sha256
            if sha:
                cache[_pair_key(bucket, key, head, size, sha)] = f"{cmp.method} {clock.now():%Y-%m-%d}"
        return CheckResult(artifact, "s3_checksum", ok, text)

    def skipped(detail: str) -> CheckResult:
        return CheckResult(artifact, "s3_checksum", True, f"not compared: {detail} ({cmp.note()})")

    # 1. A pairing proved before: nothing to read.
    if cache is not None and local_sha256:
        seen = cache.get(_pair_key(bucket, key, head, size, local_sha256))
        if seen:
            cmp.method = "remembered"
            return CheckResult(artifact, "s3_checksum", True,
                               f"matches, as proved by {seen} for this SHA-256 and this S3 version "
                               f"(evidence: remembered; {cmp.note()})")

    stored = stored_checksums(head)
    parts_hint = etag_parts(str(head.get("ETag") or ""))
    if not stored or parts_hint or any(c.composite for c in stored.values()):
        # GetObjectAttributes tells the checksum type (and part count) HeadObject may omit.
        attrs = bucket.attributes(key, ["Checksum", "ObjectParts", "ObjectSize", "ETag"])
        stored = stored_checksums(head, attrs)

    # 2. A single-part SHA-256: compare with the known digest, reading nothing.
    sha = stored.get("SHA256")
    if sha and not sha.composite:
        if local_sha256 is None and local_file is not None:
            digests, _, cmp.local = local_digests(local_file, algorithms=["SHA256"])
            local_sha256 = cmp.local_sha256 = digests["SHA256"]
            origin = "the local file (read now)"
        if local_sha256 is not None:
            cmp.method = "sha256"
            if sha.value == _b64_of_hex(local_sha256):
                return done(True, "SHA-256 matches S3's stored checksum")
            parts = bucket.parts_count(key)
            if parts <= 1:
                return done(False, f"{uri}: SHA-256 differs: S3 stored {sha.value}, {origin} has "
                                   f"{_b64_of_hex(local_sha256)}")
            # A multipart object whose S3 gave no hint of it: its checksum is a composite.
            sha = StoredChecksum("SHA256", sha.value, True, parts)
            stored["SHA256"] = sha

    # 3-5. Evidence that needs the local file, all read in one pass.
    plan = _local_plan(stored, head, parts_hint)
    if plan:
        if local_file is None:
            algos = ", ".join(sorted(a for a, _ in plan))
            return skipped(f"S3 stores {algos} of this copy; comparing it needs the local file")
        return _compare_locally(bucket, key, head, size, plan, local_file, cmp, done)

    # 6. Nothing usable stored: stream the object and hash it.
    if not allow_download:
        algos = ", ".join(sorted(stored)) or "none"
        return skipped(f"no usable stored checksum (stored: {algos}) and download not allowed")
    if local_sha256 is None:
        if local_file is None:
            return skipped("no local SHA-256 or file given")
        digests, _, cmp.local = local_digests(local_file, algorithms=["SHA256"])
        local_sha256 = cmp.local_sha256 = digests["SHA256"]
        origin = "the local file (read now)"
    cmp.method = "stream"
    body = bucket.body(key, if_match=head.get("ETag"))
    h = hashlib.sha256()
    try:
        for chunk in body.iter_chunks(CHUNK):
            h.update(chunk)
            cmp.body += len(chunk)
    finally:
        body.close()
    if cmp.body != size:
        return done(False, f"{uri}: download ended after {cmp.body} of {size} bytes")
    if h.hexdigest() == local_sha256:
        return done(True, "SHA-256 of the streamed object matches (no stored checksum)")
    return done(False, f"{uri}: SHA-256 of the streamed object differs: S3 {h.hexdigest()}, {origin} has "
                       f"{local_sha256}")


def _local_plan(stored: dict[str, StoredChecksum], head: dict, parts_hint: int | None
                ) -> list[tuple[str, StoredChecksum]]:
    """The stored checksums to recompute from the local file, strongest first (at most one CRC)."""
    plan: list[tuple[str, StoredChecksum]] = []
    sha = stored.get("SHA256")
    if sha and sha.composite:
        plan.append(("composite-sha256", sha))
    available = _crc_functions()
    crc = next((stored[a] for a in CRC_ALGORITHMS if a in stored and a in available), None)
    if crc and not plan:
        plan.append((crc.algorithm.lower(), crc))
    etag = str(head.get("ETag") or "").strip('"')
    md5_etag = (head.get("ServerSideEncryption") not in KMS_ENCRYPTIONS and not head.get("SSECustomerAlgorithm")
                and len(etag.split("-")[0]) == 32 and all(c in "0123456789abcdef" for c in etag.split("-")[0]))
    if md5_etag and not plan:
        plan.append(("md5-etag", StoredChecksum("MD5", etag.split("-")[0], parts_hint is not None, parts_hint)))
    return plan


def _compare_locally(bucket: Bucket, key: str, head: dict, size: int, plan: list[tuple[str, StoredChecksum]],
                     local_file: Path, cmp: _Comparison, done: Callable[[bool, str], CheckResult]) -> CheckResult:
    uri = bucket.uri(key)
    method, stored = plan[0]
    cmp.method = method
    sizes: list[int] | None = None
    part_sums: list[str | None] = []
    how = ""
    if stored.composite:
        sizes, part_sums, how = bucket.part_layout(key, size, stored.parts)
        if stored.parts is not None and stored.parts != len(sizes):
            return done(False, f"{uri}: S3 says {stored.parts} parts but lists {len(sizes)}")
    algorithm = stored.algorithm
    whole, parts, cmp.local = local_digests(local_file, algorithms=[algorithm, "SHA256"], part_sizes=sizes)
    cmp.local_sha256 = whole["SHA256"]

    def local_value(part_values: dict[str, list[str]]) -> str:
        if not stored.composite:
            return whole[algorithm]
        values = part_values[algorithm]
        if algorithm == "SHA256":
            values = [_b64_of_hex(v) for v in values]
        return composite(algorithm, values)

    mine = local_value(parts)
    if mine != stored.value and stored.composite and how.startswith("uniform"):
        # The uniform-layout guess may be wrong (an uploader with varying part sizes):
        # confirm each part's size (HEAD only) and recompute if the layout differs.
        exact = bucket.part_sizes(key, len(sizes))
        if exact != sizes:
            sizes, how = exact, "HeadObject of every part"
            whole, parts, read = local_digests(local_file, algorithms=[algorithm, "SHA256"], part_sizes=sizes)
            cmp.local += read
            mine = local_value(parts)
    label = {"SHA256": "SHA-256", "MD5": "MD5 ETag"}.get(algorithm, algorithm)
    shape = f"composite {label} of {len(sizes)} parts" if stored.composite else f"full-object {label}"
    if mine == stored.value:
        return done(True, f"{shape} matches" + (f" ({how})" if how else ""))
    where = ""
    if stored.composite and algorithm == "SHA256":
        local_parts = [_b64_of_hex(v) for v in parts["SHA256"]]
        first_bad = next((i + 1 for i, (a, b) in enumerate(zip(local_parts, part_sums)) if b and a != b), None)
        where = f"; first differing part: {first_bad} of {len(sizes)}" if first_bad else ""
    suffix = f"-{len(sizes)}" if stored.composite else ""
    return done(False, f"{uri}: {shape} differs: S3 stored {stored.value}{suffix}, the local file (read now) has "
                       f"{mine}{suffix}{where}")


__all__ = ["check_s3_copy", "s3_copy_report", "S3CopyReport", "composite_sha256", "composite", "local_digests"]
