"""The compiled usage parser (``sessionpipe_native``) against the Python reading, its reference.

Both readings run through :meth:`UsageProcessor.process_appended` (the switch is
``SESSIONPIPE_USAGE_READING``) on the same bytes; the rows must be the same tuples (floats
bit for bit, timestamps aware UTC, bools not ints) and the issue counts the same Counter. The inputs
are every line of every real transcript in the shared corpus, read in place, and seeded mutations of
its usage lines: truncation, byte flips, nulls, wrong types, huge and negative numbers, spaced
separators, non-UTF-8, ``\\uXXXX`` escapes (surrogates included), duplicate keys, BOM, CRLF, lines
over the length limit, and offsets of the first line.
"""

from __future__ import annotations

import functools
import gc
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sessionpipe_native

from sessionpipe_runner import native
from sessionpipe_runner.processors import usage as usage_package
from sessionpipe_runner.processors.base import Output, RunContext, SessionFile
from sessionpipe_runner.processors.usage import UsageProcessor, columns
from sessionpipe_runner.processors.usage import lines as line_limits
from sessionpipe_runner.processors.usage import native as usage_native
from sessionpipe_runner.processors.usage import parse as usage_parse
from tests.runner_support import CORPUS

SESSION = SessionFile(
    key="alice/-home-alice-app/s.jsonl",
    location="/nowhere",
    user="alice",
    project="-home-alice-app",
    session_id="s",
    size=0,
    mtime_ns=0,
)
SEED = 13
MUTANTS_PER_LINE = 12

Json = Any


def transcripts() -> list[Path]:
    return sorted(CORPUS.rglob("*.jsonl"))


def usage_lines() -> list[bytes]:
    return [line for path in transcripts() for line in path.read_bytes().splitlines() if b'"usage"' in line]


def comparable(value: object) -> object:
    """A value with what ``==`` hides made visible: float bits, a timestamp's zone, bool vs int."""
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, datetime):
        return ("datetime", value.isoformat(), value.tzinfo is UTC)
    return (type(value).__name__, value)


def read(processor: UsageProcessor, data: bytes, first_line: int, reading: str) -> Output:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(usage_native.ENV_USAGE_READING, reading)
        return processor.process_appended(SESSION, data, first_line)


@functools.cache
def processor() -> UsageProcessor:
    """One processor for every case: its price table is loaded once."""
    return UsageProcessor()


def assert_same(data: bytes, first_line: int = 1) -> None:
    native = read(processor(), data, first_line, "native")
    python = read(processor(), data, first_line, usage_native.PYTHON_READING)
    context = f"first_line={first_line} data={data[:1500]!r}"
    assert dict(native.issues) == dict(python.issues), context
    native_rows, python_rows = native.rows["usage_rows"], python.rows["usage_rows"]
    assert len(native_rows) == len(python_rows), context
    for ours, theirs in zip(native_rows, python_rows, strict=True):
        assert [comparable(v) for v in ours] == [comparable(v) for v in theirs], context
    assert native.items == python.items
    columnar = processor().columnar_output(sessionpipe_native, SESSION, data, first_line)
    assert dict(columnar.issues) == dict(python.issues), context
    assert columnar.items == python.items, context
    stored = [[comparable(v) for v in row] for row in columnar_rows(columnar)]
    assert stored == [[comparable(v) for v in columns.with_micros(row)] for row in python_rows], context


def columnar_rows(output: Output) -> list[tuple[Any, ...]]:
    """The rows of a :class:`ColumnarOutput` as they reach DuckDB (its Arrow table), ``ts`` in microseconds."""
    assert isinstance(output, columns.ColumnarOutput)
    table = columns.arrow_table([output.columns])
    values = [column.to_pylist() for column in table.columns]
    values[columns.TS_COLUMN] = table.column(columns.TS_COLUMN).cast(pa.int64()).to_pylist()
    return list(zip(*values, strict=True)) if values[0] else []


def test_the_compiled_reading_is_installed_and_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(usage_native.ENV_USAGE_READING, raising=False)
    assert usage_native.compiled_reading() is sessionpipe_native


@pytest.mark.parametrize("reading", ["native", usage_native.PYTHON_READING])
def test_a_run_with_the_compiled_reading_gets_columns_and_worker_threads(
    reading: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Columns cannot be pickled: the compiled reading's workers are threads; the Python reading's processes."""
    monkeypatch.setenv(usage_native.ENV_USAGE_READING, reading)
    usage = UsageProcessor()
    usage.start(RunContext(run_id="r", database=Path("/nowhere"), config={}, environ={}))
    output = usage.process(SESSION, transcripts()[0].read_bytes())
    assert usage.releases_gil is (reading == "native")
    assert isinstance(output, columns.ColumnarOutput) is (reading == "native")
    assert output.items > 0


def test_columnar_rows_are_written_whatever_the_reading_setting_says_at_write_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import duckdb

    monkeypatch.setenv(usage_native.ENV_USAGE_READING, "native")
    usage = UsageProcessor()
    usage.start(RunContext(run_id="r", database=Path("/nowhere"), config={}, environ={}))
    output = usage.process(SESSION, transcripts()[0].read_bytes())
    monkeypatch.setenv(usage_native.ENV_USAGE_READING, usage_native.PYTHON_READING)
    with duckdb.connect() as con:
        con.execute(usage.migrations()[0].sql)  # the table (later steps need the runner's tables)
        usage.write(con, [(SESSION, output)])
        assert con.execute("SELECT count(*) FROM usage_rows").fetchone() == (output.items,)
    assert output.items > 0


def test_the_compiled_rows_are_not_tracked_by_the_cyclic_gc() -> None:
    """A run holds a batch's rows until it writes them; rows of atomic values need no GC scans."""
    rows = read(processor(), transcripts()[0].read_bytes(), 1, "native").rows["usage_rows"]
    assert rows
    assert not any(gc.is_tracked(row) for row in rows)


@pytest.mark.parametrize(
    "timestamp",
    [
        "2024-02-29T12:00:00.000Z",
        "2000-02-29T00:00:00Z",
        "1900-02-29T00:00:00.000Z",  # not a leap year: the reference refuses it
        "2025-02-30T00:00:00.000Z",
        "2025-04-31T00:00:00.000Z",
        "0001-01-01T00:00:00.000Z",
        "9999-12-31T23:59:59.999999Z",
        "1969-12-31T23:59:59.999Z",
        "1970-01-01T00:00:00.000001Z",
        "2025-06-30T23:59:60.000Z",
        "2025-13-01T00:00:00.000Z",
        "2025-06-01T24:00:00.000Z",
        "2025-06-01T10:00:00+02:00",
    ],
)
def test_timestamps_become_the_same_microseconds_in_columns(timestamp: str) -> None:
    record = json.loads(usage_lines()[0])
    record["timestamp"] = timestamp
    assert_same(json.dumps(record).encode() + b"\n")


def test_a_batch_of_files_joins_into_one_table_in_order() -> None:
    """Several files' columns become one table: their rows in order, each with its own session."""
    paths = transcripts()[:3]
    sessions = [
        SessionFile(
            key=f"u/p/{i}.jsonl", location="/x", user=f"u{i}", project="p", session_id=str(i), size=0, mtime_ns=0
        )
        for i in range(3)
    ]
    outputs = [
        processor().columnar_output(sessionpipe_native, s, p.read_bytes(), 1)
        for s, p in zip(sessions, paths, strict=True)
    ]
    expected = [
        [comparable(v) for v in columns.with_micros(row)]
        for session, path in zip(sessions, paths, strict=True)
        for row in read_rows(session, path.read_bytes())
    ]
    table = columns.arrow_table([output.columns for output in outputs])  # type: ignore[attr-defined]
    values = [column.to_pylist() for column in table.columns]
    values[columns.TS_COLUMN] = table.column(columns.TS_COLUMN).cast(pa.int64()).to_pylist()
    assert len(expected) > 10
    assert [[comparable(v) for v in row] for row in zip(*values, strict=True)] == expected


def test_a_batch_is_joined_without_the_gil() -> None:
    """The runner joins a batch of a whole row group while worker threads read files: a Python thread
    runs while the columns are joined."""
    session = SessionFile(key="u/p/s.jsonl", location="/x", user="u", project="p", session_id="s", size=0, mtime_ns=0)
    parts = [processor().columnar_output(sessionpipe_native, session, path.read_bytes(), 1) for path in transcripts()]
    batch = [output.columns for output in parts] * 800  # type: ignore[attr-defined]
    assert sum(map(len, batch)) > 300_000
    stamps: list[float] = []
    stop = threading.Event()

    def stamp() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())

    stamper = threading.Thread(target=stamp)
    stamper.start()
    try:
        time.sleep(0.01)
        started = time.perf_counter()
        sessionpipe_native.arrow_buffers(batch)
        ended = time.perf_counter()
    finally:
        stop.set()
        stamper.join()
    quarter = (ended - started) / 4
    assert ended - started > 0.01
    assert any(started + quarter < moment < ended - quarter for moment in stamps)


def read_rows(session: SessionFile, data: bytes) -> list[tuple[Any, ...]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(usage_native.ENV_USAGE_READING, usage_native.PYTHON_READING)
        return processor().process_appended(session, data, 1).rows["usage_rows"]


@pytest.mark.parametrize("path", transcripts(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_line_of_a_real_transcript_gives_the_same_rows(path: Path) -> None:
    data = path.read_bytes()
    assert_same(data)
    assert_same(data, first_line=1000)


# --- mutations ----------------------------------------------------------------------------------

ODD_VALUES: list[Json] = [
    None,
    True,
    False,
    0,
    -0.0,
    -1,
    1,
    1.0,
    1.5,
    -2.5e-3,
    10**15,
    10**15 + 1,
    2**63,
    2**64 + 1,
    10**30,
    "",
    "x",
    "fast",
    "standard",
    "1",
    [],
    [1, "a"],
    {},
    {"a": 1},
    "claude-opus-4-6",
    "2025-01-01T00:00:00Z",
]
#: Written as JSON text: numbers Python's json module does not produce.
RAW_NUMBERS = [b"-0", b"1e3", b"1E2", b"1e400", b"-1e400", b"1e-400", b"0.1e1", b"1" * 25, b"1" * 320, b"123.0"]
TIMESTAMPS = [
    "2025-08-01T10:00:00.000Z",
    "2025-08-01T10:00:00Z",
    "2025-08-01T10:00:00.123456Z",
    "2025-08-01T10:00:00.5Z",
    "2025-08-01T10:00:00.123456789Z",
    "2025-08-01T10:00:00+00:00",
    "2025-08-01T10:00:00+01:30",
    "2025-08-01T10:00:00-05:00",
    "2025-08-01T10:00:00",
    "2025-08-01t10:00:00z",
    "2025-08-01 10:00:00Z",
    "2025-02-30T10:00:00Z",
    "2024-02-29T23:59:59.999Z",
    "2025-02-29T00:00:00Z",
    "2025-08-01T24:00:00Z",
    "2025-08-01T23:59:60Z",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "20250801T100000Z",
    "2025-08-01T10:00",
    "2025-08-01T10",
    "2025-W31-5T10:00:00Z",
    "T",
    "2025-08-01",
    "2025-08-01T10:00:00.000+00:00",
    "2025-08-01T10:00:00.000Zjunk",
    "\uff12\uff10\uff12\uff15-08-01T10:00:00Z",  # fullwidth digits
]
VERSIONS = [
    "1.0.9",
    "2.0.14",
    "1.0",
    "1.2.x",
    "v1.2.3",
    "10.20.3-beta",
    "",
    "\u0661.\u0662.\u0663",
    "1.\u0662.3",
    "1..2",
    " 1.2.3",
]
MODELS = [
    "claude-sonnet-4-20250514",
    "claude-opus-4-6",
    "claude-opus-4-8",
    "anthropic.claude-sonnet-4-5-20250929-v1:0",
    "anthropic/claude-sonnet-4-5",
    "claude-sonnet-4-5-20250929",
    "gpt-4o",
    "",
    "<synthetic>",
]
TOP_FIELDS = [
    "timestamp",
    "sessionId",
    "requestId",
    "version",
    "cwd",
    "gitBranch",
    "agentId",
    "isSidechain",
    "isApiErrorMessage",
    "costUSD",
    "speed",
    "message",
]
MESSAGE_FIELDS = ["id", "model", "usage", "content"]
USAGE_FIELDS = [
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation",
    "server_tool_use",
    "speed",
    "service_tier",
]
BREAKDOWN_FIELDS = ["ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"]


def places(record: dict[str, Json]) -> list[tuple[dict[str, Json], str]]:
    """(object, key) pairs a mutation may set: the fields the rules read, wherever they live."""
    found: list[tuple[dict[str, Json], str]] = [(record, key) for key in TOP_FIELDS]
    message = record.get("message")
    if isinstance(message, dict):
        found += [(message, key) for key in MESSAGE_FIELDS]
        usage = message.get("usage")
        if isinstance(usage, dict):
            found += [(usage, key) for key in USAGE_FIELDS]
            for name, inner in (("cache_creation", BREAKDOWN_FIELDS), ("server_tool_use", ["web_search_requests"])):
                if isinstance(usage.get(name), dict):
                    found += [(usage[name], key) for key in inner]
    return found


def dumps(record: Json, rng: random.Random) -> bytes:
    """Compact JSON as Claude Code writes it, or with spaces (``"usage": {``), or ASCII-escaped."""
    style = rng.random()
    if style < 0.15:
        return json.dumps(record).encode()
    if style < 0.25:
        return json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode()
    # A lone surrogate read from an earlier mutation's escape becomes bytes that are not UTF-8.
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def set_value(record: dict[str, Json], rng: random.Random) -> bytes:
    target, key = rng.choice(places(record))
    pool: list[Json] = ODD_VALUES
    if key == "timestamp":
        pool = TIMESTAMPS + ODD_VALUES
    elif key == "version":
        pool = VERSIONS + ODD_VALUES
    elif key == "model":
        pool = MODELS + ODD_VALUES
    elif key in ("cache_creation", "server_tool_use"):
        pool = [{}, {BREAKDOWN_FIELDS[0]: 5}, {"web_search_requests": 2}, {"web_search_requests": "2"}, *ODD_VALUES]
    elif key.endswith("tokens") or key == "web_search_requests":
        pool = [0, 7, 199_999, 200_000, 200_001, 1_500_000, *ODD_VALUES]
    if rng.random() < 0.2:
        marker = "@@RAW@@"
        target[key] = marker
        return dumps(record, rng).replace(json.dumps(marker).encode(), rng.choice(RAW_NUMBERS))
    target[key] = rng.choice(pool)
    return dumps(record, rng)


def delete_value(record: dict[str, Json], rng: random.Random) -> bytes:
    target, key = rng.choice(places(record))
    target.pop(key, None)
    return dumps(record, rng)


def duplicate_key(record: dict[str, Json], rng: random.Random) -> bytes:
    """A key written twice, the odd value first or last (msgspec keeps the last)."""
    target, key = rng.choice(places(record))
    marker = "@@DUP@@"
    target[marker] = rng.choice([*ODD_VALUES, "2025-01-01T00:00:00Z", 5, {"usage": {}}])
    text = dumps(record, rng)
    spaced = b'": ' if b'": ' in text else b'":'
    if rng.random() < 0.5:
        return text.replace(b'"' + marker.encode() + spaced, b'"' + key.encode() + spaced)
    # Move the duplicate to the front of its object.
    duplicate = json.dumps(target.pop(marker)).encode()
    text = dumps(record, rng)
    opening = b"{" if target is record else None
    if opening is None:
        return text
    return b'{"' + key.encode() + b'":' + duplicate + b"," + text[1:]


def escape_strings(record: dict[str, Json], rng: random.Random) -> bytes:
    """Characters of the line written as ``\\uXXXX``, and sometimes a lone or paired surrogate."""
    text = dumps(record, rng).decode("utf-8", "surrogatepass")
    out: list[str] = []
    inside = False
    for char in text:
        if char == '"' and (not out or out[-1] != "\\"):
            inside = not inside
            out.append(char)
        elif inside and char.isalnum() and rng.random() < 0.05:
            out.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else char)
        else:
            out.append(char)
    if rng.random() < 0.6:
        surrogate = rng.choice(["\\ud800", "\\udc00", "\\ud83d\\ude00", "\\udc00\\ud800", "\\ud800x", "\\uD834\\uDD1E"])
        positions = [i for i, c in enumerate(out) if c == '"']
        if positions:
            at = rng.choice(positions)
            out.insert(at, surrogate)
    return "".join(out).encode("utf-8", "surrogatepass")


#: What a line's unread values (its message content, other keys) may hold: the compiled parser
#: skips them unvisited only when no surrogate escape or deep nesting can be among them.
UNREAD_VALUES = [
    b"[" * 100 + b"]" * 100,
    b"[" * 130 + b"]" * 130,
    b"[" * 2000 + b"]" * 2000,
    b"[" + b",".join([b'{"a":[1]}'] * 80) + b"]",
    b'"\\ud800"',
    b'"\\udc00 x"',
    b'"\\ud83d\\ude00"',
    b'"\\\\udxyz"',
    b"1e400",
    b"-0",
    b"123456789012345678901234567890",
    b'"tab\there"',
]


def unread_value(record: dict[str, Json], rng: random.Random) -> bytes:
    """An odd value under a key nothing reads: in the message (like its content), the line or the usage."""
    marker = "@@UNREAD@@"
    message = record.get("message")
    targets = [record]
    if isinstance(message, dict):
        targets.append(message)
        if isinstance(message.get("usage"), dict):
            targets.append(message["usage"])
    rng.choice(targets)[rng.choice(["content", "extra", "iterations"])] = marker
    return dumps(record, rng).replace(json.dumps(marker).encode(), rng.choice(UNREAD_VALUES))


def mutate_bytes(raw: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:
        return raw[: rng.randrange(len(raw))]
    if kind == 1:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data).replace(b"\n", b" ")
    if kind == 2:
        at = rng.randrange(len(raw))
        return (
            raw[:at] + rng.choice([b"\xff", b"\xed\xa0\x80", b"\xc3", b"\xf4\x90\x80\x80", b"\x00", b"\t"]) + raw[at:]
        )
    if kind == 3:
        return b"\xef\xbb\xbf" + raw
    if kind == 4:
        return raw + b"\r"
    if kind == 5:
        return b"  " + raw + b" \t"
    if kind == 6:
        return raw + b" x"
    if kind == 7:
        return rng.choice([b'["usage"]', b'"usage"', b'{"usage":1}', b"[" + raw + b"]", b'{"message": 5, "usage": 1'])
    return raw.replace(b'"usage":{', b'"usage": {', 1)


def mutants(line: bytes, rng: random.Random) -> Iterator[bytes]:
    record = json.loads(line)
    editors: list[Callable[[dict[str, Json], random.Random], bytes]] = [
        set_value,
        set_value,
        set_value,
        delete_value,
        duplicate_key,
        escape_strings,
        unread_value,
        unread_value,
    ]
    for _ in range(MUTANTS_PER_LINE):
        copy = json.loads(line)
        if rng.random() < 0.75:
            mutated = rng.choice(editors)(copy, rng)
            if rng.random() < 0.3:
                mutated = rng.choice(editors)(json.loads(mutated), rng) if _is_json(mutated) else mutated
        else:
            mutated = mutate_bytes(dumps(copy, rng), rng)
        yield mutated
    yield dumps(record, rng)


def _is_json(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return False


def test_fuzzed_real_usage_lines_give_the_same_rows_and_issues(monkeypatch: pytest.MonkeyPatch) -> None:
    handed_back: list[bytes] = []  # lines the compiled parser left to the Python reading

    def counted(line_no: int, raw: bytes) -> object:
        handed_back.append(raw)
        return usage_parse.read_line_outcome(line_no, raw)

    monkeypatch.setattr(usage_package, "read_line_outcome", counted)
    rng = random.Random(SEED)
    lines = usage_lines()
    assert len(lines) > 400
    cases = 0
    for line in lines:
        batch = list(mutants(line, rng))
        for mutated in batch:
            assert_same(mutated, first_line=rng.choice([1, 2, 17, 10**6]))
            cases += 1
        # Several mutants in one blob: line numbers, blank lines, a last line without its newline.
        joined = b"\n".join(rng.choice([b, b"", b"{}", b'{"type":"user"}']) for b in batch)
        assert_same(joined + rng.choice([b"", b"\n", b"\r\n"]), first_line=rng.randint(1, 50))
        cases += 1
    assert cases > 5000
    # The compiled parser decides the odd lines itself, except those serde_json refuses (nearly all
    # invalid JSON, which the reference names) and numbers only msgspec tells apart (-0, 1e400).
    valid = [raw for raw in handed_back if usage_parse.read_line_outcome(1, raw) != "invalid_json"]
    assert len(valid) < 2 * cases / 10  # each case is read twice: into tuples and into columns


def test_lines_over_the_length_limit_are_counted_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(line_limits, "MAX_LINE_BYTES", 600)
    rng = random.Random(SEED)
    lines = usage_lines()
    for _ in range(200):
        blob = b"\n".join(rng.sample(lines, 5))
        assert_same(blob, first_line=rng.randint(1, 9))


def test_a_missing_compiled_module_falls_back_to_the_python_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delenv(usage_native.ENV_USAGE_READING, raising=False)
    monkeypatch.setitem(sys.modules, "sessionpipe_native", None)  # import fails
    native.forget_import()
    try:
        assert usage_native.compiled_reading() is None
        data = transcripts()[0].read_bytes()
        output = UsageProcessor().process_appended(SESSION, data, 1)
        assert (
            output.rows["usage_rows"] == read(UsageProcessor(), data, 1, usage_native.PYTHON_READING).rows["usage_rows"]
        )
    finally:
        native.forget_import()
