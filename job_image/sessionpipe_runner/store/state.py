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


#: Files' (key, size, mtime_ns) as a relation, from the parameters :func:`_file_stats` makes (or a
#: scan's columns): typed, so an empty list is one too.
_FILE_STATS = (
    "(SELECT unnest($keys::VARCHAR[]) AS session_file, unnest($sizes::BIGINT[]) AS size, "
    "unnest($mtimes::BIGINT[]) AS mtime_ns)"
)


def _file_stats(files: Sequence[tuple[str, int, int]]) -> dict[str, list[Any]]:
    keys, sizes, mtimes = (list(column) for column in zip(*files, strict=True))
    return {"keys": keys, "sizes": sizes, "mtimes": mtimes}


class ScanComparison(NamedTuple):
    """A scan against the state: the files a run must look at, and the vanished marks to change."""

    #: The state of each scanned file that is not plainly unchanged (``None``: never seen).
    unsettled: dict[str, StateRow | None]
    vanished: list[str]  # files of the state the scan covered but did not find, not marked yet
    reappeared: list[str]  # files marked vanished that the scan found again


#: One pass over the scanned files and the processor's state, keeping the rows that matter: the
#: scanned files :func:`~sessionpipe_runner.scan.decide` may call anything but unchanged, and the
#: files whose vanished mark is wrong. Most runs get no row at all back.
_COMPARE_SCAN = f"""
WITH scanned AS {_FILE_STATS}, state AS (
    SELECT * FROM {STATE_TABLE} WHERE processor = $processor
), compared AS (
    SELECT coalesce(scanned.session_file, state.session_file) AS session_file, state.size, state.mtime_ns,
           state.content_hash, state.processor_version, state.attempts, state.status, state.items,
           state.content_length, state.line_count,
           scanned.session_file IS NOT NULL AS found,
           state.vanished_at IS NOT NULL AS marked,
           scanned.session_file IS NOT NULL
           AND (state.session_file IS NULL
                OR NOT (state.processor_version = $version
                        AND state.status NOT IN ('failed', 'quarantined')
                        AND state.size = scanned.size
                        AND state.mtime_ns = scanned.mtime_ns)) AS unsettled,
           $user::VARCHAR IS NULL OR state.user_name = $user AS covered
    FROM scanned FULL OUTER JOIN state ON state.session_file = scanned.session_file
)
SELECT * EXCLUDE (covered) FROM compared
WHERE unsettled OR (found AND marked) OR (NOT found AND NOT marked AND covered)
"""


def compare_scan(
    con: duckdb.DuckDBPyConnection,
    processor: str,
    version: str,
    user: str | None,
    scan: tuple[list[str], list[int], list[int]],
) -> ScanComparison:
    """Compare a scan, ``(keys, sizes, mtimes)`` (ns; index ``i`` of each is one file), with the state.

    A file is unsettled unless its state row is for ``version``, neither failed nor quarantined,
    with the scanned size and mtime: what :func:`~sessionpipe_runner.scan.decide` calls unchanged
    (``tests/unit/test_scan_plan.py`` holds the two rules together). With ``user``, the scan
    covered only that user's files, so only their rows can vanish. One read, no temporary table:
    a re-run over 100,000 unchanged files gets no row back and builds no Python object per file.
    """
    keys, sizes, mtimes = scan
    rows = con.execute(
        _COMPARE_SCAN,
        {"keys": keys, "sizes": sizes, "mtimes": mtimes, "processor": processor, "version": version, "user": user},
    ).fetchall()
    comparison = ScanComparison({}, [], [])
    for row in rows:
        key, found, marked, unsettled = row[0], row[10], row[11], row[12]
        if not found:
            comparison.vanished.append(key)
            continue
        if marked:
            comparison.reappeared.append(key)
        if unsettled:
            comparison.unsettled[key] = None if row[6] is None else _make_state_row(row[:10])
    return comparison


def upsert_state(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write state rows (the table's column order), replacing earlier rows of the same sessions.

    The earlier rows are deleted and the new ones appended, not updated in place: at the next
    checkpoint DuckDB rewrites each updated column of a row group whole, and a volume's state is one
    row group up to 122,880 files. Updating one file's row recompressed 180,000 values (20 ms of an
    incremental run at 25,000 files); a deleted row costs a delete mark, an appended one a place in
    a small row group at the end.
    """
    if not rows:
        return
    con.execute(
        f"DELETE FROM {STATE_TABLE} WHERE (processor, session_file) IN "
        "(SELECT unnest($processors::VARCHAR[]), unnest($keys::VARCHAR[]))",
        {"processors": [row[0] for row in rows], "keys": [row[1] for row in rows]},
    )
    tables.insert_rows(con, STATE_TABLE, rows)


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
    con: duckdb.DuckDBPyConnection, processor: str, vanished: Sequence[str], reappeared: Sequence[str], now: datetime
) -> None:
    """Mark the state rows of files a scan no longer found as vanished (their rows stay), and clear
    the mark of files it found again (:func:`compare_scan` finds both)."""
    for keys, when in ((vanished, now), (reappeared, None)):
        if keys:
            con.execute(
                f"UPDATE {STATE_TABLE} SET vanished_at = $when "
                "WHERE processor = $processor AND session_file IN (SELECT unnest($keys::VARCHAR[]))",
                {"when": when, "processor": processor, "keys": list(keys)},
            )
