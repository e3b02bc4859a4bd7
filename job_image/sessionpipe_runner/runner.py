"""One run of one processor over the sessions volume, into the database, under the writer lease.

The order of a run (docs/architecture.md, "Order of a run"): take the lease; open the database and migrate; record
the writer epoch; scan and decide; read, hash and process the candidates, writing each session's
rows together with its state row in one transaction; checkpoint; publish the read-only snapshot;
release the lease; report the summary.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import duckdb

from sessionpipe_contract import (
    DEFAULT_DB_MEMORY,
    EXIT_FAILED,
    EXIT_LEASE_LOST,
    EXIT_LEASE_NOT_ACQUIRED,
    EXIT_OK,
    EXIT_TERMINATED,
    OUTCOME_FAILED,
    OUTCOME_LEASE_LOST,
    OUTCOME_LEASE_NOT_ACQUIRED,
    OUTCOME_PARTIAL,
    OUTCOME_STOPPED,
    OUTCOME_SUCCEEDED,
    OUTCOME_TERMINATED,
)
from sessionpipe_runner import early_sigterm, store, work
from sessionpipe_runner.lease import Lease, LeaseLost, LeaseNotAcquired
from sessionpipe_runner.processors.base import FailRun, Output, Processor, RunContext, SessionFile, StopRun
from sessionpipe_runner.reading import Snapshot
from sessionpipe_runner.scan import Decision, plan, scan_sessions
from sessionpipe_runner.store import StateRow
from sessionpipe_runner.summary import RunSummary, write_termination_message
from sessionpipe_runner.work import Examined, Outcome

#: A batchable processor commits at most this many sessions, or this many bytes read, per transaction.
#: (Each commit costs tens of milliseconds whatever its size: fewer, larger batches are faster.)
BATCH_SESSIONS = 1024
BATCH_BYTES = 64 * 1024 * 1024
OPEN_RETRY_SECONDS = 0.2
#: Outcomes of candidates that could not be read: skipped, counted under the outcome's name.
_NOT_READ = frozenset({Outcome.VANISHED, Outcome.UNREADABLE, Outcome.SYMLINK_SKIPPED, Outcome.NOT_A_FILE})


class Terminated(BaseException):
    """SIGTERM arrived: roll back, release the lease, report, exit."""


class Phase:
    """How far a run got, which decides what a SIGTERM summary can truthfully say."""

    STARTING = "starting"  # nothing written yet: waiting for the lease, or not even that
    WRITING = "writing"  # the database is open: an open transaction is rolled back
    PUBLISHING = "publishing"  # everything is committed; the snapshot is being published


class Sigterm:
    """Whether SIGTERM arrived during the run.

    The handler raises :class:`Terminated`, but when the signal lands while DuckDB runs a
    statement, DuckDB turns that exception into its own ``Query interrupted`` error, an ordinary
    ``Exception`` that would fail a session or the run instead. So the flag is the record that
    counts: the runner checks it wherever it catches errors and between sessions.
    """

    def __init__(self) -> None:
        self.received = False

    def check(self) -> None:
        """Raise :class:`Terminated` if SIGTERM arrived, whatever became of the handler's exception."""
        if self.received:
            raise Terminated()


@dataclass(frozen=True)
class RunSettings:
    """Everything one run needs, already resolved from flags, environment and defaults."""

    processor: str
    sessions: Path
    database: Path
    user: str | None = None
    lease_wait_seconds: float = 600.0
    max_sessions: int = 0  # 0: no cap
    max_attempts: int = 3
    config: Mapping[str, Any] = field(default_factory=dict)
    termination_log: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    workers: int = 0  # worker processes: 0 lets the runner choose, 1 processes in the runner itself
    db_memory: str = DEFAULT_DB_MEMORY  # DuckDB's memory_limit for this run's connection


def snapshot_path(database: Path) -> Path:
    """Where the read-only copy of the database is published after each successful run."""
    return database.with_name(database.stem + ".snapshot" + database.suffix)


@contextmanager
def sigterm_raises(sigterm: Sigterm) -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` in the main thread for the duration of a run."""

    def handler(signum: int, frame: FrameType | None) -> None:
        sigterm.received = True
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Pending:
    """A batch that is processed but not yet committed."""

    outputs: list[tuple[SessionFile, Output, Snapshot]] = field(default_factory=list)
    failures: list[tuple[SessionFile, Snapshot | None, BaseException]] = field(default_factory=list)
    seen: list[tuple[str, int, int]] = field(default_factory=list)
    bytes: int = 0

    def __len__(self) -> int:
        return len(self.outputs) + len(self.failures) + len(self.seen)


class Run:
    """The state of one run in progress; :func:`run` is the way to use it."""

    def __init__(self, settings: RunSettings, processor: Processor, lease: Lease) -> None:
        self.settings = settings
        self.processor = processor
        self.lease = lease
        self.summary = RunSummary(
            processor=processor.name,
            processor_version=processor.version,
            run_id=uuid.uuid4().hex[:16],
            started=_now(),
            lease=lease.name,
        )
        self.con: duckdb.DuckDBPyConnection | None = None
        self.sigterm = Sigterm()
        self.epoch = 0
        self.states: dict[str, StateRow] = {}
        self.phase = Phase.STARTING

    # --- the fence ------------------------------------------------------------------------
    def guard(self, con: duckdb.DuckDBPyConnection) -> None:
        """Before any commit: the lease must still be ours and no newer writer recorded."""
        self.lease.check()
        newest = con.execute("SELECT max(epoch) FROM writer_epochs").fetchone()
        if newest is not None and newest[0] is not None and int(newest[0]) > self.epoch:
            raise LeaseLost(f"a newer writer (epoch {newest[0]}) took over the database from epoch {self.epoch}")

    def commit(self, con: duckdb.DuckDBPyConnection, work: Callable[[], None]) -> None:
        with store.transaction(con):
            work()
            self.guard(con)

    # --- phases ---------------------------------------------------------------------------
    def open(self, lease_deadline: float) -> duckdb.DuckDBPyConnection:
        con = self._connect(lease_deadline)
        self.con = con
        store.migrate(con, self.processor)
        floor = self.epoch
        with store.transaction(con):
            newest = con.execute("SELECT coalesce(max(epoch), 0) FROM writer_epochs").fetchone()
            self.epoch = max(floor, int(newest[0]) + 1 if newest else 1)
            con.execute(
                "INSERT INTO writer_epochs VALUES (?, ?, ?, ?, ?, ?)",
                [
                    self.epoch,
                    self.lease.holder,
                    self.lease.name,
                    self.processor.name,
                    self.summary.run_id,
                    _now(),
                ],
            )
            con.execute(
                "INSERT INTO processor_runs (run_id, processor, started_at, outcome, writer_epoch) "
                "VALUES (?, ?, ?, 'running', ?)",
                [self.summary.run_id, self.processor.name, self.summary.started, self.epoch],
            )
            # With the lease ours, an earlier run still recorded as running was killed.
            store.mark_abandoned(con, self.epoch)
        self.summary.writer_epoch = self.epoch
        return con

    def _connect(self, deadline: float) -> duckdb.DuckDBPyConnection:
        """Open the database, waiting while a deposed writer still has the file open.

        With the lease ours, a DuckDB file lock can only belong to a writer that lost its lease
        (frozen, or cut off from the API server) and will notice at its next fence check, roll back
        and close. Wait for that, as long as our lease holds and the lease wait allows.
        """
        while True:
            try:
                return store.connect(self.settings.database, memory_limit=self.settings.db_memory)
            except store.DatabaseLocked:
                self.lease.check()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(OPEN_RETRY_SECONDS)

    def process_all(self, con: duckdb.DuckDBPyConnection) -> None:
        settings = self.settings
        self.processor.start(
            RunContext(
                run_id=self.summary.run_id,
                database=settings.database,
                config=settings.config,
                environ=settings.environ,
            )
        )
        scan = scan_sessions(settings.sessions, settings.user)
        self.summary.issues.update(scan.issues)
        self.summary.scanned = len(scan.files)
        version = self.processor.version
        scanned = [(file.key, file.size, file.mtime_ns) for file in scan.files]
        self._mark_vanished(con, [file.key for file in scan.files])
        unsettled = store.unsettled_state(con, self.processor.name, version, scanned)
        self.states = {key: state for key, state in unsettled.items() if state is not None}
        candidates: list[tuple[SessionFile, str | None]] = []
        for file, decision in plan(scan.files, unsettled, version):
            if decision is Decision.UNCHANGED:
                self.summary.unchanged += 1
            elif decision is Decision.QUARANTINED:
                self.summary.skipped += 1
                self.summary.issues["quarantined_unchanged"] += 1
            else:
                state = self.states.get(file.key)
                known = state.content_hash if decision is Decision.CHECK and state is not None else None
                candidates.append((file, known))
        workers = 0
        if not settings.max_sessions:  # a cap counts attempts one by one, in order
            workers = work.worker_count(settings.workers, self.processor, sum(f.size for f, _ in candidates))
        if workers:
            self.summary.workers = workers
            pool = work.WorkerPool(workers, self.processor, self._columns(con))
            try:
                self._consume(con, pool.examine(candidates))
            finally:
                pool.close()
        else:
            self._consume(con, self._examine_here(candidates))

    def _mark_vanished(self, con: duckdb.DuckDBPyConnection, keys: list[str]) -> None:
        """Mark files the scan no longer finds as vanished (their rows stay), and found ones as live."""
        marked: list[tuple[int, int]] = []
        name, user = self.processor.name, self.settings.user
        self.commit(con, lambda: marked.append(store.mark_vanished(con, name, user, keys, _now())))
        vanished, reappeared = marked[0]
        if vanished:
            self.summary.issues["session_file_vanished"] += vanished
        if reappeared:
            self.summary.issues["session_file_reappeared"] += reappeared

    def _columns(self, con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
        return {table: store.table_columns(con, table) for table in self.processor.tables}

    def _examine_here(self, candidates: Sequence[tuple[SessionFile, str | None]]) -> Iterator[Examined | None]:
        """Examine candidates in this process; ``None`` for one left for the next run."""
        attempted = 0
        stopped = False
        for file, known in candidates:
            if stopped or (self.settings.max_sessions and attempted >= self.settings.max_sessions):
                yield None
                continue
            examined = work.examine(self.processor, file, known)
            attempted += examined.attempted
            stopped = examined.outcome is Outcome.STOP_RUN
            yield examined

    def _consume(self, con: duckdb.DuckDBPyConnection, results: Iterable[Examined | None]) -> None:
        """Count each examined candidate and commit the results in batches."""
        summary = self.summary
        batch_limit = BATCH_SESSIONS if self.processor.batchable else 1
        pending = _Pending()
        stopped: str | None = None
        for examined in results:
            self.sigterm.check()  # a processor may have caught the handler's exception
            if examined is None or stopped is not None:
                summary.skipped += 1
                summary.issues["left_for_next_run"] += 1
                continue
            outcome, file, snapshot = examined.outcome, examined.file, examined.snapshot
            if outcome in _NOT_READ:
                summary.skipped += 1
                summary.issues[outcome.value] += 1
                continue
            assert snapshot is not None
            summary.hashed += 1
            if not snapshot.size:
                summary.issues["empty_file"] += 1
            if snapshot.partial_tail:
                summary.issues["incomplete_last_line"] += 1
            if snapshot.long_lines:
                summary.issues["line_too_long"] += snapshot.long_lines
            if outcome is Outcome.TOUCHED_UNCHANGED:
                summary.skipped += 1
                summary.issues["touched_unchanged"] += 1
                pending.seen.append((file.key, file.size, file.mtime_ns))
            elif outcome is Outcome.STOP_RUN:
                stopped = examined.error.reason if isinstance(examined.error, StopRun) else str(examined.error)
                summary.skipped += 1
                summary.issues["left_for_next_run"] += 1
                continue
            elif outcome is Outcome.FAIL_RUN:
                self.flush(con, pending)  # keep what this run already achieved
                raise examined.error if isinstance(examined.error, FailRun) else FailRun(str(examined.error))
            elif outcome is Outcome.FAILED:
                pending.failures.append((file, snapshot, examined.error or RuntimeError("failed")))
            else:
                assert examined.output is not None
                pending.outputs.append((file, examined.output, snapshot))
                pending.bytes += snapshot.length
            if len(pending) >= batch_limit or pending.bytes >= BATCH_BYTES:
                self.flush(con, pending)
                pending = _Pending()
        self.flush(con, pending)
        if stopped is not None:
            summary.message = f"stopped early: {stopped}"

    def flush(self, con: duckdb.DuckDBPyConnection, pending: _Pending) -> None:
        """Commit a batch; if the batch's write fails, retry its sessions one at a time.

        A session whose own write fails is failed like a session whose processing raised, so one
        bad session never sinks the others.
        """
        if not len(pending):
            return
        try:
            self.commit(con, lambda: self._write(con, pending))
        except LeaseLost:
            raise
        except Exception as error:
            self.sigterm.check()
            if len(pending.outputs) + len(pending.failures) > 1:
                for one in _split(pending):
                    self.flush(con, one)
                return
            if not pending.outputs:
                raise  # only bookkeeping failed to write: the database itself is in trouble
            file, _, snapshot = pending.outputs[0]
            failed = _Pending(failures=[(file, snapshot, error)], seen=pending.seen)
            self.commit(con, lambda: self._write(con, failed))
            self._count(failed)
            return
        self._count(pending)

    def _write(self, con: duckdb.DuckDBPyConnection, pending: _Pending) -> None:
        now = _now()
        rows: list[tuple[Any, ...]] = []
        if pending.outputs:
            self.processor.write(con, [(file, output) for file, output, _ in pending.outputs])
        for file, output, snapshot in pending.outputs:
            rows.append(self._state_row(file, snapshot, output.items, 0, None, "done", now))
        for file, tried, error in pending.failures:
            attempts = self._previous_attempts(file) + 1
            status = "quarantined" if attempts >= self.settings.max_attempts else "failed"
            rows.append(self._state_row(file, tried, 0, attempts, work.error_text(error), status, now))
        store.upsert_state(con, rows)
        store.update_seen(con, self.processor.name, pending.seen)

    def _count(self, pending: _Pending) -> None:
        """Add a committed batch to the summary."""
        for _, output, _ in pending.outputs:
            self.summary.processed += 1
            self.summary.items += output.items
            self.summary.issues.update(output.issues)
            self.summary.counters.update(output.counters)
        for file, _, error in pending.failures:
            self.summary.errors += 1
            self.summary.failures[file.key] = work.error_text(error)
            if self._previous_attempts(file) + 1 >= self.settings.max_attempts:
                self.summary.quarantined += 1

    def _previous_attempts(self, file: SessionFile) -> int:
        state = self.states.get(file.key)
        if state is None or state.status != "failed" or state.processor_version != self.processor.version:
            return 0
        return state.attempts

    def _state_row(
        self,
        file: SessionFile,
        snapshot: Snapshot | None,
        items: int,
        attempts: int,
        error: str | None,
        status: str,
        now: datetime,
    ) -> tuple[Any, ...]:
        return (
            self.processor.name,
            file.key,
            file.user,
            file.size,
            file.mtime_ns,
            snapshot.content_hash if snapshot is not None else None,
            self.processor.version,
            items,
            attempts,
            error,
            status,
            now,
            None,  # vanished_at: the file was just seen
        )

    def _record_run(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(
            "UPDATE processor_runs SET finished_at = ?, outcome = ?, exit_code = ?, summary = ? WHERE run_id = ?",
            [
                self.summary.finished,
                self.summary.outcome,
                self.summary.exit_code,
                self.summary.to_json(),
                self.summary.run_id,
            ],
        )

    def finish(self, con: duckdb.DuckDBPyConnection) -> None:
        """Record the run, checkpoint, close."""
        self.summary.finished = _now()
        self.commit(
            con,
            lambda: self._record_run(con),
        )
        con.execute("CHECKPOINT")
        con.close()
        self.con = None


def _split(pending: _Pending) -> list[_Pending]:
    parts = [_Pending(outputs=[one], bytes=one[2].length) for one in pending.outputs]
    parts += [_Pending(failures=[one]) for one in pending.failures]
    parts[0].seen = pending.seen
    return parts


def _temporary_snapshot_name(database: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(snapshot_path(database).name)}\.\d+\.tmp")


def publish_snapshot(database: Path) -> Path:
    """Copy the checkpointed database to a temporary name, then rename it into place atomically.

    If either step fails (a full disk, a directory in the way) or is interrupted, the temporary
    copy is removed: left behind, it would fill the disk the next run needs.
    """
    target = snapshot_path(database)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(database, temporary)
        temporary.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    return target


def remove_stale_snapshots(database: Path) -> int:
    """Remove temporary snapshot copies a killed run left beside the database; returns how many.

    Only the lease holder calls this: no other process can be publishing at the same time.
    """
    pattern = _temporary_snapshot_name(database)
    removed = 0
    with contextlib.suppress(OSError), os.scandir(database.parent) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name):
                with contextlib.suppress(OSError):
                    Path(entry.path).unlink()
                    removed += 1
    return removed


def _publish(job: Run) -> None:
    """Publish the snapshot of a committed run; a failure is noted, since the run's data is safe."""
    job.phase = Phase.PUBLISHING
    try:
        publish_snapshot(job.settings.database)
    except Exception as error:
        job.sigterm.check()
        job.summary.issues["snapshot_not_published"] += 1
        note = (
            f"the run's results are committed, but publishing the read-only snapshot failed "
            f"({work.error_text(error)}); readers see the previous snapshot until a run publishes again"
        )
        job.summary.message = f"{job.summary.message}; {note}" if job.summary.message else note


def _settle(summary: RunSummary) -> None:
    if summary.outcome != "running":
        return
    if summary.message.startswith("stopped early"):
        summary.outcome = OUTCOME_STOPPED
    elif summary.errors:
        summary.outcome = OUTCOME_PARTIAL
    else:
        summary.outcome = OUTCOME_SUCCEEDED
    summary.exit_code = EXIT_OK


def run(settings: RunSettings, processor: Processor, lease: Lease) -> RunSummary:
    """Run ``processor`` once under ``lease``; every ending is a summary with an exit code.

    Raises nothing for run-level problems: they become the summary's outcome. (Bad settings are
    the caller's to reject before calling.)
    """
    job = Run(settings, processor, lease)
    summary = job.summary
    holding = False
    try:
        with sigterm_raises(job.sigterm):
            try:
                job.sigterm.received = early_sigterm.received()  # a SIGTERM before the run began
                job.sigterm.check()
                waiting_until = time.monotonic() + settings.lease_wait_seconds
                job.epoch = lease.acquire(settings.lease_wait_seconds)
                holding = True
                stale = remove_stale_snapshots(settings.database)
                if stale:
                    summary.issues["stale_snapshot_copy_removed"] += stale
                job.phase = Phase.WRITING
                con = job.open(waiting_until)
                job.process_all(con)
                job.sigterm.check()
                _settle(summary)
                job.finish(con)
                _publish(job)
            except LeaseNotAcquired as error:
                summary.outcome, summary.exit_code = OUTCOME_LEASE_NOT_ACQUIRED, EXIT_LEASE_NOT_ACQUIRED
                summary.message = str(error)
            except LeaseLost as error:
                summary.outcome, summary.exit_code = OUTCOME_LEASE_LOST, EXIT_LEASE_LOST
                summary.message = f"lease lost, stopped writing: {error}"
                _abandon(job)
            except Terminated:
                _terminated(job)
            except FailRun as error:
                summary.outcome, summary.exit_code = OUTCOME_FAILED, EXIT_FAILED
                summary.message = str(error)
                _close_after_failure(job)
            except Exception as error:
                if job.sigterm.received:  # DuckDB's "Query interrupted" in place of Terminated
                    _terminated(job)
                else:
                    summary.outcome, summary.exit_code = OUTCOME_FAILED, EXIT_FAILED
                    summary.message = work.error_text(error)
                    _close_after_failure(job)
    finally:
        if holding:
            lease.release()
        summary.finished = summary.finished or _now()
        if settings.termination_log is not None:
            write_termination_message(summary, settings.termination_log)
    return summary


#: What a SIGTERM summary says, by how far the run got.
TERMINATED_MESSAGES = {
    Phase.STARTING: "terminated by SIGTERM before the run started: nothing was written",
    Phase.WRITING: "terminated by SIGTERM; the open transaction was rolled back",
    Phase.PUBLISHING: (
        "terminated by SIGTERM while publishing the read-only snapshot: the run's results were committed "
        "and recorded; the snapshot was not updated"
    ),
}


def _terminated(job: Run) -> None:
    summary = job.summary
    summary.outcome, summary.exit_code = OUTCOME_TERMINATED, EXIT_TERMINATED
    summary.message = TERMINATED_MESSAGES[job.phase]
    _close_after_failure(job)


def _abandon(job: Run) -> None:
    """After losing the lease: write nothing more, just drop the connection."""
    if job.con is not None:
        with contextlib.suppress(duckdb.Error):
            job.con.close()
        job.con = None


def _close_after_failure(job: Run) -> None:
    """Record a failed or terminated run if the database is usable, then close it."""
    con = job.con
    if con is None:
        return
    try:
        job.finish(con)
    except (duckdb.Error, LeaseLost, Terminated):
        _abandon(job)
