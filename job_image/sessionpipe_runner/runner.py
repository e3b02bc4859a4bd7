"""One run of one processor over the sessions volume, into the database, under the writer lease.

The order of a run (docs/architecture.md, "Order of a run"): take the lease; open the database and migrate; record
the writer epoch; scan and decide; read, hash and process the candidates, writing each session's
rows together with its state row in one transaction; checkpoint (or leave the transactions in
DuckDB's log); publish the read-only snapshot (or the log beside it); release the lease; report the
summary.

This module holds that order and the counting of each candidate's outcome. Its parts live beside
it: the fence in :mod:`.fencing`, batches and their split-retry in :mod:`.batches`, SIGTERM in
:mod:`.signals`, the snapshot in :mod:`.snapshot`, and the SQL of the runner's tables in
:mod:`.store`.

Why this file is a little over 400 lines: what remains is one loop, the order of a run with the
counting of every candidate's outcome (and the progress reported from it); split further, a reader
would follow one run across files.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sessionpipe_contract import (
    EXIT_FAILED,
    EXIT_LEASE_LOST,
    EXIT_LEASE_NOT_ACQUIRED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    OUTCOME_FAILED,
    OUTCOME_LEASE_LOST,
    OUTCOME_LEASE_NOT_ACQUIRED,
    OUTCOME_PARTIAL,
    OUTCOME_STOPPED,
    OUTCOME_SUCCEEDED,
    OUTCOME_TERMINATED,
)
from sessionpipe_runner import batches, inflight, scanindex, signals, snapshot, store, tables, work
from sessionpipe_runner.batches import Batch, BatchWriter
from sessionpipe_runner.fencing import Fence
from sessionpipe_runner.lease import Lease, LeaseLost, LeaseNotAcquired
from sessionpipe_runner.processors.base import BadSettings, FailRun, Processor, RunContext, SessionFile, StopRun
from sessionpipe_runner.progress import Progress
from sessionpipe_runner.reading import Committed
from sessionpipe_runner.scan import Decision, new_files, plan
from sessionpipe_runner.settings import RunSettings
from sessionpipe_runner.signals import Sigterm, Terminated, sigterm_raises
from sessionpipe_runner.snapshot import snapshot_path
from sessionpipe_runner.store import runs
from sessionpipe_runner.store.state import StateRow
from sessionpipe_runner.summary import RunSummary, write_termination_message
from sessionpipe_runner.work import Examined, Outcome

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

__all__ = ["Phase", "Run", "RunSettings", "Terminated", "run", "snapshot_path"]

OPEN_RETRY_SECONDS = 0.2
#: Outcomes of candidates that could not be read: skipped, counted under the outcome's name.
_NOT_READ = frozenset({Outcome.VANISHED, Outcome.UNREADABLE, Outcome.SYMLINK_SKIPPED, Outcome.NOT_A_FILE})
#: Outcomes that leave a session as it was, for the next run: skipped, counted under the outcome's name.
_LEFT_AS_IS = frozenset({Outcome.PENDING})
#: Outcomes of candidates whose processing already happened: with calls in flight, some finish after
#: another's StopRun, and what they cost is kept, not thrown away.
_PAID = frozenset({Outcome.PROCESSED, Outcome.FAILED})


class Phase:
    """How far a run got, which decides what a SIGTERM summary can truthfully say."""

    STARTING = "starting"  # nothing written yet: waiting for the lease, or not even that
    WRITING = "writing"  # the database is open: an open transaction is rolled back
    PUBLISHING = "publishing"  # everything is committed; the snapshot is being published


def _now() -> datetime:
    return datetime.now(UTC)


class Run:
    """The state of one run in progress; :func:`run` is the way to use it."""

    def __init__(
        self,
        settings: RunSettings,
        processor: Processor,
        lease: Lease,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_progress = on_progress
        self.processor = processor
        self.lease = lease
        self.fence = Fence(lease)
        self.summary = RunSummary(
            processor=processor.name,
            processor_version=processor.version,
            run_id=os.urandom(8).hex(),  # uuid4's randomness, without importing uuid (and platform)
            started=_now(),
            lease=lease.name,
        )
        self.con: duckdb.DuckDBPyConnection | None = None
        self.sigterm = Sigterm()
        self.states: dict[str, StateRow] = {}
        self.phase = Phase.STARTING
        self.progress: Progress | None = None
        #: Whether this run committed anything readers see besides its own run record (a
        #: migration, a session's rows or state, a vanished mark): only then is a snapshot due.
        self.changed = False
        #: Whether a run before this one left the snapshot behind (:func:`.snapshot.mark_due`).
        self.publish_due = False
        #: Whether :meth:`finish` checkpointed the database (else the snapshot gets its log).
        self.checkpointed = True
        #: The scan started before the database was opened (``None``: not started).
        self.pending_scan: scanindex.PendingScan | None = None
        #: The scan index's file being written (``None``: none is).
        self.writing: threading.Thread | None = None
        #: The scan index this run trusted (``None``: none was), to make the next one from.
        self.scan_index: scanindex.Trusted | None = None

    # --- phases ---------------------------------------------------------------------------
    def open(self, lease_deadline: float) -> duckdb.DuckDBPyConnection:
        con = self._connect(lease_deadline)
        self.con = con
        self.changed |= bool(store.migrate(con, self.processor))
        with store.transaction(con):
            epoch = self.fence.claim(con, processor=self.processor.name, run_id=self.summary.run_id, now=_now())
            runs.record_start(con, self.summary, epoch)
            # With the lease ours, an earlier run still recorded as running was killed.
            runs.mark_abandoned(con, epoch)
        self.summary.writer_epoch = epoch
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
        """Scan, decide, and examine and commit the candidates."""
        settings = self.settings
        self.processor.start(
            RunContext(
                run_id=self.summary.run_id,
                database=settings.database,
                config=settings.config,
                environ=settings.environ,
                connection=con,
            )
        )
        candidates, files_total, bytes_total = self._plan(con)
        self.progress = Progress(
            processor=self.processor.name,
            files_total=files_total,
            bytes_total=bytes_total,
            started=time.monotonic(),
        )
        self._report_progress()
        workers = 0
        if not settings.max_sessions:  # a cap counts attempts one by one, in order
            workers = work.worker_count(settings.workers, self.processor, bytes_total)
        if workers:
            self.summary.workers = workers
            if self.processor.write_takes_arrow:
                tables.arrow_scans()  # before the worker threads exist (see there)
            pool = work.WorkerPool(workers, self.processor, self._columns(con))
            try:
                # While the workers read the first files, the runner loads what their rows' insert needs.
                preload = tables.load_arrow_insert if self.processor.write_takes_arrow else None
                self._consume(con, pool.examine(candidates, meanwhile=preload))
            finally:
                pool.close()
        elif (in_flight := self.processor.calls_in_flight()) > 1 and not settings.max_sessions:
            threads = inflight.examine_in_threads(self.processor, candidates, in_flight)
            try:
                self._consume(con, threads, keep_paid=True)
            finally:
                threads.close()  # now, not when a traceback holding it is collected: cancels what is in flight
        else:
            self._consume(con, self._examine_here(candidates))
        if type(self.processor).finish is not Processor.finish:  # others pay no extra transaction
            self.sigterm.check()
            self.fence.commit(con, lambda: self.summary.issues.update(self.processor.finish(con)))
            self.changed = True  # what finish() wrote (a submitted batch) is for readers too

    def _plan(self, con: duckdb.DuckDBPyConnection) -> tuple[Iterable[tuple[SessionFile, Committed | None]], int, int]:
        """Scan the volume and decide: the candidates, each with what the store knows of its
        content, and how many they are and their bytes."""
        version = self.processor.version
        scanned = (self.pending_scan or self.start_scan(background=False)).compare(con, version)
        scan, compared, self.scan_index = scanned.scan, scanned.compared, scanned.trusted
        self.summary.issues.update(scan.issues)
        self.summary.scanned = len(scan)
        self._mark_vanished(con, compared.vanished, compared.reappeared)
        unsettled = compared.unsettled
        self.states = {key: state for key, state in unsettled.items() if state is not None}
        if not self.states and len(unsettled) == len(scan.keys):  # every file new: decided alike
            self.summary.unchanged += scan.unchanged
            return ((file, None) for file in new_files(scan)), len(scan.keys), sum(scan.sizes)
        decided = plan(scan, unsettled, version)
        self.summary.unchanged += decided.unchanged
        candidates: list[tuple[SessionFile, Committed | None]] = []
        for file, decision in decided.decided:
            if decision is Decision.QUARANTINED:
                self.summary.skipped += 1
                self.summary.issues["quarantined_unchanged"] += 1
            else:
                candidates.append((file, self._committed(file, decision)))
        return candidates, len(candidates), sum(file.size for file, _ in candidates)

    def start_scan(self, *, background: bool = True) -> scanindex.PendingScan:
        """Start the scan (in a thread, while the database opens)."""
        self.pending_scan = scanindex.PendingScan.of_run(self.settings, background=background)
        return self.pending_scan

    def save_scan_index(self, con: duckdb.DuckDBPyConnection) -> None:
        """Write the scan index of the state this run leaves, for the next run's scan.

        The index only saves the next run time: failing to write it (a full disk, a read-only
        folder) is logged, and the next run compares its whole scan instead.
        """
        try:
            name, version = self.processor.name, self.processor.version
            scanindex.save(con, self.settings.database, name, version, self.scan_index, self.changed, self._write_later)
        except (OSError, store.engine_error()) as error:
            log.warning("scan index not written: %s", work.error_text(error))

    def _write_later(self, write: Callable[[], None]) -> None:
        """Write the scan index's file in a thread, while the run checkpoints and publishes (joined
        before the lease is released: :meth:`join_writes`)."""

        def writing() -> None:
            try:
                write()
            except OSError as error:
                log.warning("scan index not written: %s", work.error_text(error))

        self.writing = threading.Thread(target=writing, name="scan-index")
        self.writing.start()

    def join_writes(self) -> None:
        """Wait for the scan index's file to be written."""
        if self.writing is not None:
            self.writing.join()
            self.writing = None

    def _committed(self, file: SessionFile, decision: Decision) -> Committed | None:
        """What the store knows of a file to check: its hash, and where its lines end if they are done.

        Only a file whose rows are all committed (``done``) may be processed from the end of its
        lines; a quarantined file's hash only tells a touched file from a changed one.
        """
        state = self.states.get(file.key)
        if decision is not Decision.CHECK or state is None:
            return None
        if state.status != "done":
            return Committed(state.content_hash)
        return Committed(state.content_hash, state.content_length, state.line_count)

    def _mark_vanished(self, con: duckdb.DuckDBPyConnection, vanished: list[str], reappeared: list[str]) -> None:
        """Mark files the scan no longer finds as vanished (their rows stay), and found ones as live.

        Most runs find no such file: they write nothing, and pay no transaction, here.
        """
        if not (vanished or reappeared):
            return
        name = self.processor.name
        self.fence.commit(con, lambda: store.mark_vanished(con, name, vanished, reappeared, _now()))
        self.changed = True
        if vanished:
            self.summary.issues["session_file_vanished"] += len(vanished)
        if reappeared:
            self.summary.issues["session_file_reappeared"] += len(reappeared)

    def _columns(self, con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
        return {table: store.table_columns(con, table) for table in self.processor.tables}

    def _examine_here(self, candidates: Iterable[tuple[SessionFile, Committed | None]]) -> Iterator[Examined | None]:
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

    def _consume(
        self, con: duckdb.DuckDBPyConnection, results: Iterable[Examined | None], keep_paid: bool = False
    ) -> None:
        """Count each examined candidate and commit the results in batches.

        ``keep_paid``: sessions examined at the same time as one that stopped the run (calls in
        flight) are still committed if they were processed, since their calls were paid for.
        """
        summary = self.summary
        writer = BatchWriter(
            processor=self.processor,
            fence=self.fence,
            sigterm=self.sigterm,
            summary=summary,
            states=self.states,
            max_attempts=self.settings.max_attempts,
        )
        pending = Batch()
        configured = batches.start_writing(con, self.progress.bytes_total if self.progress is not None else 0)
        for examined in results:
            self.sigterm.check()  # a processor may have caught the handler's exception
            if self.progress is not None:
                self.progress.advance(examined.file.size if examined is not None else 0)
                self._report_progress()
            stopped = summary.stopped_early is not None
            if examined is None or (stopped and not (keep_paid and examined.outcome in _PAID)):
                summary.skipped += 1
                summary.issues["left_for_next_run"] += 1
                continue
            outcome, file, read = examined.outcome, examined.file, examined.snapshot
            if outcome in _NOT_READ:
                summary.skipped += 1
                summary.issues[outcome.value] += 1
                continue
            assert read is not None
            if read.data:  # read here, not in a worker: a batch keeps what it records, not the bytes
                read = read.without_data()
            summary.hashed += 1
            if not read.size:
                summary.issues["empty_file"] += 1
            if read.partial_tail:
                summary.issues["incomplete_last_line"] += 1
            if read.long_lines:
                summary.issues["line_too_long"] += read.long_lines
            if outcome in _LEFT_AS_IS:
                summary.skipped += 1
                summary.issues[outcome.value] += 1
            elif outcome is Outcome.TOUCHED_UNCHANGED:
                summary.skipped += 1
                summary.issues["touched_unchanged"] += 1
                pending.seen.append((file.key, file.size, file.mtime_ns))
            elif outcome is Outcome.STOP_RUN:
                error = examined.error
                summary.stopped_early = error.reason if isinstance(error, StopRun) else str(error)
                summary.skipped += 1
                summary.issues["left_for_next_run"] += 1
                continue
            elif outcome is Outcome.FAIL_RUN:
                writer.commit_rest(con, pending)  # keep what this run already achieved
                raise examined.error if isinstance(examined.error, FailRun) else FailRun(str(examined.error))
            elif outcome is Outcome.FAILED:
                pending.failures.append((file, read, examined.error or RuntimeError("failed")))
            else:
                assert examined.output is not None
                writer.hold(pending, file, examined.output, read)
            progress = self.progress
            bytes_done, bytes_total = (progress.bytes_done, progress.bytes_total) if progress is not None else (0, 0)
            pending = writer.commit_due(con, pending, bytes_done, bytes_total)
        writer.commit_rest(con, pending)
        if configured:
            batches.end_writing(con)
        self.changed |= writer.commits > 0
        if summary.stopped_early is not None:
            summary.message = f"stopped early: {summary.stopped_early}"

    def _report_progress(self) -> None:
        """Tell the watcher (a bar, a log, the Lease) how far the run got; never fails the run."""
        if self.on_progress is None or self.progress is None:
            return
        try:
            self.on_progress(self.progress)
        except Exception as error:  # a closed terminal must not cost the run its results
            self.summary.issues["progress_not_shown"] += 1
            self.on_progress = None
            log.warning("progress display failed and was turned off: %s", work.error_text(error))

    def finish(self, con: duckdb.DuckDBPyConnection) -> None:
        """Record the run; checkpoint, unless the snapshot gets the log instead; close."""
        self.summary.finished = _now()
        self.fence.commit(con, lambda: runs.record_end(con, self.summary))
        self.checkpointed = snapshot.checkpoint_needed(self.settings.database, publishing=_publishing(self))
        # Without a checkpoint, DuckDB's own at closing is turned off too: the log stays beside the
        # database, which the next open replays.
        con.execute("CHECKPOINT" if self.checkpointed else "PRAGMA disable_checkpoint_on_shutdown")
        con.close()
        self.con = None


def _publishing(job: Run) -> bool:
    """Whether the run publishes the snapshot: it changed what readers see, a run before it left
    the snapshot behind, or there is none yet.

    A run that changed nothing keeps the published snapshot: it holds the same data (only this
    run's own record is missing from it), and copying the whole database made a run with nothing
    to do cost as much as the database is large.
    """
    return job.changed or job.publish_due or not snapshot_path(job.settings.database).is_file()


def _publish(job: Run) -> None:
    """Publish the snapshot of a committed run (:func:`_publishing`): the database if the run
    checkpointed it, else its log (:func:`.snapshot.checkpoint_needed`); a failure is noted, since
    the run's data is safe."""
    if not _publishing(job):
        with contextlib.suppress(OSError):  # else the next run publishes, which costs only time
            snapshot.clear_due(job.settings.database)
        return
    job.phase = Phase.PUBLISHING
    try:
        if job.checkpointed:
            snapshot.publish_snapshot(job.settings.database, retire_old=True)
        else:
            snapshot.publish_log(job.settings.database)
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
    if summary.stopped_early is not None:
        summary.outcome = OUTCOME_STOPPED
    elif summary.errors:
        summary.outcome = OUTCOME_PARTIAL
    else:
        summary.outcome = OUTCOME_SUCCEEDED
    summary.exit_code = EXIT_OK


def run(
    settings: RunSettings,
    processor: Processor,
    lease: Lease,
    on_progress: Callable[[Progress], None] | None = None,
    *,
    scan: scanindex.PendingScan | None = None,
) -> RunSummary:
    """Run ``processor`` once under ``lease``; every ending is a summary with an exit code.

    ``on_progress`` is called with the run's :class:`Progress` once the candidates are known and
    after each one is dealt with (it throttles itself). ``scan``, if given, is this run's scan,
    started early (:meth:`.PendingScan.of_run`); else the run starts it once it holds the lease.
    Either way, the walk has ended when this returns.

    Raises nothing for run-level problems: they become the summary's outcome. (Bad settings are
    the caller's to reject before calling.)
    """
    job = Run(settings, processor, lease, on_progress)
    job.pending_scan = scan
    summary = job.summary
    holding = False
    freeing: threading.Thread | None = None
    try:
        with sigterm_raises(job.sigterm), fewer_collections():
            try:
                job.sigterm.received = signals.received_early()  # a SIGTERM before the run began
                job.sigterm.check()
                waiting_until = time.monotonic() + settings.lease_wait_seconds
                job.fence.epoch = lease.acquire(settings.lease_wait_seconds)
                holding = True
                stale = snapshot.remove_stale_snapshots(settings.database)
                if stale:
                    summary.issues["stale_snapshot_copy_removed"] += stale
                freeing = snapshot.free_retired_snapshots_in_background(settings.database)
                job.publish_due = snapshot.mark_due(settings.database)
                job.phase = Phase.WRITING
                if job.pending_scan is None:
                    job.start_scan()
                con = job.open(waiting_until)
                job.process_all(con)
                job.save_scan_index(con)
                job.sigterm.check()
                _settle(summary)
                job.finish(con)
                freeing.join()  # it removes retired copies: not the one this publish makes the spare
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
                bad_settings = isinstance(error, BadSettings)
                summary.outcome, summary.exit_code = OUTCOME_FAILED, EXIT_USAGE if bad_settings else EXIT_FAILED
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
        if job.pending_scan is not None:
            job.pending_scan.join()
        job.join_writes()
        if freeing is not None:
            freeing.join()
        if holding:
            lease.release()
        summary.finished = summary.finished or _now()
        if settings.termination_log is not None:
            write_termination_message(summary, settings.termination_log)
    return summary


#: Allocations (less deallocations) between the garbage collector's youngest-generation passes
#: during a run (Python's default is 700).
RUN_GC_THRESHOLD = 50_000


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect garbage rarely during a run, and never look at what existed before it.

    A run makes several objects per file (its read, its output, its outcome) and few cycles, and
    each full collection walked every object the imports made (DuckDB's, pyarrow's): ~3 % of a
    cold run's CPU, with the GIL held (bench/README.md, "Session 10"). What exists when the run
    starts is frozen (:func:`gc.freeze`) and the youngest generation collected at
    :data:`RUN_GC_THRESHOLD`; both are given back after.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(RUN_GC_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


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
        with contextlib.suppress(store.engine_error()):
            job.con.close()
        job.con = None


def _close_after_failure(job: Run) -> None:
    """Record a failed or terminated run if the database is usable, then close it."""
    con = job.con
    if con is None:
        return
    try:
        job.finish(con)
    except (store.engine_error(), LeaseLost, Terminated):
        _abandon(job)
