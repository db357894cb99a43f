"""A plain SQL backup runs nothing but SQL, as a role that can touch only the new database (issue 9.1).

Real parts: dumps by the real pg_dump 18 (with its own ``\\restrict``/``\\unrestrict`` pair),
hostile lines added the way an attacker with write access to the backups would, restored by
the real psql 18 into a real scratch server and into a new database beside a "live" one on
the application's server. Each attack leaves a marker if it ran; none may exist afterwards,
and the live database must be unchanged.
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from backupkit.pgbin import pg_bin
from backupkit.restore import database
from backupkit.restore.database import DumpUnusable, RestoreFailed, check_plain, restore_dump
from backupkit.restore.scratch import RESTORE_ROLE_PREFIX, LocalScratch, ServerTarget
from backupkit.restore.verify_rows import exact_row_counts

LIVE = "hostile_live"


@pytest.fixture(scope="module")
def live(pg):
    """The application's database the hostile dump aims at (one row that must stay one row)."""
    pg.psql(f'DROP DATABASE IF EXISTS "{LIVE}" WITH (FORCE)')
    pg.psql(f'CREATE DATABASE "{LIVE}"')
    pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, owner text); INSERT INTO accounts VALUES (1, 'alice');", LIVE)
    yield LIVE
    pg.psql(f'DROP DATABASE IF EXISTS "{LIVE}" WITH (FORCE)')


@pytest.fixture(scope="module")
def clean_sql(pg, tmp_path_factory):
    """A real plain dump of a small database: pg_dump 18 writes its own \\restrict pair."""
    pg.psql('DROP DATABASE IF EXISTS "hostile_src" WITH (FORCE)')
    pg.psql('CREATE DATABASE "hostile_src"')
    pg.psql("CREATE TABLE notes (id int, body text); INSERT INTO notes VALUES (1, 'a\\b'), (2, '\\. not the end');",
            "hostile_src")
    out = tmp_path_factory.mktemp("hostile") / "clean.sql"
    subprocess.run([pg_bin("pg_dump"), *pg.conn_args("hostile_src"), "--no-owner", "-Fp", "-f", str(out)], check=True)
    pg.psql('DROP DATABASE IF EXISTS "hostile_src" WITH (FORCE)')
    text = out.read_bytes()
    assert text.count(b"\n\\restrict ") == 1 and text.count(b"\n\\unrestrict ") == 1
    return text


@pytest.fixture(scope="module")
def scratch():
    with LocalScratch() as s:
        yield s


def hostile(clean: bytes, lines: bytes, where: str = "after_set") -> bytes:
    """``clean`` with ``lines`` added among its statements (after its SET block), or first thing."""
    if where == "first":
        return lines + clean
    anchor = b"SET row_security = off;\n"
    assert anchor in clean
    return clean.replace(anchor, anchor + lines, 1)


def attacks(tmp: Path) -> dict[str, tuple[bytes, Path]]:
    m = {k: tmp / f"{k}.marker" for k in ("shell", "out", "copy", "connect")}
    return {
        "shell": (f"\\! touch {m['shell']}\n".encode(), m["shell"]),
        "out": (f"\\o {m['out']}\nSELECT 'leaked';\n\\o\n".encode(), m["out"]),
        "copy": (f"\\copy (SELECT 1) to '{m['copy']}'\n".encode(), m["copy"]),
        "connect": (f"\\connect {LIVE}\nINSERT INTO accounts VALUES (2, 'mallory');\n".encode(), m["connect"]),
    }


def own_key(clean: bytes) -> str:
    """The key of the dump's own \\restrict line (what the statement reader returns)."""
    return clean.split(b"\n\\restrict ", 1)[1].split(b"\n", 1)[0].decode()


def roles_left(server) -> list[str]:
    return server.psql(f"SELECT rolname FROM pg_roles WHERE rolname LIKE '{RESTORE_ROLE_PREFIX}%'").split()


def tables(server, database: str) -> list[str]:
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'").strip()
    return server.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database).split() if exists else []


@pytest.mark.parametrize("attack", ["shell", "out", "copy", "connect"])
@pytest.mark.parametrize("gz", [False, True], ids=["sql", "sql.gz"])
def test_meta_command_lines_are_refused_before_anything_runs(attack, gz, clean_sql, scratch, pg, live, tmp_path):
    lines, marker = attacks(tmp_path)[attack]
    dump = tmp_path / ("evil.sql.gz" if gz else "evil.sql")
    body = hostile(clean_sql, lines)
    dump.write_bytes(gzip.compress(body) if gz else body)
    before = exact_row_counts(pg, live)
    with pytest.raises(RestoreFailed) as err:
        restore_dump(dump, scratch, fmt="plain", database=f"evil_{attack}_{int(gz)}")
    msg = str(err.value)
    assert "refused before anything ran" in msg and str(dump) in msg
    if attack == "shell":
        assert "\\! at line" in msg and "runs a shell command" in msg
    if attack == "connect":
        assert "\\connect at line" in msg and "connects to another database" in msg
    assert not marker.exists()
    assert tables(scratch, f"evil_{attack}_{int(gz)}") == []  # not one statement of the dump ran
    assert exact_row_counts(pg, live) == before
    assert roles_left(scratch) == []


@pytest.mark.parametrize("line", ["SELECT 1; \\! touch {m}", "SELECT 1 \\gexec", "SELECT '\\x' \\g {m}"])
def test_a_meta_command_after_sql_on_the_same_line_is_refused_too(line, clean_sql, scratch, tmp_path):
    marker = tmp_path / "midline.marker"
    dump = tmp_path / "midline.sql"
    dump.write_bytes(hostile(clean_sql, line.format(m=marker).encode() + b"\n"))
    with pytest.raises(RestoreFailed, match="refused before anything ran: sql_dump: psql meta-command"):
        restore_dump(dump, scratch, fmt="plain", database="evil_midline")
    assert not marker.exists() and tables(scratch, "evil_midline") == []


def test_psqls_restriction_holds_even_if_the_reader_missed_one(clean_sql, scratch, tmp_path, monkeypatch):
    """Defence in depth: with the statement reader switched off, psql 18's \\restrict (with the
    restorer's key, sent before the dump) still refuses every meta-command, and nothing commits."""
    key = own_key(clean_sql)
    monkeypatch.setattr(database, "check_plain", lambda path: key)  # "accepted", the dump's key as read
    for n, line in enumerate((b"\\! touch {m}", b"SELECT 1; \\! touch {m}", b"\\restrict mine\n\\! touch {m}",
                              b"\\o {m}\nSELECT 1;")):
        marker = tmp_path / f"depth{n}.marker"
        dump = tmp_path / f"depth{n}.sql"
        dump.write_bytes(hostile(clean_sql, line.replace(b"{m}", str(marker).encode()) + b"\n"))
        with pytest.raises(RestoreFailed, match="backslash commands are restricted"):
            restore_dump(dump, scratch, fmt="plain", database=f"evil_depth_{n}")
        assert not marker.exists()
        assert tables(scratch, f"evil_depth_{n}") == []  # one transaction: nothing committed
    assert roles_left(scratch) == []


def test_a_second_restrict_pair_cannot_lift_the_restriction(clean_sql, scratch, tmp_path):
    marker = tmp_path / "lifted.marker"
    key = clean_sql.split(b"\\restrict ", 1)[1].split(b"\n", 1)[0]
    dump = tmp_path / "lift.sql"
    dump.write_bytes(hostile(clean_sql, b"\\unrestrict " + key + b"\n\\! touch " + str(marker).encode() + b"\n"))
    with pytest.raises(RestoreFailed, match=r"refused before anything ran: sql_dump: \\unrestrict at line"):
        restore_dump(dump, scratch, fmt="plain", database="evil_lift")
    assert not marker.exists()


def test_copy_to_program_fails_because_the_restore_role_is_not_a_superuser(clean_sql, scratch, tmp_path,
                                                                          monkeypatch):
    """The statement reader refuses these (pg_dump writes no such COPY); with it switched off, the
    restore role refuses them: not a superuser, no server file or program access, no other role."""
    marker = tmp_path / "program.marker"
    dump = tmp_path / "program.sql"
    dump.write_bytes(hostile(clean_sql, f"COPY (SELECT 1) TO PROGRAM 'touch {marker}';\n".encode()))
    with pytest.raises(DumpUnusable, match="not pg_dump's 'COPY table"):
        check_plain(dump)
    key = own_key(clean_sql)
    monkeypatch.setattr(database, "check_plain", lambda path: key)
    with pytest.raises(RestoreFailed) as err:
        restore_dump(dump, scratch, fmt="plain", database="evil_program")
    assert "pg_execute_server_program" in str(err.value) or "permission denied" in str(err.value)
    assert not marker.exists()
    for n, sql in enumerate(("COPY (SELECT 1) TO '/tmp/backupkit-evil-file';", "SET ROLE postgres;",
                             "CREATE ROLE evil SUPERUSER;", "SELECT pg_read_file('/etc/passwd');",
                             "SET SESSION AUTHORIZATION postgres;")):
        dump.write_bytes(hostile(clean_sql, sql.encode() + b"\n"))
        with pytest.raises(RestoreFailed, match="permission denied|must be superuser|not allowed"):
            restore_dump(dump, scratch, fmt="plain", database=f"evil_server_{n}")
    assert not Path("/tmp/backupkit-evil-file").exists()
    assert scratch.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'evil'").strip() == "0"
    assert roles_left(scratch) == []


def test_replace_mode_restore_cannot_reach_the_live_database(clean_sql, pg, live, tmp_path):
    """Beside the live database on the application's server: \\connect is refused, a hidden one is
    stopped by psql, and the restore role owns nothing and is gone afterwards."""
    server = ServerTarget(host="127.0.0.1", port=pg.port, user="postgres")
    before = exact_row_counts(pg, live)
    attack = f"\\connect {LIVE}\nINSERT INTO accounts VALUES (2, 'mallory');\n".encode()
    for n, lines in enumerate((attack, b"SELECT 1; \\connect " + LIVE.encode() + b"\n")):
        dump = tmp_path / f"replace{n}.sql"
        dump.write_bytes(hostile(clean_sql, lines))
        with pytest.raises(RestoreFailed):
            restore_dump(dump, server, fmt="plain", database=f"hostile_new_{n}", no_privileges=False)
        server.drop_created_database(f"hostile_new_{n}")
    assert exact_row_counts(pg, live) == before
    assert roles_left(pg) == []
    # A clean dump restores there, and what it made belongs to the connection's user afterwards.
    dump = tmp_path / "clean.sql"
    dump.write_bytes(clean_sql)
    try:
        restore_dump(dump, server, fmt="plain", database="hostile_new_ok", no_privileges=False)
        assert exact_row_counts(pg, "hostile_new_ok") == {"public.notes": 2}
        assert pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'notes'", "hostile_new_ok").strip() == \
            "postgres"
        assert pg.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'hostile_new_ok'").strip() \
            == "postgres"
        assert roles_left(pg) == []
    finally:
        server.drop_created_database("hostile_new_ok")


def test_the_clean_dump_restores_with_its_own_restrict_pair_dropped(clean_sql, scratch, tmp_path):
    dump = tmp_path / "clean.sql.gz"
    dump.write_bytes(gzip.compress(clean_sql))
    restore_dump(dump, scratch, fmt="plain", database="clean_restore")
    assert scratch.psql("SELECT body FROM notes ORDER BY id", "clean_restore").splitlines() == \
        ["a\\b", "\\. not the end"]
