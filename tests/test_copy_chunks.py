"""Uncompressed custom dumps: the bulk chunk walk gives the per-chunk walk's verdicts.

The dump is a real ``pg_dump -Fc -Z 0`` of rows whose lengths put a newline byte (0x0a)
into chunk headers (rows of exactly 10 bytes, of 2560-2815 bytes, every length up to
1,000), rows of 64 KiB and more, NULLs (backslashes) and an empty table. The same files are
read with bulk proving switched off (every chunk walked one by one, as before it existed):
the scans must agree on every field, for the dump, for the same data cut into other
chunks (pg_restore is the oracle that those are valid), and for seeded mutations.
"""

from __future__ import annotations

import gc
import hashlib
import io
import random
import threading
import time
from pathlib import Path

import pytest

from _pgcustom_helpers import _chunks, _int, _read_int, data_positions, pg_restore_ok, recompress
from backupkit.checks import copytext
from backupkit.checks.pgcustom import scan_custom
from backupkit.checks.stream import Tap
from sandbox.bookingdb import pg_dump

DB = "copychunks"
ROWS = {"public.short10": 900, "public.mid": 300, "public.big": 3, "public.mixed": 2000, "public.empty": 0}


@pytest.fixture(scope="module")
def z0_dump(pg, tmp_path_factory) -> Path:
    pg.create_database(DB)
    pg.psql("CREATE TABLE short10 (a int, b int);"  # '100\t10000\n': 10 bytes, header 00 0a 00 00 00
            "INSERT INTO short10 SELECT 99 + g, 10000 + g FROM generate_series(1, 900) g;"
            "CREATE TABLE mid (id int, body text);"  # 2560-2815 bytes: the length's second byte is 0x0a
            "INSERT INTO mid SELECT g, repeat('m', 2550 + g % 250) FROM generate_series(1, 300) g;"
            "CREATE TABLE big (id int, body text);"  # chunks of 64 KiB and more: walked one by one
            "INSERT INTO big SELECT g, repeat('b', 70000 * g) FROM generate_series(1, 3) g;"
            "CREATE TABLE mixed (id int, body text, note text);"
            "INSERT INTO mixed SELECT g, repeat('x', g % 1000), CASE WHEN g % 3 = 0 THEN NULL "
            "ELSE E'tab\\there\\\\' END FROM generate_series(1, 2000) g;"
            "CREATE TABLE empty (a int);", database=DB)
    return pg_dump(pg, DB, tmp_path_factory.mktemp("copychunks") / "z0.dump", "custom", compress=0)


def _scan(path_or_bytes) -> dict:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    tap = Tap(io.BytesIO(data))
    s = scan_custom(tap, workers=1)
    tap.drain()
    seen = {"problems": s.problems, "blocks": s.blocks, "end": s.end_offset, "trailing": s.trailing_bytes,
            "sha": tap.hexdigest()}
    if not s.problems:  # what a failed block counted before its problem is not used (nor comparable)
        seen.update(rows=s.copy_rows, decoded=s.decoded_bytes)
    return seen


def _both(path_or_bytes, monkeypatch) -> tuple[dict, dict]:
    bulk = _scan(path_or_bytes)
    with monkeypatch.context() as m:
        m.setattr(copytext, "MAX_BULK_CHUNK", 0)
        slow = _scan(path_or_bytes)
    return bulk, slow


def test_the_dump_has_the_chunk_shapes_the_walk_must_prove(z0_dump):
    """The fixture is what the docstring says (else the other tests prove less)."""
    data = z0_dump.read_bytes()
    lengths = []
    for start in data_positions(z0_dump).values():
        pos = start + 6
        while (n := _read_int(data, pos)[0]) != 0:
            lengths.append(n)
            pos += 5 + n
    assert 10 in lengths and any(2560 <= n < 2816 for n in lengths) and max(lengths) >= 1 << 16
    assert any((n & 0xFF) == 0x0A for n in lengths if n > 255)


def test_bulk_and_per_chunk_walks_agree_on_a_real_dump(z0_dump, monkeypatch):
    bulk, slow = _both(z0_dump, monkeypatch)
    assert bulk == slow
    assert bulk["problems"] == [] and bulk["rows"] == ROWS


def _rechunk(z0: Path, cut) -> bytes:
    """The dump with every data stream's payload cut anew by ``cut(payload) -> sizes``; offsets fixed."""
    data = z0.read_bytes()
    positions = data_positions(z0)
    start = min(positions.values())
    head, body, pos, moved = bytearray(data[:start]), bytearray(), start, {}
    while pos < len(data):
        kind, dump_id = data[pos], _read_int(data, pos + 1)[0]
        moved[dump_id] = start + len(body)
        body += data[pos:pos + 6]
        pos += 6
        if kind == 1:
            raw, pos = _chunks(data, pos)
            body += _cut(raw, cut)
            continue
        while True:  # large objects: (oid, stream) pairs up to a zero oid
            oid, nxt = _read_int(data, pos)
            body += data[pos:nxt]
            pos = nxt
            if oid == 0:
                break
            raw, pos = _chunks(data, pos)
            body += _cut(raw, cut)
    for dump_id, old in positions.items():
        field = b"\x02" + old.to_bytes(8, "little")
        at = head.index(field)
        head[at:at + 9] = b"\x02" + moved[dump_id].to_bytes(8, "little")
    return bytes(head) + bytes(body)


def _cut(raw: bytes, cut) -> bytes:
    out, at = bytearray(), 0
    for size in cut(raw):
        out += _int(size) + raw[at:at + size]
        at += size
    assert at == len(raw)
    return bytes(out + _int(0))


def _random_cuts(seed: int):
    rng = random.Random(seed)

    def cut(raw: bytes) -> list[int]:
        sizes, left = [], len(raw)
        while left:
            n = min(left, rng.choice([1, 2, 3, 7, 120, 4096, 70000]))
            sizes.append(n)
            left -= n
        return sizes

    return cut


@pytest.mark.parametrize("seed", [1, 2])
def test_rows_cut_across_chunks_pass_as_pg_restore_reads_them(z0_dump, tmp_path, monkeypatch, seed):
    """Chunks that end mid-row, hold several rows or one byte: valid (pg_restore reads them)."""
    path = tmp_path / "rechunked.dump"
    path.write_bytes(_rechunk(z0_dump, _random_cuts(seed)))
    assert pg_restore_ok(path)
    bulk, slow = _both(path, monkeypatch)
    assert bulk == slow
    assert bulk["problems"] == [] and bulk["rows"] == ROWS


def _dump_with_block_text(z0: Path, tmp_path: Path, first_row: bytes, new_text) -> Path:
    """Rewrite the TABLE DATA block whose text starts with ``first_row``; one row per chunk."""
    data = z0.read_bytes()
    positions = data_positions(z0)
    start = min(positions.values())
    head, body, pos, moved = bytearray(data[:start]), bytearray(), start, {}
    while pos < len(data):
        dump_id = _read_int(data, pos + 1)[0]
        moved[dump_id] = start + len(body)
        body += data[pos:pos + 6]
        raw, pos = _chunks(data, pos + 6)
        if raw.startswith(first_row):
            raw = new_text(raw)
        rows = raw.splitlines(keepends=True)
        for row in rows:
            body += _int(len(row)) + row
        body += _int(0)
    for dump_id, old in positions.items():
        field = b"\x02" + old.to_bytes(8, "little")
        at = head.index(field)
        head[at:at + 9] = b"\x02" + moved[dump_id].to_bytes(8, "little")
    path = tmp_path / "changed.dump"
    path.write_bytes(bytes(head) + bytes(body))
    return path


def test_a_second_end_of_data_line_sharing_a_newline_is_found(z0_dump, tmp_path, monkeypatch):
    """'\\.\\n\\.\\n' holds two end-of-data lines; a count of non-overlapping matches saw one."""
    path = _dump_with_block_text(z0_dump, tmp_path, b"100\t10001\n",
                                 lambda raw: raw.replace(b"\n\\.\n\n\n", b"\n\\.\n\\.\n\n\n"))
    bulk, slow = _both(path, monkeypatch)
    assert bulk == slow
    assert any("COPY data has 2 end-of-data lines" in p for p in bulk["problems"]), bulk["problems"]
    zstd, _ = recompress(path, tmp_path / "changed_zstd.dump", "zstd")  # the decoded path counts alike
    assert any("COPY data has 2 end-of-data lines" in p for p in _scan(zstd)["problems"])


def test_a_nul_byte_inside_a_proven_row_is_named(z0_dump, tmp_path, monkeypatch):
    path = _dump_with_block_text(z0_dump, tmp_path, b"100\t10001\n",
                                 lambda raw: raw.replace(b"\n500\t", b"\n5\x000\t"))
    bulk, slow = _both(path, monkeypatch)
    assert bulk == slow
    assert any("NUL byte in COPY data" in p for p in bulk["problems"])


def _mutate(data: bytes, rng: random.Random) -> bytes:
    a = rng.randrange(len(data) // 20, len(data))  # the data blocks, mostly
    op = rng.choice(["flip", "zero", "nl", "delete", "insert", "header"])
    if op == "flip":
        return data[:a] + bytes([data[a] ^ (1 << rng.randrange(8))]) + data[a + 1:]
    if op == "zero":
        return data[:a] + bytes(rng.choice([1, 5, 4096])) + data[a + 1:]
    if op == "nl":
        return data[:a] + b"\n\x00" + data[a + 2:]
    if op == "delete":
        return data[:a] + data[a + rng.choice([1, 5, 11]):]
    if op == "insert":
        return data[:a] + rng.choice([b"\t", b"\n", b"\\.\n", b"\x00\x05\x00\x00\x00"]) + data[a:]
    return data[:a] + rng.choice([b"\x00\x0a\x00\x00\x00", b"\x01\x0a\x00\x00\x00", b"\x00\xff\xff\x00\x00"]) \
        + data[a + 5:]


def test_seeded_mutations_get_the_per_chunk_walks_verdict(z0_dump, monkeypatch):
    data = z0_dump.read_bytes()
    rng = random.Random(14)
    deadline = time.monotonic() + 30
    runs = failed = 0
    while runs < 60 and time.monotonic() < deadline:
        bulk, slow = _both(_mutate(data, rng), monkeypatch)
        assert bulk == slow
        runs, failed = runs + 1, failed + bool(bulk["problems"])
    assert runs >= 10
    assert failed >= runs // 3  # most damage is seen (a changed letter inside a row is not: docs/dump-rules.md)


def test_the_hasher_thread_digests_everything_and_ends(tmp_path):
    data = random.Random(3).randbytes(20 << 20)  # past the bytes hashed inline
    tap = Tap(io.BytesIO(data))
    seen = 0
    while block := tap.read_block():
        seen += len(block)
    assert any(t.name == "sha256" for t in threading.enumerate())
    assert seen == len(data) and tap.hexdigest() == hashlib.sha256(data).hexdigest()
    assert not any(t.name == "sha256" for t in threading.enumerate())
    dropped = Tap(io.BytesIO(data))  # dropped without asking for the digest
    dropped.drain()
    thread = next(t for t in threading.enumerate() if t.name == "sha256")
    del dropped
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.mark.parametrize("seed", range(4))
def test_copy_text_counts_match_a_reference_whatever_the_pieces(seed):
    """Rows, tabs and end-of-data lines (overlapping ones too) of text cut into pieces of any
    size, large pieces counted in 1 MiB steps: the same as counting the whole text at once."""
    import re

    rng = random.Random(seed)
    step = copytext.Counter.STEP
    text = bytearray()
    while len(text) < step:  # a first step without a backslash: its newlines are only counted
        text += rng.choice([b"a\tb\n", b"\n", b".", b"x" * rng.randrange(1, 3000), b"\t"])
    while len(text) < 3 * step:
        text += rng.choice([b"a\tb\n", b"\\.\n", b"\n", b"\\", b".", b"x" * rng.randrange(1, 3000), b"\t", b"\\N"])
    for boundary, back in ((step, 1), (2 * step, 1 + seed % 3)):  # "\." lines across the 1 MiB steps
        text[boundary - back:boundary - back + 4] = b"\n\\.\n"
    text = bytes(text)
    full = b"\n" + text  # the virtual newline before the first row
    want = (full.count(b"\n") - 1, text.count(b"\t"), len(re.findall(rb"(?=\n\\\.\n)", full)))
    t = copytext.CopyText(columns=2)
    t.update(text[:3 * step - 5])  # one piece: its steps are the text's
    at = 3 * step - 5
    while at < len(text):
        n = rng.choice([1, 3, 100, copytext.VECTOR_MIN, step + 17, 2 * step])
        t.update(text[at:at + n])
        at += n
    assert (t.rows, t.tabs, t.ends) == want
