"""Usage lines of a Claude Code transcript, read the way ccusage 20.0.24 reads them.

Pure functions over bytes. Only lines that contain ``"usage"`` are decoded (a byte search over the
whole file finds them, so the many tool-result and user lines are never touched), with orjson.

A line is kept when ``message.usage`` is an object and ``timestamp`` parses, unless ccusage would
skip it (docs/transcripts.md): an explicit JSON null in one of :data:`NULL_REJECTED_TOP`,
:data:`NULL_REJECTED_MESSAGE` or :data:`NULL_REJECTED_USAGE`; an empty ``requestId``,
``sessionId``, ``message.id`` or ``message.model``; a ``version`` that does not start with
digits.digits.digit. Every line left out for a reason other than "has no usage" is counted in
:attr:`ParseResult.issues` under that reason; nothing here raises on bad input.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

USAGE_MARK = b'"usage"'
#: A line longer than this is not decoded (counted as ``line_too_long``): no real usage line is near it.
MAX_LINE_BYTES = 16 * 1024 * 1024
#: Token counts above this are not real (and would overflow the database's BIGINT arithmetic).
MAX_TOKENS = 10**15
VERSION_PREFIX = re.compile(r"\d+\.\d+\.\d")
ZERO = timedelta(0)

NULL_REJECTED_TOP = ("cwd", "version", "sessionId", "requestId", "costUSD", "isApiErrorMessage", "speed")
NULL_REJECTED_MESSAGE = ("id", "model")
NULL_REJECTED_USAGE = ("speed", "cache_read_input_tokens", "cache_creation_input_tokens")


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


@dataclass
class ParseResult:
    """The kept lines of one file, and the lines left out, counted by reason."""

    lines: list[UsageLine] = field(default_factory=list)
    issues: Counter[str] = field(default_factory=Counter)


class _Skip(Exception):
    """A line is left out for the reason given."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _text(container: dict[str, Any], key: str) -> str | None:
    value = container.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _Skip("wrong_type")


def _identifier(container: dict[str, Any], key: str) -> str | None:
    value = _text(container, key)
    if value == "":
        raise _Skip("empty_id")
    return value


def _tokens(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise _Skip("wrong_type")
    return value


def parse_timestamp(value: object) -> datetime | None:
    """An ISO-8601 timestamp as an aware UTC datetime; ``None`` if it does not parse."""
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    offset = parsed.utcoffset()
    if offset is None:
        return parsed.replace(tzinfo=UTC)
    return parsed if offset == ZERO and parsed.tzinfo is UTC else parsed.astimezone(UTC)


def usage_line(line_no: int, record: dict[str, Any]) -> UsageLine | None:
    """The usage of one decoded line; ``None`` if it has none; raises :class:`_Skip` to leave it out."""
    message = record.get("message")
    if not isinstance(message, dict):
        return None
    usage = message.get("usage")
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise _Skip("wrong_type")
    for container, keys in (
        (record, NULL_REJECTED_TOP),
        (message, NULL_REJECTED_MESSAGE),
        (usage, NULL_REJECTED_USAGE),
    ):
        for key in keys:
            if key in container and container[key] is None:
                raise _Skip("null_field")
    request_id = _identifier(record, "requestId")
    session_id = _identifier(record, "sessionId")
    message_id = _identifier(message, "id")
    model = _identifier(message, "model")
    version = _text(record, "version")
    if version is not None and not VERSION_PREFIX.match(version):
        raise _Skip("unsupported_version")
    timestamp = parse_timestamp(record.get("timestamp"))
    if timestamp is None:
        raise _Skip("bad_timestamp")
    sidechain = record.get("isSidechain", False)
    if not isinstance(sidechain, bool) or not isinstance(record.get("isApiErrorMessage", False), bool):
        raise _Skip("wrong_type")
    cost = record.get("costUSD")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float)):
        raise _Skip("wrong_type")
    breakdown = usage.get("cache_creation")
    if breakdown is not None and not isinstance(breakdown, dict):
        raise _Skip("wrong_type")
    cache_write_total = _tokens(usage, "cache_creation_input_tokens")
    if breakdown is None:
        write_5m, write_1h = cache_write_total, 0
    else:
        # ccusage takes the 5m/1h split whenever it exists, even when it is empty.
        write_5m = _tokens(breakdown, "ephemeral_5m_input_tokens")
        write_1h = _tokens(breakdown, "ephemeral_1h_input_tokens")
    server_tools = usage.get("server_tool_use")
    web_search = server_tools.get("web_search_requests", 0) if isinstance(server_tools, dict) else 0
    if isinstance(web_search, bool) or not isinstance(web_search, int) or not 0 <= web_search <= MAX_TOKENS:
        web_search = 0
    speed = usage.get("speed", record.get("speed"))
    return UsageLine(
        line_no=line_no,
        transcript_session_id=session_id,
        cwd=_text(record, "cwd"),
        git_branch=_text(record, "gitBranch"),
        agent_id=_text(record, "agentId"),
        is_sidechain=sidechain,
        model=model,
        message_id=message_id,
        request_id=request_id,
        timestamp=timestamp,
        input_tokens=_tokens(usage, "input_tokens"),
        output_tokens=_tokens(usage, "output_tokens"),
        cache_write_5m_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        cache_read_tokens=_tokens(usage, "cache_read_input_tokens"),
        web_search_requests=web_search,
        speed=speed if isinstance(speed, str) else None,
        logged_cost_usd=float(cost) if cost is not None else None,
        claude_version=version,
    )


def _decode_failure(raw: bytes) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    return "invalid_json"


def parse_usage_lines(data: bytes) -> ParseResult:
    """Every kept usage line of a transcript's bytes, in file order, and the issues met."""
    result = ParseResult()
    lines, issues = result.lines, result.issues
    position = 0
    line_no = 1
    counted_to = 0  # line_no is the number of the line starting at counted_to
    while True:
        hit = data.find(USAGE_MARK, position)
        if hit < 0:
            break
        start = data.rfind(b"\n", 0, hit) + 1
        end = data.find(b"\n", hit)
        if end < 0:
            end = len(data)
        line_no += data.count(b"\n", counted_to, start)
        counted_to = start
        position = end + 1
        if end - start > MAX_LINE_BYTES:
            issues["line_too_long"] += 1
            continue
        raw = data[start:end]
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            issues[_decode_failure(raw)] += 1
            continue
        if not isinstance(record, dict):
            issues["not_an_object"] += 1
            continue
        try:
            kept = usage_line(line_no, record)
        except _Skip as skip:
            issues[skip.reason] += 1
            continue
        if kept is not None:
            lines.append(kept)
    return result
