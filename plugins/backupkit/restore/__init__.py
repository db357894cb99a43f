"""Restores that prove the backups work, and restores that put the application back. Pure core: no Airflow.

``selection`` which backup (newest, before a time, an exact key, a random older one) ·
``fetch`` its bytes on local disk, checked against the sidecar and S3's stored checksum ·
``pipeline`` THE restore-and-verify every job runs (restore tests, on-demand, the drill) ·
``database`` pg_restore / psql into a database · ``verify_rows`` row counts, key tables,
assertions · ``scratch`` throwaway targets (local servers, directories) and the app's server ·
``switch`` the replace saga · ``conninfo`` connection settings · ``journal`` the restore
journal · ``health`` HTTP checks · ``file_restore`` the request side of file restores, ``files``
/ ``target`` / ``rootfs`` safe extraction · ``kubernetes`` manifests and runtime.
"""
