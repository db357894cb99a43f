"""HTTP health checks: the replace saga's after a scale-up, the drill's smoke check, the smoke pod's.

A check GETs a URL until it answers 2xx or a deadline passes (pods warm up); every request
carries its own timeout, so a server that accepts the connection and never answers cannot
hold the caller past the deadline.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

from backupkit.model import CheckResult


def http_health_check(url: str, *, timeout: float = 60.0, interval: float = 2.0,
                      request_timeout: float = 5.0) -> Callable[[], None]:
    """A check that passes once ``url`` answers 2xx, retrying until ``timeout``; raises RuntimeError."""

    def check() -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            left = max(0.1, min(request_timeout, deadline - time.monotonic()))
            try:
                with urllib.request.urlopen(url, timeout=left) as resp:  # noqa: S310 - configured URL
                    if 200 <= resp.status < 300:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise RuntimeError(f"health check {url} failed for {timeout:g}s: {last}")
            time.sleep(interval)

    return check


def smoke_check(url: str | None, *, timeout: float, artifact: str = "application") -> CheckResult:
    """GET ``url`` until it answers 2xx (or ``timeout``); without a URL, a skipped (passing) check."""
    if not url:
        return CheckResult(artifact, "smoke check", True, "skipped: no smoke check configured")
    try:
        http_health_check(url, timeout=timeout, interval=min(2.0, max(timeout / 5, 0.1)),
                          request_timeout=min(10.0, max(timeout, 0.5)))()
    except RuntimeError as exc:
        return CheckResult(artifact, "smoke check", False, str(exc))
    return CheckResult(artifact, "smoke check", True, f"GET {url} answered 2xx")


__all__ = ["http_health_check", "smoke_check"]
