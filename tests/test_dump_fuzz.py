"""Hostile input: seeded mutations of real dumps never produce a traceback or a hang.

Each mutant goes through ``verify_artifact`` (the whole dispatch: detection, readers,
sidecar) on a thread with a deadline; an internal error would surface as the ``verify``
check ("verification failed: <exception>"), which no mutant may produce. Bounded: a fixed
number of mutants per seed and a time budget per file.
"""

from __future__ import annotations

import gzip
import random
import threading
import time

import pytest

from backupkit.verify import verify_artifact

MUTANTS_PER_FORMAT = 150
DEADLINE_S = 20.0


def _mutate(data: bytes, rng: random.Random) -> bytes:
    op = rng.choice(["flip", "flips", "truncate", "insert", "delete", "duplicate", "zeros", "ff", "int"])
    n = len(data)
    a = rng.randrange(n)
    b = min(n, a + rng.choice([1, 4, 16, 512, 4096, 65536]))
    if op == "flip":
        return data[:a] + bytes([data[a] ^ (1 << rng.randrange(8))]) + data[a + 1:]
    if op == "flips":
        out = bytearray(data)
        for _ in range(rng.randrange(2, 50)):
            i = rng.randrange(n)
            out[i] = rng.randrange(256)
        return bytes(out)
    if op == "truncate":
        return data[:a]
    if op == "insert":
        return data[:a] + rng.randbytes(b - a) + data[a:]
    if op == "delete":
        return data[:a] + data[b:]
    if op == "duplicate":
        return data[:b] + data[a:b] + data[b:]
    if op == "zeros":
        return data[:a] + bytes(b - a) + data[b:]
    if op == "ff":
        return data[:a] + b"\xff" * (b - a) + data[b:]
    # a huge or negative integer where a length may be: sign byte + 4 bytes
    return data[:a] + rng.choice([b"\x00\xff\xff\xff\x7f", b"\x01\x05\x00\x00\x00", b"\x00\x00\x00\x00\x00"]) + data[a + 5:]


def _verify_with_deadline(path):
    box: dict = {}

    def run() -> None:
        try:
            box["report"] = verify_artifact(path, use_sidecar=False)
        except BaseException as exc:  # noqa: BLE001 - the point of the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    t.start()
    t.join(DEADLINE_S)
    assert not t.is_alive(), f"{path.name}: no verdict after {DEADLINE_S}s (hang)"
    assert "error" not in box, f"{path.name}: {box['error']!r}"
    return box["report"], time.monotonic() - started


@pytest.mark.parametrize("fmt", ["custom", "custom_z0", "plain", "plain_gz", "tar"])
def test_mutated_dumps_always_get_a_verdict(pg, dumps, tmp_path, fmt):
    if fmt == "custom_z0":
        from sandbox.bookingdb import pg_dump

        source = pg_dump(pg, "trixtech", tmp_path / "z0.dump", "custom", compress=0)
    else:
        source = dumps[fmt]
    data = source.read_bytes()
    rng = random.Random(f"fuzz-{fmt}")
    suffix = "".join(source.suffixes)
    passed = 0
    for i in range(MUTANTS_PER_FORMAT):
        mutant = _mutate(data, rng)
        path = tmp_path / f"m{i}{suffix}"
        path.write_bytes(mutant)
        report, _ = _verify_with_deadline(path)
        checks = {p.check for p in report.problems()}
        assert "verify" not in checks, (i, [(p.check, p.detail) for p in report.problems()])
        assert report.sha256 is not None  # every byte was still hashed
        passed += report.ok
        path.unlink()
    assert passed < MUTANTS_PER_FORMAT // 2  # most damage is caught (identical mutants aside)


def test_random_bytes_behind_every_magic_get_a_verdict(tmp_path):
    rng = random.Random("magics")
    magics = [b"PGDMP", b"PGDMP\x01\x10\x00\x04\x08\x01\x03", b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18",
              b"--\n-- PostgreSQL database dump\n--\n", b"BZh", gzip.compress(b"--\n-- PostgreSQL database dump\n--\n")]
    for i in range(200):
        path = tmp_path / f"r{i}.dump"
        path.write_bytes(rng.choice(magics) + rng.randbytes(rng.randrange(0, 5000)))
        report, _ = _verify_with_deadline(path)
        assert not report.ok and "verify" not in {p.check for p in report.problems()}, \
            [(p.check, p.detail) for p in report.problems()]
