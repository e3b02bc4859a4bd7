"""Table writes and table shapes: what the store and processors alike do to DuckDB tables.

Nothing here knows the runner's own tables; processors import this module (and
:mod:`sessionpipe_runner.migrations`), never the store's internals. DuckDB is imported only when
used: importing a processor (in a worker process, say) stays cheap.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa


class StoreError(RuntimeError):
    """The database file cannot be used (corrupt, locked by another process, unwritable…)."""


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


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    """(name, type) of a table's columns in order.

    (``pragma_table_info``, not ``information_schema.columns``: a connection's first query of that
    view builds it over the whole catalog, ~19 ms of a cold run before its first batch.)
    """
    import _duckdb

    try:
        rows = con.execute("SELECT name, type FROM pragma_table_info(?)", [table]).fetchall()
    except _duckdb.CatalogException:
        raise StoreError(f"no table named {table!r}") from None
    return [(str(name), str(kind)) for name, kind in rows]


def column_names(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """A table's column names in order (a result description: several times cheaper than the catalog)."""
    import _duckdb

    try:
        description = con.execute(f"SELECT * FROM {table} LIMIT 0").description
    except _duckdb.CatalogException:
        raise StoreError(f"no table named {table!r}") from None
    return [str(column[0]) for column in description or ()]


def has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    """Whether ``table`` has ``column`` (a database a newer build has not yet migrated may lack it)."""
    return column in column_names(con, table)


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


def load_arrow_insert() -> None:
    """Import what an Arrow insert needs (pyarrow, and the engine's Arrow scan), ahead of the first."""
    arrow_scans()
    import pyarrow  # noqa: F401


@functools.cache
def arrow_scans() -> None:
    """Make the DuckDB engine able to scan Arrow tables, as importing the ``duckdb`` package does
    (``_duckdb._set_arrow_sources(duckdb._sources)``; the engine alone refuses them).

    Only ``duckdb._sources`` is loaded, without the package's ``__init__``: alone it costs ~12 ms,
    the whole package ~55 ms (its relational API, its version through importlib.metadata), with the
    GIL held in the writer's thread while the workers parse. A later ``import duckdb`` runs the
    package as usual, over the same ``duckdb._sources``. If the package is laid out otherwise, it
    is imported whole.

    While ``duckdb._sources`` loads, the package stands in ``sys.modules``, not run: a thread
    importing ``duckdb`` then would find it empty. The runner calls this before it starts worker
    threads (a processor's code runs there), and only the runner's thread writes.
    """
    if "duckdb" in sys.modules:
        return  # imported whole: it set the sources up
    import importlib.util

    import _duckdb

    try:
        spec = importlib.util.find_spec("duckdb")
        if spec is None:
            raise ImportError("no duckdb package")
        # A submodule is found through its parent's __path__: the parent, not run, stands in.
        sys.modules["duckdb"] = importlib.util.module_from_spec(spec)
        try:
            sources = importlib.import_module("duckdb._sources")
        finally:
            del sys.modules["duckdb"]
        _duckdb._set_arrow_sources(sources)
    except Exception:
        import duckdb  # noqa: F401


def _insert_table(con: duckdb.DuckDBPyConnection, verb: str, table: str, arrow: pa.Table) -> None:
    arrow_scans()
    con.register("_sessionpipe_insert", arrow)
    try:
        con.execute(f"{verb} INTO {table} SELECT * FROM _sessionpipe_insert")
    finally:
        con.unregister("_sessionpipe_insert")


#: Up to this many Arrow chunks go to DuckDB as they are; more are copied into one first (DuckDB
#: scans a table of a thousand small chunks, a slice per session, four times slower).
SCANNED_CHUNKS = 64


def joined_slices(parts: Sequence[tuple[pa.Table, tuple[pa.Table, int] | None]]) -> list[pa.Table]:
    """Arrow tables, each with where it lies in a larger table if it is a slice of one, as few tables:
    consecutive slices of one table become one slice of it (a view, nothing copied).
    """
    joined: list[pa.Table] = []
    run: list[Any] | None = None  # [the table sliced, first row, rows]
    for part, origin in parts:
        if run is not None and origin is not None and run[0] is origin[0] and run[1] + run[2] == origin[1]:
            run[2] += part.num_rows
            continue
        if run is not None:
            joined.append(run[0].slice(run[1], run[2]))
            run = None
        if origin is None:
            joined.append(part)
        else:
            run = [origin[0], origin[1], part.num_rows]
    if run is not None:
        joined.append(run[0].slice(run[1], run[2]))
    return joined


def insert_arrow(con: duckdb.DuckDBPyConnection, table: str, parts: Sequence[pa.Table]) -> None:
    """Insert Arrow tables holding ``table``'s columns (from workers) in one statement."""
    parts = [part for part in parts if part.num_rows]
    if not parts:
        return  # before importing pyarrow: a run that appends a few rows never needs it
    import pyarrow as pa

    # Parts of one schema are joined without unifying schemas, a third of the cost for a batch of
    # a thousand sessions; unifying is for a chunk whose column was all null, so typed as null.
    schema = parts[0].schema
    promote = "none" if all(part.schema.equals(schema) for part in parts) else "default"
    arrow = pa.concat_tables(parts, promote_options=promote)
    if arrow.num_columns and arrow.column(0).num_chunks > SCANNED_CHUNKS:
        arrow = arrow.combine_chunks()
    _insert_table(con, "INSERT", table, arrow)
