"""The store's run records: ``processor_runs`` (one row per run) and ``writer_epochs`` (one per writer).

A run is recorded as ``running`` when it opens the database and updated with its outcome and
summary when it ends; a run killed in between is marked ``abandoned`` by the next writer. Each
lease acquisition records a writer epoch, higher than any before: the fence
(:mod:`sessionpipe_runner.fencing`) compares against the newest.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

    from sessionpipe_runner.summary import RunSummary

#: ``processor_runs.outcome`` of a run that died without recording its end (set by the next writer).
RUN_ABANDONED = "abandoned"


def newest_epoch(con: duckdb.DuckDBPyConnection) -> int | None:
    """The highest writer epoch recorded, or ``None`` before the first writer."""
    row = con.execute("SELECT max(epoch) FROM writer_epochs").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def record_writer(
    con: duckdb.DuckDBPyConnection,
    *,
    epoch: int,
    holder: str,
    lease: str,
    processor: str,
    run_id: str,
    acquired_at: datetime,
) -> None:
    """Record a writer's epoch (inside the caller's transaction)."""
    con.execute(
        "INSERT INTO writer_epochs VALUES (?, ?, ?, ?, ?, ?)",
        [epoch, holder, lease, processor, run_id, acquired_at],
    )


def record_start(con: duckdb.DuckDBPyConnection, summary: RunSummary, epoch: int) -> None:
    """Record a run as ``running`` under writer ``epoch`` (inside the caller's transaction)."""
    con.execute(
        "INSERT INTO processor_runs (run_id, processor, started_at, outcome, writer_epoch) "
        "VALUES (?, ?, ?, 'running', ?)",
        [summary.run_id, summary.processor, summary.started, epoch],
    )


def record_end(con: duckdb.DuckDBPyConnection, summary: RunSummary) -> None:
    """Record how a run ended: its finish time, outcome, exit code and JSON summary."""
    con.execute(
        "UPDATE processor_runs SET finished_at = ?, outcome = ?, exit_code = ?, summary = ? WHERE run_id = ?",
        [summary.finished, summary.outcome, summary.exit_code, summary.to_json(), summary.run_id],
    )


def mark_abandoned(con: duckdb.DuckDBPyConnection, before_epoch: int) -> int:
    """Mark runs of earlier writers still recorded as ``running`` as abandoned; returns how many.

    Only the lease holder calls this: with the lease ours, no earlier writer is still running.
    """
    row = con.execute(
        "UPDATE processor_runs SET outcome = ? WHERE outcome = 'running' AND writer_epoch < ?",
        [RUN_ABANDONED, before_epoch],
    ).fetchone()
    return int(row[0]) if row else 0
