"""What the calls in flight share: the API's rate limits, the run's budgets, and cancellation.

With ``concurrency`` above 1 the runner has several sessions in
:meth:`~sessionpipe_runner.processors.verification.VerificationProcessor.process` at once, in threads
(:mod:`sessionpipe_runner.inflight`). They share:

- a :class:`RateGate`: every request waits at the gate before it is sent (an ``httpx`` request
  hook, so retries wait too), and every answer is looked at on its way back (a response hook). A
  429's ``retry-after`` closes the gate for everyone, not only for the caller that got it; so does an
  ``anthropic-ratelimit-*-remaining`` header at 0, until its ``-reset`` time;
- a :class:`RunBudget`: a call's token estimate is reserved before it is sent and settled with the
  real usage after, so calls in flight together never take the run past its budget;
- an :class:`Opening`: until one session's call has been answered, it is the only one in flight,
  so a rejected key or an unknown model costs one request, not ``concurrency`` of them;
- a :class:`Cancel`: set when the run ends early; every wait wakes up, and no request is sent after.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import httpx2

from sessionpipe_runner.processors.base import StopRun
from sessionpipe_runner.processors.verification.llm import LLMError, LLMUnavailable

#: The rate-limit families the API reports (requests, and tokens: all, input, output).
RATE_LIMIT_FAMILIES = ("requests", "tokens", "input-tokens", "output-tokens")
#: A reset further away than this is not waited for by the gate (a clock or header gone wrong);
#: a 429 will come, and its own retry-after then rules.
MAX_HOLD_SECONDS = 300.0


class Cancelled(BaseException):
    """The run is ending: this request is not sent.

    A ``BaseException`` so that it passes through the SDK's and the runner's ``except Exception``
    (a cancelled call is neither a connection error to retry nor a session failure to record).
    """


class Cancel:
    """Set once when the run ends early; its :meth:`sleep` is the processor's way to wait."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the run is cancelled meanwhile."""
        self._event.wait(max(seconds, 0.0))

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def _reset_in(value: str, now: float) -> float | None:
    """Seconds from ``now`` (epoch) to an RFC 3339 reset time, or None if it cannot be read."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - now
    except ValueError:
        return None


def hold_seconds(status: int, headers: Mapping[str, str], now: float) -> float:
    """How long every caller should hold back after an answer with this status and these headers.

    ``retry-after-ms`` or ``retry-after`` on a 429 (or a 529 overloaded); otherwise, for each
    rate-limit family whose ``remaining`` is 0, the time until its ``reset``. 0: no need to wait.
    """
    hold = 0.0
    if status in (429, 529):
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            raw = headers.get(name)
            if raw is None:
                continue
            try:
                hold = max(hold, float(raw) * scale)
                break
            except ValueError:
                continue
    for family in RATE_LIMIT_FAMILIES:
        remaining = headers.get(f"anthropic-ratelimit-{family}-remaining")
        reset = headers.get(f"anthropic-ratelimit-{family}-reset")
        if remaining is None or reset is None or remaining.strip() != "0":
            continue
        until = _reset_in(reset, now)
        if until is not None:
            hold = max(hold, until)
    return min(max(hold, 0.0), MAX_HOLD_SECONDS)


class RateGate:
    """The time before which no request may be sent, shared by every caller."""

    def __init__(
        self,
        sleep: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._sleep = sleep
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._not_before = 0.0
        self.holds = 0  # how often an answer closed the gate (for tests and the curious)

    def hold(self, seconds: float) -> None:
        """No request before ``seconds`` from now (an earlier hold that lasts longer stands)."""
        if seconds <= 0:
            return
        with self._lock:
            self._not_before = max(self._not_before, self._clock() + seconds)
            self.holds += 1

    def wait(self) -> None:
        """Return once the gate is open; waits again if another answer closed it meanwhile."""
        waited_for = None
        while True:
            with self._lock:
                target = self._not_before
            remaining = target - self._clock()
            if remaining <= 0 or target == waited_for:
                return
            self._sleep(remaining)
            waited_for = target

    def observe(self, response: httpx2.Response) -> None:
        """Close the gate as the answer's status and rate-limit headers say (an httpx response hook)."""
        self.hold(hold_seconds(response.status_code, response.headers, self._wall()))


def event_hooks(gate: RateGate, cancel: Cancel) -> dict[str, list[Callable[..., None]]]:
    """``httpx`` event hooks: every request waits at the gate (and is not sent once cancelled)."""

    def before_request(request: httpx2.Request) -> None:
        cancel.check()
        gate.wait()
        cancel.check()

    def after_response(response: httpx2.Response) -> None:
        gate.observe(response)

    return {"request": [before_request], "response": [after_response]}


@dataclass
class RunBudget:
    """What this run has spent and has reserved, against its limits (0: no limit). Thread-safe.

    A call reserves its (high) token estimate before it is sent and settles it with the real usage
    when it returns; a call is refused if what is spent, plus what the calls in flight reserved,
    plus its own estimate would pass the limit. Once a call is refused for tokens the budget is
    closed: every later call is refused too, so a small session cannot slip in after a large one
    was refused (which session is left over then depends only on which thread asked first).
    """

    max_tokens: int = 0
    max_sessions: int = 0
    tokens_used: int = 0
    tokens_reserved: int = 0
    sessions_called: int = 0
    closed: str = ""
    #: The largest ratio of real usage to estimate seen so far (at least 1): later reservations are
    #: scaled by it, so an estimate that proved low for this run's conversations is not trusted
    #: again. (The first session's call goes alone, see :class:`Opening`: it calibrates the rest.)
    scale: float = 1.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _refuse(self, reason: str) -> StopRun:
        self.closed = self.closed or reason
        return StopRun(self.closed)

    def start_session(self) -> None:
        """Count a session that will call the API, or raise :class:`StopRun` if the budget is used up."""
        with self._lock:
            if self.closed:
                raise StopRun(self.closed)
            if self.max_sessions and self.sessions_called >= self.max_sessions:
                # Not closing the budget: the sessions already counted may still make their calls.
                raise StopRun(f"LLM session budget reached: {self.sessions_called} of {self.max_sessions} sessions")
            self.sessions_called += 1

    def reserve(self, estimate: int) -> int:
        """Reserve ``estimate`` tokens (times :attr:`scale`) for a call about to be sent; returns what was reserved.

        Raises :class:`StopRun` when the budget cannot cover it; a call larger than the whole budget
        raises :class:`~.llm.LLMError` (the processor fails that one session: no run could ever afford it).
        """
        with self._lock:
            if self.closed:
                raise StopRun(self.closed)
            if not self.max_tokens:
                return 0
            if estimate > self.max_tokens:
                raise LLMError(
                    f"this session needs about {estimate} tokens, more than the whole per-run budget of "
                    f"{self.max_tokens}; lower max_turns / max_turn_chars or raise the budget"
                )
            needed = math.ceil(estimate * self.scale)
            if self.tokens_used + self.tokens_reserved + needed > self.max_tokens:
                raise self._refuse(
                    f"LLM token budget: {self.tokens_used} of {self.max_tokens} tokens used and "
                    f"{self.tokens_reserved} reserved by calls in flight, the next call may need {needed}"
                )
            self.tokens_reserved += needed
            return needed

    def settle(self, reserved: int, used: int, estimated: int = 0) -> None:
        """A session's calls, estimated at ``estimated`` and holding ``reserved``, returned having used ``used``."""
        with self._lock:
            self.tokens_reserved -= reserved
            self.tokens_used += used
            if estimated > 0 and used > estimated:
                self.scale = max(self.scale, used / estimated)


class Reservations:
    """One session's reservations against a :class:`RunBudget`, settled together at its end."""

    def __init__(self, budget: RunBudget) -> None:
        self.budget = budget
        self.reserved = 0
        self.estimated = 0

    def reserve(self, estimate: int) -> None:
        """The ``before_call`` of :meth:`~.llm.ExtractionClient.extract`."""
        self.reserved += self.budget.reserve(estimate)
        self.estimated += estimate

    def settle(self, used: int) -> None:
        self.budget.settle(self.reserved, used, self.estimated)
        self.reserved = self.estimated = 0


class Opening:
    """The first session's call goes alone; the others wait for its answer.

    Once it is answered (whatever the outcome) the gate is open for good, unless the API refused
    the configuration (:class:`~.llm.LLMUnavailable`): then every waiting and later session is
    refused the same way without a request.
    """

    def __init__(self, cancel: Cancel) -> None:
        self._cancel = cancel
        self._lock = threading.Lock()
        self._answered = threading.Event()
        self._started = False  # whether the first session has gone
        self._refusal: str | None = None

    def _wait_for_first(self) -> None:
        while not self._answered.wait(0.1):
            self._cancel.check()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Around one session's calls."""
        with self._lock:
            going_first = not self._started
            self._started = True
        if not going_first:
            self._wait_for_first()
            if self._refusal is not None:
                raise LLMUnavailable(self._refusal)
            yield
            return
        try:
            yield
        except LLMUnavailable as error:
            self._refusal = str(error)
            raise
        finally:
            self._answered.set()
