"""Batches: examined sessions held until their commit, and the commit that survives a bad session.

A batchable processor's sessions are committed many per transaction
(:data:`BATCH_SESSIONS`, :data:`BATCH_BYTES`); each session's rows go in with its state row. If a
batch's write fails, its sessions are retried one at a time, so one bad session never sinks the
others: a session whose own write fails is failed like one whose processing raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sessionpipe_runner import work
from sessionpipe_runner.lease import LeaseLost
from sessionpipe_runner.processors.base import Output, Processor, SessionFile
from sessionpipe_runner.store import state

if TYPE_CHECKING:
    import duckdb

    from sessionpipe_runner.fencing import Fence
    from sessionpipe_runner.reading import Snapshot
    from sessionpipe_runner.signals import Sigterm
    from sessionpipe_runner.store.state import StateRow
    from sessionpipe_runner.summary import RunSummary

#: A batchable processor commits at most this many sessions, or this many bytes read, per transaction.
#: (Each commit costs tens of milliseconds whatever its size: fewer, larger batches are faster, up
#: to where the batch's rows, held until the commit, cost more memory than the commits cost time.)
BATCH_SESSIONS = 2048
BATCH_BYTES = 64 * 1024 * 1024


#: DuckDB's threads while batches are written. An Arrow insert of a batch costs about half as
#: much on one thread as on two (DuckDB then merges the threads' rows back into insertion order),
#: and worker processes get the other CPUs (bench/README.md, "Session 8").
WRITE_THREADS = 1


#: DuckDB's automatic checkpoint threshold while batches are written (its default is 16 MB of WAL).
#: Each commit is in the WAL, so it is durable either way; checkpointing every few batches of a
#: cold run rewrote the table's newest row groups again and again: about 0.9 s of 7 s at 1 GB,
#: with no higher peak memory (bench/README.md, "Session 8: columnar rows"). The run's own
#: CHECKPOINT at its end does it once.
WRITE_CHECKPOINT_THRESHOLD = "1GB"


def start_writing(con: duckdb.DuckDBPyConnection) -> None:
    """Before the batches: DuckDB on :data:`WRITE_THREADS`, checkpointing at :data:`WRITE_CHECKPOINT_THRESHOLD`.

    :func:`end_writing` gives both back.
    """
    con.execute(f"SET threads = {WRITE_THREADS}")
    con.execute(f"SET checkpoint_threshold = '{WRITE_CHECKPOINT_THRESHOLD}'")


def end_writing(con: duckdb.DuckDBPyConnection) -> None:
    """After the batches: DuckDB's threads back to its default, for the checkpoint that compresses them.

    (A run whose writes end in an exception skips this: what it still writes is small.)
    """
    con.execute("RESET threads")
    con.execute("RESET checkpoint_threshold")


@dataclass
class Batch:
    """Sessions that are processed but not yet committed."""

    outputs: list[tuple[SessionFile, Output, Snapshot]] = field(default_factory=list)
    failures: list[tuple[SessionFile, Snapshot | None, BaseException]] = field(default_factory=list)
    #: Files found unchanged though touched: (key, size, mtime_ns) to record.
    seen: list[tuple[str, int, int]] = field(default_factory=list)
    bytes: int = 0

    def __len__(self) -> int:
        return len(self.outputs) + len(self.failures) + len(self.seen)

    def split(self) -> list[Batch]:
        """One batch per session (the bookkeeping of ``seen`` rides with the first)."""
        parts = [Batch(outputs=[one], bytes=one[2].length) for one in self.outputs]
        parts += [Batch(failures=[one]) for one in self.failures]
        parts[0].seen = self.seen
        return parts


def _now() -> datetime:
    return datetime.now(UTC)


class BatchWriter:
    """Commits batches behind the fence and adds what was committed to the run summary."""

    def __init__(
        self,
        *,
        processor: Processor,
        fence: Fence,
        sigterm: Sigterm,
        summary: RunSummary,
        states: Mapping[str, StateRow],
        max_attempts: int,
    ) -> None:
        self.processor = processor
        self.fence = fence
        self.sigterm = sigterm
        self.summary = summary
        self.states = states
        self.max_attempts = max_attempts
        self.commits = 0  # batches committed (each changed what readers of the database see)

    def flush(self, con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
        """Commit a batch; if the batch's write fails, retry its sessions one at a time.

        A session whose own write fails is failed like a session whose processing raised, so one
        bad session never sinks the others.
        """
        if not len(batch):
            return
        try:
            self.fence.commit(con, lambda: self._write(con, batch))
        except LeaseLost:
            raise
        except Exception as error:
            self.sigterm.check()
            if len(batch.outputs) + len(batch.failures) > 1:
                for one in batch.split():
                    self.flush(con, one)
                return
            if not batch.outputs:
                raise  # only bookkeeping failed to write: the database itself is in trouble
            file, _, snapshot = batch.outputs[0]
            failed = Batch(failures=[(file, snapshot, error)], seen=batch.seen)
            self.fence.commit(con, lambda: self._write(con, failed))
            self._count(failed)
            self.commits += 1
            return
        self._count(batch)
        self.commits += 1

    def _write(self, con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
        now = _now()
        rows: list[tuple[Any, ...]] = []
        if batch.outputs:
            self.processor.write(con, [(file, output) for file, output, _ in batch.outputs])
        for file, output, snapshot in batch.outputs:
            items = output.items + (self._committed_items(file) if output.appended else 0)
            rows.append(self._state_row(file, snapshot, items, 0, None, "done", now))
        for file, tried, error in batch.failures:
            attempts = self._previous_attempts(file) + 1
            status = "quarantined" if attempts >= self.max_attempts else "failed"
            rows.append(self._state_row(file, tried, 0, attempts, work.error_text(error), status, now))
        state.upsert_state(con, rows)
        state.update_seen(con, self.processor.name, batch.seen)

    def _count(self, batch: Batch) -> None:
        """Add a committed batch to the summary."""
        summary = self.summary
        for _, output, _ in batch.outputs:
            summary.processed += 1
            summary.appended += output.appended
            summary.items += output.items
            summary.issues.update(output.issues)
            summary.counters.update(output.counters)
        for file, _, error in batch.failures:
            summary.errors += 1
            summary.failures[file.key] = work.error_text(error)
            if self._previous_attempts(file) + 1 >= self.max_attempts:
                summary.quarantined += 1

    def _committed_items(self, file: SessionFile) -> int:
        """The items recorded for a file's committed lines (what an appended tail's items add to)."""
        known = self.states.get(file.key)
        return known.items if known is not None else 0

    def _previous_attempts(self, file: SessionFile) -> int:
        known = self.states.get(file.key)
        if known is None or known.status != "failed" or known.processor_version != self.processor.version:
            return 0
        return known.attempts

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
            # Where the committed lines end; not known of lines read in pieces around one too long.
            snapshot.length if snapshot is not None and not snapshot.long_lines else None,
            snapshot.lines if snapshot is not None and not snapshot.long_lines else None,
        )
