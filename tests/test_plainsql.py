"""The plain-dump rule (docs/dump-rules.md), tested as a rule: generated dumps in pg_dump's
shape pass, and each kind of violation, placed anywhere, fails with its reason; plus the
real pg_dump output and the hardening cases (concatenated nights, a cut from the middle,
meta-commands, compressed files detected from content)."""

from __future__ import annotations

import gzip
import json
import random

import lz4.frame
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupkit.checks.detect import detect_head
from backupkit.checks.plainsql import read_sql
from backupkit.verify import verify_artifact

KEY = "AbC123xyz"
HEADER = f"--\n-- PostgreSQL database dump\n--\n\n\\restrict {KEY}\n\n-- Dumped by pg_dump version 18.6\n\n"
FOOTER = f"\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict {KEY}\n\n"

ident = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
quoted_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=30)
field = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\t\n\r\\"), max_size=12)


def _literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


@st.composite
def statement(draw) -> str:
    kind = draw(st.sampled_from(["set", "comment", "function", "view", "dollar", "estring", "atomic"]))
    name = draw(ident)
    if kind == "set":
        return f"SET {name} = {_literal(draw(quoted_text))};\n"
    if kind == "comment":
        return f"COMMENT ON TABLE public.{name} IS {_literal(draw(quoted_text))};\n"
    if kind == "function":
        body = draw(quoted_text).replace("$", "")
        return f"CREATE FUNCTION public.{name}() RETURNS text\n    LANGUAGE sql\n    AS $_$SELECT ';\\! {body}'$_$;\n"
    if kind == "dollar":
        return f"SELECT $x${draw(quoted_text).replace('$', '')};\\o /tmp/f$x$ AS \"semi;{name}\";\n"
    if kind == "estring":
        value = draw(field).replace("'", "''")
        return f"SELECT E'it\\'s \\\\ {value};' /* a; \\! comment */ -- tail; \\o\n;\n"
    if kind == "atomic":
        return (f"CREATE FUNCTION public.{name}(a integer) RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n"
                f" SELECT CASE WHEN a > 0 THEN 1 ELSE 0 END;\n SELECT (a + 1);\nEND;\n")
    return f"CREATE VIEW public.{name} AS\n SELECT ({_literal(draw(field))}::text) AS c;\n"


@st.composite
def copy_block(draw) -> tuple[str, int]:
    table, ncols = draw(ident), draw(st.integers(1, 5))
    cols = ", ".join(f'"c {i}"' if i % 2 else f"c{i}" for i in range(ncols))
    rows = draw(st.lists(st.lists(field, min_size=ncols, max_size=ncols), max_size=20))
    data = "".join("\t".join(r) + "\n" for r in rows)
    return (f"--\n-- Data for Name: {table}; Type: TABLE DATA; Schema: public; Owner: -\n--\n\n"
            f"COPY public.{table} ({cols}) FROM stdin;\n{data}\\.\n\n\n"), len(rows)


@st.composite
def dump(draw) -> tuple[list[str], int]:
    """(parts of a pg_dump-shaped plain dump, total COPY rows); parts join to the file."""
    parts, rows = [HEADER], 0
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            block, n = draw(copy_block())
            parts.append(block)
            rows += n
        else:
            parts.append(draw(statement()) + "\n")
    parts.append(FOOTER)
    return parts, rows


def read(text: str | bytes, piece: int = 7):
    data = text.encode() if isinstance(text, str) else text
    return read_sql(data[i:i + piece] for i in range(0, len(data), piece))


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(dump(), st.integers(1, 64))
def test_dumps_in_pg_dumps_shape_pass(d, piece):
    parts, rows = d
    scan = read("".join(parts), piece)
    assert scan.problems == []
    assert sum(scan.copy_rows.values()) == rows


META = ["\\! id", "\\o /tmp/out", "\\copy t from '/etc/passwd'", "\\connect other", "\\c other", "\\i /tmp/x.sql",
        "\\set x 1", "\\gexec", "\\setenv A b", "\\lo_import /etc/passwd", "\\w /tmp/buf"]


@FAST
@given(dump(), st.sampled_from(META), st.data())
def test_a_meta_command_anywhere_between_statements_fails(d, meta, data):
    parts, _ = d
    at = data.draw(st.integers(1, len(parts) - 1))
    text = "".join(parts[:at]) + meta + "\n" + "".join(parts[at:])
    [problem] = read(text).problems
    assert problem.startswith(f"psql meta-command {meta.split()[0]} ") and "pg_dump never writes" in problem


@FAST
@given(dump(), st.sampled_from(["garbage\n", "DROP TABLE users;\n", HEADER, "\\! id\n", "-- x\n"]))
def test_nothing_may_follow_the_end_of_a_dump(d, tail):
    parts, _ = d
    problems = read("".join(parts) + tail).problems
    assert len(problems) == 1
    assert problems[0].startswith(("content after the end of the dump", "a second dump starts",
                                   "psql meta-command"))


@FAST
@given(dump(), dump())
def test_two_dumps_concatenated_fail(a, b):
    assert read("".join(a[0]) + "".join(b[0])).problems[0].startswith("a second dump starts at line ")


@FAST
@given(copy_block(), st.data())
def test_a_row_with_a_column_too_many_or_too_few_fails(block, data):
    text, rows = block
    if rows == 0:
        return
    lines = text.split("\n")
    first_row = lines.index(next(ln for ln in lines if ln.startswith("COPY "))) + 1
    i = data.draw(st.integers(first_row, first_row + rows - 1))
    lines[i] = lines[i] + "\textra" if data.draw(st.booleans()) or "\t" not in lines[i] else lines[i].replace("\t", "", 1)
    [problem] = read(HEADER + "\n".join(lines) + FOOTER).problems
    assert "column separators" in problem


@FAST
@given(dump(), st.data())
def test_a_dump_cut_anywhere_fails(d, data):
    text = "".join(d[0])
    end = text.index("-- PostgreSQL database dump complete")
    cut = data.draw(st.integers(len(HEADER), end))
    assert read(text[:cut]).problems


def test_real_pg_dump_output_passes_and_counts_rows(dumps, pg):
    scan = read(dumps["plain"].read_bytes(), 65536)
    assert scan.problems == [] and scan.restrict_key
    expected = json.loads(pg.psql("SELECT json_build_object('u', (SELECT count(*) FROM users), "
                                  "'b', (SELECT count(*) FROM bookings))", database="trixtech"))
    assert scan.copy_rows["public.users"] == expected["u"] and scan.copy_rows["public.bookings"] == expected["b"]


def test_create_and_dumpall_outputs_are_refused(pg, tmp_path):
    import subprocess

    from backupkit.pgbin import pg_bin

    created = tmp_path / "create.sql"
    subprocess.run([pg_bin("pg_dump"), *pg.conn_args("trixtech"), "--create", "-f", str(created)], check=True)
    [problem] = read(created.read_bytes(), 65536).problems
    assert "--create" in problem
    cluster = tmp_path / "all.sql"
    subprocess.run([pg_bin("pg_dumpall"), *pg.conn_args("postgres")[:6], "-f", str(cluster)], check=True)
    assert read(cluster.read_bytes(), 65536).problems[0].startswith("pg_dumpall output (a cluster dump): not supported")


def _recompress(sql: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(sql)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(sql)
    return lz4.frame.compress(sql)


@pytest.mark.parametrize("compression,suffix", [("gzip", ".sql.gz"), ("zstd", ".sql.zst"), ("lz4", ".sql.lz4")])
def test_hardening_cases_in_every_compression(dumps, tmp_path, compression, suffix):
    sql = dumps["plain"].read_bytes()
    n = len(sql)
    good = tmp_path / f"good{suffix}"
    good.write_bytes(_recompress(sql, compression))
    report = verify_artifact(good)
    assert report.ok and report.kind == f"sql_{compression}", [(p.check, p.detail) for p in report.problems()]
    cases = {
        "two_nights": sql + sql,
        "garbage": sql + b"\x00\x01garbage",
        "meta": sql.replace(b"SET row_security = off;\n", b"SET row_security = off;\n\\! id\n"),
    }
    # 5% cut from the middle, completion line intact: caught by the rows' column count, or by the
    # manifest's row counts when the cut joins two rows in the same column
    cut = sql[:int(n * 0.45)] + sql[int(n * 0.50):]
    for name, content in {**cases, "cut_middle": cut}.items():
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(_recompress(content, compression))
        (tmp_path / f"{name}{suffix}.manifest.json").write_text(json.dumps(
            {"format": 1, "database": "trixtech", "created_at": "2025-01-01T00:00:00Z",
             "tables": read(sql, 65536).copy_rows}))
        report = verify_artifact(path)
        assert not report.ok, name
        assert all(p.check in ("sql_dump", "manifest_rows", compression) for p in report.problems()), name


def test_two_gzip_members_are_read_as_one_stream(dumps, tmp_path):
    """``cat a.sql.gz b.sql.gz``: gunzip (and the restore) read both, so the reader does too."""
    path = tmp_path / "two.sql.gz"
    path.write_bytes(dumps["plain_gz"].read_bytes() * 2)
    [(check, detail)] = [(p.check, p.detail) for p in verify_artifact(path).problems()]
    assert check == "sql_dump" and detail.startswith("a second dump starts at line ")


def test_compression_is_named_not_shown_as_magic_bytes(dumps, tmp_path):
    sql = dumps["plain"].read_bytes()
    assert detect_head(lz4.frame.compress(sql)[:65536]) == ("sql_lz4", "")  # not "plain SQL"
    import bz2
    import lzma

    assert detect_head(bz2.compress(sql)[:100])[1].startswith("bzip2-compressed: not a compression")
    assert detect_head(lzma.compress(sql)[:100])[1].startswith("xz-compressed: not a compression")
    custom_gz = gzip.compress(dumps["custom"].read_bytes())
    kind, why = detect_head(custom_gz[:65536])
    assert kind == "unknown" and why.startswith("a gzip-compressed custom dump")
    assert detect_head(zstandard.ZstdCompressor().compress(dumps["custom"].read_bytes()))[1].startswith(
        "a zstd-compressed custom dump")


def test_lz4_sql_named_sql_lz4_is_never_read_as_plain_text(dumps, tmp_path):
    sql = dumps["plain"].read_bytes()
    path = tmp_path / "night.sql.lz4"
    path.write_bytes(lz4.frame.compress(sql, compression_level=0, store_size=False))
    report = verify_artifact(path)
    assert report.kind == "sql_lz4" and report.ok


@pytest.mark.parametrize("seed", range(4))
def test_seeded_mutations_of_a_real_dump_never_pass_silently_broken(dumps, tmp_path, seed):
    """Deleting, duplicating or moving a random span of a real dump: either the rule catches it,
    or the result is again a dump in pg_dump's shape (checked by reading it as psql would)."""
    sql = dumps["plain"].read_bytes()
    rng = random.Random(seed)
    for i in range(40):
        a, b = sorted(rng.randrange(len(sql)) for _ in range(2))
        op = rng.choice(["delete", "duplicate", "insert_meta", "nul"])
        if op == "delete":
            mutant = sql[:a] + sql[b:]
        elif op == "duplicate":
            mutant = sql[:b] + sql[a:b] + sql[b:]
        elif op == "insert_meta":
            nl = sql.rfind(b"\n", 0, a) + 1
            mutant = sql[:nl] + b"\\! touch /tmp/pwned\n" + sql[nl:]
        else:
            mutant = sql[:a] + b"\0" + sql[a + 1:]
        scan = read(mutant, 4096)
        if op in ("insert_meta", "nul"):
            assert scan.problems, (seed, i, op)
        elif not scan.problems:
            # what got through is pg_dump-shaped: whole rows only, and the rows add up
            assert mutant.count(b"\n\\.\n") == sql.count(b"\n\\.\n") or op == "duplicate"


def test_restrict_key_must_match(tmp_path):
    text = HEADER + "SET a = 1;\n" + FOOTER.replace(KEY, "other")
    assert read(text).problems == ["\\unrestrict at line 15 does not match the \\restrict key"]
    assert read(HEADER + "SET a = 1;\n" + "\\restrict again\n" + FOOTER).problems[0].startswith("\\restrict at line ")
