"""Reach a pod's port from outside the cluster: a loopback listener relayed through the API server's
port-forward (``restore.kubernetes_access: port-forward``).

psql and pg_restore are separate processes that need a TCP address, so each connection to
``127.0.0.1:<local port>`` gets its own port-forward stream (the API server's websocket
``pods/NAME/portforward?ports=PORT``, opened by the ``kubernetes`` client's ``portforward``) and the
bytes are copied both ways until either side closes. A stream that cannot be opened closes the local
connection at once (the client sees the server go away) and is recorded in :attr:`errors`; nothing
is retried here: the restore fails and says so. The relay only listens on loopback.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from typing import Any

CHUNK = 64 * 1024
IDLE_POLL = 0.5  # seconds between checks that the relay was stopped


def api_port_forward(core: Any, pod: str, namespace: str, port: int) -> Callable[[], Any]:
    """A function opening one port-forward stream to ``pod:port``; returns a socket-like object."""
    from kubernetes.stream import portforward

    def open_stream() -> Any:
        pf = portforward(core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
        return _Stream(pf, pf.socket(port))

    return open_stream


class _Stream:
    """The port's socket of one PortForward, closing the whole forward with it."""

    def __init__(self, forward: Any, sock: Any):
        self.forward, self.sock = forward, sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.forward.close()


class PortForwardRelay:
    """``127.0.0.1:<port>`` relayed to a pod's port, one stream per connection, until :meth:`stop`."""

    def __init__(self, open_stream: Callable[[], Any], *, what: str = "pod"):
        self._open, self.what = open_stream, what
        self.errors: list[str] = []
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self.port: int | None = None

    def start(self) -> int:
        """Listen on a free loopback port; return it."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(IDLE_POLL)
        self._listener, self.port = listener, listener.getsockname()[1]
        threading.Thread(target=self._accept, name=f"port-forward {self.what}", daemon=True).start()
        return self.port

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept and stops listening now
            except OSError:
                pass
            self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            remote = self._open()
        except Exception as exc:  # noqa: BLE001 - the connecting client sees a closed connection
            self.errors.append(f"port-forward to {self.what}: {type(exc).__name__}: {exc}"[:500])
            client.close()
            return
        try:
            _pump(client, remote, self._stopped)
        finally:
            client.close()
            remote.close()


def _pump(a: socket.socket, b: Any, stopped: threading.Event) -> None:
    """Copy bytes both ways until one side closes (or the relay stops)."""
    ends = {a: b, b: a}
    while not stopped.is_set():
        ready, _, _ = select.select(list(ends), [], [], IDLE_POLL)
        for src in ready:
            try:
                data = src.recv(CHUNK)
            except OSError:
                return
            if not data:
                return
            ends[src].sendall(data)


__all__ = ["PortForwardRelay", "api_port_forward"]
