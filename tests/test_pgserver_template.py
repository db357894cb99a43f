"""Servers copied from one initdb'ed template (backupkit/pgserver.py, ``$BACKUPKIT_INITDB_TEMPLATE``):
each copy is a working cluster of its own, one template per user/password/server user, and a
server with initdb arguments is always initdb'ed afresh (its system identifier is its own)."""

from __future__ import annotations

import os
import pwd
import shutil

import pytest

from _config_helpers import short_dir
from backupkit.pgserver import INITDB_TEMPLATE_ENV, LocalPostgres, server_user


def _sysid(server: LocalPostgres) -> str:
    return server.psql("SELECT system_identifier FROM pg_control_system()").strip()


@pytest.fixture
def templates(monkeypatch):
    root = short_dir("bk-tpl-")
    monkeypatch.setenv(INITDB_TEMPLATE_ENV, str(root / "templates"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_copies_are_clusters_of_their_own_and_initdb_args_get_a_fresh_one(templates):
    a = LocalPostgres(templates / "a").start()
    b = LocalPostgres(templates / "b").start()
    wal = LocalPostgres(templates / "wal", initdb_args=["--wal-segsize=1"]).start()
    try:
        assert len([p for p in (templates / "templates").iterdir() if not p.name.startswith(".")]) == 1
        a.psql("CREATE TABLE only_in_a (x int)")
        assert b.psql("SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'").strip() == "0"
        assert _sysid(a) == _sysid(b)            # copies share it (see the module doc of pgserver)
        assert _sysid(wal) != _sysid(a)          # initdb arguments: a cluster of its own
        assert wal.psql("SHOW wal_segment_size").strip() == "1MB"
        user = server_user()
        uid = pwd.getpwnam(user).pw_uid if user else os.getuid()
        assert {p.stat().st_uid for p in b.data_dir.rglob("*") if not p.is_symlink()} == {uid}   # the server's own
    finally:
        for s in (a, b, wal):
            s.destroy()


def test_a_password_server_is_a_copy_that_wants_its_password_and_no_other(templates):
    import subprocess

    from backupkit.pgbin import pg_bin

    trust = LocalPostgres(templates / "trust").start()
    secret = LocalPostgres(templates / "secret", password="s3cr'et-pw").start()
    other = LocalPostgres(templates / "other", password="another-one").start()
    try:
        assert len([p for p in (templates / "templates").iterdir() if not p.name.startswith(".")]) == 1
        assert secret.psql("SELECT 1").strip() == "1"   # psql gets PGPASSWORD from client_env
        hba = [ln.split() for ln in (secret.data_dir / "pg_hba.conf").read_text().splitlines()
               if ln.strip() and not ln.lstrip().startswith("#")]
        assert hba and {fields[-1] for fields in hba} == {"scram-sha-256"}
        assert "trust" in (trust.data_dir / "pg_hba.conf").read_text()
        for server, password in ((secret, "wrong"), (secret, "another-one"), (other, "s3cr'et-pw")):
            env = {**server.client_env(), "PGPASSWORD": password}
            proc = subprocess.run([pg_bin("psql"), *server.conn_args("postgres"), "-X", "-c", "SELECT 1"],
                                  capture_output=True, text=True, env=env)
            assert proc.returncode != 0 and "password authentication failed" in proc.stderr
        assert "s3cr'et-pw" not in (secret.data_dir / "server.log").read_text()
    finally:
        for s in (trust, secret, other):
            s.destroy()
