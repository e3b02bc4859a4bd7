"""How the state table is written: replacing one file's row must not rewrite the table's columns.

At the next checkpoint DuckDB rewrites each column of a row group that had a row updated, whole;
a volume's state is one row group up to 122,880 files, so an incremental run that updated one row
in place paid for recompressing the state of every file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from sessionpipe_runner import store, tables
from sessionpipe_runner.store.state import STATE_TABLE, upsert_state

FILES = 5_000


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    connection = store.connect(tmp_path / "state.duckdb")
    store.migrate(connection)
    return connection


def state_row(con: duckdb.DuckDBPyConnection, index: int, size: int, content_hash: str) -> tuple[object, ...]:
    """One file's state row, in the table's column order."""
    values = {
        "processor": "usage",
        "session_file": f"user/-project/{index:08d}.jsonl",
        "user_name": "user",
        "size": size,
        "mtime_ns": 1_000 + index,
        "content_hash": content_hash,
        "processor_version": "1",
        "items": 3,
        "attempts": 1,
        "status": "done",
        "processed_at": datetime(2026, 11, 1, tzinfo=UTC),
        "content_length": size,
        "line_count": 5,
    }
    return tuple(values.get(name) for name in tables.column_names(con, STATE_TABLE))


def segments(con: duckdb.DuckDBPyConnection, row_group: int) -> dict[str, tuple[int, int]]:
    """Where each column of one row group of the state table lies in the file: (block, offset)."""
    rows = con.execute(
        "SELECT column_name, block_id, block_offset FROM pragma_storage_info(?) "
        "WHERE row_group_id = ? AND segment_type <> 'VALIDITY'",
        [STATE_TABLE, row_group],
    ).fetchall()
    return {name: (block, offset) for name, block, offset in rows}


def test_replacing_one_files_state_leaves_the_other_files_columns_where_they_are(
    con: duckdb.DuckDBPyConnection,
) -> None:
    upsert_state(con, [state_row(con, index, 10, f"{index:064x}") for index in range(FILES)])
    con.execute("CHECKPOINT")
    before = segments(con, 0)
    assert {"session_file", "content_hash", "size", "status"} <= set(before)

    con.execute("BEGIN")
    upsert_state(con, [state_row(con, 17, 20, "f" * 64)])
    con.execute("COMMIT")
    con.execute("CHECKPOINT")

    assert segments(con, 0) == before
    stored = con.execute(
        f"SELECT size, content_hash, count(*) OVER () FROM {STATE_TABLE} WHERE session_file = ?",
        ["user/-project/00000017.jsonl"],
    ).fetchall()
    assert stored == [(20, "f" * 64, 1)]
    assert con.execute(f"SELECT count(*) FROM {STATE_TABLE}").fetchone() == (FILES,)


def test_replacing_rows_twice_in_one_transaction_keeps_one_row_each(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("BEGIN")
    upsert_state(con, [state_row(con, index, 10, "a" * 64) for index in range(3)])
    upsert_state(con, [state_row(con, 1, 11, "b" * 64), state_row(con, 2, 12, "c" * 64)])
    con.execute("COMMIT")
    upsert_state(con, [state_row(con, 2, 13, "d" * 64)])
    assert con.execute(f"SELECT session_file, size FROM {STATE_TABLE} ORDER BY session_file").fetchall() == [
        ("user/-project/00000000.jsonl", 10),
        ("user/-project/00000001.jsonl", 11),
        ("user/-project/00000002.jsonl", 13),
    ]


LINE = (
    '{"type":"assistant","timestamp":"2026-01-0%dT00:00:00Z","requestId":"r%d","message":{"id":"m%d",'
    '"model":"claude-sonnet-4-20250514","usage":{"input_tokens":%d,"output_tokens":1}}}\n'
)


def test_a_first_run_deletes_no_state_and_a_later_run_replaces_what_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A processor's first run writes each file's state row once: there is none to delete (the
    delete scanned the table the run was growing). A later run replaces the rows of what changed;
    the table's primary key would refuse a second row for a file."""
    from sessionpipe_contract import EXIT_OK
    from sessionpipe_runner.lease.file import FileLease
    from sessionpipe_runner.processors.usage import UsageProcessor
    from sessionpipe_runner.runner import RunSettings, run
    from sessionpipe_runner.store import state

    sessions, db = tmp_path / "sessions", tmp_path / "db.duckdb"
    for number in range(1, 7):
        path = sessions / ("alice", "bob")[number % 2] / "-app" / f"s{number}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(LINE % (number, number, number, number))
    deletes: list[int] = []
    real_delete = state._delete_state
    monkeypatch.setattr(state, "_delete_state", lambda con, rows: deletes.append(len(rows)) or real_delete(con, rows))
    settings = RunSettings(processor="usage", sessions=sessions, database=db, lease_wait_seconds=5, workers=1)

    def usage_run() -> list[tuple[object, ...]]:
        summary = run(settings, UsageProcessor(), FileLease(db, "usage"))
        assert summary.exit_code == EXIT_OK, summary.message
        with duckdb.connect(str(db), read_only=True) as con:
            return con.execute("SELECT session_file, size, items FROM session_processor_state ORDER BY 1").fetchall()

    first = usage_run()
    assert deletes == [] and [row[2] for row in first] == [1] * 6
    with (sessions / "alice" / "-app" / "s2.jsonl").open("a") as grown:
        grown.write(LINE % (9, 9, 9, 9))
    (sessions / "bob" / "-app" / "s7.jsonl").write_text(LINE % (7, 7, 7, 7))  # new beside the grown one
    second = usage_run()
    assert sum(deletes) >= 1
    assert len(second) == 7 and dict((key, items) for key, _, items in second)["alice/-app/s2.jsonl"] == 2
