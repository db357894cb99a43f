"""The sandbox's application platform: runs the booking application's replicas as processes.

``python -m sandbox.appsupervisor --control-dir .sandbox/app`` (started by ``make up``) is the
controller side of :mod:`backupkit.restore.local_platform`: every half second, for each
``<namespace>/<deployment>/spec.json``, it makes the running replicas match the spec -- stops
replicas started with another ``env`` and surplus ones, starts missing ones -- probes each
replica's ``/health`` and writes ``status.json``. What to run is the spec's ``program``
(``{"role": "backend" | "frontend", "port": N}``, see :mod:`sandbox.bookingapp`), which the
platform never touches; :func:`seed` writes the sandbox's two deployments.

Replicas are children in the supervisor's process group, so ``make down`` (which stops the
group) stops them too. A spec that breaks its rule is reported in the status message and
its replicas are left as they are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from backupkit import clock
from backupkit.pgserver import free_port
from backupkit.restore.local_platform import (ControlError, Spec, Status, deployment_dir, locked, read_spec,
                                              write_json)

INTERVAL = 0.5
PROBE_TIMEOUT = 2.0
STOP_GRACE = 5.0


@dataclass
class Replica:
    proc: subprocess.Popen
    env_hash: str
    probe_port: int
    started: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.probe_port}/health", timeout=PROBE_TIMEOUT) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def env_hash(env: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]


class Supervisor:
    def __init__(self, control_dir: Path, log=print):
        self.control_dir = Path(control_dir)
        self.replicas: dict[Path, list[Replica]] = {}
        self.log = log

    def _start(self, spec: Spec, directory: Path) -> Replica:
        program = spec.extra.get("program") or {}
        role, port = program.get("role"), program.get("port")
        if role not in ("backend", "frontend") or not isinstance(port, int):
            raise ControlError(f"{directory / 'spec.json'}: program must be {{'role': 'backend'|'frontend', "
                               f"'port': N}}, got {program!r}")
        probe = free_port()
        env = {**os.environ, **spec.env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        log = open(directory / "replicas.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "sandbox.bookingapp", "--role", role, "--port", str(port),
                                 "--probe-port", str(probe)], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        return Replica(proc, env_hash(spec.env), probe)

    def reconcile(self, directory: Path) -> Status:
        running = [r for r in self.replicas.get(directory, []) if r.alive()]
        try:
            spec = read_spec(directory)
        except (ControlError, FileNotFoundError) as exc:
            self.replicas[directory] = running
            return Status(0, len(running), 0, 0, clock.timestamp(), f"spec not applied: {exc}")
        current = env_hash(spec.env)
        keep = [r for r in running if r.env_hash == current][: spec.replicas]
        for r in running:
            if r not in keep:
                r.stop()
        message = ""
        try:
            while len(keep) < spec.replicas:
                keep.append(self._start(spec, directory))
        except (ControlError, OSError) as exc:
            message = str(exc)
        self.replicas[directory] = keep
        ready = sum(1 for r in keep if r.ready())
        return Status(spec.generation, len(keep), ready, len(keep), clock.timestamp(), message)

    def deployments(self) -> list[Path]:
        if not self.control_dir.is_dir():
            return []
        return sorted(p.parent for p in self.control_dir.glob("*/*/spec.json"))

    def step(self) -> None:
        for directory in self.deployments():
            write_json(directory / "status.json", self.reconcile(directory).to_doc())

    def stop_all(self) -> None:
        for replicas in self.replicas.values():
            for r in replicas:
                r.stop()


# -- the sandbox's deployments -------------------------------------------------------------------
def with_port(url: str, port: int) -> str:
    """``url`` with its port replaced (the sandbox's PostgreSQL may come back on another port)."""
    p = urlsplit(url)
    netloc = p.netloc.rsplit("@", 1)
    host = netloc[-1].rsplit(":", 1)[0] if ":" in netloc[-1] else netloc[-1]
    return urlunsplit((p.scheme, "@".join([*netloc[:-1], f"{host}:{int(port)}"]), p.path, p.query, p.fragment))


def seed(control_dir: Path, *, namespace: str, database_url: str, backend: str, frontend: str, backend_port: int,
         frontend_port: int, pg_port: int, say=print) -> None:
    """The booking application's deployments, written once; later calls keep what a replace
    switched and only follow PostgreSQL to its current port."""
    entries = {
        backend: {"program": {"role": "backend", "port": backend_port}, "replicas": 2,
                  "env": {"DATABASE_URL": database_url}},
        frontend: {"program": {"role": "frontend", "port": frontend_port}, "replicas": 1,
                   "env": {"BACKEND_URL": f"http://127.0.0.1:{backend_port}"}},
    }
    for name, want in entries.items():
        d = deployment_dir(control_dir, namespace, name)
        d.mkdir(parents=True, exist_ok=True)
        with locked(d):
            try:
                spec = read_spec(d)
            except FileNotFoundError:
                spec = Spec(1, want["replicas"], want["env"], {"program": want["program"]})
                write_json(d / "spec.json", spec.to_doc())
                say(f"  deployment {namespace}/{name}: {want['replicas']} replica(s) on port {want['program']['port']}")
                continue
            url = spec.env.get("DATABASE_URL")
            if url and urlsplit(url).port != pg_port:
                spec.env["DATABASE_URL"] = with_port(url, pg_port)
                spec.generation += 1
                write_json(d / "spec.json", spec.to_doc())
                say(f"  deployment {namespace}/{name}: DATABASE_URL follows PostgreSQL to port {pg_port}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandbox.appsupervisor", description=__doc__.splitlines()[0])
    ap.add_argument("--control-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    sup = Supervisor(args.control_dir, log=lambda m: print(m, file=sys.stderr, flush=True))
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    sup.log(f"application supervisor on {args.control_dir}")
    try:
        while not stopping:
            try:
                sup.step()
            except OSError as exc:
                sup.log(f"step failed: {exc}")
            time.sleep(INTERVAL)
    finally:
        sup.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
