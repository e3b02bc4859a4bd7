"""The scan index (``sessionpipe_runner.scanindex``) against the comparison it shortcuts.

Each differential test compares, on the same volume and database, the scan and plan made through
the index with those made without it (``SESSIONPIPE_SCAN_INDEX=off``: the whole scan compared by
``store.compare_scan``): file counts, issues, every decision, every unsettled state, the vanished
and reappeared files. The other tests change the state or the file behind the index's back and
check that it is refused, and the reference comparison made instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from sessionpipe_contract import EXIT_LEASE_NOT_ACQUIRED, EXIT_OK, EXIT_USAGE
from sessionpipe_runner import scan, scanindex, store
from sessionpipe_runner.cli import main
from sessionpipe_runner.commands import run as run_command
from sessionpipe_runner.commands.common import load_processor
from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.processors.usage import UsageProcessor
from sessionpipe_runner.runner import RunSettings, run
from sessionpipe_runner.scan import plan, scan_sessions
from sessionpipe_runner.scanindex import Scanned, index_path, save, scan_and_compare
from sessionpipe_runner.store.queries import forget_sessions
from tests.unit.test_native_listing import hostile_tree, session

PROCESSOR, VERSION = "usage", "2"
WHEN = datetime(2026, 1, 1, tzinfo=UTC)
#: The names of ``hostile_tree`` that are not UTF-8 (their keys are escaped: the index cannot judge them).
NOT_UTF8 = (b"alice/-app/bad-\xff.jsonl", b"alice/-app/collide-\xfe.jsonl", b"alice/-app/proj-\xfa/inside.jsonl")


def tree(base: Path) -> Path:
    """``hostile_tree`` with more plain files (enough for every case of :data:`CASES`, for two
    users). Its file from past 2262 the scan keeps at the store's bound (``mtime_out_of_range``);
    the index, which holds that bound, lists it every time, and the plan calls it unchanged."""
    root = hostile_tree(base)
    for number in range(40):
        folder = root / ("alice", "bob")[number % 2] / "-many"
        folder.mkdir(exist_ok=True)
        session(folder / f"s{number:02}.jsonl", b"x" * number)
    return root


def utf8_hostile_tree(base: Path) -> Path:
    """:func:`tree` without its names that are not UTF-8, every other odd entry kept."""
    root = tree(base)
    raw = os.fsencode(root)
    for name in (*NOT_UTF8, b"user-\xff/p.jsonl"):
        os.remove(raw + b"/" + name)  # noqa: PTH107 (bytes paths)
    for folder in (b"alice/-app/proj-\xfa", b"user-\xff"):
        os.rmdir(raw + b"/" + folder)  # noqa: PTH106 (bytes paths)
    return root


def add_state(
    con: duckdb.DuckDBPyConnection,
    key: str,
    size: int,
    mtime_ns: int,
    *,
    status: str = "done",
    version: str = VERSION,
    vanished: bool = False,
    processor: str = PROCESSOR,
) -> None:
    con.execute(
        "INSERT INTO session_processor_state (processor, session_file, user_name, size, mtime_ns, content_hash, "
        "processor_version, attempts, status, processed_at, vanished_at) VALUES (?, ?, ?, ?, ?, 'h', ?, 1, ?, ?, ?)",
        [processor, key, key.split("/")[0], size, mtime_ns, version, status, WHEN, WHEN if vanished else None],
    )


#: How each scanned file's state row differs from the file (by its place in the scan).
CASES = (
    "unchanged",
    "grown",
    "shrunk",
    "rewritten",  # same size, another mtime: a touched-only file is this too until it is hashed
    "failed",
    "quarantined",
    "quarantined_changed",
    "old_version",
    "reappeared",
    "reappeared_grown",
    "new",
)


def state_of_every_case(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """State rows for the files of ``root``, one case of :data:`CASES` after another, and rows of
    files not there (some marked vanished already, of several users, of another processor)."""
    store.migrate(con)
    scan = scan_sessions(root)
    assert len(scan) > 2 * len(CASES)
    for index, file in enumerate(sorted(scan.files, key=lambda file: file.key)):
        case, size, mtime = CASES[index % len(CASES)], file.size, file.mtime_ns
        add_state(con, file.key, size, mtime, processor="other")  # another processor's row never counts
        if case == "new":
            continue
        size += {"grown": -1, "shrunk": 1, "reappeared_grown": -1}.get(case, 0)
        mtime += 1 if case in ("rewritten", "quarantined_changed") else 0
        status = {"failed": "failed", "quarantined": "quarantined", "quarantined_changed": "quarantined"}.get(case)
        version = "1" if case == "old_version" else VERSION
        add_state(con, file.key, size, mtime, status=status or "done", version=version, vanished="reap" in case)
    for user in ("alice", "bob", "carol"):
        add_state(con, f"{user}/-gone/s.jsonl", 1, 1)
        add_state(con, f"{user}/-gone/marked.jsonl", 1, 1, vanished=True)


def outcome(scanned: Scanned, version: str = VERSION) -> tuple[Any, ...]:
    """Everything a run takes from a scan and its comparison."""
    scan, compared = scanned.scan, scanned.compared
    decided = plan(scan, compared.unsettled, version)
    return (
        len(scan),
        dict(scan.issues),
        decided.unchanged,
        decided.decided,
        compared.unsettled,
        sorted(compared.vanished),
        sorted(compared.reappeared),
    )


def both_ways(
    monkeypatch: pytest.MonkeyPatch,
    con: duckdb.DuckDBPyConnection,
    db: Path,
    root: Path,
    user: str | None = None,
    version: str = VERSION,
) -> tuple[Scanned, tuple[Any, ...]]:
    """The scan through the index (as it stands), asserted equal to the reference; returns it."""
    monkeypatch.setenv(scanindex.ENV_SCAN_INDEX, scanindex.OFF)
    reference = scan_and_compare(con, db, [root], user, PROCESSOR, version)
    assert reference.not_used == "disabled"
    monkeypatch.delenv(scanindex.ENV_SCAN_INDEX)
    indexed = scan_and_compare(con, db, [root], user, PROCESSOR, version)
    assert outcome(indexed, version) == outcome(reference, version)
    return indexed, outcome(reference, version)


@pytest.fixture
def volume(tmp_path: Path) -> tuple[duckdb.DuckDBPyConnection, Path, Path]:
    """A hostile volume (its names UTF-8), a database with a state row of every case, and its index."""
    root, db = utf8_hostile_tree(tmp_path), tmp_path / "db.duckdb"
    con = store.connect(db)
    state_of_every_case(con, root)
    assert save(con, db, PROCESSOR, VERSION, None)
    return con, db, root


def test_the_index_plans_a_hostile_volume_as_the_whole_comparison_does(
    volume: tuple[duckdb.DuckDBPyConnection, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    con, db, root = volume
    monkeypatch.setattr(scan, "USERS_PER_CALL", 2)  # the index meets the user folders over several calls
    indexed, (scanned, _, unchanged, decided, unsettled, vanished, reappeared) = both_ways(monkeypatch, con, db, root)
    assert indexed.not_used == ""  # the index was used, and left out the plainly unchanged files
    assert indexed.scan.unchanged == unchanged > 0 and len(indexed.scan.keys) == scanned - unchanged
    # Every case is there (equal plans that decided nothing would prove nothing).
    assert {decision.value for _, decision in decided} == {"check", "process", "quarantined"}
    assert any(state is None for state in unsettled.values())
    assert "alice/-app/new\nline.jsonl" in indexed.scan.keys or "alice/-app/new\nline.jsonl" not in unsettled
    assert vanished == ["alice/-gone/s.jsonl", "bob/-gone/s.jsonl", "carol/-gone/s.jsonl"]
    assert len(reappeared) >= 2


def test_one_users_run_through_the_index_vanishes_only_that_users_files(
    volume: tuple[duckdb.DuckDBPyConnection, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    con, db, root = volume
    indexed, result = both_ways(monkeypatch, con, db, root / "alice", user="alice")
    assert indexed.not_used == ""
    assert result[5] == ["alice/-gone/s.jsonl"]


def test_another_processor_version_is_compared_whole(
    volume: tuple[duckdb.DuckDBPyConnection, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    con, db, root = volume
    indexed, result = both_ways(monkeypatch, con, db, root, version="3")
    assert indexed.not_used == "other_version"
    assert result[2] == 0  # nothing is unchanged for a new version


def test_names_that_are_not_utf8_make_the_scan_go_without_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, db = tree(tmp_path), tmp_path / "db.duckdb"
    con = store.connect(db)
    state_of_every_case(con, root)
    save(con, db, PROCESSOR, VERSION, None)
    indexed, result = both_ways(monkeypatch, con, db, root)
    assert indexed.not_used == "odd_names"
    assert "alice/-app/proj-\\xfa/inside.jsonl" in result[4] or result[2] > 0
    assert "name_collision" in result[1]


def _changed_behind_the_index(con: duckdb.DuckDBPyConnection, db: Path, how: str) -> None:
    path = index_path(db, PROCESSOR)
    data = path.read_bytes()
    header, _, body = data.partition(b"\n")
    if how == "update":
        con.execute("UPDATE session_processor_state SET mtime_ns = mtime_ns + 1 WHERE session_file LIKE '%a.jsonl'")
    elif how == "failed":
        done = "SELECT min(session_file) FROM session_processor_state WHERE status = 'done' AND vanished_at IS NULL"
        con.execute(f"UPDATE session_processor_state SET status = 'failed' WHERE session_file = ({done})")
    elif how == "forget":
        forget_sessions(con, [(PROCESSOR, "alice/-app/a.jsonl")], lambda name: UsageProcessor())
    elif how == "truncated":
        path.write_bytes(data[: len(data) - 40])
    elif how == "garbage":
        path.write_bytes(b"\x00garbage\xff" * 50)
    elif how == "digit":  # the same length, one size changed: only the checksum tells
        at = body.index(b" ")
        digit = b"1" if body[at - 1 : at] != b"1" else b"2"
        path.write_bytes(header + b"\n" + body[: at - 1] + digit + body[at:])
    elif how == "header":
        path.write_bytes(header.replace(b'"checksum"', b'"check"') + b"\n" + body)
    elif how == "other_processor":
        path.write_bytes(header.replace(b'"processor": "usage"', b'"processor": "other"') + b"\n" + body)
    elif how == "other_database":  # the index of a database whose state differs
        other = db.with_name("other.duckdb")
        other_con = store.connect(other)
        store.migrate(other_con)
        add_state(other_con, "alice/-app/a.jsonl", 1, 1)
        save(other_con, other, PROCESSOR, VERSION, None)
        other_con.close()
        shutil.copyfile(index_path(other, PROCESSOR), path)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("update", "stale"),
        ("failed", "stale"),
        ("forget", "stale"),
        ("truncated", "malformed"),
        ("garbage", "malformed"),
        ("digit", "malformed"),
        ("header", "malformed"),
        ("other_processor", "foreign"),
        ("other_database", "stale"),
    ],
)
def test_an_index_that_is_not_the_state_now_is_refused(
    volume: tuple[duckdb.DuckDBPyConnection, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    how: str,
    reason: str,
) -> None:
    con, db, root = volume
    _changed_behind_the_index(con, db, how)
    with caplog.at_level(logging.INFO, logger=scanindex.__name__):
        indexed, _ = both_ways(monkeypatch, con, db, root)
    assert indexed.not_used == reason
    assert f"scan index not used ({reason})" in caplog.text
    assert indexed.scan.unchanged == 0  # nothing was left out on its word


def test_after_a_run_the_index_is_patched_and_a_row_changed_elsewhere_makes_it_stale(
    volume: tuple[duckdb.DuckDBPyConnection, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    con, db, root = volume
    trusted = scan_and_compare(con, db, [root], None, PROCESSOR, VERSION).trusted
    assert trusted is not None and "alice/-gone/s.jsonl" in trusted.keys
    assert not save(con, db, PROCESSOR, VERSION, trusted, changed=False)  # the index is the state still
    # What a run does to the rows it looks at: here, settles them all, and removes a vanished row.
    con.execute(
        "UPDATE session_processor_state SET status = 'done', processor_version = $version, vanished_at = NULL "
        "WHERE processor = $processor AND list_contains($keys, session_file)",
        {"version": VERSION, "processor": PROCESSOR, "keys": trusted.keys},
    )
    con.execute("DELETE FROM session_processor_state WHERE session_file = 'bob/-gone/s.jsonl'")
    assert save(con, db, PROCESSOR, VERSION, trusted)
    indexed, _ = both_ways(monkeypatch, con, db, root)
    assert indexed.not_used == ""  # the patched index is the state now
    assert indexed.trusted is not None
    con.execute("UPDATE session_processor_state SET size = size + 1 WHERE session_file = 'carol/-gone/marked.jsonl'")
    assert "carol/-gone/marked.jsonl" not in indexed.trusted.keys
    assert save(con, db, PROCESSOR, VERSION, indexed.trusted)  # a row it did not expect to change
    assert both_ways(monkeypatch, con, db, root)[0].not_used == "stale"


LINE = (
    '{"type":"assistant","timestamp":"2026-01-0%dT00:00:00Z","requestId":"r%d","message":{"id":"m%d",'
    '"model":"claude-sonnet-4-20250514","usage":{"input_tokens":%d,"output_tokens":1}}}\n'
)


def _usage_settings(sessions: Path, db: Path) -> RunSettings:
    return RunSettings(processor="usage", sessions=sessions, database=db, lease_wait_seconds=5, workers=1)


def _usage_run(
    sessions: Path,
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
    index: bool,
    scan: scanindex.PendingScan | None = None,
) -> tuple[Any, ...]:
    if index:
        monkeypatch.delenv(scanindex.ENV_SCAN_INDEX, raising=False)
    else:
        monkeypatch.setenv(scanindex.ENV_SCAN_INDEX, scanindex.OFF)
    summary = run(_usage_settings(sessions, db), UsageProcessor(), FileLease(db, "usage"), scan=scan)
    assert summary.exit_code == EXIT_OK, summary.message
    with duckdb.connect(str(db), read_only=True) as con:
        state = con.execute(
            "SELECT * EXCLUDE (processed_at, vanished_at), vanished_at IS NULL FROM session_processor_state ORDER BY 2"
        ).fetchall()
        usage = con.execute("SELECT count(*), sum(input_tokens) FROM usage_rows").fetchall()
    counts = (summary.scanned, summary.unchanged, summary.processed, summary.hashed, summary.skipped, summary.appended)
    return counts, dict(summary.issues), state, usage


def test_runs_through_the_index_end_as_runs_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two databases over one volume, one run with the index and one without after each change."""
    sessions = tmp_path / "sessions"
    paths = [sessions / f"user{number % 3}" / f"-p{number % 2}" / f"s{number:02}.jsonl" for number in range(12)]
    for number, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(LINE % (1, number, number, number))
    used = _spy_on_comparisons(monkeypatch)
    changes = [
        lambda: None,  # nothing changed
        lambda: paths[0].open("a").write(LINE % (2, 100, 100, 5)),  # grown: its tail is read
        lambda: os.utime(paths[1], ns=(1, 1)),  # touched only
        lambda: paths[2].write_text(LINE % (3, 200, 200, 7)),  # rewritten
        lambda: paths[3].rename(tmp_path / "kept.jsonl"),  # vanished
        lambda: (tmp_path / "kept.jsonl").rename(paths[3]),  # reappeared
        lambda: paths[4].write_text('{"type":"assistant","message":{"usage":{"input_tokens":"x"}}}\n'),  # odd line
    ]
    for number, change in enumerate(changes):
        change()
        with_index = _usage_run(sessions, tmp_path / "index.duckdb", monkeypatch, index=True)
        without = _usage_run(sessions, tmp_path / "reference.duckdb", monkeypatch, index=False)
        assert with_index == without, f"change {number}"
    assert used[0::2] == ["missing"] + [""] * (len(changes) - 1)


def test_a_run_whose_index_cannot_be_written_succeeds_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sessions, db = tmp_path / "sessions", tmp_path / "usage.duckdb"
    (sessions / "alice" / "-p").mkdir(parents=True)
    (sessions / "alice" / "-p" / "s.jsonl").write_text(LINE % (1, 1, 1, 1))
    path = index_path(db, PROCESSOR)
    path.with_name(path.name + ".tmp").mkdir()  # in the way of the temporary file
    with caplog.at_level(logging.WARNING, logger="sessionpipe_runner.runner"):
        counts, _, _, _ = _usage_run(sessions, db, monkeypatch, index=True)
    assert counts[2] == 1  # processed, and the run succeeded (asserted by _usage_run)
    assert "scan index not written" in caplog.text
    assert not path.exists()


def test_a_run_walks_the_volume_while_it_opens_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk and DuckDB's start each release the GIL: a run starts the scan in a thread before
    it opens the database, and the plan is the one a scan after the opening makes."""
    sessions = tmp_path / "sessions"
    for number in range(6):
        path = sessions / f"user{number % 2}" / "-p" / f"s{number}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(LINE % (1, number, number, number))
    events: list[tuple[str, str]] = []
    original_start, original_scan, original_connect = (
        scanindex.PendingScan.__init__,
        scanindex.scan_roots,
        store.connect,
    )

    def starting(pending: scanindex.PendingScan, *args: Any, **kwargs: Any) -> None:
        events.append(("scan starts", threading.current_thread().name))
        original_start(pending, *args, **kwargs)

    def scanning(*args: Any, **kwargs: Any) -> Any:
        events.append(("walk", threading.current_thread().name))
        return original_scan(*args, **kwargs)

    def connecting(*args: Any, **kwargs: Any) -> Any:
        events.append(("database opens", threading.current_thread().name))
        return original_connect(*args, **kwargs)

    monkeypatch.setattr(scanindex.PendingScan, "__init__", starting)
    monkeypatch.setattr(scanindex, "scan_roots", scanning)
    monkeypatch.setattr(store, "connect", connecting)
    main = threading.current_thread().name
    overlapped = _usage_run(sessions, tmp_path / "index.duckdb", monkeypatch, index=True)
    assert events[0] == ("scan starts", main) and ("walk", "scan") in events
    assert events.index(("database opens", main)) > 0
    assert _usage_run(sessions, tmp_path / "reference.duckdb", monkeypatch, index=False) == overlapped

    (sessions / "user0" / "-p" / "s0.jsonl").open("a").write(LINE % (2, 100, 100, 5))
    events.clear()
    again = _usage_run(sessions, tmp_path / "index.duckdb", monkeypatch, index=True)
    assert events.count(("walk", "scan")) == 1 and ("walk", main) not in events  # one walk: the index was trusted
    reference = _usage_run(sessions, tmp_path / "reference.duckdb", monkeypatch, index=False)
    assert overlapped != again and again == reference


def test_the_index_file_is_written_while_the_run_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the index holds is read from the database before the run goes on; the file is written
    in a thread while the run checkpoints and publishes, and is whole when the run returns."""
    sessions = tmp_path / "sessions"
    (sessions / "alice" / "-p").mkdir(parents=True)
    (sessions / "alice" / "-p" / "s.jsonl").write_text(LINE % (1, 1, 1, 1))
    writers: list[str] = []
    original = scanindex._write

    def writing(*args: Any) -> None:
        writers.append(threading.current_thread().name)
        original(*args)

    monkeypatch.setattr(scanindex, "_write", writing)
    db = tmp_path / "usage.duckdb"
    _usage_run(sessions, db, monkeypatch, index=True)
    assert writers == ["scan-index"]
    (sessions / "alice" / "-p" / "s.jsonl").open("a").write(LINE % (2, 2, 2, 2))
    _usage_run(sessions, db, monkeypatch, index=True)
    assert writers == ["scan-index", "scan-index"]
    assert index_path(db, PROCESSOR).read_bytes().count(b"\n") == 2  # the header and the one file's row, whole


def _spy_on_comparisons(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Why each comparison from now on went without the index ("" when it used it)."""
    used: list[str] = []
    original = scanindex.PendingScan.compare

    def spying(pending: scanindex.PendingScan, con: Any, version: str) -> Scanned:
        scanned = original(pending, con, version)
        used.append(scanned.not_used)
        return scanned

    monkeypatch.setattr(scanindex.PendingScan, "compare", spying)
    return used


def test_the_run_command_starts_the_walk_before_it_takes_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sessions, db = tmp_path / "sessions", tmp_path / "usage.duckdb"
    (sessions / "alice" / "-p").mkdir(parents=True)
    (sessions / "alice" / "-p" / "s.jsonl").write_text(LINE % (1, 1, 1, 1))
    events: list[str] = []
    original_start, original_acquire = scanindex.PendingScan.__init__, FileLease.acquire

    def starting(pending: scanindex.PendingScan, *args: Any, **kwargs: Any) -> None:
        events.append("scan starts")
        original_start(pending, *args, **kwargs)

    def acquiring(lease: FileLease, wait_seconds: float) -> int:
        events.append("lease taken")
        return original_acquire(lease, wait_seconds)

    def loading(name: str) -> Any:
        events.append("processor loaded")
        return load_processor(name)

    monkeypatch.setattr(scanindex.PendingScan, "__init__", starting)
    monkeypatch.setattr(FileLease, "acquire", acquiring)
    monkeypatch.setattr(run_command, "load_processor", loading)
    used = _spy_on_comparisons(monkeypatch)
    arguments = ["run", "--processor", "usage", "--sessions", str(sessions), "--db", str(db), "--json"]
    assert main(arguments) == EXIT_OK
    assert events == ["scan starts", "processor loaded", "lease taken"]
    assert '"processed": 1' in capsys.readouterr().out
    (sessions / "alice" / "-p" / "s.jsonl").open("a").write(LINE % (2, 2, 2, 2))
    assert main(arguments) == EXIT_OK
    assert events[3:] == ["scan starts", "processor loaded", "lease taken"]
    assert used == ["missing", ""]  # the second run trusted the index the first wrote


def test_a_run_of_a_processor_not_installed_waits_for_its_early_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sessions = tmp_path / "sessions"
    (sessions / "alice" / "-p").mkdir(parents=True)
    walks: list[threading.Thread] = []
    original = scanindex.scan_roots

    def slow_walk(*args: Any, **kwargs: Any) -> Any:
        walks.append(threading.current_thread())
        time.sleep(0.3)  # longer than the command takes to refuse the name
        return original(*args, **kwargs)

    monkeypatch.setattr(scanindex, "scan_roots", slow_walk)
    arguments = ["run", "--processor", "nope", "--sessions", str(sessions), "--db", str(tmp_path / "db.duckdb")]
    assert main(arguments) == EXIT_USAGE
    assert "no processor named 'nope'" in capsys.readouterr().err
    assert len(walks) == 1 and not walks[0].is_alive()


@pytest.mark.parametrize("walk_held", [False, True], ids=["walked", "still_walking"])
def test_a_scan_started_before_another_writers_run_finds_the_index_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, walk_held: bool
) -> None:
    """A scan started before the lease reads the index another writer then replaces: the
    comparison, under the lease, refuses it and walks again, and the run ends as one without the
    index ends. The state is summed for that check while the walk goes on, if it still does."""
    sessions = tmp_path / "sessions"
    paths = [sessions / f"user{number % 2}" / "-p" / f"s{number}.jsonl" for number in range(4)]
    for number, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(LINE % (1, number, number, number))
    indexed, reference = tmp_path / "index.duckdb", tmp_path / "reference.duckdb"
    _usage_run(sessions, indexed, monkeypatch, index=True)
    _usage_run(sessions, reference, monkeypatch, index=False)
    monkeypatch.delenv(scanindex.ENV_SCAN_INDEX, raising=False)
    walks: list[threading.Thread] = []
    released = threading.Event()
    original_walk, original_summary = scanindex.scan_roots, scanindex.state_summary

    def held_walk(*args: Any, **kwargs: Any) -> Any:
        walks.append(threading.current_thread())
        if len(walks) == 1 and walk_held:  # the early scan's walk, once it has read the index
            released.wait(10)
        return original_walk(*args, **kwargs)

    monkeypatch.setattr(scanindex, "scan_roots", held_walk)
    early = scanindex.PendingScan.of_run(_usage_settings(sessions, indexed))
    if not walk_held:
        early.join()  # it has read the index and walked

    paths[0].open("a").write(LINE % (2, 100, 100, 5))  # another writer runs meanwhile
    _usage_run(sessions, indexed, monkeypatch, index=True)
    _usage_run(sessions, reference, monkeypatch, index=False)
    paths[1].open("a").write(LINE % (3, 200, 200, 7))  # after the early walk: only a second walk sees it
    summed_while_walking: list[bool] = []

    def summing(*args: Any) -> Any:
        summed_while_walking.append(walks[0].is_alive())
        released.set()
        return original_summary(*args)

    monkeypatch.setattr(scanindex, "state_summary", summing)
    used = _spy_on_comparisons(monkeypatch)
    late = _usage_run(sessions, indexed, monkeypatch, index=True, scan=early)
    assert used == ["stale"]
    assert summed_while_walking == [walk_held]
    assert late == _usage_run(sessions, reference, monkeypatch, index=False)
    assert late[0][2] == 1  # the file grown after the early walk was processed


def test_a_run_that_cannot_take_the_lease_waits_for_its_early_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions, db = tmp_path / "sessions", tmp_path / "usage.duckdb"
    (sessions / "alice" / "-p").mkdir(parents=True)
    (sessions / "alice" / "-p" / "s.jsonl").write_text(LINE % (1, 1, 1, 1))
    original = scanindex.scan_roots

    def slow_walk(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)  # longer than the run takes to give up on the lease
        return original(*args, **kwargs)

    monkeypatch.setattr(scanindex, "scan_roots", slow_walk)
    holder = FileLease(db, "usage")
    holder.acquire(0)
    try:
        settings = RunSettings(processor="usage", sessions=sessions, database=db, lease_wait_seconds=0)
        early = scanindex.PendingScan.of_run(settings)
        summary = run(settings, UsageProcessor(), FileLease(db, "usage"), scan=early)
    finally:
        holder.release()
    assert summary.exit_code == EXIT_LEASE_NOT_ACQUIRED
    assert early._thread is not None and not early._thread.is_alive()
    assert not db.exists()  # nothing was written
