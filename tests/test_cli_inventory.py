"""``backupctl inventory`` against a real history and the loopback S3 endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _clock import SESSION_NOW
from _daily_service_helpers import NIGHTS, make_history, upload_history
from backupkit.catalog import local_backups, s3_key_for
from backupkit.cli import main
from sandbox.s3server import SANDBOX_KEY, SANDBOX_SECRET

SOURCES = ["trixtech-db", "trixtech-db-sql", "trixtech-files"]


@pytest.fixture
def history(tmp_path, dumps):
    return make_history(tmp_path / "h", dumps["custom"], dumps["plain_gz"], now=SESSION_NOW)


def _run(capsys, history, endpoint, *extra):
    code = main(["--config", str(history.config_path), "inventory", "--endpoint-url", endpoint, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_inventory_of_a_healthy_history(history, s3, bucket, moto_server, capsys):
    config = history.config()
    upload_history(s3, config)
    code, out, err = _run(capsys, history, moto_server.endpoint_url, "--json")
    assert (code, err) == (0, "")
    rows = json.loads(out)
    assert [r["source"] for r in rows] == SOURCES
    for r in rows:
        newest = local_backups(config.source(r["source"]))[-1]
        assert r["ok"] and r["count"] == NIGHTS
        assert r["latest"]["name"] == newest.name and r["latest"]["size"] == newest.size
        assert 0 <= r["latest"]["age_hours"] < 26
        assert r["s3"]["status"] == "present, checksum matches"
        assert r["s3"]["uri"] == f"s3://trixtech-backups/{s3_key_for(config.source(r['source']), newest.name)}"

    code, out, _ = _run(capsys, history, moto_server.endpoint_url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["SOURCE", "LATEST", "AGE_H", "SIZE", "COUNT", "S3"]
    for name in SOURCES:
        row = next(line for line in lines if line.startswith(name + " "))
        assert "present, checksum matches" in row and f" {NIGHTS} " in row


def test_missing_or_different_copy_and_empty_source_exit_1(history, s3, bucket, moto_server, capsys):
    config = history.config()
    upload_history(s3, config)
    db = config.source("trixtech-db")
    s3.delete_object(Bucket=bucket, Key=s3_key_for(db, local_backups(db)[-1].name))
    sql = config.source("trixtech-db-sql")
    newest_sql = local_backups(sql)[-1]
    body = bytearray(newest_sql.path.read_bytes())
    body[-1] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=s3_key_for(sql, newest_sql.name), Body=bytes(body), ChecksumAlgorithm="SHA256")
    for b in local_backups(config.source("trixtech-files")):
        b.path.unlink()

    code, out, err = _run(capsys, history, moto_server.endpoint_url, "--json")
    assert code == 1
    rows = {r["source"]: r for r in json.loads(out)}
    assert rows["trixtech-db"]["s3"]["status"] == "missing" and not rows["trixtech-db"]["ok"]
    assert rows["trixtech-db-sql"]["s3"]["status"] == "present, checksum differs"
    assert rows["trixtech-files"]["latest"] is None and rows["trixtech-files"]["count"] == 0
    assert "trixtech-db: S3 copy: missing" in err
    assert "trixtech-db-sql: S3 copy: present, checksum differs" in err
    assert "trixtech-files: no backups in" in err


def test_installed_command_uses_aws_endpoint_url(history, s3, bucket, moto_server):
    upload_history(s3, history.config())
    exe = Path(sys.executable).parent / "backupctl"
    # What `source .sandbox/env.sh` sets: the endpoint and keys, read by AWS's default chain.
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_server.endpoint_url,
           "AWS_ACCESS_KEY_ID": SANDBOX_KEY, "AWS_SECRET_ACCESS_KEY": SANDBOX_SECRET}
    proc = subprocess.run([str(exe), "--config", str(history.config_path), "inventory"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("present, checksum matches") == len(SOURCES)


def test_a_file_changed_since_its_verification_is_not_called_matching(history, s3, bucket, moto_server, capsys):
    """Issue 9.7: the S3 copy may still match the sidecar, but the local file is no longer what was verified."""
    from backupkit.jobs import daily
    from backupkit.state import VerificationState

    config = history.config()
    upload_history(s3, config)
    with VerificationState(config.state_dir) as state:
        daily.check_integrity(config, "trixtech-db", state=state)
    newest = local_backups(config.source("trixtech-db"))[-1]
    with open(newest.path, "r+b") as f:  # same size, one bit
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    code, out, err = _run(capsys, history, moto_server.endpoint_url, "--json")
    row = {r["source"]: r for r in json.loads(out)}["trixtech-db"]
    assert code == 1 and not row["ok"]
    assert "checksum matches; local copy changed since its last verification" in row["s3"]["status"]
    assert "re-read pending" in err
