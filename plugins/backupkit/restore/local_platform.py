"""The application platform of one machine: deployments as supervised local processes.

``restore.app.platform: local`` makes the replace saga (:func:`backupkit.restore.switch.switch_database`)
scale and switch an application whose replicas a supervisor runs on this machine (the
sandbox's booking application, :mod:`sandbox.appsupervisor`), the way ``kubernetes`` does it
through the API server. The two sides meet in ``restore.app.control_dir``, one directory per
deployment, ``<control_dir>/<namespace>/<deployment>/``:

``spec.json`` -- written by the platform (this module), atomically under ``.lock``::

    {"format": 1, "generation": 4, "replicas": 2,
     "env": {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5433/trixtech"},
     ...}                           # anything else (program, port) belongs to the supervisor and is kept

``generation`` goes up by one with every change of ``replicas`` or ``env``, as a Kubernetes
deployment's ``metadata.generation`` does.

``status.json`` -- written by the supervisor after each reconciliation::

    {"format": 1, "observed_generation": 4, "replicas": 2, "ready_replicas": 2,
     "updated_replicas": 2, "heartbeat": 1767225600.0, "message": ""}

``replicas`` are the processes running, ``ready_replicas`` those whose readiness probe
passes, ``updated_replicas`` those started with the current ``env``; ``heartbeat`` is when
it was written (seconds since the epoch). A deployment has settled at ``n`` replicas when
``observed_generation >= generation`` and, for ``n = 0``, no process runs, else running,
ready and updated are all ``n``: the same test :class:`KubernetesAppPlatform` applies.

Both files are hostile input like any other (docs/local-platform.md): a JSON object of at
most :data:`MAX_FILE_BYTES`, the fields above with their types and ranges, environment
names ``[A-Za-z_][A-Za-z0-9_]*``; anything else is a :class:`ControlError` naming the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from backupkit import clock as backup_clock
from backupkit.config import AppSwitch

FORMAT = 1
MAX_FILE_BYTES = 64 * 1024
MAX_REPLICAS = 32
MAX_ENV_VALUE = 4096
STALE_AFTER = 15.0  # seconds without a status heartbeat: the supervisor is not running
CONTAINER = "app"  # the one "container" of a local deployment, in setting targets deployment/<d>/app
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ControlError(ValueError):
    """A control file that breaks its rule, or a deployment that does not exist."""


def _int(doc: dict, key: str, path: Path, lo: int, hi: int) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ControlError(f"{path}: {key} must be an integer {lo}..{hi}, got {value!r}")
    return value


def read_json(path: Path) -> dict:
    """A control file as a dict; the size limit applies while reading."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ControlError(f"{path}: cannot read: {exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ControlError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ControlError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ControlError(f"{path}: must be a JSON object")
    if doc.get("format") != FORMAT:
        raise ControlError(f"{path}: format must be {FORMAT}, got {doc.get('format')!r}")
    return doc


@dataclass
class Spec:
    """What a deployment should be (spec.json)."""

    generation: int
    replicas: int
    env: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, doc: dict, path: Path) -> "Spec":
        env = doc.get("env", {})
        if not isinstance(env, dict):
            raise ControlError(f"{path}: env must be an object of names to strings")
        for k, v in env.items():
            if not _ENV_NAME.fullmatch(k) or not isinstance(v, str) or len(v) > MAX_ENV_VALUE:
                raise ControlError(f"{path}: env {k!r}: names are [A-Za-z_][A-Za-z0-9_]*, values strings of at most "
                                   f"{MAX_ENV_VALUE} characters")
        extra = {k: v for k, v in doc.items() if k not in ("format", "generation", "replicas", "env")}
        return cls(_int(doc, "generation", path, 1, 2**53), _int(doc, "replicas", path, 0, MAX_REPLICAS), dict(env),
                   extra)

    def to_doc(self) -> dict:
        return {**self.extra, "format": FORMAT, "generation": self.generation, "replicas": self.replicas,
                "env": dict(self.env)}


@dataclass(frozen=True)
class Status:
    """What the supervisor saw (status.json)."""

    observed_generation: int
    replicas: int
    ready_replicas: int
    updated_replicas: int
    heartbeat: float
    message: str = ""

    @classmethod
    def parse(cls, doc: dict, path: Path) -> "Status":
        beat = doc.get("heartbeat")
        if isinstance(beat, bool) or not isinstance(beat, (int, float)) or not 0 <= beat < 2**40:
            raise ControlError(f"{path}: heartbeat must be seconds since the epoch, got {beat!r}")
        message = doc.get("message", "")
        if not isinstance(message, str):
            raise ControlError(f"{path}: message must be a string")
        return cls(_int(doc, "observed_generation", path, 0, 2**53), _int(doc, "replicas", path, 0, MAX_REPLICAS),
                   _int(doc, "ready_replicas", path, 0, MAX_REPLICAS),
                   _int(doc, "updated_replicas", path, 0, MAX_REPLICAS), float(beat), message[:1000])

    def to_doc(self) -> dict:
        return {"format": FORMAT, "observed_generation": self.observed_generation, "replicas": self.replicas,
                "ready_replicas": self.ready_replicas, "updated_replicas": self.updated_replicas,
                "heartbeat": self.heartbeat, "message": self.message}


def write_json(path: Path, doc: dict) -> None:
    """Write ``doc`` so a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def deployment_dir(control_dir: Path, namespace: str, deployment: str) -> Path:
    for what, name in (("namespace", namespace), ("deployment", deployment)):
        if not isinstance(name, str) or len(name) > 63 or not _NAME.fullmatch(name):
            raise ControlError(f"{what} {name!r} is not a valid name (lower-case, digits, '-')")
    return Path(control_dir) / namespace / deployment


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    with open(directory / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_spec(directory: Path) -> Spec:
    path = directory / "spec.json"
    return Spec.parse(read_json(path), path)


def read_status(directory: Path) -> Status | None:
    path = directory / "status.json"
    try:
        return Status.parse(read_json(path), path)
    except FileNotFoundError:
        return None


def settled(spec: Spec, status: Status | None, replicas: int) -> tuple[bool, str]:
    """Whether the deployment runs exactly ``replicas`` ready, current processes (module docstring)."""
    if status is None:
        return False, "no status yet"
    detail = (f"{status.ready_replicas}/{replicas} ready, {status.replicas} running, {status.updated_replicas} updated, "
              f"generation {status.observed_generation}/{spec.generation}"
              + (f": {status.message}" if status.message else ""))
    if status.observed_generation < spec.generation:
        return False, detail
    if replicas == 0:
        return status.replicas == 0, detail
    return status.replicas == status.ready_replicas == status.updated_replicas == replicas, detail


class LocalAppPlatform:
    """:class:`backupkit.restore.switch.AppPlatform` over ``restore.app.control_dir``."""

    def __init__(self, app: AppSwitch, *, poll_interval: float = 0.5, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = backup_clock.timestamp,
                 stale_after: float = STALE_AFTER):
        if app.control_dir is None:
            raise ControlError("restore.app.control_dir is not set (needed by platform 'local')")
        self.app, self.control_dir = app, Path(app.control_dir)
        self.poll_interval, self._sleep, self._monotonic, self._wall = poll_interval, sleep, monotonic, wall
        self.stale_after = stale_after

    def _dir(self, namespace: str, deployment: str) -> Path:
        d = deployment_dir(self.control_dir, namespace, deployment)
        if not (d / "spec.json").is_file():
            ns_dir = self.control_dir / namespace
            known = sorted(p.name for p in ns_dir.iterdir() if (p / "spec.json").is_file()) if ns_dir.is_dir() else []
            raise ControlError(f"no deployment {deployment!r} in namespace {namespace!r} of the local platform "
                               f"({self.control_dir}); known: {', '.join(known) or 'none'}")
        return d

    def _update(self, namespace: str, deployment: str, change: Callable[[Spec], bool]) -> Spec:
        d = self._dir(namespace, deployment)
        with locked(d):
            spec = read_spec(d)
            if change(spec):
                spec.generation += 1
                write_json(d / "spec.json", spec.to_doc())
        return spec

    def get_replicas(self, namespace: str, deployment: str) -> int:
        return read_spec(self._dir(namespace, deployment)).replicas

    def scale(self, namespace: str, deployment: str, replicas: int) -> None:
        replicas = int(replicas)
        if not 0 <= replicas <= MAX_REPLICAS:
            raise ControlError(f"replicas must be 0..{MAX_REPLICAS}, got {replicas}")

        def change(spec: Spec) -> bool:
            old, spec.replicas = spec.replicas, replicas
            return old != replicas

        self._update(namespace, deployment, change)

    def wait_for_replicas(self, namespace: str, deployment: str, replicas: int, timeout: float) -> None:
        d = self._dir(namespace, deployment)
        deadline = self._monotonic() + timeout
        while True:
            spec, status = read_spec(d), read_status(d)
            ok, detail = settled(spec, status, replicas)
            if ok:
                return
            age = self._wall() - status.heartbeat if status else None
            if age is not None and age > self.stale_after:
                raise RuntimeError(f"deployment {namespace}/{deployment}: the local platform's supervisor has not "
                                   f"updated {d / 'status.json'} for {age:.0f}s (is the sandbox running? `make up`)")
            if self._monotonic() >= deadline:
                raise TimeoutError(f"deployment {namespace}/{deployment}: {detail} after {timeout:g}s")
            self._sleep(self.poll_interval)

    def read_settings(self, namespace: str, deployments: Sequence[str]) -> dict[str, str]:
        """The database setting per deployment that has ``restore.app.env_var`` (like the Kubernetes
        platform, deployments without it are scaled with the others but not switched)."""
        var, out = self.app.env_var, {}
        for dep in deployments:
            env = read_spec(self._dir(namespace, dep)).env
            if var in env:
                out[f"deployment/{dep}/{self.app.container or CONTAINER}"] = env[var]
        if not out:
            raise ControlError(f"none of the deployments {', '.join(deployments)} has the environment variable {var} "
                               f"(local platform, {self.control_dir / namespace})")
        return out

    def write_setting(self, namespace: str, target: str, value: str) -> None:
        kind, _, rest = target.partition("/")
        deployment = rest.split("/", 1)[0]
        if kind != "deployment" or not deployment:
            raise ControlError(f"the local platform switches deployment/<name>/<container> targets, not {target!r}")
        if len(value) > MAX_ENV_VALUE:
            raise ControlError(f"setting for {target} is longer than {MAX_ENV_VALUE} characters")

        def change(spec: Spec) -> bool:
            old = spec.env.get(self.app.env_var)
            spec.env[self.app.env_var] = value
            return old != value

        self._update(namespace, deployment, change)


__all__ = ["LocalAppPlatform", "ControlError", "Spec", "Status", "read_spec", "read_status", "read_json",
           "write_json", "deployment_dir", "locked", "settled", "FORMAT", "MAX_REPLICAS", "CONTAINER"]
