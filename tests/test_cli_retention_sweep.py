"""``backupctl retention sweep``: dry run by default, ``--apply`` deletes, exit 1 when
refused or when something failed; against the loopback S3 endpoint."""

from __future__ import annotations

import getpass

import json
import os
import subprocess
import sys

from _retention_sweep_helpers import SOURCE, all_files_of, backups_left, local_files, make_history, write_config
from backupkit.cli import main
from backupkit.retention.audit import AuditLog
from sandbox.s3server import SANDBOX_KEY, SANDBOX_SECRET


def run(capsys, config, *argv: str) -> tuple[int, str, str]:
    code = main(["--config", str(config.path), "retention", "sweep", "--source", SOURCE, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_by_default_then_apply(capsys, tmp_path, s3, bucket, moto_server):
    config = write_config(tmp_path)
    names = make_history(config, s3)
    local_dir = config.source(SOURCE).local_dir
    to_free = 2 * sum((local_dir / f).stat().st_size for f in all_files_of(names[:14]))  # local + S3
    kib = f"{to_free / 1024:.1f} KiB"
    url = moto_server.endpoint_url
    code, out, err = run(capsys, config, "--endpoint-url", url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("policy: keep 5 daily, 2 weekly snapshots")
    assert lines[1].split()[:3] == ["2024-04-20T02:00:00+00:00", "delete", names[0]]
    assert lines[-2] == f"19 backups: keep 5, delete 14, held 0, {kib} to free"
    assert lines[-1] == f"dry run: would delete 14 backups ({kib}); nothing was changed (use --apply to delete)"
    assert backups_left(config, s3) == (set(names), set(names))
    assert not AuditLog(config.state_dir).path.exists()

    code, out, err = run(capsys, config, "--endpoint-url", url, "--apply")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1].startswith(f"deleted 14 backups, freed {kib}; audit: s3://trixtech-backups/"
                                           "audit/retention/cli-")
    assert local_files(config) == all_files_of(names[14:])
    records = AuditLog(config.state_dir).records()
    assert records and {r["triggered_by"] for r in records} == {f"backupctl ({getpass.getuser()})"}


def test_json_report(capsys, tmp_path, s3, bucket, moto_server):
    config = write_config(tmp_path)
    names = make_history(config, s3)
    assert main(["--config", str(config.path), "retention", "hold", "--source", SOURCE, names[0], "--legal-hold",
                 "--reason", "case-42", "--endpoint-url", moto_server.endpoint_url]) == 0
    assert capsys.readouterr().out.startswith(f"held: {names[0]}: case-42 (s3://{bucket}/holds/{SOURCE}/")
    head = s3.head_object(Bucket=bucket, Key="database/" + names[0])
    assert head["ObjectLockLegalHoldStatus"] == "ON"
    code, out, _ = run(capsys, config, "--endpoint-url", moto_server.endpoint_url, "--apply", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] and not report["dry_run"]
    assert report["counts"] == {"total": 19, "kept": 5, "held": 1, "protected": 0, "deleted": 13, "would_delete": 0,
                                "failed": 0, "not_attempted": 0, "errors": 0, "locked": 0, "future": 0}
    assert report["held"] == [{"name": names[0],
                               "reason": f"hold recorded in s3://{bucket}/holds/{SOURCE}/{names[0]}: case-42"}]
    assert sorted(report["deleted"]) == names[1:14]
    assert report["requests"]["DeleteObjects"] == 1 and report["by_rule"]["daily"] == 5
    assert [d["action"] for d in report["decisions"]] == ["held"] + ["delete"] * 13 + ["keep"] * 5


def test_refused_exits_1_and_deletes_nothing(capsys, tmp_path, s3, bucket, moto_server):
    config = write_config(tmp_path, max_delete_fraction=0.5)
    names = make_history(config, s3)
    code, out, err = run(capsys, config, "--endpoint-url", moto_server.endpoint_url, "--apply")
    assert code == 1
    assert err == "refused: would delete 14 of 19 backups (74%), more than max_delete_fraction 0.5\n"
    assert "19 backups: keep 5, delete 14, held 0" in out  # the plan is still shown
    assert backups_left(config, s3) == (set(names), set(names))


def test_unreachable_endpoint_exits_1_with_the_error(capsys, tmp_path, s3, bucket):
    config = write_config(tmp_path)
    names = make_history(config, s3)
    code, _, err = run(capsys, config, "--endpoint-url", "http://127.0.0.1:9", "--apply")
    assert code == 1
    assert err.startswith("refused: the listing of backups was incomplete or failed; nothing may be deleted\n"
                          "error: trixtech-db: EndpointConnectionError: ")
    assert local_files(config) == all_files_of(names)


def test_dry_run_does_not_create_the_state_store(capsys, tmp_path, s3, bucket, moto_server):
    config = write_config(tmp_path)
    make_history(config, s3)
    config.state.verification_db.unlink()
    for suffix in ("-wal", "-shm"):
        config.state.verification_db.with_name("verification.sqlite" + suffix).unlink(missing_ok=True)
    code, out, _ = run(capsys, config, "--endpoint-url", moto_server.endpoint_url)
    assert code == 0 and "dry run: would delete 0 backups" in out  # nothing verified: nothing goes
    assert not config.state.verification_db.exists()


def test_unknown_source_is_a_usage_error(capsys, tmp_path):
    config = write_config(tmp_path)
    code = main(["--config", str(config.path), "retention", "sweep", "--source", "nope"])
    assert code == 2 and "unknown source 'nope'" in capsys.readouterr().err


def test_installed_command_in_a_real_process(tmp_path, s3, bucket, moto_server):
    config = write_config(tmp_path)
    names = make_history(config, s3)
    env = {**os.environ, "BACKUPKIT_CONFIG": str(config.path), "AWS_ENDPOINT_URL": moto_server.endpoint_url,
           "AWS_ACCESS_KEY_ID": SANDBOX_KEY, "AWS_SECRET_ACCESS_KEY": SANDBOX_SECRET}
    proc = subprocess.run([sys.executable, "-m", "backupkit.cli", "retention", "sweep", "--source", SOURCE,
                           "--apply", "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout)["deleted"]) == names[:14]
