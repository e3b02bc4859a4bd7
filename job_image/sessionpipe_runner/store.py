"""The DuckDB store: opening the file offline, migrations, bulk inserts, and the runner's own tables.

The runner's tables:

- ``schema_migrations``: which migration of which owner (``runner`` or a processor) was applied.
- ``session_processor_state``: one row per (processor, session file): what was seen (size, mtime,
  hash of the complete lines), the processor version, items, attempts, last error and status, and
  ``vanished_at``: when a run first missed the file (``NULL`` while it is on the volume).
- ``processor_runs``: one row per run with its JSON summary; a run killed before it could record
  its end stays ``running`` until the next writer marks it ``abandoned``.
- ``writer_epochs``: one row per lease acquisition, the fence that stops a deposed writer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import duckdb

from sessionpipe_runner.processors.base import Migration

if TYPE_CHECKING:
    import pyarrow as pa

    from sessionpipe_runner.processors.base import Processor

RUNNER_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_runner_tables",
        """
        CREATE TABLE IF NOT EXISTS session_processor_state (
            processor          VARCHAR NOT NULL,
            session_file       VARCHAR NOT NULL,
            user_name          VARCHAR NOT NULL,
            size               BIGINT NOT NULL,
            mtime_ns           BIGINT NOT NULL,
            content_hash       VARCHAR,
            processor_version  VARCHAR NOT NULL,
            items              BIGINT NOT NULL DEFAULT 0,
            attempts           INTEGER NOT NULL DEFAULT 0,
            last_error         VARCHAR,
            status             VARCHAR NOT NULL CHECK (status IN ('done', 'failed', 'quarantined')),
            processed_at       TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (processor, session_file)
        );
        CREATE TABLE IF NOT EXISTS processor_runs (
            run_id       VARCHAR PRIMARY KEY,
            processor    VARCHAR NOT NULL,
            started_at   TIMESTAMPTZ NOT NULL,
            finished_at  TIMESTAMPTZ,
            outcome      VARCHAR NOT NULL,
            exit_code    INTEGER,
            writer_epoch BIGINT,
            summary      JSON
        );
        CREATE TABLE IF NOT EXISTS writer_epochs (
            epoch        BIGINT PRIMARY KEY,
            holder       VARCHAR NOT NULL,
            lease        VARCHAR NOT NULL,
            processor    VARCHAR NOT NULL,
            run_id       VARCHAR NOT NULL,
            acquired_at  TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    # A vanished file keeps its state and rows (Claude Code deletes old transcripts; their history
    # is worth keeping) but is marked, so readers can prefer live files. A column, not a status:
    # DuckDB cannot alter the status CHECK constraint, and a vanished file's status stays true.
    Migration(
        "0002_vanished_at",
        "ALTER TABLE session_processor_state ADD COLUMN IF NOT EXISTS vanished_at TIMESTAMPTZ;",
    ),
)

#: ``processor_runs.outcome`` of a run that died without recording its end (set by the next writer).
RUN_ABANDONED = "abandoned"


class StoreError(RuntimeError):
    """The database file cannot be used (corrupt, locked by another process, unwritable…)."""


class DatabaseLocked(StoreError):
    """Another process has the database file open for writing (DuckDB's own file lock)."""


def connect(path: Path, *, read_only: bool = False, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with extension auto-install and auto-load off: job pods are offline.

    ``memory_limit`` (DuckDB's setting, such as ``"256MB"``) caps what DuckDB keeps in memory; it
    spills to a temporary directory beside the database beyond that.
    """
    config: dict[str, str | bool | int | float | list[str]] = {
        "autoinstall_known_extensions": "false",
        "autoload_known_extensions": "false",
    }
    if memory_limit is not None:
        config["memory_limit"] = memory_limit
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return duckdb.connect(str(path), read_only=read_only, config=config)
    except duckdb.IOException as error:
        if "lock" in str(error).lower():
            raise DatabaseLocked(f"database {path} is open in another process: {error}") from error
        raise StoreError(f"cannot open database {path}: {error}") from error
    except duckdb.Error as error:
        raise StoreError(f"cannot open database {path}: {error}") from error


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run a block in one transaction; roll back if it raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _ensure_migrations_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            owner       VARCHAR NOT NULL,
            id          VARCHAR NOT NULL,
            applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (owner, id)
        )
        """
    )


def apply_migrations(con: duckdb.DuckDBPyConnection, owner: str, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations of ``owner`` not yet recorded, each in its own transaction.

    Returns the ids applied now.
    """
    _ensure_migrations_table(con)
    done = {row[0] for row in con.execute("SELECT id FROM schema_migrations WHERE owner = ?", [owner]).fetchall()}
    applied = []
    for migration in sorted(migrations, key=lambda m: m.id):
        if migration.id in done:
            continue
        with transaction(con):
            con.execute(migration.sql)
            con.execute("INSERT INTO schema_migrations (owner, id) VALUES (?, ?)", [owner, migration.id])
        applied.append(migration.id)
    return applied


def migrate(con: duckdb.DuckDBPyConnection, processor: Processor | None = None) -> None:
    """Bring the runner's tables, and a processor's, up to date."""
    apply_migrations(con, "runner", RUNNER_MIGRATIONS)
    if processor is not None:
        apply_migrations(con, f"processor:{processor.name}", processor.migrations())


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    """(name, type) of a table's columns in order."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
        "AND table_schema = current_schema() ORDER BY ordinal_position",
        [table],
    ).fetchall()
    if not rows:
        raise StoreError(f"no table named {table!r}")
    return [(str(name), str(kind)) for name, kind in rows]


def column_names(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """A table's column names in order (a result description: several times cheaper than the catalog)."""
    try:
        description = con.execute(f"SELECT * FROM {table} LIMIT 0").description
    except duckdb.CatalogException:
        raise StoreError(f"no table named {table!r}") from None
    return [str(column[0]) for column in description or ()]


#: Up to this many rows go in as one parameterised statement; more go through Arrow. (An
#: incremental run writes a handful of rows and so never pays for importing pyarrow.)
SMALL_INSERT_ROWS = 64


def insert_rows(
    con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[tuple[Any, ...]], *, replace: bool = False
) -> None:
    """Insert tuples (in the table's column order) in one bulk statement.

    DuckDB's ``executemany`` costs a statement per row; a few rows go in as one ``VALUES`` list,
    more as one Arrow table, inserted as a single scan. With ``replace``, rows whose primary key
    exists replace the old ones.
    """
    if not rows:
        return
    names = column_names(con, table)
    width = len(names)
    if any(len(row) != width for row in rows):
        bad = next(row for row in rows if len(row) != width)
        raise ValueError(f"{table} has {width} columns, a row has {len(bad)}: {bad!r}")
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    if len(rows) <= SMALL_INSERT_ROWS:
        placeholders = "(" + ", ".join("?" * width) + ")"
        values = ", ".join([placeholders] * len(rows))
        con.execute(f"{verb} INTO {table} VALUES {values}", [value for row in rows for value in row])
        return
    import pyarrow as pa

    columns = list(zip(*rows, strict=True))
    _insert_table(
        con, verb, table, pa.table({name: pa.array(column) for name, column in zip(names, columns, strict=True)})
    )


def _insert_table(con: duckdb.DuckDBPyConnection, verb: str, table: str, arrow: pa.Table) -> None:
    con.register("_sessionpipe_insert", arrow)
    try:
        con.execute(f"{verb} INTO {table} SELECT * FROM _sessionpipe_insert")
    finally:
        con.unregister("_sessionpipe_insert")


def insert_arrow(con: duckdb.DuckDBPyConnection, table: str, parts: Sequence[pa.Table]) -> None:
    """Insert Arrow tables holding ``table``'s columns (from worker processes) in one statement."""
    import pyarrow as pa

    parts = [part for part in parts if part.num_rows]
    if not parts:
        return
    # One contiguous table: DuckDB scans a table of many small chunks (a slice per session) slowly.
    _insert_table(con, "INSERT", table, pa.concat_tables(parts, promote_options="default").combine_chunks())


class StateRow(NamedTuple):
    """What the store remembers of one session file for one processor."""

    session_file: str
    size: int
    mtime_ns: int
    content_hash: str | None
    processor_version: str
    attempts: int
    status: str


_make_state_row = partial(tuple.__new__, StateRow)  # StateRow(*row) without a Python-level call


#: Files' (key, size, mtime_ns) as a relation, from the parameters :func:`_file_stats` makes.
_FILE_STATS = "(SELECT unnest($keys) AS session_file, unnest($sizes) AS size, unnest($mtimes) AS mtime_ns)"


def _file_stats(files: Sequence[tuple[str, int, int]]) -> dict[str, list[Any]]:
    keys, sizes, mtimes = (list(column) for column in zip(*files, strict=True))
    return {"keys": keys, "sizes": sizes, "mtimes": mtimes}


#: The rule by which :func:`~sessionpipe_runner.scan.decide` calls a file unchanged, in SQL.
_UNSETTLED_STATE = f"""
SELECT scanned.session_file, state.size, state.mtime_ns, state.content_hash, state.processor_version,
       state.attempts, state.status
FROM {_FILE_STATS} AS scanned
LEFT JOIN session_processor_state AS state
       ON state.processor = $processor AND state.session_file = scanned.session_file
WHERE state.session_file IS NULL
   OR NOT (state.processor_version = $version
           AND state.status NOT IN ('failed', 'quarantined')
           AND state.size = scanned.size
           AND state.mtime_ns = scanned.mtime_ns)
"""


def unsettled_state(
    con: duckdb.DuckDBPyConnection, processor: str, version: str, files: Sequence[tuple[str, int, int]]
) -> dict[str, StateRow | None]:
    """The state of each scanned file (key, size, mtime_ns) that is not plainly unchanged; ``None`` if new.

    A file is left out when its state row is for ``version``, neither failed nor quarantined, with
    the scanned size and mtime: what :func:`~sessionpipe_runner.scan.decide` calls unchanged. The
    database does that comparison in one join, so a re-run over 100,000 unchanged files builds no
    Python object per file (``tests/unit/test_scan_plan.py`` holds the two rules together).
    """
    if not files:
        return {}
    rows = con.execute(_UNSETTLED_STATE, {**_file_stats(files), "processor": processor, "version": version}).fetchall()
    return {row[0]: None if row[6] is None else _make_state_row(row) for row in rows}


STATE_TABLE = "session_processor_state"


def upsert_state(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write state rows (the table's column order), replacing earlier rows of the same sessions."""
    insert_rows(con, STATE_TABLE, rows, replace=True)


def update_seen(con: duckdb.DuckDBPyConnection, processor: str, seen: Sequence[tuple[str, int, int]]) -> None:
    """Record a new size and mtime for files whose content proved unchanged: (key, size, mtime_ns)."""
    if not seen:
        return
    con.execute(
        f"UPDATE {STATE_TABLE} AS s SET size = u.size, mtime_ns = u.mtime_ns "
        f"FROM {_FILE_STATS} AS u WHERE s.processor = $processor AND s.session_file = u.session_file",
        {**_file_stats(seen), "processor": processor},
    )


def mark_vanished(
    con: duckdb.DuckDBPyConnection, processor: str, user: str | None, keys: Sequence[str], now: datetime
) -> tuple[int, int]:
    """Mark state rows of files the scan did not find as vanished, and clear the mark of those it found.

    ``keys`` are the files the scan found; with ``user``, the scan covered only that user's files, so
    only their rows can vanish. Returns (how many vanished now, how many reappeared). One statement:
    turning 100,000 keys into a parameter is most of its cost, so they are passed once.
    """
    changed = con.execute(
        f"UPDATE {STATE_TABLE} SET vanished_at = CASE WHEN vanished_at IS NULL THEN $now END "
        "WHERE processor = $processor "
        "AND (vanished_at IS NULL) = (session_file NOT IN (SELECT unnest($keys::VARCHAR[]))) "
        "AND (vanished_at IS NOT NULL OR $user::VARCHAR IS NULL OR user_name = $user) "
        "RETURNING vanished_at IS NOT NULL",
        {"keys": list(keys), "processor": processor, "user": user, "now": now},
    ).fetchall()
    vanished = sum(1 for (now_vanished,) in changed if now_vanished)
    return vanished, len(changed) - vanished


def mark_abandoned(con: duckdb.DuckDBPyConnection, before_epoch: int) -> int:
    """Mark runs of earlier writers still recorded as ``running`` as abandoned; returns how many.

    Only the lease holder calls this: with the lease ours, no earlier writer is still running.
    """
    row = con.execute(
        "UPDATE processor_runs SET outcome = ? WHERE outcome = 'running' AND writer_epoch < ?",
        [RUN_ABANDONED, before_epoch],
    ).fetchone()
    return int(row[0]) if row else 0


def has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    """Whether ``table`` has ``column`` (a database a newer build has not yet migrated may lack it)."""
    return column in column_names(con, table)
