"""docker-compose.yaml without a Docker engine: the Compose Specification's JSON schema, and the
references a schema cannot see (mounted paths exist, services named in URLs and depends_on
exist, Prometheus finds its rule files where the stack mounts them, the image's Dockerfile).

The schema is vendored in include/schemas/compose-spec.json (source and licence in
include/schemas/README.md) so the check runs offline and does not change under our feet.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yaml"
SCHEMA = REPO / "include" / "schemas" / "compose-spec.json"

# What issue 5 asks the stack to run.
REQUIRED_SERVICES = {
    "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
    "redis", "postgres", "minio", "app-postgres", "pushgateway", "prometheus",
}
AIRFLOW_SERVICES = {s for s in REQUIRED_SERVICES if s.startswith("airflow-")}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # YAML merge keys (<<: *anchor) resolved as Compose does


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)  # the draft the schema's $schema names
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def test_vendored_schema_is_the_documented_upstream_copy():
    """The schema is upstream's, unchanged: its checksum is the one include/schemas/README.md records."""
    recorded = re.search(r"SHA-256: `([0-9a-f]{64})`", (SCHEMA.parent / "README.md").read_text()).group(1)
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == recorded
    assert (SCHEMA.parent / "LICENSE.compose-spec").read_text().lstrip().startswith("Apache License")


def test_compose_file_matches_the_compose_specification(compose, validator):
    assert schema_errors(validator, compose) == []


@pytest.mark.parametrize("mutation, expected", [
    (lambda c: c["services"]["prometheus"].update(volumnes=["./x:/y"]), "volumnes"),  # misspelt key
    (lambda c: c["services"]["redis"]["healthcheck"].update(retries=[5]), "retries"),  # wrong type
    (lambda c: c["services"]["airflow-worker"]["depends_on"]["redis"].update(condition="service_ready"),
     "service_ready"),  # not an allowed condition
])
def test_schema_validation_rejects_invalid_files(compose, validator, mutation, expected):
    broken = copy.deepcopy(compose)
    mutation(broken)
    errors = schema_errors(validator, broken)
    assert errors and any(expected in e for e in errors), errors


def test_every_required_service_is_defined(compose):
    assert REQUIRED_SERVICES - set(compose["services"]) == set()


def _bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts (short syntax and long syntax)."""
    mounts = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, _, rest = v.partition(":")
            target = rest.split(":")[0]
            if source.startswith((".", "/", "~")):
                mounts.append((source, target))
        elif v.get("type") == "bind":
            mounts.append((v["source"], v["target"]))
    return mounts


def test_every_bind_mounted_path_exists_in_the_repo(compose):
    mounts = [(name, src) for name, svc in compose["services"].items() for src, _ in _bind_mounts(svc)]
    assert mounts, "no bind mounts found"
    missing = [(name, src) for name, src in mounts if not (REPO / src).exists()]
    assert missing == []
    sources = {src for _, src in mounts}
    # What the stack cannot run without: DAGs, plugins, configuration and rules, the sample DB.
    assert {"./dags", "./plugins", "./include", "./include/prometheus",
            "./include/sql/booking_schema.sql", "./include/sql/init-booking-db.sh"} <= sources


def test_airflow_services_share_the_image_and_the_project_mounts(compose):
    for name in AIRFLOW_SERVICES:
        svc = compose["services"][name]
        targets = {t for _, t in _bind_mounts(svc)}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= targets, name
        assert svc["image"] == compose["services"]["airflow-scheduler"]["image"], name
        env = svc["environment"]
        # The backup configuration the DAGs read is inside a mounted folder.
        config = PurePosixPath(env["BACKUPKIT_CONFIG"])
        assert _host_path(svc, config).is_file(), (name, config)


def _host_path(service: dict, container_path: PurePosixPath) -> Path:
    """Where a container path comes from on the host, through the service's bind mounts."""
    for source, target in sorted(_bind_mounts(service), key=lambda m: -len(m[1])):
        if container_path == PurePosixPath(target) or PurePosixPath(target) in container_path.parents:
            return REPO / source / container_path.relative_to(target)
    raise AssertionError(f"{container_path} is not in any bind mount of the service")


def test_prometheus_finds_its_config_and_rule_files_where_they_are_mounted(compose):
    svc = compose["services"]["prometheus"]
    flags = dict(arg.split("=", 1) for arg in svc["command"] if arg.startswith("--") and "=" in arg)
    config_in_container = PurePosixPath(flags["--config.file"])
    config = _host_path(svc, config_in_container)
    assert config == REPO / "include" / "prometheus" / "prometheus.yml"
    prom = yaml.safe_load(config.read_text())
    assert prom["rule_files"], "Prometheus loads no rules"
    for rule_file in prom["rule_files"]:
        # Relative rule paths are resolved against the config file's directory, as Prometheus does.
        in_container = config_in_container.parent / rule_file
        host = _host_path(svc, in_container)
        assert host.is_file(), (rule_file, in_container, host)
        assert host.resolve() == (REPO / "include" / "prometheus" / "backup_rules.yml").resolve()


def _hosts_in(value: str) -> set[str]:
    return set(re.findall(r"[a-z][a-z0-9+.-]*://(?:[^@/\s\"]*@)?([A-Za-z0-9_.-]+)", value))


def test_urls_and_dependencies_name_services_of_the_stack(compose):
    services = set(compose["services"])
    for name, svc in compose["services"].items():
        deps = svc.get("depends_on", {})
        assert set(deps) <= services, (name, deps)
        for key, value in (svc.get("environment") or {}).items():
            assert _hosts_in(str(value)) <= services | {"localhost"}, (name, key, value)
    prom = yaml.safe_load((REPO / "include" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert "pushgateway:9091" in targets
    assert {t.split(":")[0] for t in targets} <= services | {"localhost"}
    env = compose["services"]["airflow-worker"]["environment"]
    assert _hosts_in(env["BACKUP_PUSHGATEWAY_URL"]) == {"pushgateway"}
    assert _hosts_in(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]) == {"airflow-apiserver"}


def test_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    used = {v.split(":")[0] for svc in compose["services"].values() for v in svc.get("volumes", [])
            if isinstance(v, str) and not v.startswith((".", "/", "~"))}
    assert used - declared == set()


def test_airflow_components_share_one_config_file(compose):
    """Fernet key and JWT secret are generated into airflow.cfg: every component must read the same one."""
    configs = {compose["services"][n]["environment"].get("AIRFLOW_CONFIG") for n in AIRFLOW_SERVICES}
    assert len(configs) == 1 and None not in configs
    [config] = configs
    volumes = {tuple(v.split(":")[:2]) for n in AIRFLOW_SERVICES for v in compose["services"][n]["volumes"]}
    shared = [src for src, target in volumes if PurePosixPath(target) in PurePosixPath(config).parents]
    assert len(set(shared)) == 1, shared


def test_image_is_built_from_the_repo_dockerfile(compose):
    builds = {name: svc["build"] for name, svc in compose["services"].items() if "build" in svc}
    assert set(builds) >= AIRFLOW_SERVICES
    for name, build in builds.items():
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (REPO / context / dockerfile).is_file(), name
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.\d+", text, re.M)
    # Every COPY source is in the build context.
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):
        args = [a for a in shlex.split(line) if not a.startswith("--")]
        for source in args[:-1]:
            assert (REPO / source).exists(), source
