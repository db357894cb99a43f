"""The restore pipeline without Airflow: real restores of real dumps (disk and loopback S3) into real
scratch PostgreSQL servers and beside a live database, the monthly test's choice and metrics, file
restores. (The replace saga: tests/test_restore_saga.py.)"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _config_helpers import scratch_base  # noqa: F401  (fixture)
from _restore_helpers import restore_config_yaml
from backupkit.config import ConfigError, load_config
from backupkit.metrics import LastSuccessStore
from backupkit.pgserver import LocalPostgres
from backupkit.restore.database import RestoreFailed
from backupkit.restore.files import TargetNotAllowed, UnsafeArchive
from backupkit.restore.scratch import LocalScratch
from backupkit.restore.selection import SelectionError
from backupkit.catalog import Catalog
from backupkit.jobs.restore_test import monthly_targets, restore_test_metrics, summarize_restore_tests
from backupkit.restore.file_restore import restore_files
from backupkit.restore.health import http_health_check
from backupkit.restore.pipeline import new_database_name, restore_into_new_database, restore_test
from backupkit.restore.scratch import ServerTarget, cleanup_local_scratch, local_scratch_root, run_scratch_dir
from backupkit.restore.selection import resolve_request
from backupkit.storage.objectstore import Bucket
from backupkit.restore.verify_rows import RowManifest, exact_row_counts, manifest_path
from sandbox.history import write_archive

T0 = datetime(2025, 3, 1, 2, 0, tzinfo=timezone.utc)


@pytest.fixture
def cfg(tmp_path, monkeypatch, scratch_base):
    root = tmp_path / "restore-root"
    root.mkdir()
    monkeypatch.setenv("BACKUP_ROOT", str(tmp_path / "backups"))
    monkeypatch.setenv("BACKUP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BACKUP_SCRATCH_DIR", str(scratch_base))
    path = tmp_path / "backups.yaml"
    path.write_text(restore_config_yaml(database="trixtech", allowed_root=root))
    config = load_config(path)
    for s in config.sources:
        s.local_dir.mkdir(parents=True)
    return config


def put_dump(cfg, dump: Path, when: datetime, *, tables: dict | None = None) -> Path:
    src = cfg.source("trixtech-db")
    dest = src.local_dir / src.pattern.name_for(when)
    shutil.copyfile(dump, dest)
    if tables is not None:
        manifest_path(dest).write_text(RowManifest("trixtech", when, tables).to_json())
    return dest


def upload(s3, bucket, path: Path, key: str) -> None:
    s3.upload_file(str(path), bucket, key)
    man = manifest_path(path)
    if man.exists():
        s3.upload_file(str(man), bucket, key + ".manifest.json")


@pytest.fixture(scope="module")
def counts(pg):
    return exact_row_counts(pg, "trixtech")


# -- which backup --------------------------------------------------------------------------
def test_available_backups_merge_disk_and_bucket(cfg, s3, bucket, dumps):
    a = put_dump(cfg, dumps["custom"], T0)
    b = put_dump(cfg, dumps["custom"], T0 + timedelta(days=1))
    s3.put_object(Bucket=bucket, Key=f"database/{b.name}", Body=b"x")
    only_s3 = cfg.source("trixtech-db").pattern.name_for(T0 + timedelta(days=2))
    s3.put_object(Bucket=bucket, Key=f"database/{only_s3}", Body=b"y")
    s3.put_object(Bucket=bucket, Key="database/notes.txt", Body=b"z")  # not a backup name
    refs = Catalog(cfg.source("trixtech-db"), Bucket(s3, bucket)).backups()
    assert [(r.name, r.path is not None, r.key) for r in refs] == [
        (a.name, True, None), (b.name, True, f"database/{b.name}"), (only_s3, False, f"database/{only_s3}")]


def test_requests_are_refused_with_a_clear_message(cfg, s3, bucket, dumps):
    for i in range(3):
        put_dump(cfg, dumps["custom"], T0 + timedelta(days=i))
    ok = resolve_request(cfg, "trixtech-db", which="latest_before", before="2025-03-02T12:00:00Z",
                         bucket=Bucket(s3, bucket))
    assert ok.timestamp == T0 + timedelta(days=1)
    cases = [
        (dict(source_name="nope", which="latest"), "unknown database 'nope'"),
        (dict(source_name="trixtech-files", which="latest"), "unknown database 'trixtech-files'"),
        (dict(source_name="trixtech-db", which="latest_before", before="2025-02-01T00:00:00"),
         "no backup of source 'trixtech-db' before 2025-02-01T00:00:00Z (the oldest is trixtech_20250301_020000"),
        (dict(source_name="trixtech-db", which="latest_before", before="yesterday"), "not a date-time"),
        (dict(source_name="trixtech-db", which="key", key="files/files_20250301_020000.tar.gz"),
         "outside the configured prefixes 'database/'"),
        (dict(source_name="trixtech-db", which="key", key="database/../etc/passwd"), "malformed key"),
        (dict(source_name="trixtech-db", which="key", key="database/trixtech_2025.dump"),
         "does not match the backup name pattern"),
        (dict(source_name="trixtech-db", which="key", key="database/trixtech_20240101_020000.dump"),
         "no backup 'trixtech_20240101_020000.dump'"),
    ]
    for kwargs, message in cases:
        name = kwargs.pop("source_name")
        with pytest.raises(SelectionError) as err:
            resolve_request(cfg, name, bucket=Bucket(s3, bucket), **kwargs)
        assert message in str(err.value), (kwargs, str(err.value))


def test_monthly_targets_newest_plus_a_seeded_random_older(cfg, dumps):
    now = T0 + timedelta(days=40)
    for i in range(40):  # one per night; the window is 30 days
        put_dump(cfg, dumps["custom"], T0 + timedelta(days=i))
    targets = monthly_targets(cfg, None, now=now, seed="run-1")
    db = [t for t in targets if t["source_name"] == "trixtech-db"]
    assert [t["role"] for t in db] == ["newest", "random_older"]
    names = [r.name for r in Catalog(cfg.source("trixtech-db")).backups()]
    assert db[0]["backup"] == names[-1]
    older_ts = cfg.source("trixtech-db").pattern.timestamp(db[1]["backup"])
    assert now - timedelta(days=30) <= older_ts < T0 + timedelta(days=39)
    assert monthly_targets(cfg, None, now=now, seed="run-1") == targets  # a rerun repeats the choice
    picks = {monthly_targets(cfg, None, now=now, seed=f"run-{i}")[1]["backup"] for i in range(30)}
    assert len(picks) > 5  # and different runs look at different backups
    # A source without any backup is still a target: its test must fail, not vanish.
    assert {"source_name": "trixtech-files", "backup": "", "role": "newest"} in targets


# -- restore tests ---------------------------------------------------------------------------
def test_restore_test_from_s3_verifies_every_table_against_the_manifest(cfg, s3, bucket, dumps, counts, scratch_base):
    local = put_dump(cfg, dumps["custom"], T0, tables=counts)
    upload(s3, bucket, local, f"database/{local.name}")
    scratch = LocalScratch(base_dir=scratch_base)
    r = restore_test(cfg, "trixtech-db", local.name, new_database=lambda: scratch, bucket=Bucket(s3, bucket),
                     role="newest")
    assert r["ok"], r["problems"]
    assert r["location"] == f"s3://{bucket}/database/{local.name}"  # the off-site copy is what is proven
    assert r["verified_rows"] == sum(counts.values()) and r["tables"] == len(counts)
    assert r["compared_with"].startswith("manifest s3://")
    assert {c["check"] for c in r["checks"]} >= {"restore", "rows public.users", "key table public.bookings"}
    assert r["restore_seconds"] > 0 and r["duration_seconds"] >= r["restore_seconds"]
    assert scratch.server is None and not any(scratch_base.glob("backupkit-scratch-*"))  # torn down


def test_a_manifest_mismatch_fails_naming_the_table(cfg, dumps, counts, scratch_base):
    wrong = dict(counts, **{"public.bookings": counts["public.bookings"] + 25})
    local = put_dump(cfg, dumps["custom"], T0, tables=wrong)
    r = restore_test(cfg, "trixtech-db", local.name, new_database=lambda: LocalScratch(base_dir=scratch_base))
    assert not r["ok"]
    assert [(p["artifact"], p["check"]) for p in r["problems"]] == [(f"trixtech-db/{local.name}",
                                                                     "rows public.bookings")]
    assert "25 rows missing" in r["problems"][0]["detail"]
    assert r["verified_rows"] == sum(counts.values()) - counts["public.bookings"]


def test_without_a_manifest_the_live_source_counts_are_the_reference(cfg, dumps, counts, pg, scratch_base):
    local = put_dump(cfg, dumps["custom"], T0)
    r = restore_test(cfg, "trixtech-db", local.name, new_database=lambda: LocalScratch(base_dir=scratch_base),
                     live_counts=lambda: exact_row_counts(pg, "trixtech"))
    assert r["ok"], r["problems"]
    assert r["compared_with"].startswith("live source database 'trixtech'")
    r = restore_test(cfg, "trixtech-db", local.name, new_database=lambda: LocalScratch(base_dir=scratch_base),
                     live_counts=lambda: {**counts, "public.users": counts["public.users"] * 2})
    assert [p["check"] for p in r["problems"]] == ["rows public.users"]


def test_a_damaged_dump_fails_naming_the_backup_and_the_scratch_is_torn_down(cfg, dumps, counts, scratch_base):
    local = put_dump(cfg, dumps["custom"], T0, tables=counts)
    data = bytearray(local.read_bytes())
    local.write_bytes(bytes(data[: len(data) // 2]))  # cut short, as a full disk leaves it
    scratch = LocalScratch(base_dir=scratch_base)
    r = restore_test(cfg, "trixtech-db", local.name, new_database=lambda: scratch)
    assert not r["ok"]
    [p] = r["problems"]
    assert p["check"] == "restore" and str(local) in p["detail"]
    assert scratch.server is None and not any(scratch_base.glob("backupkit-scratch-*"))


def test_a_file_set_archive_is_extracted_checked_and_removed(cfg, tmp_path):
    src = cfg.source("trixtech-files")
    members = [("opt/trixtech/config/app.yml", b"db: trixtech\n", T0),
               ("opt/trixtech/uploads/2025/receipt.pdf", b"%PDF-1.4 x", T0)]
    archive = write_archive(src.local_dir / src.pattern.name_for(T0), members, T0)
    r = restore_test(cfg, "trixtech-files", archive.name, new_database=None, work_dir=tmp_path / "work")
    assert r["ok"], r["problems"] and r["files"] == 2
    assert not any((tmp_path / "work").iterdir())  # the scratch directory is gone
    # Missing configured path: the archive restores, but the check names the path.
    archive2 = write_archive(src.local_dir / src.pattern.name_for(T0 + timedelta(days=1)), members[:1], T0)
    r = restore_test(cfg, "trixtech-files", archive2.name, new_database=None)
    assert [p["check"] for p in r["problems"]] == ["path opt/trixtech/uploads"]


def test_summary_and_metrics(tmp_path):
    ok = {"source": "db", "kind": "database", "role": "newest", "backup": "a", "ok": True, "duration_seconds": 3.5,
          "verified_rows": 10000, "problems": []}
    older = dict(ok, role="random_older", backup="b")
    bad = {"source": "files", "kind": "files", "role": "newest", "backup": "c", "ok": False, "duration_seconds": 1.0,
           "files": 7, "problems": [{"artifact": "files/c", "check": "checksums", "ok": False, "detail": "x"}]}
    report = summarize_restore_tests([ok, older, bad])
    assert report["ok"] is False and report["sources"]["db"]["ok"] and not report["sources"]["files"]["ok"]
    assert "files/c" not in report["table"] and "checksums: x" in report["table"]

    store = LastSuccessStore(tmp_path / "last.json")
    m = restore_test_metrics([ok, older, bad], now=1000.0, store=store, expected_sources=["db", "files", "gone"])
    values = {(s.name, s.labels.get("source")): s.value
              for fam in text_string_to_metric_families(m.text()) for s in fam.samples}
    assert values[("backup_restore_test_status", "db")] == 1
    assert values[("backup_restore_test_status", "files")] == 0
    assert values[("backup_restore_test_status", "gone")] == 0  # no result at all is a failure
    assert values[("backup_restore_test_duration_seconds", "db")] == 3.5
    assert values[("backup_restore_test_verified_rows", "db")] == 10000
    assert values[("backup_restore_test_verified_files", "files")] == 7
    assert values[("backup_restore_test_last_success_timestamp_seconds", "db")] == 1000.0
    assert ("backup_restore_test_last_success_timestamp_seconds", "files") not in values
    # Next month db fails: its last success stays at the earlier time.
    m = restore_test_metrics([dict(ok, ok=False)], now=2000.0, store=store, expected_sources=["db"])
    values = {(s.name, s.labels.get("source")): s.value
              for fam in text_string_to_metric_families(m.text()) for s in fam.samples}
    assert values[("backup_restore_test_last_success_timestamp_seconds", "db")] == 1000.0


def test_a_crashed_runs_local_scratch_is_stopped_and_removed(cfg):
    run_dir = run_scratch_dir(cfg, "manual__2025-03-03T09:00:00+00:00")
    leaked = LocalScratch(base_dir=run_dir).start()  # a worker died before its finally ran
    data_dir = leaked.server.data_dir
    assert leaked.server.running()
    keep = run_scratch_dir(cfg, "another-run")
    removed = cleanup_local_scratch(run_dir.parent, names=[run_dir.name])
    assert removed == [str(run_dir)] and not run_dir.exists() and keep.exists()
    assert not LocalPostgres(data_dir).running() and not data_dir.exists()


def test_a_scratch_root_too_long_for_the_socket_path_falls_back_to_a_short_stable_one(cfg, tmp_path):
    from dataclasses import replace

    long_root = tmp_path / ("x" * 60)
    config = replace(cfg, restore=replace(cfg.restore, scratch_dir=long_root))
    root = local_scratch_root(config)
    assert len(str(root)) <= 40 and root == local_scratch_root(config)  # the sweep finds it again
    with LocalScratch(base_dir=run_scratch_dir(config, "run-1")) as scratch:  # and a server starts there
        assert scratch.psql("SELECT 1").strip() == "1"
    shutil.rmtree(root, ignore_errors=True)


# -- replace: the new database -------------------------------------------------------------------
def test_restore_into_a_new_database_beside_the_live_one(cfg, dumps, counts, pg, s3, bucket):
    local = put_dump(cfg, dumps["custom"], T0, tables=counts)
    upload(s3, bucket, local, f"database/{local.name}")
    server = ServerTarget(host="127.0.0.1", port=pg.port, user="postgres")
    name = new_database_name(cfg.source("trixtech-db"), datetime(2025, 3, 3, 10, 0, 1, tzinfo=timezone.utc))
    assert name == "trixtech_restored_20250303100001"
    before = exact_row_counts(pg, "trixtech")
    try:
        r = restore_into_new_database(cfg, "trixtech-db", local.name, server=server, new_database=name, bucket=Bucket(s3, bucket))
        assert r["ok"] and r["new_database"] == name and r["verified_rows"] == sum(counts.values())
        assert exact_row_counts(pg, name) == counts
        with pytest.raises(RestoreFailed, match="already exists"):  # never over an existing database
            restore_into_new_database(cfg, "trixtech-db", local.name, server=ServerTarget(
                host="127.0.0.1", port=pg.port, user="postgres"), new_database=name, bucket=Bucket(s3, bucket))
        assert exact_row_counts(pg, name) == counts  # and the refused attempt did not drop it
        with pytest.raises(ValueError, match="own database"):
            restore_into_new_database(cfg, "trixtech-db", local.name, server=server, new_database="trixtech")
    finally:
        pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert exact_row_counts(pg, "trixtech") == before  # the live database was never touched


def test_a_new_database_that_fails_verification_is_dropped(cfg, dumps, counts, pg):
    local = put_dump(cfg, dumps["custom"], T0, tables=dict(counts, **{"public.users": 1}))
    server = ServerTarget(host="127.0.0.1", port=pg.port, user="postgres")
    name = "trixtech_restored_bad"
    with pytest.raises(RestoreFailed, match="rows public.users"):
        restore_into_new_database(cfg, "trixtech-db", local.name, server=server, new_database=name)
    assert not server.database_exists(name)


# -- file restores -------------------------------------------------------------------------------
def tree_archive(cfg, when: datetime, files: dict[str, bytes]) -> Path:
    src = cfg.source("trixtech-files")
    return write_archive(src.local_dir / src.pattern.name_for(when), [(n, d, when) for n, d in files.items()], when)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_file_restore_skip_and_overwrite(cfg, tmp_path):
    archive = tree_archive(cfg, T0, {"opt/trixtech/config/app.yml": b"replicas: 3\n",
                                     "opt/trixtech/config/db.yml": b"host: db\n",
                                     "opt/trixtech/uploads/a.pdf": b"%PDF a"})
    target = Path(cfg.restore.allowed_file_roots[0]) / "app"
    (target / "opt/trixtech/config").mkdir(parents=True)
    (target / "opt/trixtech/config/app.yml").write_text("replicas: 5  # edited since\n")

    r = restore_files(cfg, "trixtech-files", archive.name, target=str(target), paths=["opt/trixtech/config"],
                      existing="skip")
    assert r["skipped"] == ["opt/trixtech/config/app.yml"] and r["written"] == 1 and r["replaced"] == []
    assert (target / "opt/trixtech/config/app.yml").read_text() == "replicas: 5  # edited since\n"
    assert not (target / "opt/trixtech/uploads").exists()  # only the paths asked for

    now = datetime(2025, 3, 3, 10, 0, tzinfo=timezone.utc)
    r = restore_files(cfg, "trixtech-files", archive.name, target=str(target), existing="overwrite", now=now)
    kept = target / ".restore-backup-20250303T100000Z" / "opt/trixtech/config/app.yml"
    assert (target / "opt/trixtech/config/app.yml").read_text() == "replicas: 3\n"
    assert kept.read_text() == "replicas: 5  # edited since\n"  # the replaced file, kept
    assert sorted(p for p, _ in r["replaced"]) == ["opt/trixtech/config/app.yml", "opt/trixtech/config/db.yml"]
    assert (target / "opt/trixtech/uploads/a.pdf").read_bytes() == b"%PDF a"


def test_file_restore_refuses_traversal_and_targets_outside_the_roots(cfg, tmp_path):
    src = cfg.source("trixtech-files")
    evil = src.local_dir / src.pattern.name_for(T0)
    with tarfile.open(evil, "w:gz") as tar:
        for name, data in (("opt/trixtech/config/app.yml", b"ok"), ("../../escaped.txt", b"pwned")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    root = Path(cfg.restore.allowed_file_roots[0])
    target = root / "deep" / "target"
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchive, match=r"'\.\./\.\./escaped\.txt'"):
        restore_files(cfg, "trixtech-files", evil.name, target=str(target), existing="skip")
    assert snapshot(tmp_path) == before and not target.exists()  # nothing written anywhere
    with pytest.raises(TargetNotAllowed, match="not under an allowed restore root"):
        restore_files(cfg, "trixtech-files", evil.name, target=str(tmp_path / "elsewhere"))
    (root / "link").symlink_to(tmp_path)  # a target under the root that resolves outside it
    with pytest.raises(TargetNotAllowed, match="resolves to"):
        restore_files(cfg, "trixtech-files", evil.name, target=str(root / "link" / "x"))


def test_restore_config_block_is_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_ROOT", str(tmp_path))
    monkeypatch.setenv("BACKUP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("BACKUP_SCRATCH_DIR", "/tmp/x")
    base = restore_config_yaml(allowed_root=tmp_path)
    for bad, key in ((base.replace("backend: local", "backend: docker"), "restore.backend"),
                     (base.replace(f'allowed_file_roots: ["{tmp_path}"]', 'allowed_file_roots: ["relative"]'),
                      "restore.allowed_file_roots[0]"),
                     (base.replace("namespace: backup-tests", "namespace: Backup_Tests"), "restore.namespace"),
                     (base.replace("  random_older_window_days: 30\n", "  active_deadline_seconds: 86400\n"),
                      "restore.orphan_max_age_hours"),
                     (base.replace("env_var: DATABASE_URL", "setting: secret"), "restore.app.secret_name"),
                     (base.replace("image: postgres:18.1", "image: postgres:18.1\n  typo: 1"), "restore.typo")):
        path = tmp_path / "bad.yaml"
        path.write_text(bad)
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert err.value.key == key, (key, str(err.value))


def test_http_health_check_retries_until_healthy_then_gives_up():
    from _daily_helpers import RecordingServer

    server = RecordingServer(statuses=[503, 503, 200])
    try:
        http_health_check(f"{server.url}/healthz", timeout=5, interval=0.05)()  # warming up, then 200
        assert [r.path for r in server.requests] == ["/healthz"] * 3
        server.status = 500
        with pytest.raises(RuntimeError, match=r"healthz failed for 0.3s: HTTP 500"):
            http_health_check(f"{server.url}/healthz", timeout=0.3, interval=0.05)()
    finally:
        server.close()
