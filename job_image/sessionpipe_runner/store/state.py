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


#: A state row a file with the row's size and mtime is plainly unchanged against: for the run's
#: processor version, neither failed nor quarantined (what :func:`~sessionpipe_runner.scan.decide`
#: calls unchanged; ``tests/unit/test_scan_plan.py`` holds the two rules together).
_SETTLED = "processor_version = $version AND status NOT IN ('failed', 'quarantined')"

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
                OR NOT ({_SETTLED} AND state.size = scanned.size AND state.mtime_ns = scanned.mtime_ns)) AS unsettled,
           $user::VARCHAR IS NULL OR state.user_name = $user AS covered
    FROM scanned FULL OUTER JOIN state ON state.session_file = scanned.session_file
)
SELECT * EXCLUDE (covered) FROM compared
WHERE unsettled OR (found AND marked) OR (NOT found AND NOT marked AND covered)
"""

#: A state row's hash: it changes whenever the row is written (of the columns the scan index reads).
_ROW_HASH = "hash(session_file, user_name, size, mtime_ns, status, processor_version, vanished_at)"
#: What changes whenever one of a processor's state rows is written, added or removed: the state a
#: scan index was made from is the state now only if this is what it was.
_STATE_SUMMARY = f"count(*), sum({_ROW_HASH})"

#: The state rows of some files, each with its hash.
_STATE_OF = f"""
SELECT session_file, size, mtime_ns, content_hash, processor_version, attempts, status, items, content_length,
       line_count, {_ROW_HASH}
FROM {STATE_TABLE} WHERE processor = $processor AND list_contains($keys::VARCHAR[], session_file)
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
    if con.execute(f"SELECT 1 FROM {STATE_TABLE} WHERE processor = ? LIMIT 1", [processor]).fetchone() is None:
        # The processor's first run: every file is new. (Comparing sent 25,000 keys to DuckDB and
        # took back as many rows: ~0.15 s of a cold run at 1 GB, before any file is read.)
        return ScanComparison(dict.fromkeys(keys), [], [])
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
            comparison.unsettled[key] = _state_or_none(row)
    return comparison


def _state_or_none(row: tuple[Any, ...]) -> StateRow | None:
    """The state of a compared row (key, then the state's columns), ``None`` if the file has none."""
    return None if row[6] is None else _make_state_row(row[:10])


def unsettled_states(
    con: duckdb.DuckDBPyConnection, processor: str, keys: list[str]
) -> tuple[dict[str, StateRow | None], StateSummary]:
    """:attr:`ScanComparison.unsettled` of the files a scan index did not leave out, ``keys``: the
    state of each (``None`` if it has none); and the :func:`state_summary` of their rows.

    Every such file is unsettled: the index left out exactly the files whose row is settled with
    their size and mtime (and :func:`~sessionpipe_runner.scan.decide` judges each one again).
    """
    if not keys:
        return {}, StateSummary(0, None)
    rows = con.execute(_STATE_OF, {"keys": keys, "processor": processor}).fetchall()
    unsettled: dict[str, StateRow | None] = dict.fromkeys(keys)
    for row in rows:
        unsettled[row[0]] = _make_state_row(row[:10])
    hashes = [row[10] for row in rows]
    return unsettled, StateSummary(len(hashes), sum(hashes) if hashes else None)


class StateSummary(NamedTuple):
    """:data:`_STATE_SUMMARY` of a processor's rows: their number, and the sum of their hashes."""

    rows: int
    hashes: int | None  # None: no row

    def plus(self, other: StateSummary, sign: int = 1) -> StateSummary:
        """The summary of these rows and ``other``'s (``sign=-1``: of these rows but ``other``'s)."""
        rows = self.rows + sign * other.rows
        hashes = (self.hashes or 0) + sign * (other.hashes or 0)
        return StateSummary(rows, hashes if rows else None)


def _summary(row: tuple[Any, ...]) -> StateSummary:
    return StateSummary(int(row[0]), None if row[1] is None else int(row[1]))


def _rows_of(keys: Sequence[str] | None) -> str:
    """The state rows of the processor (``$processor``), of only ``$keys`` if there are keys."""
    only = "" if keys is None else " AND list_contains($keys::VARCHAR[], session_file)"
    return f"FROM {STATE_TABLE} WHERE processor = $processor{only}"


def state_summary(con: duckdb.DuckDBPyConnection, processor: str, keys: Sequence[str] | None = None) -> StateSummary:
    """The summary of ``processor``'s state rows now (of those of ``keys`` only, if given):
    one aggregate, ~2 ms over 25,000 rows."""
    parameters: dict[str, Any] = {"processor": processor} if keys is None else {"processor": processor, "keys": keys}
    row = con.execute(f"SELECT {_STATE_SUMMARY} {_rows_of(keys)}", parameters).fetchone()
    assert row is not None
    return _summary(row)


def scan_index_body(
    con: duckdb.DuckDBPyConnection, processor: str, version: str, keys: Sequence[str] | None = None
) -> tuple[StateSummary, bytes]:
    """The body of a scan index of ``processor``'s state (of the rows of ``keys`` only, if given),
    in the format ``native/src/scanindex.rs`` reads, with the summary of the same rows: one
    statement, so the two describe one state."""
    parameters: dict[str, Any] = {"processor": processor, "version": version}
    if keys is not None:
        parameters["keys"] = keys
    row = con.execute(
        f"""SELECT {_STATE_SUMMARY}, encode(coalesce(string_agg(concat_ws(' ', size, mtime_ns,
                   ({_SETTLED})::INTEGER + 2 * (vanished_at IS NOT NULL)::INTEGER, strlen(user_name),
                   user_name || strlen(session_file), session_file || chr(10)), ''), ''))
            {_rows_of(keys)}""",
        parameters,
    ).fetchone()
    assert row is not None
    return _summary(row), bytes(row[2])


def upsert_state(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[Any, ...]], *, replacing: bool = True) -> None:
    """Write state rows (the table's column order), replacing earlier rows of the same sessions
    (``replacing=False``: the caller knows none has one, as in a processor's first run, and the
    delete, a scan of the table this run is growing, is skipped).

    The earlier rows are deleted and the new ones appended, not updated in place: at the next
    checkpoint DuckDB rewrites each updated column of a row group whole, and a volume's state is one
    row group up to 122,880 files. Updating one file's row recompressed 180,000 values (20 ms of an
    incremental run at 25,000 files); a deleted row costs a delete mark, an appended one a place in
    a small row group at the end.
    """
    if not rows:
        return
    if replacing:
        _delete_state(con, rows)
    tables.insert_rows(con, STATE_TABLE, rows)


def _delete_state(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[Any, ...]]) -> None:
    con.execute(
        f"DELETE FROM {STATE_TABLE} WHERE (processor, session_file) IN "
        "(SELECT unnest($processors::VARCHAR[]), unnest($keys::VARCHAR[]))",
        {"processors": [row[0] for row in rows], "keys": [row[1] for row in rows]},
    )


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
