"""The WAL archive's S3 copy compared by the strongest evidence S3 stored (backupkit.checks.s3copy, as
for dumps), not by size: real 16 MB segments of a real server, uploaded as ``aws s3 cp`` does (8 MiB
parts: multipart, so the ETag is no MD5) with and without S3's SHA-256, on the loopback S3 (moto)."""

from __future__ import annotations

import shutil

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig

from _config_helpers import short_dir
from _wal_archive import wait_archived
from backupkit.config import load_config
from backupkit.jobs import daily
from backupkit.pgserver import LocalPostgres
from backupkit.storage.objectstore import Bucket
from backupkit.wal.naming import classify
from sandbox import walarchive
from test_wal_source import write_config

MiB = 1 << 20
PARTS = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB)   # the AWS CLI's defaults


@pytest.fixture(scope="module")
def archive16():
    """Two or more whole 16 MB segments archived by a real server with the default segment size."""
    root = short_dir("bk-wal16-")
    archive = root / "archive"
    walarchive.prepare_dirs(archive, root / "bases")
    pg = LocalPostgres(root / "pg", settings=walarchive.archive_settings(archive)).start()
    try:
        pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 30000) g")
        wait_archived(pg, archive)
        pg.psql("UPDATE t SET v = md5(v)")
        wait_archived(pg, archive)
    finally:
        pg.destroy()
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _segments(root):
    return sorted(f for f in (root / "archive").iterdir() if (c := classify(f.name)) and c.kind == "segment")


def _copy_detail(results):
    return next(r for r in results if r["check"] == "wal_s3_copy")["detail"]


def test_multipart_copies_are_proved_by_stored_checksums_and_tampering_is_found(archive16, s3, bucket,
                                                                              moto_server, tmp_path):
    cfg = load_config(write_config(archive16, bucket=bucket, extra="    archive_s3_prefix: wal/\n"))
    segs = _segments(archive16)
    assert len(segs) >= 2 and all(f.stat().st_size == 16 * MiB for f in segs)
    # With S3's SHA-256 (the composite of the parts' SHA-256s), and without any checksum (the
    # ETag is then the MD5 of the parts' MD5s, "-2"): both multipart, neither ETag an MD5.
    s3.upload_file(str(segs[0]), bucket, f"wal/{segs[0].name}", ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                   Config=PARTS)
    plain = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=s3.meta.region_name,
                         config=BotoConfig(request_checksum_calculation="when_required"))
    for f in segs[1:]:
        plain.upload_file(str(f), bucket, f"wal/{f.name}", Config=PARTS)
    for f in segs:
        assert s3.head_object(Bucket=bucket, Key=f"wal/{f.name}")["ETag"].strip('"').endswith("-2")
    b = Bucket(s3, bucket)

    ok = daily.check_cloud_copies(cfg, "booking-wal", b)
    assert not [r for r in ok if not r["ok"] and r["check"].startswith("wal_")], ok
    detail = _copy_detail(ok)
    assert "1 by composite-sha256" in detail and f"{len(segs) - 1} by md5-etag" in detail, detail
    again = _copy_detail(daily.check_cloud_copies(cfg, "booking-wal", b))
    assert "(0 compared now)" in again and "1 by remembered (composite-sha256)" in again, again

    # Same size, other bytes (one byte in the second part), uploaded the same ways: found, by name.
    for i, (f, client, extra) in enumerate([(segs[0], s3, {"ChecksumAlgorithm": "SHA256"}), (segs[1], plain, {})]):
        other = tmp_path / f"other{i}"
        data = bytearray(f.read_bytes())
        data[12 * MiB] ^= 0xFF
        other.write_bytes(data)
        client.upload_file(str(other), bucket, f"wal/{f.name}", ExtraArgs=extra or None, Config=PARTS)
    bad = {r["artifact"]: r for r in daily.check_cloud_copies(cfg, "booking-wal", b) if not r["ok"]}
    first, second = bad[f"booking-wal/{segs[0].name}"], bad[f"booking-wal/{segs[1].name}"]
    assert first["check"] == second["check"] == "wal_s3_checksum"
    assert "composite SHA-256 of 2 parts differs" in first["detail"] and "evidence: composite-sha256" in first["detail"]
    assert "composite MD5 ETag of 2 parts differs" in second["detail"] and "evidence: md5-etag" in second["detail"]
