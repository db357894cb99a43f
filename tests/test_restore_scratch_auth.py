"""Scratch servers hold restored production data: nobody gets in without the run's password (issue 9.3).

A real local scratch server: its pg_hba.conf has no ``trust`` line, a client without the
password or with a wrong one is refused over TCP and over the Unix socket, the password is in
no process's arguments, and initdb's password file is gone once the server runs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from backupkit.pgbin import pg_bin
from backupkit.restore.scratch import LocalScratch


@pytest.fixture(scope="module")
def scratch():
    with LocalScratch() as s:
        yield s


def psql(scratch: LocalScratch, env: dict, *host: str) -> subprocess.CompletedProcess:
    args = [pg_bin("psql"), *(host or ("-h", "127.0.0.1")), "-p", str(scratch.port), "-U", "postgres",
            "-d", "postgres", "-X", "-A", "-t", "-w", "-c", "SELECT 42"]
    return subprocess.run(args, capture_output=True, text=True, env=env)


def bare_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "5"
    return env


def test_pg_hba_never_trusts(scratch):
    rules = [line.split() for line in (scratch.data_dir / "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert rules and {r[-1] for r in rules} == {"scram-sha-256"}


@pytest.mark.parametrize("where", ["tcp", "socket"])
def test_without_the_password_nobody_gets_in(scratch, where):
    host = ("-h", "127.0.0.1") if where == "tcp" else ("-h", str(scratch.data_dir))
    refused = psql(scratch, bare_env(), *host)
    assert refused.returncode != 0 and "password" in refused.stderr
    wrong = psql(scratch, {**bare_env(), "PGPASSWORD": "not-the-password"}, *host)
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
    ok = psql(scratch, {**bare_env(), "PGPASSWORD": scratch.client_env()["PGPASSWORD"]}, *host)
    assert ok.returncode == 0 and ok.stdout.strip() == "42", ok.stderr


def test_the_password_is_per_server_and_in_no_argv(scratch):
    password = scratch.client_env()["PGPASSWORD"]
    assert len(password) >= 32 and password not in " ".join(scratch.conn_args()) + scratch.uri()
    with LocalScratch() as other:
        assert other.client_env()["PGPASSWORD"] != password
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert password.encode() not in cmdline, proc
    assert not list(scratch.work_dir.glob(".pw-*"))  # initdb's password file was removed
