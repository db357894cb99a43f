"""Connection settings (issue 9.4): parsed by libpq's rules, redacted against the parser, fuzzed.

The reference for the keyword/value form is libpq itself: each generated setting is also given
to the real psql 18 (``psql "<setting>"`` against a server that checks the password), so the
parser and libpq must agree on which password a setting carries.
"""

from __future__ import annotations

import re
import subprocess
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupkit import masking
from backupkit.pgbin import pg_bin
from backupkit.restore.conninfo import (UNPARSEABLE, SettingError, parse, point_setting_at, redact, secret_fragments,
                                        setting_database)
from backupkit.restore.scratch import LocalScratch

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Marked so a test can tell the password from the rest of the setting, whatever characters follow.
password = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                   min_size=0, max_size=24).map(lambda t: "Pw9" + t)


def keyword_quoted(pw: str) -> str:
    return "host=db.internal port=5432 dbname=trixtech user=app password='" + \
        pw.replace("\\", "\\\\").replace("'", "\\'") + "' sslmode=require"


def keyword_bare(pw: str) -> str:
    escaped = "".join("\\" + c if c.isspace() or c in "\\'" else c for c in pw)
    return f"dbname=trixtech password={escaped} host=db"


def url_encoded(pw: str) -> str:
    return f"postgresql://app:{quote(pw, safe='')}@db.internal:5432/trixtech?sslmode=require"


def url_raw(pw: str) -> str:
    """The password pasted without percent-encoding (#, /, ? and @ included), as people do."""
    return f"postgresql://app:{pw}@db.internal:5432/trixtech?sslmode=require"


FORMS = {"keyword_quoted": keyword_quoted, "keyword_bare": keyword_bare, "url_encoded": url_encoded}


@FUZZ
@given(pw=password, form=st.sampled_from(sorted(FORMS)))
def test_the_parser_finds_the_password_and_redaction_removes_it(pw, form):
    text = FORMS[form](pw)
    s = parse(text)
    assert [p.value for p in s.secrets()] == [pw]
    shown = redact(text)
    assert pw not in shown and "Pw9" not in shown and "***" in shown
    assert pw in secret_fragments(text)
    assert setting_database(text) == "trixtech"
    moved = point_setting_at(text, "trixtech", "trixtech_restored_1")
    assert setting_database(moved) == "trixtech_restored_1" and [p.value for p in parse(moved).secrets()] == [pw]
    assert point_setting_at(moved, "trixtech_restored_1", "trixtech") == text  # every other byte as it was


@FUZZ
@given(pw=password.filter(lambda p: not any(c.isspace() or c == "%" for c in p)))
def test_unencoded_url_passwords_are_found_whole(pw):
    text = url_raw(pw)
    assert [p.value for p in parse(text).secrets()] == [pw]
    assert "Pw9" not in redact(text) and setting_database(text) == "trixtech"


@FUZZ
@given(text=st.text(max_size=80))
def test_anything_parses_or_is_refused_and_nothing_unparseable_is_shown(text):
    try:
        parse(text)
    except SettingError as exc:
        assert re.fullmatch(r"missing '=' after keyword \d+ of a keyword/value setting|unterminated quoted value "
                            r"in a keyword/value setting|an empty connection setting|a URL setting whose host part "
                            r"cannot be read", str(exc)), str(exc)  # fixed words only: never the text itself
        assert redact(text) == UNPARSEABLE and (not text or text in secret_fragments(text))
        assert setting_database(text) is None


@pytest.mark.parametrize("text, password, database", [
    ("password='it\\'s secret' dbname=trixtech", "it's secret", "trixtech"),
    ("password=a\\ b dbname=x", "a b", "x"),
    ("postgresql://u:p#a/s?s@db:5432/app?sslmode=require", "p#a/s?s", "app"),
    ("postgresql://u:s3cret@db/app?dbname=other", "s3cret", "other"),
    ("postgres://u@db/app?password=in%20query", "in query", "app"),
    ("host=db sslpassword=keyphrase dbname=app", "keyphrase", "app"),
])
def test_the_cases_of_the_issue(text, password, database):
    assert password in [p.value for p in parse(text).secrets()]
    assert password not in redact(text) and setting_database(text) == database


@pytest.mark.parametrize("bad", ["host=db 'x", "dbname x", "password='unterminated", "= x", "not a setting at all"])
def test_malformed_settings_are_errors_that_do_not_quote_them(bad):
    with pytest.raises(SettingError) as err:
        parse(bad)
    assert bad not in str(err.value)
    with pytest.raises(ValueError, match="cannot be parsed"):
        point_setting_at(bad, "trixtech", "n1")


def test_libpq_agrees_on_the_password_of_keyword_settings():
    """The password the parser finds is the one libpq sends: the real psql logs in with it."""
    pw = "it's a \\ secret"
    with LocalScratch() as server:
        server.psql(f"CREATE ROLE libpq_check LOGIN PASSWORD '{pw.replace(chr(39), chr(39) * 2)}'")
        for text in (keyword_quoted(pw), keyword_bare(pw)):
            conn = text.replace("host=db.internal", "").replace("host=db", "").replace("port=5432", "") \
                .replace("sslmode=require", "").replace("user=app", "").replace("dbname=trixtech", "dbname=postgres")
            conn += f" host=127.0.0.1 port={server.port} user=libpq_check"
            assert [p.value for p in parse(conn).secrets()] == [pw]
            env = {k: v for k, v in server.client_env().items() if k != "PGPASSWORD"}
            proc = subprocess.run([pg_bin("psql"), conn, "-X", "-A", "-t", "-w", "-c", "SELECT current_user"],
                                  capture_output=True, text=True, env=env)
            assert proc.returncode == 0 and proc.stdout.strip() == "libpq_check", proc.stderr


def test_hidden_fragments_reach_every_registered_masker():
    seen: list[str] = []
    masking.hide(["early-secret-fragment"])
    masking.register_masker(seen.append)
    masking.hide(secret_fragments("postgresql://app:late%23secret@db/app"))
    assert "early-secret-fragment" in seen and "late#secret" in seen and "late%23secret" in seen
