"""The sandbox's S3 server (sandbox.s3moto): bounded disk and descriptors under version
listings, state that survives a restart exactly, object lock on multipart uploads, a
snapshot that is refused (not half-loaded) when damaged, and a sync that never uploads a
local file over an S3 copy. Every server here is the real process on loopback."""

from __future__ import annotations

import hashlib
import os
import random
import time
from datetime import timedelta
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from backupkit.catalog import s3_key_for
from sandbox.s3blobs import BlobBuffer, BlobStore
from sandbox.s3moto import S3State, SnapshotError
from sandbox.s3server import MotoServer, create_production_bucket

MiB = 1 << 20
PARTS = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, use_threads=False)


def _open_deleted(pid: int) -> int:
    fd_dir = Path(f"/proc/{pid}/fd")
    n = 0
    for fd in fd_dir.iterdir():
        try:
            n += "(deleted)" in os.readlink(fd)
        except OSError:
            pass
    return n


def _disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _settle(server: MotoServer, blobs: Path, expected: int | None = None, timeout: float = 60.0) -> int:
    """The body store's size once the server's snapshot after the last change has run.

    A snapshot follows a change within about a second, but on a loaded machine (or under
    faketime) later: poll until the size is ``expected`` or has not changed for 2.5 s,
    for at most ``timeout`` seconds, and return it (the caller asserts).
    """
    deadline = time.monotonic() + timeout
    last, stable_since = _disk(blobs), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        size = _disk(blobs)
        if expected is not None and size == expected:
            return size
        if size != last:
            last, stable_since = size, time.monotonic()
        elif expected is None and time.monotonic() - stable_since >= 2.5:
            return size
    return last


@pytest.fixture
def server(tmp_path):
    srv = MotoServer(data_dir=tmp_path / "s3", log_path=tmp_path / "s3.log").start()
    yield srv
    srv.stop()


def _versions(client, bucket: str) -> list[tuple]:
    out = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        out += [(v["Key"], v["VersionId"], v["ETag"], v["Size"], v["LastModified"], v["IsLatest"])
                for v in page.get("Versions", ())]
        out += [(m["Key"], m["VersionId"], "marker", 0, m["LastModified"], m["IsLatest"])
                for m in page.get("DeleteMarkers", ())]
    return sorted(out)


def test_version_listings_do_not_grow_disk_or_descriptors(server, tmp_path):
    client = server.client()
    create_production_bucket(client, "soak")
    stored = 0
    for i in range(12):
        body = random.Random(i).randbytes(MiB)
        client.put_object(Bucket="soak", Key=f"k{i}", Body=body, ChecksumAlgorithm="SHA256")
        stored += len(body)
    disk0, deleted0 = _settle(server, tmp_path / "s3" / "blobs", stored), _open_deleted(server.proc.pid)
    for _ in range(10):
        assert len(client.list_object_versions(Bucket="soak")["Versions"]) == 12
    _settle(server, tmp_path / "s3" / "blobs")
    # moto as shipped: +12 MiB in 12 deleted-but-open files per listing, never freed.
    assert _open_deleted(server.proc.pid) == deleted0 == 0
    assert _disk(tmp_path / "s3" / "blobs") == disk0 == stored


def test_multipart_upload_is_stored_once_and_locked_by_the_bucket_default(server, tmp_path, now):
    client = server.client()
    create_production_bucket(client, "mp-default", object_lock_days=1)
    data = random.Random(7).randbytes(12 * MiB)  # 3 parts: 5 + 5 + 2 MiB
    (tmp_path / "big").write_bytes(data)
    client.upload_file(str(tmp_path / "big"), "mp-default", "big.dump", ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=PARTS)
    head = client.head_object(Bucket="mp-default", Key="big.dump", ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-3"')
    assert head["ObjectLockMode"] == "GOVERNANCE"  # moto as shipped: no retention on multipart uploads
    # One day from the upload, which happened during this session (S3 stamps it with its own clock).
    assert now + timedelta(days=1) - timedelta(minutes=1) <= head["ObjectLockRetainUntilDate"] \
        <= now + timedelta(days=1, hours=3)
    version = head["VersionId"]
    err = pytest.raises(Exception, client.delete_object, Bucket="mp-default", Key="big.dump", VersionId=version)
    assert "AccessDenied" in str(err.value)
    part2 = client.head_object(Bucket="mp-default", Key="big.dump", PartNumber=3)
    assert part2["ContentLength"] == 2 * MiB and part2["PartsCount"] == 3
    assert client.get_object(Bucket="mp-default", Key="big.dump", Range="bytes=5242870-5242889")["Body"].read() \
        == data[5242870:5242890]
    assert _settle(server, tmp_path / "s3" / "blobs", len(data)) == len(data)  # the parts are ranges of the object, not a copy


def test_multipart_upload_takes_the_lock_given_at_create(server, tmp_path, now):
    client = server.client()
    create_production_bucket(client, "mp-explicit")
    (tmp_path / "big").write_bytes(random.Random(8).randbytes(11 * MiB))
    until = (now + timedelta(days=3)).replace(microsecond=0)
    client.upload_file(str(tmp_path / "big"), "mp-explicit", "x", Config=PARTS,
                       ExtraArgs={"ChecksumAlgorithm": "SHA256", "ObjectLockMode": "COMPLIANCE",
                                  "ObjectLockRetainUntilDate": until, "ObjectLockLegalHoldStatus": "ON"})
    head = client.head_object(Bucket="mp-explicit", Key="x")
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"] == until
    assert head["ObjectLockLegalHoldStatus"] == "ON"


def test_state_survives_a_restart_exactly(tmp_path):
    data_dir = tmp_path / "s3"
    srv = MotoServer(data_dir=data_dir).start()
    client = srv.client()
    create_production_bucket(client, "keep", object_lock_days=1)
    client.put_bucket_tagging(Bucket="keep", Tagging={"TagSet": [{"Key": "team", "Value": "ops"}]})
    bodies = {f"database/b{i}.dump": random.Random(i).randbytes(300_000 + i) for i in range(4)}
    for key, body in bodies.items():
        client.put_object(Bucket="keep", Key=key, Body=body, ChecksumAlgorithm="SHA256",
                          Metadata={"source": "trixtech-db"}, Tagging="kind=backup")
    client.put_object(Bucket="keep", Key="database/b0.dump", Body=b"second version", ChecksumAlgorithm="SHA256")
    client.delete_object(Bucket="keep", Key="database/b1.dump")  # a delete marker on top
    client.put_object_legal_hold(Bucket="keep", Key="database/b2.dump", LegalHold={"Status": "ON"})
    client.put_object_tagging(Bucket="keep", Key="database/b3.dump",
                              Tagging={"TagSet": [{"Key": "backupkit-hold", "Value": "audit"}]})
    (tmp_path / "big").write_bytes(random.Random(9).randbytes(11 * MiB))
    client.upload_file(str(tmp_path / "big"), "keep", "files/big.tar.gz", ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                       Config=PARTS)

    def observe(c) -> dict:
        heads = {}
        for key, vid, *_ in _versions(c, "keep"):
            try:
                h = c.head_object(Bucket="keep", Key=key, VersionId=vid, ChecksumMode="ENABLED")
            except Exception as exc:  # a delete marker answers 405
                heads[(key, vid)] = type(exc).__name__
                continue
            heads[(key, vid)] = {k: h.get(k) for k in ("ETag", "ContentLength", "ChecksumSHA256", "Metadata",
                                                         "ObjectLockMode", "ObjectLockRetainUntilDate",
                                                         "ObjectLockLegalHoldStatus", "ServerSideEncryption",
                                                         "LastModified")}
            heads[(key, vid)]["tags"] = c.get_object_tagging(Bucket="keep", Key=key, VersionId=vid)["TagSet"]
            heads[(key, vid)]["sha256"] = hashlib.sha256(
                c.get_object(Bucket="keep", Key=key, VersionId=vid)["Body"].read()).hexdigest()
        return {
            "versions": _versions(c, "keep"), "heads": heads,
            "versioning": c.get_bucket_versioning(Bucket="keep")["Status"],
            "encryption": c.get_bucket_encryption(Bucket="keep")["ServerSideEncryptionConfiguration"],
            "lock": c.get_object_lock_configuration(Bucket="keep")["ObjectLockConfiguration"],
            "public": c.get_public_access_block(Bucket="keep")["PublicAccessBlockConfiguration"],
            "tags": c.get_bucket_tagging(Bucket="keep")["TagSet"],
        }

    before = observe(client)
    assert len(before["versions"]) == 7
    srv.stop()
    again = MotoServer(port=srv.port, data_dir=data_dir).start()
    try:
        after = observe(again.client())
        for k in before:
            if k == "heads":
                for hk in before[k]:
                    assert after[k].get(hk) == before[k][hk], hk
            assert after[k] == before[k], k
    finally:
        again.stop()


def test_a_damaged_snapshot_stops_the_server_with_a_message(tmp_path):
    data_dir = tmp_path / "s3"
    srv = MotoServer(data_dir=data_dir).start()
    try:
        create_production_bucket(srv.client(), "damaged")
    finally:
        srv.stop()
    snapshot = data_dir / "state.pickle"
    good = snapshot.read_bytes()
    snapshot.write_bytes(good[: len(good) // 2])
    log = tmp_path / "log"
    with pytest.raises(RuntimeError, match="exited with 3"):
        MotoServer(data_dir=data_dir, log_path=log).start()
    text = log.read_text()
    assert str(snapshot) in text and "cannot be loaded" in text and "Move the file away" in text
    assert snapshot.read_bytes() == good[: len(good) // 2]  # left as it was, for a person to look at


def test_snapshot_loading_refuses_mutations_and_foreign_classes(tmp_path):
    """Seeded mutations of a real snapshot: each loads or is refused with SnapshotError, never
    another exception; a pickle naming anything outside moto's models is refused."""
    data_dir = tmp_path / "s3"
    srv = MotoServer(data_dir=data_dir).start()
    try:
        client = srv.client()
        create_production_bucket(client, "fuzz", object_lock_days=1)
        client.put_object(Bucket="fuzz", Key="a", Body=b"x" * 1000, ChecksumAlgorithm="SHA256")
    finally:
        srv.stop()
    good = (data_dir / "state.pickle").read_bytes()
    rng = random.Random(20250301)
    state = S3State(data_dir, log=lambda *_: None)
    from sandbox import s3moto

    s3moto.patch_moto(state.store)
    deadline = time.monotonic() + 20
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(300):
        if time.monotonic() > deadline:
            break
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        (data_dir / "state.pickle").write_bytes(bytes(data))
        try:
            state.load()
            outcomes["loaded"] += 1
        except SnapshotError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0
    import pickle

    (data_dir / "state.pickle").write_bytes(pickle.dumps({"format": 1, "x": os.system}))
    with pytest.raises(SnapshotError, match="posix.system is not part of an S3 snapshot"):
        state.load()


def test_blob_buffer_is_copy_on_write(tmp_path):
    store = BlobStore(tmp_path)
    buf = BlobBuffer(store)
    buf.write(b"hello world")
    view = buf.view(6, 5)
    buf.seek(0)
    buf.truncate()
    buf.write(b"new")
    assert view.read() == b"world"  # the old body is still there for its views
    buf.seek(0)
    assert buf.read() == b"new" and buf.read() == b""
    assert len(store.unreferenced([buf.blob, view.blob])) == 0
    assert store.unreferenced([buf.blob]) == [view.blob]
    assert store.remove([view.blob]) == (1, 11)
    with pytest.raises(ValueError):
        buf.view(2, 5)


def test_sync_never_uploads_over_a_copy_in_the_bucket(pg, moto_server, tmp_path, now, monkeypatch):
    """A local backup damaged after its upload (same size, or cut short) and one deleted from
    the bucket stay as they are in S3; only keys the bucket never had are uploaded."""
    from backupkit.config import load_config
    from sandbox.bookingdb import create_booking_db
    from sandbox.history import generate_history, sync_to_s3
    from sandbox.stack import CONFIG_FILE, sandbox_env

    for k, v in sandbox_env(tmp_path, pg.port, moto_server.endpoint_url).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("BACKUP_BUCKET", "sync-never-over")
    config = load_config(CONFIG_FILE)
    client = moto_server.client()
    create_production_bucket(client, config.bucket)
    create_booking_db(pg, "sync_never", scale=100)
    h = generate_history(config, pg, now=now, days=2, s3_client=client, database="sync_never")
    db, sql, files = (config.source(n) for n in ("trixtech-db", "trixtech-db-sql", "trixtech-files"))
    flipped, cut, gone = h.newest(db.name), h.newest(sql.name), h.newest(files.name)
    keys = [s3_key_for(db, flipped.name), s3_key_for(sql, cut.name), s3_key_for(files, gone.name)]
    good = {k: client.head_object(Bucket=config.bucket, Key=k)["ETag"] for k in keys[:2]}
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:-100])
    client.delete_object(Bucket=config.bucket, Key=keys[2])
    extra = db.local_dir / db.pattern.name_for(h.nights[-1] + timedelta(hours=12))
    extra.write_bytes(b"a manual backup taken after the upload")

    report = sync_to_s3(config, client)
    assert report.uploaded == 1  # the new manual backup, nothing else
    assert client.head_object(Bucket=config.bucket, Key=s3_key_for(db, extra.name))["ContentLength"] == 38
    assert {k: client.head_object(Bucket=config.bucket, Key=k)["ETag"] for k in keys[:2]} == good
    assert report.differing == [keys[1]]  # the same-size flip is the daily verification's to find
    assert report.deleted_in_s3 == [keys[2]]
    assert "DeleteMarkers" in client.list_object_versions(Bucket=config.bucket, Prefix=keys[2])


def test_an_ephemeral_server_leaves_no_files_even_when_killed():
    """Without a data directory the bodies live in a temporary one: gone after a clean stop, and
    after a server that had to be killed (the benchmarks' 100,000 objects once outlasted the wait)."""
    import signal

    for kill in (False, True):
        srv = MotoServer().start()
        client = srv.client()
        client.create_bucket(Bucket="scratch-check")
        client.put_object(Bucket="scratch-check", Key="k", Body=b"x" * 1000)
        assert srv.scratch is not None and any(srv.scratch.rglob("*"))
        if kill:
            srv.proc.send_signal(signal.SIGKILL)
            srv.proc.wait(10)
        srv.stop()
        assert not srv.scratch.exists(), f"left behind (killed={kill}): {srv.scratch}"
