"""The S3 copy check against the real loopback S3 endpoint (moto server).

Copies are uploaded the way the backup job does it (boto3, SHA-256 checksums, multipart
above the threshold) and the check must tell a good copy from a missing, short or
one-byte-different one, reading no object bytes when S3 stored a checksum.
"""

from __future__ import annotations

import base64
import hashlib
import random
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from backupkit.checks.s3copy import check_s3_copy, composite_sha256, s3_copy_report
from backupkit.storage.objectstore import CHUNK, Bucket, stored_checksums

MiB = 1024 * 1024


def _write(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _by_check(results) -> dict:
    return {r.check: r for r in results}


def _report(s3, bucket, key, path: Path, sha: str | None = None, **kw):
    return s3_copy_report(Bucket(s3, bucket), key, local_size=path.stat().st_size, local_sha256=sha,
                          local_path=path, artifact=f"db/{path.name}", **kw)


@pytest.fixture(scope="module")
def multipart_file(tmp_path_factory) -> Path:
    """Three full 5 MiB parts and a short fourth: the layout boto3 uploads."""
    return _write(tmp_path_factory.mktemp("mp") / "big.dump", 3 * 5 * MiB + 12345, seed=7)


def _upload_multipart(s3, bucket: str, key: str, path: Path) -> None:
    s3.upload_file(str(path), bucket, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                   Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))


def test_single_part_copy_matches_without_reading_anything(s3, bucket, tmp_path):
    path = _write(tmp_path / "a.dump", 300_000, seed=1)
    s3.put_object(Bucket=bucket, Key="database/a.dump", Body=path.read_bytes(), ChecksumAlgorithm="SHA256")
    rep = _report(s3, bucket, "database/a.dump", path, _sha(path))
    assert rep.ok, rep.results
    assert [r.check for r in rep.results] == ["s3_present", "s3_size", "s3_checksum"]
    assert rep.method == "sha256"
    assert rep.body_bytes_read == 0 and rep.local_bytes_read == 0
    assert "read 0 bytes of the object" in _by_check(rep.results)["s3_checksum"].detail


def test_single_part_copy_without_known_sha_hashes_the_local_file_only(s3, bucket, tmp_path):
    path = _write(tmp_path / "a.dump", 300_000, seed=1)
    s3.put_object(Bucket=bucket, Key="database/a.dump", Body=path.read_bytes(), ChecksumAlgorithm="SHA256")
    rep = _report(s3, bucket, "database/a.dump", path, None)
    assert rep.ok
    assert rep.body_bytes_read == 0 and rep.local_bytes_read == 300_000


def test_one_byte_difference_is_a_checksum_problem(s3, bucket, tmp_path):
    path = _write(tmp_path / "a.dump", 300_000, seed=2)
    s3.put_object(Bucket=bucket, Key="database/a.dump", Body=path.read_bytes(), ChecksumAlgorithm="SHA256")
    _flip(path, 150_000)
    res = _by_check(check_s3_copy(Bucket(s3, bucket), "database/a.dump", local_size=300_000, local_sha256=_sha(path),
                                  local_path=path, artifact="db/a.dump"))
    assert res["s3_present"].ok and res["s3_size"].ok
    assert not res["s3_checksum"].ok
    assert "s3://trixtech-backups/database/a.dump" in res["s3_checksum"].detail
    assert "SHA-256 differs" in res["s3_checksum"].detail
    assert res["s3_checksum"].artifact == "db/a.dump"


def test_missing_copy_names_the_s3_uri(s3, bucket, tmp_path):
    path = _write(tmp_path / "a.dump", 1000, seed=3)
    results = check_s3_copy(Bucket(s3, bucket), "database/a.dump", local_size=1000, local_sha256=_sha(path),
                            local_path=path, artifact="db/a.dump")
    assert len(results) == 1
    (r,) = results
    assert (r.check, r.ok) == ("s3_present", False)
    assert r.detail == "s3://trixtech-backups/database/a.dump missing in S3"


def test_size_mismatch(s3, bucket, tmp_path):
    path = _write(tmp_path / "a.dump", 10_000, seed=4)
    s3.put_object(Bucket=bucket, Key="database/a.dump", Body=path.read_bytes()[:6_000], ChecksumAlgorithm="SHA256")
    res = _by_check(check_s3_copy(Bucket(s3, bucket), "database/a.dump", local_size=10_000, local_sha256=_sha(path),
                                  local_path=path, artifact="db/a.dump"))
    assert res["s3_present"].ok
    assert not res["s3_size"].ok
    assert "6000 bytes" in res["s3_size"].detail and "10000 bytes" in res["s3_size"].detail
    assert not res["s3_checksum"].ok


def test_multipart_copy_matches_by_composite_and_is_remembered(s3, bucket, multipart_file):
    _upload_multipart(s3, bucket, "database/big.dump", multipart_file)
    assert s3.head_object(Bucket=bucket, Key="database/big.dump", PartNumber=1)["PartsCount"] == 4
    cache: dict[str, str] = {}
    rep = _report(s3, bucket, "database/big.dump", multipart_file, _sha(multipart_file), composite_cache=cache)
    assert rep.ok, rep.results
    assert rep.method == "composite-sha256"
    assert rep.body_bytes_read == 0
    assert rep.local_bytes_read == multipart_file.stat().st_size
    assert "of 4 parts matches" in _by_check(rep.results)["s3_checksum"].detail
    assert len(cache) == 1
    # The next run reads neither the object nor the local file.
    again = _report(s3, bucket, "database/big.dump", multipart_file, _sha(multipart_file), composite_cache=cache)
    assert again.ok and again.body_bytes_read == 0 and again.local_bytes_read == 0


def test_multipart_copy_with_one_byte_corrupted_local_file(s3, bucket, multipart_file, tmp_path):
    _upload_multipart(s3, bucket, "database/big.dump", multipart_file)
    local = tmp_path / "big.dump"
    local.write_bytes(multipart_file.read_bytes())
    _flip(local, 2 * 5 * MiB + 99)  # in part 3
    cache: dict[str, str] = {}
    rep = _report(s3, bucket, "database/big.dump", local, _sha(local), composite_cache=cache)
    chk = _by_check(rep.results)["s3_checksum"]
    assert not chk.ok
    assert "composite SHA-256 of 4 parts differs" in chk.detail
    assert rep.body_bytes_read == 0
    assert cache == {}  # only matches are remembered


def test_multipart_copy_with_uneven_parts(s3, bucket, tmp_path):
    """An uploader with varying part sizes: the uniform guess is wrong and must be corrected."""
    sizes = [6 * MiB, 5 * MiB, 2 * MiB]
    path = _write(tmp_path / "uneven.dump", sum(sizes), seed=9)
    data = path.read_bytes()
    up = s3.create_multipart_upload(Bucket=bucket, Key="database/uneven.dump", ChecksumAlgorithm="SHA256")
    parts, pos = [], 0
    for n, size in enumerate(sizes, 1):
        chunk = data[pos:pos + size]
        pos += size
        digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
        r = s3.upload_part(Bucket=bucket, Key="database/uneven.dump", UploadId=up["UploadId"], PartNumber=n,
                           Body=chunk, ChecksumSHA256=digest)
        parts.append({"ETag": r["ETag"], "PartNumber": n, "ChecksumSHA256": digest})
    s3.complete_multipart_upload(Bucket=bucket, Key="database/uneven.dump", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": parts})
    rep = _report(s3, bucket, "database/uneven.dump", path, _sha(path))
    assert rep.ok, rep.results
    assert "HeadObject of every part" in _by_check(rep.results)["s3_checksum"].detail
    assert rep.body_bytes_read == 0


def test_copy_with_only_an_md5_etag_is_compared_locally_and_remembered(s3, bucket, tmp_path):
    """A plain `aws s3 cp` (no checksum): the single-part ETag is the MD5, recomputed from the
    local file once; the next run remembers the pairing and reads nothing."""
    path = _write(tmp_path / "old.sql.gz", 3 * MiB + 17, seed=5)
    s3.put_object(Bucket=bucket, Key="database/old.sql.gz", Body=path.read_bytes())  # no checksum stored
    assert not any(k.startswith("ChecksumSHA") for k in
                   s3.head_object(Bucket=bucket, Key="database/old.sql.gz", ChecksumMode="ENABLED"))
    cache: dict[str, str] = {}
    rep = _report(s3, bucket, "database/old.sql.gz", path, _sha(path), composite_cache=cache)
    assert rep.ok, rep.results
    assert rep.method == "md5-etag" and rep.body_bytes_read == 0 and rep.local_bytes_read == path.stat().st_size
    assert "evidence: md5-etag" in _by_check(rep.results)["s3_checksum"].detail
    again = _report(s3, bucket, "database/old.sql.gz", path, _sha(path), composite_cache=cache)
    assert again.ok and again.method == "remembered" and again.local_bytes_read == 0 and again.body_bytes_read == 0

    _flip(path, 10)
    bad = _report(s3, bucket, "database/old.sql.gz", path, _sha(path), composite_cache=cache)
    assert not bad.ok and "MD5 ETag differs" in _by_check(bad.results)["s3_checksum"].detail
    # An overwrite in S3 changes the ETag: the remembered pairing no longer applies.
    s3.put_object(Bucket=bucket, Key="database/old.sql.gz", Body=path.read_bytes())
    fresh = _report(s3, bucket, "database/old.sql.gz", path, _sha(path), composite_cache=cache)
    assert fresh.ok and fresh.method == "md5-etag"


def test_kms_encrypted_copy_without_checksum_is_streamed(s3, bucket, tmp_path):
    """SSE-KMS ETags are not MD5s: with nothing usable stored, the object is downloaded and hashed."""
    path = _write(tmp_path / "old.sql.gz", 3 * MiB + 17, seed=5)
    s3.put_object(Bucket=bucket, Key="database/kms.sql.gz", Body=path.read_bytes(), ServerSideEncryption="aws:kms")
    rep = _report(s3, bucket, "database/kms.sql.gz", path, _sha(path))
    assert rep.ok, rep.results
    assert rep.method == "stream" and rep.body_bytes_read == path.stat().st_size

    _flip(path, 10)
    bad = _report(s3, bucket, "database/kms.sql.gz", path, _sha(path))
    assert "streamed object differs" in _by_check(bad.results)["s3_checksum"].detail

    cheap = _report(s3, bucket, "database/kms.sql.gz", path, _sha(path), allow_download=False)
    assert cheap.body_bytes_read == 0 and not cheap.compared
    assert _by_check(cheap.results)["s3_checksum"].detail.startswith("not compared")


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME"])
def test_single_part_crc_checksums_are_recomputed_locally(s3, bucket, tmp_path, algorithm):
    path = _write(tmp_path / "c.dump", 2 * MiB + 3, seed=11)
    key = f"database/{algorithm}.dump"
    s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), ChecksumAlgorithm=algorithm)
    rep = _report(s3, bucket, key, path, _sha(path))
    assert rep.ok and rep.method == algorithm.lower() and rep.body_bytes_read == 0, rep.results
    assert f"full-object {algorithm} matches" in _by_check(rep.results)["s3_checksum"].detail
    _flip(path, 2 * MiB)
    bad = _report(s3, bucket, key, path, _sha(path))
    assert not bad.ok and f"full-object {algorithm} differs" in _by_check(bad.results)["s3_checksum"].detail


@pytest.mark.parametrize("extra, method, shape", [
    ({"ChecksumAlgorithm": "CRC32"}, "crc32", "composite CRC32 of 4 parts"),
    ({}, "md5-etag", "composite MD5 ETag of 4 parts"),
])
def test_multipart_copies_without_sha256_use_their_part_layout(s3, bucket, multipart_file, tmp_path,
                                                              extra, method, shape):
    key = f"database/mp-{method}.dump"
    s3.upload_file(str(multipart_file), bucket, key, ExtraArgs=extra,
                   Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
    rep = _report(s3, bucket, key, multipart_file, _sha(multipart_file))
    assert rep.ok and rep.method == method and rep.body_bytes_read == 0, rep.results
    assert f"{shape} matches" in _by_check(rep.results)["s3_checksum"].detail
    local = tmp_path / "big.dump"
    local.write_bytes(multipart_file.read_bytes())
    _flip(local, 3 * 5 * MiB + 5)  # in the short last part
    bad = _report(s3, bucket, key, local, _sha(local))
    assert not bad.ok and f"{shape} differs" in _by_check(bad.results)["s3_checksum"].detail


def test_missing_bucket_is_not_a_missing_object(s3, bucket, tmp_path):
    path = _write(tmp_path / "a.dump", 1000, seed=3)
    (r,) = check_s3_copy(Bucket(s3, "no-such-bucket-here"), "database/a.dump", local_size=1000, local_sha256=_sha(path),
                         local_path=path, artifact="db/a.dump")
    assert (r.check, r.ok) == ("s3_present", False)
    assert "no such bucket" in r.detail and "missing in S3" not in r.detail


def test_composite_matches_an_independent_computation(tmp_path):
    sizes = [CHUNK + CHUNK // 2, CHUNK + CHUNK // 2, 10, 1]
    path = _write(tmp_path / "f", sum(sizes), seed=6)
    data, pos, digests = path.read_bytes(), 0, []
    for size in sizes:
        digests.append(hashlib.sha256(data[pos:pos + size]).digest())
        pos += size
    want = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    got, parts, read = composite_sha256(path, sizes)
    assert got == want and read == sum(sizes)
    assert parts == [base64.b64encode(d).decode() for d in digests]
    with pytest.raises(ValueError, match="longer"):
        composite_sha256(path, sizes[:-1])
    with pytest.raises(ValueError, match="shorter"):
        composite_sha256(path, [*sizes, 5])


def test_stored_checksums_reads_aws_and_moto_shapes():
    # AWS: suffix and type in HeadObject.
    aws = stored_checksums({"ChecksumSHA256": "abc=-4", "ChecksumType": "COMPOSITE", "ETag": '"x-4"'})
    assert aws["SHA256"].value == "abc=" and aws["SHA256"].composite and aws["SHA256"].parts == 4
    # moto: no suffix, no type in HeadObject; the ETag and GetObjectAttributes tell.
    moto = stored_checksums({"ChecksumSHA256": "abc=", "ETag": '"x-3"'},
                            {"Checksum": {"ChecksumSHA256": "abc=", "ChecksumType": "COMPOSITE"}})
    assert moto["SHA256"].composite and moto["SHA256"].parts == 3
    single = stored_checksums({"ChecksumSHA256": "abc=", "ETag": '"d41d8cd98f00b204e9800998ecf8427e"'})
    assert not single["SHA256"].composite and single["SHA256"].parts is None
    crc = stored_checksums({"ChecksumCRC64NVME": "AAAAAAAAAAA=", "ChecksumType": "FULL_OBJECT", "ETag": '"x-9"'})
    assert not crc["CRC64NVME"].composite


def test_multipart_full_object_crc64nvme_is_compared_without_a_part_layout(s3, bucket, multipart_file, tmp_path):
    """CRC64NVME is a full-object checksum whatever the part layout (awscrt is pinned: moto stores it)."""
    key = "database/mp-crc64.dump"
    s3.upload_file(str(multipart_file), bucket, key, ExtraArgs={"ChecksumAlgorithm": "CRC64NVME"},
                   Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
    assert "ChecksumCRC64NVME" in s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    rep = _report(s3, bucket, key, multipart_file, _sha(multipart_file))
    assert rep.ok and rep.method == "crc64nvme" and rep.body_bytes_read == 0, rep.results
    assert "full-object CRC64NVME matches" in _by_check(rep.results)["s3_checksum"].detail
    local = tmp_path / "big.dump"
    local.write_bytes(multipart_file.read_bytes())
    _flip(local, 7 * MiB)
    bad = _report(s3, bucket, key, local, _sha(local))
    assert not bad.ok and "full-object CRC64NVME differs" in _by_check(bad.results)["s3_checksum"].detail


def test_the_strongest_evidence_wins_when_several_are_stored(s3, bucket, tmp_path):
    """SHA-256 before CRC before MD5: a single-part SHA-256 is compared without reading anything."""
    path = _write(tmp_path / "both.dump", 100_000, seed=21)
    s3.put_object(Bucket=bucket, Key="database/both.dump", Body=path.read_bytes(), ChecksumAlgorithm="SHA256")
    rep = _report(s3, bucket, "database/both.dump", path, _sha(path))
    assert rep.method == "sha256" and rep.local_bytes_read == 0 and rep.body_bytes_read == 0
