"""One module per job (per DAG): what its tasks call, over the catalog, the object store and the state.

``daily`` (backup_daily_verification), ``retention`` (backup_retention_cleanup), ``weekly``
(backup_weekly_maintenance), ``audit`` (backup_quarterly_audit), ``restore_test``
(backup_monthly_restore_test), ``drill`` (backup_annual_dr_drill). The Airflow tasks only
build the parts (configuration, bucket, state directory) and log what a job returns.
"""
