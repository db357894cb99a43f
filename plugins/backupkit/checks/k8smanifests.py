"""Kubernetes resource backups: every manifest in the archive is a Kubernetes object that the
API server of the target versions would accept.

Archives are what ``kubectl get -o yaml`` (one ``List`` or many documents per file) or Velero
(``resources/<resource>/namespaces/<ns>/<name>.json``, ``resources/<resource>/cluster/...``,
``metadata/version``) write. The archive itself is first checked as any file archive
(bounded reading, the safe link rule: :mod:`backupkit.checks.archive`); then, in a second
bounded pass, each ``.yaml``/``.yml``/``.json`` member is parsed and validated.

Rules (also in docs/kubernetes.md):

* a manifest member is at most :data:`MAX_MANIFEST_BYTES`, UTF-8, YAML 1.1 or JSON; YAML
  anchors and aliases are refused (no Kubernetes tool writes them; they are how a "billion
  laughs" document explodes), and a document has at most :data:`MAX_NODES` nodes;
* every document is an object with string ``apiVersion``, ``kind`` and ``metadata.name``, or a
  ``List`` (``kind: List`` / ``*List``) of such objects in ``items``; empty documents are skipped;
* every object validates in strict mode against the official OpenAPI schemas of each
  configured Kubernetes version (``kubernetes-validate``); a kind that has no schema there
  (a custom resource) is checked for structure only and reported as such, not failed;
* other members (``metadata/version``, READMEs) are ignored; an archive with no manifest at
  all fails (an empty export is not a backup).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, BinaryIO, Sequence

import yaml

from backupkit.checks.archive import read_archive
from backupkit.checks.tarstream import FILE
from backupkit.model import CheckResult

MAX_MANIFEST_BYTES = 4 << 20
MAX_NODES = 200_000
MAX_LISTED = 10
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# The oldest Kubernetes minor still supported upstream when the pinned client (36.x, for 1.36)
# was released, and the client's own: kubernetes-client/python's compatibility matrix.
DEFAULT_VERSIONS = ("1.34", "1.36")


class ManifestError(ValueError):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases and documents of more than MAX_NODES nodes."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ManifestError(f"YAML anchors and aliases are not allowed (line {event.start_mark.line + 1})")
        self._nodes = getattr(self, "_nodes", 0) + 1
        if self._nodes > MAX_NODES:
            raise ManifestError(f"more than {MAX_NODES} YAML nodes")
        return super().compose_node(parent, index)


def documents(name: str, data: bytes) -> Iterator[Any]:
    """The documents of one manifest member (see the module rules); raises ManifestError."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{len(data)} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8 (byte {exc.start})") from None
    if name.endswith(".json"):
        try:
            yield json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"not JSON: {exc}") from None
        return
    try:
        loader = _BoundedLoader(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"not YAML: {' '.join(str(exc).split())[:200]}") from None
    try:
        while loader.check_data():
            loader._nodes = 0
            yield loader.get_data()
    except yaml.YAMLError as exc:
        raise ManifestError(f"not YAML: {' '.join(str(exc).split())[:200]}") from None
    finally:
        loader.dispose()


def objects(doc: Any) -> Iterator[dict]:
    """The Kubernetes objects of one document (a List is unpacked); raises ManifestError."""
    if doc is None:
        return
    if not isinstance(doc, dict):
        raise ManifestError(f"a document is a {type(doc).__name__}, not a Kubernetes object")
    kind = doc.get("kind")
    if isinstance(kind, str) and (kind == "List" or kind.endswith("List")) and "items" in doc:
        items = doc.get("items")
        if not isinstance(items, list):
            raise ManifestError(f"{kind}.items is not a list")
        for item in items:
            yield from objects(item)
        return
    for key in ("apiVersion", "kind"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise ManifestError(f"an object has no {key}")
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name") or meta.get("generateName"), str):
        raise ManifestError(f"a {doc['kind']} has no metadata.name")
    yield doc


def _label(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    ns = f"{meta['namespace']}/" if isinstance(meta.get("namespace"), str) else ""
    return f"{obj.get('kind')} {ns}{meta.get('name') or meta.get('generateName')}"


@lru_cache(maxsize=512)
def _validator(version: str, kind: str, api_version: str):
    """A strict Draft 2020-12 validator of ``kind`` in ``api_version`` for Kubernetes ``version``, built
    from kubernetes-validate's bundled schemas as its own ``validate`` builds it, but once per kind:
    its ``validate`` re-reads the 8 MB definitions file for every object (about 30 ms each)."""
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    known = [v for v in utils.all_versions() if utils.major_minor(v) <= version]
    if not known:
        raise ValueError(f"Kubernetes {version} is older than any bundled schema")
    schema_dir = f"v{known[-1]}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group}.json", version)
    except FileNotFoundError:
        return None
    definitions = _definitions(schema_dir, version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


@lru_cache(maxsize=8)
def _definitions(schema_dir: str, version: str) -> Any:
    from kubernetes_validate import utils

    return utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)


def validate_object(obj: dict, versions: Sequence[str]) -> tuple[list[str], bool]:
    """(problems, had_schema) of one object against every version's official schema (strict: no unknown field)."""
    problems: list[str] = []
    had_schema = False
    for version in versions:
        try:
            validator = _validator(version, obj["kind"], obj["apiVersion"])
        except Exception as exc:  # an unreadable bundle is our problem, but a verdict, not a traceback
            problems.append(f"Kubernetes {version}: schema unavailable: {type(exc).__name__}: {exc}")
            continue
        if validator is None:
            continue
        had_schema = True
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))[:3]:
            where = "/".join(str(p) for p in error.absolute_path)
            message = " ".join(str(error.message).split())[:300]
            problems.append(f"Kubernetes {version}: {where + ': ' if where else ''}{message}")
    return problems, had_schema


@dataclass
class ManifestScan:
    members: int = 0
    objects: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    unchecked_kinds: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def results(self, artifact: str, versions: Sequence[str]) -> list[CheckResult]:
        out = [CheckResult(artifact, "k8s_manifests", False, p) for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            out.append(CheckResult(artifact, "k8s_manifests", False,
                                   f"... and {len(self.problems) - MAX_LISTED} more manifest problems"))
        if not self.problems and self.objects == 0:
            out.append(CheckResult(artifact, "k8s_manifests", False,
                                   "no Kubernetes manifest in the archive (an empty export is not a backup)"))
        if not out:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items())[:12])
            out.append(CheckResult(artifact, "k8s_manifests", True,
                                   f"{self.objects} objects in {self.members} manifests valid for Kubernetes "
                                   f"{' and '.join(versions)} ({kinds})"))
        if self.unchecked_kinds:
            out.append(CheckResult(artifact, "k8s_manifests", True,
                                   "WARNING: no official schema for " + ", ".join(sorted(self.unchecked_kinds))
                                   + " (custom resources): structure checked only"))
        return out


def check_manifests(stream: BinaryIO, artifact: str, *, gzipped: bool,
                    versions: Sequence[str] = DEFAULT_VERSIONS) -> list[CheckResult]:
    """``k8s_manifests`` results for a Kubernetes resource archive (see the module rules)."""
    scan = ManifestScan()

    def on_member(member, reader) -> None:
        name = member.name
        if member.kind != FILE or not name.lower().endswith(MANIFEST_SUFFIXES):
            return
        scan.members += 1
        if member.size > MAX_MANIFEST_BYTES:
            scan.problems.append(f"{name}: {member.size} bytes, more than a manifest may have")
            return
        data = b"".join(reader.data(member))
        try:
            for doc in documents(name, data):
                for obj in objects(doc):
                    scan.objects += 1
                    scan.by_kind[obj["kind"]] = scan.by_kind.get(obj["kind"], 0) + 1
                    problems, had_schema = validate_object(obj, versions)
                    if not had_schema:
                        scan.unchecked_kinds.add(f"{obj['apiVersion']} {obj['kind']}")
                    scan.problems += [f"{name}: {_label(obj)}: {p}" for p in problems]
        except ManifestError as exc:
            scan.problems.append(f"{name}: {exc}")

    archive = read_archive(stream, artifact, gzipped=gzipped, safety=False, on_member=on_member)
    if archive.failure is not None:
        return [CheckResult(artifact, archive.failure.check, False, archive.failure.detail)]
    return scan.results(artifact, versions)


__all__ = ["check_manifests", "documents", "objects", "validate_object", "ManifestError", "DEFAULT_VERSIONS",
           "MAX_MANIFEST_BYTES", "MAX_NODES"]
