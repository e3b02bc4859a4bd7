"""When a quote backs an item: the rule, in one place.

A quote is the evidence that a user said something; the model proposes it, this module decides.
It is accepted when, after cleaning (:func:`clean_quote`: control characters out, wrapping quote
marks and ellipses off, whitespace collapsed, the conversation's marker escapes undone):

1. it has at least :data:`MIN_WORDS` words (runs of letters or digits) and :data:`MIN_LETTERS`
   letters or digits in all: ``"o"``, ``"Please"``, ``"ok"`` or ``"the production"`` back nothing;
2. it lies inside one user turn of the conversation that was sent: not in an assistant turn, not
   across two turns, not in a compaction summary or any other line the user did not type (those are
   never part of the user turns, see :mod:`.conversation`);
3. it does not touch a ``[… N characters left out …]`` marker: a quote that spans a cut joins words
   the user never wrote next to each other.

The stored quote is the cleaned text that was checked, never the model's raw string. Items carry
no turn number, so "where the item says it came from" is checked as "one user turn of this session".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sessionpipe_runner.processors.verification import conversation
from sessionpipe_runner.processors.verification.untrusted import strip_controls

MIN_WORDS = 3
MIN_LETTERS = 10

#: Quote marks (straight, curly, guillemets) and ellipses a model may wrap around a quote.
_MARKS = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"
_QUOTE_ENDS = re.compile(rf"^[\s{_MARKS}]*(?:\.\.\.|\u2026)?\s*|\s*(?:\.\.\.|\u2026)?[\s{_MARKS}]*$")
_WORD = re.compile(r"[^\W_]+")
#: The marker :func:`.conversation.shorten` puts where it cut, and any piece of it.
_CUT_MARKER = re.compile(r"\[… \d+ characters left out …\]")
_CUT_PIECE = re.compile(r"characters left out|\[…|…\]")


@dataclass(frozen=True)
class QuoteCheck:
    """The verdict on one quote: the checked text when accepted, else the reason (an issue name)."""

    quote: str
    problem: str | None = None

    @property
    def accepted(self) -> bool:
        return self.problem is None


def clean_quote(raw: str) -> str:
    """The quote as it is checked and stored."""
    text, _ = strip_controls(conversation.unescape_markers(raw))
    return conversation.normalise_space(_QUOTE_ENDS.sub("", conversation.normalise_space(text)))


def meaningful(quote: str) -> bool:
    """Rule 1: enough words and letters to mean something."""
    words = _WORD.findall(quote)
    return len(words) >= MIN_WORDS and sum(len(word) for word in words) >= MIN_LETTERS


def check_quote(raw: str, user_texts: Sequence[str]) -> QuoteCheck:
    """Whether ``raw`` backs an item, given the whitespace-normalised user turns that were sent."""
    quote = clean_quote(raw)
    if not meaningful(quote):
        return QuoteCheck(quote, "quote_too_short")
    if _CUT_PIECE.search(quote):
        return QuoteCheck(quote, "quote_spans_cut")
    for text in user_texts:
        if any(quote in piece for piece in _CUT_MARKER.split(text)):
            return QuoteCheck(quote)
    if any(quote in text for text in user_texts):
        return QuoteCheck(quote, "quote_spans_cut")
    return QuoteCheck(quote, "quote_not_found")
