"""Restores that prove the backups work: scratch databases, dump restores and their
verification, safe file-archive extraction, the Kubernetes scratch-pod spec, and the
choice of which backup to restore. Pure core: no Airflow imports."""
