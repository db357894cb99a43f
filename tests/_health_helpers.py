"""A sandbox for the health page: a generated history, the daily checks run for real, facts recorded.

Shared by tests/test_health*.py and bench/bench_health.py. Everything is real: the backups come
from the sandbox's history generator (real pg_dump, real tar.gz, copies uploaded to moto's S3
server with SHA-256 checksums) and the daily run is the daily job's own functions, so the
verification memory and ``facts/daily.json`` are what production would hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from backupkit.config import Config, load_config
from backupkit.health import record_daily_run
from backupkit.jobs import daily
from backupkit.storage.objectstore import Bucket
from sandbox.history import Defects, History, generate_history
from sandbox.s3server import create_production_bucket, reset
from sandbox.stack import sandbox_env

DAILY_DAG = "backup_daily_verification"


@dataclass
class HealthSandbox:
    root: Path
    config: Config
    bucket: Bucket
    history: History
    env: dict[str, str]

    def rerun_daily(self, now: datetime) -> list[dict]:
        return run_daily(self.config, self.bucket, now)


def run_daily(config: Config, bucket: Bucket, now: datetime, run_id: str | None = None) -> list[dict]:
    """The daily verification's checks for every source, in-process, then its facts file."""
    names = [s.name for s in config.sources]
    results: list[dict] = []
    for name in names:
        results += daily.check_presence(config, name, now)
        results += daily.check_integrity(config, name, now)
        results += daily.check_cloud_copies(config, name, bucket)
    results += daily.check_logs(config)
    record_daily_run(config.state, results, source_names=names, dag_id=DAILY_DAG,
                     run_id=run_id or f"manual__{now.isoformat()}", now=now)
    return results


def build(pg, moto_server, root: Path, env_patch: pytest.MonkeyPatch, *, days: int, database: str, now: datetime,
          defects: Defects = Defects(), daily_run: bool = True, multipart_threshold: int | None = None) -> HealthSandbox:
    """Generate ``days`` nights under ``root`` and (unless told not to) run the daily checks once.

    Exports the sandbox's environment (BACKUP_ROOT, BACKUPKIT_CONFIG, ...) through ``env_patch``, whose
    ``undo`` restores what was there before: deleting the keys instead would also remove the AWS keys
    the session's loopback S3 fixture exported, and break every later test in the same worker.
    """
    reset(moto_server.endpoint_url)
    env = sandbox_env(root, pg.port, moto_server.endpoint_url)
    for key, value in env.items():
        env_patch.setenv(key, value)
    config = load_config()
    client = moto_server.client()
    create_production_bucket(client, config.bucket)
    extra = {} if multipart_threshold is None else {"multipart_threshold": multipart_threshold}
    history = generate_history(config, pg, now=now, days=days, s3_client=client, defects=defects, database=database,
                               **extra)
    bucket = Bucket(client, config.bucket)
    if daily_run:
        run_daily(config, bucket, now)
    return HealthSandbox(root, config, bucket, history, env)


__all__ = ["DAILY_DAG", "HealthSandbox", "build", "run_daily"]
