"""The DuckDB store: opening the file offline, the runner's own tables and their migrations.

The runner's tables, each with the module that reads and writes it:

- ``schema_migrations``: which migration of which owner (``runner`` or a processor) was applied
  (:mod:`sessionpipe_runner.migrations`).
- ``session_processor_state``: one row per (processor, session file): what was seen (size, mtime,
  hash of the complete lines), the processor version, items, attempts, last error and status,
  ``vanished_at``: when a run first missed the file (``NULL`` while it is on the volume), and
  ``content_length`` / ``line_count``: where the complete lines committed end, so that a file that
  only grew is processed from there (:mod:`.state`).
- ``processor_runs``: one row per run with its JSON summary; a run killed before it could record
  its end stays ``running`` until the next writer marks it ``abandoned`` (:mod:`.runs`).
- ``writer_epochs``: one row per lease acquisition, the fence that stops a deposed writer
  (:mod:`.runs`, used by :mod:`sessionpipe_runner.fencing`).

What the commands ask of these tables (status, reset, forget) is in :mod:`.queries`. Processors
never import this package: they use :mod:`sessionpipe_runner.tables` and
:mod:`sessionpipe_runner.migrations`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from sessionpipe_runner import migrations
from sessionpipe_runner.migrations import Migration
from sessionpipe_runner.store.state import (
    STATE_TABLE,
    ScanComparison,
    StateRow,
    compare_scan,
    mark_vanished,
    update_seen,
    upsert_state,
)
from sessionpipe_runner.tables import StoreError, column_names, has_column, table_columns, transaction

if TYPE_CHECKING:
    import duckdb

    from sessionpipe_runner.processors.base import Processor

__all__ = [
    "RUNNER_MIGRATIONS",
    "STATE_TABLE",
    "DatabaseLocked",
    "ScanComparison",
    "StateRow",
    "StoreError",
    "column_names",
    "compare_scan",
    "connect",
    "has_column",
    "mark_vanished",
    "migrate",
    "table_columns",
    "transaction",
    "update_seen",
    "upsert_state",
]

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
    # Where the committed lines end (bytes) and how many they are: a file that only grew since is
    # processed from there (Claude Code only appends). NULL (rows of an earlier build, a file
    # read in pieces) means "read it whole".
    Migration(
        "0003_committed_length",
        "ALTER TABLE session_processor_state ADD COLUMN IF NOT EXISTS content_length BIGINT;"
        "ALTER TABLE session_processor_state ADD COLUMN IF NOT EXISTS line_count BIGINT;",
    ),
)


class DatabaseLocked(StoreError):
    """Another process has the database file open for writing (DuckDB's own file lock)."""


#: Rows per row group of the tables a writer appends to (DuckDB's own default is 122,880). DuckDB
#: writes an append of at least a row group compressed straight into the database file and logs
#: only where it is; a smaller one goes through its log and is compressed again at the checkpoint.
#: With groups of this size a cold run's batches take that path from 16k rows on (at 220 MB every
#: row went through the log, whole), commit while the workers read instead of holding ~140k rows,
#: and its final checkpoint has little left: 0.17 s -> 0.03 s at 220 MB, the cold run 15-25 %
#: faster at 220 MB and 1 GB (bench/README.md, "Session 10"). The file is ~25 % larger. The size
#: is not stored in the file but given by each writer (:func:`connect`): a writer with DuckDB's
#: default would merge the small groups at its checkpoint, once.
ROW_GROUP_ROWS = 16_384
#: The name a writer's connection gives the database file (its default catalog).
CATALOG = "store"


def connect(path: Path, *, read_only: bool = False, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with extension auto-install and auto-load off: job pods are offline.

    ``memory_limit`` (DuckDB's setting, such as ``"256MB"``) caps what DuckDB keeps in memory; it
    spills to ``<path>.tmp`` beyond that. A writer's connection attaches the file with row groups
    of :data:`ROW_GROUP_ROWS` rows (an option of ``ATTACH`` only) and makes it the default catalog,
    :data:`CATALOG`, so statements name tables as they would on the file opened directly.
    """
    # The engine itself, not the ``duckdb`` package: that wrapper (relations, expressions, its
    # version through importlib.metadata) costs a run ~0.2 s of imports and none of it is used
    # here. The connection, its errors and parameterised statements are the engine's; what needs
    # the wrapper (registering an Arrow table) imports it where it is done (:mod:`.tables`).
    # Imported here, not with this module: a run's scan starts before (~15 ms, with the GIL held).
    import _duckdb

    config: dict[str, str | bool | int | float | list[str]] = {
        "autoinstall_known_extensions": "false",
        "autoload_known_extensions": "false",
    }
    if memory_limit is not None:
        config["memory_limit"] = memory_limit
    try:
        if read_only:
            return _open_read_only(path, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = f"{path}.tmp"  # as for a file opened directly (else ./.tmp)
        con = _duckdb.connect(":memory:", config=config)
        try:
            con.execute(f"ATTACH {_sql_text(str(path))} AS {CATALOG} (ROW_GROUP_SIZE {ROW_GROUP_ROWS})")
            con.execute(f"USE {CATALOG}")
        except BaseException:
            con.close()
            raise
        return con
    except _duckdb.ResourceInUseException as error:
        raise DatabaseLocked(f"database {path} is already open for writing in this process: {error}") from error
    except _duckdb.IOException as error:
        if "lock" in str(error).lower():
            raise DatabaseLocked(f"database {path} is open in another process: {error}") from error
        raise StoreError(f"cannot open database {path}: {error}") from error
    except _duckdb.Error as error:
        raise StoreError(f"cannot open database {path}: {error}") from error


#: How many times a read-only open is tried while the log beside the file is of another checkpoint.
READ_ONLY_ATTEMPTS = 5


def _open_read_only(path: Path, config: dict[str, str | bool | int | float | list[str]]) -> duckdb.DuckDBPyConnection:
    """Open ``path`` read-only; again, a little later, if DuckDB refuses the log beside it as one of
    another checkpoint.

    A snapshot's log is published beside it by a later run (:func:`.snapshot.publish_log`): a reader
    that read the file's header before a publish replaced the file, and the log after the next run
    published its own, has a pair of two checkpoints. DuckDB checks the log's checkpoint iteration
    against the file's and refuses the pair; the files as they are now fit.
    """
    import _duckdb

    for attempt in range(1, READ_ONLY_ATTEMPTS + 1):
        try:
            return _duckdb.connect(str(path), read_only=True, config=config)
        except _duckdb.IOException as error:
            if "checkpoint iteration" not in str(error) or attempt == READ_ONLY_ATTEMPTS:
                raise
            time.sleep(0.02 * attempt)
    raise AssertionError("unreachable")


def engine_error() -> type[Exception]:
    """DuckDB's base error (what every failed statement raises), from the engine :func:`connect` imports."""
    import _duckdb

    error: type[Exception] = _duckdb.Error
    return error


def _sql_text(text: str) -> str:
    """``text`` as an SQL string literal (``ATTACH`` takes no parameters)."""
    return "'" + text.replace("'", "''") + "'"


def migrate(con: duckdb.DuckDBPyConnection, processor: Processor | None = None) -> list[str]:
    """Bring the runner's tables, and a processor's, up to date; returns the ids applied now."""
    applied = migrations.apply_migrations(con, "runner", RUNNER_MIGRATIONS)
    if processor is not None:
        applied += migrations.apply_migrations(con, f"processor:{processor.name}", processor.migrations())
    return applied
