"""False positives of redaction on every text of the shared corpora: prose, code, tool output.

Only user and assistant text is ever sent (and the unit test asserts no redaction there), but that
is just 14,000 characters. Here every string of the transcripts' messages and tool results (file
contents, command output, notebooks: 1.3 million characters of ordinary code and prose) is redacted,
as a harder test of what a developer pastes. Each redaction here is a false positive: the corpora
hold no credentials. It takes seconds, so it lives in the integration tier.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sessionpipe_runner.processors.verification.redaction import redact
from tests.runner_support import CORPUS

#: Redactions allowed per 100,000 characters of ordinary text (measured: 0.15, two in a notebook
#: that assigns the word "music" to a variable named test_token).
FALSE_POSITIVE_BOUND = 1.0


def strings(node: Any) -> Iterable[str]:
    if isinstance(node, str):
        if len(node) >= 20:
            yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def test_false_positives_on_all_text_of_the_shared_corpora_stay_below_the_bound() -> None:
    texts: list[str] = []
    for path in sorted(CORPUS.rglob("*.jsonl")):
        for raw in path.read_text().splitlines():
            if raw.strip():
                line = json.loads(raw)
                texts += [*strings(line.get("message")), *strings(line.get("toolUseResult"))]
    characters = sum(len(text) for text in texts)
    counts: Counter[str] = Counter()
    for text in texts:
        redact(text, counts)
    rate = sum(counts.values()) / characters * 100_000
    print(
        f"\nfalse positives: {sum(counts.values())} redactions in {characters} characters of "
        f"{len(texts)} texts ({rate:.2f} per 100,000 characters): {dict(counts)}"
    )
    assert characters > 1_000_000
    assert rate < FALSE_POSITIVE_BOUND, counts
