"""Structured output: the tool's schema as strict tool use accepts it, and the items that pass ours.

With ``strict: true`` the API decodes the tool's input under a grammar compiled from its schema, so
the answer always has the right shape: the kinds, the domains, the fields, no extra ones. The
grammar has no length or count bounds (``maxLength``, ``maxItems``… are rejected), so
:func:`strict_schema` leaves them out of what is sent and the full pydantic model still checks them
here. An item that breaks one of those bounds is dropped and counted (:func:`salvage`) instead of
paying for a second "repair" call over the whole conversation.
"""

from __future__ import annotations

from typing import Any

import pydantic
from anthropic.types import Message

from sessionpipe_runner.processors.verification.schema import ITEMS_MAX, ExtractedItem, Extraction

#: Keywords strict tool use does not accept; the local validation checks them instead.
UNSUPPORTED = frozenset(
    {"minLength", "maxLength", "minItems", "maxItems", "uniqueItems", "minimum", "maximum", "default"}
)


def strict_schema(node: Any) -> Any:
    """``node`` without :data:`UNSUPPORTED` keywords, every object closed and all its properties required."""
    if isinstance(node, list):
        return [strict_schema(value) for value in node]
    if not isinstance(node, dict):
        return node
    cleaned = {key: strict_schema(value) for key, value in node.items() if key not in UNSUPPORTED}
    if cleaned.get("type") == "object" and isinstance(cleaned.get("properties"), dict):
        cleaned["additionalProperties"] = False
        cleaned["required"] = list(cleaned["properties"])
    return cleaned


def salvage(message: Message, tool_name: str) -> tuple[Extraction, int] | None:
    """The valid items of a tool call whose input failed validation as a whole, and how many were not.

    None when there is no tool call with an ``items`` list to salvage from (then only a repair helps).
    """
    for block in message.content:
        if block.type != "tool_use" or block.name != tool_name:
            continue
        raw = block.input.get("items") if isinstance(block.input, dict) else None
        if not isinstance(raw, list):
            return None
        kept: list[ExtractedItem] = []
        for entry in raw:
            try:
                kept.append(ExtractedItem.model_validate(entry))
            except pydantic.ValidationError:
                continue
        kept = kept[:ITEMS_MAX]
        return Extraction(items=kept), len(raw) - len(kept)
    return None
