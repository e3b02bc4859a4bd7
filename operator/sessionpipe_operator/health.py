"""Liveness of the operator: kopf's own probe endpoint, answered while its event loop is alive.

Kubernetes restarts the operator's pod when ``/healthz`` stops answering. Kopf runs the registered
``@kopf.on.probe`` handlers (see :mod:`sessionpipe_operator.handlers`) and caches the answer for a
while, so a probing kubelet adds no API traffic.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LIVENESS_PATH = "/healthz"


def liveness_endpoint(port: int, address: str = "0.0.0.0") -> str | None:
    """The URL kopf listens on for liveness probes; port 0 disables it."""
    if not port:
        return None
    return f"http://{address}:{port}{LIVENESS_PATH}"


class _StandbyHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = self.path.split("?", 1)[0] == LIVENESS_PATH
        body = b'{"standby": true}' if found else b""
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return  # a probe every few seconds is not news


@contextmanager
def standby_endpoint(port: int, address: str = "0.0.0.0") -> Iterator[None]:
    """Answer ``/healthz`` while the process waits for leadership: a standby is alive, not stuck.

    Closed on exit, before kopf binds the same port for its own probe.
    """
    if not port:
        yield
        return
    server = ThreadingHTTPServer((address, port), _StandbyHandler)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
