"""Change detection: the database's shortcut for unchanged files agrees with :func:`scan.decide`."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from sessionpipe_runner import store
from sessionpipe_runner.processors.base import SessionFile
from sessionpipe_runner.scan import Decision, decide, plan
from sessionpipe_runner.store import StateRow

VERSION = "2"


def session_file(key: str, size: int, mtime_ns: int) -> SessionFile:
    return SessionFile(key, f"/sessions/{key}", "alice", "-app", key, size, mtime_ns)


def stored(con: duckdb.DuckDBPyConnection, processor: str, state: StateRow) -> None:
    con.execute(
        "INSERT INTO session_processor_state (processor, session_file, user_name, size, mtime_ns, content_hash, "
        "processor_version, attempts, status, processed_at) VALUES (?, ?, 'alice', ?, ?, ?, ?, ?, ?, ?)",
        [processor, *state[:7], datetime(2026, 1, 1, tzinfo=UTC)],  # the columns the rule reads
    )


def test_the_database_leaves_out_exactly_the_files_decide_calls_unchanged(tmp_path: Path) -> None:
    con = store.connect(tmp_path / "db.duckdb")
    store.migrate(con)
    files: list[SessionFile] = []
    states: dict[str, StateRow] = {}
    combinations = itertools.product(["done", "failed", "quarantined"], [VERSION, "1"], [100, 101], [7, 8])
    for number, (status, version, size, mtime_ns) in enumerate(combinations):
        key = f"alice/-app/s{number:02}.jsonl"
        files.append(session_file(key, 100, 7))
        states[key] = StateRow(key, size, mtime_ns, "hash", version, 2, status)
        stored(con, "usage", states[key])
        # The same file, unchanged for another processor, must not count for this one.
        stored(con, "other", StateRow(key, 100, 7, "hash", VERSION, 0, "done"))
    files.append(session_file("alice/-app/new.jsonl", 5, 5))  # never stored
    stored(con, "usage", StateRow("alice/-app/gone.jsonl", 1, 1, None, VERSION, 0, "done"))  # not scanned

    store.record_scan(con, [(f.key, f.size, f.mtime_ns) for f in files])
    unsettled = store.unsettled_state(con, "usage", VERSION)

    expected = [(file, decide(file, states.get(file.key), VERSION)) for file in sorted(files, key=lambda f: f.key)]
    assert list(plan(files, unsettled, VERSION)) == expected
    unchanged = {file.key for file, decision in expected if decision is Decision.UNCHANGED}
    assert unchanged, "the combinations include unchanged files"
    assert set(unsettled) == {file.key for file in files} - unchanged  # the shortcut is taken
    assert unsettled["alice/-app/new.jsonl"] is None
    assert all(unsettled[key] == states[key] for key in unsettled if key in states)


def test_no_scanned_files_need_no_query(tmp_path: Path) -> None:
    con = store.connect(tmp_path / "db.duckdb")
    store.migrate(con)
    store.record_scan(con, [])
    assert store.unsettled_state(con, "usage", VERSION) == {}
