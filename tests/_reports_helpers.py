"""Helpers for the weekly-report and audit tests: a production-grade bucket, real verification of
the newest backups, recoverability records, and a small configuration written to a temp dir.

Nothing is faked: the bucket is configured through the S3 API exactly as production's should be
(default encryption, versioning, object lock with default retention, Block Public Access, a policy
that denies plain HTTP), and "verified" means :func:`backupkit.verify.verify_artifact` read the
backup in full, as the daily run does.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backupkit.catalog import local_backups
from backupkit.config import Config, load_config
from sandbox.s3server import create_production_bucket
from backupkit.state import VerificationState
from backupkit.verify import verify_artifact

LOCK_DAYS = 7


def tls_only_policy(bucket: str) -> str:
    """The policy AWS recommends for S3.5: deny every request not made over TLS."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]})


def create_audited_bucket(client, bucket: str, *, tls_policy: bool = True) -> None:
    """The production bucket plus what the audit requires: locked by default and TLS only.

    ``tls_policy=False`` for buckets that must serve objects over the loopback endpoint: moto
    ignores the policy's ``aws:SecureTransport`` condition and would deny every object request,
    and plain HTTP has no TLS to require (the configuration then says
    ``reports.require_secure_transport: false``).
    """
    create_production_bucket(client, bucket, object_lock_days=LOCK_DAYS)
    if tls_policy:
        client.put_bucket_policy(Bucket=bucket, Policy=tls_only_policy(bucket))


def sandbox_config_file(root: Path) -> Path:
    """The repository's configuration, with ``reports.require_secure_transport: false``: the sandbox
    S3 endpoint is plain HTTP on loopback, where a TLS-only bucket policy cannot be met."""
    import yaml

    from sandbox.stack import CONFIG_FILE

    data = yaml.safe_load(CONFIG_FILE.read_text())
    data.setdefault("reports", {})["require_secure_transport"] = False
    path = root / "backups.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def restore_default_encryption(client, bucket: str) -> None:
    client.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})


def verify_newest(config: Config, now: datetime) -> dict[str, str]:
    """Read the newest backup of every source in full and record the outcome, as the daily run does."""
    verified = {}
    with VerificationState(config.state_dir) as state:
        for src in config.sources:
            b = local_backups(src)[-1]
            key = f"{src.name}/{b.name}"
            report = verify_artifact(b.path, label=key)
            assert report.ok, [r for r in report.results if not r.ok]
            state.record(key, report.sha256, b.size, True, now)
            verified[src.name] = b.name
    return verified


def write_recoverability(config: Config, now: datetime, *, restore_ok: tuple[bool, bool, bool] = (True, True, True),
                         drill_ok: bool = True) -> None:
    """Three monthly restore tests (newest first in ``restore_ok``) and one DR drill, as JSON lines."""
    lines = []
    for i, ok in enumerate(restore_ok):
        when = now - timedelta(days=2 + 30 * i)
        run_id = f"scheduled__{when:%Y-%m-%dT09:00:00+00:00}"
        for src in config.sources:
            lines.append({"time": when.isoformat(), "source": src.name, "ok": ok if src.is_database else True,
                          "run_id": run_id, "duration_seconds": 12.5, "detail": "" if ok else "row counts differ"})
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.state.restore_tests.parent.mkdir(parents=True, exist_ok=True)
    config.state.restore_tests.write_text("".join(json.dumps(r) + "\n" for r in lines))
    drill = {"time": (now - timedelta(days=40)).isoformat(), "ok": drill_ok, "run_id": "manual__drill",
             "scenarios": [{"name": "database_corruption", "ok": True, "rto_seconds": 300, "rto_target_seconds": 3600,
                            "rpo_seconds": 25200, "rpo_target_seconds": 86400},
                           {"name": "datacenter_loss", "ok": True, "rto_seconds": 900, "rto_target_seconds": 14400,
                            "rpo_seconds": 25200, "rpo_target_seconds": 86400}]}
    config.state.dr_drills.parent.mkdir(parents=True, exist_ok=True)
    config.state.dr_drills.write_text(json.dumps(drill) + "\n")


def write_config(tmp: Path, body: str) -> Config:
    """A configuration file in ``tmp`` (``{root}`` in ``body`` is replaced by ``tmp``), loaded."""
    path = tmp / "backups.yaml"
    path.write_text(body.replace("{root}", str(tmp)))
    return load_config(path)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


__all__ = ["create_audited_bucket", "sandbox_config_file", "restore_default_encryption", "verify_newest",
           "write_recoverability", "write_config", "tls_only_policy", "utc", "LOCK_DAYS"]
