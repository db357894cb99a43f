"""The two guards of a plain restore outside psql (docs/restore.md, "What a restore may execute").

:func:`check_plain` is the dump verification's statement reader run before psql starts (its own
rules and fuzz tests: tests/test_plainsql.py, tests/test_dump_fuzz.py); here: that the restore asks
it, for every compression, and names what it refused. :func:`without_restrict` leaves out exactly
pg_dump's own restrict pair, whatever the pieces the stream comes in (hypothesis).
"""

from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupkit.restore.database import DumpUnusable, check_plain, without_restrict

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = "Ab3" * 20
HEADER = b"--\n-- PostgreSQL database dump\n--\n\n"
END = b"--\n-- PostgreSQL database dump complete\n--\n\n"


def dump(body: bytes, key: str | None = KEY) -> bytes:
    restrict = f"\\restrict {key}\n\n".encode() if key else b""
    unrestrict = f"\\unrestrict {key}\n\n".encode() if key else b""
    return HEADER + restrict + b"SET client_encoding = 'UTF8';\n\n" + body + END + unrestrict


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


rows = st.lists(st.text(alphabet="ab\\rN\t.", max_size=20).map(str.encode).filter(lambda r: r != b"\\."), max_size=8)


@FUZZ
@given(rows=rows, cuts=st.lists(st.integers(min_value=0), max_size=40))
def test_only_pgdumps_own_restrict_pair_is_left_out(rows, cuts):
    body = b"COPY public.t (a) FROM stdin;\n" + b"".join(r + b"\n" for r in rows) + b"\\.\n\n"
    data = dump(body)
    out = b"".join(without_restrict(pieces(data, cuts), KEY))
    assert out == data.replace(f"\\restrict {KEY}\n".encode(), b"").replace(f"\\unrestrict {KEY}\n".encode(), b"")
    assert b"".join(without_restrict(pieces(data, cuts), None)) == data  # a pg_dump before 18 wrote none


def test_another_key_or_a_line_not_at_a_line_start_stays(tmp_path):
    data = dump(b"SELECT '\\restrict " + KEY.encode() + b"';\n") + b"\\restrict other\n"
    out = b"".join(without_restrict([data], KEY))
    assert b"SELECT '\\restrict " + KEY.encode() in out and b"\\restrict other\n" in out  # psql refuses those


@pytest.mark.parametrize("compress", [None, "gzip", "zstd", "lz4"])
def test_the_statement_reader_judges_every_compression_before_anything_runs(compress, tmp_path):
    import lz4.frame
    import zstandard

    pack = {None: lambda b: b, "gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress,
            "lz4": lz4.frame.compress}[compress]
    good = dump(b"CREATE TABLE public.t (a integer);\n\n")
    path = tmp_path / "d.sql"
    path.write_bytes(pack(good))
    assert check_plain(path) == KEY
    path.write_bytes(pack(good.replace(b"SET client_encoding", b"\\! id\nSET client_encoding")))
    with pytest.raises(DumpUnusable, match=r"sql_dump: psql meta-command \\! .*runs a shell command"):
        check_plain(path)
    path.write_bytes(pack(good.replace(b"-- PostgreSQL database dump complete", b"-- cut")))
    with pytest.raises(DumpUnusable, match="completion line"):
        check_plain(path)
    if compress:
        path.write_bytes(pack(good)[:-9])
        with pytest.raises(DumpUnusable, match=compress):
            check_plain(path)
    path.write_bytes(b"PGDMP not a plain dump")
    with pytest.raises(DumpUnusable, match="not plain SQL: a custom-format pg_dump archive"):
        check_plain(path)
