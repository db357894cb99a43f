"""The Kubernetes scratch database up to the API boundary: manifests field by field, and the
orphan sweep's choice. No cluster runs here."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from backupkit.restore.scratch import generate_password
from backupkit.restore.kubernetes.manifests import (
    MANAGED_BY_LABEL,
    ROLE_LABEL,
    RUN_ID_LABEL,
    label_value,
    orphans,
    scratch_pod_manifest,
    scratch_pod_name,
    scratch_secret_manifest,
)

RUN_ID = "scheduled__2025-03-03T09:00:00+00:00"
RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}}


@pytest.fixture
def pod():
    return scratch_pod_manifest(name="backupkit-scratch-trixtech-db-1", namespace="backup-tests",
                                image="postgres:18.1", run_id=RUN_ID, secret_name="backupkit-scratch-pw-1",
                                secret_key="password", resources=RESOURCES, active_deadline_seconds=1800,
                                labels={"team": "platform"})


def all_strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from all_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from all_strings(v)
    else:
        yield str(obj)


def test_identity_labels_and_deadline(pod):
    meta = pod["metadata"]
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    assert meta["name"] == "backupkit-scratch-trixtech-db-1" and meta["namespace"] == "backup-tests"
    assert meta["labels"][MANAGED_BY_LABEL] == "backupkit"
    assert meta["labels"][ROLE_LABEL] == "scratch-db"
    assert meta["labels"][RUN_ID_LABEL] == label_value(RUN_ID)
    assert meta["labels"]["team"] == "platform"
    assert meta["annotations"]["backupkit/run-id"] == RUN_ID  # the exact id, which a label cannot hold
    assert pod["spec"]["activeDeadlineSeconds"] == 1800
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_container_image_resources_probe(pod):
    (c,) = pod["spec"]["containers"]
    assert c["image"] == "postgres:18.1"
    assert c["resources"] == RESOURCES
    assert c["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    assert c["ports"] == [{"name": "postgres", "containerPort": 5432, "protocol": "TCP"}]


def test_security_context_is_non_root_and_locked_down(pod):
    spec = pod["spec"]
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 999
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["fsGroup"] == 999
    # Every place postgres writes is an emptyDir volume.
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in c["volumeMounts"]:
        assert "emptyDir" in volumes[m["name"]]
    env = {e["name"]: e for e in c["env"]}
    assert env["PGDATA"]["value"].startswith(next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "pgdata"))


def test_password_only_by_secret_reference_never_in_the_pod():
    password = generate_password()
    secret = scratch_secret_manifest("backupkit-scratch-pw-1", "backup-tests", password, run_id=RUN_ID)
    pod = scratch_pod_manifest(name="p1", namespace="backup-tests", image="postgres:18.1", run_id=RUN_ID,
                               secret_name=secret["metadata"]["name"], secret_key="password")
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POSTGRES_PASSWORD"] == {
        "name": "POSTGRES_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "backupkit-scratch-pw-1", "key": "password", "optional": False}}}
    assert "value" not in env["POSTGRES_PASSWORD"]
    assert env["POSTGRES_HOST_AUTH_METHOD"]["value"] == "scram-sha-256"  # never trust, not even locally
    assert env["POSTGRES_INITDB_ARGS"]["value"] == "--auth-local=scram-sha-256 --auth-host=scram-sha-256"
    assert not any(password in s for s in all_strings(pod))
    assert password not in json.dumps(pod)
    assert secret["stringData"] == {"password": secret["stringData"]["password"]}
    assert secret["stringData"]["password"] == password
    assert secret["metadata"]["labels"][ROLE_LABEL] == "scratch-db"


def test_passwords_are_fresh_and_long():
    a, b = generate_password(), generate_password()
    assert a != b and len(a) >= 40
    assert all(c.isalnum() or c in "-_" for c in a)


def test_manifest_fields_are_real_kubernetes_fields(pod):
    """Round-trip through the Kubernetes client's models: a misspelt key would be dropped."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    model = api._ApiClient__deserialize(pod, "V1Pod")
    assert api.sanitize_for_serialization(model) == pod
    secret = scratch_secret_manifest("s1", "ns", "pw", run_id=RUN_ID)
    assert api.sanitize_for_serialization(api._ApiClient__deserialize(secret, "V1Secret")) == secret


@pytest.mark.parametrize("run_id", [RUN_ID, "manual__2025-03-03T09:00:00.123456+00:00", "x" * 200, "plain-id",
                                    "___", "a:b"])
def test_label_values_are_valid_and_distinct(run_id):
    import re

    v = label_value(run_id)
    assert len(v) <= 63 and re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", v) and v
    assert label_value(run_id + "1") != v


def test_pod_names_are_dns_labels_unique_per_source_and_run():
    import re

    names = {scratch_pod_name(s, r) for s in ("trixtech-db", "Trixtech_DB.sql") for r in (RUN_ID, RUN_ID + "x")}
    assert len(names) == 4
    for n in names:
        assert len(n) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n)


@pytest.mark.parametrize("kwargs, words", [
    ({"name": "Bad_Name"}, "pod name"),
    ({"namespace": "x" * 64}, "namespace"),
    ({"image": ""}, "image"),
    ({"active_deadline_seconds": 0}, "active_deadline"),
    ({"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1", "memory": "1Gi"}}}, "requests"),
    ({"labels": {MANAGED_BY_LABEL: "someone-else"}}, "cannot be overridden"),
    ({"labels": {"x": "not valid!"}}, "label value"),
])
def test_invalid_pod_parameters_are_refused(kwargs, words):
    base = dict(name="p1", namespace="ns", image="postgres:18", run_id="r", secret_name="s")
    with pytest.raises(ValueError, match=words):
        scratch_pod_manifest(**{**base, **kwargs})


# -- orphan sweep -----------------------------------------------------------------------------
NOW = datetime(2025, 3, 3, 12, 0, tzinfo=timezone.utc)


def api_pod(name, age_hours, *, labels=None, deleting=False, snake=False):
    created = NOW - timedelta(hours=age_hours)
    meta = {"name": name, "labels": labels if labels is not None else {
        MANAGED_BY_LABEL: "backupkit", ROLE_LABEL: "scratch-db", RUN_ID_LABEL: "r"}}
    if snake:  # the Python client's to_dict(): snake_case keys, datetime values
        meta["creation_timestamp"] = created
    else:
        meta["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    if deleting:
        meta["deletionTimestamp"] = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": meta, "status": {"phase": "Running"}}


def test_orphans_are_old_backupkit_scratch_pods_only():
    pods = [
        api_pod("old", 7),
        api_pod("old-client-dict", 30, snake=True),
        api_pod("young", 1),
        api_pod("exactly-at-limit", 6),
        api_pod("foreign", 100, labels={MANAGED_BY_LABEL: "helm", ROLE_LABEL: "scratch-db"}),
        api_pod("backupkit-other-role", 100, labels={MANAGED_BY_LABEL: "backupkit", ROLE_LABEL: "audit"}),
        api_pod("unlabelled", 100, labels={}),
        api_pod("already-deleting", 100, deleting=True),
        {"metadata": {"name": "no-time", "labels": {MANAGED_BY_LABEL: "backupkit", ROLE_LABEL: "scratch-db"}}},
    ]
    assert orphans(pods, now=NOW, max_age=timedelta(hours=6)) == ["old", "old-client-dict"]
    assert orphans(pods, now=NOW, max_age=timedelta(hours=0.5)) == ["exactly-at-limit", "old", "old-client-dict",
                                                                     "young"]
    assert orphans([], now=NOW, max_age=timedelta(hours=1)) == []


def test_secrets_are_swept_like_pods():
    secret = scratch_secret_manifest("s-old", "ns", "pw", run_id="r")
    secret["metadata"]["creationTimestamp"] = (NOW - timedelta(days=2)).isoformat()
    assert orphans([secret], now=NOW, max_age=timedelta(hours=6)) == ["s-old"]
