"""Hostile WAL: seeded mutations of real segments, judged against pg_waldump (the oracle), and
junk under WAL names. No input may raise, hang, or pass where pg_waldump fails."""

from __future__ import annotations

import os
import random
import time

from _wal_archive import copy_archive, error_lsn, waldump
from backupkit.wal.archive import LocalArchive
from backupkit.wal.verify import KINDS, verify_archive
from test_wal_archive import labels, segments

MB, PAGE = 1 << 20, 8192
SEED = 20251201
BUDGET_S = 12
# What this verifier checks and pg_waldump does not (docs/wal.md, "Stricter than pg_waldump").
STRICTER = ("from a different database system: system identifier",)


def _mutate(rng: random.Random, data: bytearray, donor: bytes) -> str:
    """One in-place mutation of a segment (its size never changes); returns what was done."""
    pages = len(data) // PAGE
    page = rng.randrange(pages)
    op = rng.randrange(7)
    if op == 0:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return "bit flips"
    if op == 1:
        i = page * PAGE + rng.randrange(40)
        data[i] = rng.randrange(256)
        return f"page {page} header byte {i % PAGE}"
    if op == 2:
        i, n = rng.randrange(len(data) - 64), rng.randint(8, 64)
        data[i:i + n] = os.urandom(n)
        return f"{n} random bytes at {i}"
    if op == 3:
        data[page * PAGE:(page + 1) * PAGE] = bytes(PAGE)
        return f"page {page} zeroed"
    if op == 4:
        other = rng.randrange(len(donor) // PAGE)
        data[page * PAGE:(page + 1) * PAGE] = donor[other * PAGE:(other + 1) * PAGE]
        return f"page {page} replaced by page {other} of another segment"
    if op == 5:
        data[page * PAGE + 16:page * PAGE + 20] = rng.randrange(1 << 32).to_bytes(4, "little")
        return f"page {page} xlp_rem_len"
    nxt = (page + 1) % pages
    a, b = bytes(data[page * PAGE:(page + 1) * PAGE]), bytes(data[nxt * PAGE:(nxt + 1) * PAGE])
    data[page * PAGE:(page + 1) * PAGE], data[nxt * PAGE:(nxt + 1) * PAGE] = b, a
    return f"pages {page} and {nxt} swapped"


def test_seeded_mutations_agree_with_pg_waldump(wal_archives, tmp_path):
    src = wal_archives.tl1
    starts = {name[:24] for *_, name in labels(src)}
    names = segments(src)
    first, victim, last = next(names[i - 1:i + 2] for i in range(len(names) // 2, len(names) - 1)
                               if names[i] not in starts and int(names[i + 1][16:], 16) - int(names[i - 1][16:], 16) == 2)
    arch = copy_archive(src, tmp_path / "a", only=(first, victim, last))
    original, donor = (arch / victim).read_bytes(), (arch / first).read_bytes()
    reader = LocalArchive(arch)
    rng = random.Random(SEED)
    deadline = time.monotonic() + BUDGET_S
    cases, caught, disagreements = 0, 0, []
    while cases < 150 and time.monotonic() < deadline:
        data = bytearray(original)
        what = _mutate(rng, data, donor)
        (arch / victim).write_bytes(data)
        started = time.monotonic()
        report = verify_archive(list(reader.entries()), reader)
        assert time.monotonic() - started < 5, f"{what}: took too long"
        assert all(p.kind in KINDS for p in report.problems)
        ours = {p.segment for p in report.problems}
        oracle = waldump(arch, first, last)
        if oracle.returncode != 0:
            caught += 1
            if "could not find a valid record after" in oracle.stderr:
                # It failed while skipping a record that began before the first segment (the
                # LSN named is where it started looking): the failure is further on.
                if not ours:
                    disagreements.append((what, "pg_waldump fails", oracle.stderr.strip()[-200:], []))
                cases += 1
                continue
            where = error_lsn(oracle.stderr)
            theirs = f"00000001{(where // MB) // 4096:08X}{(where // MB) % 4096:08X}" if where is not None else None
            if theirs not in ours:
                disagreements.append((what, "pg_waldump fails", oracle.stderr.strip()[-200:], report.problems))
        else:
            extra = [p for p in report.problems if not any(s in p.detail for s in STRICTER)]
            if extra:
                disagreements.append((what, "only we fail", extra))
        cases += 1
    assert cases >= 40, "the time budget allowed too few cases to mean anything"
    assert caught >= cases // 3, "most mutations of WAL bytes must be caught"
    assert not disagreements, disagreements[:5]


def test_junk_under_wal_names_is_a_verdict_not_a_traceback(wal_archives, tmp_path):
    arch = copy_archive(wal_archives.tl2, tmp_path / "a")
    rng = random.Random(SEED)
    segs = segments(arch)
    junk = {
        segs[3]: os.urandom(MB),                                   # right size, no WAL at all
        segs[5]: bytes(MB),                                        # zero-filled (a preallocated file)
        segs[6]: (arch / segs[6]).read_bytes()[:PAGE] + os.urandom(MB - PAGE),
        "00000002.history": b"1\t0/ZZZ\tgarbage\n" + os.urandom(200),
        "00000003.history": b"\xff" * 5000,
        "00000004.history.gz": os.urandom(300),
        f"{segs[1]}.00000098.backup": os.urandom(400),
        f"{segs[2]}.00000099.backup": b"START WAL LOCATION: 99999999/1 (file x)\nSTOP WAL LOCATION: 0/0\n",
        f"{segs[-1][:8]}{'0' * 7}1{'0' * 7}1.zst": os.urandom(100),
    }
    for name, content in junk.items():
        (arch / name).write_bytes(content)
    for _ in range(20):   # and names that almost match
        name = "".join(rng.choice("0123456789ABCDEFabcdefxyz.") for _ in range(rng.randint(20, 34)))
        (arch / name).write_bytes(os.urandom(rng.randint(0, 3000)))
    reader = LocalArchive(arch)
    started = time.monotonic()
    report = verify_archive(list(reader.entries()), reader)
    assert time.monotonic() - started < 10
    assert not report.ok and all(p.kind in KINDS for p in report.problems)
    found = {p.segment for p in report.problems}
    assert {segs[3], segs[5], segs[6]} <= found, report.problems
    assert {p.timeline for p in report.problems if p.kind == "missing_history"} >= {2, 3, 4}
