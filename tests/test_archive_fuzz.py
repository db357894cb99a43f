"""Seeded mutations of real archives (the sandbox's archive writer, GNU tar in its formats):
no traceback, no hang, nothing written outside the target, and the verdict of ``verify``
equals the verdict of the restore's pre-check for every input."""

from __future__ import annotations

import gzip
import os
import random
import signal
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from _archive_helpers import links_outside, snapshot, spec, verdicts, write_tar

from backupkit.checks.detect import HEAD, detect_head

from sandbox.history import write_archive

BLOCK = 512
CASES_PER_SEED = 200
SECONDS_PER_CASE = 20  # far above what one case takes; a hang fails the test instead of the run


def _tree(root: Path) -> Path:
    (root / "opt/trixtech/config").mkdir(parents=True)
    (root / "opt/trixtech/releases/v2").mkdir(parents=True)
    (root / "opt/trixtech/config/app.yml").write_text("db: trixtech\n")
    (root / "opt/trixtech/releases/v2/" / ("long-name-" * 9 + ".txt")).write_text("long\n")
    (root / "opt/trixtech/releases/v2/naïve-ünïcode.txt").write_text("u\n")
    (root / "opt/trixtech/current").symlink_to("releases/v2")
    os.link(root / "opt/trixtech/config/app.yml", root / "opt/trixtech/config/app.hard")
    with open(root / "opt/trixtech/db.img", "wb") as f:
        f.truncate(1 << 20)
        f.seek(300_000)
        f.write(b"sparse data")
    return root


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    """Real archives, uncompressed (each is also fuzzed gzip-compressed)."""
    d = tmp_path_factory.mktemp("seeds")
    src = _tree(d / "src")
    out = {}
    for fmt in ("gnu", "posix", "ustar"):
        path = d / f"{fmt}.tar"
        sparse = ["--sparse"] if fmt != "ustar" else []
        subprocess.run(["tar", f"--format={fmt}", *sparse, "-cf", str(path), "-C", str(src), "."], check=True)
        out[f"gnu-tar-{fmt}"] = path.read_bytes()
    when = datetime(2025, 3, 3, 2, 0, tzinfo=timezone.utc)
    sandbox = write_archive(d / "files.tar.gz", [("opt/trixtech/config/app.yml", b"db: trixtech\n", when),
                                                  ("opt/trixtech/uploads/2025/a.png", os.urandom(5000), when)], when)
    out["sandbox"] = gzip.decompress(sandbox.read_bytes())
    links = write_tar(d / "links.tar", [spec("a/b/", "dir"), spec("a/b/up", "symlink", "../.."), spec("a/f"),
                                        spec("via", "symlink", "a/b/up/a/f"), spec("h", "hardlink", "a/f")])
    out["tarfile-links"] = links.read_bytes()
    return out


def _headers(tar: bytes) -> list[int]:
    """Offsets of blocks that carry a valid header checksum (where mutations matter most)."""
    out = []
    for off in range(0, len(tar) - BLOCK + 1, BLOCK):
        b = tar[off:off + BLOCK]
        if any(b) and b[148:156].strip(b"\0 ").isdigit():
            s = sum(b) - sum(b[148:156]) + 256
            if int(b[148:156].strip(b"\0 ") or b"0", 8) == s:
                out.append(off)
    return out


def _fix_checksum(data: bytearray, off: int) -> None:
    block = data[off:off + BLOCK]
    block[148:156] = b" " * 8
    data[off + 148:off + 156] = b"%06o\0 " % sum(block)


def mutate(tar: bytes, rng: random.Random) -> bytes:
    """One hostile variant of ``tar``: header fields rewritten (checksum fixed so the parser
    goes on), bytes flipped, cut, duplicated or appended; gzip-compressed half of the time,
    and sometimes damaged after compression."""
    data = bytearray(tar)
    headers = _headers(tar) or [0]
    for _ in range(rng.randint(1, 3)):
        how = rng.random()
        if how < 0.45:  # a header field: name, size, type, link, magic, prefix, sparse area
            off = rng.choice(headers)
            start = off + rng.choice([0, 100, 124, 136, 156, 157, 257, 345, 386, 482, 483, 504])
            n = rng.randint(1, 16)
            data[start:start + n] = bytes(rng.choice(b"0123456789/.x\0 \xff\x80Lx") for _ in range(n))
            _fix_checksum(data, off)
        elif how < 0.6:
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
        elif how < 0.75:
            del data[rng.randrange(len(data)):]
        elif how < 0.9:
            i, j = sorted(rng.randrange(len(data)) for _ in range(2))
            data[i:i] = data[i:j][:64 << 10]
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 600)))
    if rng.random() < 0.5:
        data = bytearray(gzip.compress(bytes(data), compresslevel=1, mtime=0))
        if rng.random() < 0.3:
            data[rng.randrange(len(data))] ^= 0xFF
    return bytes(data)


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"no verdict within {SECONDS_PER_CASE} s")


@pytest.mark.parametrize("seed_name", ["gnu-tar-gnu", "gnu-tar-posix", "gnu-tar-ustar", "sandbox", "tarfile-links"])
def test_mutated_archives_get_a_verdict_and_the_same_one_twice(seed_name, seeds, tmp_path):
    rng = random.Random(f"archive-fuzz-{seed_name}")
    previous = signal.signal(signal.SIGALRM, _alarm)
    refused = 0
    try:
        for case in range(CASES_PER_SEED):
            data = mutate(seeds[seed_name], rng)
            work = tmp_path / f"case{case}"
            work.mkdir()
            archive = work / "files.tar.gz"
            archive.write_bytes(data)
            (work / "outside").mkdir()
            before = snapshot(work)
            signal.alarm(SECONDS_PER_CASE)
            try:
                verify_ok, precheck_ok, outcome = verdicts(archive, work / "root")
            finally:
                signal.alarm(0)
            kind, _ = detect_head(data[:HEAD])
            if kind in ("tar", "tar_gzip", "unknown", "empty"):
                assert verify_ok == precheck_ok, (case, kind, outcome)
            refused += not precheck_ok
            after = {k: v for k, v in snapshot(work).items() if k != "root" and not k.startswith("root/")}
            assert after == before, case
            if (work / "root").exists():
                assert links_outside(work / "root") == [], case
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert refused > 0  # the mutations do damage
