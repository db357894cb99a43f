"""Connections and configuration as the operators need them.

Both helpers are called at task run time (never at DAG parse time), so a DAG file stays free of
network access and a connection changed in the UI takes effect on the next run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from backupkit.config import Config, ConfigError, load_config
from backupkit.storage.objectstore import Bucket


def backup_config(path: str | Path | None = None) -> Config:
    """The validated backup configuration (``$BACKUPKIT_CONFIG`` or include/config/backups.yaml).

    An invalid file fails the task without retries (waiting will not fix a typo); at parse
    time it is the DAG's import error, naming file, key and problem.
    """
    try:
        return load_config(path or None)
    except ConfigError as exc:
        raise AirflowFailException(f"invalid backup configuration: {exc}") from exc


def s3_client(aws_conn_id: str | None) -> Any:
    """A boto3 S3 client from an Airflow AWS connection.

    ``S3Hook`` resolves credentials, region, ``endpoint_url`` (the sandbox's loopback S3) and
    ``config_kwargs`` from the connection, so the core gets a plain client and never sees Airflow.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=aws_conn_id).get_conn()


def bucket(config: Config, aws_conn_id: str | None = None) -> Bucket:
    """The configured bucket through the Airflow AWS connection (``bucket.aws_conn_id`` unless given)."""
    return Bucket(s3_client(aws_conn_id or config.aws_conn_id), config.bucket)


__all__ = ["backup_config", "s3_client", "bucket"]
