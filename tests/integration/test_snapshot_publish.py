"""The read-only snapshot is published by runs that changed what readers see, not by every run.

Copying the whole database after each run made a run with nothing to do cost as much as the
database is large. A run that committed no session, marked no file vanished and applied no
migration leaves the published snapshot as it is (it holds the same data); a missing snapshot is
always published.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionpipe_runner.snapshot import free_retired_snapshots, publish_snapshot, snapshot_path
from tests.runner_support import install_test_plugin, run_summary, sessionpipe, sessionpipe_env
from tests.support.db import rows


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    return sessionpipe_env(install_test_plugin(tmp_path / "site"))


def run_lines(sessions: Path, db: Path, env: dict[str, str]) -> dict[str, object]:
    result = sessionpipe("run", "--processor", "lines", "--sessions", sessions, "--db", db, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return run_summary(result)


def published(db: Path) -> tuple[int, int]:
    info = snapshot_path(db).stat()
    return info.st_ino, info.st_mtime_ns


def test_a_run_that_changed_nothing_keeps_the_snapshot_and_one_that_did_replaces_it(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    session = tmp_path / "sessions" / "alice" / "-app" / "s1.jsonl"
    session.parent.mkdir(parents=True)
    session.write_text('{"n": 1}\n{"n": 2}\n')
    db = tmp_path / "db.duckdb"
    run_lines(tmp_path / "sessions", db, plugin_env)
    first = published(db)

    assert run_lines(tmp_path / "sessions", db, plugin_env)["unchanged"] == 1
    assert published(db) == first

    with session.open("a") as handle:
        handle.write('{"n": 3}\n')
    assert run_lines(tmp_path / "sessions", db, plugin_env)["processed"] == 1
    assert published(db) != first
    assert rows(snapshot_path(db), "SELECT count(*) FROM line_rows") == [(3,)]

    snapshot_path(db).unlink()
    run_lines(tmp_path / "sessions", db, plugin_env)
    assert rows(snapshot_path(db), "SELECT count(*) FROM line_rows") == [(3,)]


def test_a_file_that_vanished_is_published_though_no_session_was_processed(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    folder = tmp_path / "sessions" / "alice" / "-app"
    folder.mkdir(parents=True)
    for name in ("s1.jsonl", "s2.jsonl"):
        (folder / name).write_text('{"n": 1}\n')
    db = tmp_path / "db.duckdb"
    run_lines(tmp_path / "sessions", db, plugin_env)
    (folder / "s2.jsonl").unlink()
    assert run_lines(tmp_path / "sessions", db, plugin_env)["issues"] == {"session_file_vanished": 1}
    vanished = "SELECT count(*) FROM session_processor_state WHERE vanished_at IS NOT NULL"
    assert rows(snapshot_path(db), vanished) == [(1,)]


def retired(db: Path) -> dict[int, str]:
    """The retired snapshots beside ``db``: inode -> name."""
    return {path.stat().st_ino: path.name for path in db.parent.iterdir() if path.name.endswith(".retired")}


def test_a_publishing_run_retires_the_old_snapshot_and_the_next_run_frees_it(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    """Renaming over the old snapshot would free it on the run's path (as long as the copy takes):
    the run keeps it under a hidden name, and the next run frees it while it scans."""
    session = tmp_path / "sessions" / "alice" / "-app" / "s1.jsonl"
    session.parent.mkdir(parents=True)
    session.write_text('{"n": 1}\n')
    db = tmp_path / "db.duckdb"
    run_lines(tmp_path / "sessions", db, plugin_env)
    assert retired(db) == {}  # nothing was published before
    first_inode, _ = published(db)

    with session.open("a") as handle:
        handle.write('{"n": 2}\n')
    run_lines(tmp_path / "sessions", db, plugin_env)
    assert list(retired(db)) == [first_inode]  # the old copy, not freed on this run's path
    assert rows(snapshot_path(db), "SELECT count(*) FROM line_rows") == [(2,)]

    second_inode, _ = published(db)
    assert run_lines(tmp_path / "sessions", db, plugin_env)["unchanged"] == 1
    assert retired(db) == {}  # freed by the next run, which published nothing
    assert published(db)[0] == second_inode


def test_publishing_without_retiring_frees_the_old_snapshot_and_retired_copies_can_be_freed(tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    db.write_bytes(b"one")
    publish_snapshot(db, retire_old=True)  # nothing to retire yet
    db.write_bytes(b"two")
    publish_snapshot(db, retire_old=True)
    db.write_bytes(b"three")
    publish_snapshot(db, retire_old=True)
    assert sorted(tmp_path.joinpath(name).read_bytes() for name in retired(db).values()) == [b"one", b"two"]
    assert snapshot_path(db).read_bytes() == b"three"
    assert free_retired_snapshots(db) == 2
    db.write_bytes(b"four")
    publish_snapshot(db)
    assert (retired(db), snapshot_path(db).read_bytes()) == ({}, b"four")
