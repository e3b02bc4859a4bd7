"""Reading and processing one candidate file, in the runner's process or in worker processes.

:func:`examine` is the whole of what happens to a candidate before the database: read it, tell a
touched file from a changed one, run the processor. The runner calls it in its own process, or,
for a processor that declares :attr:`~sessionpipe_runner.processors.base.Processor.parallel` and a
run with enough to do, hands chunks of candidates to a :class:`WorkerPool`: the workers examine
them, turn the rows into one Arrow table per processor table (so nothing is pickled row by row),
and the runner, still the only writer, commits what comes back in order. The workers are threads
of the runner's process for a processor that
:attr:`~sessionpipe_runner.processors.base.Processor.releases_gil`, else processes.
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from operator import itemgetter
from pathlib import Path
from types import EllipsisType, ModuleType
from typing import TYPE_CHECKING, Any

from sessionpipe_runner.names import valid_text
from sessionpipe_runner.processors.base import (
    FailRun,
    Output,
    Pending,
    Processor,
    SessionFile,
    StopRun,
    check_declared_tables,
)
from sessionpipe_runner.reading import (
    Committed,
    NotARegularFile,
    Snapshot,
    SymlinkRefused,
    compiled_reading,
    read_snapshot,
)

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor
    from multiprocessing.pool import Pool

    import pyarrow as pa

ERROR_TEXT_LIMIT = 2000
#: A chunk handed to a worker holds at most this many files, or this many bytes.
CHUNK_FILES = 64
CHUNK_BYTES = 8 * 1024 * 1024
#: Chunks handed to each worker ahead of the one the runner waits for. The workers examine them
#: while the runner commits a batch (a whole row group takes it 0.1-0.2 s): with 8, they ran out
#: of work during each commit (bench/README.md, "Session 9: cold run"). A chunk in flight holds
#: its files' rows, not their bytes: 32 cost ~10 MB more peak memory than 16 for no clear gain.
IN_FLIGHT_CHUNKS = 16
#: With ``workers`` left to the runner, candidates must add up to this much for workers to pay off
#: (starting one costs an interpreter and the processor's imports).
AUTO_PARALLEL_MIN_BYTES = 32 * 1024 * 1024
PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>


class Outcome(Enum):
    """What became of one examined candidate."""

    VANISHED = "vanished"  # deleted between the scan and the read
    UNREADABLE = "unreadable"
    SYMLINK_SKIPPED = "symlink_skipped"  # a symlink swapped in below the sessions root since the scan
    NOT_A_FILE = "not_a_file"  # a FIFO, a device or a folder swapped in since the scan
    TOUCHED_UNCHANGED = "touched_unchanged"  # new size or mtime, same complete lines
    PROCESSED = "processed"
    FAILED = "failed"  # the processor raised: counted against the session's attempts
    STOP_RUN = "stop_run"
    FAIL_RUN = "fail_run"
    PENDING = "waiting_for_result"  # the processor's result is on its way (a batch): try again next run

    # Members are singletons compared by identity: hashed by it too, in C (Enum's own hash is a
    # Python call, and the runner looks each candidate's outcome up in sets).
    __hash__ = object.__hash__


class ProcessingError(Exception):
    """A processor's exception as text (from a worker, where the exception itself stays)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def error_text(error: BaseException) -> str:
    """How a failure is recorded: the exception's type and message, bounded, valid UTF-8."""
    text = error.text if isinstance(error, ProcessingError) else f"{type(error).__name__}: {error}"
    return valid_text(text[:ERROR_TEXT_LIMIT])


@dataclass
class Examined:
    """One candidate after :func:`examine`."""

    file: SessionFile  # with the size and mtime of the bytes read
    outcome: Outcome
    snapshot: Snapshot | None = None
    output: Output | None = None
    error: BaseException | None = None

    @property
    def attempted(self) -> bool:
        """Whether the processor was called (what ``--max-sessions`` counts)."""
        return self.outcome in (Outcome.PROCESSED, Outcome.FAILED, Outcome.STOP_RUN, Outcome.FAIL_RUN)


def examine(
    processor: Processor, file: SessionFile, known: Committed | None, reading: ModuleType | EllipsisType | None = ...
) -> Examined:
    """Read ``file`` and process it, unless its complete lines still hash to what is ``known``.

    A file whose committed lines (``known``) are still there unchanged is given to an
    :attr:`~Processor.appendable` processor from their end: only the lines appended since.
    ``reading`` is :func:`~sessionpipe_runner.reading.compiled_reading` if the caller looked it up.
    Never raises for the file's or the processor's sake: every ending is an :class:`Outcome`.
    """
    try:
        committed = known if processor.appendable else None
        snapshot = read_snapshot(file.location, file.root, committed=committed, compiled=reading)
    except OSError as error:
        return _unread(file, error)
    file = _as_read(file, snapshot)
    if known is not None and known.content_hash == snapshot.content_hash:
        return Examined(file, Outcome.TOUCHED_UNCHANGED, snapshot)
    try:
        if snapshot.appended_from:
            output = processor.process_appended(file, snapshot.appended, snapshot.first_line)
            output.appended = True
        else:
            output = processor.process(file, snapshot.data)
    except StopRun as stop:
        return Examined(file, Outcome.STOP_RUN, snapshot, error=stop)
    except FailRun as error:
        return Examined(file, Outcome.FAIL_RUN, snapshot, error=error)
    except Pending as error:
        return Examined(file, Outcome.PENDING, snapshot, error=error)
    except Exception as error:
        return Examined(file, Outcome.FAILED, snapshot, error=error)
    return Examined(file, Outcome.PROCESSED, snapshot, output)


def _unread(file: SessionFile, error: OSError) -> Examined:
    """A candidate that could not be read, by why."""
    if isinstance(error, FileNotFoundError):
        return Examined(file, Outcome.VANISHED)
    if isinstance(error, SymlinkRefused):
        return Examined(file, Outcome.SYMLINK_SKIPPED)
    if isinstance(error, NotARegularFile):
        return Examined(file, Outcome.NOT_A_FILE)
    return Examined(file, Outcome.UNREADABLE)


def _as_read(file: SessionFile, snapshot: Snapshot) -> SessionFile:
    """``file`` with the size and mtime of the bytes read (as a rule the scan's already)."""
    if (snapshot.size, snapshot.mtime_ns) != (file.size, file.mtime_ns):  # dataclasses.replace: 4 µs
        return replace(file, size=snapshot.size, mtime_ns=snapshot.mtime_ns)
    return file


def _read_and_processed(
    processor: Processor, tasks: Sequence[tuple[SessionFile, Committed | None]]
) -> list[Examined | None]:
    """The :meth:`~Processor.read_and_process` of a chunk's new files (``None`` for the others, and
    for all when the processor offers nothing or its call raises: the per-file way then decides)."""
    new = [index for index, (_, known) in enumerate(tasks) if known is None]
    done: list[Examined | None] = [None] * len(tasks)
    if not new:
        return done
    try:
        results = processor.read_and_process([tasks[index][0] for index in new])
    except Exception:
        return done
    if results is None or len(results) != len(new):  # a result per file, or none is trusted
        return done
    for index, result in zip(new, results, strict=True):
        file = tasks[index][0]
        if isinstance(result, OSError):
            done[index] = _unread(file, result)
        elif result is not None:
            snapshot, output = result
            done[index] = Examined(_as_read(file, snapshot), Outcome.PROCESSED, snapshot, output)
    return done


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 CPU limit (a pod's)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def worker_count(requested: int, processor: Processor, candidate_bytes: int) -> int:
    """How many workers a run uses; 0 means the runner processes in its own thread.

    ``requested`` is the ``--workers`` setting: 1 or less processes in-process, 0 chooses (one
    per available CPU when the candidates are large enough), more asks for that many.
    """
    if not processor.parallel:
        return 0
    if type(processor).write is not Processor.write and not processor.write_takes_arrow:
        return 0  # workers hand back rows as Arrow tables, which the processor's write would not store
    if requested == 0:
        cpus = available_cpus()
        return cpus if cpus > 1 and candidate_bytes >= AUTO_PARALLEL_MIN_BYTES else 0
    return requested if requested > 1 else 0


# --- worker processes ---------------------------------------------------------------------

#: Arrow types for DuckDB column types, so every chunk's table has the same schema (inferred types
#: differ where a chunk's column is all null). Other types are left to inference.
_ARROW_TYPES = {
    "VARCHAR": "string",
    "BIGINT": "int64",
    "INTEGER": "int32",
    "BOOLEAN": "bool_",
    "DOUBLE": "float64",
    "TIMESTAMP WITH TIME ZONE": "utc_timestamp",
}

_worker_processor: Processor | None = None
_worker_columns: Mapping[str, Sequence[tuple[str, str]]] = {}


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when the runner dies, even by SIGKILL (Linux)."""
    import ctypes  # here: only runs with worker processes start one

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: the pool's own shutdown is all there is
    if os.getppid() != parent:  # the runner died before the request above
        os._exit(1)


def _init_worker(parent: int, processor: Processor, columns: Mapping[str, Sequence[tuple[str, str]]]) -> None:
    global _worker_processor, _worker_columns
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner handles Ctrl-C and stops the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker_processor, _worker_columns = processor, columns


def _arrow_type(duckdb_type: str) -> pa.DataType | None:
    import pyarrow as pa

    name = _ARROW_TYPES.get(duckdb_type)
    if name is None:
        return None
    if name == "utc_timestamp":
        return pa.timestamp("us", tz="UTC")
    factory: Any = getattr(pa, name)
    return factory()


def to_arrow(rows: Sequence[tuple[Any, ...]], columns: Sequence[tuple[str, str]]) -> pa.Table:
    """Rows (tuples in column order) as an Arrow table typed after the DuckDB columns.

    Raises ``ValueError`` (a row of the wrong width) or an Arrow error (a value of the wrong type).
    """
    import pyarrow as pa

    width = len(columns)
    for row in rows:
        if len(row) != width:
            raise ValueError(f"the table has {width} columns, a row has {len(row)}: {row!r}")
    # One pass per column: zip(*rows) makes an iterator per row, which wakes the garbage collector.
    return pa.table(
        {
            name: pa.array(list(map(itemgetter(index), rows)), type=_arrow_type(kind))
            for index, (name, kind) in enumerate(columns)
        }
    )


@dataclass
class Chunk:
    """The examined files of one chunk, their rows as one Arrow table per processor table."""

    examined: list[Examined]
    tables: dict[str, pa.Table] = field(default_factory=dict)
    row_counts: list[dict[str, int]] = field(default_factory=list)  # per examined file, per table


def _fail(examined: Examined, error: BaseException) -> None:
    examined.outcome, examined.output = Outcome.FAILED, None
    examined.error = ProcessingError(error_text(error))


def _tables(examined: Sequence[Examined], columns: Mapping[str, Sequence[tuple[str, str]]]) -> dict[str, pa.Table]:
    outputs = [one.output for one in examined if one.output is not None]
    return {
        table: to_arrow([row for output in outputs for row in output.rows.get(table, ())], table_columns)
        for table, table_columns in columns.items()
        if any(table in output.rows for output in outputs)  # none: an output of columns (usage's)
    }


def _examine_chunk(tasks: Sequence[tuple[SessionFile, Committed | None]]) -> Chunk:
    """A worker process's task: its initializer set the processor and the tables' columns."""
    assert _worker_processor is not None, "worker used before its initializer ran"
    return examine_chunk(_worker_processor, _worker_columns, tasks)


def examine_chunk(
    processor: Processor,
    columns: Mapping[str, Sequence[tuple[str, str]]],
    tasks: Sequence[tuple[SessionFile, Committed | None]],
) -> Chunk:
    """Examine a chunk of candidates; their rows become one Arrow table per table in ``columns``."""
    chunk = Chunk(examined=[])
    reading = compiled_reading()  # once per chunk: an environment lookup per file cost ~2 µs
    done = _read_and_processed(processor, tasks) if reading is not None else [None] * len(tasks)
    for (file, known), read in zip(tasks, done, strict=True):
        examined = examine(processor, file, known, reading) if read is None else read
        if examined.snapshot is not None:
            examined.snapshot = examined.snapshot.without_data()
        if examined.outcome is Outcome.FAILED and examined.error is not None:
            _fail(examined, examined.error)  # any exception travels as text
        elif examined.error is not None:
            examined.error = type(examined.error)(str(examined.error))  # StopRun, FailRun
        elif examined.output is not None:
            try:  # before the rows become Arrow tables by the processor's tables
                check_declared_tables(file, examined.output, processor.tables)
            except ValueError as error:
                _fail(examined, error)
        chunk.examined.append(examined)
    try:
        chunk.tables = _tables(chunk.examined, columns)
    except Exception:
        # Fail the sessions whose rows do not fit, then convert the rest. Every table is rebuilt,
        # so no table keeps rows of a session failed because of another table.
        for examined in chunk.examined:
            if examined.output is not None:
                try:
                    _tables([examined], columns)
                except Exception as error:
                    _fail(examined, error)
        chunk.tables = _tables(chunk.examined, columns)
    for examined in chunk.examined:
        counts: dict[str, int] = {}
        if examined.output is not None:
            counts = {table: len(rows) for table, rows in examined.output.rows.items()}
            examined.output.rows = {}
        chunk.row_counts.append(counts)
    return chunk


def chunked(
    tasks: Iterable[tuple[SessionFile, Committed | None]], files: int = CHUNK_FILES, size: int = CHUNK_BYTES
) -> Iterator[list[tuple[SessionFile, Committed | None]]]:
    """Consecutive tasks grouped so that a chunk holds at most ``files`` files or about ``size`` bytes."""
    chunk: list[tuple[SessionFile, Committed | None]] = []
    chunk_bytes = 0
    for task in tasks:
        chunk.append(task)
        chunk_bytes += task[0].size
        if len(chunk) >= files or chunk_bytes >= size:
            yield chunk
            chunk, chunk_bytes = [], 0
    if chunk:
        yield chunk


class WorkerPool:
    """Workers that examine chunks of candidates; results come back in order.

    At most :data:`IN_FLIGHT_CHUNKS` chunks per worker are in flight, so memory stays bounded
    however far the writer falls behind. For a processor that :attr:`~Processor.releases_gil`, the
    workers are threads of the runner's process: its parsing runs beside the writer's DuckDB work
    (which releases the GIL too), with no interpreter to start and nothing pickled. Otherwise they
    are processes, started fresh (``spawn``): the runner has DuckDB and maybe a lease thread
    running, which a forked child must not inherit.
    """

    def __init__(self, workers: int, processor: Processor, columns: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        self.workers = workers
        self.processor = processor
        self.columns = dict(columns)
        self.executor: ThreadPoolExecutor | None = None
        self.pool: Pool | None = None
        if processor.releases_gil:
            # Not multiprocessing's ThreadPool: importing multiprocessing cost ~10 ms of the run's
            # start, and concurrent.futures is imported already (:mod:`.inflight`).
            from concurrent.futures import ThreadPoolExecutor

            self.executor = ThreadPoolExecutor(workers, thread_name_prefix="worker")
        else:
            import multiprocessing  # only runs that use worker processes pay for the import

            context = multiprocessing.get_context("spawn")
            self.pool = context.Pool(workers, initializer=_init_worker, initargs=(os.getpid(), processor, self.columns))

    def _submit(self, tasks: list[tuple[SessionFile, Committed | None]]) -> Callable[[], Chunk]:
        """Hand ``tasks`` to a worker; what waits for, and returns, their :class:`Chunk`."""
        if self.executor is not None:
            return self.executor.submit(examine_chunk, self.processor, self.columns, tasks).result
        assert self.pool is not None
        return self.pool.apply_async(_examine_chunk, (tasks,)).get

    def examine(
        self, tasks: Iterable[tuple[SessionFile, Committed | None]], meanwhile: Callable[[], object] | None = None
    ) -> Iterator[Examined]:
        """Each task's :class:`Examined`, in task order, its rows as Arrow tables in ``output.arrow``.

        ``meanwhile`` is called once the first chunks are handed out, before waiting for the first:
        work for the runner's thread that would otherwise wait.
        """
        in_flight: collections.deque[Callable[[], Chunk]] = collections.deque()
        chunks = chunked(tasks)
        window = IN_FLIGHT_CHUNKS * self.workers
        exhausted = False
        while in_flight or not exhausted:
            while not exhausted and len(in_flight) < window:
                chunk_tasks = next(chunks, None)
                if chunk_tasks is None:
                    exhausted = True
                else:
                    in_flight.append(self._submit(chunk_tasks))
            if meanwhile is not None:
                meanwhile()
                meanwhile = None
            if in_flight:
                yield from _unpack(in_flight.popleft()())

    def close(self) -> None:
        """Stop the workers now (also on SIGTERM, or when the run ends early).

        A worker thread cannot be stopped: it ends after its chunk, whose result is dropped; the
        chunks not started are dropped.
        """
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _unpack(chunk: Chunk) -> Iterator[Examined]:
    offsets = dict.fromkeys(chunk.tables, 0)
    for examined, counts in zip(chunk.examined, chunk.row_counts, strict=True):
        if examined.output is not None:
            for table, count in counts.items():
                examined.output.arrow[table] = chunk.tables[table].slice(offsets[table], count)
                examined.output.arrow_origin[table] = (chunk.tables[table], offsets[table])
                offsets[table] += count
        yield examined
