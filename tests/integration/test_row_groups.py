"""A cold run commits its batches as whole DuckDB row groups, which DuckDB writes straight into the
database file instead of its log (bench/README.md, "Session 9: cold run")."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import duckdb
import pytest
import sessionpipe_native

from sessionpipe_contract import EXIT_OK
from sessionpipe_demo import generate_corpus
from sessionpipe_runner import batches
from sessionpipe_runner.batches import ROW_GROUP_ROWS, whole_row_groups
from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.processors.base import (
    Migration,
    Output,
    Processor,
    RunContext,
    SessionFile,
    replace_session_rows,
)
from sessionpipe_runner.processors.usage import UsageProcessor
from sessionpipe_runner.runner import RunSettings, run

#: Sessions of many rows (every ninth) among sessions of a few: 2 row groups and a part of one.
SESSIONS = [5000 if index % 9 == 0 else index % 97 + 1 for index in range(520)]


class _Rows(Processor):
    """Writes as many rows as its session file asks for, each with some text to log."""

    name = "rows"
    version = "1"
    tables = ("many_rows",)
    batchable = True
    #: For each batch written: (its rows, the bytes of DuckDB's log before it).
    written: ClassVar[list[tuple[int, int]]] = []

    def migrations(self) -> Sequence[Migration]:
        return (Migration("0001", "CREATE TABLE many_rows (session_file VARCHAR, n BIGINT, note VARCHAR)"),)

    def process(self, session: SessionFile, data: bytes) -> Output:
        count = json.loads(data)["rows"]
        note = f"{session.key} " * 4
        return Output(rows={"many_rows": [(session.key, n, note) for n in range(count)]}, items=count)

    def write(self, con: duckdb.DuckDBPyConnection, batch: Sequence[tuple[SessionFile, Output]]) -> None:
        file = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
        wal = Path(f"{file[0]}.wal")  # type: ignore[index]
        self.written.append((sum(output.row_count() for _, output in batch), wal.stat().st_size if wal.exists() else 0))
        replace_session_rows(con, self.tables, batch)


def _sessions(root: Path, counts: Sequence[int]) -> Path:
    for index, count in enumerate(counts):
        path = root / "user" / "-proj" / f"s{index:04}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rows": count}) + "\n")
    return root


def test_a_cold_run_commits_whole_row_groups_which_bypass_duckdbs_log(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path / "sessions", SESSIONS)
    db = tmp_path / "db.duckdb"
    settings = RunSettings(processor="rows", sessions=sessions, database=db, workers=1, lease_wait_seconds=5)
    _Rows.written = []
    summary = run(settings, _Rows(), FileLease(db, "rows"))
    assert (summary.exit_code, summary.processed, summary.items) == (EXIT_OK, len(SESSIONS), sum(SESSIONS))
    rows = [count for count, _ in _Rows.written]
    assert sum(rows) == sum(SESSIONS)
    # Every batch but the last is whole row groups; the last is what is left of the run's rows.
    assert rows[:-1] and all(count and count % ROW_GROUP_ROWS == 0 for count in rows[:-1]), rows
    assert rows[-1] == sum(SESSIONS) % ROW_GROUP_ROWS
    # DuckDB's evidence: the log holds where those row groups are, not their rows (it would grow
    # by megabytes per batch: 20 bytes of text and more per row).
    wal_before_last = _Rows.written[-1][1]
    assert 0 < wal_before_last < 1024 * 1024, _Rows.written  # (the log is there: it is the one read)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT session_file) FROM many_rows").fetchone() == (
            sum(SESSIONS),
            len(SESSIONS),
        )
        groups = con.execute(
            "SELECT row_group_id, sum(count) FROM pragma_storage_info('many_rows') WHERE column_path = '[0]' "
            "GROUP BY row_group_id ORDER BY row_group_id"
        ).fetchall()
    assert [count for _, count in groups[:-1]] == [ROW_GROUP_ROWS] * (len(groups) - 1)


def test_a_writer_attaches_the_file_with_the_stores_row_groups_and_leaves_older_groups_alone(tmp_path: Path) -> None:
    """The row group size is the writer's, not the file's: each writer's connection gives it.

    A file whose table has DuckDB's default groups (an earlier build's) keeps them at a writer's
    checkpoint; rows appended after come in the store's groups. Spilling goes beside the file.
    """
    from sessionpipe_runner import store

    db = tmp_path / "db.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE t AS SELECT range AS n FROM range(300000)")
        before = con.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('t')").fetchone()
    assert before == (3,)  # 122,880 rows a group
    con = store.connect(db)
    try:
        assert con.execute("SELECT current_setting('temp_directory')").fetchone() == (f"{db}.tmp",)
        con.execute("INSERT INTO t SELECT range FROM range(3 * ?)", [ROW_GROUP_ROWS])
        con.execute("CHECKPOINT")
        groups = con.execute(
            "SELECT row_group_id, sum(count) FROM pragma_storage_info('t') WHERE column_path = '[0]' "
            "GROUP BY row_group_id ORDER BY row_group_id"
        ).fetchall()
        with pytest.raises(store.DatabaseLocked, match="already open for writing in this process"):
            store.connect(db)
    finally:
        con.close()
    assert [count for _, count in groups] == [122_880, 122_880, 300_000 - 2 * 122_880] + [ROW_GROUP_ROWS] * 3


def test_a_run_whose_rows_fill_no_row_group_still_commits_as_it_goes(tmp_path: Path) -> None:
    """Rows that will go through the log anyway are not held to the end: commits overlap the reading."""
    counts = [3] * (batches.BATCH_SESSIONS + 100)
    sessions = _sessions(tmp_path / "sessions", counts)
    db = tmp_path / "db.duckdb"
    settings = RunSettings(processor="rows", sessions=sessions, database=db, workers=1, lease_wait_seconds=5)
    _Rows.written = []
    assert run(settings, _Rows(), FileLease(db, "rows")).exit_code == EXIT_OK
    assert [count for count, _ in _Rows.written] == [3 * batches.BATCH_SESSIONS, 300]


def test_whole_row_groups_picks_sessions_adding_up_exactly() -> None:
    counts = [5000 if index % 9 == 0 else index % 97 + 1 for index in range(2000)] + [0, 0]
    chosen = whole_row_groups(counts)
    assert chosen is not None and chosen == sorted(set(chosen))
    total = sum(counts)
    assert sum(counts[i] for i in chosen) == total - total % ROW_GROUP_ROWS
    assert {len(counts) - 2, len(counts) - 1} <= set(chosen)  # sessions without rows ride along
    assert chosen[:100] == list(range(100))  # earlier sessions first


def test_whole_row_groups_gives_none_when_nothing_adds_up() -> None:
    assert whole_row_groups([1000, 2000]) is None  # less than a row group
    assert whole_row_groups([100_000, 100_000]) is None  # no choice of them is one exactly
    assert whole_row_groups([ROW_GROUP_ROWS - 1, 1, 7]) == [0, 1]


class _Recording:
    """A connection that records the statements run through it."""

    def __init__(self, con: duckdb.DuckDBPyConnection, statements: list[str]) -> None:
        self.con = con
        self.statements = statements

    def execute(self, sql: str, *args: object) -> object:
        self.statements.append(sql)
        return self.con.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.con, name)


class _RecordingUsage(UsageProcessor):
    statements: ClassVar[list[str]] = []

    def write(self, con: duckdb.DuckDBPyConnection, batch: Sequence[tuple[SessionFile, Output]]) -> None:
        super().write(_Recording(con, self.statements), batch)  # type: ignore[arg-type]


def test_a_run_that_starts_with_no_rows_stored_deletes_none_and_later_runs_replace(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    generate_corpus(sessions, users=2, target_bytes=512 * 1024, seed=3)
    db = tmp_path / "db.duckdb"
    settings = RunSettings(processor="usage", sessions=sessions, database=db, workers=1, lease_wait_seconds=5)
    _RecordingUsage.statements = []
    summary = run(settings, _RecordingUsage(), FileLease(db, "usage"))
    assert summary.exit_code == EXIT_OK and summary.items > 100
    assert not [sql for sql in _RecordingUsage.statements if sql.startswith("DELETE")]
    assert [sql for sql in _RecordingUsage.statements if sql.startswith("INSERT")]
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM usage_rows").fetchone() == (summary.items,)
    # A file rewritten since: its rows are replaced, not added to.
    rewritten = sorted(sessions.rglob("*.jsonl"))[0]
    rewritten.write_bytes(rewritten.read_bytes().replace(b'"output_tokens":', b'"output_tokens": ', 1))
    _RecordingUsage.statements = []
    again = run(settings, _RecordingUsage(), FileLease(db, "usage"))
    assert (again.exit_code, again.processed) == (EXIT_OK, 1)
    assert [sql for sql in _RecordingUsage.statements if sql.startswith("DELETE")]
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM usage_rows").fetchone() == (summary.items,)


def test_a_batch_of_columns_is_inserted_in_pieces_as_one_append(tmp_path: Path) -> None:
    """A batch of a whole row group joined into one Arrow table held a second copy of all its rows:
    it goes in as tables of about ``columns.INSERT_ROWS`` rows, in order, in the one transaction."""
    from sessionpipe_runner import store
    from sessionpipe_runner.processors.usage import columns
    from tests.runner_support import CORPUS

    processor = UsageProcessor()
    with duckdb.connect(str(tmp_path / "db.duckdb")) as con:
        store.migrate(con, processor)
        processor.start(RunContext(run_id="r", database=tmp_path / "db.duckdb", config={}, environ={}, connection=con))
        session = SessionFile("u/p/s.jsonl", "/x", "u", "p", "s", 0, 0)
        outputs = [
            processor.columnar_output(sessionpipe_native, session, path.read_bytes(), 1)
            for path in sorted(CORPUS.rglob("*.jsonl"))
        ]
        batch = [(SessionFile(f"u/p/{i}.jsonl", "/x", "u", "p", str(i), 0, 0), o) for i, o in enumerate(outputs * 200)]
        rows = sum(output.row_count() for _, output in batch)
        assert rows > columns.INSERT_ROWS
        statements: list[str] = []
        con.execute("BEGIN")
        processor.write(_Recording(con, statements), batch)  # type: ignore[arg-type]
        con.execute("COMMIT")
        inserts = [sql for sql in statements if sql.startswith("INSERT INTO usage_rows")]
        assert 1 < len(inserts) <= rows // columns.INSERT_ROWS + 1  # at least INSERT_ROWS rows but the last
        assert con.execute("SELECT count(*) FROM usage_rows").fetchone() == (rows,)
