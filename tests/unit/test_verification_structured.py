"""Structured output: the tool is strict (the API enforces its schema), so a bad item is dropped, not repaired."""

from __future__ import annotations

import json
from typing import Any

from sessionpipe_runner.processors.verification import llm
from tests.anthropic_replay import AnthropicReplay, item, tool_reply
from tests.unit.test_verification_llm import CONVERSATION, GOOD, extraction_client

#: JSON-schema keywords strict tool use rejects (its grammar has no numeric, length or count bounds).
UNSUPPORTED_BY_STRICT = {"minLength", "maxLength", "maxItems", "minimum", "maximum", "uniqueItems"}


def _objects(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node] if node.get("type") == "object" else []
        return found + [inner for value in node.values() for inner in _objects(value)]
    if isinstance(node, list):
        return [inner for value in node for inner in _objects(value)]
    return []


def test_the_tool_is_strict_with_a_schema_the_grammar_accepts() -> None:
    replay = AnthropicReplay([GOOD])
    extraction_client(replay, []).extract(CONVERSATION, llm.CallStats())
    tool = replay.requests[0].body["tools"][0]
    assert tool["strict"] is True
    schema_text = json.dumps(tool["input_schema"])
    assert not [word for word in UNSUPPORTED_BY_STRICT if f'"{word}"' in schema_text]
    for obj in _objects(tool["input_schema"]):
        assert obj["additionalProperties"] is False and set(obj["required"]) == set(obj["properties"])


def test_an_item_out_of_bounds_is_dropped_and_counted_without_a_second_paid_call() -> None:
    good = item("We deploy with Helm, never kubectl apply.", title="Deploy with Helm")
    too_long = item("We deploy with Helm, never kubectl apply.", title="x" * 200)
    replay = AnthropicReplay([tool_reply([good, too_long])])
    stats = llm.CallStats()
    result = extraction_client(replay, []).extract(CONVERSATION, stats)
    assert [i.title for i in result.items] == ["Deploy with Helm"]
    assert len(replay.requests) == 1 and stats.repairs == 0 and stats.invalid_items == 1
