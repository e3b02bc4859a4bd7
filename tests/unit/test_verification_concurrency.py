"""What calls in flight share: the rate gate, the run's budget (reserved before sending), the opening."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import httpx2
import pytest

from sessionpipe_runner.processors.base import StopRun
from sessionpipe_runner.processors.verification import concurrency
from sessionpipe_runner.processors.verification.llm import LLMUnavailable

NOW = 1_800_000_000.0  # epoch seconds of the fake wall clock


class FakeClock:
    """A monotonic clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def reset_at(seconds: float) -> str:
    return (datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def test_hold_comes_from_retry_after_or_from_an_exhausted_rate_limit_until_its_reset() -> None:
    assert concurrency.hold_seconds(429, {"retry-after": "7"}, NOW) == 7.0
    assert concurrency.hold_seconds(429, {"retry-after-ms": "1500", "retry-after": "9"}, NOW) == 1.5
    exhausted = {
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": reset_at(4),
    }
    assert concurrency.hold_seconds(200, exhausted, NOW) == pytest.approx(4.0)
    left = {"anthropic-ratelimit-requests-remaining": "3", "anthropic-ratelimit-requests-reset": reset_at(4)}
    assert concurrency.hold_seconds(200, left, NOW) == 0.0
    assert concurrency.hold_seconds(200, {"retry-after": "7"}, NOW) == 0.0  # only a 429/529 asks to wait
    assert concurrency.hold_seconds(429, {"retry-after": "86400"}, NOW) == concurrency.MAX_HOLD_SECONDS


def test_an_answer_that_closes_the_gate_holds_back_every_other_caller() -> None:
    clock = FakeClock()
    gate = concurrency.RateGate(clock.sleep, clock=clock, wall=lambda: NOW)
    request = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")
    gate.observe(httpx2.Response(200, request=request))
    gate.wait()
    assert clock.sleeps == []  # an open gate costs nothing
    headers = {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset_at(2.5)}
    gate.observe(httpx2.Response(200, headers=headers, request=request))
    gate.wait()
    assert clock.sleeps == [pytest.approx(2.5)]
    gate.wait()  # the hold has passed
    assert len(clock.sleeps) == 1


def test_budget_reservations_from_many_threads_never_pass_the_limit() -> None:
    budget = concurrency.RunBudget(max_tokens=10_000)
    stops: list[str] = []
    peak = [0]
    lock = threading.Lock()

    def session() -> None:
        for _ in range(20):
            mine = concurrency.Reservations(budget)
            try:
                mine.reserve(900)
            except StopRun as stop:
                stops.append(stop.reason)
                return
            with lock:
                peak[0] = max(peak[0], budget.tokens_used + budget.tokens_reserved)
            mine.settle(700)

    threads = [threading.Thread(target=session) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] <= 10_000 and budget.tokens_used <= 10_000 and budget.tokens_reserved == 0
    assert stops and all("token budget" in reason for reason in stops)
    with pytest.raises(StopRun):  # closed for good: a small call cannot slip in after a refusal
        budget.reserve(1)


def test_while_the_first_session_is_unanswered_the_others_wait_and_share_its_refusal() -> None:
    opening = concurrency.Opening(concurrency.Cancel())
    first_inside = threading.Event()
    release_first = threading.Event()
    outcomes: list[str] = []

    def first() -> None:
        try:
            with opening.turn():
                first_inside.set()
                release_first.wait(5)
                raise LLMUnavailable("the Anthropic API answered 401")
        except LLMUnavailable:
            outcomes.append("first refused")

    def later() -> None:
        try:
            with opening.turn():
                outcomes.append("later sent")
        except LLMUnavailable as error:
            outcomes.append(f"later refused: {error}")

    one = threading.Thread(target=first)
    one.start()
    assert first_inside.wait(5)
    two = threading.Thread(target=later)
    two.start()
    two.join(0.3)
    assert two.is_alive() and outcomes == []  # waiting for the first answer
    release_first.set()
    one.join(5)
    two.join(5)
    assert outcomes == ["first refused", "later refused: the Anthropic API answered 401"]
