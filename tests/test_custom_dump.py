"""The custom-format reader against real dumps, with pg_restore as the oracle.

Every damaged file is made from a real pg_dump output. The reader must reject every file
pg_restore -f /dev/null rejects, and also the damage pg_restore lets through (an appended
dump, a page of zeros, bytes after the last block).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _pgcustom_helpers import block_spans, data_positions, pg_restore_ok, recompress
from backupkit.checks.pgcustom import scan_custom
from backupkit.checks.pgtranscode import transcode_custom
from backupkit.checks.stream import Tap
from backupkit.pgbin import pg_bin
from backupkit.verify import VerifyOptions, verify_artifact
from sandbox.bookingdb import pg_dump

LO_DB = "dumpcheck_lo"


@pytest.fixture(scope="session")
def custom_dumps(pg, tmp_path_factory):
    """Custom dumps of a database with tables and large objects, in every compression."""
    d = tmp_path_factory.mktemp("custom")
    pg.create_database(LO_DB)
    pg.psql("CREATE TABLE notes (id int PRIMARY KEY, body text, tags text[]);"
            "INSERT INTO notes SELECT g, md5(g::text) || E'\\ttab\\nnewline\\\\', ARRAY['a,b', 'c\"d'] "
            "FROM generate_series(1, 3000) g;"
            "CREATE TABLE \"Odd, Name\" (\"col (1)\" int, \"x,y\" text);"
            "INSERT INTO \"Odd, Name\" SELECT g, 'v' || g FROM generate_series(1, 50) g;"
            "CREATE TABLE empty_one (a int);"
            "SELECT lo_from_bytea(0, 'a small large object'::bytea);"
            "SELECT lo_from_bytea(0, convert_to(repeat('large object text ', 20000), 'UTF8'));", database=LO_DB)
    out = {"gzip": pg_dump(pg, LO_DB, d / "lo.dump", "custom"),
           "none": pg_dump(pg, LO_DB, d / "lo_z0.dump", "custom", compress=0)}
    for c in ("zstd", "lz4"):
        out[c], POSITIONS[c] = recompress(out["none"], d / f"lo_{c}.dump", c)
    return out


POSITIONS: dict[str, dict[int, int]] = {}  # block offsets of the recompressed dumps


def problems(report) -> list[tuple[str, str]]:
    return [(p.check, p.detail) for p in report.problems()]


def scan(path: Path, workers: int = 2):
    with open(path, "rb") as f:
        tap = Tap(f)
        result = scan_custom(tap, workers)
        tap.drain()
    return result


@pytest.mark.parametrize("compression", ["gzip", "none", "zstd", "lz4"])
def test_good_dumps_pass_in_every_compression(custom_dumps, compression):
    path = custom_dumps[compression]
    report = verify_artifact(path)
    assert problems(report) == []
    detail = next(r.detail for r in report.results if r.check == "custom_dump")
    assert ("uncompressed data" if compression == "none" else f"{compression}-compressed data") in detail
    # one block per entry that pg_restore says has data
    assert f"{len(data_positions(custom_dumps['none']))} data blocks decoded" in detail
    s = scan(path)
    assert s.copy_rows["public.notes"] == 3000 and s.copy_rows["public.Odd, Name"] == 50
    assert s.copy_rows["public.empty_one"] == 0


def test_bundled_pg_restore_cannot_read_zstd_or_lz4_but_the_transcoded_stream_restores(pg, custom_dumps, tmp_path):
    for compression in ("zstd", "lz4"):
        assert not pg_restore_ok(custom_dumps[compression])  # why the reader exists: no false alarm
        target = f"restored_{compression}"
        pg.create_database(target)
        proc = subprocess.Popen([pg_bin("pg_restore"), *pg.conn_args(target), "--no-owner", "--exit-on-error"],
                                stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        with open(custom_dumps[compression], "rb") as src:
            transcode_custom(src, proc.stdin.write)
        proc.stdin.close()
        assert proc.wait(120) == 0, proc.stderr.read()
        query = "SELECT (SELECT count(*) FROM notes), (SELECT sum(length(body)) FROM notes), " \
                "(SELECT count(*) FROM \"Odd, Name\"), (SELECT count(*) FROM pg_largeobject_metadata)"
        assert pg.psql(query, database=target) == pg.psql(query, database=LO_DB)


def test_deep_runs_pg_restore_on_every_compression(custom_dumps):
    for compression, path in custom_dumps.items():
        report = verify_artifact(path, options=VerifyOptions(deep=True))
        assert problems(report) == [], compression
        assert "pg_restore" in {r.check for r in report.results}


def _mutants(path: Path, tmp: Path, positions: dict[int, int] | None = None) -> dict[str, Path]:
    data = path.read_bytes()
    spans = block_spans(path, positions)
    out: dict[str, bytes] = {}
    for frac in (0.01, 0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 0.95, 0.999):
        out[f"cut{frac}"] = data[:int(len(data) * frac)]
    out["cut-1"] = data[:-1]
    out["appended_dump"] = data + data
    out["zero_tail"] = data + bytes(4096)
    out["garbage_tail"] = data + b"garbage"
    mid = len(data) // 2
    out["zero_page"] = data[:mid] + bytes(4096) + data[mid + 4096:]
    out["zero_page_inserted"] = data[:mid] + bytes(4096) + data[mid:]
    for dump_id, first, end in spans:
        if end - first > 64:
            at = (first + end) // 2
            out[f"flip_block_{dump_id}"] = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
            out[f"drop_block_tail_{dump_id}"] = data[:end - 6] + data[end:]
    paths = {}
    for name, content in out.items():
        p = tmp / f"{name}.dump"
        p.write_bytes(content)
        paths[name] = p
    return paths


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_at_least_as_strict_as_pg_restore(custom_dumps, tmp_path, compression):
    must_fail = {"appended_dump", "zero_tail", "garbage_tail", "zero_page", "zero_page_inserted"}
    source = custom_dumps[compression]
    mid = source.stat().st_size // 2
    if compression == "none" and any(first <= mid < end and source.read_bytes()[first - 6] == 3
                                     for _, first, end in block_spans(source)):
        # zeros inside large-object bytes of an uncompressed dump: any bytes are valid there,
        # nothing but the SHA-256 sidecar can tell (docs/dump-rules.md)
        must_fail -= {"zero_page"}
    for name, path in _mutants(source, tmp_path).items():
        report = verify_artifact(path, use_sidecar=False)
        if not pg_restore_ok(path) or name in must_fail or name.startswith(("cut", "drop_block_tail")):
            assert not report.ok, f"{name}: pg_restore rejects it or the rule does, the reader passed it"
        assert "verify" not in {c for c, _ in problems(report)}, f"{name}: {problems(report)}"


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_damaged_zstd_and_lz4_dumps_fail(custom_dumps, tmp_path, compression):
    path = custom_dumps[compression]
    for name, mutant in _mutants(path, tmp_path, POSITIONS[compression]).items():
        report = verify_artifact(mutant, use_sidecar=False)
        assert "verify" not in {c for c, _ in problems(report)}, f"{name}: {problems(report)}"
        if not name.startswith("flip_block"):  # a flipped bit in a frame without checksum may decode
            assert not report.ok, name
    # ten bytes cut out of the last block's first chunk, the chunk length adjusted to match
    data = path.read_bytes()
    dump_id, first, _ = [b for b in block_spans(path, POSITIONS[compression]) if data[b[1] - 6] == 1][-1]
    length = int.from_bytes(data[first + 1:first + 5], "little")
    shorter = data[:first] + b"\x00" + (length - 10).to_bytes(4, "little") \
        + data[first + 5:first + 5 + length - 10] + data[first + 5 + length:]
    mutant = tmp_path / "short_chunk.dump"
    mutant.write_bytes(shorter)
    found = problems(verify_artifact(mutant, use_sidecar=False))
    assert any(c == "custom_dump" and f"entry {dump_id} " in d and compression in d for c, d in found), found


def test_wrong_toc_offset_is_named(custom_dumps, tmp_path):
    data = bytearray(custom_dumps["gzip"].read_bytes())
    dump_id, start = sorted(data_positions(custom_dumps["gzip"]).items(), key=lambda kv: kv[1])[1]
    field = b"\x02" + start.to_bytes(8, "little")
    at = bytes(data).index(field)
    data[at + 1:at + 9] = (start + 1).to_bytes(8, "little")
    path = tmp_path / "offset.dump"
    path.write_bytes(data)
    [(check, detail)] = problems(verify_artifact(path))
    assert check == "custom_dump"
    assert detail == f"the TOC places the data of entry {dump_id} (TABLE DATA {_name(custom_dumps, dump_id)}) " \
                     f"at offset {start + 1}; its block starts at {start}"


def _name(custom_dumps, dump_id: int) -> str:
    listing = subprocess.run([pg_bin("pg_restore"), "--list", str(custom_dumps["gzip"])], capture_output=True,
                             text=True, check=True).stdout
    line = next(ln for ln in listing.splitlines() if ln.startswith(f"{dump_id};"))
    _, _, _, _, _, schema, table, *_ = line.split(" ")
    return f"{schema}.{table}"


def test_dump_appended_by_the_shell(pg, custom_dumps, tmp_path):
    """``pg_dump -Fc >> file`` twice: pg_restore reads the first dump and stops; the reader does not."""
    path = tmp_path / "twice.dump"
    for _ in range(2):
        with open(path, "ab") as out:
            subprocess.run([pg_bin("pg_dump"), *pg.conn_args(LO_DB), "-Fc"], stdout=out, check=True)
    assert pg_restore_ok(path)
    [(check, detail)] = problems(verify_artifact(path))
    assert check == "custom_dump"
    assert "a second custom dump is appended after the end of this one (pg_dump -Fc >> file?)" in detail


def test_zero_page_in_an_uncompressed_dump(custom_dumps, tmp_path):
    data = custom_dumps["none"].read_bytes()
    dump_id, first, end = max((b for b in block_spans(custom_dumps["none"]) if data[b[1] - 6] == 1),
                              key=lambda s: s[2] - s[1])
    at = first + (end - first) // 2
    path = tmp_path / "zeros.dump"
    path.write_bytes(data[:at] + bytes(4096) + data[at + 4096:])
    assert pg_restore_ok(path)  # pg_restore -f /dev/null cannot see it
    assert any(f"entry {dump_id} " in d and "NUL byte in COPY data" in d for _, d in problems(verify_artifact(path)))


def test_schema_only_dump_is_warned_about(pg, custom_dumps, tmp_path):
    path = tmp_path / "schema.dump"
    subprocess.run([pg_bin("pg_dump"), *pg.conn_args(LO_DB), "-Fc", "-s", "-f", str(path)], check=True)
    report = verify_artifact(path)
    assert report.ok
    assert [(w.check, w.detail) for w in report.warnings()] == [
        ("data_present", "WARNING: schema-only dump: it holds no table data (pg_dump -s?)")]


def test_one_or_two_workers_give_the_same_verdicts(custom_dumps, tmp_path):
    for path in [custom_dumps["gzip"], *_mutants(custom_dumps["gzip"], tmp_path).values()]:
        one, two = scan(path, 1), scan(path, 2)
        assert (one.problems, one.blocks, one.decoded_bytes) == (two.problems, two.blocks, two.decoded_bytes), path


BOMB = """
import sys
sys.path[:0] = {paths!r}
from pathlib import Path
from backupkit.verify import verify_artifact
r = verify_artifact(Path({path!r}), use_sidecar=False)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(r.ok, hwm // 1024, [p.detail for p in r.problems()])  # VmHWM: this process's own peak, after exec
"""


@pytest.mark.parametrize("compression", ["zstd", "lz4", "gzip"])
def test_a_block_that_inflates_to_gigabytes_is_read_in_flat_memory(custom_dumps, tmp_path, compression):
    """One small block that decodes to 1 GiB of COPY rows: limits apply while streaming."""
    import zlib

    import lz4.frame
    import zstandard

    data = custom_dumps["none"].read_bytes()
    _, first, _ = max((b for b in block_spans(custom_dumps["none"]) if data[b[1] - 6] == 1),
                      key=lambda s: s[2] - s[1])
    piece, copies = b"1\tx\t{}\n" * 65536, (512 << 20) // (7 * 65536)  # 512 MiB of COPY rows
    if compression == "zstd":
        c = zstandard.ZstdCompressor(level=1).compressobj()
        frame = b"".join(c.compress(piece) for _ in range(copies)) + c.flush()
    elif compression == "lz4":
        c = lz4.frame.LZ4FrameCompressor()
        frame = c.begin() + b"".join(c.compress(piece) for _ in range(copies)) + c.flush()
    else:
        c = zlib.compressobj(1)
        frame = b"".join(c.compress(piece) for _ in range(copies)) + c.flush()
    chunks = b"".join(b"\x00" + len(frame[i:i + 65536]).to_bytes(4, "little") + frame[i:i + 65536]
                      for i in range(0, len(frame), 65536)) + bytes(5)
    bomb = bytearray(data[:first] + chunks)
    bomb[11] = {"zstd": 3, "lz4": 2, "gzip": 1}[compression]
    path = tmp_path / "bomb.dump"
    path.write_bytes(bytes(bomb))  # truncated after the bomb block: a verdict, after reading it all
    paths = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "plugins")]
    out = subprocess.run([sys.executable, "-c", BOMB.format(paths=paths, path=str(path))], capture_output=True,
                         text=True, timeout=300)
    ok, rss_mb, details = out.stdout.split(" ", 2)
    assert ok == "False" and int(rss_mb) < 250, out.stdout + out.stderr
    assert os.path.getsize(path) < 64 << 20
