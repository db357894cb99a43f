"""Registers the Backup Health plugin (backup_airflow/health); the loader imports top-level files only."""

from backup_airflow.health.plugin import BackupHealthPlugin  # noqa: F401
