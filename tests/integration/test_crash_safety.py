"""SIGKILL at any point of a run, then run again: the tables end identical to an uninterrupted run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.runner_support import install_test_plugin, run_summary, sessionpipe, sessionpipe_env

WRAPPER = Path(__file__).resolve().parent.parent / "crash_wrapper.py"

KILL_POINTS = [
    "sql:INSERT INTO writer_epochs:1",  # while opening: recording the writer epoch
    "fn:sessionpipe_runner.migrations:apply_migrations:2",  # between the runner's and the processor's migrations
    "fn:sessionpipe_runner.scan:_append_named:3",  # during the scan (the Python walk and the compiled listing)
    "fn:sessionpipe_runner.runner:Run._consume:1",  # after the scan, the state load and the plan
    "fn:sessionpipe_runner.work:read_snapshot:4",  # while reading candidates
    "sql:BEGIN:4",  # at the start of a session's transaction
    "fn:sessionpipe_runner.tables:insert_rows:3",  # inside a transaction, between delete and insert
    "fn:sessionpipe_runner.store.state:upsert_state:3",  # inside a transaction, rows written, state not yet
    "sql:COMMIT:5",  # right before a commit
    "sql-after:COMMIT:6",  # right after a commit
    "fn:sessionpipe_runner.store.runs:record_end:1",  # recording the run at the end
    "sql:CHECKPOINT:1",  # before the checkpoint
    "sql-during:CHECKPOINT:1",  # during the checkpoint
    "fn:sessionpipe_runner.snapshot:publish_snapshot:1",  # after the checkpoint, publishing the snapshot
]

STATE = (
    "SELECT processor, session_file, user_name, size, mtime_ns, content_hash, processor_version, items, "
    "attempts, last_error, status FROM session_processor_state ORDER BY ALL"
)
ROWS = "SELECT * FROM line_rows ORDER BY ALL"


def make_sessions(root: Path) -> Path:
    for index in range(12):
        folder = root / f"user{index % 3}" / f"-proj-{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"session-{index:02}.jsonl").write_text("".join(f'{{"i": {i}}}\n' for i in range(index + 2)))
    return root


def tables(db: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(STATE).fetchall(), con.execute(ROWS).fetchall()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    base = tmp_path_factory.mktemp("crash")
    sessions = make_sessions(base / "sessions")
    env = sessionpipe_env(install_test_plugin(base / "site"), TESTPLUGIN_BATCHABLE="0")
    reference = base / "reference.duckdb"
    result = sessionpipe("run", "--processor", "lines", "--sessions", sessions, "--db", reference, env=env)
    assert result.returncode == 0, result.stderr
    return sessions, env, reference


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_run_then_rerun_equals_uninterrupted_run(
    point: str, world: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    sessions, env, reference = world
    db = tmp_path / "db.duckdb"
    args = ["run", "--processor", "lines", "--sessions", str(sessions), "--db", str(db)]
    killed = subprocess.run(
        [sys.executable, str(WRAPPER), point, "--", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, f"the kill point was never reached: {killed.stderr}"
    again = sessionpipe(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert tables(db) == tables(reference)


def grow_and_kill(
    sessions: Path, env: dict[str, str], tmp_path: Path, point: str, lines: str
) -> tuple[list[str], Path, Path]:
    """Run a copy of ``sessions`` into two databases, append ``lines`` to some files, and run one
    database again, SIGKILLed at ``point``. Returns the run's arguments, that database and the other."""
    grown_sessions = tmp_path / "sessions"
    shutil.copytree(sessions, grown_sessions)
    db, reference = tmp_path / "db.duckdb", tmp_path / "reference.duckdb"
    args = ["run", "--processor", "lines", "--sessions", str(grown_sessions), "--json"]
    for target in (db, reference):
        assert sessionpipe(*args, "--db", target, env=env).returncode == 0
    for path in sorted(grown_sessions.rglob("session-0*.jsonl")):
        with path.open("a") as handle:
            handle.write(lines)
    killed = subprocess.run(
        [sys.executable, str(WRAPPER), point, "--", *args, "--db", str(db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, f"the kill point was never reached: {killed.stderr}"
    return args, db, reference


def test_kill_points_cover_a_run_that_is_already_incremental(
    world: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    """A crash while reprocessing grown files leaves the earlier results whole as well."""
    sessions, env, _ = world
    args, db, reference = grow_and_kill(sessions, env, tmp_path, "sql:COMMIT:3", '{"grown": true}\n')
    for target in (db, reference):
        assert sessionpipe(*args, "--db", target, env=env).returncode == 0
    assert tables(db) == tables(reference)


#: Points of a run that processes grown files from their committed lines' end (each session in its
#: own transaction: commits 1 and 2 are the writer epoch and the vanished marks): after the tail is
#: processed and before, during or right after the commit of its rows and state.
APPEND_KILL_POINTS = [
    "fn:sessionpipe_runner.tables:insert_rows:2",  # the first tail's rows written, its state row not yet
    "fn:sessionpipe_runner.store.state:upsert_state:2",  # the second tail's rows written, its state not yet
    "sql:COMMIT:4",  # right before the second tail's commit
    "sql-after:COMMIT:5",  # right after the third's
]


@pytest.mark.parametrize("point", APPEND_KILL_POINTS)
def test_a_run_killed_between_a_tail_and_its_commit_loses_and_duplicates_nothing(
    point: str, world: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    """Only the appended lines are processed; a kill before their commit leaves the prefix's rows alone.

    ``line_rows`` has a primary key on (session, line): a tail inserted twice would fail the run.
    """
    sessions, env, _ = world
    env = {**env, "TESTPLUGIN_APPENDABLE": "1"}
    args, db, reference = grow_and_kill(sessions, env, tmp_path, point, '{"grown": true}\n{"grown": 2}\n')
    for target in (db, reference):
        again = run_summary(sessionpipe(*args, "--db", target, env=env))
        assert (again["errors"], again["appended"]) == (0, again["processed"]), again
        assert again["appended"] > 0
    assert tables(db) == tables(reference)
