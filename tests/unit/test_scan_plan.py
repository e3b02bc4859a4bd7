"""Change detection: the database's shortcut for unchanged files agrees with :func:`scan.decide`."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from sessionpipe_contract import EXIT_OK
from sessionpipe_runner import store
from sessionpipe_runner.fencing import Fence
from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.processors.base import SessionFile
from sessionpipe_runner.processors.usage import UsageProcessor
from sessionpipe_runner.runner import RunSettings, run
from sessionpipe_runner.scan import Decision, decide, new_files, plan, scan_sessions
from sessionpipe_runner.store import StateRow
from sessionpipe_runner.summary import RunSummary

VERSION = "2"


def stored(con: duckdb.DuckDBPyConnection, processor: str, state: StateRow) -> None:
    con.execute(
        "INSERT INTO session_processor_state (processor, session_file, user_name, size, mtime_ns, content_hash, "
        "processor_version, attempts, status, processed_at) VALUES (?, ?, 'alice', ?, ?, ?, ?, ?, ?, ?)",
        [processor, *state[:7], datetime(2026, 1, 1, tzinfo=UTC)],  # the columns the rule reads
    )


def place(sessions: Path, key: str, size: int, mtime_ns: int) -> None:
    path = sessions / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_the_database_leaves_out_exactly_the_files_decide_calls_unchanged(tmp_path: Path) -> None:
    con = store.connect(tmp_path / "db.duckdb")
    store.migrate(con)
    sessions = tmp_path / "sessions"
    states: dict[str, StateRow] = {}
    combinations = itertools.product(["done", "failed", "quarantined"], [VERSION, "1"], [100, 101], [7, 8])
    for number, (status, version, size, mtime_ns) in enumerate(combinations):
        key = f"alice/-app/s{number:02}.jsonl"
        place(sessions, key, 100, 7)
        states[key] = StateRow(key, size, mtime_ns, "hash", version, 2, status)
        stored(con, "usage", states[key])
        # The same file, unchanged for another processor, must not count for this one.
        stored(con, "other", StateRow(key, 100, 7, "hash", VERSION, 0, "done"))
    place(sessions, "alice/-app/new.jsonl", 5, 5)  # never stored
    stored(con, "usage", StateRow("alice/-app/gone.jsonl", 1, 1, None, VERSION, 0, "done"))  # not scanned
    scan = scan_sessions(sessions)
    files = scan.files

    compared = store.compare_scan(con, "usage", VERSION, None, (scan.keys, scan.sizes, scan.mtimes))
    unsettled = compared.unsettled

    expected = [(file, decide(file, states.get(file.key), VERSION)) for file in sorted(files, key=lambda f: f.key)]
    unchanged = {file.key for file, decision in expected if decision is Decision.UNCHANGED}
    assert unchanged, "the combinations include unchanged files"
    decided = plan(scan, unsettled, VERSION)
    assert decided.unchanged == len(unchanged)
    assert decided.decided == [(file, decision) for file, decision in expected if file.key not in unchanged]
    assert set(unsettled) == {file.key for file in files} - unchanged  # the shortcut is taken
    assert unsettled["alice/-app/new.jsonl"] is None
    assert all(unsettled[key] == states[key] for key in unsettled if key in states)


def test_a_processors_first_run_finds_every_file_new_beside_another_processors_state(tmp_path: Path) -> None:
    """Without one state row of its own, a processor's files are all new (compared without a join)."""
    con = store.connect(tmp_path / "db.duckdb")
    store.migrate(con)
    sessions = tmp_path / "sessions"
    for number in range(3):
        place(sessions, f"alice/-app/s{number}.jsonl", 10, 7)
        stored(con, "other", StateRow(f"alice/-app/s{number}.jsonl", 10, 7, "hash", VERSION, 0, "done"))
    stored(con, "other", StateRow("alice/-app/gone.jsonl", 1, 1, None, VERSION, 0, "done"))
    scan = scan_sessions(sessions)
    keys = (scan.keys, scan.sizes, scan.mtimes)
    assert store.compare_scan(con, "usage", VERSION, None, keys) == (dict.fromkeys(scan.keys), [], [])
    # The other processor's own comparison: all settled but the file no longer there.
    assert store.compare_scan(con, "other", VERSION, None, keys) == ({}, ["alice/-app/gone.jsonl"], [])


def test_new_files_come_in_the_order_plan_decides_them_all_process(tmp_path: Path) -> None:
    """A run whose files are all new makes them as the workers take them (``scan.new_files``):
    the same files, in the same order, as :func:`plan` decides, every one ``PROCESS``."""
    sessions = tmp_path / "sessions"
    for number, key in enumerate(["bob/-b/2.jsonl", "alice/-a/s/subagents/x.jsonl", "alice/-a/1.jsonl", "bob/0.jsonl"]):
        place(sessions, key, 10 + number, 7 + number)
    scan = scan_sessions(sessions)
    decided = plan(scan, dict.fromkeys(scan.keys), VERSION)
    assert decided.unchanged == 0 and {decision for _, decision in decided.decided} == {Decision.PROCESS}
    assert list(new_files(scan)) == [file for file, _ in decided.decided]
    assert [file.key for file in new_files(scan)] == sorted(scan.keys)


def test_no_scanned_files_need_no_query(tmp_path: Path) -> None:
    con = store.connect(tmp_path / "db.duckdb")
    store.migrate(con)
    assert store.compare_scan(con, "usage", VERSION, None, ([], [], [])) == ({}, [], [])


def _counting_session_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys of the :class:`SessionFile` objects built from now on, in this process."""
    built: list[str] = []
    original = SessionFile.__init__

    def counting(self: SessionFile, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        built.append(self.key)

    monkeypatch.setattr(SessionFile, "__init__", counting)
    return built


def _usage_run(sessions: Path, db: Path) -> RunSummary:
    settings = RunSettings(processor="usage", sessions=sessions, database=db, lease_wait_seconds=5, workers=1)
    summary = run(settings, UsageProcessor(), FileLease(db, "usage"))
    assert summary.exit_code == EXIT_OK, summary.message
    return summary


def test_a_run_builds_a_session_file_only_for_the_files_it_must_look_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions, db = tmp_path / "sessions", tmp_path / "usage.duckdb"
    for number in range(30):
        path = sessions / f"user{number % 3}" / f"-p{number % 2}" / f"s{number:02}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"type":"user","message":{"role":"user","content":"hi"}}\n')
    assert _usage_run(sessions, db).processed == 30
    built = _counting_session_files(monkeypatch)

    again = _usage_run(sessions, db)

    assert (again.scanned, again.unchanged, again.hashed) == (30, 30, 0)
    assert built == []  # the unchanged files were compared as (key, size, mtime) columns only
    grown = sessions / "user1" / "-p0" / "s04.jsonl"
    with grown.open("a") as handle:
        handle.write('{"type":"user","message":{"role":"user","content":"more"}}\n')

    third = _usage_run(sessions, db)

    assert (third.scanned, third.unchanged, third.processed) == (30, 29, 1)
    assert set(built) == {"user1/-p0/s04.jsonl"}  # (reading it makes another, of the size read)


def test_a_run_where_nothing_vanished_commits_only_its_own_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions, db = tmp_path / "sessions", tmp_path / "usage.duckdb"
    place(sessions, "alice/-app/kept.jsonl", 10, 7)
    place(sessions, "alice/-app/gone.jsonl", 10, 7)
    _usage_run(sessions, db)
    commits: list[str] = []
    original = Fence.commit

    def counting(self: Fence, con: duckdb.DuckDBPyConnection, work: Callable[[], None]) -> None:
        commits.append(getattr(work, "__qualname__", "?"))
        original(self, con, work)

    monkeypatch.setattr(Fence, "commit", counting)

    _usage_run(sessions, db)

    assert len(commits) == 1  # the run's end; comparing the scan with the state writes nothing
    (sessions / "alice/-app/gone.jsonl").unlink()
    gone = _usage_run(sessions, db)
    assert gone.issues["session_file_vanished"] == 1
    assert len(commits) == 3  # the vanished mark is committed, under the fence, when there is one
