"""What the maintenance commands ask of the runner's tables: ``status``, ``reset`` and ``forget``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sessionpipe_runner.store import migrate
from sessionpipe_runner.store.state import STATE_TABLE
from sessionpipe_runner.tables import has_column, transaction

if TYPE_CHECKING:
    import duckdb

    from sessionpipe_runner.processors.base import Processor


class NoStateToReset(LookupError):
    """``reset --session`` named a session the processor has no state for."""


def status_data(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Per processor: sessions by status, items, files that vanished (kept), and the last five runs."""
    processors: dict[str, dict[str, Any]] = {}

    def entry_of(name: str) -> dict[str, Any]:
        return processors.setdefault(name, {"sessions": {}, "items": 0, "vanished": 0, "last_runs": []})

    # A database no run of this build has migrated yet has no vanished_at column.
    vanished = "vanished_at IS NOT NULL" if has_column(con, STATE_TABLE, "vanished_at") else "false"
    for name, status, count, items, gone in con.execute(
        f"SELECT processor, status, count(*), sum(items), count(*) FILTER (WHERE {vanished}) "
        "FROM session_processor_state GROUP BY ALL ORDER BY ALL"
    ).fetchall():
        entry = entry_of(name)
        entry["sessions"][status] = count
        entry["items"] += int(items or 0)
        entry["vanished"] += int(gone)
    for name, started, outcome, summary in con.execute(
        "SELECT processor, strftime(timezone('UTC', started_at), '%Y-%m-%dT%H:%M:%SZ'), outcome, summary FROM ("
        "  SELECT *, row_number() OVER (PARTITION BY processor ORDER BY started_at DESC) AS n FROM processor_runs"
        ") WHERE n <= 5 ORDER BY processor, started_at DESC"
    ).fetchall():
        entry = entry_of(name)
        details = json.loads(summary) if summary else {}
        line = ", ".join(f"{k} {details[k]}" for k in ("processed", "errors", "skipped") if k in details)
        entry["last_runs"].append({"started_at": started, "outcome": outcome, "summary": details, "summary_line": line})
    return {"processors": processors}


def reset_sessions(
    con: duckdb.DuckDBPyConnection, processor: Processor, *, session: str | None, quarantined: bool
) -> int:
    """Forget sessions' state and rows so the next run processes them again; returns how many.

    Raises :class:`NoStateToReset` when ``session`` names a session with no state.
    """
    if session is not None:
        where, params = "processor = ? AND session_file = ?", [processor.name, session]
    elif quarantined:
        where, params = "processor = ? AND status = 'quarantined'", [processor.name]
    else:
        where, params = "processor = ?", [processor.name]
    keys = [
        row[0]
        for row in con.execute(f"SELECT session_file FROM session_processor_state WHERE {where}", params).fetchall()
    ]
    if session is not None and not keys:
        raise NoStateToReset(f"no state for session {session!r} of processor {processor.name!r}")
    with transaction(con):
        if keys:
            processor.forget(con, keys)
        con.execute(f"DELETE FROM session_processor_state WHERE {where}", params)
    return len(keys)


def forgettable(
    con: duckdb.DuckDBPyConnection, *, vanished: bool, user: str | None, session: str | None
) -> list[tuple[str, str]]:
    """(processor, session file) of every state row that matches the selection, in order."""
    if vanished:
        if not has_column(con, STATE_TABLE, "vanished_at"):
            return []  # no run of this build has marked anything vanished yet
        where, params = "vanished_at IS NOT NULL", []
    elif user is not None:
        where, params = "user_name = ?", [user]
    else:
        where, params = "session_file = ?", [str(session)]
    rows = con.execute(
        f"SELECT processor, session_file FROM {STATE_TABLE} WHERE {where} ORDER BY ALL", params
    ).fetchall()
    return [(str(processor), str(key)) for processor, key in rows]


def forget_sessions(
    con: duckdb.DuckDBPyConnection,
    doomed: Sequence[tuple[str, str]],
    load: Callable[[str], Processor],
) -> None:
    """Delete the state rows and each processor's rows of ``doomed`` (processor, session file) in one transaction.

    Every processor named must be installed (``load`` finds it by name): its tables are its own
    to clean.
    """
    keys_by_processor: dict[str, list[str]] = {}
    for processor_name, key in doomed:
        keys_by_processor.setdefault(processor_name, []).append(key)
    processors = {name: load(name) for name in keys_by_processor}
    for processor in processors.values():
        migrate(con, processor)
    with transaction(con):
        for name, keys in keys_by_processor.items():
            processors[name].forget(con, keys)
            con.execute(f"DELETE FROM {STATE_TABLE} WHERE processor = ? AND session_file = ANY(?)", [name, keys])


def troubled_sessions(con: duckdb.DuckDBPyConnection, limit: int = 200) -> list[dict[str, Any]]:
    """The session files a processor failed on or quarantined, latest first, with the last error."""
    rows = con.execute(
        "SELECT processor, session_file, user_name, status, attempts, last_error,"
        " strftime(timezone('UTC', processed_at), '%Y-%m-%dT%H:%M:%SZ')"
        " FROM session_processor_state WHERE status IN ('failed', 'quarantined')"
        " ORDER BY processed_at DESC, processor, session_file LIMIT ?",
        [limit],
    ).fetchall()
    names = ("processor", "session_file", "user", "status", "attempts", "last_error", "processed_at")
    return [dict(zip(names, row, strict=True)) for row in rows]
