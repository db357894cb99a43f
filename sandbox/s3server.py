"""A real S3 HTTP endpoint on loopback (moto in server mode, :mod:`sandbox.s3moto`), and a production-like bucket."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backupkit.config import REPO_ROOT
from backupkit.pgserver import free_port
from backupkit.storage import objectstore

SANDBOX_KEY = "sandbox-access-key"
SANDBOX_SECRET = "sandbox-secret-key"
REGION = "us-east-1"


def s3_client(endpoint_url: str | None = None, **kwargs: Any) -> Any:
    """The product's S3 client with the sandbox's keys when an endpoint is given."""
    if endpoint_url:
        kwargs.setdefault("key", SANDBOX_KEY)
        kwargs.setdefault("secret", SANDBOX_SECRET)
    return objectstore.s3_client(endpoint_url, region=REGION, **kwargs)


@dataclass
class MotoServer:
    """The S3 endpoint (moto, adapted: :mod:`sandbox.s3moto`) as a subprocess on 127.0.0.1.

    With ``data_dir`` the state (bodies and a snapshot of the metadata) lives there and
    survives a restart; without, a temporary directory holds the bodies and is deleted when
    the server stops.
    """

    port: int = 0
    log_path: Path | None = None
    data_dir: Path | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    scratch: Path | None = None  # without data_dir: the temporary directory the server deletes when it stops

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "sandbox.s3moto", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.data_dir is None:
            self.scratch = Path(tempfile.mkdtemp(prefix="sandbox-s3-"))
            return [*args, "--data", str(self.scratch), "--ephemeral"]
        return [*args, "--data", str(Path(self.data_dir).resolve())]

    def start(self, timeout: float = 30) -> "MotoServer":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env, cwd=str(REPO_ROOT))
        if self.log_path:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the S3 server exited with {self.proc.returncode}"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=1)
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"the S3 server on port {self.port} not ready after {timeout}s")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (the server saves its state and exits), SIGKILL only if it does not; then the
        temporary directory is removed here too, in case the server could not (killed)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.scratch is not None and self.proc is not None and self.proc.poll() is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def client(self) -> Any:
        return s3_client(self.endpoint_url)


def create_production_bucket(client: Any, bucket: str, *, encryption: bool = True, object_lock_days: int = 0) -> None:
    """A bucket set up like production: versioning, default encryption, object lock, no public access."""
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)  # implies versioning
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    if encryption:
        client.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
        )
    client.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={"BlockPublicAcls": True, "IgnorePublicAcls": True,
                                        "BlockPublicPolicy": True, "RestrictPublicBuckets": True},
    )
    if object_lock_days:
        client.put_object_lock_configuration(
            Bucket=bucket,
            ObjectLockConfiguration={"ObjectLockEnabled": "Enabled",
                                     "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": object_lock_days}}},
        )


def reset(endpoint_url: str) -> None:
    """Drop all state of a moto server (between tests)."""
    req = urllib.request.Request(endpoint_url + "/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=5)


def env_for_airflow(endpoint_url: str) -> dict[str, str]:
    """``AIRFLOW_CONN_AWS_DEFAULT`` pointing Airflow's S3Hook at the loopback endpoint."""
    import json

    return {
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
            "conn_type": "aws", "login": SANDBOX_KEY, "password": SANDBOX_SECRET,
            "extra": {"endpoint_url": endpoint_url, "region_name": REGION},
        }),
        "AWS_DEFAULT_REGION": REGION,
    }


__all__ = ["MotoServer", "s3_client", "create_production_bucket", "reset", "env_for_airflow"]
