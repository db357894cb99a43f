"""``backupctl wal verify``: exit codes, lines, the --json shape, base backups checked with
pg_verifybackup, and archives under an S3 prefix on the loopback S3 endpoint."""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta

import pytest

from _wal_archive import copy_archive
from backupkit import clock
from backupkit.cli import main
from backupkit.storage.objectstore import Bucket
from backupkit.wal.s3 import S3Archive
from backupkit.wal.verify import KINDS, verify_archive
from sandbox.s3server import SANDBOX_KEY, SANDBOX_SECRET
from test_wal_archive import labels, middle, segments

PREFIX = "wal/trixtech/"


def run_json(capsys, *args):
    code = main(["wal", "verify", *map(str, args), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_sound_archive_exits_0_and_prints_the_window(wal_archives, capsys):
    assert main(["wal", "verify", str(wal_archives.tl2)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{wal_archives.tl2}: ok (1 MB segments, 2 timeline(s))"
    assert out[1].startswith(f"{wal_archives.tl2}: timeline 2: 4 segments")
    assert "window 0/" in out[1] and "timeline 2)" in out[1]


def test_json_shape(wal_archives, tmp_path, capsys):
    arch = copy_archive(wal_archives.tl2, tmp_path / "a")
    after_backup = segments(arch).index(labels(arch)[0][2][:24]) + 1
    victim = segments(arch)[after_backup]   # before timeline 2 branches off
    (arch / victim).unlink()
    code, doc = run_json(capsys, arch)
    assert code == 1
    assert set(doc) == {"ok", "problems", "timelines", "window"} and doc["ok"] is False
    assert doc["problems"] == [{"kind": "gap", "segment": victim, "timeline": 1, "detail": doc["problems"][0]["detail"]}]
    assert set(doc["window"]) == {"from", "to"}
    assert set(doc["window"]["from"]) == {"lsn", "time", "timeline"}
    assert [t["timeline"] for t in doc["timelines"]] == [1, 2]
    # The gap is before timeline 2 branched off: recovery to it stops at the gap too.
    assert doc["window"]["to"]["timeline"] == 1


def test_every_problem_line_names_kind_segment_and_timeline(wal_archives, tmp_path, capsys, now):
    arch = copy_archive(wal_archives.tl2, tmp_path / "a")
    (arch / "00000002.history").unlink()
    old = (now - timedelta(days=2)).timestamp()
    for f in arch.iterdir():
        os.utime(f, (old, old))
    with clock.frozen(now):
        assert main(["wal", "verify", str(arch), "--max-age", "1d"]) == 1
    lines = capsys.readouterr().out.splitlines()
    [missing] = [ln for ln in lines if ": missing_history: " in ln]
    [stale] = [ln for ln in lines if ": stale: " in ln]
    assert missing.startswith(f"{arch}: missing_history: {segments(arch, 2)[0]} (timeline 2): timeline 2 has segments")
    newest = max(segments(arch, 1)[-1], segments(arch, 2)[-1], key=lambda n: n[8:])   # all archived at once
    assert stale.startswith(f"{arch}: stale: {newest} (timeline {int(newest[:8])}): the newest segment")
    assert "2 d 0 h ago" in stale and "the limit is 24 h" in stale


def test_base_backups_are_checked_with_pg_verifybackup(wal_archives, tmp_path, capsys):
    code, doc = run_json(capsys, wal_archives.tl1, "--base-backup", wal_archives.base_plain,
                         "--base-backup", wal_archives.base_tar)
    assert code == 0, doc["problems"]
    damaged = tmp_path / "plain"
    shutil.copytree(wal_archives.base_plain, damaged)
    with open(damaged / "PG_VERSION", "w") as f:
        f.write("17\n")
    code, doc = run_json(capsys, wal_archives.tl1, "--base-backup", damaged)
    assert code == 1
    [problem] = doc["problems"]
    assert problem["kind"] == "corrupt" and str(damaged) in problem["detail"]
    assert "pg_verifybackup" in problem["detail"] and "PG_VERSION" in problem["detail"]


def test_usage_errors_exit_2(wal_archives, tmp_path, capsys):
    assert main(["wal", "verify", str(tmp_path / "missing")]) == 2
    assert main(["wal", "verify", str(wal_archives.tl1), "--max-age", "10m"]) == 2
    assert main(["wal", "verify", str(wal_archives.tl1), "--base-backup", str(tmp_path / "nope")]) == 2
    assert main(["wal", "verify", str(wal_archives.tl1), "--jobs", "0"]) == 2
    assert main(["wal", "verify", "s3://"]) == 2
    assert main(["wal"]) == 2
    err = capsys.readouterr().err
    assert "not a directory" in err and "minutes are 'min'" in err


# -- S3 ------------------------------------------------------------------------------------
def upload(s3, bucket, src, prefix=PREFIX):
    for f in sorted(src.iterdir()):
        s3.put_object(Bucket=bucket, Key=prefix + f.name, Body=f.read_bytes())


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SANDBOX_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SANDBOX_SECRET)


def test_an_s3_prefix_is_verified_like_a_directory(wal_archives, s3, bucket, s3_env, capsys):
    upload(s3, bucket, wal_archives.tl2)
    s3.put_object(Bucket=bucket, Key=PREFIX + "deeper/000000010000000000000001", Body=b"not part of the archive")
    code, doc = run_json(capsys, f"s3://{bucket}/{PREFIX}")
    local = verify_archive(*_local(wal_archives.tl2)).to_dict()
    assert code == 0, doc["problems"]
    assert doc["window"] == local["window"] and doc["timelines"] == local["timelines"]


def _local(path):
    from backupkit.wal.archive import LocalArchive

    reader = LocalArchive(path)
    return list(reader.entries()), reader


def test_damage_in_s3(wal_archives, s3, bucket, s3_env, capsys, tmp_path):
    arch = copy_archive(wal_archives.tl2, tmp_path / "a")
    checked_from = labels(arch)[0][2][:24]
    gone, cut = middle(arch, checked_from), segments(arch)[-2]
    (arch / gone).unlink()
    with open(arch / cut, "r+b") as f:
        f.truncate(1000)
    for f in wal_archives.fork_b.iterdir():   # the second promotion archived into the same prefix
        if not (arch / f.name).exists():
            shutil.copy2(f, arch / f.name)
    (arch / "00000002.history").unlink()
    upload(s3, bucket, arch)
    code, doc = run_json(capsys, f"s3://{bucket}/{PREFIX}")
    assert code == 1
    found = {(p["kind"], p["segment"]) for p in doc["problems"]}
    assert {("gap", gone), ("truncated", cut), ("missing_history", segments(arch, 2)[0])} <= found
    assert {p["kind"] for p in doc["problems"]} <= set(KINDS)


def test_stale_in_s3_from_the_clock(wal_archives, s3, bucket, s3_env, capsys):
    upload(s3, bucket, wal_archives.tl1)
    uploaded = max(o["LastModified"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX)["Contents"])
    reader = S3Archive(Bucket(s3, bucket), PREFIX)
    entries = list(reader.entries())
    late = verify_archive(entries, reader, max_age=timedelta(hours=1), now=uploaded + timedelta(hours=2))
    assert [p.kind for p in late.problems] == ["stale"]
    assert verify_archive(entries, reader, max_age=timedelta(hours=1), now=uploaded + timedelta(minutes=10)).ok


def test_an_unreachable_endpoint_is_a_usage_error(monkeypatch, capsys):
    from backupkit.pgserver import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SANDBOX_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SANDBOX_SECRET)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert main(["wal", "verify", "s3://trixtech-backups/wal/"]) == 2
    assert "cannot list" in capsys.readouterr().err


def test_compressed_segments_in_s3(wal_archives, s3, bucket, s3_env, capsys, tmp_path):
    import gzip

    import zstandard

    arch = copy_archive(wal_archives.tl1, tmp_path / "a")
    for i, name in enumerate(segments(arch)):
        data = (arch / name).read_bytes()
        (arch / name).unlink()
        packed = gzip.compress(data, 1) if i % 2 else zstandard.ZstdCompressor(level=1).compress(data)
        (arch / (name + (".gz" if i % 2 else ".zst"))).write_bytes(packed)
    upload(s3, bucket, arch)
    code, doc = run_json(capsys, f"s3://{bucket}/{PREFIX}")
    assert code == 0, doc["problems"]
    assert doc["window"] == verify_archive(*_local(wal_archives.tl1)).to_dict()["window"]
