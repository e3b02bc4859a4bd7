"""A slower, stricter stand-in for the Anthropic API: latency, calls in flight, and rate limits it enforces.

:class:`SlowAPI` is an ``httpx2`` transport like :class:`tests.anthropic_replay.AnthropicReplay` (the
SDK stays real), safe to call from many threads at once. It

- answers each request after ``latency`` seconds, counting how many requests are in flight at once;
- can throttle: ``throttle(n, retry_after)`` answers the next ``n`` requests with a real-shaped 429
  carrying ``retry-after``, and from then on records every request that arrives before the
  ``retry-after`` it announced has passed (:attr:`SlowAPI.early`): a client honouring the header,
  across all of its threads, leaves that list empty;
- counts the input characters it was sent (a measure of what a run pays for).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2

from tests.anthropic_replay import Captured, Reply, rate_limited, tool_reply

Responder = Callable[[dict[str, Any]], Reply]


def empty_answer(body: dict[str, Any]) -> Reply:
    """No items found."""
    return tool_reply([])


class SlowAPI(httpx2.BaseTransport):
    """The Messages API with ``latency`` seconds per answer, counting calls in flight."""

    def __init__(self, responder: Responder = empty_answer, *, latency: float = 0.0) -> None:
        self.responder = responder
        self.latency = latency
        self.lock = threading.Lock()
        self.requests: list[Captured] = []
        self.arrivals: list[float] = []  # monotonic time each request arrived
        self.in_flight = 0
        self.max_in_flight = 0
        self.to_throttle = 0
        self.throttle_after = 0
        self.retry_after = 0.0
        self.not_before = 0.0  # monotonic time before which, after a 429, no request may come
        self.early: list[float] = []  # how early (seconds) each too-early request came
        self.answered = 0  # for responders that count (under ``lock``)
        self.exhaust_at = 0
        self.reset_in = 0.0

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=self)

    def exhaust(self, after: int, reset_in: float) -> None:
        """The answer to request number ``after`` (1-based) says the request limit is used up for ``reset_in`` s.

        It carries ``anthropic-ratelimit-requests-remaining: 0`` and the ``-reset`` time, as the API's
        answers do; from then on a request arriving before the reset is recorded in :attr:`early`.
        """
        with self.lock:
            self.exhaust_at, self.reset_in = after, reset_in

    def throttle(self, count: int, retry_after: float, after: int = 0) -> None:
        """Answer ``count`` requests, from the one after request number ``after``, with 429 and ``retry-after``."""
        with self.lock:
            self.to_throttle, self.retry_after, self.throttle_after = count, retry_after, after

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        captured = Captured(request.method, str(request.url), dict(request.headers), request.read())
        now = time.monotonic()
        with self.lock:
            self.requests.append(captured)
            self.arrivals.append(now)
            if now < self.not_before:
                self.early.append(self.not_before - now)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            throttled = self.to_throttle > 0 and len(self.requests) > self.throttle_after
            exhausting = len(self.requests) == self.exhaust_at
            if throttled:
                self.to_throttle -= 1
        try:
            time.sleep(self.latency)
            if throttled:
                reply = rate_limited(retry_after=self.retry_after)
                with self.lock:
                    # The window starts when the answer leaves, as a real server's would.
                    self.not_before = max(self.not_before, time.monotonic() + self.retry_after)
            else:
                reply = self.responder(captured.body)
            if exhausting:
                with self.lock:
                    self.not_before = max(self.not_before, time.monotonic() + self.reset_in)
                reset = datetime.now(UTC) + timedelta(seconds=self.reset_in)
                limits = {
                    "anthropic-ratelimit-requests-limit": "50",
                    "anthropic-ratelimit-requests-remaining": "0",
                    "anthropic-ratelimit-requests-reset": reset.isoformat().replace("+00:00", "Z"),
                }
                reply = Reply(reply.status, reply.body, {**reply.headers, **limits})
        finally:
            with self.lock:
                self.in_flight -= 1
        headers = {"content-type": "application/json", **reply.headers}
        return httpx2.Response(reply.status, headers=headers, content=json.dumps(reply.body).encode(), request=request)

    def input_chars(self) -> int:
        """Characters of conversation sent across all requests (the first user message of each)."""
        return sum(len(request.conversation) for request in self.requests)


class BatchAPI(httpx2.BaseTransport):
    """The Message Batches API: create, retrieve, results as JSONL, with errors and expiry on demand.

    A batch is ``in_progress`` until the test calls :meth:`end`, which settles every request: by
    default it succeeds with ``responder``'s answer to its ``params``; ``expire`` and ``fail`` name
    custom ids that end ``expired`` or ``errored`` instead. Shapes are the API reference's
    (``MessageBatch``, ``MessageBatchIndividualResponse``).
    """

    def __init__(self, responder: Responder = empty_answer, base: str = "https://api.anthropic.com") -> None:
        self.responder = responder
        self.base = base  # where results_url points: the server's address when served over HTTP
        self.batches: dict[str, dict[str, Any]] = {}
        self.requests: list[Captured] = []  # every HTTP request
        self.created: list[dict[str, Any]] = []  # every batch's create body

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=self)

    def end(self, *, expire: frozenset[str] = frozenset(), fail: frozenset[str] = frozenset()) -> None:
        """Settle every request of every batch still in progress."""
        for batch in self.batches.values():
            if batch["processing_status"] != "in_progress":
                continue
            results = []
            for request in batch["requests"]:
                custom_id = request["custom_id"]
                if custom_id in expire:
                    result: dict[str, Any] = {"type": "expired"}
                elif custom_id in fail:
                    error = {"type": "api_error", "message": "Internal server error"}
                    result = {"type": "errored", "error": {"type": "error", "error": error, "request_id": None}}
                else:
                    result = {"type": "succeeded", "message": self.responder(request["params"]).body}
                results.append({"custom_id": custom_id, "result": result})
            batch["results"] = results
            batch["processing_status"] = "ended"
            batch["ended_at"] = "2026-01-02T00:00:00Z"

    def _shape(self, batch: dict[str, Any]) -> dict[str, Any]:
        kinds = [line["result"]["type"] for line in batch.get("results", [])]
        ended = batch["processing_status"] == "ended"
        return {
            "id": batch["id"],
            "type": "message_batch",
            "processing_status": batch["processing_status"],
            "request_counts": {
                "processing": 0 if ended else len(batch["requests"]),
                "succeeded": kinds.count("succeeded"),
                "errored": kinds.count("errored"),
                "canceled": kinds.count("canceled"),
                "expired": kinds.count("expired"),
            },
            "created_at": "2026-01-01T00:00:00Z",
            "expires_at": "2026-01-02T00:00:00Z",
            "ended_at": batch.get("ended_at"),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{self.base}/v1/messages/batches/{batch['id']}/results" if ended else None,
        }

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        captured = Captured(request.method, str(request.url), dict(request.headers), request.read())
        self.requests.append(captured)
        path = request.url.path
        if request.method == "POST" and path == "/v1/messages/batches":
            body = captured.body
            batch_id = f"msgbatch_{len(self.batches) + 1:024d}"
            self.batches[batch_id] = {"id": batch_id, "requests": body["requests"], "processing_status": "in_progress"}
            self.created.append(body)
            return self._json(200, self._shape(self.batches[batch_id]), request)
        parts = path.removeprefix("/v1/messages/batches/").split("/")
        batch = self.batches.get(parts[0])
        if request.method != "GET" or batch is None:
            error = {"type": "error", "error": {"type": "not_found_error", "message": f"no {path}"}}
            return self._json(404, error, request)
        if len(parts) == 1:
            return self._json(200, self._shape(batch), request)
        lines = "".join(json.dumps(line) + "\n" for line in batch["results"])
        return httpx2.Response(
            200, headers={"content-type": "application/binary"}, content=lines.encode(), request=request
        )

    @staticmethod
    def _json(status: int, body: dict[str, Any], request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "application/json", "request-id": "req_fake"}
        return httpx2.Response(status, headers=headers, content=json.dumps(body).encode(), request=request)


@contextmanager
def serving(api: BatchAPI) -> Iterator[str]:
    """``api`` over real HTTP on 127.0.0.1, for a runner in another process; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            request = httpx2.Request(self.command, f"{api.base}{self.path}", headers=dict(self.headers), content=raw)
            response = api.handle_request(request)
            self.send_response(response.status_code)
            for name in ("content-type", "request-id"):
                if name in response.headers:
                    self.send_header(name, response.headers[name])
            self.send_header("content-length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    host, port = server.server_address[:2]
    api.base = f"http://{host!s}:{port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api.base
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
