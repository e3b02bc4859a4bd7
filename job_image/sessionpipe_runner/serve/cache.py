"""Answers kept for the snapshot they were computed from: a snapshot never changes, so a view asked
again (the same path and parameters, within the same minute) is the same bytes.

The minute is part of the key because two figures depend on the clock: the active 5-hour block
and "this month". A newly published snapshot has another identity, so nothing computed from the old
one is ever served for it; old entries age out of the least-recently-used end.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    """A response body worth keeping, with its status and media type."""

    body: bytes
    media_type: str
    status: int = 200


class AnswerCache:
    """At most ``max_bytes`` of answers, least recently used dropped first; safe across threads."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._answers: OrderedDict[Hashable, Answer] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Answer | None:
        with self._lock:
            answer = self._answers.get(key)
            if answer is not None:
                self._answers.move_to_end(key)
            return answer

    def put(self, key: Hashable, answer: Answer) -> None:
        """Keep ``answer`` unless it alone is larger than the whole cache."""
        if len(answer.body) > self.max_bytes:
            return
        with self._lock:
            previous = self._answers.pop(key, None)
            if previous is not None:
                self._bytes -= len(previous.body)
            self._answers[key] = answer
            self._bytes += len(answer.body)
            while self._bytes > self.max_bytes:
                _, dropped = self._answers.popitem(last=False)
                self._bytes -= len(dropped.body)

    def __len__(self) -> int:
        return len(self._answers)
