"""A stand-in of the booking application: one replica of its backend or frontend.

``python -m sandbox.bookingapp --role backend --port 8091 --probe-port 40123``: reads its
database from ``DATABASE_URL`` (set by the platform, :mod:`sandbox.appsupervisor`) and answers

``GET /health``         200 ``{"status": "ok", "database": ..., "bookings": N}`` when the database
                        answers and has the booking tables; 503 with the error otherwise
``GET /api/bookings``   the newest bookings (``?limit=`` 1..100, default 20) from the database

The frontend (``--role frontend``, ``BACKEND_URL``) answers the same paths by asking the
backend, like the real single-page app's server. Replicas of one deployment share the service
``--port`` (``SO_REUSEPORT``: the kernel spreads connections over them, as a Service does);
``--probe-port`` is the replica's own, for the supervisor's readiness probe.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CONNECT_TIMEOUT = 3
BOOKINGS_SQL = """SELECT b.id, u.email, s.name AS service, b.starts_at, b.status
FROM bookings b JOIN users u ON u.id = b.user_id JOIN services s ON s.id = b.service_id
ORDER BY b.created_at DESC, b.id DESC LIMIT %s"""


def _database() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        raise RuntimeError("DATABASE_URL is not set")
    return url


def backend_answer(path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
    import psycopg

    url = _database()
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT) as conn:
            if path == "/health":
                count = conn.execute("SELECT count(*) FROM bookings").fetchone()[0]
                return 200, {"status": "ok", "database": name, "bookings": count}
            limit = query.get("limit", ["20"])[0]
            if not limit.isdigit() or not 1 <= int(limit) <= 100:
                return 400, {"error": "limit must be 1..100"}
            rows = conn.execute(BOOKINGS_SQL, (int(limit),)).fetchall()
            return 200, {"database": name, "bookings": [
                {"id": r[0], "email": r[1], "service": r[2], "starts_at": r[3].isoformat(), "status": r[4]}
                for r in rows]}
    except psycopg.Error as exc:
        return 503, {"status": "error", "database": name, "error": str(exc).strip()[:500]}


def frontend_answer(path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
    base = os.environ.get("BACKEND_URL", "").rstrip("/")
    url = base + path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
    try:
        with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT + 2) as resp:  # noqa: S310 - our own backend
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"status": "error", "error": f"backend answered HTTP {exc.code}"}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return 503, {"status": "error", "error": f"backend {base} unreachable: {exc}"}


class Handler(BaseHTTPRequestHandler):
    answer = staticmethod(backend_answer)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = urllib.parse.urlsplit(self.path)
        if parts.path not in ("/health", "/api/bookings"):
            status, body = 404, {"error": f"no such path {parts.path}"}
        else:
            try:
                status, body = self.answer(parts.path, urllib.parse.parse_qs(parts.query))
            except Exception as exc:  # noqa: BLE001 - a stand-in answers 500 like a real app would
                status, body = 500, {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return None


class SharedPortServer(ThreadingHTTPServer):
    """Binds with SO_REUSEPORT so every replica of a deployment listens on the service port."""

    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandbox.bookingapp", description=__doc__.splitlines()[0])
    ap.add_argument("--role", choices=("backend", "frontend"), required=True)
    ap.add_argument("--port", type=int, required=True, help="the deployment's service port (shared)")
    ap.add_argument("--probe-port", type=int, required=True, help="this replica's own port")
    args = ap.parse_args(argv)
    handler = type("RoleHandler", (Handler,), {"answer": staticmethod(
        backend_answer if args.role == "backend" else frontend_answer)})
    servers = [SharedPortServer(("127.0.0.1", args.port), handler),
               ThreadingHTTPServer(("127.0.0.1", args.probe_port), handler)]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=servers[0].shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    servers[0].serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
