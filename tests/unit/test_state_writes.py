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
