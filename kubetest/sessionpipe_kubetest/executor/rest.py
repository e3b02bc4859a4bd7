"""A minimal JSON client for the API server, and the errors the executor tells apart."""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import urllib3

from sessionpipe_kubetest.executor.kubelet import JSON


class ApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:500]}")
        self.status = status


class Rest:
    """A minimal thread-safe JSON client for the API server, authenticated by a client certificate."""

    def __init__(self, server: str, ca_cert: Path, client_cert: Path, client_key: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca_cert))
        context.load_cert_chain(str(client_cert), str(client_key))
        self.server = server.rstrip("/")
        self.pool = urllib3.PoolManager(ssl_context=context, maxsize=32, retries=False)
        self.watch_response: urllib3.BaseHTTPResponse | None = None

    def request(
        self,
        method: str,
        path: str,
        body: JSON | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> JSON:
        response = self.pool.request(
            method,
            self.server + path,
            body=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": content_type, "Accept": "application/json"},
            timeout=urllib3.Timeout(connect=5, read=timeout),
        )
        text = response.data.decode("utf-8", errors="replace")
        if response.status >= 400:
            raise ApiError(response.status, text, f"{method} {path}")
        return json.loads(text) if text else {}

    def stream(self, path: str, read_timeout: float) -> Iterator[JSON]:
        """Yield the JSON objects of a watch response, one per line."""
        response = self.pool.request(
            "GET",
            self.server + path,
            preload_content=False,
            headers={"Accept": "application/json"},
            timeout=urllib3.Timeout(connect=5, read=read_timeout),
        )
        self.watch_response = response
        try:
            if response.status >= 400:
                raise ApiError(response.status, response.read().decode(errors="replace"), f"watch {path}")
            buffer = b""
            for chunk in response.stream(65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            self.watch_response = None
            response.release_conn()

    def interrupt_watch(self) -> None:
        """Unblock a watch that waits for data in another thread."""
        response = self.watch_response
        if isinstance(response, urllib3.HTTPResponse):
            with contextlib.suppress(Exception):
                response.shutdown()


class PodGone(Exception):
    """The pod no longer exists in the API."""
