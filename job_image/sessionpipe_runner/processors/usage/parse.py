"""Usage lines of a Claude Code transcript, read the way ccusage 20.0.24 reads them.

Pure functions over bytes. Only lines that contain ``"usage"`` are decoded (a byte search over the
whole file finds them, so the many tool-result and user lines are never touched). Each is decoded
with msgspec into :class:`_TypedRecord`, which names only the fields accounting needs, with the
types a sound line has: msgspec checks those types and the token ranges in C, and the message
content, most of a usage line's bytes, is checked for JSON syntax but never built into Python
objects. A line the types refuse is decoded again into :class:`_Record`, which takes any JSON value
in those fields, and :func:`usage_line` applies every rule below to it and names the reason it
is left out. A differential test holds the two readings to the same result on every line.

A line is kept when ``message.usage`` is an object and ``timestamp`` parses, unless ccusage would
skip it (docs/transcripts.md, "Which lines count"): an explicit JSON null in ``cwd``, ``version``, ``sessionId``,
``requestId``, ``costUSD``, ``isApiErrorMessage``, ``speed``, ``message.id``, ``message.model``,
``message.usage.speed``, ``…cache_read_input_tokens`` or ``…cache_creation_input_tokens`` (see
:func:`_has_rejected_null`); an empty ``requestId``, ``sessionId``, ``message.id`` or
``message.model``; a ``version`` that does not start with digits.digits.digit. Every line left out
for a reason other than "has no usage" is counted in :attr:`ParseResult.issues` under that reason;
nothing here raises on bad input.

Why one file of over 400 lines: the typed reading (:class:`_TypedRecord`, :func:`_typed_usage_line`)
and the rule-by-rule reading (:class:`_Record`, :func:`usage_line`) state the same rules twice, once
as types and once as code, and must change together; side by side, a change to one shows where the
other needs it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec

from sessionpipe_runner.processors.usage import lines as usage_lines
from sessionpipe_runner.processors.usage.lines import MAX_TOKENS, UsageLine, parse_timestamp

USAGE_MARK = b'"usage"'
VERSION_PREFIX = re.compile(r"\d+\.\d+\.\d")
UNSET: Any = msgspec.UNSET  # a field absent from the line (``None`` is an explicit JSON null)


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


class _Message(msgspec.Struct, gc=False):
    id: Any = UNSET
    model: Any = UNSET
    usage: Any = UNSET


#: Field names of the records below as a transcript spells them.
TRANSCRIPT_NAMES = {
    "session_id": "sessionId",
    "request_id": "requestId",
    "cost_usd": "costUSD",
    "is_api_error": "isApiErrorMessage",
    "git_branch": "gitBranch",
    "agent_id": "agentId",
    "is_sidechain": "isSidechain",
}


class _Record(msgspec.Struct, gc=False, rename=TRANSCRIPT_NAMES):
    """The fields of a transcript line that usage accounting reads; every other field is skipped."""

    message: _Message | None = None
    timestamp: Any = UNSET
    session_id: Any = UNSET
    request_id: Any = UNSET
    version: Any = UNSET
    cwd: Any = UNSET
    git_branch: Any = UNSET
    agent_id: Any = UNSET
    is_sidechain: Any = UNSET
    is_api_error: Any = UNSET
    cost_usd: Any = UNSET
    speed: Any = UNSET


_decode_record = msgspec.json.Decoder(_Record).decode

# --- the typed reading --------------------------------------------------------------------------
# Each field has the type :func:`usage_line` accepts without comment; any other value (a null where
# ccusage refuses one, a string for a count, a negative count) fails the typed decoding and sends the
# line to :func:`usage_line`, which finds the reason.

Unset = msgspec.UnsetType
Tokens = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]


class _TypedBreakdown(msgspec.Struct, gc=False):
    ephemeral_5m_input_tokens: Tokens = 0
    ephemeral_1h_input_tokens: Tokens = 0


class _TypedServerTools(msgspec.Struct, gc=False):
    web_search_requests: Tokens = 0


class _TypedUsage(msgspec.Struct, gc=False):
    input_tokens: Tokens = 0
    output_tokens: Tokens = 0
    cache_creation_input_tokens: Tokens = 0
    cache_read_input_tokens: Tokens = 0
    cache_creation: _TypedBreakdown | Unset | None = UNSET
    server_tool_use: _TypedServerTools | Unset = UNSET
    speed: str | Unset = UNSET


class _TypedMessage(msgspec.Struct, gc=False):
    id: str | Unset = UNSET
    model: str | Unset = UNSET
    usage: _TypedUsage | Unset | None = UNSET


class _TypedRecord(msgspec.Struct, gc=False, rename=TRANSCRIPT_NAMES):
    """:class:`_Record` with the types of a line that needs no second look."""

    message: _TypedMessage | Unset | None = UNSET
    timestamp: str | Unset = UNSET
    session_id: str | Unset = UNSET
    request_id: str | Unset = UNSET
    version: str | Unset = UNSET
    cwd: str | Unset = UNSET
    git_branch: str | Unset | None = UNSET
    agent_id: str | Unset | None = UNSET
    is_sidechain: bool | Unset = UNSET
    is_api_error: bool | Unset = UNSET
    cost_usd: float | Unset = UNSET
    speed: str | Unset = UNSET


_decode_typed_record = msgspec.json.Decoder(_TypedRecord).decode


def _typed_usage_line(line_no: int, record: _TypedRecord, message: _TypedMessage, usage: _TypedUsage) -> UsageLine:
    """:func:`usage_line` for a typed record: only the rules types cannot express are left to check.

    Raises :class:`_Skip` for those, in the order :func:`usage_line` checks them.
    """
    request_id = None if record.request_id is msgspec.UNSET else record.request_id
    session_id = None if record.session_id is msgspec.UNSET else record.session_id
    message_id = None if message.id is msgspec.UNSET else message.id
    model = None if message.model is msgspec.UNSET else message.model
    if request_id == "" or session_id == "" or message_id == "" or model == "":
        raise _Skip("empty_id")
    version = None if record.version is msgspec.UNSET else record.version
    if version is not None and not VERSION_PREFIX.match(version):
        raise _Skip("unsupported_version")
    timestamp = parse_timestamp(record.timestamp)
    if timestamp is None:
        raise _Skip("bad_timestamp")
    breakdown = usage.cache_creation
    if breakdown is None or breakdown is msgspec.UNSET:
        write_5m, write_1h = usage.cache_creation_input_tokens, 0
    else:
        write_5m, write_1h = breakdown.ephemeral_5m_input_tokens, breakdown.ephemeral_1h_input_tokens
    server_tools = usage.server_tool_use
    speed = record.speed if usage.speed is msgspec.UNSET else usage.speed
    return _new_usage_line(
        UsageLine,
        (
            line_no,
            session_id,
            None if record.cwd is msgspec.UNSET else record.cwd,
            None if record.git_branch is msgspec.UNSET else record.git_branch,
            None if record.agent_id is msgspec.UNSET else record.agent_id,
            False if record.is_sidechain is msgspec.UNSET else record.is_sidechain,
            model,
            message_id,
            request_id,
            timestamp,
            usage.input_tokens,
            usage.output_tokens,
            write_5m,
            write_1h,
            usage.cache_read_input_tokens,
            0 if server_tools is msgspec.UNSET else server_tools.web_search_requests,
            None if speed is msgspec.UNSET else speed,
            None if record.cost_usd is msgspec.UNSET else record.cost_usd,
            version,
        ),
    )


# --- the untyped reading: every rule checked in Python --------------------------------------


def _text(value: Any) -> str | None:
    if value is UNSET or value is None:
        return None
    if type(value) is str:
        return value
    raise _Skip("wrong_type")


def _identifier(value: Any) -> str | None:
    text = _text(value)
    if text == "":
        raise _Skip("empty_id")
    return text


def _has_rejected_null(record: _Record, message: _Message, usage: dict[str, Any]) -> bool:
    """Whether one of the fields ccusage refuses to see as JSON null is null (absent is fine)."""
    return (
        record.cwd is None
        or record.version is None
        or record.session_id is None
        or record.request_id is None
        or record.cost_usd is None
        or record.is_api_error is None
        or record.speed is None
        or message.id is None
        or message.model is None
        or usage.get("speed", UNSET) is None
        or usage.get("cache_read_input_tokens", UNSET) is None
        or usage.get("cache_creation_input_tokens", UNSET) is None
    )


_new_usage_line = tuple.__new__  # UsageLine(...) by keyword costs a Python-level call per line


def usage_line(line_no: int, record: _Record) -> UsageLine | None:
    """The usage of one decoded line; ``None`` if it has none; raises :class:`_Skip` to leave it out.

    Every rule is checked here, for lines whose fields the typed reading refused (so it is off the
    hot path, and written for clarity).
    """
    message = record.message
    if message is None:
        return None
    usage = message.usage
    if type(usage) is not dict:
        if usage is None or usage is UNSET:
            return None
        raise _Skip("wrong_type")
    if _has_rejected_null(record, message, usage):
        raise _Skip("null_field")
    request_id = _identifier(record.request_id)
    session_id = _identifier(record.session_id)
    message_id = _identifier(message.id)
    model = _identifier(message.model)
    version = _text(record.version)
    if version is not None and not VERSION_PREFIX.match(version):
        raise _Skip("unsupported_version")
    timestamp = parse_timestamp(record.timestamp)
    if timestamp is None:
        raise _Skip("bad_timestamp")
    sidechain = False if record.is_sidechain is UNSET else record.is_sidechain
    if type(sidechain) is not bool or not (record.is_api_error is UNSET or type(record.is_api_error) is bool):
        raise _Skip("wrong_type")
    cost = record.cost_usd
    if cost is UNSET:
        cost = None
    elif type(cost) is int:
        try:
            cost = float(cost)
        except OverflowError:  # no double holds it
            raise _Skip("wrong_type") from None
    elif type(cost) is not float:
        raise _Skip("wrong_type")
    get = usage.get
    input_tokens = get("input_tokens", 0)
    output_tokens = get("output_tokens", 0)
    cache_write = get("cache_creation_input_tokens", 0)
    cache_read = get("cache_read_input_tokens", 0)
    breakdown = get("cache_creation")
    if breakdown is None:
        write_5m, write_1h = cache_write, 0
    elif type(breakdown) is dict:
        # ccusage takes the 5m/1h split whenever it exists, even when it is empty.
        write_5m = breakdown.get("ephemeral_5m_input_tokens", 0)
        write_1h = breakdown.get("ephemeral_1h_input_tokens", 0)
    else:
        raise _Skip("wrong_type")
    if not (
        type(input_tokens) is type(output_tokens) is type(cache_write) is type(cache_read) is int
        and type(write_5m) is type(write_1h) is int
        and min(input_tokens, output_tokens, cache_write, cache_read, write_5m, write_1h) >= 0
        and max(input_tokens, output_tokens, cache_write, cache_read, write_5m, write_1h) <= MAX_TOKENS
    ):
        raise _Skip("wrong_type")
    server_tools = get("server_tool_use")
    web_search = server_tools.get("web_search_requests", 0) if type(server_tools) is dict else 0
    if type(web_search) is not int or not 0 <= web_search <= MAX_TOKENS:
        web_search = 0
    speed = get("speed", UNSET)
    if speed is UNSET:
        speed = record.speed
    cwd, git_branch, agent_id = _text(record.cwd), _text(record.git_branch), _text(record.agent_id)
    return _new_usage_line(
        UsageLine,
        (
            line_no,
            session_id,
            cwd,
            git_branch,
            agent_id,
            sidechain,
            model,
            message_id,
            request_id,
            timestamp,
            input_tokens,
            output_tokens,
            write_5m,
            write_1h,
            cache_read,
            web_search,
            speed if type(speed) is str else None,
            cost,
            version,
        ),
    )


def _decode(raw: bytes) -> _Record:
    """A line decoded into :class:`_Record`; raises :class:`_Skip` when it is not a JSON object."""
    try:
        return _decode_record(raw)
    except msgspec.ValidationError:
        # The wrong shape (not an object at all, or a ``message`` that is not one), or a number
        # past a double's range; the rest of the line was not read yet, so read it whole.
        try:
            whole = msgspec.json.decode(raw)
        except msgspec.ValidationError:
            raise _Skip("wrong_type") from None  # msgspec refuses a number like 1e400 in any value it builds
        except msgspec.DecodeError:
            raise _Skip("invalid_json") from None
        except RecursionError:
            raise _Skip("too_deep") from None
        if not isinstance(whole, dict):
            raise _Skip("not_an_object") from None
        return _Record()  # a line whose message is not an object has no usage
    except msgspec.DecodeError:
        raise _Skip("invalid_json") from None
    except RecursionError:
        raise _Skip("too_deep") from None


def _check_utf8(raw: bytes) -> None:
    """Raise :class:`_Skip` for a line that is not UTF-8.

    msgspec checks the UTF-8 of the strings it builds only, so the whole line is checked here.
    """
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Skip("invalid_utf8") from None


def read_line(line_no: int, raw: bytes) -> UsageLine | None:
    """The usage of one line; ``None`` if it has none; raises :class:`_Skip` to leave it out."""
    _check_utf8(raw)
    try:
        record = _decode_typed_record(raw)
    except msgspec.ValidationError:
        return usage_line(line_no, _decode(raw))
    except msgspec.DecodeError:
        raise _Skip("invalid_json") from None
    except RecursionError:  # msgspec goes as deep as Python's recursion limit lets it
        raise _Skip("too_deep") from None
    message = record.message
    if message is None or message is msgspec.UNSET:
        return None
    usage = message.usage
    if usage is None or usage is msgspec.UNSET:
        return None
    return _typed_usage_line(line_no, record, message, usage)


def read_line_outcome(line_no: int, raw: bytes) -> UsageLine | str | None:
    """:func:`read_line`, with the reason a line is left out returned rather than raised."""
    try:
        return read_line(line_no, raw)
    except _Skip as skip:
        return skip.reason


def read_line_untyped(line_no: int, raw: bytes) -> UsageLine | None:
    """:func:`read_line` without the typed reading: what the differential test compares it with."""
    _check_utf8(raw)
    return usage_line(line_no, _decode(raw))


def parse_usage_lines(
    data: bytes, read: Callable[[int, bytes], UsageLine | None] = read_line, first_line: int = 1
) -> ParseResult:
    """Every kept usage line of a transcript's bytes, in file order, and the issues met.

    ``first_line`` is the number of ``data``'s first line in the file (``data`` may be the lines
    appended after those already stored).
    """
    result = ParseResult()
    lines, issues = result.lines, result.issues
    position = 0
    line_no = first_line
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
        if end - start > usage_lines.MAX_LINE_BYTES:  # looked up per call: a test may lower it
            issues["line_too_long"] += 1
            continue
        try:
            kept = read(line_no, data[start:end])
        except _Skip as skip:
            issues[skip.reason] += 1
            continue
        if kept is not None:
            lines.append(kept)
    return result
