"""The dashboard's snapshot source: it follows a newly published snapshot, says why there is none,
and answers a probe without waiting for a long request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pytest

from sessionpipe_runner.serve.snapshots import SnapshotSource, SnapshotUnavailable
from sessionpipe_runner.snapshot import log_path, publish_log, publish_snapshot, snapshot_path


def publish(database: Path, runs: int) -> None:
    """A snapshot with ``runs`` rows in processor_runs, renamed into place as a run publishes it."""
    temporary = database.with_name(f"tmp-{runs}.duckdb")
    with duckdb.connect(str(temporary)) as con:
        con.execute("CREATE TABLE processor_runs AS SELECT range AS n FROM range(?)", [runs])
    temporary.replace(snapshot_path(database))


def runs_seen(source: SnapshotSource) -> int:
    with source.connection() as snapshot:
        row = snapshot.con.execute("SELECT count(*) FROM processor_runs").fetchone()
    assert row is not None
    return int(row[0])


def test_a_newly_published_snapshot_is_read_at_the_next_use(tmp_path: Path) -> None:
    database = tmp_path / "db.duckdb"
    database.touch()
    publish(database, 1)
    source = SnapshotSource(database)
    assert runs_seen(source) == 1
    publish(database, 2)
    assert runs_seen(source) == 2
    assert database.read_bytes() == b"", "the writer's file is never opened"


def test_a_log_published_beside_the_snapshot_is_read_at_the_next_use_and_dates_it(tmp_path: Path) -> None:
    """A run that did not checkpoint publishes only DuckDB's log beside the snapshot
    (:func:`~sessionpipe_runner.snapshot.publish_log`): the file stays, the log changes."""
    database = tmp_path / "db.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TABLE processor_runs AS SELECT range AS n FROM range(1)")
    publish_snapshot(database)
    source = SnapshotSource(database)
    assert runs_seen(source) == 1
    with source.connection() as snapshot:
        first = snapshot.published
    with duckdb.connect(str(database)) as con:
        con.execute("PRAGMA disable_checkpoint_on_shutdown")
        con.execute("INSERT INTO processor_runs VALUES (1)")
    time.sleep(0.01)
    publish_log(database)
    assert runs_seen(source) == 2
    with source.connection() as snapshot:
        assert snapshot.published == log_path(snapshot_path(database)).stat().st_mtime_ns / 1e9 > first


def test_no_database_or_no_snapshot_is_explained(tmp_path: Path) -> None:
    database = tmp_path / "db.duckdb"
    with pytest.raises(SnapshotUnavailable, match="does not exist"):
        runs_seen(SnapshotSource(database))
    database.touch()
    with pytest.raises(SnapshotUnavailable, match=r"no snapshot of .* yet"):
        runs_seen(SnapshotSource(database))


def test_a_probe_does_not_wait_behind_a_long_request(tmp_path: Path) -> None:
    database = tmp_path / "db.duckdb"
    database.touch()
    publish(database, 1)
    source = SnapshotSource(database)
    source.check()
    holding, release = threading.Event(), threading.Event()

    def long_request() -> None:
        with source.connection():
            holding.set()
            release.wait(30)

    worker = threading.Thread(target=long_request)
    worker.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        source.check(busy_wait=0.2)
        assert time.monotonic() - started < 2
    finally:
        release.set()
        worker.join()
