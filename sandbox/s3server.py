"""A real S3 HTTP endpoint on loopback (moto in server mode), and a production-like bucket."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """``moto_server`` as a subprocess on 127.0.0.1; state lives in memory for its lifetime."""

    port: int = 0
    log_path: Path | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> "MotoServer":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        exe = Path(sys.executable).parent / "moto_server"
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=1)
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"moto_server on port {self.port} not ready after {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

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
