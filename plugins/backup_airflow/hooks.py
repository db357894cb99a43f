"""Connections and configuration as the operators need them: :class:`BackupHook`.

One hook for the system this project talks to, as an Airflow provider has one per system: the
validated configuration, the bucket through the Airflow AWS connection (``S3Hook``), the state
directory. Used at task run time (never at DAG parse time, except :func:`backup_config` for the
YAML alone), so a DAG file stays free of network access and a connection changed in the UI takes
effect on the next run. The module-level functions are the hook's short forms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from airflow.sdk.bases.hook import BaseHook

from backupkit.config import Config, ConfigError, load_config
from backupkit.storage.objectstore import Bucket
from backupkit.storage.statedir import StateDir


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


class BackupHook(BaseHook):
    """The backup configuration, its bucket and its state directory, resolved once per task.

    :param config_path: the YAML configuration (default ``$BACKUPKIT_CONFIG`` or
        include/config/backups.yaml)
    :param aws_conn_id: the Airflow AWS connection of the bucket (default the configuration's
        ``bucket.aws_conn_id``)
    """

    hook_name = "Backup maintenance"

    def __init__(self, config_path: str | Path | None = None, aws_conn_id: str | None = None) -> None:
        super().__init__()
        self.config_path = config_path
        self.aws_conn_id = aws_conn_id
        self._config: Config | None = None
        self._bucket: Bucket | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = backup_config(self.config_path)
        return self._config

    @property
    def bucket(self) -> Bucket:
        if self._bucket is None:
            self._bucket = bucket(self.config, self.aws_conn_id)
        return self._bucket

    @property
    def state(self) -> StateDir:
        return self.config.state

    def check_source(self, name: str) -> None:
        """Fail now (no retry) on a source the configuration does not have, naming the ones it has."""
        try:
            self.config.source(name)
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from exc

    def get_conn(self) -> Bucket:
        """The bucket (Airflow's hook protocol: the client of the system)."""
        return self.bucket


__all__ = ["BackupHook", "backup_config", "s3_client", "bucket"]
