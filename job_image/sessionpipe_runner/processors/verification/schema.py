"""What the model must return: the shape of an extraction, validated by pydantic.

The JSON schema of :class:`Extraction` is the ``input_schema`` of the one tool the model is forced to
call, and the same class validates what comes back, so the promise made to the model and the check
made on its answer cannot drift apart.

Confidence is not part of the schema: the model does not grade itself. It is set by code from the
kind of detection (:data:`CONFIDENCE`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

TITLE_MAX = 60
CONTENT_MAX = 500
QUOTE_MAX = 1000
ENTITY_MAX = 100
ENTITIES_MAX = 20
ITEMS_MAX = 25


class DetectionType(StrEnum):
    """Why a moment of the conversation is knowledge worth keeping."""

    CORRECTION = "correction"  # the user said the assistant was wrong and what is right
    CONFIRMATION = "confirmation"  # the user confirmed something the assistant said or did
    UNPROMPTED_DEFINITION = "unprompted_definition"  # the user stated a fact or rule unasked


class Domain(StrEnum):
    """The fixed list of areas an item belongs to (the model picks one; ``other`` when none fits)."""

    CODE_STYLE = "code_style"
    ARCHITECTURE = "architecture"
    TOOLING = "tooling"
    TESTING = "testing"
    INFRASTRUCTURE = "infrastructure"
    DATA = "data"
    SECURITY = "security"
    WORKFLOW = "workflow"
    PRODUCT = "product"
    DOMAIN_KNOWLEDGE = "domain_knowledge"
    OTHER = "other"


#: How much an item of each kind is trusted. A correction is the strongest signal (the user took the
#: trouble to contradict the assistant); a confirmation agrees with words the assistant chose; an
#: unprompted definition was stated but never tested against anything.
CONFIDENCE: dict[DetectionType, float] = {
    DetectionType.CORRECTION: 0.9,
    DetectionType.CONFIRMATION: 0.75,
    DetectionType.UNPROMPTED_DEFINITION: 0.6,
}

_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class ExtractedItem(BaseModel):
    """One piece of knowledge the user expressed, with the user's own words as evidence."""

    model_config = ConfigDict(extra="forbid")

    detection_type: DetectionType = Field(
        description="correction: the user told the assistant it was wrong and what is right; "
        "confirmation: the user explicitly confirmed something the assistant said or did; "
        "unprompted_definition: the user stated a fact, rule or preference without being asked."
    )
    title: Annotated[_Text, StringConstraints(max_length=TITLE_MAX)] = Field(
        description=f"A short name for the knowledge, at most {TITLE_MAX} characters."
    )
    content: Annotated[_Text, StringConstraints(max_length=CONTENT_MAX)] = Field(
        description=f"The knowledge itself as a standalone statement, at most {CONTENT_MAX} characters."
    )
    user_quote: Annotated[_Text, StringConstraints(max_length=QUOTE_MAX)] = Field(
        description="An exact, verbatim excerpt of a user turn that shows this knowledge. Copy it "
        "character for character; never paraphrase and never quote the assistant."
    )
    domain: Domain = Field(description="The area the knowledge belongs to.")
    entities: list[Annotated[_Text, StringConstraints(max_length=ENTITY_MAX)]] = Field(
        default_factory=list,
        max_length=ENTITIES_MAX,
        description="Names of the tools, libraries, files, services or concepts the item is about.",
    )


class Extraction(BaseModel):
    """Everything found in one conversation; an empty list when there is nothing."""

    model_config = ConfigDict(extra="forbid")

    items: list[ExtractedItem] = Field(max_length=ITEMS_MAX)


def tool_input_schema() -> dict[str, Any]:
    """The JSON schema the model's tool input must follow: pydantic's, with every ``$ref`` inlined.

    A flat schema (no ``$defs``) reads the same to every model and every JSON-schema dialect.
    """
    schema = Extraction.model_json_schema()
    definitions: dict[str, Any] = schema.pop("$defs", {})
    inlined: dict[str, Any] = _inline(schema, definitions)
    return inlined


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            target = dict(definitions[reference.removeprefix("#/$defs/")])
            target.update({key: value for key, value in node.items() if key != "$ref"})
            return _inline(target, definitions)
        return {key: _inline(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(value, definitions) for value in node]
    return node
