"""The S3 client and S3's errors, classified once (for :mod:`backupkit.storage.objectstore`).

boto3 and botocore are imported here and in the object store only; every other module asks
these functions (is it "not found"? what does a tired on-call read?) instead of reading
botocore's response dictionaries itself.
"""

from __future__ import annotations

from typing import Any

REGION = "us-east-1"
# Per-key DeleteObjects errors that a retry cannot fix.
PERMANENT_ERRORS = frozenset({"AccessDenied", "InvalidArgument", "InvalidRequest", "MethodNotAllowed",
                              "NoSuchBucket", "NoSuchVersion", "InvalidObjectState"})
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchVersion"})


# --- the client -------------------------------------------------------------------------


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


def client_errors() -> tuple[type[BaseException], ...]:
    """The exception types an S3 call raises for S3's answers and for transport failures."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


# --- errors, classified once ---------------------------------------------------------------


def error_code(exc: BaseException) -> tuple[str, str]:
    """(code, message) of a botocore exception (or any other), for reports."""
    resp = getattr(exc, "response", None) or {}
    err = resp.get("Error") or {}
    code = str(err.get("Code") or type(exc).__name__)
    return code, str(err.get("Message") or exc)


def http_status(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None) or {}
    return (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")


def is_not_found(exc: BaseException) -> bool:
    """The object (or version) does not exist. A missing *bucket* is not this."""
    code = error_code(exc)[0]
    if code == "NoSuchBucket":
        return False
    return code in NOT_FOUND_CODES or http_status(exc) == 404


def describe_error(exc: BaseException, uri: str) -> str:
    """One line a tired on-call can act on: what is wrong with ``uri`` and, where known, what to do."""
    code, message = error_code(exc)
    if code == "NoSuchBucket":
        return f"{uri}: no such bucket ({uri.split('/')[2] if uri.startswith('s3://') else uri})"
    if is_not_found(exc):
        return f"{uri}: no such S3 object"
    if code == "InvalidObjectState":
        return f"{uri}: in an archive storage class (GLACIER/DEEP_ARCHIVE): restore it before it can be read"
    if code in ("AccessDenied", "403", "Forbidden") or http_status(exc) == 403:
        return f"{uri}: access denied (check the IAM permissions of the S3 connection)"
    if code in ("SlowDown", "Throttling", "RequestLimitExceeded", "503"):
        return f"{uri}: S3 is throttling requests ({code}); try again later"
    from botocore.exceptions import BotoCoreError

    if isinstance(exc, BotoCoreError):
        return f"{uri}: cannot reach S3: {exc}"
    return f"{uri}: {code}: {message}"
