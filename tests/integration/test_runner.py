"""The runner's promises, observed from the command line on real DuckDB files.

The processor here is a plugin found through the ``sessionpipe.processors`` entry-point group, as a
third-party one would be; the usage processor's own behaviour is tested elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from sessionpipe_contract import EXIT_LEASE_NOT_ACQUIRED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE
from tests.runner_support import (
    finish,
    install_test_plugin,
    run_summary,
    sessionpipe,
    sessionpipe_env,
    start_sessionpipe,
)
from tests.support.db import rows


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    return sessionpipe_env(install_test_plugin(tmp_path / "site"))


@pytest.fixture
def sessions(tmp_path: Path) -> Path:
    root = tmp_path / "sessions"
    for user, project, name, lines in [
        ("alice", "-home-alice-app", "s1.jsonl", 3),
        ("alice", "-home-alice-app", "s2.jsonl", 2),
        ("bob", "-srv-api", "s3.jsonl", 4),
    ]:
        folder = root / user / project
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("".join(f'{{"n": {i}}}\n' for i in range(lines)))
    return root


def run_lines(sessions: Path, db: Path, env: dict[str, str], *extra: str) -> dict[str, object]:
    result = sessionpipe("run", "--processor", "lines", "--sessions", sessions, "--db", db, "--json", *extra, env=env)
    summary = run_summary(result)
    summary["_exit"] = result.returncode
    return summary


def test_second_run_with_nothing_changed_reads_no_file(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    db = tmp_path / "db.duckdb"
    first = run_lines(sessions, db, plugin_env)
    assert (first["_exit"], first["processed"], first["hashed"]) == (EXIT_OK, 3, 3)
    second = run_lines(sessions, db, plugin_env)
    assert (second["processed"], second["hashed"], second["unchanged"]) == (0, 0, 3)


def test_touched_file_is_hashed_but_not_reprocessed(sessions: Path, tmp_path: Path, plugin_env: dict[str, str]) -> None:
    db = tmp_path / "db.duckdb"
    run_lines(sessions, db, plugin_env)
    touched = sessions / "bob" / "-srv-api" / "s3.jsonl"
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    again = run_lines(sessions, db, plugin_env)
    assert (again["hashed"], again["processed"], again["unchanged"]) == (1, 0, 2)
    # The new mtime is remembered: the run after that reads nothing.
    assert run_lines(sessions, db, plugin_env)["hashed"] == 0


def test_appended_line_reprocesses_that_session_only_without_duplicates(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    db = tmp_path / "db.duckdb"
    run_lines(sessions, db, plugin_env)
    grown = sessions / "alice" / "-home-alice-app" / "s2.jsonl"
    with grown.open("a") as handle:
        handle.write('{"n": 99}\n')
    again = run_lines(sessions, db, plugin_env)
    assert (again["processed"], again["unchanged"]) == (1, 2)
    assert rows(db, "SELECT count(*), count(DISTINCT (session_file, line_no)) FROM line_rows") == [(10, 10)]
    assert rows(db, "SELECT count(*) FROM line_rows WHERE session_file = 'alice/-home-alice-app/s2.jsonl'") == [(3,)]


def test_version_bump_reprocesses_everything(sessions: Path, tmp_path: Path, plugin_env: dict[str, str]) -> None:
    db = tmp_path / "db.duckdb"
    run_lines(sessions, db, plugin_env)
    bumped = run_lines(sessions, db, {**plugin_env, "TESTPLUGIN_VERSION": "2"})
    assert (bumped["processed"], bumped["unchanged"]) == (3, 0)
    assert rows(db, "SELECT DISTINCT processor_version FROM session_processor_state") == [("2",)]
    assert rows(db, "SELECT count(*) FROM line_rows") == [(9,)]


def test_line_still_being_written_waits_for_the_next_run(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    db = tmp_path / "db.duckdb"
    growing = sessions / "bob" / "-srv-api" / "s3.jsonl"
    with growing.open("a") as handle:
        handle.write('{"n": 4, "half-writt')
    first = run_lines(sessions, db, plugin_env)
    assert first["issues"] == {"incomplete_last_line": 1}
    assert rows(db, "SELECT count(*) FROM line_rows WHERE session_file LIKE 'bob/%'") == [(4,)]
    with growing.open("a") as handle:
        handle.write('en": true}\n')
    second = run_lines(sessions, db, plugin_env)
    assert second["processed"] == 1
    assert rows(db, "SELECT count(*) FROM line_rows WHERE session_file LIKE 'bob/%'") == [(5,)]


def test_failing_session_is_isolated_counted_quarantined_and_reset(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    db = tmp_path / "db.duckdb"
    bad = sessions / "bob" / "-srv-api" / "bad.jsonl"
    bad.write_text('{"text": "PLEASE-FAIL"}\n')
    key = "bob/-srv-api/bad.jsonl"
    state = f"SELECT status, attempts, last_error FROM session_processor_state WHERE session_file = '{key}'"
    first = run_lines(sessions, db, plugin_env, "--max-attempts", "2")
    assert (first["_exit"], first["outcome"], first["processed"], first["errors"]) == (
        EXIT_OK,
        "completed_with_errors",
        3,
        1,
    )
    assert rows(db, "SELECT count(DISTINCT session_file) FROM line_rows") == [(3,)]
    ((status, attempts, error),) = rows(db, state)
    assert (status, attempts) == ("failed", 1) and "asks to fail" in str(error)
    assert rows(db, f"SELECT count(*) FROM line_rows WHERE session_file = '{key}'") == [(0,)]

    second = run_lines(sessions, db, plugin_env, "--max-attempts", "2")
    assert (second["errors"], second["quarantined"]) == (1, 1)
    assert rows(db, state)[0][:2] == ("quarantined", 2)
    third = run_lines(sessions, db, plugin_env, "--max-attempts", "2")
    assert (third["errors"], third["skipped"], third["issues"]) == (0, 1, {"quarantined_unchanged": 1})

    reset = sessionpipe("reset", "--processor", "lines", "--quarantined", "--db", db, env=plugin_env)
    assert reset.returncode == 0, reset.stderr
    assert rows(db, state) == []
    bad.write_text('{"text": "fixed"}\n')
    fourth = run_lines(sessions, db, plugin_env, "--max-attempts", "2")
    assert (fourth["processed"], fourth["errors"]) == (1, 0)
    assert rows(db, state)[0][:2] == ("done", 0)


def test_second_concurrent_run_waits_then_exits_with_the_lease_code(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    db = tmp_path / "db.duckdb"
    release = tmp_path / "release"  # the first run holds the lease until the second has given up
    slow_env = {**plugin_env, "TESTPLUGIN_HOLD_UNTIL": str(release)}
    first = start_sessionpipe("run", "--processor", "lines", "--sessions", sessions, "--db", db, "--json", env=slow_env)
    try:
        lease_file = db.with_name(db.name + ".lease")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (lease_file.exists() and lease_file.read_text()):
            time.sleep(0.05)
        started = time.monotonic()
        second = sessionpipe(
            "run",
            "--processor",
            "lines",
            "--sessions",
            sessions,
            "--db",
            db,
            "--lease-wait",
            "1",
            "--json",
            env=plugin_env,
        )
        waited = time.monotonic() - started
        assert second.returncode == EXIT_LEASE_NOT_ACQUIRED
        summary = run_summary(second)
        assert summary["outcome"] == "lease_not_acquired"
        assert f":{first.pid} (processor lines" in summary["message"]
        # While it waits, its log says for whom (the first line of stderr, before the wait ran out).
        assert f"is held by {socket.gethostname()}:{first.pid} (processor lines" in second.stderr.splitlines()[0]
        assert waited >= 1.0
    finally:
        release.touch()
    done = finish(first)
    assert done.returncode == EXIT_OK
    assert run_summary(done)["processed"] == 3
    assert rows(db, "SELECT count(*) FROM line_rows") == [(9,)]
    assert rows(db, "SELECT outcome FROM processor_runs") == [("succeeded",)]


def test_sigterm_rolls_back_releases_the_lease_and_reports(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    db = tmp_path / "db.duckdb"
    termination = tmp_path / "termination-log"
    started = tmp_path / "started"
    proc = start_sessionpipe(
        "run",
        "--processor",
        "lines",
        "--sessions",
        sessions,
        "--db",
        db,
        "--json",
        "--termination-log",
        termination,
        env={
            **plugin_env,
            "TESTPLUGIN_SLEEP": "1.5",
            "TESTPLUGIN_BATCHABLE": "0",
            "TESTPLUGIN_STARTED_LOG": str(started),
        },
    )
    # Inside the second session, the first one committed (a fixed 2.5 s could land before the run
    # began on a busy machine, when there is no run to record yet).
    deadline = time.monotonic() + 60
    while len(_lines(started)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_lines(started)) == 2, "the run never began its second session"
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=30)
    assert result.returncode == EXIT_TERMINATED
    summary = run_summary(result)
    assert summary["outcome"] == "terminated"
    assert summary["processed"] == 1  # the first session, committed before the second began
    message = termination.read_bytes()
    assert len(message) < 4096 and json.loads(message)["outcome"] == "terminated"
    # Whatever was committed is whole: every session with rows has a done state row, and vice versa.
    assert rows(db, "SELECT count(DISTINCT session_file) FROM line_rows") == rows(
        db, "SELECT count(*) FROM session_processor_state WHERE status = 'done'"
    )
    assert rows(db, "SELECT outcome, exit_code FROM processor_runs") == [("terminated", EXIT_TERMINATED)]
    # The lease was released: the next run starts at once and finishes the work.
    nxt = run_lines(sessions, db, plugin_env, "--lease-wait", "0")
    assert nxt["_exit"] == EXIT_OK and nxt["processed"] == 3 - summary["processed"]


@pytest.mark.parametrize("where", ["process", "write"])
def test_sigterm_during_a_duckdb_statement_still_terminates_the_run(
    where: str, sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    """DuckDB reports a signal that lands in a statement as "Query interrupted", an ordinary error.

    Neither a processor's own statement (which would fail the session) nor one in the runner's
    transaction (which would be retried session by session) may turn SIGTERM into a run that goes on.
    """
    db = tmp_path / "db.duckdb"
    mark = tmp_path / "in-the-statement"
    knobs = {"TESTPLUGIN_SLOW_QUERY": where, "TESTPLUGIN_SLOW_QUERY_MARK": str(mark), "TESTPLUGIN_BATCHABLE": "0"}
    proc = start_sessionpipe(
        "run", "--processor", "lines", "--sessions", sessions, "--db", db, "--json", env={**plugin_env, **knobs}
    )
    deadline = time.monotonic() + 30
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mark.exists(), "the run never reached the slow statement"
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=60)
    assert result.returncode == EXIT_TERMINATED, result.stdout + result.stderr
    summary = run_summary(result)
    assert (summary["outcome"], summary["processed"], summary["errors"]) == ("terminated", 0, 0)
    assert rows(db, "SELECT count(*) FROM session_processor_state") == [(0,)]
    assert rows(db, "SELECT count(*) FROM line_rows") == [(0,)]
    assert rows(db, "SELECT outcome, exit_code FROM processor_runs") == [("terminated", EXIT_TERMINATED)]
    nxt = run_lines(sessions, db, {**plugin_env, **knobs})
    assert (nxt["_exit"], nxt["processed"], nxt["errors"]) == (EXIT_OK, 3, 0)


def test_termination_message_is_compact_json(sessions: Path, tmp_path: Path, plugin_env: dict[str, str]) -> None:
    for index in range(300):  # many failures with long errors must still fit in 4096 bytes
        (sessions / "alice" / f"bad-{index:03}-{'x' * 80}.jsonl").write_text('"PLEASE-FAIL"\n')
    termination = tmp_path / "message"
    summary = run_lines(sessions, tmp_path / "db.duckdb", plugin_env, "--termination-log", str(termination))
    assert summary["errors"] == 300
    message = termination.read_bytes()
    assert len(message) <= 4096
    compact = json.loads(message)
    assert (compact["errors"], compact["processed"], compact["outcome"]) == (300, 3, "completed_with_errors")


def test_processors_are_found_through_entry_points(plugin_env: dict[str, str]) -> None:
    listed = sessionpipe("processors", "--json", env=plugin_env)
    names = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert {"usage", "lines"} <= set(names)
    assert "sessionpipe_testplugin:LinesProcessor" in names["lines"]["source"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--processor", "nope", "--sessions", "."], "no processor named 'nope' is installed"),
        (["run", "--processor", "usage", "--sessions", "/does/not/exist"], "does not exist"),
        (["run", "--processor", "usage", "--sessions", ".", "--lease", "zookeeper"], "use 'file' or 'k8s:NAME'"),
        (["run", "--processor", "usage", "--sessions", ".", "--config", "[1]"], "must be a JSON object"),
        (["status", "--db", "/does/not/exist.duckdb"], "does not exist"),
        (["run", "--processor", "usage", "--sessions", ".", "--db-memory", "lots"], "must be a size such as 256MB"),
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(args: list[str], message: str, plugin_env: dict[str, str]) -> None:
    result = sessionpipe(*args, env=plugin_env)
    assert result.returncode == EXIT_USAGE
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 3


def test_the_database_memory_limit_reaches_the_writers_connection(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    """DuckDB's own default (80 % of the machine) would let a writer cache everything it writes."""
    seen = tmp_path / "memory-limit"
    env = {**plugin_env, "TESTPLUGIN_SETTINGS_TO": str(seen)}
    default = run_lines(sessions, tmp_path / "default.duckdb", env)
    assert default["_exit"] == EXIT_OK and seen.read_text() == "122.0 MiB"  # 128MB
    by_env = run_lines(sessions, tmp_path / "env.duckdb", {**env, "SESSIONPIPE_DB_MEMORY": "1GiB"})
    assert by_env["_exit"] == EXIT_OK and seen.read_text() == "1.0 GiB"
    by_flag = run_lines(
        sessions, tmp_path / "flag.duckdb", {**env, "SESSIONPIPE_DB_MEMORY": "1GiB"}, "--db-memory", "100MB"
    )
    assert by_flag["_exit"] == EXIT_OK and seen.read_text() == "95.3 MiB"


def test_environment_fills_in_for_flags_and_flags_win(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    env = {
        **plugin_env,
        "SESSIONPIPE_PROCESSOR": "lines",
        "SESSIONPIPE_SESSIONS": str(sessions),
        "SESSIONPIPE_DB": str(tmp_path / "from-env.duckdb"),
    }
    by_env = run_summary(sessionpipe("run", "--json", env=env))
    assert by_env["processed"] == 3 and (tmp_path / "from-env.duckdb").exists()
    by_flag = run_summary(sessionpipe("run", "--json", "--db", tmp_path / "from-flag.duckdb", env=env))
    assert by_flag["processed"] == 3 and (tmp_path / "from-flag.duckdb").exists()


def test_status_shows_sessions_by_state_and_the_last_runs(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    db = tmp_path / "db.duckdb"
    (sessions / "bob" / "-srv-api" / "bad.jsonl").write_text("PLEASE-FAIL\n")
    run_lines(sessions, db, plugin_env)
    run_lines(sessions, db, plugin_env)
    result = sessionpipe("status", "--db", db, "--json", env=plugin_env)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)["processors"]["lines"]
    done = len(list(sessions.rglob("*.jsonl"))) - 1
    assert status["sessions"] == {"done": done, "failed": 1}
    assert [run["outcome"] for run in status["last_runs"]] == ["completed_with_errors"] * 2
    assert status["last_runs"][0]["started_at"] >= status["last_runs"][1]["started_at"]
    text = sessionpipe("status", "--db", db, env=plugin_env)
    assert text.returncode == 0 and f"lines: {done} done, 1 failed" in text.stdout


def test_a_plugin_processor_contributes_its_own_report(
    sessions: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    """``sessionpipe report lines`` is the plugin's report, through the hook the built-in reports use."""
    db = tmp_path / "db.duckdb"
    assert run_lines(sessions, db, plugin_env)["_exit"] == EXIT_OK
    result = sessionpipe("report", "lines", "--db", db, "--json", env=plugin_env)
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout) == {
        "sessions": [
            {"session_file": "alice/-home-alice-app/s1.jsonl", "lines": 3},
            {"session_file": "alice/-home-alice-app/s2.jsonl", "lines": 2},
            {"session_file": "bob/-srv-api/s3.jsonl", "lines": 4},
        ]
    }
    longest = sessionpipe("report", "lines", "--at-least", "3", "--db", db, env=plugin_env)
    assert longest.returncode == EXIT_OK, longest.stderr
    assert longest.stdout.splitlines() == ["alice/-home-alice-app/s1.jsonl  3", "bob/-srv-api/s3.jsonl  4"]
    unknown = sessionpipe("report", "no-such-processor", "--db", db, env=plugin_env)
    assert unknown.returncode == EXIT_USAGE and "invalid choice" in unknown.stderr


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []
