"""Point-in-time restores from S3 (backupkit/restore/pitr.py, pitr_base.py, wal/fetcher.py): a real server's
archive and two real base backups copied into the loopback S3; restores from S3 only reach the target with the
markers right; a damaged or missing segment in S3 is named; no credential reaches the scratch server; a
retention sweep during a restore deletes neither its base backup nor its WAL (the lease)."""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from _config_helpers import short_dir
from _s3_state import BUCKET, as_uploaded, bucket, s3, upload_once  # noqa: F401  (bucket, s3: fixtures)
from _faketime import after
from _wal_archive import archiving_server, copy_archive, wait_archived
from backupkit import clock
from backupkit.config import load_config
from backupkit.jobs import daily
from backupkit.model import CheckResult
from backupkit.restore import pitr_base
from backupkit.restore.pitr import PitrTarget, marker_checks, parse_target_time, pitr_restore
from backupkit.retention.audit import AuditLog
from backupkit.retention.sweep import sweep_source
from backupkit.state import VerificationState
from backupkit.storage.locks import Leases
from backupkit.storage.objectstore import Bucket
from backupkit.wal.backups import read_base_backup
from backupkit.wal.naming import classify, segment_number
from sandbox import walarchive
from sandbox.s3server import SANDBOX_KEY, SANDBOX_SECRET

NAME = "pitr-s3"
MB = 1 << 20
YAML = """bucket: {{name: {bucket}}}
wal_archives:
  - name: pitr-s3
    local_dir: {root}/base
    s3_prefix: basebackups/
    pattern: base_%Y%m%d_%H%M%S
{archive_dir}    archive_s3_prefix: wal/
    max_age: 30d
    markers_table: postgres.public.pitr_markers
    retention: {{keep_last: 1, min_keep: 1}}
verification: {{state_dir: {root}/state}}
restore: {{scratch_dir: {root}/scratch}}
"""


@pytest.fixture(scope="module")
def server_site():
    """A server archiving 1 MB segments; base backup 1, markers m0-m2, base backup 2, markers m3-m4; all archived.

    ``segs[i]`` is the segment marker i was written to."""
    root = short_dir("bk-pitrs3-")
    pg = archiving_server(root / "archive", root / "base", root / "pg")
    (root / "backups.yaml").write_text(YAML.format(bucket="unused", root=root, archive_dir=""))
    source = load_config(root / "backups.yaml").source(NAME)
    walarchive.ensure_markers(pg)
    names, marks, segs = [], [], []
    for n, count in ((0, 3), (1, 2)):
        names.append(walarchive.take_base_backup(pg, source, clock.now() - timedelta(days=2 - n)).name)
        for _ in range(count):
            time.sleep(1.2)
            pg.psql("SELECT pg_switch_wal()")   # each marker in a segment of its own (a no-op after a backup)
            marks.append(parse_target_time(walarchive.write_marker(pg, f"m{len(marks)}").replace(" ", "T")))
            segs.append(pg.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").strip())
    wait_archived(pg, root / "archive")
    yield root, pg, names, marks, segs
    pg.destroy()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def uploaded(server_site, moto_server):
    """The archive and both base backups uploaded once for the module (tests/_s3_state.py)."""
    src, _pg, names, _marks, _segs = server_site
    items = [(f, "wal/" + f.name) for f in sorted((src / "archive").iterdir())]
    for name in names:
        items += [(f, f"basebackups/{name}/{f.relative_to(src / 'base' / name).as_posix()}")
                  for f in sorted((src / "base" / name).rglob("*")) if f.is_file()]
    return upload_once(moto_server, BUCKET, items)


@pytest.fixture
def site(server_site, uploaded, s3, bucket):
    """A fresh local copy per test (base backups, the archive), the bucket as uploaded."""
    src, pg, names, marks, segs = server_site
    root = short_dir("bk-pitrs3t-")
    shutil.copytree(src / "base", root / "base", symlinks=True)
    copy_archive(src / "archive", root / "archive")
    store = Bucket(s3, bucket)
    as_uploaded(store, uploaded, ("wal/", "basebackups/"))
    yield root, pg, names, marks, segs, store
    shutil.rmtree(root, ignore_errors=True)


def _config(root: Path, bucket: str, *, local_archive: bool = False):
    archive = f"    archive_dir: {root}/archive\n" if local_archive else ""
    (root / "backups.yaml").write_text(YAML.format(bucket=bucket, root=root, archive_dir=archive))
    return load_config(root / "backups.yaml")


def _verified(config, store: Bucket) -> None:
    """The daily run's cloud check: verifies the S3 archive with the base backups and saves the window."""
    bad = [r for r in daily.check_cloud_copies(config, NAME, store) if not r["ok"]]
    assert not bad, bad


def _between(marks, i: int):
    return marks[i] + (marks[i + 1] - marks[i]) / 2


def _secrets_absent(found: list[str]) -> callable:
    """A check run while the scratch server is up: no credential in its files, log or environment."""
    secrets = [SANDBOX_SECRET.encode(), SANDBOX_KEY.encode()]

    def check(server, target) -> list[CheckResult]:
        for f in server.data_dir.rglob("*"):
            if f.is_file() and any(s in f.read_bytes() for s in secrets):
                found.append(str(f))
        pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        if any(s in environ for s in secrets):
            found.append("postmaster environment")
        found.append(f"checked {server.data_dir}")
        return []

    return check


def _both(*checks):
    return lambda server, target: [r for c in checks for r in c(server, target)]


def test_pitr_from_s3_only_reaches_the_target_without_credentials_anywhere(site, bucket):
    root, pg, names, marks, segs, store = site
    config = _config(root, bucket)
    assert config.source(NAME).spec.archive_dir is None
    _verified(config, store)
    shutil.rmtree(root / "base")   # the local copies are gone: S3 is all there is
    shutil.rmtree(root / "archive")
    found: list[str] = []
    target = PitrTarget(_between(marks, 1), action="promote")
    result = pitr_restore(config, NAME, target, bucket=store, timeout=120,
                          checks=_both(marker_checks(lambda sql: pg.psql(sql)), _secrets_absent(found)))
    assert result["ok"], result["problems"]
    assert result["backup"] == names[0] and result["base_backup_from"] == "s3"
    checks = {c["check"]: c for c in result["checks"]}
    assert "recovery stopped before commit" in checks["pitr_reached"]["detail"]
    assert checks["pitr_markers_before"]["detail"].startswith("2 row(s)")   # m0, m1
    assert checks["pitr_markers_after"]["ok"]
    assert found and found[-1].startswith("checked ") and found[:-1] == [], found
    text = json.dumps(result)
    assert SANDBOX_SECRET not in text and SANDBOX_KEY not in text
    assert not list((root / "scratch" / "pitr").iterdir())          # torn down
    assert not Leases(config.state_dir).active(NAME)                 # lease released


def test_the_monthly_test_of_an_s3_only_archive_uses_the_s3_base_backup_and_refuses_a_damaged_one(site, bucket):
    from backupkit.jobs.restore_test import pitr_test

    root, pg, names, marks, segs, store = site
    config = _config(root, bucket)
    _verified(config, store)
    store.put(f"basebackups/{names[0]}/global/pg_control", b"\0" * 8192)   # the S3 copy damaged, the local one fine
    target = {"source_name": NAME, "target_time": _between(marks, 1).isoformat(), "role": "pitr"}
    result = pitr_test(config, target, live=lambda sql: pg.psql(sql), bucket=store)
    [problem] = result["problems"]
    assert problem["check"] == "pitr_target" and "pg_verifybackup refused it" in problem["detail"]
    assert f"basebackups/{names[0]}/" in problem["detail"] and "global/pg_control" in problem["detail"]
    assert not list((root / "scratch" / "pitr").iterdir())


@pytest.mark.parametrize("damage", ["page_header", "missing"])
def test_a_damaged_or_missing_segment_in_s3_stops_recovery_naming_it(site, bucket, damage):
    root, pg, names, marks, segs, store = site
    config = _config(root, bucket)
    _verified(config, store)
    victim = segs[1]            # holds m1: needed to reach a target after it
    if damage == "missing":
        store.client.delete_object(Bucket=bucket, Key="wal/" + victim)
    else:
        data = bytearray((root / "archive" / victim).read_bytes())
        data[0:2] = b"\x00\x00"          # the first page's magic
        store.put("wal/" + victim, bytes(data))
    result = pitr_restore(config, NAME, PitrTarget(_between(marks, 1)), bucket=store, timeout=120,
                          checks=marker_checks(lambda sql: pg.psql(sql)))
    assert not result["ok"]
    [problem] = result["problems"]
    assert problem["check"] == "pitr_reached" and f"recovery stopped at {victim}" in problem["detail"]
    want = "is not in s3://" if damage == "missing" else "invalid magic number 0000"
    assert want in problem["detail"], problem["detail"]


def test_a_sweep_during_the_restore_deletes_neither_its_base_backup_nor_its_wal(site, s3, bucket):
    root, pg, names, marks, segs, store = site
    config = _config(root, bucket, local_archive=True)
    assert not [r for r in daily.check_integrity(config, NAME) if not r["ok"]]   # base backups verified
    _verified(config, store)
    # Sweep just after the archive's newest file (its own time, on the tests' clock: tests/_wal_archive.py).
    newest = max(datetime.fromtimestamp(p.stat().st_mtime, timezone.utc) for p in (root / "archive").iterdir())
    later = newest + timedelta(minutes=5)

    def sweep(dry_run: bool):
        with VerificationState(config.state_dir) as state:
            return sweep_source(config, NAME, bucket=store, state=state, dry_run=dry_run, run_id="sweep-1", now=later,
                                audit=AuditLog(config.state_dir), backoff=0)

    def wal_files() -> tuple[set[str], set[str]]:
        return ({p.name for p in (root / "archive").iterdir()},
                {o.key for o in store.objects("wal/")})

    start = read_base_backup(root / "base" / names[0]).start_lsn // MB

    def needed(files: set[str]) -> set[str]:
        """The WAL the leased base backup replays from: its start segment on (and every history)."""
        return {n for n in files if (c := classify(n.rsplit("/", 1)[-1])) and
                (c.kind == "history" or segment_number(c, MB) >= start)}

    dry = sweep(True)
    assert dry.would_delete == [names[0]]                       # without the lease, the base backup would go
    assert needed(set(dry.wal["would_delete"])), dry.wal         # and WAL it needs with it
    before = wal_files()
    during = {}

    def sweep_now(server, target):
        during["report"] = sweep(False)
        during["wal"] = wal_files()
        during["base"] = (root / "base" / names[0]).is_dir(), bool(list(store.objects(f"basebackups/{names[0]}/")))
        return []

    result = pitr_restore(config, NAME, PitrTarget(_between(marks, 1)), bucket=store, timeout=120,
                          checks=sweep_now, run_id="restore-1")
    assert result["ok"] and result["backup"] == names[0], result["problems"]
    report = during["report"]
    assert report.deleted == [] and [h["name"] for h in report.held] == [names[0]]
    assert "in use by point-in-time restore (run restore-1)" in report.held[0]["reason"]
    assert during["base"] == (True, True)
    assert needed(during["wal"][0]) == needed(before[0]) and needed(during["wal"][1]) == needed(before[1])
    after = sweep(False)                       # the restore is over: the lease is gone
    assert after.deleted == [names[0]] and wal_files() != before


def test_not_enough_disk_is_refused_before_anything_is_downloaded(site, bucket, monkeypatch):
    root, pg, names, marks, segs, store = site
    config = _config(root, bucket)
    _verified(config, store)
    shutil.rmtree(root / "base")
    monkeypatch.setattr(pitr_base, "DISK_MARGIN", shutil.disk_usage(root).total)   # more than can ever be free
    result = pitr_restore(config, NAME, PitrTarget(_between(marks, 1)), bucket=store, timeout=60)
    [problem] = result["problems"]
    assert problem["check"] == "pitr_target" and "not enough free disk" in problem["detail"]
    assert f"basebackups/{names[0]}/" in problem["detail"]
    assert not list((root / "scratch" / "pitr").iterdir())


def test_a_lease_waits_for_a_sweep_under_way_then_checks_its_choice_again(tmp_path):
    """A sweep that planned before the lease existed may delete the choice: wait for it, choose again."""
    from types import SimpleNamespace

    from backupkit.restore.pitr import lease_base_backup
    from backupkit.storage.locks import SourceLock

    config = _config(tmp_path, "trixtech-backups")
    source = config.source(NAME)
    choices = iter(["base_a", "base_b", "base_b"])   # the sweep under way deleted base_a
    lock = SourceLock(config.state_dir, NAME, "sweep", owner="sweep-under-way")
    lock.acquire()
    releaser = after(0.6, lock.release)   # not threading.Timer: it never fires under faketime (tests/_faketime.py)
    t0 = time.monotonic()
    got = lease_base_backup(config, source, lambda: SimpleNamespace(name=next(choices)), run_id="r1",
                            for_=timedelta(hours=1))
    assert time.monotonic() - t0 >= 0.5                     # it waited for the sweep's lock
    assert got.name == "base_b"
    assert [lease.backup for lease in Leases(config.state_dir).active(NAME)] == ["base_b"]
    releaser.join()


def test_a_refused_lease_leaves_no_lease_behind(tmp_path):
    from types import SimpleNamespace

    from backupkit.restore.pitr import PitrError, lease_base_backup

    config = _config(tmp_path, "trixtech-backups")
    answers = iter([SimpleNamespace(name="base_a")])

    def choose():
        try:
            return next(answers)
        except StopIteration:
            raise PitrError("no base backup left") from None

    with pytest.raises(PitrError, match="no base backup left"):
        lease_base_backup(config, config.source(NAME), choose, run_id="r2", for_=timedelta(hours=1))
    assert Leases(config.state_dir).active(NAME) == []
