"""Single-writer leases for a database file.

A run holds a lease for the whole time it may write. ``file`` is an advisory lock beside the
database, for one machine; ``k8s:NAME`` is a coordination.k8s.io Lease, for pods on several nodes.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("sessionpipe_runner.lease")


def announce_wait(name: str, holder: str, wait_seconds: float) -> None:
    """Say once, on stderr, that a run waits for the lease and for whom: a run that seems to hang
    while another writer finishes is then explained in its log (a pod's log in a cluster)."""
    log.info("database lease %s is held by %s; waiting up to %gs", name, holder, wait_seconds)


class LeaseNotAcquired(Exception):
    """Another writer held the lease for the whole wait."""


class LeaseLost(Exception):
    """The lease expired or was taken over while the run held it: stop writing at once."""


class Lease(Protocol):
    """What the runner needs of a lease."""

    @property
    def holder(self) -> str:
        """Who this run is, as written into the lease."""

    @property
    def name(self) -> str:
        """The lease's name, for the summary and ``writer_epochs``."""

    def acquire(self, wait_seconds: float) -> int:
        """Take the lease, waiting up to ``wait_seconds``; return this acquisition's epoch floor.

        Raises :class:`LeaseNotAcquired` naming the current holder when the wait runs out.
        """

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease can no longer be trusted to be ours."""

    def release(self) -> None:
        """Give the lease up so the next writer starts at once; safe to call twice."""
