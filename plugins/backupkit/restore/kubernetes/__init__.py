"""Kubernetes for restores, with the client passed in (no cluster, no Airflow needed to test it).

``manifests`` -- the scratch database and smoke-check pods and secrets as plain dicts, and
the orphan sweep's choice; ``runtime`` -- their lifecycle through CoreV1Api/AppsV1Api clients
(scratch pods, the application smoke check, the per-run and orphan sweeps) and the
application platform that the replace saga scales and switches; ``calls`` -- one bounded,
retried API call; ``waiting`` -- the list-then-watch wait that pods and deployments share.
"""
