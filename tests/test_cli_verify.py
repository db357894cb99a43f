"""``backupctl verify``: exit codes, problem lines, --json, and S3 objects on a real
(loopback) S3 endpoint."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from backupkit.cli import main
from sandbox.s3server import SANDBOX_KEY, SANDBOX_SECRET
from backupkit.commands.verify import s3_expected_sha256, verify_s3


def cut(src, dst, fraction=0.6):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_all_good_exits_0(dumps, capsys):
    paths = [str(dumps[f]) for f in ("custom", "tar", "directory", "plain_gz")]
    assert main(["verify", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert all(": ok (" in line for line in lines)
    sha = hashlib.sha256(dumps["custom"].read_bytes()).hexdigest()
    assert lines[0] == f"{dumps['custom']}: ok (pg_custom, {dumps['custom'].stat().st_size} bytes, sha256 {sha})"


def test_problems_exit_1_one_line_each(dumps, tmp_path, capsys):
    bad = cut(dumps["custom"], tmp_path / "cut.dump")
    empty = tmp_path / "empty.dump"
    empty.touch()
    missing = tmp_path / "missing.dump"
    assert main(["verify", str(dumps["custom"]), str(bad), str(empty), str(missing)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{dumps['custom']}: ok (")
    assert out[1].startswith(f"{bad}: pg_restore: pg_restore exited 1: ")
    assert out[2:] == [f"{empty}: not_empty: file is empty (0 bytes)", f"{missing}: exists: No such file or directory"]


@pytest.mark.parametrize("argv", [["verify"], ["verify", "s3://bucket-only"], ["verify", "--no-such-flag", "x"]])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_json_output(dumps, tmp_path, capsys):
    bad = cut(dumps["plain_gz"], tmp_path / "cut.sql.gz")
    assert main(["verify", "--json", str(dumps["tar"]), str(bad)]) == 1
    good, damaged = json.loads(capsys.readouterr().out)
    assert good == {"path": str(dumps["tar"]), "ok": True, "kind": "pg_tar",
                    "sha256": hashlib.sha256(dumps["tar"].read_bytes()).hexdigest(), "problems": [],
                    "warnings": []}
    assert damaged["ok"] is False and damaged["kind"] == "sql_gzip"
    assert damaged["problems"] == [{"check": "gzip", "detail": "gzip stream truncated"}]


@pytest.fixture
def s3_env(moto_server, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SANDBOX_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SANDBOX_SECRET)
    monkeypatch.setenv("BACKUP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("BACKUPKIT_CONFIG", raising=False)
    return tmp_path / "state" / "tmp"


def test_s3_objects(s3, bucket, s3_env, dumps, capsys):
    good = dumps["custom"].read_bytes()
    s3.put_object(Bucket=bucket, Key="database/good.dump", Body=good, ChecksumAlgorithm="SHA256")
    s3.put_object(Bucket=bucket, Key="database/cut.dump", Body=good[: len(good) // 2])
    uris = [f"s3://{bucket}/database/{k}" for k in ("good.dump", "cut.dump", "absent.dump")]
    assert main(["verify", "--json", *uris]) == 1
    reports = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in reports] == uris
    assert reports[0]["ok"] and reports[0]["sha256"] == hashlib.sha256(good).hexdigest()
    assert [p["check"] for p in reports[1]["problems"]] == ["pg_restore"]
    assert reports[2]["problems"] == [{"check": "exists", "detail": "no such S3 object"}]
    assert list(s3_env.iterdir()) == []  # temp copies are gone


def test_s3_checksum_is_the_expected_digest(s3, bucket, dumps, tmp_path):
    body = dumps["plain_gz"].read_bytes()
    s3.put_object(Bucket=bucket, Key="k", Body=body, ChecksumAlgorithm="SHA256")
    head = s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert s3_expected_sha256(head) == hashlib.sha256(body).hexdigest()
    report = verify_s3(f"s3://{bucket}/k", s3, tmp_path)
    assert ("sha256", True, "matches expected digest") in [(r.check, r.ok, r.detail) for r in report.results]
    s3.put_object(Bucket=bucket, Key="plain", Body=body)
    assert s3_expected_sha256(s3.head_object(Bucket=bucket, Key="plain", ChecksumMode="ENABLED")) is None
    composite = base64.b64encode(hashlib.sha256(b"parts").digest()).decode() + "-3"
    assert s3_expected_sha256({"ChecksumSHA256": composite, "ChecksumType": "COMPOSITE"}) is None
