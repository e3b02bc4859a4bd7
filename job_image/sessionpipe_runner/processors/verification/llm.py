"""The one place that talks to the Anthropic API: the client, retries, and the repair of bad output.

The SDK's own retries are off (``max_retries=0``): the loop here retries what is worth retrying
(429, 529 overloaded, other 5xx, 408/409, timeouts and dropped connections) with exponential backoff
and jitter, honours ``retry-after``, and takes its ``sleep`` and ``random`` from the caller so that
tests run it instantly and deterministically.

Errors come out in three kinds:

- :class:`LLMUnavailable`: credentials, permissions or the model are wrong. Every further call would
  fail the same way, so the processor ends the run instead of failing (and quarantining) sessions.
- :class:`LLMError`: this call failed for good (retries ran out, the request was rejected, the output
  stayed malformed after its repair). The session fails; it is retried on a later run.
- anything raised by ``before_call`` (the run's budget) passes through untouched.

The answer is untrusted (:mod:`.untrusted`): one larger than ``MAX_RESPONSE_CHARS`` is refused as
malformed, the repair call sends back only a bounded copy of it, and usage counts that are not
sane non-negative integers are replaced by the call's own estimate; each is counted in
``CallStats.problems``.
"""

from __future__ import annotations

import json
import random as random_module
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import pydantic
from anthropic.types import Message

from sessionpipe_runner.processors.verification import prompt, structured, untrusted
from sessionpipe_runner.processors.verification.schema import Extraction

DEFAULT_BASE_URL = "https://api.anthropic.com"
ENV_BASE_URL = "ANTHROPIC_BASE_URL"
RETRYABLE_STATUS = frozenset({408, 409, 429})
RUN_FATAL_STATUS = frozenset({401, 402, 403, 404})
ERROR_DETAIL_LIMIT = 600


class LLMError(RuntimeError):
    """A call failed for good; the session it was for fails."""


class MalformedOutput(LLMError):
    """The model's answer did not follow the tool's schema, even after one repair."""


class LLMUnavailable(RuntimeError):
    """The API refuses this configuration (key, permission, model): no call can succeed this run."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed call is retried."""

    max_retries: int = 5
    base_delay: float = 1.0  # seconds before the first retry, doubled each time
    max_delay: float = 60.0  # cap of the exponential backoff
    max_retry_after: float = 300.0  # cap of a server's retry-after

    def delay(self, retry: int, retry_after: float | None, draw: Callable[[], float]) -> float:
        """Seconds to wait before retry number ``retry`` (0-based).

        A server's ``retry-after`` is honoured (capped); otherwise the wait is exponential with
        "equal jitter": between half and all of ``base_delay * 2**retry``, so that many clients
        throttled at once do not return in step.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * (2.0**retry))
        return ceiling / 2 + draw() * ceiling / 2


@dataclass
class CallStats:
    """What the calls for one session cost and how they went."""

    calls: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    repairs: int = 0
    invalid_items: int = 0  # items dropped for breaking a bound the strict schema cannot express
    input_tokens: int = 0  # uncached input
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    retried_because: dict[str, int] = field(default_factory=dict)
    #: Answers that broke a bound, by reason (``llm_response_too_large``…): issues of the session.
    problems: Counter[str] = field(default_factory=Counter)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_write_tokens + self.cache_read_tokens

    def add_usage(self, message: Message, estimate: int = 0, max_output: int = 0) -> None:
        """Add an answer's usage; a count that is not a sane non-negative int counts as ``estimate``
        (input) or ``max_output`` (output) instead, so one bad answer cannot wreck a budget."""
        usage = message.usage
        fields = (
            ("input_tokens", usage.input_tokens, estimate),
            ("output_tokens", usage.output_tokens, max_output),
            ("cache_write_tokens", usage.cache_creation_input_tokens, 0),
            ("cache_read_tokens", usage.cache_read_input_tokens, 0),
        )
        for name, value, fallback in fields:
            count = value or 0
            if not untrusted.valid_token_count(count):
                self.problems["llm_usage_invalid"] += 1
                count = fallback
            setattr(self, name, getattr(self, name) + count)


def make_client(
    api_key: str,
    *,
    base_url: str | None = None,
    timeout: float = 120.0,
    http_client: httpx2.Client | None = None,
    event_hooks: Mapping[str, Sequence[Callable[..., None]]] | None = None,
) -> anthropic.Anthropic:
    """An SDK client with the SDK's own retries off (the loop in :class:`ExtractionClient` retries).

    ``base_url`` None leaves the choice to the SDK, which reads ``ANTHROPIC_BASE_URL`` from the
    process environment and falls back to the public endpoint. ``event_hooks`` (``httpx``'s
    ``request`` / ``response`` hooks) are added to ``http_client``, or to the SDK's default client.
    """
    if event_hooks:
        if http_client is None:
            http_client = anthropic.DefaultHttpxClient()
        for kind, hooks in event_hooks.items():
            http_client.event_hooks[kind].extend(hooks)
    return anthropic.Anthropic(
        api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        max_retries=0,
        http_client=http_client,
    )


def _retry_after(error: anthropic.APIStatusError) -> float | None:
    headers = error.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw: str | None = headers.get(name)
        if raw is None:
            continue
        try:
            return float(raw) * scale
        except ValueError:
            continue
    return None


def _detail(error: Exception) -> str:
    return str(error)[:ERROR_DETAIL_LIMIT]


class ExtractionClient:
    """Sends one conversation, validates the tool call that comes back, repairs it once if needed."""

    def __init__(
        self,
        client: anthropic.Anthropic,
        *,
        model: str,
        max_output_tokens: int,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        draw: Callable[[], float] = random_module.random,
    ) -> None:
        self.client = client
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.draw = draw

    def estimate(self, messages: Sequence[dict[str, Any]]) -> int:
        """A high estimate of the tokens a call with ``messages`` may consume, output included."""
        import json

        return prompt.estimate_tokens(prompt.fixed_prompt_text(), json.dumps(messages)) + self.max_output_tokens

    def params(self, messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The Messages API request for ``messages``: the model, the cached system prompt, the forced tool."""
        return {
            "model": self.model,
            "max_tokens": self.max_output_tokens,
            "system": prompt.system_blocks(),
            "tools": [prompt.tool_definition()],
            "tool_choice": {"type": "tool", "name": prompt.TOOL_NAME},
            "messages": list(messages),
        }

    def send(self, messages: Sequence[dict[str, Any]], stats: CallStats) -> Message:
        """One Messages API call with the forced tool, retried as :class:`RetryPolicy` says."""
        retry = 0
        while True:
            stats.calls += 1
            try:
                message: Message = self.client.messages.create(**self.params(messages))
            except anthropic.APIStatusError as error:
                status = error.status_code
                if status in RUN_FATAL_STATUS:
                    raise LLMUnavailable(f"the Anthropic API answered {status}: {_detail(error)}") from error
                if status not in RETRYABLE_STATUS and status < 500:
                    raise LLMError(f"the Anthropic API rejected the request ({status}): {_detail(error)}") from error
                reason, retry_after = f"http_{status}", _retry_after(error)
                last: Exception = error
            except anthropic.APITimeoutError as error:
                reason, retry_after, last = "timeout", None, error
            except anthropic.APIConnectionError as error:
                reason, retry_after, last = "connection", None, error
            else:
                estimate = prompt.estimate_tokens(prompt.fixed_prompt_text(), json.dumps(messages))
                stats.add_usage(message, estimate, self.max_output_tokens)
                return message
            if retry >= self.policy.max_retries:
                raise LLMError(
                    f"the Anthropic API call failed after {retry + 1} attempts; last: {reason}: {_detail(last)}"
                ) from last
            stats.retries += 1
            stats.retried_because[reason] = stats.retried_because.get(reason, 0) + 1
            self.sleep(self.policy.delay(retry, retry_after, self.draw))
            retry += 1

    def extract(
        self,
        conversation: str,
        stats: CallStats,
        before_call: Callable[[int], None] = lambda estimate: None,
    ) -> Extraction:
        """The items the model finds in ``conversation``.

        ``before_call`` receives each call's token estimate before it is sent (the first call, and
        the repair if one is needed) and may raise to stop it.
        """
        messages: list[dict[str, Any]] = [prompt.user_message(conversation)]
        before_call(self.estimate(messages))
        answer = self.send(messages, stats)
        extraction, problem, tool_use_id = parse(answer, stats.problems)
        if extraction is not None:
            return extraction
        salvaged = _salvage(answer)
        if salvaged is not None:
            stats.invalid_items += salvaged[1]
            return salvaged[0]
        messages += prompt.repair_messages(
            _replayable_content(answer, tool_use_id, stats.problems), tool_use_id, problem
        )
        before_call(self.estimate(messages))
        stats.repairs += 1
        repaired = self.send(messages, stats)
        extraction, second_problem, _ = parse(repaired, stats.problems)
        if extraction is not None:
            return extraction
        raise MalformedOutput(f"the model's output was malformed twice; first: {problem}; then: {second_problem}")


def response_size(message: Message) -> int:
    """Characters of text and of tool input in an answer."""
    return sum(
        len(block.text) if block.type == "text" else len(json.dumps(block.input)) if block.type == "tool_use" else 0
        for block in message.content
    )


def read_answer(message: Message, stats: CallStats) -> Extraction:
    """The extraction in an answer that cannot be repaired (a batch result): bad items dropped and counted.

    Raises :class:`MalformedOutput` when there is nothing to salvage.
    """
    stats.add_usage(message)
    extraction, problem, _ = parse(message, stats.problems)
    if extraction is not None:
        return extraction
    salvaged = _salvage(message)
    if salvaged is None:
        raise MalformedOutput(f"the model's output was malformed: {problem}")
    stats.invalid_items += salvaged[1]
    return salvaged[0]


def _salvage(message: Message) -> tuple[Extraction, int] | None:
    """:func:`.structured.salvage` of an answer within :data:`.untrusted.MAX_RESPONSE_CHARS`; an
    oversized one is never read for items."""
    if response_size(message) > untrusted.MAX_RESPONSE_CHARS:
        return None
    return structured.salvage(message, prompt.TOOL_NAME)


def parse(message: Message, problems: Counter[str] | None = None) -> tuple[Extraction | None, str, str | None]:
    """(the validated extraction or None, what was wrong, the tool_use id to answer) of one answer.

    An answer larger than :data:`.untrusted.MAX_RESPONSE_CHARS` is refused unread
    (``llm_response_too_large`` in ``problems``).
    """
    tool_uses = [block for block in message.content if block.type == "tool_use" and block.name == prompt.TOOL_NAME]
    if not tool_uses:
        return None, f"no call of the {prompt.TOOL_NAME} tool in the answer", None
    tool_use = tool_uses[0]
    size = response_size(message)
    if size > untrusted.MAX_RESPONSE_CHARS:
        if problems is not None:
            problems["llm_response_too_large"] += 1
        limit = untrusted.MAX_RESPONSE_CHARS
        return None, f"the answer had {size} characters, more than {limit}: call the tool alone", tool_use.id
    cut_off = " (the answer was cut off at max_tokens: return fewer, shorter items)"
    try:
        return Extraction.model_validate(tool_use.input), "", tool_use.id
    except pydantic.ValidationError as error:
        problem = error.json(include_url=False, include_context=False)[:2000]
        if message.stop_reason == "max_tokens":
            problem += cut_off
        return None, problem, tool_use.id


def _replayable_content(
    message: Message, tool_use_id: str | None, problems: Counter[str] | None = None
) -> list[dict[str, Any]]:
    """The answer's text and the one tool call being answered, as request blocks for the repair.

    Other tool calls are left out: every tool call sent back needs its own tool_result. Long text
    and tool-input strings and lists are cut (:func:`.untrusted.bounded`), so the repair request
    stays small whatever the model wrote (``llm_repair_input_cut`` in ``problems``).
    """
    blocks: list[dict[str, Any]] = []
    cut = False
    for block in message.content:
        if block.type == "text":
            text, text_cut = untrusted.bounded(block.text)
            blocks.append({"type": "text", "text": text})
            cut = cut or text_cut
        elif block.type == "tool_use" and block.id == tool_use_id:
            tool_input, input_cut = untrusted.bounded(block.input)
            blocks.append({"type": "tool_use", "id": block.id, "name": block.name, "input": tool_input})
            cut = cut or input_cut
    if cut and problems is not None:
        problems["llm_repair_input_cut"] += 1
    return blocks or [{"type": "text", "text": "(no answer)"}]
