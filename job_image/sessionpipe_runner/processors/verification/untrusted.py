"""What the model returns is untrusted input: control characters out, sizes and counts bounded.

A model's answer is shaped by the conversation it read, and a conversation can hold anything a
user pasted. Before a returned field is stored (and again when the text report prints it), escape
sequences and control characters are removed so that a stored title cannot clear a terminal, open a
hyperlink (OSC 8), ring a bell, or reverse the direction of the text around it (bidi overrides).
"""

from __future__ import annotations

import re
from collections import Counter

from sessionpipe_runner.names import printable
from sessionpipe_runner.processors.verification import redaction

#: Terminal escape sequences: CSI (``ESC [ … final``), OSC (``ESC ] … BEL`` or ``ESC \\``), and other
#: two-character escapes; the C1 forms (``\x9b``, ``\x9d``) too.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
#: Characters that change how the text around them is shown: C0/C1 controls (not \n, \t), DEL,
#: bidi embeddings, overrides and isolates, and the line and paragraph separators.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_BIDI = {code: f"\\u{code:04x}" for code in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def strip_controls(text: str) -> tuple[str, bool]:
    """``text`` without escape sequences and invisible control characters, and whether any were there."""
    cleaned = _INVISIBLE.sub("", _ESCAPE_SEQUENCE.sub("", text))
    return cleaned, cleaned != text


def for_terminal(text: str) -> str:
    """``text`` safe to print: controls written as escapes (``\\x1b``), bidi controls as ``\\u202e``."""
    return printable(text).translate(_BIDI)


def clean_field(text: str, issues: Counter[str]) -> str:
    """A returned field as it may be stored: controls stripped, secrets the model echoed redacted.

    Both are counted in ``issues`` (``control_characters_removed``, ``returned_secret_redacted``).
    """
    cleaned, stripped = strip_controls(text)
    if stripped:
        issues["control_characters_removed"] += 1
    redactions: Counter[str] = Counter()
    cleaned, _ = redaction.redact(cleaned, redactions)
    if redactions:
        issues["returned_secret_redacted"] += sum(redactions.values())
    return cleaned.strip()


#: The most characters of text and tool input one answer may hold. A valid extraction is at most
#: about 90,000 (25 items of bounded fields); more is refused before it is parsed or stored.
MAX_RESPONSE_CHARS = 200_000
#: The most tokens one call can count in any usage field (far above any model's context and output).
MAX_TOKENS_PER_CALL = 2_000_000
#: What the repair call may send back of the model's answer: strings and lists cut to these sizes
#: (just above the schema's limits, so the model still sees what was too long).
REPLAY_STRING_MAX = 1_100
REPLAY_LIST_MAX = 30


def valid_token_count(value: object) -> bool:
    """A usage count that can be added to a budget: a non-negative int below :data:`MAX_TOKENS_PER_CALL`."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS_PER_CALL


def bounded(value: object) -> tuple[object, bool]:
    """``value`` (JSON-like) with long strings and lists cut, and whether anything was cut."""
    if isinstance(value, str):
        return (value[:REPLAY_STRING_MAX] + "…", True) if len(value) > REPLAY_STRING_MAX else (value, False)
    if isinstance(value, list):
        parts = [bounded(element) for element in value[:REPLAY_LIST_MAX]]
        return [part for part, _ in parts], len(value) > REPLAY_LIST_MAX or any(cut for _, cut in parts)
    if isinstance(value, dict):
        entries = {
            str(key)[:REPLAY_STRING_MAX]: bounded(element) for key, element in list(value.items())[:REPLAY_LIST_MAX]
        }
        cut = len(value) > REPLAY_LIST_MAX or any(part_cut for _, part_cut in entries.values())
        return {key: part for key, (part, _) in entries.items()}, cut
    return value, False
