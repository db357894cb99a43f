"""Point-in-time restores from tar-format base backups (backupkit/restore/pitr_tar.py): real ``pg_basebackup -Ft``
backups (uncompressed with -X none; gzip with -X stream and its pg_wal.tar.gz) of a real archiving server, on
disk and in S3, reach the target with the markers right; lz4 and zstd tars are the real base.tar recompressed
here in the frame formats PostgreSQL writes (the bundled pg_basebackup is built with zlib only). A damaged
base.tar, a member escaping, a truncated compressed tar and a tablespace tar are each refused, naming the file,
before the server starts."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time
from datetime import timedelta
from pathlib import Path

import lz4.frame
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from _config_helpers import short_dir
from _wal_archive import archiving_server, pitr_yaml, wait_archived
from backupkit import clock
from backupkit.config import load_config
from backupkit.jobs import daily
from backupkit.pgbin import pg_bin
from backupkit.pgserver import LocalPostgres
from backupkit.restore.pitr import PitrTarget, marker_checks, parse_target_time, pitr_restore
from backupkit.restore.pitr import archive_reader
from backupkit.restore.pitr_base import DISK_MARGIN, BaseBackupError, base_backup_for, download_base_backup
from backupkit.restore.pitr_tar import TABLESPACE_TAR, inflate, tar_layout, unpack_tar_backup
from backupkit.storage.objectstore import Bucket
from backupkit.wal.backups import BackupError, manifest_files, read_base_backup
from sandbox import walarchive

NAME = "pitr-tar"


def _tar_backup(pg: LocalPostgres, out: Path, *args: str) -> Path:
    proc = subprocess.run([pg_bin("pg_basebackup"), *pg.conn_args()[:-2], "-D", str(out), "-Ft", "-c", "fast",
                           *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pg.psql("SELECT pg_switch_wal()")
    return out


def _recompress(src: Path, dst: Path, compress) -> Path:
    """``src`` (a -Ft backup) with its base.tar compressed by ``compress`` (bytes -> bytes)."""
    dst.mkdir(parents=True)
    shutil.copy(src / "backup_manifest", dst / "backup_manifest")
    suffix, fn = compress
    (dst / f"base.tar{suffix}").write_bytes(fn((src / "base.tar").read_bytes()))
    return dst


COMPRESS = {"lz4": (".lz4", lambda b: lz4.frame.compress(b)),
            "zst": (".zst", lambda b: zstandard.ZstdCompressor().compress(b))}


@pytest.fixture(scope="module")
def site():
    """A server archiving 1 MB segments; a -Ft -X none backup and a -Ft -z -X stream one; then 4 markers."""
    root = short_dir("bk-pitrtar-")
    pg = archiving_server(root / "archive", root / "base", root / "pg")
    (root / "backups.yaml").write_text(pitr_yaml(NAME, root, bucket="unused"))
    source = load_config(root / "backups.yaml").source(NAME)
    walarchive.ensure_markers(pg)
    now = clock.now()
    plain_name, gz_name = ((now - timedelta(hours=h)).strftime(source.pattern.template) for h in (2, 1))
    stash = root / "stash"
    _tar_backup(pg, stash / "tar" / plain_name, "-X", "none")
    time.sleep(1.1)
    _tar_backup(pg, stash / "gz" / gz_name, "-X", "stream", "-z")
    for kind, how in COMPRESS.items():
        _recompress(stash / "tar" / plain_name, stash / kind / plain_name, how)
    marks = []
    for i in range(4):
        time.sleep(1.2)
        marks.append(parse_target_time(walarchive.write_marker(pg, f"m{i}").replace(" ", "T")))
    wait_archived(pg, root / "archive")   # mtimes on the tests' clock (tests/_wal_archive.py): not stale
    for kind in ("tar", "gz"):
        shutil.copytree(stash / kind, root / "base", dirs_exist_ok=True)
    config = load_config(root / "backups.yaml")
    results = daily.check_integrity(config, NAME)
    assert not [r for r in results if not r["ok"]], results
    yield root, pg, config, marks, stash
    pg.destroy()
    shutil.rmtree(root, ignore_errors=True)


def _only(root: Path, stash: Path, kind: str) -> Path:
    """The source's local directory holding the one base backup ``kind``; its path."""
    shutil.rmtree(root / "base")
    shutil.copytree(stash / kind, root / "base")
    [backup] = (root / "base").iterdir()
    return backup


def _target(marks):
    return PitrTarget(marks[1] + (marks[2] - marks[1]) / 2, action="promote")


def _restored(result) -> None:
    assert result["ok"], result["problems"]
    checks = {c["check"]: c for c in result["checks"]}
    assert "recovery stopped before commit" in checks["pitr_reached"]["detail"]
    assert checks["pitr_markers_before"]["detail"].startswith("2 row(s)")   # m0, m1
    assert checks["pitr_markers_after"]["ok"]


@pytest.mark.parametrize("kind", ["tar", "gz", "lz4", "zst"])
def test_pitr_from_a_tar_base_backup_reaches_the_target(site, kind):
    root, pg, config, marks, stash = site
    backup = _only(root, stash, kind)
    result = pitr_restore(config, NAME, _target(marks), checks=marker_checks(lambda sql: pg.psql(sql)), timeout=120)
    _restored(result)
    assert result["location"] == str(backup)
    assert not list((root / "scratch" / "pitr").iterdir())   # torn down, the unpacked copy too


def test_pitr_from_a_tar_base_backup_in_s3(site, s3, bucket):
    root, pg, config, marks, stash = site
    backup = _only(root, stash, "gz")
    store = Bucket(s3, bucket)
    for f in sorted(backup.iterdir()):
        store.upload(f, f"basebackups/{backup.name}/{f.name}")
    shutil.rmtree(root / "base")
    (root / "base").mkdir()                                   # kept in S3 only
    (root / "s3.yaml").write_text(pitr_yaml(NAME, root, bucket=bucket))
    result = pitr_restore(load_config(root / "s3.yaml"), NAME, _target(marks), bucket=store,
                          checks=marker_checks(lambda sql: pg.psql(sql)), timeout=120)
    _restored(result)
    assert result["base_backup_from"] == "s3" and backup.name in result["location"]
    source = load_config(root / "s3.yaml").source(NAME)
    choice = base_backup_for(source, _target(marks).time, archive_reader(source, store), store)
    assert choice.format == "tar" and choice.from_s3
    download_base_backup(store, choice, root / "dl")
    assert sorted(p.name for p in (root / "dl").iterdir()) == ["backup_manifest", "base.tar.gz"]  # no pg_wal.tar.gz
    shutil.rmtree(root / "dl")
    store.upload(stash / "gz" / backup.name / "base.tar.gz", f"basebackups/{backup.name}/16385.tar.gz")
    with pytest.raises(BaseBackupError, match="16385.tar.gz: a tablespace tar"):
        download_base_backup(store, choice, root / "dl")
    assert not (root / "dl").exists()                         # refused before anything was downloaded


# -- refused before the server starts -----------------------------------------------------------------
def _refused(config, marks, pg) -> str:
    result = pitr_restore(config, NAME, _target(marks), checks=marker_checks(lambda sql: pg.psql(sql)), timeout=60)
    assert not result["ok"]
    checks = {c["check"] for c in result["checks"]}
    assert "pitr_reached" not in checks and "pitr_start" not in checks, result["checks"]   # never started
    [problem] = result["problems"]
    return problem["detail"]


def _members(tar: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(tar) as t:
        return [(m, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()]


def _write_tar(tar: Path, members) -> None:
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)


def test_a_damaged_base_tar_is_refused(site):
    root, pg, config, marks, stash = site
    tar = _only(root, stash, "tar") / "base.tar"
    data = bytearray(tar.read_bytes())
    data[148:156] = b"9999999\0"                              # the first header's checksum
    tar.write_bytes(bytes(data))
    detail = _refused(config, marks, pg)
    assert str(tar) in detail and "damaged archive" in detail


def test_a_changed_file_inside_base_tar_fails_the_manifest(site):
    root, pg, config, marks, stash = site
    tar = _only(root, stash, "tar") / "base.tar"
    members = _members(tar)
    i = next(i for i, (m, d) in enumerate(members) if m.name == "PG_VERSION")
    members[i] = (members[i][0], b"99\n")   # "18\n", same size: only the checksum tells
    _write_tar(tar, members)
    detail = _refused(config, marks, pg)
    assert "pg_verifybackup refused it" in detail and "PG_VERSION" in detail


@pytest.mark.parametrize("name", ["../escaped", "/tmp/bk-pitrtar-absolute", "global/../../escaped"])
def test_a_member_escaping_is_refused_and_nothing_is_written(site, name):
    root, pg, config, marks, stash = site
    tar = _only(root, stash, "tar") / "base.tar"
    evil = tarfile.TarInfo(name)
    evil.size = 4
    _write_tar(tar, [*_members(tar), (evil, b"evil")])
    detail = _refused(config, marks, pg)
    assert str(tar) in detail and "nothing extracted" in detail
    assert not Path("/tmp/bk-pitrtar-absolute").exists()
    assert not list((root / "scratch" / "pitr").iterdir())


def test_a_link_out_of_the_directory_is_refused(site):
    root, pg, config, marks, stash = site
    tar = _only(root, stash, "tar") / "base.tar"
    link = tarfile.TarInfo("pg_hba_link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _write_tar(tar, [*_members(tar), (link, None)])
    detail = _refused(config, marks, pg)
    assert str(tar) in detail and "pg_hba_link" in detail


@pytest.mark.parametrize("kind", ["gz", "lz4", "zst"])
def test_a_truncated_compressed_tar_is_refused(site, kind):
    root, pg, config, marks, stash = site
    backup = _only(root, stash, kind)
    [tar] = backup.glob("base.tar.*")
    data = tar.read_bytes()
    tar.write_bytes(data[:len(data) // 2])
    detail = _refused(config, marks, pg)
    assert str(tar) in detail
    assert any(w in detail for w in ("truncated", "damaged")), detail


def test_a_tablespace_tar_is_refused(site):
    root, pg, config, marks, stash = site
    backup = _only(root, stash, "tar")
    shutil.copy(backup / "base.tar", backup / "16385.tar")
    detail = _refused(config, marks, pg)
    assert f"{backup}/16385.tar" in detail and "tablespace" in detail


def test_a_tar_larger_than_its_manifest_says_is_refused(site):
    root, pg, config, marks, stash = site
    tar = _only(root, stash, "tar") / "base.tar"
    extra = tarfile.TarInfo("base/1/99999")
    extra.size = 2 << 20
    _write_tar(tar, [*_members(tar), (extra, bytes(extra.size))])
    detail = _refused(config, marks, pg)
    assert str(tar) in detail and "exceed the limit" in detail


def test_free_disk_is_checked_against_the_manifest_before_unpacking(site, monkeypatch):
    root, pg, config, marks, stash = site
    backup = _only(root, stash, "lz4")
    _, total = manifest_files(backup / "backup_manifest")
    real = shutil.disk_usage
    # Room for the files the manifest lists, not for the inflated tar beside them as well.
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=total + DISK_MARGIN + 1))
    detail = _refused(config, marks, pg)
    assert "not enough free disk for unpacking" in detail and f"{backup}/base.tar.lz4" in detail


# -- the rules, without a server ------------------------------------------------------------------------
def test_layout_rules():
    assert tar_layout(["base.tar.zst", "backup_manifest", "pg_wal.tar.zst"], "x").compression == ".zst"
    for names, why in ((["backup_manifest"], "no base.tar"), (["base.tar", "base.tar.gz", "backup_manifest"],
                       "more than one"), (["base.tar"], "no backup_manifest"),
                       (["base.tar", "backup_manifest", "16385.tar.lz4"], "tablespace")):
        with pytest.raises(BaseBackupError, match=why):
            tar_layout(names, "x")


def test_inflate_stops_at_its_cap_while_streaming(tmp_path):
    src = tmp_path / "bomb.tar.zst"
    src.write_bytes(zstandard.ZstdCompressor().compress(bytes(64 << 20)))
    with pytest.raises(BaseBackupError, match="inflates to more than"):
        inflate(src, tmp_path / "out", "zstd", 1 << 20, str(src))
    assert (tmp_path / "out").stat().st_size <= 1 << 20


@pytest.mark.parametrize("text", [b"", b"[]", b'{"Files": [{"Size": -1}]}', b'{"Files": [{"Size": "1"}]}',
                                  b'{"Files": 3}', b"\xff\xfe"])
def test_manifest_files_refuses_what_is_not_a_manifest(tmp_path, text):
    (tmp_path / "backup_manifest").write_bytes(text)
    with pytest.raises(BackupError, match="backup_manifest"):
        manifest_files(tmp_path / "backup_manifest")


def test_manifest_files_counts_a_real_manifest(site):
    stash = site[4]
    [backup] = (stash / "tar").iterdir()
    files, total = manifest_files(backup / "backup_manifest")
    with tarfile.open(backup / "base.tar") as t:
        regular = [m for m in t.getmembers() if m.isfile()]
    assert files == len(regular) and total == sum(m.size for m in regular)



# -- fuzz: hostile manifests, names and tars -------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda n: b"[" * n, st.integers(0, 200_000)))
def test_manifest_files_fuzz(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("m") / "backup_manifest"
    path.write_bytes(data)
    try:
        files, total = manifest_files(path)
    except BackupError as exc:
        assert "backup_manifest" in str(exc)
        return
    assert files >= 0 and total >= 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["base.tar", "base.tar.gz", "base.tar.lz4", "base.tar.zst", "backup_manifest",
                                 "pg_wal.tar", "16385.tar", "1.tar.zst", "x.tar", "base.tar.bz2"]) | st.text(max_size=12),
                max_size=6))
def test_layout_fuzz(names):
    try:
        layout = tar_layout(names, "x")
    except BaseBackupError as exc:
        assert str(exc).startswith("x")
        return
    assert "backup_manifest" in names and f"base.tar{layout.compression}" in names
    assert not any(TABLESPACE_TAR.match(n) for n in names)


@pytest.mark.parametrize("kind", ["tar", "lz4", "zst"])
def test_seeded_mutations_of_a_real_tar_are_refused_not_a_traceback(site, tmp_path, kind):
    import random
    from types import SimpleNamespace

    stash = site[4]
    [backup] = (stash / kind).iterdir()
    bb = read_base_backup(backup)
    choice = SimpleNamespace(start_tli=bb.start_tli, start_lsn=bb.start_lsn)
    [tar] = backup.glob("base.tar*")
    good = tar.read_bytes()
    rng = random.Random(f"pitrtar/{kind}")
    for i in range(6):
        case = tmp_path / f"case{i}"
        shutil.copytree(backup, case / "backup")
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data))
            data[at:at + 4] = bytes(rng.randrange(256) for _ in range(4))
        (case / "backup" / tar.name).write_bytes(bytes(data))
        try:
            unpack_tar_backup(case / "backup", case / "unpacked", choice, str(case / "backup"))
        except BaseBackupError as exc:
            assert str(case / "backup") in str(exc)
        shutil.rmtree(case)
