"""The plain-dump guard's rule (docs/restore.md, "What a restore may execute"), property by property.

Generated dumps have the shape pg_dump writes -- comments, SQL lines, COPY blocks whose rows may
start with a backslash, the restrict pair -- cut into pieces anywhere; hostile ones add a
meta-command line at a line boundary outside COPY data. Arbitrary bytes must never make the guard
raise anything but its refusal.
"""

from __future__ import annotations

import gzip
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupkit.restore.database import DumpUnusable, check_plain
from backupkit.restore.plainscan import MAX_META_LINE, MetaCommandRefused, guarded, scan_plain

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = b"Ab3" * 20

sql_line = st.text(alphabet="abcdefghij ();,='_-0123456789\\", min_size=1, max_size=60).map(
    lambda t: "SELECT " + t).map(str.encode)
comment = st.text(alphabet="abc -=", max_size=30).map(lambda t: ("-- " + t).encode())
row = st.text(alphabet="abc\t\\.N0123", max_size=40).map(str.encode).filter(lambda r: r not in (b"\\.", b"\\.\r"))
copy_block = st.lists(row, max_size=6).map(
    lambda rows: b"COPY public.t (a, b) FROM stdin;\n" + b"".join(r + b"\n" for r in rows) + b"\\.\n")
body = st.lists(st.one_of(sql_line.map(lambda b: b + b"\n"), comment.map(lambda b: b + b"\n"), copy_block),
                max_size=12).map(b"".join)
meta = st.sampled_from([b"\\! id", b"\\connect live_db", b"\\c live_db", b"\\o /tmp/x", b"\\copy t to '/tmp/x'",
                        b"\\gexec", b"\\i /etc/passwd", b"  \\setenv X 1", b"\\restrict other", b"\\unrestrict nope",
                        b"\\\\"])


def dump(head: bytes, tail: bytes) -> bytes:
    return (b"--\n-- PostgreSQL database dump\n--\n\n\\restrict " + KEY + b"\n\n" + head + tail
            + b"--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict " + KEY + b"\n\n")


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@FUZZ
@given(head=body, tail=body, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_a_clean_dump_passes_whole_minus_its_own_restrict_pair(head, tail, cuts):
    data = dump(head, tail)
    out = b"".join(guarded(pieces(data, cuts)))
    assert out == data.replace(b"\\restrict " + KEY + b"\n", b"").replace(b"\\unrestrict " + KEY + b"\n", b"")


@FUZZ
@given(head=body, tail=body, line=meta, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_any_meta_command_line_outside_copy_data_is_refused(head, tail, line, cuts):
    data = dump(head + b"SELECT 1;\n", line + b"\n" + tail)
    with pytest.raises(MetaCommandRefused, match=r"line \d+: \\"):
        scan_plain(pieces(data, cuts))


@FUZZ
@given(junk=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_arbitrary_bytes_are_passed_on_or_refused_never_a_traceback(junk, cuts):
    try:
        out = b"".join(guarded(pieces(junk, cuts)))
    except MetaCommandRefused:
        return
    assert len(out) <= len(junk)


def test_a_long_meta_command_line_is_refused_without_being_held_whole():
    data = dump(b"", b"\\! " + b"x" * (MAX_META_LINE * 4) + b"\n")
    with pytest.raises(MetaCommandRefused, match="longer than"):
        scan_plain(pieces(data, list(range(0, len(data), 100))))


def test_long_sql_lines_and_long_copy_rows_stream_through():
    rnd = random.Random(7)
    big_row = bytes(rnd.choice(b"abc\\\t") for _ in range(200_000))
    data = dump(b"INSERT INTO t VALUES ('" + b"y" * 300_000 + b"');\n",
                b"COPY public.t (a) FROM stdin;\n" + big_row + b"\n\\.\n\\! id\n")
    with pytest.raises(MetaCommandRefused, match=r"\\! runs a shell command"):  # the line after COPY is seen
        scan_plain(pieces(data, list(range(0, len(data), 4096))))


def test_check_plain_reads_gzip_and_names_what_is_wrong(tmp_path):
    good = dump(b"SELECT 1;\n", b"")
    path = tmp_path / "d.sql.gz"
    path.write_bytes(gzip.compress(good))
    check_plain(path)
    path.write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(DumpUnusable, match="compressed stream is damaged"):
        check_plain(path)
    path.write_bytes(gzip.compress(good.replace(b"-- PostgreSQL database dump complete", b"-- cut")))
    with pytest.raises(DumpUnusable, match="incomplete"):
        check_plain(path)
