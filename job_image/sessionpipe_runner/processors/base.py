"""The processor contract.

A processor turns one session file into rows. It has a ``name`` (what a SessionProcessor's
``spec.processor`` names), a ``version`` (a change makes every session a candidate again), the
migrations that create its tables, and :meth:`Processor.process`, which reads one session and returns
an :class:`Output`. The runner owns everything around that call: the lease, the scan, change
detection, the transaction that writes a session's rows together with its state row, attempts and
quarantine.

Processors are found through the entry-point group ``sessionpipe.processors``; the entry point names
the processor class (or a zero-argument factory returning an instance).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sessionpipe_runner import tables as table_writes
from sessionpipe_runner.migrations import Migration

__all__ = [
    "FailRun",
    "Migration",
    "Output",
    "Pending",
    "Processor",
    "RunContext",
    "SessionFile",
    "StopRun",
    "check_declared_tables",
    "replace_session_rows",
]

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from sessionpipe_runner.reading import Snapshot
    from sessionpipe_runner.reports import Report


@dataclass(frozen=True, slots=True)
class SessionFile:
    """One transcript file on the sessions volume, as the scan found it."""

    #: Path relative to the sessions root, user first: "alice/-home-alice-app/1f0c….jsonl" (a name
    #: that is not UTF-8 has its bytes written as ``\\xNN``; see :mod:`sessionpipe_runner.names`).
    key: str
    location: str  # where to read it (a string: a scan of 100,000 files need not build Paths)
    user: str  # the first component of ``key``
    project: str  # the folder under the user ("" for a flat <user>/<session>.jsonl)
    session_id: str  # the session this file rolls up into (subagent files join their parent)
    size: int
    mtime_ns: int
    #: The sessions root the scan started from (``location`` is below it): the runner reads the
    #: file by walking down from there without following symlinks. Empty: only ``location``'s
    #: last component is not followed.
    root: str = ""

    @property
    def path(self) -> Path:
        """:attr:`location` as a ``Path``."""
        return Path(self.location)


@dataclass
class Output:
    """What one session produced.

    ``rows`` maps each of the processor's tables to tuples in that table's column order; the
    default :meth:`Processor.write` replaces the session's earlier rows with them. ``items`` is the
    count reported in the run summary (rows, extracted items…). ``issues`` counts lines or parts
    the processor could not use, by reason (``invalid_json``, ``invalid_utf8``, ``wrong_type``…):
    they are explained outcomes, not failures. ``counters`` counts what the processor did or
    spent, by name (``llm_calls``, ``llm_tokens``…); both are summed into the run summary.
    """

    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    items: int = 0
    issues: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)
    #: ``rows`` already converted to Arrow, by table: filled by the runner's workers (see
    #: :attr:`Processor.parallel`), never by processors.
    arrow: dict[str, pa.Table] = field(default_factory=dict)
    #: Where each table of ``arrow`` lies in the worker's table of several sessions (that table,
    #: its first row there): consecutive sessions' rows are inserted as one slice of it.
    arrow_origin: dict[str, tuple[pa.Table, int]] = field(default_factory=dict)
    #: Set by the runner when this is the output of :meth:`Processor.process_appended`: the rows
    #: are added to the session's stored rows, which :meth:`Processor.write` must keep.
    appended: bool = False

    def row_count(self) -> int:
        """The rows this output adds to the processor's tables (what the runner sizes batches by)."""
        arrow_rows: int = sum(table.num_rows for table in self.arrow.values())
        return sum(map(len, self.rows.values())) + arrow_rows


@dataclass(frozen=True)
class RunContext:
    """What a processor may know about the run it is part of."""

    run_id: str
    database: Path
    config: Mapping[str, Any]  # the SessionProcessor's spec.config, or --config on a laptop
    environ: Mapping[str, str]  # the runner's environment (LLM settings, API keys by reference)
    #: The run's open database, for :meth:`Processor.start` to read the processor's own tables
    #: (what it stored in earlier runs); only the runner writes, in its transactions.
    connection: duckdb.DuckDBPyConnection | None = None


class StopRun(Exception):
    """Raised by a processor to end the run cleanly before the session at hand.

    The session is neither failed nor done; it and the remaining candidates wait for the next run.
    Use it for per-run budgets (tokens, calls, sessions).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Pending(Exception):
    """Raised by a processor for a session whose result is on its way (an asynchronous batch).

    The session is neither done nor failed: its state is left as it was, so it is a candidate
    again on the next run, which may find the result. Counted as ``waiting_for_result``.
    """


class FailRun(Exception):
    """Raised by a processor when no session can succeed this run (rejected credentials, say).

    The session at hand is neither failed nor done, so no session is charged an attempt; the
    sessions already processed are kept, and the run ends with outcome ``failed`` (exit code 1)
    and this message, which the operator reports as a failed run.
    """


#: One file of :meth:`Processor.read_and_process`: read and processed, unreadable, or left alone.
ReadAndProcessed = tuple["Snapshot", Output] | OSError | None


class BadSettings(FailRun):
    """Raised by a processor when its settings are wrong (a missing API key, an unreadable price file).

    Like :class:`FailRun` the run ends with outcome ``failed`` before any session is charged, but
    with exit code 2: a user mistake to fix, not a failure to retry.
    """


class Processor:
    """Base class for processors; subclasses set ``name``, ``version`` and implement ``process``."""

    name: ClassVar[str]
    version: ClassVar[str]
    #: Tables that hold per-session rows, each with a ``session_file`` column holding
    #: :attr:`SessionFile.key`. The default :meth:`write` deletes the session's rows from each of
    #: them before inserting the new ones, so reprocessing never duplicates.
    tables: ClassVar[Sequence[str]] = ()
    #: Deterministic processors may let the runner commit several sessions per transaction.
    batchable: ClassVar[bool] = False
    #: A processor whose :meth:`process` depends only on the session, its bytes and what
    #: :meth:`start` set up (no budgets, no shared state, picklable after ``start``), and that keeps
    #: the default :meth:`write`, may be run in worker processes (``--workers``) on large runs.
    parallel: ClassVar[bool] = False
    #: A :attr:`parallel` processor whose :meth:`process` spends most of its time with the GIL
    #: released (a compiled parser) and may run in several threads at once: its workers are threads
    #: of the runner's process, not processes (no interpreter to start, no rows pickled). It may set
    #: this in :meth:`start` (an output that cannot be pickled then still reaches :meth:`write`).
    releases_gil: bool = False
    #: A :attr:`parallel` processor that overrides :meth:`write` may still have workers if its
    #: write stores :attr:`Output.arrow` (the rows workers convert), as :func:`replace_session_rows` does.
    write_takes_arrow: ClassVar[bool] = False
    #: A processor whose rows for a line depend on that line alone (not on the lines before it) may
    #: be given only the lines appended to a file since its rows were committed (Claude Code only
    #: appends to a transcript): the runner calls :meth:`process_appended` with them when the
    #: committed lines are still there unchanged, and :meth:`write` adds the rows to the stored ones.
    appendable: ClassVar[bool] = False

    def migrations(self) -> Sequence[Migration]:
        """Schema steps that create and evolve this processor's tables and views."""
        return ()

    def start(self, context: RunContext) -> None:
        """Called once per run before any session; read settings from ``context.config``."""

    def process(self, session: SessionFile, data: bytes) -> Output:
        """Turn one session into rows.

        ``data`` is the file's content up to and including its last complete line (a line still
        being written is left for a later run). Raise to fail the session: it is not marked done,
        and its attempt count and error are recorded. Raise :class:`StopRun` to end the run,
        :class:`FailRun` to fail it.
        """
        raise NotImplementedError

    def process_appended(self, session: SessionFile, data: bytes, first_line: int) -> Output:
        """Turn the lines appended to a session since its last commit into rows (:attr:`appendable`).

        ``data`` holds the complete lines after those committed; its first line is the file's line
        ``first_line`` (1-based). The output must be exactly the rows (and items) that
        :meth:`process` of the whole file gives for those lines.
        """
        raise NotImplementedError

    def read_and_process(self, sessions: Sequence[SessionFile]) -> Sequence[ReadAndProcessed] | None:
        """Read new files and :meth:`process` them in one call, for a processor with a compiled way
        of doing both (:attr:`releases_gil`): the runner's workers offer it each chunk of files that
        have no committed lines, so the GIL is released once per chunk rather than a few times per
        file (each time cost a context switch with two threads).

        Per file, in order: its :class:`~sessionpipe_runner.reading.Snapshot` (without the data) and
        its output, exactly what :func:`~sessionpipe_runner.reading.read_snapshot` and
        :meth:`process` give; the ``OSError`` that ``read_snapshot`` raises; or ``None`` to leave
        the file to them. The default offers nothing (``None``); an exception leaves the whole
        chunk to them.
        """
        return None

    def write(self, con: duckdb.DuckDBPyConnection, batch: Sequence[tuple[SessionFile, Output]]) -> None:
        """Store the output of one or more sessions inside the runner's open transaction.

        The default replaces those sessions' rows in :attr:`tables` (one delete and one bulk insert
        per table), except that rows of an :attr:`Output.appended` output are added to the stored
        ones. Override to merge across sessions, calling :func:`replace_session_rows` for the plain
        tables.
        """
        replace_session_rows(con, self.tables, batch)

    def report(self) -> Report | None:
        """The report this processor contributes to ``sessionpipe report <name>``, or ``None``.

        Called only by the ``report`` command, so a report's imports cost the runs nothing.
        """
        return None

    def finish(self, con: duckdb.DuckDBPyConnection) -> Counter[str]:
        """Called once after the run's last session is committed, inside its own fenced transaction.

        For work that spans the run's sessions (submitting the requests gathered from
        :class:`Pending` sessions as one batch, and recording it). Returns issues to add to the
        run summary. Not called when the run fails or is terminated.
        """
        return Counter()

    def calls_in_flight(self) -> int:
        """How many sessions may be in :meth:`process` at once, in threads (read after :meth:`start`).

        1 (the default): one at a time. A processor that mostly waits on a remote API may allow
        more; its :meth:`process` must then be thread-safe, and the runner still commits the
        results one session at a time, in candidate order, in its own thread
        (:mod:`sessionpipe_runner.inflight`).
        """
        return 1

    def cancel(self) -> None:
        """The run is ending early (SIGTERM, lost lease): send nothing more, wake whatever waits.

        Called from the runner's thread while :meth:`process` may still run in others; whatever
        those calls return is dropped.
        """

    def forget(self, con: duckdb.DuckDBPyConnection, session_keys: Sequence[str]) -> None:
        """Remove what this processor stored for sessions (``reset``, or files that vanished)."""
        for table in self.tables:
            con.execute(f"DELETE FROM {table} WHERE session_file = ANY(?)", [list(session_keys)])


def check_declared_tables(session: SessionFile, output: Output, tables: Sequence[str]) -> None:
    """Raise ``ValueError`` if ``output`` has rows for a table not in ``tables``."""
    unknown = (set(output.rows) | set(output.arrow)) - set(tables)
    if unknown:
        raise ValueError(f"{session.key}: rows for tables the processor does not declare: {sorted(unknown)}")


def replace_session_rows(
    con: duckdb.DuckDBPyConnection,
    tables: Sequence[str],
    batch: Sequence[tuple[SessionFile, Output]],
    *,
    delete: bool = True,
) -> None:
    """Delete the batch's sessions from ``tables`` and insert their new rows in bulk.

    A session whose output is :attr:`Output.appended` keeps its rows: the new ones add to them.
    Without ``delete`` nothing is deleted: for a caller that knows the sessions have no rows.
    """
    keys = [session.key for session, output in batch if not output.appended] if delete else []
    for table in tables if keys else ():
        con.execute(f"DELETE FROM {table} WHERE session_file = ANY(?)", [keys])
    for session, output in batch:
        check_declared_tables(session, output, tables)
    for table in tables:
        table_rows = [row for _, output in batch for row in output.rows.get(table, ())]
        if table_rows:
            table_writes.insert_rows(con, table, table_rows)
        parts = [(output.arrow[table], output.arrow_origin.get(table)) for _, output in batch if table in output.arrow]
        table_writes.insert_arrow(con, table, table_writes.joined_slices(parts))
