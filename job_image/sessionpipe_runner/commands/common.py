"""What the commands share: common flags, loading a processor, reading the database.

The parser classes are in :mod:`.parsers` (the top-level help imports them without any command).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sessionpipe_contract import ENV_DB, ENV_LEASE_WAIT
from sessionpipe_runner import store
from sessionpipe_runner.processors import registry
from sessionpipe_runner.processors.base import Processor
from sessionpipe_runner.settings import (
    DEFAULT_DATABASE,
    MAINTENANCE_LEASE_WAIT_SECONDS,
    UsageError,
    arg_type,
    non_negative_float,
)
from sessionpipe_runner.snapshot import snapshot_path

if TYPE_CHECKING:
    import duckdb


class DatabaseBusy(Exception):
    """A run holds the database and has published no snapshot yet: try again when it is done."""


def add_db_flag(p: argparse.ArgumentParser) -> None:
    """``--db FILE``, the same in every command."""
    p.add_argument("--db", type=Path, metavar="FILE", help=f"DuckDB file (env {ENV_DB}; default ./{DEFAULT_DATABASE})")


def add_lease_wait_flag(p: argparse.ArgumentParser, default: float = MAINTENANCE_LEASE_WAIT_SECONDS) -> None:
    """``--lease-wait SECONDS``: ``run``'s default is longer than that of the other commands that write."""
    p.add_argument(
        "--lease-wait",
        type=arg_type(non_negative_float),
        metavar="SECONDS",
        help=f"how long to wait while another writer holds the database's lease (env {ENV_LEASE_WAIT}; "
        f"default {default:g})",
    )


def load_processor(name: str) -> Processor:
    """The installed processor ``name``; a name nobody installed is a usage error."""
    try:
        return registry.load(name)
    except registry.ProcessorNotFound as error:
        raise UsageError(str(error)) from None


def open_for_reading(database: Path) -> duckdb.DuckDBPyConnection:
    """Open the database read-only; if a writer holds it, read the last published snapshot.

    Raises :class:`DatabaseBusy` when a writer holds it and there is no snapshot yet (the first
    run), :class:`~sessionpipe_runner.store.StoreError` when the file cannot be opened.
    """
    if not database.exists():
        raise UsageError(f"database {database} does not exist; run 'sessionpipe run' first or pass --db")
    try:
        return store.connect(database, read_only=True)
    except store.DatabaseLocked:
        snapshot = snapshot_path(database)
        if snapshot.exists():
            print(f"note: {database} is busy; reading the snapshot {snapshot}", file=sys.stderr)
            return store.connect(snapshot, read_only=True)
        raise DatabaseBusy(
            f"database {database} is busy: a run is writing it and has published no snapshot yet; "
            "try again when it ends"
        ) from None
