"""Kubernetes resource backups: manifests in real tar.gz archives, checked against the official schemas."""

from __future__ import annotations

import io
import json
import random
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from backupkit.checks.k8smanifests import check_manifests, documents, objects
from backupkit.config import ConfigError, load_config

DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "trixtech-backend", "namespace": "default", "labels": {"app": "backend"}},
              "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "backend"}},
                       "template": {"metadata": {"labels": {"app": "backend"}},
                                    "spec": {"containers": [{"name": "backend", "image": "trixtech/backend:1.4",
                                                             "ports": [{"containerPort": 3000}]}]}}}}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "trixtech-backend", "namespace": "default"},
           "spec": {"selector": {"app": "backend"}, "ports": [{"port": 80, "targetPort": 3000}]}}
CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "trixtech-config", "namespace": "default"},
             "data": {"LOG_LEVEL": "info"}}
CUSTOM = {"apiVersion": "velero.io/v1", "kind": "Schedule", "metadata": {"name": "nightly", "namespace": "velero"},
          "spec": {"schedule": "0 1 * * *"}}


def archive(path: Path, members: dict[str, bytes], *, gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return path


def kubectl_export(*objs) -> bytes:
    """What `kubectl get deploy,svc,cm -o yaml` writes: one List."""
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": list(objs), "metadata": {}}).encode()


def check(path: Path, **kw):
    with open(path, "rb") as f:
        return check_manifests(f, path.name, gzipped=path.suffix == ".gz", **kw)


def bad(results) -> list[str]:
    return [r.detail for r in results if not r.ok]


def test_kubectl_and_velero_layouts_pass_for_both_kubernetes_versions(tmp_path):
    kubectl = archive(tmp_path / "k8s_20261122_030000.tar.gz", {
        "default/all.yaml": kubectl_export(DEPLOYMENT, SERVICE),
        "default/config.yaml": (yaml.safe_dump(CONFIGMAP) + "---\n" + yaml.safe_dump(SERVICE)).encode()})
    results = check(kubectl)
    assert bad(results) == [], results
    assert "4 objects in 2 manifests valid for Kubernetes 1.34 and 1.36" in results[0].detail
    velero = archive(tmp_path / "velero.tar.gz", {
        "metadata/version": b"1\n",
        "resources/deployments.apps/namespaces/default/trixtech-backend.json": json.dumps(DEPLOYMENT).encode(),
        "resources/services/namespaces/default/trixtech-backend.json": json.dumps(SERVICE).encode(),
        "resources/schedules.velero.io/namespaces/velero/nightly.json": json.dumps(CUSTOM).encode()})
    results = check(velero)
    assert bad(results) == [], results
    warning = [r.detail for r in results if r.detail.startswith("WARNING")]
    assert warning and "velero.io/v1 Schedule" in warning[0] and "structure checked only" in warning[0]


@pytest.mark.parametrize("broken, why", [
    ({**DEPLOYMENT, "spec": {**DEPLOYMENT["spec"], "replicaz": 3}}, "replicaz"),  # strict: unknown field
    ({**DEPLOYMENT, "spec": {**DEPLOYMENT["spec"], "replicas": "two"}}, "two"),  # wrong type
    ({**SERVICE, "metadata": {"namespace": "default"}}, "no metadata.name"),
    ({"kind": "Service", "metadata": {"name": "x"}}, "no apiVersion"),
    (["not", "an", "object"], "not a Kubernetes object"),
])
def test_objects_the_api_server_would_refuse_fail_naming_member_and_object(tmp_path, broken, why):
    path = archive(tmp_path / "b.tar.gz", {"ok.yaml": yaml.safe_dump(CONFIGMAP).encode(),
                                           "ns/broken.yaml": yaml.safe_dump(broken).encode()})
    problems = bad(check(path))
    assert len(problems) >= 1 and all(p.startswith("ns/broken.yaml: ") for p in problems), problems
    assert any(why in p for p in problems), problems


def test_hostile_yaml_is_refused_in_bounded_time(tmp_path):
    laughs = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    t0 = time.monotonic()
    problems = bad(check(archive(tmp_path / "bomb.tar.gz", {"bomb.yaml": laughs.encode()})))
    assert time.monotonic() - t0 < 5
    assert problems == ["bomb.yaml: YAML anchors and aliases are not allowed (line 1)"]
    assert "not UTF-8" in bad(check(archive(tmp_path / "u.tar.gz", {"x.yaml": b"\xff\xfe kind: x"})))[0]
    assert "not YAML" in bad(check(archive(tmp_path / "y.tar.gz", {"x.yaml": b"kind: [unclosed"})))[0]
    assert "not JSON" in bad(check(archive(tmp_path / "j.tar.gz", {"x.json": b"{"})))[0]
    big = archive(tmp_path / "big.tar.gz", {"big.yaml": b"#" * ((4 << 20) + 1)})
    assert "more than a manifest may have" in bad(check(big))[0]


def test_an_archive_without_manifests_is_not_a_backup_and_a_damaged_one_names_the_layer(tmp_path):
    empty = archive(tmp_path / "e.tar.gz", {"metadata/version": b"1\n"})
    assert bad(check(empty)) == ["no Kubernetes manifest in the archive (an empty export is not a backup)"]
    good = archive(tmp_path / "g.tar.gz", {"a.yaml": kubectl_export(SERVICE)})
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:-20])
    [(check_name, detail)] = [(r.check, r.detail) for r in check(cut) if not r.ok]
    assert check_name == "gzip"


def test_seeded_mutations_give_verdicts_never_tracebacks(tmp_path):
    base = archive(tmp_path / "base.tar.gz", {"default/all.yaml": kubectl_export(DEPLOYMENT, SERVICE, CONFIGMAP)},
                   gz=False).read_bytes()
    rng = random.Random(20261201)
    deadline = time.monotonic() + 20
    for i in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path = tmp_path / f"m{i}.tar"
        path.write_bytes(bytes(data))
        results = check(path)
        assert results and all(r.check for r in results)
        assert time.monotonic() < deadline, "mutations must not hang"


def test_documents_and_objects_rules():
    assert list(documents("x.yaml", b"---\n...\n")) == [None]
    assert list(objects(None)) == []
    [d] = list(objects({"apiVersion": "v1", "kind": "PodList", "items": [SERVICE]}))
    assert d["kind"] == "Service"
    with pytest.raises(ValueError, match="items is not a list"):
        list(objects({"apiVersion": "v1", "kind": "List", "items": {}}))


def test_configured_as_a_source_kind(tmp_path, monkeypatch):
    cfg = tmp_path / "backups.yaml"
    cfg.write_text(f"""
bucket: {{name: trixtech-backups}}
kubernetes_resources:
  - name: trixtech-k8s
    local_dir: {tmp_path}/k8s
    s3_prefix: kubernetes/
    pattern: k8s_%Y%m%d_%H%M%S.tar.gz
    schema_versions: ["1.34", "1.36"]
    retention: {{keep_weekly: 12}}
verification: {{state_dir: {tmp_path}/state}}
""")
    config = load_config(cfg)
    [src] = config.sources
    assert (src.kind, src.kind_impl.label, src.spec.schema_versions) == ("kubernetes", "Kubernetes resource backup",
                                                                         ("1.34", "1.36"))
    assert src.retention.keep_weekly == 12
    cfg.write_text(cfg.read_text().replace('["1.34", "1.36"]', '["latest"]'))
    with pytest.raises(ConfigError, match=r"kubernetes_resources\[0\]\.schema_versions\[0\]"):
        load_config(cfg)


def test_the_daily_integrity_check_validates_the_manifests(tmp_path):
    from backupkit.jobs import daily
    from backupkit.state import VerificationState

    (tmp_path / "k8s").mkdir()
    archive(tmp_path / "k8s" / "k8s_20261122_030000.tar.gz", {"a.yaml": kubectl_export(DEPLOYMENT)})
    broken = {**DEPLOYMENT, "spec": {**DEPLOYMENT["spec"], "replicaz": 1}}
    archive(tmp_path / "k8s" / "k8s_20261129_030000.tar.gz", {"a.yaml": kubectl_export(broken)})
    cfg = tmp_path / "backups.yaml"
    cfg.write_text(f"""
bucket: {{name: trixtech-backups}}
kubernetes_resources:
  - {{name: trixtech-k8s, local_dir: {tmp_path}/k8s, s3_prefix: kubernetes/, pattern: k8s_%Y%m%d_%H%M%S.tar.gz}}
verification: {{state_dir: {tmp_path}/state}}
""")
    config = load_config(cfg)
    with VerificationState(config.state_dir) as st:
        results = daily.check_integrity(config, "trixtech-k8s", state=st)
        assert st.verdict("trixtech-k8s/k8s_20261122_030000.tar.gz") == "passed"
        assert st.verdict("trixtech-k8s/k8s_20261129_030000.tar.gz") == "failed"
    failed = [r for r in results if not r["ok"]]
    assert {(r["artifact"], r["check"]) for r in failed} == {("trixtech-k8s/k8s_20261129_030000.tar.gz",
                                                              "k8s_manifests")}
    assert all("replicaz" in r["detail"] for r in failed) and {"1.34", "1.36"} <= {
        r["detail"].split("Kubernetes ")[1][:4] for r in failed}
