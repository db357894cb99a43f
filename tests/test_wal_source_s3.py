"""The daily verification of a WAL archive kept in S3 with base backups kept in S3 (backupkit/wal/source.py,
wal/s3_backups.py, wal/manifest.py): the session's real archive and real base backups (tests/_wal_archive.py)
uploaded to the loopback S3, local copies gone or pruned. The window is found from S3; a file missing or of the
wrong size, a manifest over the limit or not JSON, and the base backup's WAL gone are each named; an unchanged S3
base backup is not read in full again; the streaming manifest reader survives seeded mutations. And tar base
backups on disk whose base.tar is lz4 or zstd (the real base.tar recompressed) pass, or are named when damaged."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tarfile
from datetime import timedelta
from pathlib import Path

import lz4.frame
import pytest
import zstandard

from _config_helpers import short_dir
from _s3_state import BUCKET, as_uploaded, bucket, s3, upload_once  # noqa: F401  (bucket, s3: fixtures)
from _wal_archive import copy_archive
from backupkit.config import load_config
from backupkit.jobs import daily
from backupkit.pgbin import pg_bin
from backupkit.restore.scratch import local_scratch_root
from backupkit.state import VerificationState
from backupkit.storage.objectstore import Bucket
from backupkit.wal import s3_backups
from backupkit.wal.backups import BackupError
from backupkit.wal.manifest import read_manifest
from backupkit.wal.source import load_window

NAME = "s3-wal"
YAML = """bucket: {{name: {bucket}}}
wal_archives:
  - name: s3-wal
    local_dir: {root}/bases
    s3_prefix: basebackups/
    pattern: base_%Y%m%d_%H%M%S
    archive_s3_prefix: wal/
    max_age: 30d
verification: {{state_dir: {root}/{state}, reread_fraction: 0}}
"""


def _names(wal_now) -> dict[str, str]:
    return {"plain": (wal_now - timedelta(hours=3)).strftime("base_%Y%m%d_%H%M%S"),
            "tar": (wal_now - timedelta(hours=1)).strftime("base_%Y%m%d_%H%M%S")}


@pytest.fixture(scope="module")
def uploaded(wal_archives, wal_now, moto_server):
    """The timeline-1 archive under wal/, the plain (older) and tar (newer) base backups under
    basebackups/, uploaded once for the module (tests/_s3_state.py)."""
    names = _names(wal_now)
    items = [(f, "wal/" + f.name) for f in sorted(wal_archives.tl1.iterdir())]
    for kind, src in (("plain", wal_archives.base_plain), ("tar", wal_archives.base_tar)):
        items += [(f, f"basebackups/{names[kind]}/{f.relative_to(src).as_posix()}")
                  for f in sorted(src.rglob("*")) if f.is_file()]
    return upload_once(moto_server, BUCKET, items)


@pytest.fixture
def site(uploaded, wal_now, s3, bucket):
    """The bucket as uploaded; nothing on disk. Yields (root, bucket, {"plain": name, "tar": name})."""
    root = short_dir("bk-wals3-")
    (root / "bases").mkdir()
    store = Bucket(s3, bucket)
    as_uploaded(store, uploaded, ("wal/", "basebackups/"))
    yield root, store, _names(wal_now)
    shutil.rmtree(root, ignore_errors=True)


def _config(root: Path, store: Bucket, state: str = "state"):
    path = root / f"{state}.yaml"
    path.write_text(YAML.format(bucket=store.name, root=root, state=state))
    return load_config(path)


def _run(cfg, store: Bucket) -> list[dict]:
    """check_cloud_copies of the source: the archive in S3 verified with the catalog's base backups."""
    return daily.check_cloud_copies(cfg, NAME, store)


def _bad(results) -> list[dict]:
    return [r for r in results if not r["ok"]]


def _one(results, check: str) -> dict:
    return next(r for r in results if r["check"] == check)


def _verdict(cfg, name: str) -> str | None:
    with VerificationState(cfg.state_dir) as st:
        return st.verdict(f"{NAME}/{name}")


# -- the window from S3 ---------------------------------------------------------------------------------------
def test_base_backups_only_in_s3_are_verified_and_give_the_window(site, wal_archives):
    root, store, names = site
    cfg = _config(root, store)
    results = _run(cfg, store)
    assert _bad(results) == [], _bad(results)
    assert "2 base backup(s)" in _one(results, "wal_archive")["detail"]
    window = _one(results, "pitr_window")
    assert window["ok"] and "recoverable from" in window["detail"]
    # Retention counts only verified base backups: both are, read from S3 alone.
    assert _verdict(cfg, names["plain"]) == _verdict(cfg, names["tar"]) == "passed"
    # The same window as with both base backups on disk (the local path, tested elsewhere).
    shutil.copytree(wal_archives.base_plain, root / "bases" / names["plain"])
    shutil.copytree(wal_archives.base_tar, root / "bases" / names["tar"])
    local = _run(_config(root, store, state="state-local"), store)
    assert _one(local, "pitr_window")["detail"].split(";")[0] == window["detail"].split(";")[0]


def _window_start(cfg, store) -> str | None:
    """The LSN the window starts at (the oldest usable base backup's stop), as the run saved it."""
    results = _run(cfg, store)
    assert _bad(results) == [], _bad(results)
    return load_window(cfg, cfg.source(NAME))["start_lsn"]


def test_a_pruned_local_copy_does_not_shrink_the_window(site, wal_archives):
    """The older base backup's local copy is gone (pruned), its S3 copy remains: the window still starts there."""
    root, store, names = site
    shutil.copytree(wal_archives.base_tar, root / "bases" / names["tar"])
    pruned = _window_start(_config(root, store), store)
    shutil.copytree(wal_archives.base_plain, root / "bases" / names["plain"])
    both = _window_start(_config(root, store, state="state-both"), store)
    assert pruned == both
    shutil.rmtree(root / "bases" / names["plain"])
    store.client.delete_object(Bucket=store.name, Key=f"basebackups/{names['plain']}/backup_manifest")
    cfg = _config(root, store, state="state-newer")
    daily.check_cloud_copies(cfg, NAME, store)
    assert load_window(cfg, cfg.source(NAME))["start_lsn"] != both   # the control: the tar one starts later
    assert _verdict(cfg, names["plain"]) == "failed"   # no manifest: not a verified base backup


# -- damage ---------------------------------------------------------------------------------------------------
def _damage_named(cfg, store, name: str, *words: str) -> str:
    bad = [r for r in _bad(_run(cfg, store)) if name in r["detail"]]
    assert bad, f"nothing names {name}"
    detail = " | ".join(r["detail"] for r in bad)
    assert all(w in detail for w in words), detail
    assert _verdict(cfg, name) == "failed"
    return detail


def _plain_files(wal_archives) -> list[str]:
    return sorted(p.relative_to(wal_archives.base_plain).as_posix() for p in (wal_archives.base_plain / "base")
                  .rglob("*") if p.is_file())


def test_a_file_missing_in_s3_is_named(site, wal_archives):
    root, store, names = site
    victim = _plain_files(wal_archives)[7]
    store.client.delete_object(Bucket=store.name, Key=f"basebackups/{names['plain']}/{victim}")
    _damage_named(_config(root, store), store, names["plain"], "missing in S3", victim)


def test_a_file_of_the_wrong_size_and_an_unexpected_object_are_named(site, wal_archives):
    root, store, names = site
    victim = _plain_files(wal_archives)[3]
    prefix = f"basebackups/{names['plain']}/"
    store.put(prefix + victim, (wal_archives.base_plain / victim).read_bytes()[:-1])
    store.put(prefix + "base/1/99999", b"not in the manifest")
    _damage_named(_config(root, store), store, names["plain"], "of the wrong size", victim,
                  "the manifest does not list: base/1/99999")


def test_a_truncated_base_tar_and_a_tablespace_tar_in_s3_are_named(site, wal_archives):
    root, store, names = site
    prefix = f"basebackups/{names['tar']}/"
    store.put(prefix + "base.tar", (wal_archives.base_tar / "base.tar").read_bytes()[:1 << 20])
    _damage_named(_config(root, store), store, names["tar"], "base.tar is 1048576 bytes", "truncated")
    store.put(prefix + "16385.tar", b"x")
    _damage_named(_config(root, store, state="state-2"), store, names["tar"], "16385.tar: a tablespace tar")


def test_a_manifest_over_the_limit_is_refused_naming_it(site, monkeypatch):
    root, store, names = site
    monkeypatch.setattr(s3_backups, "MANIFEST_LIMIT", 4096)
    _damage_named(_config(root, store), store, names["plain"], f"{names['plain']}/backup_manifest",
                  "larger than 4096 bytes: refused")


def test_a_manifest_that_is_not_json_is_refused(site, wal_archives):
    """Its head and tail intact (the WAL range reads), the middle broken: only the full read finds it."""
    root, store, names = site
    data = (wal_archives.base_plain / "backup_manifest").read_bytes()
    middle = data.index(b"\n", len(data) // 2) + 1   # at the start of a Files entry's line
    store.put(f"basebackups/{names['plain']}/backup_manifest", data[:middle] + b"{{{ not json" + data[middle:])
    _damage_named(_config(root, store), store, names["plain"], "not a JSON backup manifest")


def test_a_changed_size_in_the_manifest_fails_its_checksum(site, wal_archives):
    root, store, names = site
    text = (wal_archives.base_plain / "backup_manifest").read_text()
    entry = next(e for e in json.loads(text)["Files"] if e["Size"] > 100)
    old = f'"Path": "{entry["Path"]}", "Size": {entry["Size"]},'
    assert old in text
    changed = text.replace(old, f'"Path": "{entry["Path"]}", "Size": {entry["Size"] + 1},')
    store.put(f"basebackups/{names['plain']}/backup_manifest", changed.encode())
    _damage_named(_config(root, store), store, names["plain"], "manifest checksum mismatch")


def test_the_base_backups_wal_gone_is_base_backup_wal_missing(site, wal_archives):
    root, store, names = site
    label = next(p.name for p in sorted(wal_archives.tl1.iterdir()) if p.name.endswith(".backup"))
    store.client.delete_object(Bucket=store.name, Key=f"wal/{label[:24]}")   # the older backup's start segment
    bad = _bad(_run(_config(root, store), store))
    missing = [r for r in bad if r["check"] == "wal_base_backup_wal_missing"]
    assert missing and names["plain"] in missing[0]["detail"], bad


# -- the verification memory --------------------------------------------------------------------------------
class _Requests:
    """Every S3 request sent: (operation, URL, Range header)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    def __call__(self, request=None, event_name: str = "", **_) -> None:
        self.seen.append((event_name.rsplit(".", 1)[-1], request.url, request.headers.get("Range")))

    def full_reads(self, name: str) -> list[tuple]:
        """Listings of the backup's prefix and whole (not ranged) GETs of its manifest."""
        return [r for r in self.seen if (r[0] == "ListObjectsV2" and f"basebackups%2F{name}%2F" in r[1])
                or (r[0] == "GetObject" and r[1].endswith(f"{name}/backup_manifest") and r[2] is None)]


def test_an_unchanged_s3_base_backup_is_not_read_in_full_again(site):
    root, store, names = site
    cfg = _config(root, store)
    requests = _Requests()
    store.client.meta.events.register("before-send.s3.*", requests)
    try:
        assert _bad(_run(cfg, store)) == []
        first = requests.full_reads(names["plain"])
        assert len(first) == 2, first   # one listing and one whole manifest
        requests.seen.clear()
        assert _bad(_run(cfg, store)) == []
        assert requests.full_reads(names["plain"]) == []
        # Its manifest object replaced (same bytes, a new ETag-LastModified pair): read in full again.
        key = f"basebackups/{names['plain']}/backup_manifest"
        store.put(key, store.read_small(key, limit=1 << 24))
        requests.seen.clear()
        assert _bad(_run(cfg, store)) == []
        assert len(requests.full_reads(names["plain"])) == 2
    finally:
        store.client.meta.events.unregister("before-send.s3.*", requests)


# -- the streaming manifest reader ----------------------------------------------------------------------------
def _read(data: bytes, chunk: int = 1 << 20, limit: int = 1 << 30) -> list[tuple[str, int]]:
    files: list[tuple[str, int]] = []
    read_manifest((data[i:i + chunk] for i in range(0, len(data), chunk)), "m", limit,
                  lambda p, s: files.append((p, s)))
    return files


def test_a_real_manifest_streams_in_any_chunking(wal_archives):
    data = (wal_archives.base_plain / "backup_manifest").read_bytes()
    expected = [(e["Path"], e["Size"]) for e in json.loads(data)["Files"]]
    for chunk in (1, 7, 4096, len(data)):
        assert _read(data, chunk) == expected


def _pg_verifybackup_refuses_manifest(tmp_path: Path, wal_archives, manifest: bytes) -> bool:
    copy = tmp_path / "copy"
    shutil.copytree(wal_archives.base_plain, copy)
    (copy / "backup_manifest").write_bytes(manifest)
    proc = subprocess.run([pg_bin("pg_verifybackup"), "--no-parse-wal", "--quiet", str(copy)], capture_output=True)
    shutil.rmtree(copy)
    return proc.returncode != 0


def test_seeded_mutations_of_a_real_manifest_are_verdicts(wal_archives, tmp_path):
    """Any byte changed before the last line (the checksum's part) is refused; no mutation is a traceback.
    pg_verifybackup, the oracle, refuses the same changed bytes (sampled)."""
    data = (wal_archives.base_plain / "backup_manifest").read_bytes()
    last_line = data.rstrip(b"\n").rfind(b"\n") + 1
    rng = random.Random(20261201)
    oracle = 0
    for i in range(300):
        mutated = bytearray(data)
        at = rng.randrange(len(data))
        how = i % 4
        if how == 0:
            mutated[at] ^= 1 << rng.randrange(8)
        elif how == 1:
            del mutated[at:at + rng.randrange(1, 64)]
        elif how == 2:
            mutated[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        else:
            mutated = mutated[:at]
        try:
            _read(bytes(mutated), chunk=rng.choice((1, 13, 4096, 1 << 20)), limit=len(data) + 8)
            refused = False
        except BackupError as exc:
            assert str(exc).startswith("m: "), exc
            refused = True
        if at < last_line and how in (0, 1, 2) and bytes(mutated) != data:
            assert refused, (i, at, how)
            if oracle < 5 and how == 0:
                oracle += 1
                assert _pg_verifybackup_refuses_manifest(tmp_path, wal_archives, bytes(mutated))
    assert oracle == 5


def test_the_limit_applies_while_streaming(wal_archives):
    data = (wal_archives.base_plain / "backup_manifest").read_bytes()
    pulled = []

    def chunks():
        for i in range(0, len(data), 1000):
            pulled.append(i)
            yield data[i:i + 1000]

    with pytest.raises(BackupError, match="larger than 5000 bytes"):
        read_manifest(chunks(), "m", 5000, lambda p, s: None)
    assert len(pulled) <= 6   # stopped at the limit, not after reading the rest


# -- tar base backups compressed with lz4 or zstd, on disk --------------------------------------------------------
LOCAL_YAML = YAML.replace("    archive_s3_prefix: wal/\n", "    archive_dir: {root}/archive\n")
RECOMPRESS = {"lz4": (".lz4", lambda b: lz4.frame.compress(b)),
              "zst": (".zst", lambda b: zstandard.ZstdCompressor().compress(b))}


@pytest.fixture
def tar_site(wal_archives, wal_now):
    """The timeline-1 archive on disk, no base backup yet."""
    root = short_dir("bk-walz-")
    copy_archive(wal_archives.tl1, root / "archive")
    (root / "bases").mkdir()
    (root / "local.yaml").write_text(LOCAL_YAML.format(bucket="unused", root=root, state="state"))
    yield root, load_config(root / "local.yaml")
    shutil.rmtree(root, ignore_errors=True)


def _recompressed(wal_archives, dest: Path, kind: str, damage: bool = False) -> str:
    """The real base.tar of the session's -Ft backup, compressed as lz4/zstd (the bundled pg_basebackup has
    zlib only); ``damage``: one byte of a relation file inside the tar flipped first."""
    data = bytearray((wal_archives.base_tar / "base.tar").read_bytes())
    victim = None
    if damage:
        with tarfile.open(wal_archives.base_tar / "base.tar") as t:
            victim = next(m for m in t.getmembers() if m.isfile() and m.name.startswith("base/") and m.size > 8192)
        data[victim.offset_data + 100] ^= 0xFF
    dest.mkdir()
    shutil.copy(wal_archives.base_tar / "backup_manifest", dest / "backup_manifest")
    suffix, compress = RECOMPRESS[kind]
    (dest / f"base.tar{suffix}").write_bytes(compress(bytes(data)))
    return victim.name if victim else ""


@pytest.mark.parametrize("kind", ["lz4", "zst"])
def test_a_sound_lz4_or_zstd_tar_passes_the_daily_check(tar_site, wal_archives, wal_now, kind):
    root, cfg = tar_site
    name = (wal_now - timedelta(hours=1)).strftime("base_%Y%m%d_%H%M%S")
    _recompressed(wal_archives, root / "bases" / name, kind)
    results = daily.check_integrity(cfg, NAME, now=wal_now)
    assert _bad(results) == [], _bad(results)
    assert "1 base backup(s)" in _one(results, "wal_archive")["detail"]
    assert _verdict(cfg, name) == "passed"
    assert not list((local_scratch_root(cfg) / "wal-verify").iterdir())   # the inflated tar is gone


def test_a_damaged_zstd_tar_is_named(tar_site, wal_archives, wal_now):
    root, cfg = tar_site
    name = (wal_now - timedelta(hours=1)).strftime("base_%Y%m%d_%H%M%S")
    victim = _recompressed(wal_archives, root / "bases" / name, "zst", damage=True)
    bad = _bad(daily.check_integrity(cfg, NAME, now=wal_now))
    assert any(victim in r["detail"] and "checksum mismatch" in r["detail"] and name in r["detail"] for r in bad), bad
    assert _verdict(cfg, name) == "failed"
