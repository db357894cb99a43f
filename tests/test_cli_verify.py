"""``backupctl verify``: exit codes, problem lines, --json, and S3 objects on a real
(loopback) S3 endpoint."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from backupkit.cli import main
from sandbox.s3server import SANDBOX_KEY, SANDBOX_SECRET
from backupkit.commands.verify import verify_s3


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
    assert out[1].startswith(f"{bad}: custom_dump: file ends inside ")
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
                    "sha256": hashlib.sha256(dumps["tar"].read_bytes()).hexdigest(), "problems": [], "warnings": []}
    assert damaged["ok"] is False and damaged["kind"] == "sql_gzip"
    assert damaged["problems"] == [{"check": "gzip", "detail": "gzip stream truncated (it ends inside member 1)"}]


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
    assert [p["check"] for p in reports[1]["problems"]] == ["custom_dump"]
    assert reports[2]["problems"] == [{"check": "exists", "detail": f"{uris[2]} missing in S3"}]
    assert list(s3_env.iterdir()) == []  # temp copies are gone


def test_s3_checksum_is_compared_by_the_copy_check(s3, bucket, dumps, tmp_path):
    body = dumps["plain_gz"].read_bytes()
    s3.put_object(Bucket=bucket, Key="k.sql.gz", Body=body, ChecksumAlgorithm="SHA256")
    report = verify_s3(f"s3://{bucket}/k.sql.gz", s3, tmp_path)
    checks = {r.check: r for r in report.results}
    assert report.ok and checks["s3_checksum"].detail.startswith("SHA-256 matches S3's stored checksum")


def test_multipart_sha256_copy_uses_the_composite_logic(s3, bucket, dumps, tmp_path):
    """moto reports a multipart SHA-256 without the -N suffix; taken as a whole-file digest it
    would be a false 'mismatch'. verify s3:// goes through checks/s3copy.py like the daily check."""
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    s3.upload_file(str(_large_plain(dumps, tmp_path)), bucket, "multi.sql.gz",
                   ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=cfg)
    report = verify_s3(f"s3://{bucket}/multi.sql.gz", s3, tmp_path / "tmp")
    detail = {r.check: r.detail for r in report.results}["s3_checksum"]
    assert report.ok and "composite SHA-256 of" in detail, [(r.check, r.detail) for r in report.problems()]


def _large_plain(dumps, tmp_path):
    """A real plain dump over 10 MiB (so boto3 uploads it in parts): more rows of a real table."""
    sql = dumps["plain"].read_bytes()
    start = sql.index(b"COPY public.bookings")
    rows_at = sql.index(b"\n", start) + 1
    end = sql.index(b"\n\\.\n", rows_at) + 1
    rows = sql[rows_at:end]
    copies = (12 << 20) // len(rows) + 1
    path = tmp_path / "large.sql.gz"
    path.write_bytes(gzip.compress(sql[:rows_at] + rows * copies + sql[end:], 0))
    return path


def test_s3_sidecar_in_the_bucket_is_read(s3, bucket, dumps, tmp_path):
    body = dumps["custom"].read_bytes()
    s3.put_object(Bucket=bucket, Key="db/n.dump", Body=body)
    good = hashlib.sha256(body).hexdigest()
    s3.put_object(Bucket=bucket, Key="db/n.dump.sha256", Body=f"{good}  n.dump\n".encode())
    report = verify_s3(f"s3://{bucket}/db/n.dump", s3, tmp_path)
    assert report.ok and ("sha256", "matches sidecar n.dump.sha256 in the bucket") in \
        [(r.check, r.detail) for r in report.results]
    s3.put_object(Bucket=bucket, Key="db/n.dump.sha256", Body=f"{'0' * 64}  n.dump\n".encode())
    [problem] = verify_s3(f"s3://{bucket}/db/n.dump", s3, tmp_path).problems()
    assert problem.check == "sha256" and problem.detail.startswith(f"mismatch: file has {good}, sidecar n.dump.sha256")
    s3.put_object(Bucket=bucket, Key="db/n.dump.sha256", Body=f"{good}  other.dump\n{good}  n.dump\n".encode())
    [problem] = verify_s3(f"s3://{bucket}/db/n.dump", s3, tmp_path).problems()
    assert problem.check == "sha256" and "also names other files (other.dump)" in problem.detail


def test_no_such_bucket_is_named(s3, bucket, s3_env, capsys):
    assert main(["verify", "--json", "s3://no-such-bucket-here/x.dump"]) == 1
    [report] = json.loads(capsys.readouterr().out)
    assert report["problems"] == [{"check": "exists",
                                   "detail": "s3://no-such-bucket-here/x.dump: no such bucket (no-such-bucket-here)"}]


def test_json_has_every_artifact_even_unreadable_ones(dumps, tmp_path, capsys, monkeypatch):
    unreadable = tmp_path / "secret.dump"
    unreadable.write_bytes(dumps["custom"].read_bytes())
    unreadable.chmod(0)
    fifo = tmp_path / "fifo.dump"
    import os

    os.mkfifo(fifo)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    code = main(["verify", "--json", str(dumps["custom"]), str(unreadable), str(fifo), str(tmp_path / "nope.dump")])
    reports = json.loads(capsys.readouterr().out)
    assert code == 1 and [r["path"] for r in reports] == [str(dumps["custom"]), str(unreadable), str(fifo),
                                                          str(tmp_path / "nope.dump")]
    assert reports[0]["ok"] and not any(r["ok"] for r in reports[2:])


def test_a_name_starting_with_a_dash_is_never_an_option(dumps, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "--list").write_bytes(dumps["custom"].read_bytes())
    assert main(["verify", "--deep", "--", "--list"]) == 0
    assert capsys.readouterr().out.startswith("--list: ok (pg_custom, ")


def test_deep_and_workers_options(dumps, capsys):
    assert main(["verify", "--deep", "--workers", "1", "--json", str(dumps["custom"])]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["ok"]
    assert main(["verify", "--workers", "0", str(dumps["custom"])]) == 2


def test_a_crash_is_named_by_its_signal():
    from backupkit.checks.pgdump import exit_description

    assert exit_description("pg_restore", -11) == "pg_restore killed by signal 11 (SIGSEGV)"
    assert exit_description("pg_restore", 1) == "pg_restore exited 1"


def test_two_line_sidecar_naming_another_file_fails(dumps, tmp_path, capsys):
    import shutil

    path = tmp_path / "trixtech.dump"
    shutil.copy(dumps["custom"], path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "trixtech.dump.sha256").write_text(f"{'1' * 64}  yesterday.dump\n{digest}  trixtech.dump\n")
    assert main(["verify", str(path)]) == 1
    line = capsys.readouterr().out.strip()
    assert line == f"{path}: sha256: malformed sidecar: trixtech.dump.sha256: also names other files (yesterday.dump)"


def test_directory_dump_sidecar_is_read(dumps, tmp_path, capsys):
    import shutil
    import subprocess

    d = Path(shutil.copytree(dumps["directory"], tmp_path / "trixtech.dir"))
    sums = subprocess.run("sha256sum *", shell=True, cwd=d, capture_output=True, text=True, check=True).stdout
    (tmp_path / "trixtech.dir.sha256").write_text(sums)
    assert main(["verify", str(d)]) == 0
    victim = max(d.glob("*.dat*"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(data)
    assert main(["verify", str(d)]) == 1
    out = capsys.readouterr().out
    assert f"{d}: sha256: mismatch: {victim.name} has " in out


def test_configured_source_format_is_enforced(dumps, tmp_path, monkeypatch, capsys):
    """A file in a source's directory, named by its pattern, must have the source's format."""
    db_dir = tmp_path / "backups" / "database"
    cfg = tmp_path / "backups.yaml"
    cfg.write_text(f"""bucket: {{name: trixtech-backups}}
databases:
  - name: trixtech-db
    conn_id: trixtech_app_db
    dump_format: custom
    local_dir: {db_dir}
    s3_prefix: database/
    pattern: trixtech_%Y%m%d_%H%M%S.dump
verification: {{state_dir: {tmp_path / 'state'}}}
""")
    db_dir.mkdir(parents=True, exist_ok=True)
    wrong = db_dir / "trixtech_20250101_020000.dump"
    wrong.write_bytes(dumps["tar"].read_bytes())  # a tar-format dump where custom dumps are configured
    assert main(["--config", str(cfg), "verify", str(wrong)]) == 1
    assert "the source is configured as 'custom'" in capsys.readouterr().out


def test_verification_workers_key(tmp_path):
    from backupkit.config import ConfigError, load_config

    base = ("bucket: {name: trixtech-backups}\ndatabases:\n  - {name: db, conn_id: c, dump_format: custom, "
            f"local_dir: {tmp_path}, s3_prefix: d/, pattern: 'x_%Y%m%d_%H%M%S.dump'}}\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(base + "verification: {workers: 3}\n")
    assert load_config(cfg).verification_workers == 3
    cfg.write_text(base)
    assert load_config(cfg).verification_workers == 0
    cfg.write_text(base + "verification: {workers: -1}\n")
    with pytest.raises(ConfigError, match="verification.workers: must be >= 0"):
        load_config(cfg)
