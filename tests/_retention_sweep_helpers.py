"""Shared setup of the retention sweep tests: a one-source configuration, a history of
real files (with sidecars and manifests) on disk and in the loopback S3 bucket, the
verification state, and S3 clients that inject faults into DeleteObjects."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import yaml

from backupkit.config import Config, load_config
from backupkit.retention.audit import AuditLog
from backupkit.retention.sweep import sweep_source
from backupkit.storage.localfs import COMPANIONS
from backupkit.state import VerificationState
from backupkit.storage.objectstore import Bucket

SOURCE = "trixtech-db"
PREFIX = "database/"
NOW = datetime(2024, 5, 9, 12, 0, tzinfo=timezone.utc)
# 19 nightly backups, 20 April .. 8 May 2024.
NIGHTS = [datetime(2024, 4, 20, 2, 0, tzinfo=timezone.utc) + timedelta(days=i) for i in range(19)]


def write_config(tmp_path: Path, *, bucket: str = "trixtech-backups", hold_list: Iterable[str] = (),
                 **retention: Any) -> Config:
    policy = {"keep_daily": 5, "keep_weekly": 2, "max_delete_fraction": 0.9, "min_keep": 3} | retention
    doc = {
        "bucket": {"name": bucket},
        "databases": [{"name": SOURCE, "database": "trixtech", "dump_format": "custom",
                       "local_dir": str(tmp_path / "backups" / "database"), "s3_prefix": PREFIX,
                       "pattern": "trixtech_%Y%m%d_%H%M%S.dump", "retention": policy}],
        "verification": {"state_dir": str(tmp_path / "state")},
        "hold_list": list(hold_list),
    }
    path = tmp_path / "backups.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def name_for(when: datetime) -> str:
    return when.strftime("trixtech_%Y%m%d_%H%M%S.dump")


def make_history(config: Config, s3: Any, nights: Iterable[datetime] = NIGHTS, *, local: bool = True,
                 remote: bool = True, verdict: str | None = "passed", companions: bool = True) -> list[str]:
    """Backups with distinct content; sidecar and manifest beside each; state records as ``verdict``."""
    src = config.source(SOURCE)
    src.local_dir.mkdir(parents=True, exist_ok=True)
    names = []
    with VerificationState(config.state_dir) as state:
        for when in nights:
            name = name_for(when)
            body = (f"PGDMP backup of {name}\n".encode() * 50) + hashlib.sha256(name.encode()).digest()
            sha = hashlib.sha256(body).hexdigest()
            files = {name: body}
            if companions:
                files[name + ".sha256"] = f"{sha}  {name}\n".encode()
                files[name + ".manifest.json"] = json.dumps({"format": 1, "database": "trixtech",
                                                            "tables": {"public.users": 10}}).encode()
            for fname, data in files.items():
                if local:
                    (src.local_dir / fname).write_bytes(data)
                if remote:
                    s3.put_object(Bucket=config.bucket, Key=PREFIX + fname, Body=data, ChecksumAlgorithm="SHA256")
            if verdict is not None:
                state.record(f"{SOURCE}/{name}", sha, len(body), verdict == "passed", NOW)
            names.append(name)
    return names


def local_files(config: Config) -> set[str]:
    d = config.source(SOURCE).local_dir
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def s3_keys(config: Config, s3: Any) -> set[str]:
    keys = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=config.bucket, Prefix=PREFIX):
        keys.update(o["Key"][len(PREFIX):] for o in page.get("Contents", ()))
    return keys


def backups_left(config: Config, s3: Any) -> tuple[set[str], set[str]]:
    """(local backup names, S3 backup names): companions excluded."""
    def main(names: set[str]) -> set[str]:
        return {n for n in names if not n.endswith(COMPANIONS)}
    return main(local_files(config)), main(s3_keys(config, s3))


def all_files_of(names: Iterable[str]) -> set[str]:
    return {n + suffix for n in names for suffix in ("", *COMPANIONS)}


def sweep(config: Config, s3: Any, *, dry_run: bool = False, run_id: str = "run-1", **kw: Any):
    kw.setdefault("now", NOW)
    kw.setdefault("backoff", 0)
    with VerificationState(config.state_dir) as state:
        return sweep_source(config, SOURCE, bucket=Bucket(s3, config.bucket), state=state, dry_run=dry_run, run_id=run_id,
                            audit=AuditLog(config.state_dir), **kw)


def audit_records(config: Config) -> list[dict]:
    return list(AuditLog(config.state_dir).records())


class SimulatedCrash(BaseException):
    """The process dies here (not an Exception: nothing in the sweep may catch it)."""


class FaultyS3:
    """A real S3 client whose DeleteObjects misbehaves as told; everything else passes through.

    ``errors``: {key: [codes...]}: the key is reported in ``Errors`` with the next code
    each time it is sent, then deleted normally once the list is used up (a code
    repeated many times is a permanent failure). ``unreachable_from``: DeleteObjects call
    number (1-based) from which every call raises EndpointConnectionError.
    ``crash_after``: call number after whose (successful) request the process "dies".
    ``tagging_denied``: keys whose GetObjectTagging is refused (hold status unknown).
    """

    def __init__(self, real: Any, *, errors: dict[str, list[str]] | None = None, unreachable_from: int | None = None,
                 crash_after: int | None = None, crash_before: int | None = None,
                 tagging_denied: Iterable[str] = ()):
        self._real = real
        self.tagging_denied = set(tagging_denied)
        self.errors = {k: list(v) for k, v in (errors or {}).items()}
        self.unreachable_from, self.crash_after, self.crash_before = unreachable_from, crash_after, crash_before
        self.delete_calls: list[list[str]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_object_tagging(self, **kwargs: Any) -> dict:
        from botocore.exceptions import ClientError

        if kwargs["Key"] in self.tagging_denied:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObjectTagging")
        return self._real.get_object_tagging(**kwargs)

    def delete_objects(self, **kwargs: Any) -> dict:
        from botocore.exceptions import EndpointConnectionError

        with self._lock:
            objects = kwargs["Delete"]["Objects"]
            self.delete_calls.append([o["Key"] for o in objects])
            n = len(self.delete_calls)
            if self.crash_before is not None and n >= self.crash_before:
                raise SimulatedCrash(f"crash before DeleteObjects call {n}")
            if self.unreachable_from is not None and n >= self.unreachable_from:
                raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1/")
            injected, send = [], []
            for o in objects:
                codes = self.errors.get(o["Key"])
                if codes:
                    injected.append({"Key": o["Key"], "Code": codes.pop(0), "Message": "injected fault"})
                else:
                    send.append(o)
            resp: dict = {"Errors": []}
            if send:
                real = self._real.delete_objects(**{**kwargs, "Delete": {**kwargs["Delete"], "Objects": send}})
                resp["Errors"] = list(real.get("Errors") or [])
            resp["Errors"] += injected
            if self.crash_after is not None and n >= self.crash_after:
                raise SimulatedCrash(f"crash after DeleteObjects call {n}")
            return resp
