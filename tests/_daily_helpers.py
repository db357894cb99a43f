"""Helpers for the daily-verification tests: a recording HTTP server and the Airflow DB fixture.

The HTTP server is real (``http.server`` on 127.0.0.1 in a thread): webhook alerts and
Pushgateway pushes go over a socket exactly as in production, and the test reads back what
arrived.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import airflow_env


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingServer:
    """Answers every request with ``status`` (or the next of ``statuses``) and records it."""

    status: int = 200
    statuses: list[int] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.requests.append(Request(self.command, self.path, dict(self.headers), body))
                status = recorder.statuses.pop(0) if recorder.statuses else recorder.status
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_PUT = do_GET = do_DELETE = _handle

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def http_server():
    server = RecordingServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata DB in a throwaway AIRFLOW_HOME, shared by the session."""
    return airflow_env.ensure_db()


def task_states(dr) -> dict[str, str]:
    """``task_id`` (``task_id[i]`` for mapped instances) -> final state."""
    out = {}
    for ti in dr.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        out[key] = str(ti.state.value if hasattr(ti.state, "value") else ti.state)
    return out
