"""The runner's run summary, read back from a pod's termination message.

The runner writes one JSON object (keys: ``SUMMARY_KEYS``) as its container's termination message;
the operator reads it to record the run. The message crosses a trust boundary (any container can
write anything there), so every field is checked on its own and an odd one is dropped, not trusted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from sessionpipe_contract import SUMMARY_KEYS

_COUNT_KEYS = ("scanned", "unchanged", "hashed", "processed", "skipped", "errors", "quarantined", "items", "exit_code")
_TEXT_KEYS = ("processor", "processor_version", "run_id", "outcome", "started", "finished", "message")
_MAX_TEXT = 1024
_COUNTER_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_MAX_COUNTERS = 32  # each name is a metric label value: a processor must not flood the registry


def parse_run_summary(message: str | None) -> dict[str, Any] | None:
    """The runner's run summary from a pod's termination message, or ``None`` if there is none.

    The message is normally the JSON object the runner wrote (keys: ``SUMMARY_KEYS``). With
    ``FallbackToLogsOnError`` it may instead be the tail of the log, which may still end with the
    summary line; anything else (truncated JSON, a stack trace, binary noise) yields ``None``.
    Values of the wrong type are dropped one by one, so one odd field never loses the others.
    """
    if not message or not message.strip():
        return None
    candidates = [message.strip(), *reversed([line.strip() for line in message.splitlines() if line.strip()])]
    for candidate in candidates:
        if not candidate.startswith("{"):
            continue
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            summary = _clean_summary(parsed)
            if summary:
                return summary
    return None


def _clean_summary(raw: Mapping[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        value = raw.get(key)
        if key in _COUNT_KEYS:
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                summary[key] = value
        elif key == "duration_seconds":
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
                summary[key] = float(value)
        elif key in _TEXT_KEYS:
            if isinstance(value, str) and value:
                summary[key] = value[:_MAX_TEXT]
        elif key == "issues" and isinstance(value, dict):
            summary[key] = value
        elif key == "counters" and isinstance(value, dict):
            summary[key] = run_counters(value)
    return summary


def run_counters(raw: Mapping[str, Any]) -> dict[str, int]:
    """A summary's counters fit to become metric labels: snake_case names, counts, a bounded number."""
    counters = {
        name: value
        for name, value in raw.items()
        if isinstance(name, str)
        and _COUNTER_NAME.fullmatch(name)
        and isinstance(value, int)
        and not isinstance(value, bool)
        and value >= 0
    }
    return dict(sorted(counters.items())[:_MAX_COUNTERS])
