"""Reading usage lines from real transcripts, checked against a plain ``json`` reading of the same files."""

from __future__ import annotations

import copy
import functools
import json
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sessionpipe_runner.processors.base import SessionFile
from sessionpipe_runner.processors.usage import UsageProcessor
from sessionpipe_runner.processors.usage import lines as usage_lines
from sessionpipe_runner.processors.usage import parse as usage_parse
from sessionpipe_runner.processors.usage.parse import parse_usage_lines
from tests.runner_support import CORPUS

SNIFFLY = CORPUS / "sniffly/projects/-Users-chip-dev-ai-music/d3ad4cdc-5657-435d-98fa-0035d53e383d.jsonl"
VIEWER = CORPUS / "claude-code-viewer/projects/sample-project/fe5e1c67-53e7-4862-81ae-d0e013e3270b.jsonl"
FIXTURES_ALPHA = CORPUS / "ccusage-fixtures/projects/project-alpha/session-alpha/chat.jsonl"


def plain_usage(path: Path) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
    """(line number, record, message.usage) of every line whose message has a usage object."""
    found = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        record = json.loads(text)
        message = record.get("message")
        if isinstance(message, dict) and isinstance(message.get("usage"), dict):
            found.append((number, record, message["usage"]))
    return found


@pytest.mark.parametrize("path", [SNIFFLY, VIEWER, FIXTURES_ALPHA], ids=lambda p: p.parent.name)
def test_every_usage_line_of_a_real_transcript_is_read_with_its_tokens(path: Path) -> None:
    expected = plain_usage(path)
    result = parse_usage_lines(path.read_bytes())
    assert not result.issues
    assert [line.line_no for line in result.lines] == [number for number, _, _ in expected]
    for line, (_, record, usage) in zip(result.lines, expected, strict=True):
        assert line.message_id == record["message"]["id"]
        assert line.request_id == record.get("requestId")
        assert line.model == record["message"]["model"]
        assert line.is_sidechain == record.get("isSidechain", False)
        assert line.transcript_session_id == record.get("sessionId")
        assert line.input_tokens == usage["input_tokens"]
        assert line.output_tokens == usage["output_tokens"]
        assert line.cache_read_tokens == usage.get("cache_read_input_tokens", 0)
        split = usage.get("cache_creation")
        if split is None:
            assert (line.cache_write_5m_tokens, line.cache_write_1h_tokens) == (usage["cache_creation_input_tokens"], 0)
        else:
            assert line.cache_write_5m_tokens == split["ephemeral_5m_input_tokens"]
            assert line.cache_write_1h_tokens == split["ephemeral_1h_input_tokens"]
        assert line.timestamp == datetime.fromisoformat(record["timestamp"])
        assert line.timestamp.tzinfo is UTC


def test_subagent_usage_repeated_in_a_user_lines_tool_result_is_not_counted() -> None:
    records = [json.loads(text) for text in VIEWER.read_text().splitlines()]
    repeated = [r for r in records if isinstance(r.get("toolUseResult"), dict) and "usage" in r["toolUseResult"]]
    assert repeated, "the transcript has tool results that carry usage"
    kept_numbers = {line.line_no for line in parse_usage_lines(VIEWER.read_bytes()).lines}
    repeated_numbers = {records.index(r) + 1 for r in repeated}
    assert not kept_numbers & repeated_numbers


def test_fast_mode_and_logged_cost_are_read_from_the_line() -> None:
    lines = parse_usage_lines(FIXTURES_ALPHA.read_bytes()).lines
    records = [json.loads(text) for text in FIXTURES_ALPHA.read_text().splitlines()]
    assert [line.speed for line in lines] == [r["message"]["usage"].get("speed") for r in records]
    assert [line.logged_cost_usd for line in lines] == [r["costUSD"] for r in records]
    assert [line.claude_version for line in lines] == [r["version"] for r in records]


def real_usage_line() -> dict[str, Any]:
    record: dict[str, Any] = json.loads(SNIFFLY.read_text().splitlines()[plain_usage(SNIFFLY)[0][0] - 1])
    return record


def mutated(change: Any) -> bytes:
    record = real_usage_line()
    change(record)
    return json.dumps(record).encode()


@functools.cache
def bad_lines() -> dict[str, bytes]:
    """One line per reason a line is refused, made from a real line (read when first asked, not at import)."""
    return {
        "invalid_json": json.dumps(real_usage_line()).encode()[:-40],
        "invalid_utf8": json.dumps(real_usage_line()).encode().replace(b'"assistant"', b'"assist\xff\xfeant"', 1),
        "not_an_object": b'[{"message": {"usage": {}}}]',
        "wrong_type": mutated(lambda r: r["message"]["usage"].update(input_tokens="12")),
        "null_field": mutated(lambda r: r["message"]["usage"].update(cache_read_input_tokens=None)),
        "empty_id": mutated(lambda r: r.update(requestId="")),
        "unsupported_version": mutated(lambda r: r.update(version="beta")),
        "bad_timestamp": mutated(lambda r: r.update(timestamp="yesterday")),
    }


def test_bad_lines_are_counted_by_reason_and_the_good_ones_still_read() -> None:
    original = SNIFFLY.read_bytes()
    good = parse_usage_lines(original)
    damaged = original + b"\n".join(bad_lines().values()) + b"\n"
    result = parse_usage_lines(damaged)
    assert result.issues == dict.fromkeys(bad_lines(), 1)
    assert result.lines == good.lines


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # msgspec refuses the ``message`` type first, then the line's syntax
        (b'{"message": 5, "usage": 1', "invalid_json"),
        (b'["usage"', "invalid_json"),
        # a number past a double's range where a field is read
        (b'{"costUSD": 1e400, "message": {"usage": {}}, "timestamp": "2025-01-01T00:00:00Z"}', "wrong_type"),
        (
            b'{"costUSD": ' + b"9" * 320 + b', "message": {"usage": {}}, "timestamp": "2025-01-01T00:00:00Z"}',
            "wrong_type",
        ),
        (b'{"cwd": null, "message": {"usage": {"x": -1e400}}, "timestamp": "2025-01-01T00:00:00Z"}', "wrong_type"),
        # nested deeper than Python's recursion limit lets msgspec go
        (
            b'{"message": {"usage": {}, "content": '
            + b"[" * 5000
            + b"]" * 5000
            + b'}, "timestamp": "2025-01-01T00:00:00Z"}',
            "too_deep",
        ),
        (b'{"message": {"usage": {}}, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "too_deep"),
    ],
)
def test_lines_the_decoder_refuses_late_are_counted_not_raised(raw: bytes, reason: str) -> None:
    result = parse_usage_lines(raw)
    assert (result.lines, dict(result.issues)) == ([], {reason: 1})


def test_a_huge_line_is_counted_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    line = json.dumps(real_usage_line()).encode()
    monkeypatch.setattr(usage_lines, "MAX_LINE_BYTES", len(line) - 1)
    result = parse_usage_lines(line + b"\n")
    assert (result.lines, dict(result.issues)) == ([], {"line_too_long": 1})


def test_usage_line_without_message_id_or_request_id_is_kept() -> None:
    def drop_ids(record: dict[str, Any]) -> None:
        del record["requestId"]
        del record["message"]["id"]

    (line,) = parse_usage_lines(mutated(drop_ids)).lines
    assert (line.message_id, line.request_id) == (None, None)


def test_timestamp_with_an_offset_is_stored_in_utc() -> None:
    data = mutated(lambda r: r.update(timestamp="2025-06-08T13:00:00.500+02:00"))
    (line,) = parse_usage_lines(data).lines
    assert line.timestamp == datetime(2025, 6, 8, 11, 0, 0, 500000, tzinfo=UTC)


# --- the typed reading and the untyped one agree on every line ------------------------------------

#: Values to put in place of a field: of the right type, of a wrong one, out of range, null, absent.
ODD_VALUES: list[Any] = [
    None, "", "x", "0", "beta", "1.0.9", "2.0.31-dev", "2025-06-08T13:00:00Z", "2025-06-08T13:00:00.5+02:00",
    "2025-06-08", "2025-06-08 13:00:00", 0, 7, -1, 10**15, 10**15 + 1, 10**30, 1.5, 2.0, 1e300, True, False,
    [], [1], {}, {"ephemeral_5m_input_tokens": 3}, {"ephemeral_1h_input_tokens": "3"}, {"web_search_requests": 2},
    {"web_search_requests": -2}, "fast", "standard",
]  # fmt: skip
TOP_FIELDS = ["timestamp", "sessionId", "requestId", "version", "cwd", "gitBranch", "agentId", "isSidechain",
              "isApiErrorMessage", "costUSD", "speed", "message"]  # fmt: skip
MESSAGE_FIELDS = ["id", "model", "usage"]
USAGE_FIELDS = ["input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                "cache_creation", "server_tool_use", "speed"]  # fmt: skip
ABSENT = object()


def corpus_usage_lines() -> list[dict[str, Any]]:
    return [record for path in sorted(CORPUS.rglob("*.jsonl")) for _, record, _ in plain_usage(path)]


def fuzzed_lines(count: int, seed: int = 20261123) -> list[bytes]:
    """Real usage lines with one to three fields replaced by odd values or removed."""
    rng = random.Random(seed)
    originals = corpus_usage_lines()
    lines = []
    for _ in range(count):
        record = copy.deepcopy(rng.choice(originals))
        for _ in range(rng.randint(1, 3)):
            where = rng.choice(["top", "message", "usage"])
            container = record if where == "top" else record.get("message")
            if where == "usage" and isinstance(container, dict):
                container = container.get("usage")
            if not isinstance(container, dict):
                continue
            key = rng.choice({"top": TOP_FIELDS, "message": MESSAGE_FIELDS, "usage": USAGE_FIELDS}[where])
            value = rng.choice([*ODD_VALUES, ABSENT])
            if value is ABSENT:
                container.pop(key, None)
            else:
                container[key] = copy.deepcopy(value)
        lines.append(json.dumps(record).encode())
    return lines


def reading(read: Any, number: int, raw: bytes) -> Any:
    try:
        return read(number, raw)
    except usage_parse._Skip as skip:
        return skip.reason


def test_the_typed_reading_takes_the_real_lines() -> None:
    """Real usage lines decode with the types (or the typed reading would never be used)."""
    for record in corpus_usage_lines():
        usage_parse._decode_typed_record(json.dumps(record).encode())


def test_the_typed_and_untyped_readings_agree_on_fuzzed_lines() -> None:
    outcomes: Counter[str] = Counter()
    for number, raw in enumerate(fuzzed_lines(6000), start=1):
        typed = reading(usage_parse.read_line, number, raw)
        assert typed == reading(usage_parse.read_line_untyped, number, raw), raw
        outcomes["kept" if isinstance(typed, usage_parse.UsageLine) else str(typed)] += 1
    # The fuzzing reached every rule, so agreement means something.
    assert {"kept", "None", "wrong_type", "null_field", "empty_id", "unsupported_version", "bad_timestamp"} <= set(
        outcomes
    ), outcomes


def test_the_typed_and_untyped_readings_agree_on_whole_files() -> None:
    for path in sorted(CORPUS.rglob("*.jsonl")):
        data = path.read_bytes()
        damaged = data + b"\n".join([*bad_lines().values(), *fuzzed_lines(50)]) + b"\n"
        for variant in (data, damaged):
            typed = parse_usage_lines(variant)
            untyped = parse_usage_lines(variant, usage_parse.read_line_untyped)
            assert (typed.lines, typed.issues) == (untyped.lines, untyped.issues), path


def test_processor_rows_use_the_logged_cost_and_the_session_identity() -> None:
    session = SessionFile(
        key="carol/project-alpha/session-alpha/chat.jsonl",
        location=str(FIXTURES_ALPHA),
        user="carol",
        project="project-alpha",
        session_id="session-alpha",
        size=FIXTURES_ALPHA.stat().st_size,
        mtime_ns=0,
    )
    output = UsageProcessor().process(session, FIXTURES_ALPHA.read_bytes())
    rows = output.rows["usage_rows"]
    records = [json.loads(text) for text in FIXTURES_ALPHA.read_text().splitlines()]
    assert output.items == len(rows) == len(records)
    assert {row[:5] for row in rows} == {
        (session.key, n, "carol", "project-alpha", "session-alpha") for n in range(1, len(records) + 1)
    }
    assert [row[21:23] for row in rows] == [(r["costUSD"], "transcript") for r in records]


def test_processor_prices_calls_at_the_published_per_token_rates() -> None:
    # Claude Sonnet 4 list prices (USD per million tokens): input 3, output 15, 5m cache write 3.75,
    # cache read 0.30. The sniffly lines carry no costUSD, so every cost comes from these rates.
    session = SessionFile("u/p/s.jsonl", str(SNIFFLY), "u", "p", "s", 0, 0)
    rows = UsageProcessor().process(session, SNIFFLY.read_bytes()).rows["usage_rows"]
    for (_, _, usage), row in zip(plain_usage(SNIFFLY), rows, strict=True):
        expected = (
            usage["input_tokens"] * 3
            + usage["output_tokens"] * 15
            + usage["cache_creation_input_tokens"] * 3.75
            + usage["cache_read_input_tokens"] * 0.30
        ) / 1e6
        assert row[21] == pytest.approx(expected, rel=1e-12)
        assert row[22] == "prices"
