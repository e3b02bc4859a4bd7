"""The run summary: what a run did, for stdout, ``processor_runs`` and the termination message."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sessionpipe_contract import TERMINATION_MESSAGE_LIMIT


@dataclass
class RunSummary:
    """Counts of one run. Every file the scan met lands in exactly one of the outcome counts."""

    processor: str
    processor_version: str
    run_id: str
    started: datetime
    outcome: str = "running"
    exit_code: int | None = None
    finished: datetime | None = None
    scanned: int = 0  # session files found
    unchanged: int = 0  # same size and mtime as last time: not read
    hashed: int = 0  # read and hashed because size or mtime changed
    processed: int = 0  # processed and marked done
    appended: int = 0  # of those, how many only grew and were processed from their committed lines' end
    skipped: int = 0  # hashed and found unchanged, quarantined, or left for a later run
    errors: int = 0  # sessions whose processing failed this run
    quarantined: int = 0  # of those, how many reached the attempt limit now
    items: int = 0
    issues: Counter[str] = field(default_factory=Counter)  # explained oddities, by reason
    counters: Counter[str] = field(default_factory=Counter)  # what processors did or spent (LLM calls, tokens)
    failures: dict[str, str] = field(default_factory=dict)  # session key -> error, this run
    message: str = ""
    lease: str = ""
    writer_epoch: int | None = None
    workers: int = 0  # workers (processes or threads) that read and processed files (0: the runner alone)
    #: Why the run ended before its last candidate (a processor's :class:`StopRun` reason), or ``None``.
    stopped_early: str | None = None

    @property
    def duration_seconds(self) -> float:
        end = self.finished or self.started
        return round((end - self.started).total_seconds(), 3)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started"] = self.started.isoformat()
        data["finished"] = self.finished.isoformat() if self.finished else None
        data["duration_seconds"] = self.duration_seconds
        data["issues"] = dict(sorted(self.issues.items()))
        data["counters"] = dict(sorted(self.counters.items()))
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def compact(self, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
        """The summary in at most ``limit`` bytes, shrunk step by step until it fits.

        Failures go first, then issue kinds beyond the most frequent few (summed up in
        ``issues_omitted``: ``{"kinds": …, "count": …}``), the lease, the tails of the message and
        of the reason a run stopped early, and the remaining issue kinds. Counters go last: they are
        what the run spent (LLM calls and tokens), which the operator counts, and a processor has
        only a few of them.
        """
        data = self.to_dict()
        data["failures"] = dict(list(self.failures.items())[:5])
        shrink: list[Callable[[dict[str, Any]], None]] = [
            lambda d: d.pop("failures", None),
            lambda d: self._summarise_issues(d, COMPACT_ISSUE_KINDS),
            lambda d: d.pop("lease", None),
            lambda d: self._summarise_issues(d, COMPACT_ISSUE_KINDS_AT_LEAST),
            _shorten_texts,
            lambda d: self._summarise_issues(d, 0),
            lambda d: d.update(counters=dict(list(d["counters"].items())[:COMPACT_COUNTERS])),
        ]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        for step in shrink:
            if len(text.encode()) <= limit:
                return text
            step(data)
            text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return text if len(text.encode()) <= limit else text.encode()[:limit].decode(errors="ignore")

    def _summarise_issues(self, data: dict[str, Any], kinds: int) -> None:
        """Keep the ``kinds`` most frequent issue kinds by name; count the others in ``issues_omitted``."""
        if len(self.issues) <= kinds:
            return
        kept = self.issues.most_common(kinds) if kinds else []
        data["issues"] = dict(sorted(kept))
        data["issues_omitted"] = {
            "kinds": len(self.issues) - len(kept),
            "count": sum(self.issues.values()) - sum(count for _, count in kept),
        }


def _shorten_texts(data: dict[str, Any]) -> None:
    """Keep the head of the message and of the reason a run stopped early."""
    data["message"] = data["message"][:COMPACT_TEXT]
    if data.get("stopped_early"):
        data["stopped_early"] = data["stopped_early"][:COMPACT_TEXT]


#: What the compact summary keeps of a long message, at most.
COMPACT_TEXT = 200
#: Issue kinds the compact summary names when it must shrink, then at least these.
COMPACT_ISSUE_KINDS = 20
COMPACT_ISSUE_KINDS_AT_LEAST = 5
#: Counters the compact summary keeps at most: as many as the operator turns into metric labels.
COMPACT_COUNTERS = 32


def write_termination_message(summary: RunSummary, path: Path) -> None:
    """Write the compact summary where the kubelet reads a container's termination message."""
    # The message is a courtesy to the operator; the run's result is already in the database.
    with contextlib.suppress(OSError):
        path.write_text(summary.compact())
