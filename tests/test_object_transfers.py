"""Many small objects at a time (backupkit/storage/objectstore.py ``pooled``, ``upload_many``,
``heads``): a base backup is a thousand files, so its upload, its daily copy check and its
download for a point-in-time restore ask several at a time. Against the loopback S3 (moto)."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import datetime, timezone

import pytest
from botocore.exceptions import ClientError

from backupkit.checks.s3copy import s3_copy_report
from backupkit.jobs.daily import _dir_copy_reports, _merge_dir_reports
from backupkit.model import Backup, S3Copy
from backupkit.restore.fetch import download_object
from backupkit.restore.pitr_base import BaseBackupError, BaseChoice, download_base_backup
from backupkit.storage.objectstore import Bucket, pooled


def test_pooled_keeps_the_order_and_runs_several_at_once():
    running, most = [0], [0]
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return i * i

    assert pooled(work, list(range(40)), 8) == [i * i for i in range(40)]
    assert most[0] > 1            # at once, not one after the other
    assert most[0] <= 8           # never more than asked


def test_pooled_raises_the_first_failure_and_starts_no_more():
    started = []

    def work(i: int) -> int:
        started.append(i)
        if i == 0:
            raise OSError("the first one failed")
        time.sleep(0.01)
        return i

    with pytest.raises(OSError, match="the first one failed"):
        pooled(work, list(range(500)), 4)
    assert len(started) < 100     # the rest were cancelled, not run to the end


def test_upload_many_then_heads_answer_per_key(s3, bucket, tmp_path):
    store = Bucket(s3, bucket)
    items = []
    for i in range(30):
        f = tmp_path / f"f{i}"
        f.write_bytes(bytes([i]) * (i + 1))
        items.append((f, f"many/f{i}"))
    assert store.upload_many(items) == 30
    heads = store.heads([k for _, k in items] + ["many/absent"], checksums=True)
    assert heads["many/absent"] is None
    for f, key in items:
        assert heads[key]["ContentLength"] == f.stat().st_size
        assert heads[key]["ChecksumSHA256"]   # uploaded with S3's SHA-256, as the object-lock bucket wants


def test_a_head_that_failed_is_that_files_verdict(s3, bucket, tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"x")
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "HeadObject")
    report = s3_copy_report(Bucket(s3, bucket), "dir/x", local_size=1, local_sha256=None, local_path=f,
                            artifact="src/dir", head=denied)
    [result] = report.results
    assert result.check == "s3_present" and not result.ok and "access denied" in result.detail


def test_the_copy_check_of_a_directory_names_the_missing_and_the_short_file(s3, bucket, tmp_path):
    store = Bucket(s3, bucket)
    root = tmp_path / "base_1"
    for i in range(25):
        (root / "sub").mkdir(parents=True, exist_ok=True)
        (root / "sub" / f"f{i:02}").write_bytes(b"%d" % i * 100)
    store.upload_many([(p, f"bb/base_1/{p.relative_to(root).as_posix()}") for p in sorted(root.rglob("f*"))])
    merged = {r.check: r for r in _merge_dir_reports("src/base_1", _dir_copy_reports(store, "bb/base_1", root,
                                                                                     "src/base_1", None))}
    assert all(r.ok for r in merged.values()), merged
    store.client.delete_object(Bucket=bucket, Key="bb/base_1/sub/f07")
    store.put("bb/base_1/sub/f11", b"short")
    reports = _dir_copy_reports(store, "bb/base_1", root, "src/base_1", None)
    bad = {(r.check, r.detail.split(" ")[0]) for rep in reports for r in rep.results if not r.ok}
    assert ("s3_size", f"s3://{bucket}/bb/base_1/sub/f11") in bad
    assert any(c == "s3_present" for c, _ in bad)


def test_a_download_longer_than_expected_stops_before_the_extra_bytes(s3, bucket, tmp_path):
    store = Bucket(s3, bucket)
    store.put("big", b"a" * 1000)
    with pytest.raises(OSError, match="more than the 100"):
        download_object(store, "big", None, tmp_path / "big", limit=100)
    assert not (tmp_path / "big").exists() or (tmp_path / "big").stat().st_size <= 100
    digest, n, _ = download_object(store, "big", None, tmp_path / "ok", limit=1000)
    assert n == 1000 and digest == hashlib.sha256(b"a" * 1000).hexdigest()


def _choice(name: str) -> BaseChoice:
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    backup = Backup("pitr", name, when, s3=S3Copy(key=f"bb/{name}", size=0, is_dir=True))
    return BaseChoice(name, backup, 0, 1, when, True)


def test_a_key_below_another_file_is_refused_before_anything_is_fetched(s3, bucket, tmp_path):
    store = Bucket(s3, bucket)
    store.put("bb/base_2/global", b"a file")
    store.put("bb/base_2/global/pg_control", b"below it")
    with pytest.raises(BaseBackupError, match="below another object that is a file"):
        download_base_backup(store, _choice("base_2"), tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_a_failed_download_names_the_object(s3, bucket, tmp_path, monkeypatch):
    store = Bucket(s3, bucket)
    for i in range(20):
        store.put(f"bb/base_3/f{i:02}", b"x" * 10)
    real_get = Bucket.get

    def grown(self, key, **kw):   # f13 replaced by a bigger object between the listing and its GET
        if key.endswith("/f13"):
            store.put(key, b"x" * 5000)
        return real_get(self, key, **kw)

    monkeypatch.setattr(Bucket, "get", grown)
    with pytest.raises(BaseBackupError, match=r"bb/base_3/f13.*more than the 10"):
        download_base_backup(store, _choice("base_3"), tmp_path / "dest")
