"""Bounded work on hostile archives (docs/archive-rules.md, "Reading"): limits apply while
the stream is read, header sizes are capped, damaged sparse maps and every other damage
are verdicts naming the artifact, and memory stays flat on a gzip bomb."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
from _archive_helpers import extract, spec, write_tar

from backupkit.checks.archive import read_archive
from backupkit.checks.tarstream import ArchiveError, ArchiveLimits, TarReader
from backupkit.cli import main
from backupkit.restore.files import DamagedArchive, LimitExceeded
from backupkit.verify import verify_artifact

REPO = Path(__file__).resolve().parents[1]
ZEROS_MEMBER = 64 << 20  # one gzip member of zeros; the bomb repeats it


def problems(path: Path) -> list[tuple[str, str]]:
    return [(p.check, p.detail) for p in verify_artifact(path, use_sidecar=False).problems()]


def small_tar(*members: tuple) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, target, data, mode in members or (spec("opt/app/config.yml", data=b"db: trixtech\n"),):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.size = tarfile.REGTYPE, target, mode, len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def end_marker_offset(tar: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.getmembers()
        return tf.offset


END = end_marker_offset(small_tar())


@pytest.fixture(scope="module")
def gzip_bomb(tmp_path_factory) -> Path:
    """A valid tar.gz followed by 6 GiB of zeros (96 more gzip members): about 6 MB on disk."""
    path = tmp_path_factory.mktemp("bomb") / "files_20250303_020000.tar.gz"
    zeros = gzip.compress(bytes(ZEROS_MEMBER), compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        f.write(gzip.compress(small_tar(), mtime=0))
        for _ in range((6 << 30) // ZEROS_MEMBER):
            f.write(zeros)
    return path


def huge_header(path: Path, kind: bytes, size: int) -> Path:
    """A tar.gz whose first header is a ``kind`` extended header of ``size`` bytes (one PAX
    record, or a long name), then a small file: streamed, never held in memory."""
    info = tarfile.TarInfo("././@PaxHeader" if kind == tarfile.XHDTYPE else "././@LongLink")
    info.type, info.size = kind, size
    record_head = f"{size} comment=".encode() if kind == tarfile.XHDTYPE else b""
    with gzip.open(path, "wb", compresslevel=1) as gz:
        gz.write(info.tobuf(tarfile.GNU_FORMAT))
        gz.write(record_head)
        left = size - len(record_head) - 1
        chunk = b"x" * (1 << 20)
        while left > 0:
            gz.write(chunk[:left])
            left -= min(left, len(chunk))
        gz.write(b"\n" + bytes(-size % 512))
        gz.write(small_tar())
    return path


# -- gzip bombs and big headers --------------------------------------------------------------
def test_zeros_after_a_valid_tar_are_cut_off_at_the_trailing_limit(gzip_bomb):
    assert problems(gzip_bomb) == [("tar_limits", "more than 1048576 bytes of padding after the end-of-archive "
                                                  f"marker at offset {END}; stopped reading")]
    with open(gzip_bomb, "rb") as f:  # stopped while reading: a few MiB decompressed, not 6 GiB
        reader = TarReader(f, gzipped=True)
        assert [m.name for m in reader] == ["opt/app/config.yml"]
        with pytest.raises(ArchiveError, match="padding"):
            reader.finish()
        assert reader.bytes_read <= (1 << 20) + 2048


def test_the_restore_refuses_the_bomb_before_writing(gzip_bomb, tmp_path):
    with pytest.raises(LimitExceeded, match=f"{gzip_bomb.name}: refused, nothing extracted: more than 1048576"):
        extract(gzip_bomb, tmp_path / "t")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("kind,what", [(tarfile.XHDTYPE, "PAX extended"), (tarfile.GNUTYPE_LONGNAME, "GNU long-name"),
                                       (tarfile.GNUTYPE_LONGLINK, "GNU long-link")])
def test_a_256_mib_header_is_refused_from_its_size_field(kind, what, tmp_path):
    path = huge_header(tmp_path / "big-header.tar.gz", kind, 256 << 20)
    assert problems(path) == [("tar_limits", f"{what} header at offset 0 at the start holds 268435456 bytes, more "
                                             "than the limit of 1048576 (header sizes are capped)")]


def test_headers_under_the_cap_are_read(tmp_path):
    """The cap is on size only: a 900 KiB PAX comment (git archive writes small ones) passes."""
    path = huge_header(tmp_path / "ok-header.tar.gz", tarfile.XHDTYPE, 900 << 10)
    assert problems(path) == []


def test_peak_memory_stays_flat_on_bombs_and_big_headers(gzip_bomb, tmp_path):
    """Peak RSS of one ``backupctl verify --json`` over the 6 GiB bomb and a 256 MiB PAX header
    (tarfile holds the header whole: ~850 MB). Generous bound; figures in the README."""
    pax = huge_header(tmp_path / "pax.tar.gz", tarfile.XHDTYPE, 256 << 20)
    # VmHWM is this process image's own peak; ru_maxrss would include the forked copy of pytest.
    script = ("import json, sys; from backupkit.cli import main; code = main(['verify', '--json', *sys.argv[1:]]);"
              "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1];"
              "print(json.dumps({'code': code, 'rss_kib': int(hwm)}), file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    proc = subprocess.run([sys.executable, "-c", script, str(gzip_bomb), str(pax)], capture_output=True, text=True,
                          env=env, timeout=300)
    stats = json.loads(proc.stderr.strip().splitlines()[-1])
    reports = json.loads(proc.stdout)
    assert stats["code"] == 1 and [r["ok"] for r in reports] == [False, False]
    assert stats["rss_kib"] < 120 * 1024, stats


# -- limits enforced while reading -------------------------------------------------------------
def test_a_declared_size_beyond_the_limit_is_refused_from_the_header(tmp_path):
    info = tarfile.TarInfo("huge.bin")
    info.size = 1 << 80  # GNU base-256: tarfile would seek through it
    path = tmp_path / "huge.tar"
    path.write_bytes(info.tobuf(tarfile.GNU_FORMAT) + bytes(1024))
    assert problems(path) == [("tar_limits", "member 'huge.bin' declares 1208925819614629174706176 bytes, beyond the "
                                             "limit of 68719476736 decompressed bytes")]


def test_the_decompressed_limit_holds_for_headers_alone(tmp_path):
    """Thousands of empty members: no member is large, the stream is."""
    path = write_tar(tmp_path / "many.tar.gz", [spec(f"e{i}", data=b"") for i in range(5000)], gz=True)
    with open(path, "rb") as f:
        scan = read_archive(f, "many.tar.gz", gzipped=True, limits=ArchiveLimits(max_decompressed_bytes=1 << 20))
    assert [(r.check, r.detail) for r in scan.results if not r.ok] == [
        ("tar_limits", "more than 1048576 bytes after decompression; stopped reading "
                       "(raise the limit only for an archive known to be this large)")]
    with open(path, "rb") as f:
        scan = read_archive(f, "many.tar.gz", gzipped=True, limits=ArchiveLimits(max_members=100))
    assert [r.detail for r in scan.results if not r.ok] == ["more than 100 members; stopped reading"]


def test_data_after_the_end_marker_is_refused(tmp_path):
    path = tmp_path / "two.tar"
    path.write_bytes(small_tar() + small_tar(spec("hidden.txt")))
    [(check, detail)] = problems(path)
    assert check == "tar_read" and detail.startswith(f"data after the end-of-archive marker at offset {END}")
    with pytest.raises(DamagedArchive, match="data after the end-of-archive marker"):
        extract(path, tmp_path / "t")


# -- sparse files: real GNU tar output, then damaged -------------------------------------------
SPARSE_FORMATS = {"gnu": ["--format=gnu"], "pax-0.0": ["--format=posix", "--sparse-version=0.0"],
                  "pax-0.1": ["--format=posix", "--sparse-version=0.1"],
                  "pax-1.0": ["--format=posix", "--sparse-version=1.0"]}


@pytest.fixture(scope="module")
def sparse_file(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("sparse-src")
    path = src / "db.img"
    with open(path, "wb") as f:
        f.truncate(3 << 20)
        for off, data in ((1 << 20, b"data block"), ((2 << 20) + 100, b"tail")):
            f.seek(off)
            f.write(data)
    return path


def gnu_sparse_tar(sparse_file: Path, out: Path, fmt: str) -> Path:
    subprocess.run(["tar", "--sparse", *SPARSE_FORMATS[fmt], "-cf", str(out), "-C", str(sparse_file.parent),
                    sparse_file.name], check=True)
    return out


@pytest.mark.parametrize("fmt", list(SPARSE_FORMATS))
def test_sparse_members_of_every_gnu_format_verify_and_restore(fmt, sparse_file, tmp_path):
    archive = gnu_sparse_tar(sparse_file, tmp_path / f"{fmt}.tar", fmt)
    assert problems(archive) == []
    result = extract(archive, tmp_path / "t")
    restored = tmp_path / "t" / sparse_file.name
    assert result.written == [sparse_file.name]
    assert hashlib.sha256(restored.read_bytes()).hexdigest() == hashlib.sha256(sparse_file.read_bytes()).hexdigest()


def _fix_checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def _damage_old_gnu(data: bytearray) -> None:
    """Swap the first two extents of the header's map: out of order."""
    first, second = data[386:410], data[410:434]
    data[386:410], data[410:434] = second, first
    head = bytearray(data[:512])
    _fix_checksum(head)
    data[:512] = head


def _replace_once(data: bytearray, old: bytes, new: bytes) -> None:
    assert len(old) == len(new) and data.count(old) >= 1
    i = data.index(old)
    data[i:i + len(old)] = new


SPARSE_DAMAGE = {
    "gnu": (_damage_old_gnu, "overlaps or lies beyond"),
    "pax-0.0": (lambda d: _replace_once(d, b"GNU.sparse.numbytes=4096", b"GNU.sparse.numbytes=9096"),
                "extents hold"),
    "pax-0.1": (lambda d: _replace_once(d, b"GNU.sparse.map=1048576", b"GNU.sparse.map=10485x6"), "not a number"),
    "pax-1.0": (lambda d: _replace_once(d, b"\n1048576\n", b"\n10485x6\n"), "not a number"),
}


@pytest.mark.parametrize("fmt", list(SPARSE_DAMAGE))
def test_damaged_sparse_maps_are_verdicts_not_tracebacks(fmt, sparse_file, tmp_path):
    archive = gnu_sparse_tar(sparse_file, tmp_path / f"{fmt}.tar", fmt)
    data = bytearray(archive.read_bytes())
    damage, words = SPARSE_DAMAGE[fmt]
    damage(data)
    archive.write_bytes(data)
    [(check, detail)] = problems(archive)
    assert check == "tar_read" and "sparse" in detail and words in detail and sparse_file.name in detail
    with pytest.raises(DamagedArchive, match=f"{archive.name}: damaged archive, nothing extracted: .*sparse"):
        extract(archive, tmp_path / "t")


def test_verify_json_prints_every_verdict_whatever_the_damage(gzip_bomb, sparse_file, tmp_path, capsys):
    """One damaged sparse header used to raise out of ``verify`` and lose every other verdict."""
    sparse = gnu_sparse_tar(sparse_file, tmp_path / "sparse.tar", "pax-1.0")
    data = bytearray(sparse.read_bytes())
    SPARSE_DAMAGE["pax-1.0"][0](data)
    sparse.write_bytes(data)
    good = write_tar(tmp_path / "good.tar.gz", [spec("a.txt")], gz=True)
    rubbish = tmp_path / "rubbish.tar.gz"
    rubbish.write_bytes(gzip.compress(zlib.compress(b"not a tar") * 100))
    assert main(["verify", "--json", str(sparse), str(gzip_bomb), str(rubbish), str(good)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [(r["path"], r["ok"]) for r in out] == [(str(sparse), False), (str(gzip_bomb), False),
                                                  (str(rubbish), False), (str(good), True)]
    assert all(r["problems"] for r in out[:3])
