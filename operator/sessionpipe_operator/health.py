"""Liveness of the operator: kopf's own probe endpoint, answered while its event loop is alive.

Kubernetes restarts the operator's pod when ``/healthz`` stops answering. Kopf runs the registered
``@kopf.on.probe`` handlers (see :mod:`sessionpipe_operator.handlers`) and caches the answer for a
while, so a probing kubelet adds no API traffic.
"""

from __future__ import annotations

LIVENESS_PATH = "/healthz"


def liveness_endpoint(port: int, address: str = "0.0.0.0") -> str | None:
    """The URL kopf listens on for liveness probes; port 0 disables it."""
    if not port:
        return None
    return f"http://{address}:{port}{LIVENESS_PATH}"
