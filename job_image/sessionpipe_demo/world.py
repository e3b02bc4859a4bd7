"""The demo corpus's world: its users, repositories, models, Claude Code versions and words."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

#: The corpus covers these months (fixed, so a seed gives the same corpus whatever today is).
FIRST_DAY = datetime(2025, 6, 2, tzinfo=UTC)
LAST_DAY = datetime(2026, 3, 27, tzinfo=UTC)

USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj")
REPOSITORIES = (
    "payments-api",
    "web-dashboard",
    "infra",
    "ml-pipeline",
    "mobile-app",
    "docs-site",
    "billing-worker",
    "search-service",
    "data-warehouse",
    "cli-tools",
)
BRANCHES = ("main", "main", "main", "feature/retry-budget", "fix/null-deref", "chore/deps", "")

#: (first day the model is used, model id, relative weight once available).
MODELS: tuple[tuple[datetime, str, int], ...] = (
    (datetime(2025, 6, 1, tzinfo=UTC), "claude-sonnet-4-20250514", 6),
    (datetime(2025, 6, 1, tzinfo=UTC), "claude-opus-4-20250514", 1),
    (datetime(2025, 8, 6, tzinfo=UTC), "claude-opus-4-1-20250805", 2),
    (datetime(2025, 9, 30, tzinfo=UTC), "claude-sonnet-4-5-20250929", 8),
    (datetime(2025, 10, 16, tzinfo=UTC), "claude-haiku-4-5-20251001", 2),
    (datetime(2025, 11, 25, tzinfo=UTC), "claude-opus-4-5-20251101", 5),
    (datetime(2026, 2, 6, tzinfo=UTC), "claude-opus-4-6", 6),
)
RETIRED = {
    "claude-sonnet-4-20250514": datetime(2025, 11, 1, tzinfo=UTC),
    "claude-opus-4-20250514": datetime(2025, 9, 1, tzinfo=UTC),
}
FAST_MODELS = frozenset({"claude-opus-4-6"})
SUBAGENT_MODEL = "claude-haiku-4-5-20251001"  # what Explore subagents ran on once it existed
SUBAGENT_MODEL_SINCE = datetime(2025, 10, 16, tzinfo=UTC)
SYNTHETIC_MODEL = "<synthetic>"

#: Claude Code versions by the day they were current: (first day, major.minor.patch range).
VERSIONS: tuple[tuple[datetime, str, int, int], ...] = (
    (datetime(2025, 6, 1, tzinfo=UTC), "1.0.", 17, 79),
    (datetime(2025, 8, 10, tzinfo=UTC), "1.0.", 80, 128),
    (datetime(2025, 10, 1, tzinfo=UTC), "2.0.", 1, 76),
    (datetime(2026, 1, 8, tzinfo=UTC), "2.1.", 1, 40),
)

VOCABULARY = (
    "the function returns a list of rows from the cache when the key is present otherwise it reads "
    "the file parses each line and writes the result into the table we need to handle the error "
    "path retry with backoff and log the request id so that the failure can be traced later test "
    "coverage is missing for the empty input case let me check the config loader and the schema "
    "migration before changing the handler this keeps the public interface stable while fixing the "
    "race between the scanner and the writer"
)
WORDS = tuple(VOCABULARY.split())
IDENTIFIERS = (
    "session",
    "records",
    "cache_key",
    "payload",
    "retry_budget",
    "handler",
    "store",
    "config",
    "result",
    "buffer",
    "request",
    "offset",
    "timeout",
    "client",
    "rows",
)
TOOLS = ("Read", "Bash", "Edit", "Grep", "Glob", "Write", "TodoWrite", "WebSearch", "WebFetch")
PROMPTS = (
    "fix the failing test in the payments module",
    "add retries with exponential backoff to the http client",
    "why is the dashboard slow when the table has many rows?",
    "refactor the config loader so it reads env vars first",
    "write a migration that adds an index on user_id",
    "review this diff and tell me what could break",
    "the CI job fails on the lint step, can you look?",
    "summarise what changed in the last three commits",
    "add a CLI flag for the output format and document it",
    "investigate the memory leak in the worker process",
)


def iso(moment: datetime) -> str:
    """A moment as Claude Code writes it: ``2025-09-03T00:52:35.576Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def size_of(lines: list[bytes]) -> int:
    """Bytes in ``lines``."""
    return sum(map(len, lines))


def dumps(record: dict[str, Any]) -> bytes:
    """One compact JSON line."""
    return orjson.dumps(record) + b"\n"
