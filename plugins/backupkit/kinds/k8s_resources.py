"""Kubernetes resource backups: archives of manifests (``kubectl get -o yaml`` or Velero's layout).

Configured under ``kubernetes_resources:`` (the runbook's ``/opt/backups/kubernetes/*.tar.gz``,
kept 12 weeks). Checked as safe archives whose members parse as Kubernetes objects that
pass the official schemas of ``schema_versions`` (:mod:`backupkit.checks.k8smanifests`);
restored as files (chosen manifests into a directory for ``kubectl apply``), never applied
to a cluster automatically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from backupkit.checks.k8smanifests import DEFAULT_VERSIONS, check_manifests
from backupkit.config.reader import ConfigError, Reader
from backupkit.kinds.base import SourceKind
from backupkit.model import CheckResult

_VERSION = re.compile(r"1\.[0-9]{1,2}")


@dataclass(frozen=True)
class KubernetesResourcesSpec:
    schema_versions: tuple[str, ...] = DEFAULT_VERSIONS


class KubernetesResourcesKind(SourceKind):
    id = "kubernetes"
    section = "kubernetes_resources"
    label = "Kubernetes resource backup"
    restores_into = "files"

    def parse_spec(self, r: Reader) -> KubernetesResourcesSpec:
        versions = r.strings("schema_versions") or DEFAULT_VERSIONS
        for i, v in enumerate(versions):
            if not _VERSION.fullmatch(v):
                raise ConfigError(r.file, f"{r.at('schema_versions')}[{i}]", f"expected a minor version like 1.36, got {v!r}")
        return KubernetesResourcesSpec(schema_versions=tuple(versions))

    def content_checks(self, source, path: Path, artifact: str) -> list[CheckResult]:
        if path.is_dir():
            return [CheckResult(artifact, "k8s_manifests", False, "a directory, not a manifest archive")]
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            return check_manifests(f, artifact, gzipped=gzipped, versions=source.spec.schema_versions)


KIND = KubernetesResourcesKind()

__all__ = ["KIND", "KubernetesResourcesSpec", "KubernetesResourcesKind"]
