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
from collections.abc import Callable
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
        self.retry_after = 0.0
        self.not_before = 0.0  # monotonic time before which, after a 429, no request may come
        self.early: list[float] = []  # how early (seconds) each too-early request came
        self.answered = 0  # for responders that count (under ``lock``)

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=self)

    def throttle(self, count: int, retry_after: float) -> None:
        """Answer the next ``count`` requests with 429 and ``retry-after: <retry_after>``."""
        with self.lock:
            self.to_throttle, self.retry_after = count, retry_after

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
            throttled = self.to_throttle > 0
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
        finally:
            with self.lock:
                self.in_flight -= 1
        headers = {"content-type": "application/json", **reply.headers}
        return httpx2.Response(reply.status, headers=headers, content=json.dumps(reply.body).encode(), request=request)

    def input_chars(self) -> int:
        """Characters of conversation sent across all requests (the first user message of each)."""
        return sum(len(request.conversation) for request in self.requests)
