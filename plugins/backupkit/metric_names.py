"""Every metric the project exports, named and described once.

Jobs set values through :class:`backupkit.metrics.MetricSet` with these names; the
Prometheus rules in ``include/prometheus/`` and the health page read them, and
``tests/test_prometheus_rules.py`` checks that every metric a rule uses is listed here.
Names follow the Velero / pgbackrest_exporter style: ``backup_<area>_<what>_<unit>``.
"""

from __future__ import annotations

# -- daily verification ---------------------------------------------------------------------
VERIFICATION_LAST_RUN = "backup_verification_last_run_timestamp_seconds"
VERIFICATION_LAST_SUCCESS = "backup_verification_last_success_timestamp_seconds"
VERIFICATION_STATUS = "backup_verification_status"
VERIFICATION_PROBLEMS = "backup_verification_problems"
AGE = "backup_age_seconds"
MAX_AGE = "backup_max_age_seconds"
SIZE = "backup_size_bytes"
LOG_PROBLEMS = "backup_log_problems"

# -- retention --------------------------------------------------------------------------------
RETENTION_LAST_RUN = "backup_retention_last_run_timestamp_seconds"
RETENTION_DELETED = "backup_retention_deleted_backups"
RETENTION_FREED = "backup_retention_freed_bytes"
RETENTION_HELD = "backup_retention_held_backups"
RETENTION_REFUSED = "backup_retention_refused"

# -- restore tests ----------------------------------------------------------------------------
RESTORE_TEST_LAST_RUN = "backup_restore_test_last_run_timestamp_seconds"
RESTORE_TEST_LAST_SUCCESS = "backup_restore_test_last_success_timestamp_seconds"
RESTORE_TEST_STATUS = "backup_restore_test_status"
RESTORE_TEST_DURATION = "backup_restore_test_duration_seconds"
RESTORE_TEST_ROWS = "backup_restore_test_verified_rows"
RESTORE_TEST_FILES = "backup_restore_test_verified_files"

# -- weekly report ----------------------------------------------------------------------------
WEEKLY_LAST_RUN = "backup_weekly_report_last_run_timestamp_seconds"
STORAGE_USED = "backup_storage_used_bytes"
STORAGE_FS_SIZE = "backup_storage_filesystem_size_bytes"
STORAGE_FS_FREE = "backup_storage_filesystem_free_bytes"
STORAGE_COST = "backup_storage_cost_estimate_usd_per_month"
STORAGE_UNENCRYPTED = "backup_storage_unencrypted_objects"
WEEKLY_ANOMALIES = "backup_weekly_anomalies"

# -- quarterly audit --------------------------------------------------------------------------
AUDIT_LAST_RUN = "backup_audit_last_run_timestamp_seconds"
AUDIT_CONTROLS_TOTAL = "backup_audit_controls_total"
AUDIT_CONTROLS_FAILED = "backup_audit_controls_failed"
AUDIT_CONTROL_STATUS = "backup_audit_control_status"

# -- DR drill ---------------------------------------------------------------------------------
DRILL_LAST_RUN = "backup_dr_drill_last_run_timestamp_seconds"
DRILL_LAST_SUCCESS = "backup_dr_drill_last_success_timestamp_seconds"
DRILL_STATUS = "backup_dr_drill_status"
DRILL_RTO = "backup_dr_drill_rto_seconds"
DRILL_RTO_TARGET = "backup_dr_drill_rto_target_seconds"
DRILL_RPO = "backup_dr_drill_rpo_seconds"
DRILL_RPO_TARGET = "backup_dr_drill_rpo_target_seconds"

# -- PITR window (WAL archives) ---------------------------------------------------------------
PITR_WINDOW_START = "backup_pitr_window_start_timestamp_seconds"
PITR_WINDOW_END = "backup_pitr_window_end_timestamp_seconds"
PITR_RPO = "backup_pitr_rpo_seconds"

HELP: dict[str, str] = {
    VERIFICATION_LAST_RUN: "Unix time of the last verification run (whatever its outcome)",
    VERIFICATION_LAST_SUCCESS: "Unix time of the last run in which every check of the source passed",
    VERIFICATION_STATUS: "1 if every check of the source passed in the last run, else 0",
    VERIFICATION_PROBLEMS: "Number of failed checks of the source in the last run",
    AGE: "Age of the newest backup of the source, in seconds",
    MAX_AGE: "The source's configured thresholds.max_age_hours, in seconds (what BackupTooOld compares with)",
    SIZE: "Size of the newest backup of the source, in bytes",
    LOG_PROBLEMS: "Problems (ERROR lines, missing or unreadable file) in the backup log since the last run",
    RETENTION_LAST_RUN: "Unix time of the last applied retention run of the source",
    RETENTION_DELETED: "Backups deleted by the last applied retention run of the source",
    RETENTION_FREED: "Bytes freed by the last applied retention run of the source (local and S3)",
    RETENTION_HELD: "Backups the last retention run of the source held (hold records, hold list, backups in use)",
    RETENTION_REFUSED: "1 if a guard rail refused the last retention run of the source, else 0",
    RESTORE_TEST_LAST_RUN: "Unix time of the last restore test run",
    RESTORE_TEST_LAST_SUCCESS: "Unix time of the last restore test of the source that passed",
    RESTORE_TEST_STATUS: "1 if the source's last restore test passed, else 0",
    RESTORE_TEST_DURATION: "Seconds the source's last restore test took",
    RESTORE_TEST_ROWS: "Rows checked against the manifest in the source's last restore test",
    RESTORE_TEST_FILES: "Files checked in the source's last restore test",
    WEEKLY_LAST_RUN: "Unix time of the last weekly maintenance report",
    STORAGE_USED: "Bytes used by backups, per location",
    STORAGE_FS_SIZE: "Size of the filesystem holding the location's backups, in bytes",
    STORAGE_FS_FREE: "Free bytes on the filesystem holding the location's backups",
    STORAGE_COST: "Estimated monthly S3 storage cost of the bucket, in USD",
    STORAGE_UNENCRYPTED: "Backup objects without the configured server-side encryption",
    WEEKLY_ANOMALIES: "Size or duration anomalies of the source in the report's window",
    AUDIT_LAST_RUN: "Unix time of the last quarterly audit run",
    AUDIT_CONTROLS_TOTAL: "Audit controls evaluated in the last audit",
    AUDIT_CONTROLS_FAILED: "Audit controls that failed in the last audit",
    AUDIT_CONTROL_STATUS: "1 if the control passed (or is informational) in the last audit, else 0",
    DRILL_LAST_RUN: "Unix time of the last disaster-recovery drill",
    DRILL_LAST_SUCCESS: "Unix time of the last disaster-recovery drill that met its targets",
    DRILL_STATUS: "1 if the scenario met its targets in the last drill, else 0",
    DRILL_RTO: "Recovery time the scenario achieved in the last drill, in seconds",
    DRILL_RTO_TARGET: "The scenario's recovery-time target, in seconds",
    DRILL_RPO: "Recovery point the scenario achieved in the last drill (age of the data restored), in seconds",
    DRILL_RPO_TARGET: "The scenario's recovery-point target, in seconds",
    PITR_WINDOW_START: "Earliest point the source's WAL archive can recover to (Unix time)",
    PITR_WINDOW_END: "Latest point the source's WAL archive can recover to (Unix time)",
    PITR_RPO: "Age of the end of the source's point-in-time recovery window, in seconds",
}


def help_of(name: str) -> str:
    return HELP[name]


__all__ = [n for n in dir() if n.isupper()] + ["help_of"]
