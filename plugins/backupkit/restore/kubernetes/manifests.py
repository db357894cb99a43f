"""The Kubernetes scratch database as plain manifests, and the orphan sweep's choice.

No Kubernetes client here: these are dicts in the shape the API takes and returns, so
they can be checked field by field without a cluster, and the Airflow operator sends
them through the cncf-kubernetes provider.

Why each field:
- labels (managed-by, run id, role) let the orphan sweep find what a crashed run left;
- the password is generated per run, stored in a Secret and reaches the container only
  by ``secretKeyRef``: never in arguments, a literal env value, or logs; the server
  authenticates every connection (socket and TCP) with scram-sha-256, never ``trust``;
- non-root, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp:
  a restore test handles production data and needs no privileges; the root file system
  stays writable because the postgres image writes outside its volumes at start-up;
- ``activeDeadlineSeconds`` kills the pod even if nobody is left to delete it.

The optional application smoke pod (``smoke_app_pod_manifest``) follows the same scheme
with role ``smoke-app``: the scratch database's URL, password included, lives in a Secret
of that role and reaches the application only by ``secretKeyRef``; the orphan sweep
selects both roles (``DISPOSABLE_ROLES``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "backupkit"
RUN_ID_LABEL = "backupkit/run-id"
ROLE_LABEL = "backupkit/role"
ROLE_SCRATCH = "scratch-db"
ROLE_SMOKE_APP = "smoke-app"
DISPOSABLE_ROLES = (ROLE_SCRATCH, ROLE_SMOKE_APP)  # what the teardown and orphan sweeps may delete
RUN_ID_ANNOTATION = "backupkit/run-id"
POSTGRES_UID = 999  # the postgres user of the official image
PGDATA_MOUNT = "/var/lib/postgresql"
DEFAULT_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def restricted_security_context(run_as: int | None = None) -> dict:
    """A container security context that meets the "restricted" Pod Security Standard (non-root, no
    privilege escalation, all capabilities dropped, the runtime's seccomp profile); ``run_as`` pins
    the user and group."""
    ctx: dict = {"runAsNonRoot": True}
    if run_as is not None:
        ctx.update(runAsUser=run_as, runAsGroup=run_as)
    ctx.update(allowPrivilegeEscalation=False, privileged=False, readOnlyRootFilesystem=False,
               capabilities={"drop": ["ALL"]}, seccompProfile={"type": "RuntimeDefault"})
    return ctx


def label_value(text: str) -> str:
    """``text`` as a valid label value (max 63 of ``[A-Za-z0-9._-]``, alphanumeric ends).

    Airflow run ids contain ``:`` and ``+``; those become ``-``, and a short hash of the
    original keeps two different ids from mapping to the same value.
    """
    if len(text) <= 63 and _LABEL_VALUE.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:54].strip("-_.")
    return f"{cleaned}-{digest}" if cleaned else digest


def scratch_pod_name(source: str, run_id: str) -> str:
    """A DNS-1123 pod name unique per source and run, at most 63 characters."""
    digest = hashlib.sha256(f"{source}\0{run_id}".encode()).hexdigest()[:10]
    stem = re.sub(r"[^a-z0-9-]+", "-", source.lower()).strip("-")[:30].strip("-")
    return f"backupkit-scratch-{stem}-{digest}" if stem else f"backupkit-scratch-{digest}"


def smoke_app_pod_name(scratch_pod: str) -> str:
    """The smoke pod's name from its scratch pod's (same source/run digest; at most 57 characters,
    so ``<name>-url`` still fits a Secret name)."""
    return scratch_pod.replace("backupkit-scratch-", "backupkit-smoke-", 1)


def scratch_labels(run_id: str, extra: Mapping[str, str] | None = None, *, role: str = ROLE_SCRATCH) -> dict[str, str]:
    """Ownership labels; ``extra`` may add labels but not replace these."""
    if role not in DISPOSABLE_ROLES:
        raise ValueError(f"role {role!r} is not one of {DISPOSABLE_ROLES}")
    labels = {MANAGED_BY_LABEL: MANAGED_BY, RUN_ID_LABEL: label_value(run_id), ROLE_LABEL: role}
    for k, v in (extra or {}).items():
        if k in labels:
            raise ValueError(f"label {k!r} is set by backupkit and cannot be overridden")
        if not _LABEL_VALUE.fullmatch(str(v)) or len(str(v)) > 63:
            raise ValueError(f"label {k}={v!r}: not a valid Kubernetes label value")
        labels[k] = str(v)
    return labels


def _check_name(name: str, what: str) -> None:
    if len(name) > 63 or not _DNS1123_LABEL.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a valid DNS-1123 label (lower-case, digits, '-'; max 63)")


def check_resources(resources: Mapping[str, Any]) -> dict:
    unknown = set(resources) - {"requests", "limits"}
    if unknown:
        raise ValueError(f"resources: unknown keys {sorted(unknown)} (use requests and limits)")
    for part in ("requests", "limits"):
        if not resources.get(part) or not {"cpu", "memory"} <= set(resources[part]):
            raise ValueError(f"resources.{part} must set cpu and memory")
    return {part: {k: str(v) for k, v in resources[part].items()} for part in ("requests", "limits")}


def scratch_pod_manifest(*, name: str, namespace: str, image: str, run_id: str, secret_name: str,
                         secret_key: str = "password", resources: Mapping[str, Any] | None = None,
                         active_deadline_seconds: int = 3600, labels: Mapping[str, str] | None = None,
                         user: str = "postgres", database: str = "postgres", port: int = 5432,
                         service_account_name: str | None = None, image_pull_secrets: Iterable[str] = (),
                         node_selector: Mapping[str, str] | None = None) -> dict:
    """The Pod of one run's scratch PostgreSQL."""
    _check_name(name, "pod name")
    _check_name(namespace, "namespace")
    _check_name(secret_name, "secret name")
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"image {image!r} is not an image reference")
    if active_deadline_seconds <= 0:
        raise ValueError("active_deadline_seconds must be > 0")
    all_labels = scratch_labels(run_id, labels)
    pgdata = f"{PGDATA_MOUNT}/data/pgdata"  # a subdirectory: initdb wants to own PGDATA
    probe = {"exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", database]}}
    container = {
        "name": "postgres",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["-c", f"port={port}", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"],  # a scratch copy is thrown away: durability buys nothing
        "ports": [{"name": "postgres", "containerPort": port, "protocol": "TCP"}],
        "env": [
            {"name": "POSTGRES_USER", "value": user},
            {"name": "POSTGRES_DB", "value": database},
            {"name": "PGDATA", "value": pgdata},
            # Never trust: every connection, inside the pod too, authenticates with the run's password.
            {"name": "POSTGRES_HOST_AUTH_METHOD", "value": "scram-sha-256"},
            {"name": "POSTGRES_INITDB_ARGS", "value": "--auth-local=scram-sha-256 --auth-host=scram-sha-256"},
            {"name": "POSTGRES_PASSWORD",
             "valueFrom": {"secretKeyRef": {"name": secret_name, "key": secret_key, "optional": False}}},
        ],
        "resources": check_resources(resources or DEFAULT_RESOURCES),
        "securityContext": restricted_security_context(run_as=POSTGRES_UID),
        "readinessProbe": {**probe, "initialDelaySeconds": 2, "periodSeconds": 2, "timeoutSeconds": 2,
                           "failureThreshold": 3},
        "volumeMounts": [
            {"name": "pgdata", "mountPath": PGDATA_MOUNT},
            {"name": "run", "mountPath": "/var/run/postgresql"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": int(active_deadline_seconds),
        "automountServiceAccountToken": False,  # a database needs no Kubernetes API access
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 10,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": POSTGRES_UID,
            "runAsGroup": POSTGRES_UID,
            "fsGroup": POSTGRES_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "pgdata", "emptyDir": {}},
            {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    if service_account_name:
        spec["serviceAccountName"] = service_account_name
    pull = [{"name": s} for s in image_pull_secrets]
    if pull:
        spec["imagePullSecrets"] = pull
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": all_labels,
                     "annotations": {RUN_ID_ANNOTATION: run_id}},
        "spec": spec,
    }


def scratch_secret_manifest(name: str, namespace: str, password: str, labels: Mapping[str, str] | None = None,
                            *, run_id: str, key: str = "password", role: str = ROLE_SCRATCH) -> dict:
    """The Secret holding one run's password -- or, for the smoke pod (``role=ROLE_SMOKE_APP``),
    the scratch database's URL (``stringData``: the API server encodes it)."""
    _check_name(name, "secret name")
    _check_name(namespace, "namespace")
    if not password:
        raise ValueError("password must not be empty")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": True,
        "metadata": {"name": name, "namespace": namespace, "labels": scratch_labels(run_id, labels, role=role),
                     "annotations": {RUN_ID_ANNOTATION: run_id}},
        "stringData": {key: password},
    }


def smoke_app_pod_manifest(*, name: str, namespace: str, image: str, run_id: str, port: int, db_secret_name: str,
                           db_secret_key: str, env_var: str, resources: Mapping[str, Any] | None,
                           active_deadline_seconds: int, readiness_path: str = "/health",
                           labels: Mapping[str, str] | None = None) -> dict:
    """The Pod of the application pointed at one run's scratch database (``env_var`` from the
    URL Secret by ``secretKeyRef``). Its readiness probe GETs ``readiness_path``.

    Non-root is enforced with ``runAsNonRoot`` but no fixed uid: the image must declare a
    numeric non-root ``USER`` (the kubelet refuses to start it otherwise, which the smoke check
    reports). The root file system stays writable: application images often write caches.
    """
    _check_name(name, "pod name")
    _check_name(namespace, "namespace")
    _check_name(db_secret_name, "secret name")
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"image {image!r} is not an image reference")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is not a TCP port")
    if active_deadline_seconds <= 0:
        raise ValueError("active_deadline_seconds must be > 0")
    if not readiness_path.startswith("/"):
        raise ValueError(f"readiness path {readiness_path!r} must start with '/'")
    container = {
        "name": "app",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": int(port), "protocol": "TCP"}],
        "env": [{"name": env_var,
                 "valueFrom": {"secretKeyRef": {"name": db_secret_name, "key": db_secret_key, "optional": False}}}],
        "resources": check_resources(resources or DEFAULT_RESOURCES),
        "securityContext": restricted_security_context(),
        "readinessProbe": {"httpGet": {"path": readiness_path, "port": int(port), "scheme": "HTTP"},
                           "initialDelaySeconds": 2, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": scratch_labels(run_id, labels, role=ROLE_SMOKE_APP),
                     "annotations": {RUN_ID_ANNOTATION: run_id}},
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": int(active_deadline_seconds),
            "automountServiceAccountToken": False,  # a smoke test needs no Kubernetes API access
            "enableServiceLinks": False,  # nor the namespace's service addresses in its environment
            "terminationGracePeriodSeconds": 10,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
        },
    }


def _created(obj: Mapping[str, Any]) -> datetime | None:
    meta = obj.get("metadata") or {}
    raw = meta.get("creationTimestamp", meta.get("creation_timestamp"))
    if raw is None:
        return None
    if isinstance(raw, datetime):
        when = raw
    else:
        try:
            when = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        except ValueError:
            return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def is_scratch(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` is a disposable backupkit object (scratch database or smoke app, pod or secret)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(ROLE_LABEL) in DISPOSABLE_ROLES


def orphans(pods: Iterable[Mapping[str, Any]], *, now: datetime, max_age: timedelta) -> list[str]:
    """Names of backupkit scratch pods (or secrets) created more than ``max_age`` ago.

    Takes objects as the API returns them (``creationTimestamp`` as RFC 3339 text, or
    ``creation_timestamp`` as a datetime from the Python client's ``to_dict()``).
    Objects of other owners, already being deleted, or without a creation time are left
    alone: a sweep must never delete what it cannot prove is ours and stale.
    """
    now = now if now.tzinfo else now.replace(tzinfo=timezone.utc)
    found = []
    for obj in pods:
        meta = obj.get("metadata") or {}
        if not is_scratch(obj) or meta.get("deletionTimestamp") or meta.get("deletion_timestamp"):
            continue
        created = _created(obj)
        if created is not None and now - created > max_age and meta.get("name"):
            found.append(meta["name"])
    return sorted(found)
