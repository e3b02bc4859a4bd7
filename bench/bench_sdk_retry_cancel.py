"""Why the verification processor keeps its own retry loop: how long a cancelled call waits.

A fake API (an ``httpx2.MockTransport``) answers the first request with a 429 carrying
``retry-after: 8`` and every later one with a plain answer. The call is cancelled 0.5 s after it
starts (a SIGTERM or a lost lease in a real run).

- With the SDK's own retries (``max_retries=2``) the only handle a caller has is closing the
  client; the SDK sleeps out the ``retry-after`` in ``time.sleep`` and returns only then.
- With sessionpipe's loop (the SDK's retries off, waits through the processor's cancellable sleep,
  the request hook refusing to send after a cancel) the call ends at the cancel and nothing more
  is sent.

Run: ``.venv/bin/python -m bench.bench_sdk_retry_cancel``
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import anthropic
import httpx2

from sessionpipe_runner.processors.verification import concurrency, llm

RETRY_AFTER_SECONDS = 8
CANCEL_AFTER_SECONDS = 0.5
ANSWER = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [{"type": "text", "text": "ok"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}


class RateLimitedOnce:
    """The fake API: a 429 first, answers after; counts the requests that reached it."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests += 1
        if self.requests == 1:
            error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
            return httpx2.Response(429, headers={"retry-after": str(RETRY_AFTER_SECONDS)}, json=error)
        return httpx2.Response(200, json=ANSWER)


def timed(call: Callable[[], None], cancel: Callable[[], None]) -> float:
    """Seconds from the cancel to the call's return."""
    finished: list[float] = []

    def run() -> None:
        with contextlib.suppress(BaseException):  # any end of the call counts; its kind is not measured
            call()
        finished.append(time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(CANCEL_AFTER_SECONDS)
    cancelled_at = time.monotonic()
    cancel()
    thread.join()
    return finished[0] - cancelled_at


def sdk_retries() -> tuple[float, int]:
    api = RateLimitedOnce()
    http_client = httpx2.Client(transport=httpx2.MockTransport(api))
    client = anthropic.Anthropic(api_key="k", max_retries=2, http_client=http_client)
    messages = [{"role": "user", "content": "hi"}]

    def call() -> None:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=messages)  # type: ignore[arg-type]

    return timed(call, client.close), api.requests


def sessionpipe_loop() -> tuple[float, int]:
    api = RateLimitedOnce()
    cancel = concurrency.Cancel()
    gate = concurrency.RateGate(cancel.sleep)
    client = llm.make_client(
        "k",
        http_client=httpx2.Client(transport=httpx2.MockTransport(api)),
        event_hooks=concurrency.event_hooks(gate, cancel),
    )
    extraction = llm.ExtractionClient(
        client,
        model="claude-sonnet-4-6",
        max_output_tokens=10,
        policy=llm.RetryPolicy(max_retries=2),
        sleep=cancel.sleep,
        draw=lambda: 0.5,
    )

    def call() -> None:
        extraction.send([{"role": "user", "content": "hi"}], llm.CallStats())

    return timed(call, cancel.set), api.requests


def main() -> None:
    print(f"a 429 with retry-after: {RETRY_AFTER_SECONDS} s; the call is cancelled {CANCEL_AFTER_SECONDS} s in")
    for name, measure in (("SDK retries (max_retries=2)", sdk_retries), ("sessionpipe's loop", sessionpipe_loop)):
        waited, requests = measure()
        print(f"{name:28} returned {waited:5.2f} s after the cancel; requests that reached the API: {requests}")


if __name__ == "__main__":
    main()
