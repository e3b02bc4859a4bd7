"""The read-only snapshot is published by runs that changed what readers see, not by every run.

Copying the whole database after each run made a run with nothing to do cost as much as the
database is large. A run that committed no session, marked no file vanished and applied no
migration leaves the published snapshot as it is (it holds the same data); a missing snapshot is
always published.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionpipe_runner.snapshot import snapshot_path
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
