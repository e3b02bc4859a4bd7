"""A stand-in for the Anthropic Messages API: replays responses of the real shape, captures requests.

The SDK is the real one; only the HTTP exchange is replayed. Two ways in:

- in process, :class:`AnthropicReplay` is an ``httpx2`` transport (the SDK's HTTP client library):
  ``anthropic.Anthropic(http_client=replay.client())``;
- across processes, :class:`ReplayServer` serves the same replies on 127.0.0.1 for a
  ``sessionpipe run`` pointed at it through ``ANTHROPIC_BASE_URL``.

Replies come from a script (a queue, used in order) or from a responder that sees each request's
JSON body, for runs whose order of sessions the test does not fix.

Shapes follow the API reference: a ``message`` object with ``content`` blocks, ``stop_reason`` and
``usage``; errors as ``{"type": "error", "error": {"type": …, "message": …}, "request_id": …}`` with a
``request-id`` header and, for 429, ``retry-after``.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2

MODEL = "claude-sonnet-4-6"
TOOL_NAME = "record_knowledge"
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}01{next(_ids):022d}"


@dataclass(frozen=True)
class Reply:
    """One HTTP answer (or a timeout, which raises ``httpx2.ReadTimeout`` instead of answering)."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    timeout: bool = False


TIMEOUT = Reply(timeout=True)


def usage(
    input_tokens: int = 1200, output_tokens: int = 180, cache_read: int = 0, cache_write: int = 0
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": cache_write, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def message(content: list[dict[str, Any]], stop_reason: str = "tool_use", **usage_args: int) -> Reply:
    """A 200 Messages API answer with these content blocks."""
    return Reply(
        200,
        {
            "id": _id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage(**usage_args),
        },
        {"request-id": _id("req_")},
    )


def tool_reply(items: list[dict[str, Any]], *, stop_reason: str = "tool_use", **usage_args: int) -> Reply:
    """The model calling the extraction tool with these items (given as raw JSON, valid or not)."""
    block = {"type": "tool_use", "id": _id("toolu_"), "name": TOOL_NAME, "input": {"items": items}}
    return message([block], stop_reason, **usage_args)


def text_reply(text: str) -> Reply:
    """The model answering in prose instead of calling the tool."""
    return message([{"type": "text", "text": text}], "end_turn")


def error_reply(status: int, error_type: str, text: str, retry_after: float | None = None) -> Reply:
    headers = {"request-id": _id("req_"), "x-should-retry": "true" if status in (429, 500, 529) else "false"}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    body = {"type": "error", "error": {"type": error_type, "message": text}, "request_id": headers["request-id"]}
    return Reply(status, body, headers)


def rate_limited(retry_after: float = 7) -> Reply:
    return error_reply(
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50,000 input tokens per minute.",
        retry_after,
    )


def overloaded() -> Reply:
    return error_reply(529, "overloaded_error", "Overloaded")


def server_error() -> Reply:
    return error_reply(500, "api_error", "Internal server error")


def item(
    quote: str,
    *,
    detection_type: str = "unprompted_definition",
    title: str = "A fact the user stated",
    content: str = "The user stated a fact worth keeping.",
    domain: str = "workflow",
    entities: list[str] | None = None,
) -> dict[str, Any]:
    """One extracted item as the model would write it in the tool input."""
    return {
        "detection_type": detection_type,
        "title": title,
        "content": content,
        "user_quote": quote,
        "domain": domain,
        "entities": entities or [],
    }


@dataclass(frozen=True)
class Captured:
    """One request as the API received it."""

    method: str
    url: str
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.raw)
        return parsed

    @property
    def conversation(self) -> str:
        """The text of the first user message (the rendered conversation)."""
        content = self.body["messages"][0]["content"]
        return content if isinstance(content, str) else "".join(block.get("text", "") for block in content)


Responder = Callable[[dict[str, Any]], Reply]


class _Replies:
    """The shared logic: pick the next reply, record the request."""

    def __init__(self, script: Iterable[Reply] = (), responder: Responder | None = None) -> None:
        self.script: deque[Reply] = deque(script)
        self.responder = responder
        self.requests: list[Captured] = []
        self.lock = threading.Lock()

    def next(self, captured: Captured) -> Reply:
        with self.lock:
            self.requests.append(captured)
            if self.script:
                return self.script.popleft()
        if self.responder is not None:
            return self.responder(captured.body)
        raise AssertionError(f"unexpected request #{len(self.requests)} to {captured.url}: the script is used up")


class AnthropicReplay(httpx2.BaseTransport):
    """An ``httpx2`` transport that answers every request from the script or the responder."""

    def __init__(self, script: Iterable[Reply] = (), responder: Responder | None = None) -> None:
        self.replies = _Replies(script, responder)

    @property
    def requests(self) -> list[Captured]:
        return self.replies.requests

    @property
    def script(self) -> deque[Reply]:
        return self.replies.script

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=self)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        captured = Captured(request.method, str(request.url), dict(request.headers), request.read())
        reply = self.replies.next(captured)
        if reply.timeout:
            raise httpx2.ReadTimeout("timed out reading the response", request=request)
        headers = {"content-type": "application/json", **reply.headers}
        return httpx2.Response(reply.status, headers=headers, content=json.dumps(reply.body).encode(), request=request)


class ReplayServer:
    """The same replies over real HTTP on 127.0.0.1, for a runner in another process."""

    def __init__(self, script: Iterable[Reply] = (), responder: Responder | None = None) -> None:
        self.replies = _Replies(script, responder)
        replies = self.replies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                captured = Captured("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
                try:
                    reply = replies.next(captured)
                except AssertionError as error:
                    reply = error_reply(400, "invalid_request_error", str(error))
                payload = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def requests(self) -> list[Captured]:
        return self.replies.requests

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @contextmanager
    def running(self) -> Iterator[ReplayServer]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(5)
