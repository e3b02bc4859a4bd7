"""The fence: a deposed writer can never commit.

Every acquisition of the lease records a writer epoch in ``writer_epochs``, higher than any before.
Before each commit the writer checks that the lease is still its own and that no newer epoch was
recorded; a writer that lost its lease (frozen, cut off from the API server) fails the check, rolls
back and stops (docs/architecture.md, "Order of a run").
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sessionpipe_runner.lease import Lease, LeaseLost
from sessionpipe_runner.store import runs
from sessionpipe_runner.tables import transaction

if TYPE_CHECKING:
    import duckdb


class Fence:
    """The lease a run holds and the writer epoch it recorded."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        #: The epoch floor the lease granted, then the epoch recorded by :meth:`claim`.
        self.epoch = 0

    def claim(self, con: duckdb.DuckDBPyConnection, *, processor: str, run_id: str, now: datetime) -> int:
        """Record a new writer epoch above every earlier one (inside the caller's transaction); return it."""
        newest = runs.newest_epoch(con)
        self.epoch = max(self.epoch, (newest or 0) + 1)
        runs.record_writer(
            con,
            epoch=self.epoch,
            holder=self.lease.holder,
            lease=self.lease.name,
            processor=processor,
            run_id=run_id,
            acquired_at=now,
        )
        return self.epoch

    def guard(self, con: duckdb.DuckDBPyConnection) -> None:
        """Before any commit: the lease must still be ours and no newer writer recorded."""
        self.lease.check()
        newest = runs.newest_epoch(con)
        if newest is not None and newest > self.epoch:
            raise LeaseLost(f"a newer writer (epoch {newest}) took over the database from epoch {self.epoch}")

    def commit(self, con: duckdb.DuckDBPyConnection, work: Callable[[], None]) -> None:
        """Do ``work`` in one transaction that commits only if :meth:`guard` passes after it."""
        with transaction(con):
            work()
            self.guard(con)
