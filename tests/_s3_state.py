"""A bucket filled once per test module and put back before each test (many small objects: a WAL
archive and base backups are two thousand files, seconds to upload each time on two cores).

A module using it defines a module-scoped ``uploaded`` fixture (:func:`upload_once`) and imports
:func:`s3` and :func:`bucket` from here, which replace conftest's so the loopback S3 is not reset
between its tests; each test calls :func:`as_uploaded` first and so starts from exactly the
current objects uploaded, whatever the test before it deleted, damaged or added.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from backupkit.storage.objectstore import Bucket
from sandbox.s3server import create_production_bucket, reset


BUCKET = "trixtech-backups"


@pytest.fixture
def s3(uploaded, moto_server):
    """The module's client: its bucket, filled once (``uploaded``), is not reset between its tests."""
    return moto_server.client()


@pytest.fixture
def bucket(s3):
    return BUCKET


def upload_once(moto_server, bucket: str, items: list[tuple[Path, str]]) -> dict[str, tuple[Path, str]]:
    """A fresh production-like bucket holding ``items`` (file, key): key -> (file, MD5)."""
    reset(moto_server.endpoint_url)
    client = moto_server.client()
    create_production_bucket(client, bucket)
    Bucket(client, bucket).upload_many(items)
    return {key: (f, hashlib.md5(f.read_bytes()).hexdigest()) for f, key in items}


def as_uploaded(store: Bucket, uploaded: dict[str, tuple[Path, str]], prefixes: tuple[str, ...]) -> None:
    """Every current object under ``prefixes`` as uploaded (same MD5 ETag: single-part uploads),
    nothing more."""
    seen = {o.key: (o.etag or "").strip('"') for p in prefixes for o in store.objects(p)}
    for key in seen.keys() - uploaded.keys():
        store.client.delete_object(Bucket=store.name, Key=key)
    store.upload_many([(f, key) for key, (f, md5) in uploaded.items() if seen.get(key) != md5])
