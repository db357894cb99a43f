"""Helpers for the DR drill tests: a small configuration, a sandbox history in a locked bucket, and
the S3 "attacks" the tests inject (and undo).

Everything is real: the history is made by the real pg_dump of a real PostgreSQL, copies live in a
loopback S3 (moto server) in a bucket with object lock and a default GOVERNANCE retention, and the
undo removes injected versions the way an operator would (``BypassGovernanceRetention``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from _clock import SESSION_NOW
from _config_helpers import FILE_SET_AND_STATE_YAML, short_dir, trixtech_db_yaml
from backupkit.config import Config
from sandbox.history import History

LOCK_DAYS = 7
# The history is generated as of two hours ago, so the newest backup is at least 2 h old whenever
# the tests run (a 1 h RPO target then fails for certain) and at most 26 h old (the test
# configuration's 48 h target passes for certain, whatever the time of day).
HISTORY_LAG = timedelta(hours=2)


def drill_config_yaml(*, database: str, drill_extra: str = "") -> str:
    """Two database sources (custom and plain .sql.gz dumps of ``database``) and one file set;
    state, scratch, smoke URL and alerting from the environment."""
    return f"""
bucket: {{name: trixtech-backups, aws_conn_id: aws_default}}
databases:
{trixtech_db_yaml(database)}  - name: trixtech-db-sql
    database: {database}
    conn_id: trixtech_app_db
    dump_format: plain
    local_dir: ${{BACKUP_ROOT}}/database-sql
    s3_prefix: database-sql/
    pattern: trixtech_%Y%m%d_%H%M%S.sql.gz
    restore: {{key_tables: [users, bookings]}}
{FILE_SET_AND_STATE_YAML}restore: {{scratch_dir: "${{BACKUP_SCRATCH_DIR}}"}}
reports: {{require_secure_transport: false}}
drill:
  date: "11-15"
  rto_target_minutes: 30
  rpo_target_hours: 48
  smoke_check_url: "${{BACKUP_SMOKE_URL:-}}"
  smoke_check_timeout_seconds: 3
{drill_extra}"""


def history_now() -> datetime:
    return SESSION_NOW - HISTORY_LAG


@dataclass
class Injected:
    """Versions a test added on top of locked objects, to be removed again."""

    client: Any
    bucket: str
    versions: list[tuple[str, str]]

    def undo(self) -> None:
        for key, vid in self.versions:
            self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=vid, BypassGovernanceRetention=True)


def overwrite(client: Any, bucket: str, key: str, body: bytes) -> tuple[str, str]:
    """Put a new current version (with S3's SHA-256, as any uploader would); returns (key, version)."""
    resp = client.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256",
                             ServerSideEncryption="AES256")
    return key, resp["VersionId"]


def flipped(data: bytes) -> bytes:
    """The same bytes with one bit flipped in the middle (bit rot, a corrupted upload)."""
    mid = len(data) // 2
    return data[:mid] + bytes([data[mid] ^ 0x10]) + data[mid + 1:]


def damage_newest_in_s3(config: Config, history: History, client: Any, source: str) -> Injected:
    """The newest S3 copy of ``source`` gets other bytes of the same size (its sidecar is intact)."""
    src = config.source(source)
    newest = history.newest(source)
    key = src.s3_prefix + newest.name
    return Injected(client, config.bucket, [overwrite(client, config.bucket, key, flipped(newest.read_bytes()))])


def encrypt_all(config: Config, client: Any) -> Injected:
    """A ransomware run with the backup credentials: every backup, sidecar and manifest object is
    overwritten with "encrypted" bytes (new versions; the locked originals stay underneath)."""
    done = []
    for src in config.sources:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=config.bucket, Prefix=src.s3_prefix):
            for obj in page.get("Contents", ()):
                done.append(overwrite(client, config.bucket, obj["Key"], b"ENCRYPTED " + obj["Key"].encode()))
    return Injected(client, config.bucket, done)


__all__ = ["LOCK_DAYS", "HISTORY_LAG", "short_dir", "drill_config_yaml", "history_now", "Injected", "overwrite",
           "flipped", "damage_newest_in_s3", "encrypt_all"]
