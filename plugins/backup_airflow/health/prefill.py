"""An ASGI middleware that lets a link pre-fill backup_restore's trigger form (see backupkit.prefill).

The trigger dialog of Airflow 3.3's UI takes its initial values from the DAG's params as
``GET /api/v2/dags/{dag_id}/details`` returns them. When the page that asks (the request's
Referer, which the browser sets for the UI's own requests) is ``/dags/<restore DAG>?conf=...``
and the values pass :func:`backupkit.prefill.prefill_values`, this middleware sets those
params' ``value`` in that one response. Every other request passes through untouched; nothing
is buffered except that response.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from backupkit.prefill import FIELDS, PrefillRefused, apply_to_params, prefill_values

log = logging.getLogger(__name__)
_DETAILS = re.compile(r"/api/v2/dags/([^/]+)/details$")
_PAGE = re.compile(r"/dags/([^/]+)/?$")


def requested_values(path: str, referer: str | None, config_of: Callable[[], Any]) -> dict | None:
    """The checked form values for this request, or None (not a restore form asked from a prefill link)."""
    m = _DETAILS.search(path)
    if not m or unquote(m.group(1)) not in FIELDS or not referer:
        return None
    dag_id = unquote(m.group(1))
    ref = urlsplit(referer)
    page = _PAGE.search(ref.path)
    if not page or unquote(page.group(1)) != dag_id:
        return None
    conf = parse_qs(ref.query).get("conf")
    if not conf:
        return None
    try:
        return prefill_values(conf[0], dag_id, config_of())
    except PrefillRefused as exc:
        log.warning("restore form not pre-filled from %s: %s", ref.path, exc)
        return None


class TriggerFormPrefill:
    """Root middleware (``fastapi_root_middlewares``); ``config_of`` returns the backup configuration."""

    def __init__(self, app: Any, config_of: Callable[[], Any] | None = None):
        self.app = app
        self.config_of = config_of or _default_config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "GET":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        referer = headers.get(b"referer", b"").decode("latin-1") or None
        try:
            values = requested_values(scope.get("path", ""), referer, self.config_of)
        except Exception:  # a broken configuration must not break the Airflow API
            log.exception("restore form pre-fill skipped")
            values = None
        if values is None:
            return await self.app(scope, receive, send)
        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            await send_rewritten(b"".join(chunks))

        async def send_rewritten(body: bytes):
            hdrs = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            encoded = dict(hdrs).get(b"content-encoding")
            if start.get("status") == 200 and not encoded:
                try:
                    doc = json.loads(body)
                    if apply_to_params(doc, values):
                        body = json.dumps(doc).encode()
                except ValueError:
                    pass
            await send({**start, "headers": hdrs + [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        return await self.app(scope, receive, capture)


def _default_config():
    from backup_airflow.health.app import service

    return service().config()


__all__ = ["TriggerFormPrefill", "requested_values"]
