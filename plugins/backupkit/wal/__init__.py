"""Verification of plain PostgreSQL WAL archives (as ``archive_command`` or pg_receivewal
write them, in a directory or an S3 prefix): continuity per timeline, page and record
checks as strict as pg_waldump, timeline histories, base backups' WAL, freshness and the
recoverable window. Entry point: :func:`backupkit.wal.verify.verify_archive`; the rules
are written down in docs/wal.md. Pure Python: no Airflow; S3 through :class:`backupkit.storage.objectstore.Bucket` (``wal.s3``).
"""
