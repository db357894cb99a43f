"""Defects on demand (``make defect NAME=...``): each one is found by the daily check that
should find it, and ``make heal`` puts local files and the bucket back exactly."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from backupkit.config import load_config
from backupkit.jobs.daily import check_cloud_copies, check_integrity, check_presence
from backupkit.state import VerificationState
from backupkit.storage.objectstore import Bucket
from sandbox.bookingdb import create_booking_db
from sandbox.defects import DEFECTS, DefectError, Defects
from sandbox.history import generate_history
from sandbox.s3server import create_production_bucket
from sandbox.stack import CONFIG_FILE, sandbox_env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def live(pg, moto_server, tmp_path_factory, now):
    root = tmp_path_factory.mktemp("defects")
    mp = pytest.MonkeyPatch()
    try:
        for k, v in sandbox_env(root, pg.port, moto_server.endpoint_url).items():
            mp.setenv(k, v)
        mp.setenv("BACKUP_BUCKET", "live-defects")
        config = load_config(CONFIG_FILE)
        client = moto_server.client()
        create_production_bucket(client, config.bucket, object_lock_days=1)
        create_booking_db(pg, "defects_db", scale=100)
        generate_history(config, pg, now=now, days=8, s3_client=client, database="defects_db")
        yield config, client, Defects(root / "defects", config, client)
    finally:
        mp.undo()
        pg.psql('DROP DATABASE IF EXISTS "defects_db" WITH (FORCE)', check=False)


def snapshot(config, client) -> dict:
    local = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for s in config.sources
             for p in sorted(s.local_dir.rglob("*")) if p.is_file()}
    current = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=config.bucket):
        current.update({v["Key"]: (v["VersionId"], v["ETag"]) for v in page.get("Versions", ()) if v["IsLatest"]})
        current.update({m["Key"]: ("marker",) for m in page.get("DeleteMarkers", ()) if m["IsLatest"]})
    return {"local": local, "s3": current}


def failing(results) -> set[str]:
    return {r["check"] for r in results if not r["ok"]}


@pytest.mark.parametrize("name, source, check, expect", [
    ("missing-night", "trixtech-db", "presence", "nightly_gaps"),
    ("stale-history", "trixtech-files", "presence", "fresh"),
    ("damaged-newest", "trixtech-db", "integrity", "custom_dump"),
    ("bitflip", "trixtech-db", "integrity", "sha256"),
    ("missing-in-s3", "trixtech-files", "cloud", "s3_present"),
    ("wrong-s3-checksum", "trixtech-db-sql", "cloud", "s3_checksum"),
])
def test_each_defect_is_found_and_healed_exactly(live, now, tmp_path, name, source, check, expect):
    config, client, defects = live
    before = snapshot(config, client)
    record = defects.inject(name)
    try:
        assert snapshot(config, client) != before
        state = VerificationState(tmp_path / "state")  # a fresh memory: the first daily run after the defect
        results = {"presence": lambda: check_presence(config, source, now),
                   "integrity": lambda: check_integrity(config, source, now, state),
                   "cloud": lambda: check_cloud_copies(config, source, Bucket(client, config.bucket), state)}[check]()
        assert expect in failing(results), results
        assert defects.active() == [record]
        with pytest.raises(DefectError, match="already active"):
            defects.inject(name)
    finally:
        healed = defects.heal()
    assert [d["name"] for d in healed] == [name]
    assert snapshot(config, client) == before
    assert defects.active() == []


def test_defects_are_listed_by_the_command_line():
    import os

    out = subprocess.run([sys.executable, "-m", "sandbox", "defect", "--help"], capture_output=True, text=True,
                         cwd=REPO, check=True, env={**os.environ, "COLUMNS": "2000"}).stdout
    for name in DEFECTS:
        assert name in out
    assert set(DEFECTS) == {"missing-night", "damaged-newest", "bitflip", "stale-history", "missing-in-s3",
                            "wrong-s3-checksum", "wal-gap"}
