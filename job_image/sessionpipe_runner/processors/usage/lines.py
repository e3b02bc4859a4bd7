"""What a kept usage line is, whichever reading found it: the compiled parser or :mod:`.parse`.

Apart from :mod:`.parse` (the Python reading, with msgspec) so that a run that reads with the
compiled parser never imports msgspec: ~7 ms of every incremental run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

#: A line longer than this is not decoded (counted as ``line_too_long``): no real usage line is near it.
MAX_LINE_BYTES = 16 * 1024 * 1024
#: Token counts above this are not real (and would overflow the database's BIGINT arithmetic).
MAX_TOKENS = 10**15


class UsageLine(NamedTuple):
    """One kept usage line: what the transcript says about one API call (or a snapshot of it)."""

    line_no: int  # 1-based line number in the file
    transcript_session_id: str | None  # the line's ``sessionId`` (subagent lines carry the parent's)
    cwd: str | None
    git_branch: str | None
    agent_id: str | None
    is_sidechain: bool
    model: str | None
    message_id: str | None
    request_id: str | None
    timestamp: datetime  # UTC
    input_tokens: int
    output_tokens: int
    cache_write_5m_tokens: int  # ``cache_creation_input_tokens`` when there is no 5m/1h breakdown
    cache_write_1h_tokens: int
    cache_read_tokens: int
    web_search_requests: int
    speed: str | None
    logged_cost_usd: float | None  # ``costUSD`` (Claude Code before 1.0.9)
    claude_version: str | None


def parse_timestamp(value: object) -> datetime | None:
    """An ISO-8601 timestamp as an aware UTC datetime; ``None`` if it does not parse."""
    if type(value) is not str or "T" not in value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    zone = parsed.tzinfo
    if zone is UTC:  # "…Z" and "…+00:00", nearly every line
        return parsed
    if zone is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
