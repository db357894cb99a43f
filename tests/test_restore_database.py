"""Real restores of real pg_dump output into local scratch databases, and their verification."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from backupkit import clock
from backupkit.pgbin import bin_dir, pg_bin
from backupkit.pgserver import port_free
from backupkit.model import Backup, S3Copy
from backupkit.restore.database import RestoreFailed, restore_dump
from backupkit.restore.fetch import fetch
from backupkit.restore.scratch import LocalScratch, ScratchError
from backupkit.restore.verify_rows import (
    MANIFEST_QUERY_SQL,
    ManifestError,
    RowManifest,
    check_key_tables,
    compare_row_counts,
    exact_row_counts,
    manifest_path,
    parse_manifest,
    read_manifest,
    read_s3_manifest,
    run_assertions,
)
from backupkit.storage.objectstore import Bucket
from sandbox.bookingdb import create_booking_db

DOC = Path(__file__).resolve().parents[1] / "docs" / "manifest.md"
FORMATS = {"custom": "custom", "tar": "tar", "directory": "directory", "plain_gz": "plain", "plain": "plain"}


def port_is_free(port: int) -> bool:
    """Nothing listens there, and no PostgreSQL answers on it."""
    return port_free(port, "127.0.0.1") and subprocess.run([pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                          capture_output=True).returncode != 0


@pytest.fixture(scope="module")
def scratch():
    with LocalScratch() as s:
        yield s


@pytest.fixture(scope="module")
def live_counts(pg):
    """The source's counts, each from its own count(*) (not through the code under test)."""
    tables = pg.psql("SELECT schemaname || '.' || tablename FROM pg_tables "
                     "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1", "trixtech").split()
    return {t: int(pg.psql(f"SELECT count(*) FROM {t}", "trixtech")) for t in tables}


_db_seq = iter(range(10_000))


def fresh_db(prefix: str) -> str:
    return f"{prefix}_{next(_db_seq)}"


# -- restores ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(FORMATS))
def test_every_format_restores_with_the_source_row_counts(kind, dumps, scratch, live_counts, pg):
    db = fresh_db(kind)
    result = restore_dump(dumps[kind], scratch, fmt=FORMATS[kind], jobs=2, database=db)
    assert result.backup == str(dumps[kind]) and result.database == db
    assert 0 < result.restore_seconds <= result.duration_seconds
    assert result.bytes_read > 0
    actual = exact_row_counts(scratch, db)
    assert actual == live_counts
    assert all(r.ok for r in compare_row_counts(actual, live_counts, 0.0, artifact=dumps[kind].name))
    # Not only counts: the data itself arrived (an aggregate over every booking row).
    q = "SELECT md5(string_agg(id || notes || status || starts_at, ',' ORDER BY id)) FROM bookings"
    assert scratch.psql(q, db) == pg.psql(q, "trixtech")


def test_parallel_jobs_are_used_where_pg_restore_can_and_not_for_tar(dumps, scratch):
    custom = restore_dump(dumps["custom"], scratch, fmt="custom", jobs=3, database=fresh_db("j"))
    assert custom.jobs == 3 and custom.notes == ()
    tar = restore_dump(dumps["tar"], scratch, fmt="tar", jobs=3, database=fresh_db("j"))
    assert tar.jobs == 1 and "tar" in tar.notes[0]


def test_plain_dump_stops_at_the_first_error_and_commits_nothing(dumps, scratch, tmp_path):
    text = dumps["plain"].read_text()
    assert "COPY public.services" in text
    broken = tmp_path / "broken.sql.gz"
    with gzip.open(broken, "wt") as f:
        f.write(text.replace("COPY public.services", "COPY public.no_such_table", 1))
    db = fresh_db("plain_err")
    with pytest.raises(RestoreFailed) as err:
        restore_dump(broken, scratch, fmt="plain", database=db)
    assert str(broken) in str(err.value)
    assert "no_such_table" in err.value.stderr
    # --single-transaction: the users table created before the error is gone again.
    assert exact_row_counts(scratch, db) == {}


def database_exists(scratch, db: str) -> bool:
    return scratch.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'").strip() == "1"


def test_plain_dump_cut_at_a_statement_boundary_is_not_taken_for_complete(dumps, scratch, tmp_path):
    text = dumps["plain"].read_text()
    cut = tmp_path / "cut.sql"
    cut.write_text(text[:text.index("COPY public.bookings")])
    db = fresh_db("plain_cut")
    with pytest.raises(RestoreFailed, match="refused before anything ran: .*without pg_dump's completion line"):
        restore_dump(cut, scratch, fmt="plain", database=db)
    assert not database_exists(scratch, db)  # judged before the database was even made


def test_truncated_gzip_fails_and_commits_nothing(dumps, scratch, tmp_path):
    data = dumps["plain_gz"].read_bytes()
    bad = tmp_path / "bad.sql.gz"
    bad.write_bytes(data[: len(data) * 2 // 3])
    db = fresh_db("gz_cut")
    with pytest.raises(RestoreFailed, match="refused before anything ran: gzip: gzip stream truncated"):
        restore_dump(bad, scratch, fmt="plain", database=db)
    assert not database_exists(scratch, db)


def test_damaged_dump_names_the_backup_and_the_scratch_server_is_gone(dumps, tmp_path):
    data = dumps["custom"].read_bytes()
    damaged = tmp_path / "trixtech_20250301_020000.dump"
    damaged.write_bytes(data[: len(data) // 2])
    scratch = LocalScratch()
    with pytest.raises(RestoreFailed) as err:
        with scratch:
            data_dir, work_dir, port = scratch.data_dir, scratch.work_dir, scratch.port
            assert (data_dir / "PG_VERSION").exists() and not port_is_free(port)
            restore_dump(damaged, scratch, fmt="custom", jobs=2)
    assert err.value.backup == str(damaged)
    assert "trixtech_20250301_020000.dump" in str(err.value)
    assert "pg_restore" in str(err.value) and err.value.stderr  # pg_restore's own words
    assert len(err.value.stderr) < 6000
    assert not work_dir.exists() and not data_dir.exists()
    assert port_is_free(port)


def test_scratch_is_torn_down_on_any_exception_and_teardown_is_idempotent():
    scratch = LocalScratch()
    with pytest.raises(KeyError):
        with scratch:
            work_dir, port = scratch.work_dir, scratch.port
            scratch.psql("SELECT 1")
            raise KeyError("a bug in our own code")
    assert not work_dir.exists() and port_is_free(port)
    scratch.teardown()
    with pytest.raises(ScratchError):
        scratch.conn_args()


def test_stderr_is_bounded(dumps, scratch, tmp_path):
    bad = tmp_path / "noise.sql"
    text = dumps["plain"].read_text()
    bad.write_text(text.replace("SET statement_timeout = 0;\n", "SET statement_timeout = 0;\nSELECT 1/0 AS "
                                + "x" * 20000 + ";\n", 1))
    with pytest.raises(RestoreFailed) as err:
        restore_dump(bad, scratch, fmt="plain", database=fresh_db("noise"), stderr_limit=500)
    assert "division by zero" in err.value.stderr  # the error, which comes last, is kept
    assert "bytes omitted" in err.value.stderr and len(err.value.stderr) < 600


def test_invalid_arguments_are_refused_before_anything_happens(dumps, scratch):
    with pytest.raises(ValueError, match="format"):
        restore_dump(dumps["custom"], scratch, fmt="zip")
    with pytest.raises(ValueError, match="jobs"):
        restore_dump(dumps["custom"], scratch, fmt="custom", jobs=0)
    with pytest.raises(ValueError, match="identifier"):
        restore_dump(dumps["custom"], scratch, fmt="custom", database='x"; DROP DATABASE postgres; --')
    with pytest.raises(RestoreFailed, match="not found"):
        restore_dump(dumps["custom"].with_name("absent.dump"), scratch, fmt="custom", database=fresh_db("nf"))


def test_roles_named_by_the_dump_can_be_created_first(pg, scratch, tmp_path):
    """A dump taken with owners (no --no-owner) names roles a scratch server lacks."""
    pg.psql("DROP DATABASE IF EXISTS h4_owned")
    pg.psql("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='trixtech_app') "
            "THEN CREATE ROLE trixtech_app; END IF; END$$")
    pg.psql("CREATE DATABASE h4_owned")
    try:
        pg.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2); ALTER TABLE t OWNER TO trixtech_app;",
                "h4_owned")
        out = tmp_path / "owned.sql"
        subprocess.run([pg_bin("pg_dump"), *pg.conn_args("h4_owned"), "-Fp", "-f", str(out)], check=True)
        assert "OWNER TO trixtech_app" in out.read_text()
        with pytest.raises(RestoreFailed, match="trixtech_app"):
            restore_dump(out, scratch, fmt="plain", database=fresh_db("owned"))
        db = fresh_db("owned")
        restore_dump(out, scratch, fmt="plain", database=db, roles=("trixtech_app",))
        assert exact_row_counts(scratch, db) == {"public.t": 2}
        assert scratch.psql("SELECT tableowner FROM pg_tables WHERE tablename = 't'", db).strip() == "trixtech_app"
    finally:
        pg.psql("DROP DATABASE IF EXISTS h4_owned")


# -- from S3 (fetched first: backupkit.restore.fetch) -------------------------------------------
def s3_backup(key: str, size: int, is_dir: bool = False) -> Backup:
    return Backup("trixtech-db", key.rsplit("/", 1)[-1], datetime(2025, 3, 1, tzinfo=timezone.utc),
                  s3=S3Copy(key, size, is_dir))


def test_restore_from_s3_of_each_single_object_format(dumps, scratch, s3, bucket, live_counts, tmp_path):
    for kind in ("custom", "tar", "plain_gz"):
        key = f"database/{dumps[kind].name}"
        s3.upload_file(str(dumps[kind]), bucket, key)
        fetched = fetch(s3_backup(key, dumps[kind].stat().st_size), bucket=Bucket(s3, bucket), work_dir=tmp_path)
        assert fetched.ok and fetched.label == f"s3://{bucket}/{key}", fetched.checks
        assert fetched.info["bytes"] == dumps[kind].stat().st_size and fetched.info["download_seconds"] > 0
        db = fresh_db(f"s3_{kind}")
        result = restore_dump(fetched.path, scratch, fmt=FORMATS[kind], jobs=2, database=db, label=fetched.label)
        assert result.backup == f"s3://{bucket}/{key}"
        assert exact_row_counts(scratch, db) == live_counts
        fetched.remove_download()
        assert not fetched.path.exists()


def test_restore_from_s3_directory_format_and_missing_key(dumps, scratch, s3, bucket, live_counts, tmp_path):
    for f in dumps["directory"].iterdir():
        s3.upload_file(str(f), bucket, f"database/trixtech.dir/{f.name}")
    fetched = fetch(s3_backup("database/trixtech.dir", 0, is_dir=True), bucket=Bucket(s3, bucket), work_dir=tmp_path)
    assert fetched.ok, fetched.checks
    db = fresh_db("s3_dir")
    restore_dump(fetched.path, scratch, fmt="directory", jobs=2, database=db)
    assert exact_row_counts(scratch, db) == live_counts
    missing = fetch(s3_backup("database/absent.dump", 1), bucket=Bucket(s3, bucket), work_dir=tmp_path)
    assert not missing.ok and missing.path is None
    assert [c.check for c in missing.checks] == ["download"]
    assert "s3://trixtech-backups/database/absent.dump: no such S3 object" in missing.checks[0].detail


# -- manifest and verification ---------------------------------------------------------------
def test_manifest_with_more_rows_than_restored_fails_and_names_the_table(dumps, scratch, live_counts, tmp_path):
    backup = tmp_path / dumps["custom"].name
    shutil.copy(dumps["custom"], backup)
    expected = dict(live_counts)
    expected["public.bookings"] += 7  # the dump lacks 7 rows the manifest says it should have
    manifest_path(backup).write_text(RowManifest("trixtech", clock.now(), expected).to_json())

    db = fresh_db("mf")
    restore_dump(backup, scratch, fmt="custom", jobs=2, database=db)
    manifest = read_manifest(backup)
    results = compare_row_counts(exact_row_counts(scratch, db), manifest.tables, 0.0, artifact=backup.name)
    failed = [r for r in results if not r.ok]
    assert [r.check for r in failed] == ["rows public.bookings"]
    assert "7 rows missing" in failed[0].detail and failed[0].artifact == backup.name
    assert {r.check for r in results if r.ok} == {f"rows {t}" for t in live_counts if t != "public.bookings"}


@pytest.mark.parametrize("actual, expected, tolerance, bad", [
    ({"public.a": 10}, {"public.a": 10}, 0.0, {}),
    ({"public.a": 9}, {"public.a": 10}, 0.0, {"rows public.a": "1 rows missing"}),
    ({"public.a": 11}, {"public.a": 10}, 0.0, {"rows public.a": "1 extra rows"}),
    ({"public.a": 99}, {"public.a": 100}, 0.01, {}),
    ({"public.a": 98}, {"public.a": 100}, 0.01, {"rows public.a": "2 rows missing"}),
    ({}, {"public.a": 5}, 0.5, {"rows public.a": "table missing"}),
    ({"public.a": 5, "public.b": 0}, {"public.a": 5}, 0.0, {"rows public.b": "extra table"}),
    ({"a": 3}, {"public.a": 3}, 0.0, {}),  # unqualified names mean public.
])
def test_compare_row_counts_table(actual, expected, tolerance, bad):
    results = compare_row_counts(actual, expected, tolerance, artifact="x")
    got = {r.check: r.detail for r in results if not r.ok}
    assert set(got) == set(bad)
    for check, words in bad.items():
        assert words in got[check]


def test_key_tables_must_exist_and_hold_rows():
    actual = {"public.users": 3, "public.bookings": 0}
    results = {r.check: r for r in check_key_tables(actual, ["users", "bookings", "public.services"], artifact="b")}
    assert results["key table public.users"].ok
    assert not results["key table public.bookings"].ok and "empty" in results["key table public.bookings"].detail
    assert not results["key table public.services"].ok and "missing" in results["key table public.services"].detail


def test_sql_assertions_need_a_single_true_and_cannot_change_the_restore(dumps, scratch, live_counts):
    db = fresh_db("assert")
    restore_dump(dumps["custom"], scratch, fmt="custom", database=db)
    sqls = [
        f"SELECT count(*) = {live_counts['public.users']} FROM users",
        "SELECT NOT EXISTS (SELECT 1 FROM bookings b LEFT JOIN users u ON u.id = b.user_id WHERE u.id IS NULL)",
        "SELECT false",
        "SELECT true UNION ALL SELECT true",
        "SELECT 1/0 = 1",
        "DELETE FROM bookings RETURNING true",
    ]
    results = run_assertions(scratch, db, sqls, artifact="b")
    assert [r.ok for r in results] == [True, True, False, False, False, False]
    assert "division by zero" in results[4].detail
    assert "read-only" in results[5].detail
    assert exact_row_counts(scratch, db)["public.bookings"] == live_counts["public.bookings"]


def test_manifest_parsing_refuses_what_it_cannot_trust():
    good = {"format": 1, "database": "trixtech", "created_at": "2025-03-01T02:00:04Z", "tables": {"users": 2}}
    m = parse_manifest(json.dumps(good))
    assert m.tables == {"public.users": 2} and m.created_at.tzinfo is not None
    assert parse_manifest(m.to_json()).tables == m.tables
    for change, words in [({"format": 2}, "format"), ({"database": ""}, "database"),
                          ({"created_at": "yesterday"}, "created_at"), ({"tables": [1]}, "tables"),
                          ({"tables": {"users": -1}}, "non-negative"), ({"tables": {"users": "2"}}, "integer")]:
        with pytest.raises(ManifestError, match=words):
            parse_manifest(json.dumps({**good, **change}), "m.json")
    with pytest.raises(ManifestError, match="m.json: not valid JSON"):
        parse_manifest("{", "m.json")


def test_s3_manifest_is_read_beside_the_key(s3, bucket):
    store = Bucket(s3, bucket)
    assert read_s3_manifest(store, "database/x.dump") is None
    m = RowManifest("trixtech", datetime(2025, 3, 1, tzinfo=timezone.utc), {"public.users": 5})
    s3.put_object(Bucket=bucket, Key="database/x.dump.manifest.json", Body=m.to_json().encode())
    assert read_s3_manifest(store, "database/x.dump").tables == {"public.users": 5}


# -- the shell lines of docs/manifest.md ------------------------------------------------------
def doc_shell() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 2
    return "\n".join(blocks)


def test_documented_query_is_the_one_the_restore_side_runs():
    assert MANIFEST_QUERY_SQL in DOC.read_text()


def test_documented_shell_writes_manifests_that_match_and_share_the_dump_snapshot(pg, tmp_path, scratch):
    """Run the doc's functions against a real server. A pg_dump wrapper writes rows between
    the counts and the dump: the snapshot variant's manifest must still match its dump."""
    create_booking_db(pg, "h4_manifest_src", scale=50)
    try:
        script = tmp_path / "manifest.sh"
        script.write_text(doc_shell())
        fake_bin = tmp_path / "bin"
        fake_bin.mkdir()
        real = pg_bin("pg_dump")
        (fake_bin / "pg_dump").write_text(
            "#!/bin/bash\n"
            f"psql -X -q -v ON_ERROR_STOP=1 -c \"INSERT INTO users (email, full_name) "
            f"SELECT 'late' || g || '@example.com', 'Late' FROM generate_series(1, 5) g\" \"$URL\" || exit 9\n"
            f"exec {real} \"$@\"\n")
        (fake_bin / "pg_dump").chmod(0o755)
        url = pg.uri("h4_manifest_src")
        env = {**os.environ, "PATH": f"{fake_bin}:{bin_dir()}:{os.environ['PATH']}", "URL": url}
        before = exact_row_counts(pg, "h4_manifest_src")
        subprocess.run(["bash", "-euc", f'source {script}\n'
                        f'write_manifest {tmp_path}/simple.dump "$URL"\n'
                        f'dump_with_manifest {tmp_path}/snap.dump "$URL" -Fc --no-owner\n'],
                       env=env, check=True, timeout=60)
        simple = parse_manifest((tmp_path / "simple.dump.manifest.json").read_text())
        assert simple.database == "h4_manifest_src" and simple.tables == before

        snap = read_manifest(tmp_path / "snap.dump")
        assert snap.tables == before  # counted before the wrapper's insert ...
        assert exact_row_counts(pg, "h4_manifest_src")["public.users"] == before["public.users"] + 5
        db = fresh_db("snap")
        restore_dump(tmp_path / "snap.dump", scratch, fmt="custom", database=db)
        restored = exact_row_counts(scratch, db)
        assert all(r.ok for r in compare_row_counts(restored, snap.tables))  # ... and so was the dump
    finally:
        pg.psql("DROP DATABASE IF EXISTS h4_manifest_src")
