"""Retries, backoff and repair of the LLM call, through the real SDK and a replayed HTTP exchange."""

from __future__ import annotations

import json

import anthropic
import pytest

from sessionpipe_runner.processors.verification import llm
from sessionpipe_runner.processors.verification.schema import DetectionType
from tests.anthropic_replay import (
    TIMEOUT,
    AnthropicReplay,
    Reply,
    error_reply,
    item,
    overloaded,
    rate_limited,
    server_error,
    text_reply,
    tool_reply,
)

CONVERSATION = '<conversation>\n<turn role="user">\nWe deploy with Helm, never kubectl apply.\n</turn>\n</conversation>'
GOOD = tool_reply([item("We deploy with Helm, never kubectl apply.", title="Deploy with Helm")])


def extraction_client(replay: AnthropicReplay, sleeps: list[float], max_retries: int = 4) -> llm.ExtractionClient:
    client = llm.make_client("sk-ant-test", http_client=replay.client(), base_url="https://api.anthropic.com")
    return llm.ExtractionClient(
        client,
        model="claude-sonnet-4-6",
        max_output_tokens=1024,
        policy=llm.RetryPolicy(max_retries=max_retries, base_delay=1.0, max_delay=30.0),
        sleep=sleeps.append,
        draw=lambda: 0.5,
    )


@pytest.mark.parametrize(
    ("failure", "reason"),
    [(rate_limited(), "http_429"), (overloaded(), "http_529"), (server_error(), "http_500"), (TIMEOUT, "timeout")],
    ids=["429", "529-overloaded", "500", "timeout"],
)
def test_transient_failures_are_retried_until_the_call_succeeds(failure: Reply, reason: str) -> None:
    replay = AnthropicReplay([failure, failure, GOOD])
    sleeps: list[float] = []
    stats = llm.CallStats()
    result = extraction_client(replay, sleeps).extract(CONVERSATION, stats)
    assert [i.title for i in result.items] == ["Deploy with Helm"]
    assert len(replay.requests) == 3
    assert (stats.calls, stats.retries, stats.retried_because) == (3, 2, {reason: 2})
    assert len(sleeps) == 2


def test_retry_after_is_honoured_and_backoff_otherwise_grows() -> None:
    replay = AnthropicReplay([rate_limited(retry_after=7), overloaded(), overloaded(), GOOD])
    sleeps: list[float] = []
    extraction_client(replay, sleeps).extract(CONVERSATION, llm.CallStats())
    # 7 s from the header; then base 1 s doubling per retry with the jitter draw fixed at 0.5 (75 %).
    assert sleeps == [7.0, 0.75 * 2, 0.75 * 4]


def test_backoff_jitter_stays_between_half_and_all_of_the_ceiling_and_is_capped() -> None:
    policy = llm.RetryPolicy(base_delay=2.0, max_delay=10.0, max_retry_after=60)
    assert policy.delay(0, None, lambda: 0.0) == 1.0 and policy.delay(0, None, lambda: 1.0) == 2.0
    assert policy.delay(10, None, lambda: 1.0) == 10.0
    assert policy.delay(0, 3600, lambda: 0.0) == 60


def test_retries_run_out_and_the_call_fails_with_the_last_error() -> None:
    replay = AnthropicReplay([overloaded()] * 3)
    stats = llm.CallStats()
    with pytest.raises(llm.LLMError, match=r"after 3 attempts.*http_529"):
        extraction_client(replay, [], max_retries=2).extract(CONVERSATION, stats)
    assert len(replay.requests) == 3 and stats.retries == 2


def test_a_rejected_request_is_not_retried() -> None:
    replay = AnthropicReplay([error_reply(400, "invalid_request_error", "prompt is too long: 212000 tokens > 200000")])
    with pytest.raises(llm.LLMError, match=r"rejected the request \(400\).*too long"):
        extraction_client(replay, []).extract(CONVERSATION, llm.CallStats())
    assert len(replay.requests) == 1


def test_bad_credentials_make_the_llm_unavailable() -> None:
    replay = AnthropicReplay([error_reply(401, "authentication_error", "invalid x-api-key")])
    with pytest.raises(llm.LLMUnavailable, match="401"):
        extraction_client(replay, []).extract(CONVERSATION, llm.CallStats())


def test_malformed_output_is_repaired_once_with_the_validation_error() -> None:
    # Only an answer with nothing to salvage (no items list: a gateway without strict tool use) is
    # repaired; a bad item in a good list is dropped instead (test_verification_structured).
    broken = tool_reply([])
    broken.body["content"][0]["input"] = {"entries": [item("We deploy with Helm, never kubectl apply.")]}
    replay = AnthropicReplay([broken, GOOD])
    stats = llm.CallStats()
    result = extraction_client(replay, []).extract(CONVERSATION, stats)
    assert result.items[0].detection_type is DetectionType.UNPROMPTED_DEFINITION
    assert stats.repairs == 1 and len(replay.requests) == 2
    repair = replay.requests[1].body["messages"]
    first_tool_use = broken.body["content"][0]
    assert repair[1]["role"] == "assistant" and repair[1]["content"][0]["id"] == first_tool_use["id"]
    feedback = repair[2]["content"][0]
    assert feedback["type"] == "tool_result" and feedback["tool_use_id"] == first_tool_use["id"]
    assert feedback["is_error"] is True and "items" in feedback["content"]


def test_prose_instead_of_a_tool_call_is_repaired_too() -> None:
    replay = AnthropicReplay([text_reply("I found nothing notable."), GOOD])
    result = extraction_client(replay, []).extract(CONVERSATION, llm.CallStats())
    assert len(result.items) == 1
    assert replay.requests[1].body["messages"][2]["content"][0]["type"] == "text"


def test_output_still_malformed_after_the_repair_fails_the_call() -> None:
    no_items = tool_reply([])
    no_items.body["content"][0]["input"] = {"title": "missing fields"}
    replay = AnthropicReplay([text_reply("Nothing to record."), no_items])
    with pytest.raises(llm.MalformedOutput, match="malformed twice"):
        extraction_client(replay, []).extract(CONVERSATION, llm.CallStats())
    assert len(replay.requests) == 2


def test_request_shape_forced_tool_cached_system_and_usage_counted() -> None:
    replay = AnthropicReplay([tool_reply([], input_tokens=900, output_tokens=40, cache_read=2100, cache_write=0)])
    stats = llm.CallStats()
    extraction_client(replay, []).extract(CONVERSATION, stats)
    request = replay.requests[0]
    body = request.body
    assert request.url == "https://api.anthropic.com/v1/messages"
    # This SDK sends the key as a bearer token; older ones used x-api-key.
    assert request.headers.get("x-api-key") == "sk-ant-test" or request.headers["authorization"] == "Bearer sk-ant-test"
    assert body["tool_choice"] == {"type": "tool", "name": "record_knowledge"}
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    schema = body["tools"][0]["input_schema"]
    assert "$defs" not in json.dumps(schema)
    assert schema["properties"]["items"]["items"]["properties"]["detection_type"]["enum"] == [
        "correction",
        "confirmation",
        "unprompted_definition",
    ]
    assert CONVERSATION in body["messages"][0]["content"]
    assert stats.total_tokens == 900 + 40 + 2100


def test_anthropic_base_url_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://llm-gateway.internal:8080/anthropic")
    replay = AnthropicReplay([GOOD])
    client = llm.make_client("sk-ant-test", http_client=replay.client())
    assert isinstance(client, anthropic.Anthropic)
    llm.ExtractionClient(client, model="m", max_output_tokens=512).extract(CONVERSATION, llm.CallStats())
    assert replay.requests[0].url == "http://llm-gateway.internal:8080/anthropic/v1/messages"
