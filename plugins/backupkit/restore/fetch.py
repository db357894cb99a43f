"""A backup's bytes on local disk, and the proof that they are the bytes that were backed up.

Every restore starts here (the monthly test, on-demand restores, the DR drill), so each one
checks what it restores the same way before a single statement runs:

* **which copy**: ``prefer="s3"`` (the default: the off-site copy is what a disaster leaves)
  or ``"local"``; ``s3_only`` never touches the local directory (the drill's site loss).
* **a local copy** is used where it lies; its sidecar ``NAME.sha256`` (the rule of
  :mod:`backupkit.storage.localfs`) is compared with a SHA-256 of the file.
* **an S3 copy** is downloaded into the work directory in 1 MiB chunks, hashed on the way
  (a directory-format dump: every object under ``NAME/``). ``version="current"`` reads the
  current object, ``"original"`` the first version ever written to the key (an attacker
  with the credentials can only add versions on top of a locked one). The SHA-256 is
  compared with the sidecar object of that version and with the checksum S3 stored for that
  version at upload (a composite of the part SHA-256s for a multipart upload).
* a missing sidecar passes with a note unless ``require_sidecar`` (the drill's S3 scenarios:
  a download that cannot be checked is not a recovery).

Findings (a missing or damaged object, a mismatch) are failed checks, not exceptions; only a
transport failure (the endpoint unreachable) raises, so the task's retry can fix it.
Companions (the row-count manifest) are read from the same place and version as the backup,
else from the other copy.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from backupkit.checks.s3copy import composite_sha256
from backupkit.model import Backup, CheckResult
from backupkit.storage.localfs import (CHUNK, SIDECAR_SUFFIX, SidecarError, digest_for, parse_sidecar,
                                       read_sidecar_text, sha256_file)
from backupkit.storage.objectstore import Bucket, client_errors, describe_error, stored_checksums

PREFER = ("s3", "local")
VERSIONS = ("current", "original")
COMPANION_LIMIT = 16 << 20


class FetchError(ValueError):
    """A request that cannot be served (no copy where asked); the message says why."""


@dataclass
class Fetched:
    """Where the backup now lies locally, where it came from, and what its integrity checks said."""

    backup: Backup
    artifact: str
    label: str  # the path or s3:// URI a person knows it by
    path: Path | None = None  # None: nothing usable was fetched (the checks say why)
    from_s3: bool = False
    version_id: str | None = None
    downloaded: bool = False  # path is a download in the work directory (the caller removes it)
    checks: list[CheckResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    _bucket: Bucket | None = None
    _version: str = "current"
    _s3_only: bool = False

    @property
    def ok(self) -> bool:
        return self.path is not None and all(c.ok for c in self.checks)

    def add(self, check: str, ok: bool, detail: str) -> bool:
        self.checks.append(CheckResult(self.artifact, check, ok, detail))
        return ok

    def remove_download(self) -> None:
        if self.downloaded and self.path is not None:
            if self.path.is_dir():
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                self.path.unlink(missing_ok=True)
            self.downloaded = False

    def companion(self, suffix: str) -> tuple[bytes | None, str]:
        """(bytes, where) of ``NAME<suffix>`` from where the backup came, else the other copy."""
        sides = ("s3", "local") if self.from_s3 else ("local", "s3")
        for side in sides:
            if side == "s3" and self.backup.key and self._bucket is not None:
                key = self.backup.key + suffix
                version = pick_version(self._bucket, key, self._version)[0] if self._version != "current" else None
                raw = self._bucket.read_small(key, limit=COMPANION_LIMIT, version_id=version)
                if raw is not None:
                    return raw, self._bucket.uri(key) + (f" (version {version})" if version else "")
            if side == "local" and self.backup.path is not None and not self._s3_only:
                path = self.backup.path.with_name(self.backup.path.name + suffix)
                if path.is_file():
                    with open(path, "rb") as f:
                        return f.read(COMPANION_LIMIT), str(path)
        return None, ""


def fetch(backup: Backup, *, bucket: Bucket | None, work_dir: Path, prefer: str = "s3", s3_only: bool = False,
          version: str = "current", require_sidecar: bool = False, artifact: str | None = None) -> Fetched:
    """The backup on local disk with its integrity checks (see the module doc)."""
    if prefer not in PREFER or version not in VERSIONS:
        raise ValueError(f"prefer must be one of {PREFER} and version one of {VERSIONS}")
    artifact = artifact or backup.id
    use_s3 = backup.key is not None and bucket is not None and (s3_only or prefer == "s3" or backup.path is None)
    if s3_only and not use_s3:
        raise FetchError(f"{backup.id} has no copy in the bucket")
    if not use_s3 and backup.path is None:
        raise FetchError(f"backup {backup.name!r} is only in S3 and no bucket was given")
    if use_s3:
        return _from_s3(backup, bucket, work_dir, version, require_sidecar, artifact, s3_only)
    return _from_disk(backup, bucket, require_sidecar, artifact)


# -- local copies --------------------------------------------------------------------------------
def _from_disk(backup: Backup, bucket: Bucket | None, require_sidecar: bool, artifact: str) -> Fetched:
    path = backup.path
    f = Fetched(backup, artifact, str(path), path=path, _bucket=bucket)
    f.info.update(location=str(path), bytes=backup.size)
    try:
        text = read_sidecar_text(path)
    except SidecarError as exc:
        f.add("sidecar", False, str(exc))
        return f
    if text is None:
        f.add("sidecar", not require_sidecar, "no sidecar beside the backup: verified by restore and checks only")
    elif path.is_dir():
        _check_tree(f, path, text, path.name + SIDECAR_SUFFIX)
    else:
        _check_digest(f, sha256_file(path)[0], text, path.name + SIDECAR_SUFFIX, "")
    return f


def _check_digest(f: Fetched, digest: str, sidecar_text: str, where: str, what: str) -> bool:
    try:
        want = digest_for(parse_sidecar(sidecar_text, where=where), f.backup.name, where=where)
    except SidecarError as exc:
        return f.add("sidecar", False, str(exc))
    return f.add("sidecar", digest == want, f"SHA-256{what} matches {where}" if digest == want else
                 f"SHA-256{what} {digest} differs from the sidecar's {want} ({where})")


def _check_tree(f: Fetched, root: Path, sidecar_text: str, where: str) -> bool:
    """A directory dump's sidecar lists its files (``cd NAME && sha256sum *``): each must match."""
    try:
        entries = parse_sidecar(sidecar_text, where=where)
    except SidecarError as exc:
        return f.add("sidecar", False, str(exc))
    bad = []
    for digest, name in entries:
        rel = PurePosixPath((name or "").replace("\\", "/"))
        if not name or rel.is_absolute() or ".." in rel.parts:
            bad.append(f"{name!r}: not a file of the dump")
            continue
        member = root.joinpath(*rel.parts)
        if not member.is_file():
            bad.append(f"{name}: listed but absent")
        elif sha256_file(member)[0] != digest:
            bad.append(f"{name}: SHA-256 differs")
    return f.add("sidecar", not bad, f"{len(entries)} files match {where}" if not bad else
                 f"{where}: " + "; ".join(bad[:10]))


# -- S3 copies -------------------------------------------------------------------------------------
def pick_version(bucket: Bucket, key: str, version: str) -> tuple[str | None, str, datetime | None]:
    """(version id, note, when it was written): ``current`` reads the current object (its version
    is pinned from the answer); ``original`` the first version ever written to ``key``."""
    if version == "current":
        return None, "current version", None
    found = sorted((v for v in bucket.versions(key) if v.key == key and not v.is_marker),
                   key=lambda v: (v.last_modified, not v.is_latest))
    if not found:
        raise FileNotFoundError(f"{bucket.uri(key)}: no version found")
    first, later = found[0], len(found) - 1
    note = f"original version {first.version_id} of {first.last_modified:%Y-%m-%d %H:%M:%S}"
    if later:
        note += f"; {later} later version(s) ignored"
    return first.version_id, note, first.last_modified


def download_object(bucket: Bucket, key: str, version_id: str | None, dest: Path, *,
                    limit: int | None = None) -> tuple[str, int, str | None]:
    """Stream one object (version) to ``dest``, hashing it: (hex SHA-256, bytes, version id).

    :param limit: the most bytes it may have (what a listing said): more is refused while
        streaming, before they are written (an object replaced by a bigger one since)
    """
    answer = bucket.get(key, version_id=version_id)
    body, h, n = answer["Body"], hashlib.sha256(), 0
    if limit is not None and int(answer.get("ContentLength", 0)) > limit:
        body.close()
        raise OSError(f"{bucket.uri(key)} is {answer.get('ContentLength')} bytes, more than the {limit} expected")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(dest, "wb") as out:
            for chunk in body.iter_chunks(CHUNK):
                if limit is not None and n + len(chunk) > limit:
                    raise OSError(f"{bucket.uri(key)}: more than the {limit} bytes expected")
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
    finally:
        body.close()
    expected = int(answer.get("ContentLength", n))
    if n != expected:
        raise OSError(f"{bucket.uri(key)}: download ended after {n} of {expected} bytes")
    return h.hexdigest(), n, answer.get("VersionId") or version_id


def _from_s3(backup: Backup, bucket: Bucket, work_dir: Path, version: str, require_sidecar: bool, artifact: str,
             s3_only: bool) -> Fetched:
    uri = bucket.uri(backup.key)
    f = Fetched(backup, artifact, uri, from_s3=True, _bucket=bucket, _version=version, _s3_only=s3_only)
    f.info["location"] = uri
    dest = Path(work_dir) / "download" / backup.name
    t0 = time.monotonic()
    try:
        if backup.is_dir:
            digest, size, note, written = None, _download_tree(bucket, backup.key, dest), "current objects", None
            vid = None
        else:
            vid, note, written = pick_version(bucket, backup.key, version)
            digest, size, vid = download_object(bucket, backup.key, vid, dest)
    except client_errors()[0] as exc:
        f.add("download", False, describe_error(exc, uri))
        return f
    except (OSError, ValueError) as exc:
        f.add("download", False, f"{uri}: {exc}")
        return f
    seconds = time.monotonic() - t0
    f.path, f.downloaded, f.version_id = dest, True, vid
    f.info.update(version_id=vid, version=note, bytes=size, download_seconds=round(seconds, 3), written=written)
    f.add("download", True, f"{size} bytes in {seconds:.2f}s ({note})")
    _check_s3_sidecar(f, bucket, digest, require_sidecar)
    if digest is not None:
        f.checks.append(stored_checksum_check(bucket, backup.key, vid, dest, digest, artifact))
    return f


def _download_tree(bucket: Bucket, key: str, dest: Path) -> int:
    """A directory-format dump stored as the objects under ``key/`` (toc.dat, NNNN.dat.gz)."""
    prefix = key.rstrip("/") + "/"
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for obj in bucket.objects(prefix):
        rel = obj.key[len(prefix):]
        if not rel:
            continue
        if "/" in rel or rel in (".", ".."):
            raise ValueError(f"{bucket.uri(obj.key)}: unexpected object in a directory-format dump")
        n += download_object(bucket, obj.key, None, dest / rel)[1]
    if not (dest / "toc.dat").exists():
        raise FileNotFoundError(f"{bucket.uri(prefix)}toc.dat not found (not a directory-format dump)")
    return n


def _check_s3_sidecar(f: Fetched, bucket: Bucket, digest: str | None, require: bool) -> None:
    key = f.backup.key + SIDECAR_SUFFIX
    try:
        vid = pick_version(bucket, key, f._version)[0] if f._version != "current" else None
        raw = bucket.read_small(key, limit=1 << 16, version_id=vid)
    except FileNotFoundError:
        raw = None
    except (*client_errors(), ValueError) as exc:
        f.add("sidecar", False, f"{bucket.uri(key)}: {exc}")
        return
    if raw is None:
        f.add("sidecar", not require, f"{bucket.uri(key)} does not exist: the download cannot be checked"
              if require else f"no sidecar {bucket.uri(key)}: verified by restore and checks only")
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        f.add("sidecar", False, f"{bucket.uri(key)}: not UTF-8 text")
        return
    if digest is None:
        _check_tree(f, f.path, text, bucket.uri(key))
    else:
        _check_digest(f, digest, text, bucket.uri(key), " of the download")


def stored_checksum_check(bucket: Bucket, key: str, version_id: str | None, path: Path, digest: str,
                          artifact: str) -> CheckResult:
    """The downloaded bytes against the SHA-256 S3 stored for that very version at upload (a
    composite of the part checksums for a multipart upload, recomputed from the download)."""
    uri = bucket.uri(key)
    try:
        head = bucket.head(key, version_id=version_id, checksums=True) or {}
        sha = stored_checksums(head).get("SHA256")
        if sha is None:
            return CheckResult(artifact, "s3_checksum", True,
                               f"{uri}: S3 stores no SHA-256 for this version; compared with the sidecar only")
        if not sha.composite:
            mine = base64.b64encode(bytes.fromhex(digest)).decode()
            return CheckResult(artifact, "s3_checksum", mine == sha.value,
                               "SHA-256 of the download matches S3's stored checksum" if mine == sha.value else
                               f"{uri}: SHA-256 of the download {mine} differs from S3's stored {sha.value}")
        sizes = bucket.part_layout(key, int(head.get("ContentLength", 0)), sha.parts, version_id=version_id)[0]
    except (*client_errors(), ValueError) as exc:
        return CheckResult(artifact, "s3_checksum", False, f"{uri}: stored checksum not compared: {exc}")
    value = composite_sha256(path, sizes)[0]
    ok = value == sha.value
    return CheckResult(artifact, "s3_checksum", ok,
                       f"composite SHA-256 of {len(sizes)} parts matches S3's stored checksum" if ok else
                       f"{uri}: composite SHA-256 of {len(sizes)} parts {value} differs from S3's stored {sha.value}")


__all__ = ["Fetched", "FetchError", "fetch", "pick_version", "download_object", "stored_checksum_check", "PREFER",
           "VERSIONS"]
