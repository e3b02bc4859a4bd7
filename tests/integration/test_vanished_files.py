"""Session files that vanish or move: their rows are kept, but a live file wins every deduplication tie.

Claude Code deletes transcripts older than 30 days; keeping their history is a reason to use
sessionpipe. A vanished file is marked (``vanished_at`` in the state table, ``sessionpipe status``),
keeps its rows, and loses to a live file holding the same call, so a renamed file reports exactly
as it would in a fresh database. ``sessionpipe forget`` purges history on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from sessionpipe_contract import EXIT_OK, EXIT_USAGE
from sessionpipe_runner.runner import snapshot_path
from tests.runner_support import CORPUS, assert_same, sessionpipe

SNIFFLY = CORPUS / "sniffly/projects/-Users-chip-dev-ai-music"
SESSION = "d3ad4cdc-5657-435d-98fa-0035d53e383d"
OTHER = "fed8ce56-bc79-401f-a83e-af084253362f"


def place(root: Path, key: str, source: Path) -> Path:
    target = root / key
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target


def make_sessions(root: Path) -> Path:
    """Two users' real transcripts: alice has two sessions, bob one."""
    place(root, f"alice/-work/{SESSION}.jsonl", SNIFFLY / f"{SESSION}.jsonl")
    place(root, f"alice/-work/{OTHER}.jsonl", SNIFFLY / f"{OTHER}.jsonl")
    place(root, "bob/-srv/ba79134d.jsonl", SNIFFLY / "ba79134d-b6e9-4867-af0c-6941038c9e4b.jsonl")
    return root


def run_usage(sessions: Path, db: Path) -> dict[str, Any]:
    result = sessionpipe("run", "--processor", "usage", "--sessions", sessions, "--db", db, "--json")
    assert result.returncode == EXIT_OK, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return summary


def report(db: Path, by: str = "session") -> dict[str, Any]:
    result = sessionpipe("report", "usage", "--by", by, "--json", "--db", db)
    assert result.returncode == EXIT_OK, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """Sessions and a database after one run over them."""
    sessions = make_sessions(tmp_path / "sessions")
    db = tmp_path / "db.duckdb"
    run_usage(sessions, db)
    return sessions, db


def state(db: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT session_file, vanished_at IS NOT NULL FROM session_processor_state ORDER BY ALL"
        ).fetchall()


def test_a_renamed_file_reports_exactly_like_a_fresh_database(world: tuple[Path, Path], tmp_path: Path) -> None:
    sessions, db = world
    folder = sessions / "alice" / "-work"
    (folder / f"{SESSION}.jsonl").rename(folder / f"zz-{SESSION}.jsonl")
    second = run_usage(sessions, db)
    fresh = tmp_path / "fresh.duckdb"
    run_usage(sessions, fresh)
    for by in ("session", "day", "user", "model"):
        assert_same(report(db, by), report(fresh, by), by)
    assert f"zz-{SESSION}" in {entry["sessionId"] for entry in report(db)["sessions"]}
    assert second["issues"].get("session_file_vanished") == 1
    # The old file keeps its state and rows, marked vanished.
    assert (f"alice/-work/{SESSION}.jsonl", True) in state(db)
    assert (f"alice/-work/zz-{SESSION}.jsonl", False) in state(db)


def test_a_vanished_files_rows_still_count_when_no_live_file_has_them(world: tuple[Path, Path]) -> None:
    sessions, db = world
    before = report(db, "user")
    (sessions / "alice" / "-work" / f"{SESSION}.jsonl").unlink()
    run_usage(sessions, db)
    assert_same(report(db, "user"), before)
    assert state(db)[0] == (f"alice/-work/{SESSION}.jsonl", True)
    status = sessionpipe("status", "--db", db, "--json")
    assert json.loads(status.stdout)["processors"]["usage"]["vanished"] == 1
    assert "1 vanished" in sessionpipe("status", "--db", db).stdout


def test_a_file_that_reappears_is_live_again(world: tuple[Path, Path]) -> None:
    sessions, db = world
    path = sessions / "alice" / "-work" / f"{SESSION}.jsonl"
    kept = path.read_bytes()
    path.unlink()
    run_usage(sessions, db)
    path.write_bytes(kept)
    run_usage(sessions, db)
    assert all(not vanished for _, vanished in state(db))


def test_a_run_for_one_user_marks_only_that_users_files(world: tuple[Path, Path]) -> None:
    sessions, db = world
    result = sessionpipe(
        "run", "--processor", "usage", "--sessions", sessions / "alice", "--user", "alice", "--db", db, "--json"
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert all(not vanished for _, vanished in state(db))


def test_forget_vanished_files_dry_run_then_for_real(world: tuple[Path, Path]) -> None:
    sessions, db = world
    (sessions / "alice" / "-work" / f"{SESSION}.jsonl").unlink()
    run_usage(sessions, db)
    dry = sessionpipe("forget", "--vanished", "--dry-run", "--db", db)
    assert dry.returncode == EXIT_OK, dry.stderr
    assert f"alice/-work/{SESSION}.jsonl" in dry.stdout and "would forget 1 session file" in dry.stdout
    assert len(state(db)) == 3  # nothing went
    done = sessionpipe("forget", "--vanished", "--db", db)
    assert done.returncode == EXIT_OK, done.stderr
    assert "forgot 1 session file" in done.stdout
    assert [key for key, _ in state(db)] == ["alice/-work/" + OTHER + ".jsonl", "bob/-srv/ba79134d.jsonl"]
    with duckdb.connect(str(db), read_only=True) as con:
        left = con.execute("SELECT count(*) FROM usage_rows WHERE session_file LIKE ?", [f"%{SESSION}%"]).fetchone()
    assert left == (0,)
    # The published snapshot no longer holds them either, nor does any copy a run retired.
    with duckdb.connect(str(snapshot_path(db)), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM session_processor_state").fetchone() == (2,)
    assert [path.name for path in db.parent.iterdir() if path.name.endswith(".retired")] == []


def test_forget_a_users_files(world: tuple[Path, Path]) -> None:
    _, db = world
    done = sessionpipe("forget", "--user", "alice", "--db", db)
    assert done.returncode == EXIT_OK, done.stderr
    assert "forgot 2 session files" in done.stdout
    assert [key for key, _ in state(db)] == ["bob/-srv/ba79134d.jsonl"]
    assert [entry["user"] for entry in report(db, "user")["users"]] == ["bob"]


def test_forget_one_session_and_nothing_matching(world: tuple[Path, Path], tmp_path: Path) -> None:
    _, db = world
    done = sessionpipe("forget", "--session", "bob/-srv/ba79134d.jsonl", "--db", db)
    assert done.returncode == EXIT_OK, done.stderr
    assert len(state(db)) == 2
    none = sessionpipe("forget", "--user", "carol", "--db", db)
    assert none.returncode == EXIT_OK and "forgot 0 session files" in none.stdout
    missing = sessionpipe("forget", "--vanished", "--db", tmp_path / "nowhere.duckdb")
    assert missing.returncode == EXIT_USAGE and len(missing.stderr.splitlines()) == 1
