"""One Kubernetes API call, bounded and retried where that helps: every module here calls through it.

The rules (docs/kubernetes.md, "Rules every call follows"): a request timeout on every call; 429
after its ``Retry-After`` (capped), 500/502/503/504 with backoff, up to MAX_ATTEMPTS; any other
error is the server's verdict, rendered ``CODE Reason: message`` by :func:`api_error`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from urllib3.exceptions import HTTPError as _Urllib3Error

# (connect, read) seconds for every API call: a hung API server raises (urllib3's timeout), it never
# holds a switch, a rollback or a teardown forever.
REQUEST_TIMEOUT = (10.0, 30.0)


# Answers worth another attempt: throttled (429, after its Retry-After) or a server-side failure.
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ATTEMPTS = 4
MAX_RETRY_AFTER = 30.0  # seconds: a Retry-After beyond this is capped, never obeyed blindly


def status_of(exc: BaseException) -> int | None:
    return getattr(exc, "status", None)


def api_error(exc: BaseException) -> str:
    """``CODE Reason: message`` of an API error, from the Status object the server answered."""
    status = status_of(exc)
    if status is None:
        return f"{type(exc).__name__}: {exc}"
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    reason = body.get("reason") or getattr(exc, "reason", None) or ""
    message = body.get("message") or ""
    return " ".join(f"{status} {reason}: {message}".split()).rstrip(":")[:1000]


def retry_after(exc: BaseException, attempt: int) -> float:
    headers = getattr(exc, "headers", None) or {}
    try:
        wait = float(headers.get("Retry-After"))
    except (TypeError, ValueError):
        wait = 0.5 * 2 ** (attempt - 1)
    return max(0.0, min(wait, MAX_RETRY_AFTER))


def call(fn: Callable[..., Any], *args: Any, request_timeout: Any = None,
         sleep: Callable[[float], None] = time.sleep, **kwargs: Any) -> Any:
    """One API call with a request timeout; 429 (after Retry-After, capped) and 5xx answers are
    retried up to MAX_ATTEMPTS. A create retried after a 5xx may meet its own object (409):
    callers that create handle that (``runtime._create_own``)."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return fn(*args, _request_timeout=request_timeout or REQUEST_TIMEOUT, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only API answers are retried
            if status_of(exc) not in RETRIED_STATUSES or attempt == MAX_ATTEMPTS:
                raise
            sleep(retry_after(exc, attempt))
    raise AssertionError("unreachable")


# A connection that breaks, closes early or times out (urllib3 raises these from the request and
# from a streamed body): no answer from the server, so nothing to judge.
TRANSPORT_ERRORS = (_Urllib3Error, OSError)

__all__ = ["call", "api_error", "status_of", "retry_after", "REQUEST_TIMEOUT", "RETRIED_STATUSES", "MAX_ATTEMPTS",
           "MAX_RETRY_AFTER", "TRANSPORT_ERRORS"]
