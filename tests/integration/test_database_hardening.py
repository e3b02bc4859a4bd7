"""The database file under stress: failed snapshot publishing, damaged blocks, killed runs, busy files,
wrong ``--db`` paths, SIGTERM at awkward moments, and a termination message with many issue kinds."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from sessionpipe_contract import (
    EXIT_DATABASE_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    TERMINATION_MESSAGE_LIMIT,
)
from sessionpipe_runner.runner import snapshot_path
from sessionpipe_runner.summary import RunSummary
from tests.runner_support import (
    CORPUS,
    finish,
    install_test_plugin,
    run_summary,
    sessionpipe,
    sessionpipe_env,
    start_sessionpipe,
)

TESTS = Path(__file__).resolve().parent.parent
CRASH_WRAPPER = TESTS / "crash_wrapper.py"
SLOW_PUBLISH_WRAPPER = TESTS / "slow_publish_wrapper.py"
SNIFFLY = CORPUS / "sniffly/projects"


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    return sessionpipe_env(install_test_plugin(tmp_path / "site"))


@pytest.fixture
def sessions(tmp_path: Path) -> Path:
    root = tmp_path / "sessions"
    for user, name, lines in [("alice", "s1.jsonl", 3), ("alice", "s2.jsonl", 2), ("bob", "s3.jsonl", 4)]:
        folder = root / user / "-proj"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("".join(f'{{"n": {i}}}\n' for i in range(lines)))
    return root


def lines_args(sessions: Path, db: Path) -> list[str]:
    return ["run", "--processor", "lines", "--sessions", str(sessions), "--db", str(db), "--json"]


def spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def temporaries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


# --- snapshot leaks ------------------------------------------------------------------------------
def test_a_failed_snapshot_publish_leaves_no_temporary_and_says_the_run_is_committed(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    db = tmp_path / "db.duckdb"
    snapshot_path(db).mkdir()  # a directory in the way of the rename
    (snapshot_path(db) / "something").write_text("x")
    result = sessionpipe(*lines_args(sessions, db), env=plugin_env)
    summary = run_summary(result)
    assert temporaries(tmp_path) == []
    assert (result.returncode, summary["outcome"], summary["processed"]) == (EXIT_OK, "succeeded", 3)
    assert summary["issues"] == {"snapshot_not_published": 1}
    assert "committed" in summary["message"] and "rolled back" not in summary["message"]
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM session_processor_state").fetchone() == (3,)


def test_a_temporary_snapshot_left_by_a_killed_run_is_removed_at_the_next_start(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    db = tmp_path / "db.duckdb"
    killed = subprocess.run(
        [
            sys.executable,
            str(CRASH_WRAPPER),
            "fn:sessionpipe_runner.snapshot:Path.replace:1",  # the copy is made, the rename not yet
            "--",
            *lines_args(sessions, db),
        ],
        env=plugin_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(temporaries(tmp_path)) == 1
    again = sessionpipe(*lines_args(sessions, db), env=plugin_env)
    assert again.returncode == EXIT_OK, again.stderr
    assert temporaries(tmp_path) == []
    assert snapshot_path(db).is_file()


def test_a_temporary_log_left_by_a_killed_run_is_removed_and_the_snapshot_still_reads(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    """Killed with its log copied beside the snapshot but not yet renamed into place: readers see
    the previous snapshot, whole; the next run removes the copy and publishes."""
    db = tmp_path / "db.duckdb"
    assert sessionpipe(*lines_args(sessions, db), env=plugin_env).returncode == EXIT_OK
    with (sessions / "alice" / "-proj" / "s1.jsonl").open("a") as handle:
        handle.write('{"n": 3}\n')
    killed = subprocess.run(
        [sys.executable, str(CRASH_WRAPPER), "fn-after:shutil:copyfile:1", "--", *lines_args(sessions, db)],
        env=plugin_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [name.endswith(".wal.tmp") for name in temporaries(tmp_path)] == [True]
    with duckdb.connect(str(snapshot_path(db)), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM line_rows").fetchone() == (9,)
    again = sessionpipe(*lines_args(sessions, db), env=plugin_env)
    assert again.returncode == EXIT_OK, again.stderr
    assert temporaries(tmp_path) == []
    with duckdb.connect(str(snapshot_path(db)), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM line_rows").fetchone() == (10,)


# --- a damaged database: one line and a documented exit code, never a traceback ------------------
@pytest.fixture(scope="module")
def damaged_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real usage database whose blocks past the first are damaged (the file still opens)."""
    db = tmp_path_factory.mktemp("damaged") / "usage.duckdb"
    made = sessionpipe("run", "--processor", "usage", "--sessions", SNIFFLY, "--user", "chip", "--db", db)
    assert made.returncode == EXIT_OK, made.stderr
    block, header = 256 * 1024, 3 * 4096
    blocks = (db.stat().st_size - header) // block
    assert blocks > 2
    with db.open("r+b") as file:
        for index in range(1, blocks):
            file.seek(header + index * block + 100)
            file.write(b"\xff" * 64)
    duckdb.connect(str(db), read_only=True).close()  # the damage is past what opening the file reads
    return db


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "--json"],
        ["report", "usage"],
        ["report", "usage", "--by", "session", "--json"],
        ["reset", "--processor", "usage", "--all"],
        ["forget", "--vanished"],
        ["forget", "--user", "chip", "--dry-run"],
    ],
)
def test_a_damaged_database_gives_one_line_and_exit_1(command: list[str], damaged_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "usage.duckdb"
    shutil.copyfile(damaged_db, db)
    result = sessionpipe(*command, "--db", db)
    assert "Traceback" not in result.stderr
    assert result.returncode == EXIT_FAILED, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Corrupt database file" in result.stderr


def test_a_run_on_a_damaged_database_fails_with_a_summary(damaged_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "usage.duckdb"
    shutil.copyfile(damaged_db, db)
    result = sessionpipe("run", "--processor", "usage", "--sessions", SNIFFLY, "--user", "chip", "--db", db)
    assert "Traceback" not in result.stderr
    assert result.returncode == EXIT_FAILED
    assert "Corrupt database file" in result.stdout


# --- killed runs ---------------------------------------------------------------------------------
def test_a_killed_run_is_marked_abandoned_by_the_next_writer(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    db = tmp_path / "db.duckdb"
    args = lines_args(sessions, db)
    point = "fn:sessionpipe_runner.runner:Run._consume:1"  # the run is recorded as running, then killed
    killed = subprocess.run(
        [sys.executable, str(CRASH_WRAPPER), point, "--", *args], env=plugin_env, capture_output=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL
    again = sessionpipe(*args, env=plugin_env)
    assert again.returncode == EXIT_OK, again.stderr
    status = json.loads(sessionpipe("status", "--db", db, "--json").stdout)
    outcomes = [run["outcome"] for run in status["processors"]["lines"]["last_runs"]]
    assert outcomes == ["succeeded", "abandoned"]


# --- a busy database, and --db paths that are not databases --------------------------------------
def test_report_and_status_during_the_first_run_exit_with_the_busy_code(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    db = tmp_path / "db.duckdb"
    # The run holds the database until the test has asked (a fixed sleep raced a busy machine, where
    # the run could end before the readers had even started).
    release = tmp_path / "release"
    proc = start_sessionpipe(*lines_args(sessions, db), env={**plugin_env, "TESTPLUGIN_HOLD_UNTIL": str(release)})
    try:
        deadline = time.monotonic() + 60
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not snapshot_path(db).exists()
        for command in (["status"], ["report", "usage"]):
            result = sessionpipe(*command, "--db", db, env=plugin_env)
            assert result.returncode == EXIT_DATABASE_BUSY, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and "busy" in result.stderr
        assert proc.poll() is None, "the run ended before the readers asked: the test proved nothing"
    finally:
        release.touch()
        finish(proc)


@pytest.mark.parametrize(
    "command",
    [
        ["report", "usage"],
        ["status"],
        ["reset", "--processor", "usage", "--all"],
        ["forget", "--vanished"],
        ["run", "--processor", "lines", "--sessions", "SESSIONS"],
    ],
)
def test_a_lease_file_is_refused_as_a_database(
    command: list[str], sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    lease = tmp_path / "db.duckdb.lease"
    lease.write_bytes(b"")
    args = [str(sessions) if part == "SESSIONS" else part for part in command]
    result = sessionpipe(*args, "--db", lease, env=plugin_env)
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    assert "lease" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert lease.read_bytes() == b""
    assert not (tmp_path / "db.duckdb.lease.lease").exists()


def test_run_refuses_the_snapshot_as_its_database(sessions: Path, tmp_path: Path, plugin_env: dict[str, str]) -> None:
    db = tmp_path / "db.duckdb"
    assert sessionpipe(*lines_args(sessions, db), env=plugin_env).returncode == EXIT_OK
    published = snapshot_path(db).read_bytes()
    result = sessionpipe(*lines_args(sessions, snapshot_path(db)), env=plugin_env)
    assert result.returncode == EXIT_USAGE and "snapshot" in result.stderr
    assert snapshot_path(db).read_bytes() == published
    # Reading it is fine.
    assert sessionpipe("status", "--db", snapshot_path(db), env=plugin_env).returncode == EXIT_OK


# --- SIGTERM at awkward moments -----------------------------------------------------------------
def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


def test_sigterm_in_the_first_moments_still_ends_with_a_summary(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    """SIGTERM while the interpreter still imports DuckDB: a summary that says nothing was written."""
    db = tmp_path / "db.duckdb"
    termination = tmp_path / "termination-log"
    proc = spawn(
        [sys.executable, "-m", "sessionpipe_runner", *lines_args(sessions, db), "--termination-log", str(termination)],
        plugin_env,
    )
    deadline = time.monotonic() + 10
    while not _catches_sigterm(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=60)
    assert result.returncode == EXIT_TERMINATED, result.stderr
    summary = run_summary(result)
    assert summary["outcome"] == "terminated"
    assert "before the run started" in summary["message"] and "rolled back" not in summary["message"]
    assert json.loads(termination.read_text())["outcome"] == "terminated"
    assert not db.exists()  # nothing was written


def test_the_console_script_is_the_early_entry_point() -> None:
    pyproject = (TESTS.parent / "pyproject.toml").read_text()
    assert 'sessionpipe = "sessionpipe_runner.__main__:console"' in pyproject


def test_sigterm_while_publishing_the_snapshot_says_the_run_was_committed(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    db = tmp_path / "db.duckdb"
    mark = tmp_path / "publishing"
    proc = spawn([sys.executable, str(SLOW_PUBLISH_WRAPPER), str(mark), "--", *lines_args(sessions, db)], plugin_env)
    deadline = time.monotonic() + 60
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mark.exists(), "the run never reached publishing"
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=60)
    assert result.returncode == EXIT_TERMINATED, result.stderr
    summary = run_summary(result)
    assert summary["outcome"] == "terminated" and summary["processed"] == 3
    assert "committed" in summary["message"] and "rolled back" not in summary["message"]
    assert temporaries(tmp_path) == []
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT outcome FROM processor_runs").fetchall() == [("succeeded",)]
        assert con.execute("SELECT count(*) FROM session_processor_state").fetchone() == (3,)


# --- the termination message keeps what runs spent ----------------------------------------------
def test_the_compact_summary_keeps_counters_and_summarises_many_issue_kinds() -> None:
    summary = RunSummary("verification", "1", "r1", started=datetime(2025, 1, 1, tzinfo=UTC))
    summary.issues = Counter({f"odd_line_kind_number_{index:03}": index + 1 for index in range(300)})
    summary.counters = Counter({"llm_calls": 12, "llm_tokens": 34567, "llm_input_tokens": 30000})
    compact = summary.compact()
    assert len(compact.encode()) <= TERMINATION_MESSAGE_LIMIT
    data = json.loads(compact)
    assert data["counters"] == {"llm_calls": 12, "llm_input_tokens": 30000, "llm_tokens": 34567}
    kept = data["issues"]
    assert kept == dict(summary.issues.most_common(len(kept)))  # the most frequent kinds, by name
    omitted = data["issues_omitted"]
    assert omitted["kinds"] == 300 - len(kept)
    assert omitted["count"] + sum(kept.values()) == sum(summary.issues.values())

    from sessionpipe_operator.run_summary import parse_run_summary

    parsed = parse_run_summary(compact)
    assert parsed is not None
    assert parsed["counters"] == data["counters"] and parsed["issues"] == kept


def test_the_compact_summary_is_whole_when_it_fits() -> None:
    summary = RunSummary("usage", "1", "r1", started=datetime(2025, 1, 1, tzinfo=UTC))
    summary.issues = Counter({"invalid_json": 2})
    data = json.loads(summary.compact())
    assert data["issues"] == {"invalid_json": 2} and "issues_omitted" not in data
