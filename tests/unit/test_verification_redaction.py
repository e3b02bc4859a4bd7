"""Redaction recall on a labelled corpus of secret kinds, and false positives on the shared corpora.

The recall corpus (:mod:`tests.secret_corpus`) holds more than 40 kinds, each in the user's and in
the assistant's words, written into a transcript in the real line format and sent through
:func:`~sessionpipe_runner.processors.verification.prepare`, the path every request takes. A case
is caught when none of its secret values appears in the text that would be sent.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from sessionpipe_runner.processors.verification import conversation, prepare
from sessionpipe_runner.processors.verification.redaction import redact
from tests.runner_support import CORPUS
from tests.secret_corpus import Case, cases

RECALL_TARGET = 0.95


def transcript(case: Case) -> bytes:
    """A user turn and an assistant turn, one of which holds the case's text."""
    ordinary = "Can you look at the failing deploy job?"
    user_text, assistant_text = (case.text, "Sure.") if case.role == "user" else (ordinary, case.text)
    lines = [
        {"type": "user", "isSidechain": False, "message": {"role": "user", "content": user_text}},
        {
            "type": "assistant",
            "isSidechain": False,
            "message": {"id": "msg_1", "role": "assistant", "content": [{"type": "text", "text": assistant_text}]},
        },
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def leaked(case: Case) -> list[str]:
    sent = prepare(transcript(case), 40, 100_000).text
    return [secret for secret in case.secrets if secret in sent]


def test_redaction_recall_over_the_labelled_corpus_is_at_least_95_percent() -> None:
    corpus = cases()
    kinds = {case.kind for case in corpus}
    assert len(kinds) >= 40
    assert {case.role for case in corpus} == {"user", "assistant"}
    missed = [(case.kind, case.role, leaked(case)) for case in corpus]
    missed = [miss for miss in missed if miss[2]]
    recall = 1 - len(missed) / len(corpus)
    print(f"\nredaction recall: {recall:.1%} of {len(corpus)} cases ({len(kinds)} kinds x 2 roles); missed: {missed}")
    assert recall >= RECALL_TARGET, missed


def conversation_texts() -> list[str]:
    """The user and assistant text of every session in the shared corpora, as it would be sent."""
    texts = []
    for path in sorted(CORPUS.rglob("*.jsonl")):
        texts += [turn.text for turn in conversation.extract_turns(path.read_bytes())]
    return texts


def redactions_per_100k(texts: list[str]) -> tuple[float, Counter[str], int]:
    counts: Counter[str] = Counter()
    for text in texts:
        redact(text, counts)
    characters = sum(len(text) for text in texts)
    return sum(counts.values()) / characters * 100_000, counts, characters


def test_no_false_positives_in_the_conversations_of_the_shared_corpora() -> None:
    rate, counts, characters = redactions_per_100k(conversation_texts())
    print(
        f"\nfalse positives in conversation text: {sum(counts.values())} in {characters} characters ({rate:.2f}/100k)"
    )
    assert characters > 10_000
    assert not counts


def test_ordinary_code_and_prose_survive() -> None:
    text = (
        "def get_token(self):\n    token = self.session.token\n    password = os.environ['DB_PASSWORD']\n"
        "sorted(items, key=lambda item: item.name)\nprimary_key=True\n"
        "interface Login { password: string; token?: string }\n"
        "The build took 1736512345123 ms; see commit 4f9a1c2e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39.\n"
        "Run the risk-assessment-for-quarterly-planning script, password rules live in docs/security.md."
    )
    redacted, counts = redact(text)
    assert redacted == text, counts


def test_placeholders_are_never_redacted_again_or_cut() -> None:
    text = "password=[REDACTED:assigned_secret] and token: [REDACTED:github_token]"
    assert redact(text) == (text, Counter())


ADVERSARIAL = {
    "identifier parts": "a_" * 10_000,
    "secret words": "token_" * 3_400,
    "dots": "a." * 10_000,
    "dashes": "-" * 20_000,
    "slashes": "//" * 10_000,
    "escapes": '\\u005f\\"' * 2_500,
    "short lines": "abc\n" * 5_000,
    "assignments": "password=" * 2_200,
    "open quotes": "password: '" * 1_800,
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_redaction_time_grows_linearly_on_hostile_text(text: str) -> None:
    # Whole turns are redacted (megabytes of pasted logs): no pattern may rescan the rest of the
    # text from every position. 20,000 characters take milliseconds; a quadratic pattern, minutes.
    redact("warm up the rules")
    started = time.monotonic()
    redact(text)
    assert time.monotonic() - started < 5.0
