"""The API server's websocket port-forward for tests/_kube_api.py (``pods/NAME/portforward``).

It speaks v4.channel.k8s.io and relays the port to a real TCP address of the test's choosing
(``KubeApi.port_targets``), so a real PostgreSQL client talks to a real server through the client
library's port-forward. Kept apart from the REST side, which it shares only the API state with.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
from typing import Any

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class PortForwardMixin:
    """``_port_forward`` for the request handler (``self.api`` is the KubeApi)."""

    api: Any

    def _port_forward(self, ns: str, name: str, port: int) -> None:
        """The API server's websocket port-forward (v4.channel.k8s.io): channel 0 carries the port's
        bytes, channel 1 its errors; each channel's first frame is the port number (2 bytes LE)."""
        api = self.api
        with api.lock:
            api.requests.append(("get", "pods/portforward", ns, name))
            fault = next((f for f in api.faults if (f.verb, f.resource) == ("get", "pods/portforward")
                          and f.times > 0), None)
            if fault:
                fault.times -= 1
            target = api.port_targets.get((ns, name, port))
        if fault or (ns, name) not in {(n, m) for r, n, m in api.objects if r == "pods"}:
            self._answer(fault.status if fault else 404, {"kind": "Status", "status": "Failure",
                                                          "code": fault.status if fault else 404,
                                                          "reason": "NotFound", "message": f'pods "{name}" not found'})
            return
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        lock = threading.Lock()

        def send(opcode: int, payload: bytes) -> None:
            head = bytes([0x80 | opcode])
            n = len(payload)
            head += bytes([n]) if n < 126 else (b"\x7e" + n.to_bytes(2, "big") if n < 65536
                                               else b"\x7f" + n.to_bytes(8, "big"))
            with lock:
                self.wfile.write(head + payload)
                self.wfile.flush()

        prefix = port.to_bytes(2, "little")
        send(2, b"\x00" + prefix)
        send(2, b"\x01" + prefix)
        if target is None:
            send(2, b"\x01" + f"unable to do port forwarding: nothing listens on port {port}".encode())
            send(8, b"\x03\xe8")
            self.close_connection = True
            return
        upstream = socket.create_connection(target, timeout=10)
        upstream.settimeout(None)

        def downstream() -> None:
            try:
                while data := upstream.recv(65536):
                    send(2, b"\x00" + data)
                send(8, b"\x03\xe8")
            except (OSError, ValueError):   # the client hung up first: the handler closed wfile (ValueError)
                pass

        threading.Thread(target=downstream, daemon=True).start()
        try:
            while True:
                opcode, payload = _read_frame(self.rfile)
                if opcode == 8 or opcode is None:
                    break
                if opcode == 9:
                    send(10, payload)
                elif opcode == 2 and payload[:1] == b"\x00" and len(payload) > 1:
                    upstream.sendall(payload[1:])
        except OSError:
            pass
        finally:
            upstream.close()
            self.close_connection = True


def _read_frame(rfile: Any) -> tuple[int | None, bytes]:
    """One (client, masked) websocket frame: (opcode, payload); (None, b"") at the end of the stream."""
    head = rfile.read(2)
    if len(head) < 2:
        return None, b""
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(rfile.read(2), "big")
    elif n == 127:
        n = int.from_bytes(rfile.read(8), "big")
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = rfile.read(n)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))
