"""``session_processor_state``: what the store remembers of each session file, per processor."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from sessionpipe_runner import tables

if TYPE_CHECKING:
    import duckdb

STATE_TABLE = "session_processor_state"


class StateRow(NamedTuple):
    """What the store remembers of one session file for one processor."""

    session_file: str
    size: int
    mtime_ns: int
    content_hash: str | None
    processor_version: str
    attempts: int
    status: str
    items: int = 0
    content_length: int | None = None  # bytes of the complete lines committed (NULL: not known)
    line_count: int | None = None  # lines in them


_make_state_row = partial(tuple.__new__, StateRow)  # StateRow(*row) without a Python-level call


#: Files' (key, size, mtime_ns) as a relation, from the parameters :func:`_file_stats` makes.
_FILE_STATS = "(SELECT unnest($keys) AS session_file, unnest($sizes) AS size, unnest($mtimes) AS mtime_ns)"


def _file_stats(files: Sequence[tuple[str, int, int]]) -> dict[str, list[Any]]:
    keys, sizes, mtimes = (list(column) for column in zip(*files, strict=True))
    return {"keys": keys, "sizes": sizes, "mtimes": mtimes}


#: The files a run's scan found, (session_file, size, mtime_ns): a temporary table of the connection.
SCANNED_TABLE = "scanned_files"


def record_scan(con: duckdb.DuckDBPyConnection, keys: list[str], sizes: list[int], mtimes: list[int]) -> None:
    """Hand the scanned files' keys, sizes and mtimes (ns; index ``i`` of each is one file) to the
    database once, for the statements that compare them with the state (:func:`unsettled_state`,
    :func:`mark_vanished`).

    Turning 100,000 keys into a statement's parameter is most of such a statement's cost; done
    once into a temporary table, the two statements after it cost a tenth of what they did.
    """
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {SCANNED_TABLE} AS SELECT unnest($keys::VARCHAR[]) AS session_file, "
        "unnest($sizes::BIGINT[]) AS size, unnest($mtimes::BIGINT[]) AS mtime_ns",
        {"keys": keys, "sizes": sizes, "mtimes": mtimes},
    )


#: The rule by which :func:`~sessionpipe_runner.scan.decide` calls a file unchanged, in SQL.
_UNSETTLED_STATE = f"""
SELECT scanned.session_file, state.size, state.mtime_ns, state.content_hash, state.processor_version,
       state.attempts, state.status, state.items, state.content_length, state.line_count
FROM {SCANNED_TABLE} AS scanned
LEFT JOIN session_processor_state AS state
       ON state.processor = $processor AND state.session_file = scanned.session_file
WHERE state.session_file IS NULL
   OR NOT (state.processor_version = $version
           AND state.status NOT IN ('failed', 'quarantined')
           AND state.size = scanned.size
           AND state.mtime_ns = scanned.mtime_ns)
"""


def unsettled_state(con: duckdb.DuckDBPyConnection, processor: str, version: str) -> dict[str, StateRow | None]:
    """The state of each scanned file (:func:`record_scan`) that is not plainly unchanged; ``None`` if new.

    A file is left out when its state row is for ``version``, neither failed nor quarantined, with
    the scanned size and mtime: what :func:`~sessionpipe_runner.scan.decide` calls unchanged. The
    database does that comparison in one join, so a re-run over 100,000 unchanged files builds no
    Python object per file (``tests/unit/test_scan_plan.py`` holds the two rules together).
    """
    rows = con.execute(_UNSETTLED_STATE, {"processor": processor, "version": version}).fetchall()
    return {row[0]: None if row[6] is None else _make_state_row(row) for row in rows}


def upsert_state(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write state rows (the table's column order), replacing earlier rows of the same sessions."""
    tables.insert_rows(con, STATE_TABLE, rows, replace=True)


def update_seen(con: duckdb.DuckDBPyConnection, processor: str, seen: Sequence[tuple[str, int, int]]) -> None:
    """Record a new size and mtime for files whose content proved unchanged: (key, size, mtime_ns)."""
    if not seen:
        return
    con.execute(
        f"UPDATE {STATE_TABLE} AS s SET size = u.size, mtime_ns = u.mtime_ns "
        f"FROM {_FILE_STATS} AS u WHERE s.processor = $processor AND s.session_file = u.session_file",
        {**_file_stats(seen), "processor": processor},
    )


def mark_vanished(con: duckdb.DuckDBPyConnection, processor: str, user: str | None, now: datetime) -> tuple[int, int]:
    """Mark state rows of files the scan did not find as vanished, and clear the mark of those it found.

    The files the scan found are those of :func:`record_scan`; with ``user``, the scan covered only
    that user's files, so only their rows can vanish. Returns (how many vanished now, how many
    reappeared).
    """
    changed = con.execute(
        f"UPDATE {STATE_TABLE} SET vanished_at = CASE WHEN vanished_at IS NULL THEN $now END "
        "WHERE processor = $processor "
        f"AND (vanished_at IS NULL) = (session_file NOT IN (SELECT session_file FROM {SCANNED_TABLE})) "
        "AND (vanished_at IS NOT NULL OR $user::VARCHAR IS NULL OR user_name = $user) "
        "RETURNING vanished_at IS NOT NULL",
        {"processor": processor, "user": user, "now": now},
    ).fetchall()
    vanished = sum(1 for (now_vanished,) in changed if now_vanished)
    return vanished, len(changed) - vanished
