"""Removing secrets from text before it leaves the process (and from what the model sends back).

Every piece of transcript text is passed through :func:`redact` *whole*, before it is shortened or
put into a request: a cut made first could separate a value from the keyword or the BEGIN line
that identifies it. Each secret is replaced by ``[REDACTED:<kind>]`` and counted by kind; the counts
travel in the session's ``Output.issues`` (``redacted_<kind>``) so that a run summary shows how much
was removed. The formats are data, in :mod:`.secret_rules`.

Secrets are looked for in the text as it is and in three views of it, each mapped back to the
original characters so that the right span is removed:

- the text with escapes decoded (``\\u005f``, ``\\x5f``, ``\\"`` of an escaped JSON string);
- the text with line breaks between two characters removed (a token split across two lines), for
  the distinctive formats only;
- each base64 run decoded (``QVdTX1NFQ1JFVF9BQ0NFU1NfS0VZPS4uLg==``): when the decoded text holds
  a secret, the whole run is removed as ``encoded_secret``.

The patterns favour removing too much: a false positive costs a few words of context, a false
negative sends a credential to a third party.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sessionpipe_runner.processors.verification.secret_rules import (
    CARD_NUMBER,
    GENERIC_RULES,
    PLACEHOLDER_PREFIX,
    SPECIFIC_RULES,
    Rule,
    detector_rules,
)

PLACEHOLDER = "[REDACTED:{kind}]"
_PLACEHOLDER = re.compile(r"\[REDACTED:[a-z0-9_]+\]")


def rules() -> tuple[Rule, ...]:
    """Every rule, most specific first (the first of overlapping findings names the kind)."""
    return (*SPECIFIC_RULES, *detector_rules(), *GENERIC_RULES, CARD_NUMBER)


@dataclass(frozen=True)
class _Finding:
    start: int
    end: int
    kind: str
    priority: int


def _secret_span(rule: Rule, match: re.Match[str]) -> tuple[int, int] | None:
    group = rule.group
    if group == -1:  # a detector pattern: its first group when that is a value, else the whole match
        first = match.group(1) if match.re.groups else None
        group = 1 if first is not None and len(first) >= 8 else 0
    if match.group(group) is None:
        return None
    start, end = match.span(group)
    return (start, end) if end > start else None


def _find(text: str, selected: Sequence[tuple[int, Rule]]) -> Iterable[_Finding]:
    lowered = text.lower() if any(rule.needs for _, rule in selected) else text
    for priority, rule in selected:
        if rule.needs and rule.needs not in lowered:
            continue
        for match in rule.pattern.finditer(text):
            span = _secret_span(rule, match)
            if span is None:
                continue
            value = text[span[0] : span[1]]
            if value.startswith(PLACEHOLDER_PREFIX) or (rule.check is not None and not rule.check(value)):
                continue
            yield _Finding(span[0], span[1], rule.kind, priority)


# --- views: the text decoded or re-joined, with each character's position in the original --------------
@dataclass(frozen=True)
class _View:
    text: str
    #: ``origin[i]`` is the index in the original text of the view's character ``i``;
    #: ``origin[len(text)]`` is the end of the original text.
    origin: list[int]

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        # Up to the next kept character: an escape sequence or a removed line break ends inside the span.
        return self.origin[start], self.origin[end]


def _rewritten(text: str, pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str]) -> _View | None:
    """``text`` with every match of ``pattern`` replaced; None when nothing matched."""
    pieces: list[str] = []
    origin: list[int] = []
    position = 0
    for match in pattern.finditer(text):
        pieces.append(text[position : match.start()])
        origin.extend(range(position, match.start()))
        replacement = replace(match)
        pieces.append(replacement)
        origin.extend([match.start()] * len(replacement))
        position = match.end()
    if not pieces:
        return None
    pieces.append(text[position:])
    origin.extend(range(position, len(text) + 1))
    return _View("".join(pieces), origin)


_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|x([0-9a-fA-F]{2})|([\"'\\/]))")


def _decode_escape(match: re.Match[str]) -> str:
    hex_code = match.group(1) or match.group(2)
    return chr(int(hex_code, 16)) if hex_code else match.group(3)


def _unescaped(text: str) -> _View | None:
    """``text`` with ``\\uXXXX``, ``\\xXX`` and quote escapes decoded; None when it has none."""
    return _rewritten(text, _ESCAPE, _decode_escape) if "\\" in text else None


#: A line break between two token characters, with what splits a string over lines in code (``" +``).
_LINE_BREAK = re.compile(r"(?<=[A-Za-z0-9_\-+/=])(?:[\"']?[ \t]*\+?[ \t]*\\?\r?\n[ \t]*[\"']?)(?=[A-Za-z0-9_\-+/=])")


def _joined(text: str) -> _View | None:
    """``text`` with line breaks between two token characters removed; None when there are none."""
    return _rewritten(text, _LINE_BREAK, lambda match: "")


_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{20,}={0,2}(?![A-Za-z0-9+/=_\-])")


def _decoded_base64(run: str) -> str | None:
    """The text a base64 run stands for, when it decodes to readable text."""
    bare = run.rstrip("=")
    padded = bare + "=" * (-len(bare) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(char.isprintable() or char in "\n\t\r" for char in decoded)
    return decoded if decoded and printable >= 0.95 * len(decoded) else None


def _view_findings(view: _View, selected: Sequence[tuple[int, Rule]]) -> Iterable[_Finding]:
    for finding in _find(view.text, selected):
        start, end = view.original_span(finding.start, finding.end)
        yield _Finding(start, end, finding.kind, finding.priority)


def _findings(text: str, depth: int = 0) -> list[_Finding]:
    """Every secret in ``text`` and its views."""
    ordered = list(enumerate(rules()))
    found = list(_find(text, ordered))
    unescaped = _unescaped(text)
    if unescaped is not None:
        found.extend(_view_findings(unescaped, ordered))
    joined = _joined(text)
    if joined is not None:
        distinctive = [(priority, rule) for priority, rule in ordered if rule.distinctive]
        found.extend(_view_findings(joined, distinctive))
    if depth < 2:
        for match in _BASE64_RUN.finditer(text):
            decoded = _decoded_base64(match.group(0))
            if decoded is not None and _findings(decoded, depth + 1):
                found.append(_Finding(match.start(), match.end(), "encoded_secret", len(ordered)))
    return found


def _merged(findings: Iterable[_Finding]) -> list[_Finding]:
    """Overlapping findings as one span each, named by the highest-priority finding among them."""
    merged: list[_Finding] = []
    for finding in sorted(findings, key=lambda f: (f.start, -f.end)):
        if merged and finding.start < merged[-1].end:
            last = merged[-1]
            best = last if last.priority <= finding.priority else finding
            merged[-1] = _Finding(last.start, max(last.end, finding.end), best.kind, best.priority)
        else:
            merged.append(finding)
    return merged


def redact(text: str, counts: Counter[str] | None = None) -> tuple[str, Counter[str]]:
    """``text`` with every secret replaced, and the number removed by kind (added to ``counts``)."""
    found: Counter[str] = counts if counts is not None else Counter()
    pieces: list[str] = []
    position = 0
    for finding in _merged(_findings(text)):
        start, end = finding.start, finding.end
        # A placeholder already in the text stays whole: never cut one in two.
        for placeholder in _PLACEHOLDER.finditer(text, max(0, start - 40), min(len(text), end + 40)):
            if placeholder.start() < start < placeholder.end():
                start = placeholder.start()
            if placeholder.start() < end < placeholder.end():
                end = placeholder.end()
        start = max(start, position)
        if end <= start:
            continue
        pieces.append(text[position:start])
        pieces.append(PLACEHOLDER.format(kind=finding.kind))
        found[finding.kind] += 1
        position = end
    pieces.append(text[position:])
    return "".join(pieces), found
