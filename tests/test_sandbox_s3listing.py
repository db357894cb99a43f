"""The sandbox S3 server's indexed listings (sandbox/s3listing.py) answer exactly as moto 5.2.5 does.

Seeded random histories of puts, overwrites, deletes (delete markers on a versioned bucket,
removals on a plain one) and deletions of single versions are applied to moto's backend, and
after each step every page of ListObjectsV2 and ListObjectVersions is asked of both the
indexed functions and moto's own (``.shipped``), on the same state, over prefixes,
delimiters (one and several characters), start-after, continuation tokens, max-keys,
key-marker and version-id-marker, following each side's own next markers. A page served
through the real server process is compared with S3's rule written out plainly. Also the two
response adaptations that listings and batch deletions meet: moto's timestamps parsed without
dateutil, and Quiet DeleteObjects answering only the errors.
"""

from __future__ import annotations

import copy
import io
import random
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from sandbox import s3listing, s3moto, s3responses
from sandbox.s3blobs import BlobStore
from sandbox.s3moto import patch_moto
from sandbox.s3server import create_production_bucket

ACCOUNT, PARTITION = "123456789012", "aws"
ALPHABET = "ab/-.é"
PREFIXES = ["", "a", "a/", "b/", "a/b", "é", "zz", "/"]
DELIMITERS = [None, "/", "-", "a/", "//"]


@pytest.fixture
def backend(tmp_path):
    patch_moto(BlobStore(tmp_path / "blobs"))
    from moto.s3.models import s3_backends

    be = s3_backends[ACCOUNT][PARTITION]
    be.reset()
    yield be
    be.reset()


def _names(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 6))) for _ in range(n)]


def _step(be, bucket: str, names: list[str], rng: random.Random) -> None:
    """One random change: mostly puts, some deletes of the key or of one of its versions."""
    b = be.get_bucket(bucket)
    name = rng.choice(names)
    roll = rng.random()
    if roll < 0.6:
        be.put_object(bucket, name, b"v%d" % rng.randrange(1000))
    elif roll < 0.8:
        if name in b.keys:
            be.delete_object(bucket, name)
    else:
        versions = dict.get(b.keys, name) or []
        if versions and b.is_versioned:
            be.delete_object(bucket, name, version_id=rng.choice(versions).version_id, bypass=True)


def _v2_entry(e) -> tuple:
    return ("prefix", e) if isinstance(e, str) else ("key", e.name, e.version_id)


def _v2_pages(fn, be, bucket: str, prefix, delimiter, start_after, max_keys) -> list:
    """Every page, following the answer's own continuation tokens (at most 60)."""
    b = be.get_bucket(bucket)
    pages, token = [], None
    for _ in range(60):
        keys, truncated, token = fn(be, b, prefix, delimiter, token, None if token else start_after, max_keys)
        pages.append(([_v2_entry(e) for e in keys], truncated, token))
        if not truncated:
            break
    return pages


def _versions_answer(answer: tuple) -> tuple:
    versions, prefixes, markers, next_key, next_version = answer
    return ([(v.name, v.version_id, v.is_latest, v.etag) for v in versions], list(prefixes),
            [(m.name, m.version_id, m.is_latest) for m in markers], next_key, next_version)


def _version_pages(fn, be, bucket: str, prefix, delimiter, key_marker, version_marker, max_keys) -> list:
    pages = []
    for _ in range(60):
        answer = _versions_answer(fn(be, bucket, delimiter, key_marker, max_keys, prefix, version_marker))
        pages.append(answer)
        if answer[3] is None:
            break
        key_marker, version_marker = answer[3], answer[4]
    return pages


def _compare(be, bucket: str, names: list[str], rng: random.Random) -> int:
    from moto.s3.models import S3Backend

    v2, versions = S3Backend.list_objects_v2, S3Backend.list_object_versions
    b = be.get_bucket(bucket)
    all_versions = [v.version_id for vs in dict.values(b.keys) for v in vs]
    asked = 0
    for _ in range(6):
        prefix, delimiter = rng.choice(PREFIXES + [None]), rng.choice(DELIMITERS)
        start_after = rng.choice([None, None, rng.choice(names), "".join(_names(rng, 1))])
        max_keys = rng.choice([1, 2, 3, 7, 1000])
        args = (be, bucket, prefix, delimiter, start_after, max_keys)
        assert _v2_pages(v2, *args) == _v2_pages(v2.shipped, *args), args[2:]
        key_marker = rng.choice([None, None, rng.choice(names), "a/"])
        version_marker = rng.choice([None, None, "", "no-such-version"] + all_versions[:5])
        args = (be, bucket, prefix or "", delimiter, key_marker, version_marker, max_keys)
        assert _version_pages(versions, *args) == _version_pages(versions.shipped, *args), args[2:]
        asked += 2
    return asked


@pytest.mark.parametrize("versioned", [True, False])
def test_indexed_listings_answer_as_moto_does_on_random_histories(backend, versioned):
    deadline = time.monotonic() + 12
    asked = 0
    for seed in range(40):
        if time.monotonic() > deadline:
            break
        rng = random.Random(1000 * versioned + seed)
        bucket = f"listing-{seed}"
        backend.create_bucket(bucket, "us-east-1")
        if versioned:
            backend.put_bucket_versioning(bucket, "Enabled")
        names = _names(rng, rng.randint(3, 40))
        for step in range(rng.randint(5, 80)):
            _step(backend, bucket, names, rng)
            if step % 10 == 0:
                asked += _compare(backend, bucket, names, rng)
        asked += _compare(backend, bucket, names, rng)
    assert asked >= 100, f"only {asked} listings compared in the time allowed"


def test_the_index_follows_removals_copies_and_pickles(backend, tmp_path):
    """A name removed (last version deleted, unversioned delete) leaves the index; a copied or
    unpickled store builds its own index instead of sharing a stale one."""
    from moto.s3.models import S3Backend

    store = BlobStore(tmp_path / "blobs")
    backend.create_bucket("index-life", "us-east-1")
    backend.put_bucket_versioning("index-life", "Enabled")
    b = backend.get_bucket("index-life")
    for name in ("a/1", "a/2", "b"):
        backend.put_object("index-life", name, b"x")
    listed = lambda store_bucket: [_v2_entry(e) for e in  # noqa: E731
                                   S3Backend.list_objects_v2(backend, store_bucket, "", None, None, None, 100)[0]]
    assert [e[1] for e in listed(b)] == ["a/1", "a/2", "b"]
    only = dict.get(b.keys, "a/2")[0]
    backend.delete_object("index-life", "a/2", version_id=only.version_id)
    assert "a/2" not in s3listing.names(b.keys)
    assert [e[1] for e in listed(b)] == ["a/1", "b"]
    snapshot = io.BytesIO()
    s3moto._Pickler(snapshot, set()).dump(b.keys)  # as the server's snapshot pickles it
    snapshot.seek(0)
    for clone in (copy.deepcopy(b.keys), s3moto._Unpickler(snapshot, store).load()):
        assert s3listing.INDEX_ATTR not in clone.__dict__
        clone["c"] = dict.get(b.keys, "b")[0]
        assert s3listing.names(clone) == ["a/1", "b", "c"]
    assert s3listing.names(b.keys) == ["a/1", "b"]  # the original's index is its own


def _s3_rule(keys: set[str], prefix: str, delimiter: str | None, start_after: str) -> list[str]:
    """ListObjectsV2 as S3 documents it: keys under the prefix, rolled up at the first delimiter
    after the prefix, in UTF-8 order, after start-after."""
    out = set()
    for k in keys:
        if not k.startswith(prefix):
            continue
        cut = k.find(delimiter, len(prefix)) if delimiter else -1
        out.add(k[:cut + len(delimiter)] if cut >= 0 else k)
    return sorted(e for e in out if e > start_after)


def test_the_server_pages_listings_by_s3s_rule(s3, bucket):
    """Through the real server process: pages of 7 over current keys (some deleted, some
    overwritten) give what S3's rule says, with and without a delimiter."""
    rng = random.Random(7)
    keys = {f"{rng.choice(['db/', 'db/x/', 'wal/'])}{rng.randrange(10**6):06d}" for _ in range(120)}
    for k in sorted(keys):
        s3.put_object(Bucket=bucket, Key=k, Body=b"1")
    gone = set(rng.sample(sorted(keys), 30))
    for k in gone:
        s3.delete_object(Bucket=bucket, Key=k)
    for k in rng.sample(sorted(keys - gone), 10):
        s3.put_object(Bucket=bucket, Key=k, Body=b"2")
    for prefix, delimiter, start_after in [("", None, ""), ("db/", "/", ""), ("db/", None, "db/5"), ("", "/", "")]:
        kwargs = {"Bucket": bucket, "Prefix": prefix, "StartAfter": start_after,
                  "PaginationConfig": {"PageSize": 7}}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        got = []
        for page in s3.get_paginator("list_objects_v2").paginate(**kwargs):
            got += [o["Key"] for o in page.get("Contents", ())] + [p["Prefix"] for p in page.get("CommonPrefixes", ())]
        live = keys - gone
        assert sorted(got) == _s3_rule(live, prefix, delimiter, start_after), (prefix, delimiter, start_after)
        assert len(got) == len(set(got))


def test_quiet_delete_objects_answers_only_the_errors(s3, bucket, now):
    """S3's Quiet mode: the answer lists only the keys that could not be deleted (moto listed
    every key); without Quiet every deleted key is listed, as before."""
    locked = s3.put_object(Bucket=bucket, Key="locked", Body=b"x", ChecksumAlgorithm="SHA256",
                           ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=now + timedelta(days=3))["VersionId"]
    for key in ("a", "b", "c"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Quiet": True, "Objects": [
        {"Key": "a"}, {"Key": "locked", "VersionId": locked}]})
    assert "Deleted" not in quiet
    assert [(e["Key"], e["Code"]) for e in quiet["Errors"]] == [("locked", "AccessDenied")]
    loud = s3.delete_objects(Bucket=bucket, Delete={"Quiet": False, "Objects": [{"Key": "b"}, {"Key": "c"}]})
    assert sorted(d["Key"] for d in loud["Deleted"]) == ["b", "c"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", ())] == ["locked"]


def test_moto_timestamps_parse_as_botocore_parses_them():
    """The serializer's fast path gives botocore's datetime for every string moto formats, and
    leaves anything else (offsets, impossible dates, other formats) to botocore."""
    from botocore.utils import parse_to_aware_datetime

    fast = s3responses._fast_aware_datetime(parse_to_aware_datetime)
    rng = random.Random(11)
    for _ in range(2000):
        when = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=rng.randrange(4_000_000_000),
                                                                     microseconds=rng.randrange(10**6))
        for text in (when.strftime("%Y-%m-%dT%H:%M:%S.000Z"), when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                     when.strftime("%Y-%m-%dT%H:%M:%SZ")):
            assert fast(text) == parse_to_aware_datetime(text), text
            assert fast(text).utcoffset() == timedelta(0)
    for text in ("2026-02-30T00:00:00.000Z", "2026-12-01T10:00:00+02:00", "1764583200", "2026-12-01"):
        try:
            expected = parse_to_aware_datetime(text)
        except ValueError:
            with pytest.raises(ValueError):
                fast(text)
        else:
            assert fast(text) == expected, text


def test_listing_bodies_are_moto_serializers_byte_for_byte(backend, monkeypatch):
    """ListObjectsV2 bodies with the entries written directly equal moto's own serialization, on
    keys with markup and non-ASCII characters, checksums, storage classes, owners, URL encoding,
    delimiters, start-after and continuation tokens."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.s3.responses import S3Response
    from werkzeug.test import Client

    client = Client(DomainDispatcherApplication(create_backend_app))
    headers = {"Host": "127.0.0.1:5000", "Authorization": "AWS4-HMAC-SHA256 Credential=sandbox-access-key/"
               "20261201/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=x"}
    rng = random.Random(5)
    backend.create_bucket("bodies", "us-east-1")
    for name in set(_names(rng, 150)) | {"a&b", "<x>", "q\"uote's", "sp ace/+%"}:
        key = backend.put_object("bodies", name, b"x" * rng.randrange(3),
                                 storage=rng.choice(["STANDARD", "STANDARD_IA", "GLACIER"]))
        if rng.random() < 0.3:
            key.checksum_algorithm = rng.choice(["SHA256", "CRC32"])
    shipped = S3Response.list_objects_v2.shipped
    compared = 0
    for _ in range(60):
        query = {"list-type": "2", "max-keys": str(rng.choice([1, 5, 1000]))}
        for name, values in (("prefix", PREFIXES), ("delimiter", DELIMITERS), ("start-after", ["a", "b/-"]),
                             ("fetch-owner", ["true"]), ("encoding-type", ["url"])):
            value = rng.choice(values + [None])
            if value:
                query[name] = value
        for _ in range(3):  # the first pages, each by the continuation token of the one before
            fast = client.get("/bodies", query_string=query, headers=headers).data
            with monkeypatch.context() as m:
                m.setattr(S3Response, "list_objects_v2", shipped)
                moto = client.get("/bodies", query_string=query, headers=headers).data
            assert fast == moto, query
            compared += fast.count(b"<Contents>")
            token = re.search(rb"<NextContinuationToken>([^<]+)<", fast)
            if not token:
                break
            query = {**query, "continuation-token": token.group(1).decode()}
    assert compared > 200
