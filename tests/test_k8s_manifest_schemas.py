"""Every manifest the project generates or ships, against the official Kubernetes schemas.

The objects are built by the code that sends them (``KubernetesScratch.manifests``,
``SmokeApp.manifests``, :mod:`backupkit.restore.kubernetes.manifests`) and the files under
``deploy/kubernetes/``; each is validated in strict mode (no unknown field, the right types,
required fields present) by ``kubernetes-validate`` for the oldest and newest Kubernetes minor the
pinned ``kubernetes`` client supports. A field the API server would reject fails here first.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import kubernetes
import pytest
import yaml

from backupkit.checks.k8smanifests import DEFAULT_VERSIONS, validate_object
from backupkit.config.schema import RestoreSettings, SmokeCheck
from backupkit.restore.kubernetes import manifests as k8s
from backupkit.restore.kubernetes.runtime import KubernetesScratch, SmokeApp

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
RUN_ID = "scheduled__2026-12-07T09:00:00+00:00"
SETTINGS = RestoreSettings(backend="kubernetes", namespace="backup-tests", image="postgres:18.1",
                           active_deadline_seconds=1800)


def scratch(settings: RestoreSettings = SETTINGS) -> KubernetesScratch:
    return KubernetesScratch(None, settings, run_id=RUN_ID, source="trixtech-db", backup="trixtech_20261207.dump")


def generated() -> dict[str, dict]:
    """name -> object, for every object the restore code sends to the API."""
    s = scratch()
    secret, pod = s.manifests()
    out = {"scratch Secret": secret, "scratch Pod": pod}
    s.pod_ip = "10.1.2.3"  # as after start(): the smoke pod needs the scratch database's address
    smoke = SmokeApp(s, SmokeCheck(image="ghcr.io/trixtech/backend:1.4", port=3000, paths=("/health", "/api")))
    out["smoke Secret"], out["smoke Pod"] = smoke.manifests()
    out["scratch Pod, every option"] = k8s.scratch_pod_manifest(
        name="backupkit-scratch-x", namespace="backup-tests", image="registry.local/postgres@sha256:" + "a" * 64,
        run_id=RUN_ID, secret_name="backupkit-scratch-x-pw", service_account_name="backupkit-scratch",
        image_pull_secrets=["regcred"], node_selector={"kubernetes.io/os": "linux"}, labels={"team": "platform"},
        resources={"requests": {"cpu": 0.5, "memory": "512Mi"}, "limits": {"cpu": 2, "memory": "2Gi"}})
    return out


def shipped() -> dict[str, dict]:
    """file#index -> object, for every document under deploy/kubernetes/."""
    out = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                out[f"{path.relative_to(ROOT)}#{i} {doc.get('kind')}"] = doc
    return out


def test_the_versions_are_the_pinned_clients_oldest_and_newest():
    """kubernetes-client/python N.x is generated from Kubernetes 1.N and supports back to 1.(N-2):
    a client upgrade must move the versions the manifests are validated for."""
    major = int(kubernetes.__version__.split(".")[0])
    assert DEFAULT_VERSIONS == (f"1.{major - 2}", f"1.{major}")


@pytest.mark.parametrize("name", sorted(generated()))
def test_generated_manifests_are_valid_for_both_versions(name):
    obj = generated()[name]
    problems, had_schema = validate_object(obj, DEFAULT_VERSIONS)
    assert had_schema, f"{name}: no official schema for {obj['apiVersion']}/{obj['kind']}"
    assert problems == []


def test_shipped_manifests_are_valid_for_both_versions():
    objects = shipped()
    assert {o["kind"] for o in objects.values()} >= {"ServiceAccount", "Role", "RoleBinding"}
    for name, obj in objects.items():
        problems, had_schema = validate_object(obj, DEFAULT_VERSIONS)
        assert had_schema and problems == [], name


@pytest.mark.parametrize("mutate, words", [
    (lambda p: p["spec"]["containers"][0].__setitem__("securityContxt", {}), "securityContxt"),
    (lambda p: p["spec"].__setitem__("activeDeadlineSeconds", "1800"), "activeDeadlineSeconds"),
    (lambda p: p["spec"]["containers"][0].pop("name"), "name"),
    (lambda p: p["spec"]["containers"][0]["env"][-1]["valueFrom"]["secretKeyRef"].__setitem__("optinal", False),
     "optinal"),
])
def test_the_validation_catches_what_the_api_server_would_reject(mutate, words):
    """A misspelt field (strict mode), a wrong type and a missing required field are each reported."""
    pod = generated()["scratch Pod"]
    mutate(pod)
    problems, _ = validate_object(pod, DEFAULT_VERSIONS)
    assert len(problems) >= len(DEFAULT_VERSIONS)  # reported for each version
    assert all(words in p for p in problems), problems


def test_a_changed_deadline_setting_still_validates():
    """Settings flow into the manifest: an hour-long deadline and other resources are still valid."""
    s = scratch(replace(SETTINGS, active_deadline_seconds=3600,
                        resources={"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}))
    _, pod = s.manifests()
    assert pod["spec"]["activeDeadlineSeconds"] == 3600
    assert validate_object(pod, DEFAULT_VERSIONS) == ([], True)
