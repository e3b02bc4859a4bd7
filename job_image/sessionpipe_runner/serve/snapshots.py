"""The snapshot the dashboard reads: opened read-only, reopened when a run publishes a new one.

A run publishes its snapshot by renaming a fresh copy over the old name (:mod:`..snapshot`), or a
fresh copy of DuckDB's log over the log beside it, so the identity of the two files (device, inode,
size, modification time) changes exactly when there is a new one. Each use compares it with the
identity of the files open and reopens on a change. The old
file becomes the publisher's spare, which the next publish patches only once no reader holds
DuckDB's lock on it: the open connection keeps reading it unchanged until it is closed. The
dashboard never opens the database a run writes: DuckDB's file lock would make that run wait.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from sessionpipe_runner import store
from sessionpipe_runner.snapshot import log_path, snapshot_path

#: (device, inode, size, modification time in ns) of a snapshot file, then of its log (zeros: none).
Identity = tuple[int, int, int, int, int, int, int, int]


@dataclass(frozen=True)
class OpenSnapshot:
    """A snapshot as opened: its connection, the names of its tables and views, its file's identity."""

    con: duckdb.DuckDBPyConnection
    tables: frozenset[str]
    identity: Identity

    @property
    def published(self) -> float:
        """When it was published (seconds since the epoch): the newer of the file's and its log's times."""
        return max(self.identity[3], self.identity[7]) / 1e9

    def has(self, table: str) -> bool:
        """Whether the snapshot has this table or view (a processor that never ran has none)."""
        return table in self.tables


class SnapshotUnavailable(Exception):
    """There is no readable snapshot (none published yet, or a damaged file); one line for the user."""


class SnapshotSource:
    """The newest snapshot of ``database``, one connection at a time.

    DuckDB connections are not for concurrent use; the dashboard's queries are short, so one lock
    serialises them rather than juggling a connection per thread across snapshot switches.
    ``prepare`` runs once on each newly opened snapshot (to compute what every request reuses).
    """

    def __init__(self, database: Path, prepare: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> None:
        self.database = database
        self.prepare = prepare
        self.path = snapshot_path(database)
        self._lock = threading.Lock()
        self._open: OpenSnapshot | None = None

    @contextmanager
    def connection(self) -> Iterator[OpenSnapshot]:
        """The open snapshot, reopened first if a newer one was published; held alone while in use.

        Raises :class:`SnapshotUnavailable` when there is no snapshot or it cannot be opened.
        """
        with self._lock:
            yield self._current()

    def check(self, busy_wait: float = 0.5) -> None:
        """Raise :class:`SnapshotUnavailable` (or a DuckDB error) unless the snapshot can be read.

        A probe must answer quickly: while a request holds the snapshot for longer than
        ``busy_wait`` seconds (the first one after a new snapshot computes for a while), a snapshot
        that opened fine counts as healthy without waiting.
        """
        if not self._lock.acquire(timeout=busy_wait):
            if self._open is not None:
                return
            self._lock.acquire()
        try:
            self._current().con.execute("SELECT count(*) FROM processor_runs").fetchone()
        finally:
            self._lock.release()

    def close(self) -> None:
        """Close the open snapshot (the next use opens the newest again)."""
        with self._lock:
            self._close()

    def _current(self) -> OpenSnapshot:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._close()
            raise SnapshotUnavailable(self._missing()) from None
        except OSError as error:
            self._close()
            raise SnapshotUnavailable(f"cannot read the snapshot {self.path}: {error.strerror}") from None
        try:
            log = log_path(self.path).stat()
            logged = (log.st_dev, log.st_ino, log.st_size, log.st_mtime_ns)
        except FileNotFoundError:
            logged = (0, 0, 0, 0)
        except OSError as error:
            self._close()
            unreadable = f"cannot read the snapshot's log {log_path(self.path)}: {error.strerror}"
            raise SnapshotUnavailable(unreadable) from None
        identity: Identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, *logged)
        if self._open is None or identity != self._open.identity:
            self._close()  # first: DuckDB would hand back its cached instance of the old file
            try:
                con = store.connect(self.path, read_only=True)
            except store.StoreError as error:
                raise SnapshotUnavailable(_first_line(str(error))) from None
            try:
                if self.prepare is not None:
                    self.prepare(con)
                names = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
            except BaseException:
                con.close()  # a damaged file: the caller reports the error; the next use tries again
                raise
            self._open = OpenSnapshot(con, frozenset(name for (name,) in names), identity)
        return self._open

    def _close(self) -> None:
        if self._open is not None:
            self._open.con.close()
        self._open = None

    def _missing(self) -> str:
        if not self.database.exists():
            return f"database {self.database} does not exist: run 'sessionpipe run' first or pass --db"
        return f"no snapshot of {self.database} yet ({self.path.name}): a run publishes one when it ends"


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "unknown error"
