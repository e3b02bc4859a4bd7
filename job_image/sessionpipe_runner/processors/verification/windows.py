"""Whole conversations, paid once: overlapping windows, and growing sessions read from where they were left.

A session is read in windows of at most ``max_turns`` turns. Each window has its *source* turns,
the ones its items may quote, preceded by up to ``context_turns`` earlier turns for context (the
source turns of the window before). Every turn is the source of exactly one window, so a long
session is read whole, and a turn is sent at most twice (once as source, once as context).

A session that grew since its last extraction starts where that one stopped: :class:`Progress`
records, per session file, how many turns were extracted and a hash of them. If the file still
begins with those turns, only the turns after them are sources (with context turns before them), and
the session's earlier items are kept; otherwise (the file was rewritten, or the processor's version
changed) the whole session is read again and its evidence replaced. The last turn is never counted
as extracted, because Claude Code may still be appending to it: it is read again next time, and a
quote found again is not stored twice (:func:`~.store.replace_sessions`).

The progress row is written in the same transaction as the session's evidence and state row, so a
run that dies between the call and the commit leaves the previous progress and evidence as they
were: the next run sends the same turns again, and nothing is lost or duplicated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sessionpipe_runner.migrations import Migration
from sessionpipe_runner.processors.verification.conversation import Turn

if TYPE_CHECKING:
    import duckdb

PROGRESS = "verification_progress"

MIGRATION = Migration(
    "0002_verification_progress",
    f"""
    CREATE TABLE IF NOT EXISTS {PROGRESS} (
        session_file      VARCHAR PRIMARY KEY,
        processor_version VARCHAR NOT NULL,
        turns_done        INTEGER NOT NULL,
        turns_hash        VARCHAR NOT NULL,
        updated_at        TIMESTAMPTZ NOT NULL
    );
    """,
)


@dataclass(frozen=True)
class Progress:
    """How far a session's extraction got: its first ``turns_done`` turns, hashing to ``turns_hash``."""

    turns_done: int
    turns_hash: str


@dataclass(frozen=True)
class Window:
    """Turns ``[first, end)`` are sent; turns from ``source`` on may be quoted."""

    first: int
    source: int
    end: int


@dataclass(frozen=True)
class Plan:
    """The windows of one session's extraction, and what was left out of them."""

    windows: tuple[Window, ...]
    turns_left_out: int
    progress: Progress  # what to record once the windows' items are stored
    incremental: bool  # True: earlier items are kept, only the new turns were sources


def turns_hash(turns: Sequence[Turn]) -> str:
    digest = hashlib.sha256()
    for turn in turns:
        digest.update(f"{turn.role}\x1f{len(turn.text)}\x1f{turn.text}\x1e".encode())
    return digest.hexdigest()[:32]


def resume_from(turns: Sequence[Turn], known: Progress | None) -> int:
    """The first turn not yet extracted: 0 unless ``known`` progress still matches the turns."""
    if known is None or not 0 < known.turns_done <= len(turns):
        return 0
    return known.turns_done if turns_hash(turns[: known.turns_done]) == known.turns_hash else 0


def plan(turns: Sequence[Turn], known: Progress | None, *, size: int, context: int, max_windows: int) -> Plan:
    """The windows that read every turn not yet extracted (all of them when ``known`` does not match).

    ``size`` turns per window at most, of which up to ``context`` are context; at most
    ``max_windows`` windows, the newest (older source turns beyond them are counted as left out).
    """
    start = resume_from(turns, known)
    context = min(context, size - 1)
    step = size - context
    windows: list[Window] = []
    source = start
    while source < len(turns):
        end = min(len(turns), source + step)
        windows.append(Window(max(0, source - context), source, end))
        source = end
    left_out = 0
    if len(windows) > max_windows:
        dropped = windows[: len(windows) - max_windows]
        left_out = sum(window.end - window.source for window in dropped)
        windows = windows[len(windows) - max_windows :]
    done = max(len(turns) - 1, 0)  # the last turn may still grow: read it again next time
    return Plan(tuple(windows), left_out, Progress(done, turns_hash(turns[:done])), incremental=start > 0)


def load(con: duckdb.DuckDBPyConnection, version: str) -> dict[str, Progress]:
    """Every session's progress recorded by this processor version."""
    return {
        row[0]: Progress(row[1], row[2])
        for row in con.execute(
            f"SELECT session_file, turns_done, turns_hash FROM {PROGRESS} WHERE processor_version = ?", [version]
        ).fetchall()
    }


def save(con: duckdb.DuckDBPyConnection, version: str, rows: Sequence[tuple[str, Progress]], now: datetime) -> None:
    """Record the sessions' progress (inside the runner's transaction)."""
    forget(con, [session_file for session_file, _ in rows])
    con.executemany(
        f"INSERT INTO {PROGRESS} VALUES (?, ?, ?, ?, ?)",
        [(session_file, version, done.turns_done, done.turns_hash, now) for session_file, done in rows],
    )


def forget(con: duckdb.DuckDBPyConnection, session_files: Sequence[str]) -> None:
    if session_files:
        con.execute(f"DELETE FROM {PROGRESS} WHERE session_file = ANY(?)", [list(session_files)])
