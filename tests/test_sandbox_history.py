"""The generated backup history: real dumps and archives, sidecars, manifests, logs, S3 copies
with S3's own SHA-256, and each switchable defect doing exactly what it says."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import subprocess
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backupkit.catalog import local_backups, s3_key_for
from backupkit.storage.localfs import read_sidecar, sidecar_path
from backupkit.config import ConfigError, load_config
from backupkit.pgbin import pg_bin
from backupkit.restore.verify_rows import read_manifest
from sandbox.bookingdb import create_booking_db
from sandbox.history import (Defects, backup_nights, extend_history, generate_history, sha256_file,
                                       sync_to_s3, table_counts)
from sandbox.s3server import create_production_bucket
from sandbox.stack import CONFIG_FILE, sandbox_env

NOW = datetime(2025, 3, 10, 7, 30, tzinfo=timezone.utc)
DAYS = 40
THRESHOLD = 64 * 1024
MIN_PART = 5 * 1024 * 1024  # boto3's managed transfer never makes parts smaller than this


def _config(root: Path, endpoint: str, bucket: str):
    with pytest.MonkeyPatch.context() as mp:
        for k, v in sandbox_env(root, 5432, endpoint).items():
            mp.setenv(k, v)
        mp.setenv("BACKUP_BUCKET", bucket)
        return load_config(CONFIG_FILE)


# Each history has its own bucket on the session's endpoint, so no test needs to reset it.
def _make(pg, moto_server, tmp_path_factory, name: str, defects: Defects):
    root = tmp_path_factory.mktemp(name)
    config = _config(root, moto_server.endpoint_url, f"hist-{name}")
    client = moto_server.client()
    create_production_bucket(client, config.bucket)
    create_booking_db(pg, f"hist_{name}", scale=400)
    h = generate_history(config, pg, now=NOW, days=DAYS, s3_client=client, defects=defects,
                         database=f"hist_{name}", multipart_threshold=THRESHOLD)
    return config, h, client


@pytest.fixture(scope="module")
def clean(pg, moto_server, tmp_path_factory):
    return _make(pg, moto_server, tmp_path_factory, "clean", Defects())


MISSING = backup_nights(NOW, DAYS, 3)[20].date()
DEFECTS = Defects(missing_night=MISSING, damaged="trixtech-db", stale_days=3, missing_in_s3="trixtech-files",
                  wrong_s3_checksum="trixtech-db-sql")


@pytest.fixture(scope="module")
def defective(pg, moto_server, tmp_path_factory):
    return _make(pg, moto_server, tmp_path_factory, "defects", DEFECTS)


def _s3_sha256(client, bucket: str, key: str) -> tuple[str, str]:
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return head["ChecksumSHA256"].split("-")[0], head["ETag"].strip('"')


def _expected_s3_sha256(path: Path, etag: str, part_size: int) -> str:
    """S3's SHA-256 of a local file: plain, or the composite of part digests for a multipart ETag."""
    data = path.read_bytes()
    if "-" not in etag:
        return base64.b64encode(hashlib.sha256(data).digest()).decode()
    parts = int(etag.rsplit("-", 1)[1])
    digests = b"".join(hashlib.sha256(data[i:i + part_size]).digest() for i in range(0, len(data), part_size))
    assert len(digests) == 32 * parts
    return base64.b64encode(hashlib.sha256(digests).digest()).decode()


# -- a healthy history ----------------------------------------------------------------
def test_one_backup_per_night_named_by_the_pattern_with_its_mtime(clean):
    config, h, _ = clean
    nights = backup_nights(NOW, DAYS)
    assert nights[-1] == datetime(2025, 3, 10, 2, 0, tzinfo=timezone.utc) and len(nights) == DAYS
    assert h.nights == nights
    for src in config.sources:
        found = local_backups(src)
        assert [b.timestamp for b in found] == nights, src.name
        assert [b.path for b in found] == h.sources[src.name]
        for b in found:
            assert b.name == src.pattern.name_for(b.timestamp)
            assert b.path.stat().st_mtime == b.timestamp.timestamp()


def test_sidecars_are_sha256sum_lines_that_match_the_bytes(clean):
    config, h, _ = clean
    for src in config.sources:
        for path in h.sources[src.name]:
            text = sidecar_path(path).read_text()
            assert re.fullmatch(r"[0-9a-f]{64}  " + re.escape(path.name) + r"\n", text)
            assert read_sidecar(path) == sha256_file(path)
    # sha256sum itself agrees (the runbook's hand check).
    newest = h.newest("trixtech-db")
    proc = subprocess.run(["sha256sum", "-c", sidecar_path(newest).name], cwd=newest.parent,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_backups_are_real_and_grow_by_epoch(clean):
    config, h, _ = clean
    for src in config.sources:
        paths = h.sources[src.name]
        hashes = [read_sidecar(p) for p in paths]
        # Two data epochs in 40 nights: 30 identical copies, then 10 of a bigger, newer backup.
        assert len(set(hashes[:30])) == 1 and len(set(hashes[30:])) == 1 and hashes[0] != hashes[-1]
        assert paths[-1].stat().st_size > paths[0].stat().st_size, src.name
    dump = h.newest("trixtech-db")
    assert dump.read_bytes()[:5] == b"PGDMP"
    listing = subprocess.run([pg_bin("pg_restore"), "--list", str(dump)], capture_output=True, text=True, check=True)
    assert "TABLE DATA public bookings" in listing.stdout
    sql = gzip.decompress(h.newest("trixtech-db-sql").read_bytes()).decode()
    assert "-- PostgreSQL database dump complete" in sql and "COPY public.bookings" in sql


def test_file_archives_hold_the_configured_paths(clean):
    config, h, _ = clean
    src = config.source("trixtech-files")
    with tarfile.open(h.newest("trixtech-files"), "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    for m in members:
        assert not m.name.startswith("/") and ".." not in m.name.split("/")
        assert any(m.name == p or m.name.startswith(p.rstrip("/") + "/") or p.startswith(m.name + "/")
                   for p in src.paths), m.name
    assert "opt/trixtech/config/app.yml" in names
    uploads = [n for n in names if n.startswith("opt/trixtech/uploads/") and n.endswith((".pdf", ".jpg"))]
    with tarfile.open(h.sources["trixtech-files"][0], "r:gz") as tar:
        first_uploads = [n for n in tar.getnames() if n.endswith((".pdf", ".jpg"))]
    assert len(uploads) > len(first_uploads) > 0


def test_manifest_row_counts_are_the_real_counts(clean, pg):
    config, h, _ = clean
    for src in config.databases:
        for path in h.sources[src.name]:
            man = json.loads(path.with_name(path.name + ".manifest.json").read_text())
            assert man["format"] == 1 and man["database"] == h.database
            assert datetime.fromisoformat(man["created_at"]) == src.pattern.timestamp(path.name)
            assert re.fullmatch(r"\d+(\.\d+)*", man["pg_dump_version"]) and man["duration_seconds"] > 0
    newest = json.loads(Path(str(h.newest("trixtech-db")) + ".manifest.json").read_text())
    oldest = json.loads(Path(str(h.sources["trixtech-db"][0]) + ".manifest.json").read_text())
    # The restore side reads it (docs/manifest.md).
    parsed = read_manifest(h.newest("trixtech-db"))
    assert parsed.tables == newest["tables"] and parsed.database == h.database
    # The live database is at the newest epoch: the newest manifest is what count(*) says now.
    assert newest["tables"] == table_counts(pg, h.database)
    assert newest["tables"]["public.users"] > oldest["tables"]["public.users"]
    assert newest["tables"]["public.bookings"] > oldest["tables"]["public.bookings"]
    # ... and what a restore of that dump holds.
    pg.psql('DROP DATABASE IF EXISTS "hist_restored"')
    pg.psql('CREATE DATABASE "hist_restored"')
    subprocess.run([pg_bin("pg_restore"), *pg.conn_args("hist_restored"), "--no-owner", str(h.newest("trixtech-db"))],
                   check=True, capture_output=True)
    assert table_counts(pg, "hist_restored") == newest["tables"]
    pg.psql('DROP DATABASE "hist_restored"')


def test_logs_have_a_line_per_night_and_only_old_warnings(clean):
    config, h, _ = clean
    text = {lg.name: lg.path.read_text() for lg in config.logs}
    assert not any("ERROR" in t for t in text.values())
    db_lines = [line for line in text["db_backup"].splitlines() if " INFO backup completed " in line]
    assert len(db_lines) == DAYS * len(config.databases)
    for line in db_lines:
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) INFO backup completed source=(\S+) file=(\S+) "
                     r"duration=[\d.]+s size=(\d+)$", line)
        assert m, line
        path = config.source(m.group(2)).local_dir / m.group(3)
        assert path.stat().st_size == int(m.group(4))
    assert text["files_backup"].count(" INFO backup completed ") == DAYS
    assert text["cloud_sync"].count(" INFO cloud sync completed ") == DAYS
    warnings = [line for t in text.values() for line in t.splitlines() if " WARNING " in line]
    assert len(warnings) == 2
    for line in warnings:
        when = datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        assert when < h.nights[-1] - timedelta(days=20)


def test_every_object_is_in_s3_with_sha256_equal_to_the_local_file(clean):
    config, h, client = clean
    multipart = 0
    for src in config.sources:
        keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=config.bucket, Prefix=src.s3_prefix) for o in page.get("Contents", ())}
        assert len(keys) == DAYS * (3 if src.is_database else 2)
        assert h.s3_keys[src.name] == [s3_key_for(src, p.name) for p in h.sources[src.name]]
        for path in h.sources[src.name]:
            for f in (path, sidecar_path(path), path.with_name(path.name + ".manifest.json")):
                if not f.exists():
                    continue
                key = s3_key_for(src, f.name)
                assert key in keys
                stored, etag = _s3_sha256(client, config.bucket, key)
                assert stored == _expected_s3_sha256(f, etag, max(THRESHOLD, MIN_PART)), key
                if "-" in etag:
                    multipart += 1
                    assert f.stat().st_size >= THRESHOLD
                    # A composite really differs from the plain digest: checkers must know which it is.
                    assert stored != base64.b64encode(hashlib.sha256(f.read_bytes()).digest()).decode()
    assert multipart >= 1


# -- defects --------------------------------------------------------------------------
def test_unknown_defect_sources_and_nights_are_rejected(clean, pg):
    config, _, _ = clean
    with pytest.raises(ConfigError, match="unknown source 'nope'"):
        generate_history(config, pg, now=NOW, days=2, defects=Defects(damaged="nope"), database="hist_clean")
    with pytest.raises(ValueError, match="missing_night"):
        generate_history(config, pg, now=NOW, days=2, defects=Defects(missing_night=MISSING), database="hist_clean")


def test_stale_history_stops_days_before_now(defective):
    config, h, _ = defective
    expected_last = datetime(2025, 3, 7, 2, 0, tzinfo=timezone.utc)
    for src in config.sources:
        assert local_backups(src)[-1].timestamp == expected_last
    lines = config.logs[0].path.read_text().splitlines()
    assert lines[-1] < f"{expected_last + timedelta(days=1):%Y-%m-%d}"


def test_missing_night_is_absent_locally_and_in_s3(defective):
    config, h, client = defective
    for src in config.sources:
        found = local_backups(src)
        assert len(found) == DAYS - 1
        assert MISSING not in {b.timestamp.date() for b in found}
        assert MISSING - timedelta(days=1) in {b.timestamp.date() for b in found}
        name = src.pattern.name_for(datetime.combine(MISSING, datetime.min.time(), timezone.utc).replace(hour=2))
        resp = client.list_objects_v2(Bucket=config.bucket, Prefix=s3_key_for(src, name))
        assert resp.get("KeyCount", 0) == 0
    assert f"{MISSING:%Y-%m-%d} " not in config.logs[0].path.read_text()


def test_damaged_newest_backup_no_longer_matches_its_sidecar(defective):
    config, h, client = defective
    victim, before = h.newest("trixtech-db"), h.sources["trixtech-db"][-2]
    assert victim.stat().st_size == before.stat().st_size  # a bit flip, not a truncation
    assert read_sidecar(victim) == read_sidecar(before) != sha256_file(victim)
    assert victim.stat().st_mtime == local_backups(config.source("trixtech-db"))[-1].timestamp.timestamp()
    # Its S3 copy was made before the damage: it has the good bytes (those of the night before).
    stored, etag = _s3_sha256(client, config.bucket, s3_key_for(config.source("trixtech-db"), victim.name))
    assert stored == _expected_s3_sha256(before, etag, max(THRESHOLD, MIN_PART))
    assert stored != _expected_s3_sha256(victim, etag, max(THRESHOLD, MIN_PART))
    # The damage is in table data: reading every block fails where the TOC listing passes.
    assert subprocess.run([pg_bin("pg_restore"), "--list", str(victim)], capture_output=True).returncode == 0
    assert subprocess.run([pg_bin("pg_restore"), "-f", "/dev/null", str(victim)], capture_output=True).returncode != 0
    for src in config.sources:  # nothing else is damaged
        for p in h.sources[src.name]:
            if p != victim:
                assert read_sidecar(p) == sha256_file(p), p


def test_missing_in_s3_skips_only_the_newest_upload(defective):
    config, h, client = defective
    src = config.source("trixtech-files")
    newest, previous = h.newest(src.name), h.sources[src.name][-2]
    for name in (newest.name, newest.name + ".sha256"):
        assert client.list_objects_v2(Bucket=config.bucket, Prefix=s3_key_for(src, name)).get("KeyCount", 0) == 0
    client.head_object(Bucket=config.bucket, Key=s3_key_for(src, previous.name))
    assert s3_key_for(src, newest.name) not in h.s3_keys[src.name]
    assert read_sidecar(newest) == sha256_file(newest)  # the local backup itself is fine


def test_wrong_s3_checksum_has_same_size_other_bytes(defective):
    config, h, client = defective
    src = config.source("trixtech-db-sql")
    newest = h.newest(src.name)
    key = s3_key_for(src, newest.name)
    head = client.head_object(Bucket=config.bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == newest.stat().st_size
    body = client.get_object(Bucket=config.bucket, Key=key)["Body"].read()
    assert body != newest.read_bytes()
    stored, etag = _s3_sha256(client, config.bucket, key)
    assert stored != _expected_s3_sha256(newest, etag, max(THRESHOLD, MIN_PART))
    assert read_sidecar(newest) == sha256_file(newest)
    side = client.get_object(Bucket=config.bucket, Key=key + ".sha256")["Body"].read().decode()
    assert side == sidecar_path(newest).read_text()
    # The copy before it is intact.
    previous = h.sources[src.name][-2]
    stored, etag = _s3_sha256(client, config.bucket, s3_key_for(src, previous.name))
    assert stored == _expected_s3_sha256(previous, etag, max(THRESHOLD, MIN_PART))


# -- a sandbox started again later ----------------------------------------------------
def test_extend_adds_missed_nights_and_sync_uploads_only_what_is_missing(pg, moto_server, tmp_path):
    config = _config(tmp_path, moto_server.endpoint_url, "hist-extend")
    client = moto_server.client()
    create_production_bucket(client, config.bucket)
    create_booking_db(pg, "hist_extend", scale=200)
    generate_history(config, pg, now=NOW, days=3, s3_client=client, database="hist_extend")
    db_log = config.logs[0].path.read_text()
    assert extend_history(config, pg, now=NOW + timedelta(hours=6), database="hist_extend") is None
    h = extend_history(config, pg, now=NOW + timedelta(days=2), database="hist_extend")
    assert [n.date() for n in h.nights] == [NOW.date() + timedelta(days=1), NOW.date() + timedelta(days=2)]
    for src in config.sources:
        assert len(local_backups(src)) == 5
    assert config.logs[0].path.read_text().startswith(db_log)  # appended, not replaced
    newest = json.loads(Path(str(h.newest("trixtech-db")) + ".manifest.json").read_text())
    assert newest["tables"] == table_counts(pg, "hist_extend")
    # Two nights of 3 sources: backup + sidecar each, plus a manifest for the 2 database sources.
    assert sync_to_s3(config, client).uploaded == 2 * (len(config.sources) * 2 + 2)  # backup + sidecar, 2 manifests
    assert sync_to_s3(config, client).uploaded == 0


def test_a_source_configured_after_the_history_gets_its_own_nights_and_the_rest_is_untouched(pg, moto_server,
                                                                                               tmp_path):
    from dataclasses import replace

    from sandbox.history import add_new_sources

    full = _config(tmp_path, moto_server.endpoint_url, "hist-upgrade")
    k8s = [s for s in full.sources if s.kind == "kubernetes"]
    assert k8s, "the shipped configuration has a Kubernetes resource source"
    old = replace(full, sources=tuple(s for s in full.sources if s.kind != "kubernetes"))
    create_booking_db(pg, "hist_upgrade", scale=200)
    generate_history(old, pg, now=NOW, days=3, database="hist_upgrade")  # the sandbox before the upgrade
    before = {s.name: [b.name for b in local_backups(s)] for s in old.sources}
    logs = {lg.name: lg.path.read_text() for lg in full.logs if lg.path.exists()}
    users = table_counts(pg, "hist_upgrade")

    added, skipped = add_new_sources(full, pg, now=NOW, days=DAYS, database="hist_upgrade")

    assert skipped == [] and added is not None and set(added.sources) == {s.name for s in k8s}
    for src in k8s:
        assert len(local_backups(src)) == DAYS
    assert {s.name: [b.name for b in local_backups(s)] for s in old.sources} == before
    assert {lg.name: lg.path.read_text() for lg in full.logs if lg.path.exists()} == logs
    assert table_counts(pg, "hist_upgrade") == users  # the live database did not grow
    assert add_new_sources(full, pg, now=NOW, days=DAYS, database="hist_upgrade") == (None, [])
