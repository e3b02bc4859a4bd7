"""Batches: examined sessions held until their commit, and the commit that survives a bad session.

A batchable processor's sessions are committed many per transaction
(:data:`BATCH_SESSIONS`, :data:`BATCH_BYTES`); each session's rows go in with its state row. If a
batch's write fails, its sessions are retried one at a time, so one bad session never sinks the
others: a session whose own write fails is failed like one whose processing raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sessionpipe_runner import store, work
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

#: The database's row group (:data:`sessionpipe_runner.store.ROW_GROUP_ROWS`). A transaction that
#: appends at least this many rows to a table has DuckDB write them compressed, as whole row
#: groups, straight into the database file ("optimistic writes"), and its log records only where
#: they are. Fewer go through the WAL and are compressed again by the checkpoint: every row written
#: twice. So a processor whose rows go to one table commits, while rows keep coming, batches of
#: exactly whole row groups (:func:`whole_row_groups`): a batch that ended in a part of a row group
#: would leave that part in the middle of the table, and DuckDB's checkpoints would rewrite the
#: table's row groups to merge such parts, about as costly as the log (bench/README.md, "Session 9:
#: cold run").
ROW_GROUP_ROWS = store.ROW_GROUP_ROWS
#: Rows held beyond whole row groups before such a batch is committed: the sessions to fill the
#: row groups exactly are picked from them.
ROW_GROUP_SLACK = 16_384
#: The most sessions such a batch waits with (sessions without rows add none).
ROW_GROUP_BATCH_SESSIONS = 32_768
#: The most rows held while no choice of sessions adds up to whole row groups (more sessions give
#: more choice); beyond, the run's batches go through DuckDB's log.
ROW_GROUP_HELD_ROWS = 8 * ROW_GROUP_ROWS


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


#: Below this many bytes to read, a run keeps DuckDB's settings while it writes (:func:`start_writing`):
#: its writes are a few rows in one batch, and setting and resetting them cost ~2.5 ms, most of it
#: DuckDB resizing its thread pool (1 % of an incremental run).
SMALL_WRITE_BYTES = 1 << 20


def start_writing(con: duckdb.DuckDBPyConnection, bytes_to_read: int) -> bool:
    """Before the batches: DuckDB on :data:`WRITE_THREADS`, checkpointing at :data:`WRITE_CHECKPOINT_THRESHOLD`,
    unless the run reads less than :data:`SMALL_WRITE_BYTES`; whether it did.

    :func:`end_writing` gives both back.
    """
    if bytes_to_read < SMALL_WRITE_BYTES:
        return False
    con.execute(f"SET threads = {WRITE_THREADS}")
    con.execute(f"SET checkpoint_threshold = '{WRITE_CHECKPOINT_THRESHOLD}'")
    return True


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
    rows: int = 0  # the rows of ``outputs``
    #: The rows of each of ``outputs`` (counted once: batches are sized and split by them often).
    counts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.outputs) + len(self.failures) + len(self.seen)

    def add(self, file: SessionFile, output: Output, snapshot: Snapshot, rows: int | None = None) -> int:
        """Hold a processed session (of ``rows`` rows, counted here if not given) until its commit;
        return its rows."""
        if rows is None:
            rows = output.row_count()
        self.outputs.append((file, output, snapshot))
        self.counts.append(rows)
        self.bytes += snapshot.length
        self.rows += rows
        return rows

    def take_whole_row_groups(self) -> Batch | None:
        """The sessions whose rows make whole row groups, as a batch of their own (with the failures
        and the bookkeeping of ``seen``); ``None`` when no choice adds up exactly.

        What is taken leaves this batch; the sessions left wait for the next one.
        """
        chosen = whole_row_groups(self.counts)
        if chosen is None:
            return None
        taken = Batch(failures=self.failures, seen=self.seen)
        kept: list[tuple[SessionFile, Output, Snapshot]] = []
        kept_counts: list[int] = []
        picked = set(chosen)
        for index, (one, rows) in enumerate(zip(self.outputs, self.counts, strict=True)):
            if index in picked:
                taken.add(*one, rows)
            else:
                kept.append(one)
                kept_counts.append(rows)
        self.outputs, self.counts, self.failures, self.seen = kept, kept_counts, [], []
        self.bytes -= taken.bytes
        self.rows -= taken.rows
        return taken

    def split(self) -> list[Batch]:
        """One batch per session (the bookkeeping of ``seen`` rides with the first)."""
        parts = [
            Batch(outputs=[one], bytes=one[2].length, rows=rows, counts=[rows])
            for one, rows in zip(self.outputs, self.counts, strict=True)
        ]
        parts += [Batch(failures=[one]) for one in self.failures]
        parts[0].seen = self.seen
        return parts


def whole_row_groups(counts: Sequence[int], group: int = ROW_GROUP_ROWS) -> list[int] | None:
    """Indexes of ``counts`` (rows per session) that add up to exactly the most whole ``group``\\ s
    there are, earlier sessions first; ``None`` if there are none, or no choice adds up exactly.

    Sessions are taken in order until a margin short of the whole groups; the rest is made up
    exactly from the sessions after them (a subset sum, as bits of an integer), with a wider
    margin if the first leaves too few to choose from. Sessions without rows are always taken.
    """
    total = sum(counts)
    target = total - total % group
    margin = 4096
    while target:
        chosen = _fill_after_prefix(counts, target, min(margin, target))
        if chosen is not None or margin >= target:
            return chosen
        margin *= 4
    return None


def _fill_after_prefix(counts: Sequence[int], target: int, margin: int) -> list[int] | None:
    """Sessions in order up to ``margin`` rows short of ``target``, then an exact fill from the rest."""
    chosen: list[int] = []
    taken = 0
    index = 0
    while index < len(counts) and taken + counts[index] <= target - margin:
        taken += counts[index]
        chosen.append(index)
        index += 1
    rest = range(index, len(counts))
    filled = _exact_subset([counts[i] for i in rest], target - taken)
    if filled is None:
        return None
    chosen += [rest[i] for i in filled]
    chosen += [i for i in rest if not counts[i]]
    return sorted(chosen)


def _exact_subset(counts: Sequence[int], target: int) -> list[int] | None:
    """Indexes of ``counts`` that add up to exactly ``target``, or ``None``: bit ``n`` of each
    state says that ``n`` rows can be made of the counts before it."""
    mask = (1 << (target + 1)) - 1
    states = [1]
    for count in counts:
        reachable = states[-1]
        if 0 < count <= target:
            reachable = (reachable | (reachable << count)) & mask
        states.append(reachable)
        if reachable >> target & 1:
            break
    if not states[-1] >> target & 1:
        return None
    chosen = []
    remaining = target
    for index in range(len(states) - 2, -1, -1):
        if remaining and not states[index] >> remaining & 1:  # not reachable without this one
            chosen.append(index)
            remaining -= counts[index]
    return chosen[::-1]


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
        #: Whether batches are committed as whole row groups (:data:`ROW_GROUP_ROWS`): for a
        #: batchable processor whose rows all go to one table.
        self.whole_row_groups = processor.batchable and len(processor.tables) == 1
        self.session_limit = BATCH_SESSIONS if processor.batchable else 1
        self.rows_held = 0  # rows of the sessions handed to commit_due so far, committed or not
        self.small_batches = False  # once one is committed, the run's batches stay small
        #: When no choice made whole row groups: the rows held before the next try.
        self.retry_at_rows = 0

    def commit_due(self, con: duckdb.DuckDBPyConnection, pending: Batch, bytes_done: int, bytes_total: int) -> Batch:
        """Commit what of ``pending`` is due, given the candidates' bytes dealt with so far and in
        all; return the sessions still held.

        While the run's rows will still fill a row group, sessions are held until the batch can be
        whole row groups; else (and for processors with several tables or none) batches are
        :data:`BATCH_SESSIONS` sessions or :data:`BATCH_BYTES` read, and less than a row group.
        """
        if self.whole_row_groups and not self.small_batches:
            if not self._tail(pending, bytes_done, bytes_total):
                if pending.rows < max(ROW_GROUP_ROWS + ROW_GROUP_SLACK, self.retry_at_rows):
                    if len(pending) < ROW_GROUP_BATCH_SESSIONS:
                        return pending
                else:
                    taken = pending.take_whole_row_groups()
                    if taken is not None:
                        self.retry_at_rows = 0
                        self.flush(con, taken)
                        return pending
                    if pending.rows < ROW_GROUP_HELD_ROWS and len(pending) < ROW_GROUP_BATCH_SESSIONS:
                        self.retry_at_rows = pending.rows + ROW_GROUP_SLACK // 4
                        return pending
            self.small_batches = True
        return self._commit_small(con, pending, final=False)

    def commit_rest(self, con: duckdb.DuckDBPyConnection, pending: Batch) -> None:
        """At the end of the candidates: commit all that is held, whole row groups first."""
        while self.whole_row_groups and not self.small_batches and pending.rows >= ROW_GROUP_ROWS:
            taken = pending.take_whole_row_groups()
            if taken is None:
                break
            self.flush(con, taken)
        self._commit_small(con, pending, final=True)

    def _tail(self, pending: Batch, bytes_done: int, bytes_total: int) -> bool:
        """Whether the rows still to come, at the rows per byte so far, will not fill a row group.

        Decided only once an eighth of the bytes are read (before, a guess would be a poor one).
        """
        if not bytes_done or bytes_done * 8 < bytes_total:
            return False
        rows_to_come = (bytes_total - bytes_done) * self.rows_held / bytes_done
        return pending.rows + rows_to_come < ROW_GROUP_ROWS

    def _commit_small(self, con: duckdb.DuckDBPyConnection, pending: Batch, *, final: bool) -> Batch:
        """Commit ``pending`` in batches of less than a row group (through DuckDB's log), as they
        fill up, or all of it if ``final``; return what is still held."""
        full = len(pending) >= self.session_limit or pending.bytes >= BATCH_BYTES or pending.rows >= ROW_GROUP_ROWS
        if not (final or full):
            return pending
        small = Batch()
        for (file, output, snapshot), rows in zip(pending.outputs, pending.counts, strict=True):
            piece_full = small.rows + rows >= ROW_GROUP_ROWS or len(small) >= self.session_limit
            if small.outputs and piece_full:
                self.flush(con, small)
                small = Batch()
            small.add(file, output, snapshot, rows)
        small.failures, small.seen = pending.failures, pending.seen
        if final or len(small) >= self.session_limit or small.bytes >= BATCH_BYTES:
            self.flush(con, small)
            return Batch()
        return small

    def hold(self, pending: Batch, file: SessionFile, output: Output, snapshot: Snapshot) -> None:
        """Hold a processed session in ``pending`` until its commit."""
        self.rows_held += pending.add(file, output, snapshot)

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
        # A session with no state row when the run planned (every one, in a first run) has none to replace.
        state.upsert_state(con, rows, replacing=any(row[1] in self.states for row in rows))
        state.update_seen(con, self.processor.name, batch.seen)

    def _count(self, batch: Batch) -> None:
        """Add a committed batch to the summary."""
        summary = self.summary
        for _, output, _ in batch.outputs:
            summary.processed += 1
            summary.appended += output.appended
            summary.items += output.items
            if output.issues:  # most sessions have none: Counter.update is a Python call
                summary.issues.update(output.issues)
            if output.counters:
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
