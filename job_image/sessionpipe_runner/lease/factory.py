"""The lease a command takes, built from its settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sessionpipe_runner.lease import Lease
from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.settings import LeaseSettings, RunSettings, UsageError, maintenance_lease_wait


class LeaseBusy(Exception):
    """A maintenance command could not take the database's lease in its wait."""


def make_lease(lease: LeaseSettings, settings: RunSettings) -> Lease:
    """The lease ``lease`` names for a run: a file beside the database, or a Kubernetes Lease."""
    name = lease.kubernetes_name
    if name is None:
        return FileLease(settings.database, settings.processor)
    from sessionpipe_runner.lease.k8s import KubernetesLease, LeaseConfigError, default_holder, load_api_client

    environ = dict(settings.environ)
    try:
        api_client, namespace = load_api_client(lease.namespace, environ)
    except LeaseConfigError as error:
        raise UsageError(str(error)) from None
    return KubernetesLease(
        name, namespace, default_holder(environ), api_client, duration_seconds=lease.duration_seconds
    )


@contextmanager
def holding_lease(database: Path, holder: str, lease_wait: float | None) -> Iterator[None]:
    """Hold the database's file lease around a command that writes outside a run (reset, forget)."""
    lease = FileLease(database, holder)
    try:
        lease.acquire(maintenance_lease_wait(lease_wait, os.environ))
    except Exception as error:
        raise LeaseBusy(str(error)) from None
    try:
        yield
    finally:
        lease.release()
