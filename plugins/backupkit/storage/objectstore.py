"""The object store: the one module of the product that talks to the S3 API.

Every S3 request the jobs make goes through here, so paging, "404 means None", error
classification and the client's retry and checksum settings are written once.
"""

from __future__ import annotations

from typing import Any

REGION = "us-east-1"


def s3_client(endpoint_url: str | None = None, *, key: str | None = None, secret: str | None = None,
              region: str = REGION, **kwargs: Any) -> Any:
    """A boto3 S3 client: ``endpoint_url`` (an S3-compatible endpoint) or AWS's default endpoint.

    Credentials: ``key``/``secret`` when given, else boto3's default chain (environment,
    profile, instance role). Checksums are computed and validated only where the caller
    asks for them (the checks ask S3 for its stored checksums explicitly).
    """
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=region,
        config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        **kwargs,
    )


__all__ = ["s3_client", "REGION"]
