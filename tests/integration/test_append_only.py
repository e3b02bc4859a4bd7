"""A file that only grew is processed from the end of its committed lines, with the rows a fresh run gives.

Claude Code only appends to a transcript. The usage processor is given just the appended lines
when the lines its rows were made from are still there, unchanged (their hash is recorded); a file
whose committed lines were rewritten is read whole. Either way the tables end as a run over the
same files into a new database leaves them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.runner_support import run_summary, sessionpipe
from tests.support.db import rows

USAGE_ROWS = "SELECT * FROM usage_rows ORDER BY ALL"
STATE = (
    "SELECT session_file, size, mtime_ns, content_hash, items, status, content_length, line_count "
    "FROM session_processor_state ORDER BY ALL"
)
TOTALS = "SELECT count(*), sum(input_tokens + output_tokens + cache_read_tokens) FROM usage_messages"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Realistic transcripts from the generator (a small volume: two users)."""
    out = tmp_path_factory.mktemp("append") / "sessions"
    made = sessionpipe("demo", "--out", out, "--users", "2", "--megabytes", "1", "--seed", "5")
    assert made.returncode == 0, made.stderr
    return out


def run_usage(sessions: Path, db: Path) -> dict[str, Any]:
    return run_summary(sessionpipe("run", "--processor", "usage", "--sessions", sessions, "--db", db, "--json"))


def usage_files(sessions: Path) -> list[Path]:
    """Session files with usage lines, largest first."""
    found = [path for path in sessions.rglob("*.jsonl") if b'"usage"' in path.read_bytes()]
    return sorted(found, key=lambda path: (-path.stat().st_size, str(path)))


def new_call(line: bytes, number: int) -> bytes:
    """A usage line as Claude Code would append it: another API call (new message and request ids)."""
    record = json.loads(line)
    record["message"]["id"] = f"msg_appended_{number}"
    record["requestId"] = f"req_appended_{number}"
    record["message"]["usage"]["input_tokens"] = 1000 + number
    return json.dumps(record).encode() + b"\n"


def usage_line_of(path: Path) -> bytes:
    return next(line for line in path.read_bytes().splitlines() if b'"usage"' in line)


def same_as_a_fresh_run(sessions: Path, db: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.duckdb"
    assert run_usage(sessions, fresh)["errors"] == 0
    for query in (USAGE_ROWS, STATE, TOTALS):
        assert rows(db, query) == rows(fresh, query), query


def test_an_appended_call_is_parsed_alone_and_the_tables_equal_a_fresh_run(demo: Path, tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    for path in demo.rglob("*.jsonl"):  # the generator's files, in a copy this test may append to
        target = sessions / path.relative_to(demo)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    db = tmp_path / "db.duckdb"
    first = run_usage(sessions, db)
    grown, other = usage_files(sessions)[:2]
    with grown.open("ab") as handle:
        handle.write(new_call(usage_line_of(grown), 1))
        handle.write(b'{"type": "user", "message": {"role": "user", "content": "go on"}}\n')
        handle.write(new_call(usage_line_of(grown), 2))
    # The other file's first usage line is rewritten (same length), and a call appended after it.
    committed = other.read_bytes()
    line = usage_line_of(other)
    rewritten = re.sub(
        rb'"output_tokens": ?(\d)', lambda m: m.group(0)[:-1] + (b"7" if m.group(1) != b"7" else b"8"), line, count=1
    )
    assert rewritten != line and len(rewritten) == len(line)
    other.write_bytes(committed.replace(line, rewritten, 1) + new_call(line, 3))

    second = run_usage(sessions, db)

    assert (second["processed"], second["appended"], second["errors"]) == (2, 1, 0)
    assert (
        second["items"]
        == 2 + (rows(db, f"SELECT count(*) FROM usage_rows WHERE session_file LIKE '%{other.name}'")[0][0])
    )
    assert first["items"] + 3 == rows(db, "SELECT sum(items) FROM session_processor_state")[0][0]
    same_as_a_fresh_run(sessions, db, tmp_path)
