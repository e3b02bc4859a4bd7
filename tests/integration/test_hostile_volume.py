"""The sessions volume is hostile: nothing outside it is read, and no single file blocks a run.

Each test builds the hostile case on a real file system and runs the real runner over it (the
``lines`` test plugin stores each line's number and length, so what was read is visible in the
database): symlinks to files outside the volume, a symlink or a FIFO swapped in between the scan
and the read, names that are not UTF-8 or hold a newline, folders nested deeper than Python's
recursion limit or than ``PATH_MAX``, and a single line of 300 MB, whose reading must stay within
the memory the README budgets for the runner, in the runner and in its worker processes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
import xxhash

from sessionpipe_contract import EXIT_OK
from sessionpipe_runner import work
from sessionpipe_runner.names import key_part, printable, valid_text
from sessionpipe_runner.processors.base import Output, Processor, SessionFile
from sessionpipe_runner.reading import MAX_LINE_BYTES, read_snapshot
from sessionpipe_runner.scan import MAX_FOLDER_DEPTH, scan_sessions
from tests.runner_support import REPO, install_test_plugin, run_summary, sessionpipe, sessionpipe_env

SECRET = b'{"secret": "outside the volume"}\n{"secret": 2}\n'


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    return sessionpipe_env(install_test_plugin(tmp_path / "site"))


def make_project(base: Path, name: str = "-app") -> tuple[Path, Path]:
    """(a sessions root under ``base``, the project folder ``alice/<name>`` made in it)."""
    sessions = base / "sessions"
    project = sessions / "alice" / name
    project.mkdir(parents=True)
    return sessions, project


def write_session(path: Path | bytes, lines: int = 2) -> None:
    """A small transcript of ``lines`` JSON lines (``path`` may be bytes: a name that is not UTF-8)."""
    with open(path, "wb") as handle:  # noqa: PTH123 (bytes paths)
        handle.write(b"".join(b'{"n": %d}\n' % number for number in range(lines)))


def run_lines(sessions: Path, db: Path, env: dict[str, str], *extra: str) -> dict[str, object]:
    result = sessionpipe("run", "--processor", "lines", "--sessions", sessions, "--db", db, "--json", *extra, env=env)
    summary = run_summary(result)
    summary["_exit"] = result.returncode
    return summary


def query(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


class Recorder(Processor):
    """Keeps the bytes it was given, to show what a read returned."""

    name = "recorder"
    version = "1"

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def process(self, session: SessionFile, data: bytes) -> Output:
        self.seen.append(data)
        return Output(items=1)


# --- symlinks -------------------------------------------------------------------------------


def test_symlinked_files_inside_the_volume_are_never_read(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    sessions, project = make_project(tmp_path)
    write_session(project / "real.jsonl")
    secret = tmp_path / "elsewhere" / "secret.jsonl"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    (project / "outside.jsonl").symlink_to(secret)
    (project / "passwd.jsonl").symlink_to("/etc/passwd")
    (project / "inside.jsonl").symlink_to(project / "real.jsonl")
    (project / "dangling.jsonl").symlink_to(tmp_path / "nothing-here")
    # The root itself may be reached through a symlink (a volume mount, --sessions through a link).
    through_link = tmp_path / "sessions-link"
    through_link.symlink_to(sessions, target_is_directory=True)

    db = tmp_path / "db.duckdb"
    summary = run_lines(through_link, db, plugin_env)
    assert summary["_exit"] == EXIT_OK
    assert summary["processed"] == 1
    assert summary["issues"] == {"symlink_skipped": 4}
    assert query(db, "SELECT DISTINCT session_file FROM line_rows") == [("alice/-app/real.jsonl",)]


def test_a_symlink_or_fifo_swapped_in_after_the_scan_is_not_read(tmp_path: Path) -> None:
    sessions, project = make_project(tmp_path)
    for name in ("file.jsonl", "fifo.jsonl"):
        write_session(project / name)
    nested = sessions / "alice" / "-deep" / "session"
    nested.mkdir(parents=True)
    write_session(nested / "chat.jsonl")
    scanned = {file.key: file for file in scan_sessions(sessions).files}
    assert len(scanned) == 3

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "session").mkdir(parents=True)
    (elsewhere / "secret.jsonl").write_bytes(SECRET)
    (elsewhere / "session" / "chat.jsonl").write_bytes(SECRET)
    (project / "file.jsonl").unlink()
    (project / "file.jsonl").symlink_to(elsewhere / "secret.jsonl")
    # A folder on the way to the file becomes a link to a folder with a file of the same name.
    (nested / "chat.jsonl").unlink()
    nested.rmdir()
    nested.symlink_to(elsewhere / "session", target_is_directory=True)
    (project / "fifo.jsonl").unlink()
    os.mkfifo(project / "fifo.jsonl")

    processor = Recorder()
    outcomes: dict[str, work.Outcome] = {}

    def examine_all() -> None:
        for key, file in sorted(scanned.items()):
            outcomes[key] = work.examine(processor, file, None).outcome

    reader = threading.Thread(target=examine_all, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # blocked opening the FIFO: give it a writer so the thread can end
        os.close(os.open(project / "fifo.jsonl", os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=10)
        pytest.fail("reading a FIFO swapped in after the scan blocked the run")
    assert processor.seen == []
    assert outcomes == {
        "alice/-app/fifo.jsonl": work.Outcome.NOT_A_FILE,
        "alice/-app/file.jsonl": work.Outcome.SYMLINK_SKIPPED,
        "alice/-deep/session/chat.jsonl": work.Outcome.SYMLINK_SKIPPED,
    }


# --- odd names ------------------------------------------------------------------------------


def test_a_name_that_is_not_utf8_gets_a_stable_escaped_key_and_blocks_nothing(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    sessions, project = make_project(tmp_path)
    write_session(project / "good.jsonl")
    write_session(bytes(project) + b"/bad\xff.jsonl", lines=3)
    odd_project = bytes(sessions) + b"/alice/-caf\xe9"
    os.mkdir(odd_project)  # noqa: PTH102 (a bytes path)
    write_session(odd_project + b"/s.jsonl", lines=4)
    # A decodable name that reads like an escaped one: the undecodable file that would share its
    # key is skipped and counted, whatever order the directory lists them in.
    write_session(bytes(project) + b"/twin\\xff.jsonl", lines=5)
    write_session(bytes(project) + b"/twin\xff.jsonl", lines=6)

    db = tmp_path / "db.duckdb"
    first = run_lines(sessions, db, plugin_env)
    assert first["_exit"] == EXIT_OK, first
    assert (first["processed"], first["errors"]) == (4, 0)
    assert first["issues"] == {"name_collision": 1}
    stored = dict(query(db, "SELECT session_file, count(*) FROM line_rows GROUP BY ALL"))
    assert stored == {
        "alice/-app/good.jsonl": 2,
        "alice/-app/bad\\xff.jsonl": 3,
        "alice/-caf\\xe9/s.jsonl": 4,
        "alice/-app/twin\\xff.jsonl": 5,
    }
    second = run_lines(sessions, db, plugin_env)
    assert (second["_exit"], second["hashed"], second["processed"], second["unchanged"]) == (EXIT_OK, 0, 0, 4)


def test_a_newline_in_a_name_does_not_break_the_text_output(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    sessions, project = make_project(tmp_path, "-app\nproject")
    (project / "fails\n  failed: forged.jsonl").write_bytes(b'{"n": "PLEASE-FAIL"}\n')
    write_session(project / "ok\rline.jsonl")
    db = tmp_path / "db.duckdb"
    result = sessionpipe("run", "--processor", "lines", "--sessions", sessions, "--db", db, env=plugin_env)
    assert result.returncode == EXIT_OK, result.stderr
    failed = [line for line in result.stdout.splitlines() if "failed:" in line]
    assert failed == [
        "  failed: alice/-app\\nproject/fails\\n  failed: forged.jsonl: RuntimeError: refusing "
        "alice/-app\\nproject/fails\\n  failed: forged.jsonl: it asks to fail"
    ]
    status = sessionpipe("status", "--db", db, env=plugin_env)
    assert status.returncode == EXIT_OK
    assert len(status.stdout.splitlines()) == 2  # the processor, its one run
    dry = sessionpipe("forget", "--user", "alice", "--dry-run", "--db", db, env=plugin_env)
    assert dry.returncode == EXIT_OK, dry.stderr
    listed = dry.stdout.splitlines()[1:]  # after the count, one line per file
    assert len(listed) == 2, dry.stdout
    assert all(line.startswith("  lines  alice/-app\\nproject/") for line in listed), dry.stdout


def test_a_newline_in_a_name_does_not_break_the_usage_report(tmp_path: Path) -> None:
    sessions, project = make_project(tmp_path, "-app\nproject")
    line = (
        b'{"type":"assistant","sessionId":"s","requestId":"r1","timestamp":"2025-12-01T10:00:00.000Z",'
        b'"message":{"id":"m1","model":"claude-sonnet-4-5-20250929","usage":{"input_tokens":3,"output_tokens":5}}}\n'
    )
    (project / "two\nlines.jsonl").write_bytes(line)
    db = tmp_path / "db.duckdb"
    env = sessionpipe_env()
    run = sessionpipe("run", "--processor", "usage", "--sessions", sessions, "--db", db, env=env)
    assert run.returncode == EXIT_OK, run.stderr
    for by in ("session", "project"):
        report = sessionpipe("report", "usage", "--by", by, "--db", db, env=env)
        assert report.returncode == EXIT_OK, report.stderr
        lines = report.stdout.splitlines()
        assert len(lines) == 5, report.stdout  # header, rule, the one row, rule, total
        assert "-app\\nproject" in lines[2]


# --- deep folders ---------------------------------------------------------------------------


def make_nested(base: Path, names: list[str]) -> None:
    """Folders ``base/names[0]/names[1]/…`` with a session at the bottom, however long the path."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        session = os.open("deep.jsonl", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(session, b'{"n": 0}\n')
        os.close(session)
    finally:
        os.close(fd)


def remove_nested(base: Path, names: list[str]) -> None:
    """Undo :func:`make_nested` without recursion (Python 3.11's rmtree recurses)."""
    fds = [os.open(base, os.O_RDONLY | os.O_DIRECTORY)]
    for name in names:
        fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
    os.unlink("deep.jsonl", dir_fd=fds[-1])
    for name, parent in zip(reversed(names), reversed(fds[:-1]), strict=True):
        os.rmdir(name, dir_fd=parent)
    for fd in fds:
        os.close(fd)


@pytest.fixture
def deep_volume(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    sessions, project = make_project(tmp_path)
    write_session(project / "shallow.jsonl")
    nested: list[str] = []
    yield sessions, nested
    if nested:
        remove_nested(sessions / "alice", nested)


def test_a_file_990_folders_deep_is_counted_and_blocks_nothing(
    deep_volume: tuple[Path, list[str]], tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    sessions, nested = deep_volume
    nested.extend(["d"] * 990)
    make_nested(sessions / "alice", nested)
    summary = run_lines(sessions, tmp_path / "db.duckdb", plugin_env)
    assert summary["_exit"] == EXIT_OK, summary
    assert summary["processed"] == 1
    assert summary["issues"] == {"too_deep": 1}


def test_a_file_whose_path_is_longer_than_path_max_is_processed(
    deep_volume: tuple[Path, list[str]], tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    sessions, nested = deep_volume
    nested.extend([f"{index:02}" + "p" * 200 for index in range(22)])  # 4,500 bytes of folders
    make_nested(sessions / "alice", nested)
    assert len(str(sessions.joinpath("alice", *nested, "deep.jsonl"))) > 4096
    db = tmp_path / "db.duckdb"
    summary = run_lines(sessions, db, plugin_env)
    assert summary["_exit"] == EXIT_OK, summary
    assert (summary["processed"], summary["issues"]) == (2, {})
    deep_key = "/".join(["alice", *nested, "deep.jsonl"])
    assert query(db, "SELECT count(*) FROM line_rows WHERE session_file = ?", deep_key) == [(1,)]


# --- giant lines ----------------------------------------------------------------------------


def test_a_line_over_the_limit_is_skipped_counted_and_keeps_later_line_numbers(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    sessions, project = make_project(tmp_path)
    giant = project / "giant.jsonl"
    with giant.open("wb") as handle:
        handle.write(b'{"n": 0}\n{"big": "')
        handle.truncate(MAX_LINE_BYTES + 100)  # sparse: a line of NULs just over the limit
        handle.seek(0, os.SEEK_END)
        handle.write(b'"}\n{"n": 2}\n')
    write_session(project / "small.jsonl")
    db = tmp_path / "db.duckdb"
    first = run_lines(sessions, db, plugin_env, "--workers", "1")
    assert first["_exit"] == EXIT_OK, first
    assert (first["processed"], first["issues"]) == (2, {"line_too_long": 1})
    lengths = query(db, "SELECT line_no, length FROM line_rows WHERE session_file LIKE '%giant%' ORDER BY 1")
    assert lengths == [(1, 8), (2, 0), (3, 8)]  # the long line's place is kept, empty

    # A change inside the long line is a change of the file: it is processed again.
    before = read_snapshot(str(giant))
    with giant.open("r+b") as handle:
        handle.seek(MAX_LINE_BYTES // 2)
        handle.write(b"x")
    os.utime(giant, ns=(1, 1))
    after = read_snapshot(str(giant))
    assert before.content_hash != after.content_hash and before.size == after.size
    second = run_lines(sessions, db, plugin_env, "--workers", "1")
    assert (second["hashed"], second["processed"]) == (1, 1)


#: Runs a command and prints the peak resident set of it and every descendant it waited for, in KiB.
PEAK_RSS = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(process.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""
GIANT_LINE_BYTES = 300 * 1024 * 1024
MiB = 1024 * 1024


def peak_rss(sessions: Path, db: Path, env: dict[str, str], workers: str) -> int:
    """The largest resident set (bytes) of the runner or one of its workers during one run."""
    command = [sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "sessionpipe_runner.cli", "run"]
    command += ["--processor", "lines", "--sessions", str(sessions), "--db", str(db), "--workers", workers]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=True)
    code, kib = map(int, result.stdout.split())
    assert code == EXIT_OK
    return kib * 1024


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """The peak resident set of a run over one small file, in the runner alone and with two workers."""
    base = tmp_path_factory.mktemp("baseline")
    env = sessionpipe_env(install_test_plugin(base / "site"), TESTPLUGIN_PARALLEL="1")
    small = base / "sessions"
    (small / "alice" / "-app").mkdir(parents=True)
    write_session(small / "alice" / "-app" / "s.jsonl")
    return {workers: peak_rss(small, base / f"{workers}.duckdb", env, workers) for workers in ("1", "2")}


@pytest.mark.parametrize(
    ("workers", "newline"), [("1", False), ("2", True)], ids=["runner-no-newline", "workers-with-newline"]
)
def test_a_300_mb_line_is_read_in_bounded_memory(
    tmp_path: Path, baselines: dict[str, int], workers: str, newline: bool
) -> None:
    env = sessionpipe_env(install_test_plugin(tmp_path / "site"), TESTPLUGIN_PARALLEL="1")
    sessions, project = make_project(tmp_path)
    giant = project / "giant.jsonl"
    with giant.open("wb") as handle:
        handle.write(b'{"n": 0}\n')
        handle.truncate(GIANT_LINE_BYTES)  # sparse: a line of NULs, written in no time
        if newline:
            handle.seek(0, os.SEEK_END)
            handle.write(b'\n{"n": 2}\n')
    db = tmp_path / "db.duckdb"
    peak = peak_rss(sessions, db, env, workers)
    growth = peak - baselines[workers]
    assert growth < MAX_LINE_BYTES + 32 * MiB, (peak // MiB, baselines[workers] // MiB)
    assert peak < (180 + 128) * MiB  # README: budget about 180 MB plus --db-memory for the runner
    (summary,) = query(db, "SELECT summary FROM processor_runs")
    assert json.loads(str(summary[0]))["workers"] == (2 if workers == "2" else 0)
    assert json.loads(str(summary[0]))["issues"] == {"line_too_long": 1}
    rows = query(db, "SELECT line_no, length FROM line_rows ORDER BY 1")
    assert rows == ([(1, 8), (2, 0), (3, 8)] if newline else [(1, 8), (2, 0)])


# --- the bounded reader, against the plain one ----------------------------------------------

LINES = [b'{"n": 1}', b"", b"  ", b'{"text": "' + b"y" * 40 + b'"}', b"not json", b'{"a": [1, 2]}', b"x" * 25]


@pytest.mark.parametrize("seed", range(40))
def test_the_bounded_reader_reads_what_the_plain_reader_reads_when_no_line_is_too_long(
    tmp_path: Path, seed: int
) -> None:
    """With every line within the limit, reading in chunks changes nothing: same bytes, same hash."""
    rng = random.Random(seed)
    lines = [rng.choice(LINES) for _ in range(rng.randrange(1, 30))]
    tail = rng.choice([b"", b'{"n": 9}', b'{"n": 9', b"   "])
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines) + tail)
    plain = read_snapshot(path)
    limit = max(len(line) for line in [*lines, tail])
    bounded = read_snapshot(path, line_limit=limit)  # a file longer than the limit: read in chunks
    assert path.stat().st_size > limit
    assert bounded == plain
    assert plain.partial_tail == (tail == b'{"n": 9')


@pytest.mark.parametrize("seed", range(40))
def test_lines_over_the_limit_are_counted_and_emptied_wherever_the_chunks_fall(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.randrange(4, 20)
    lines = [b"z" * rng.randrange(0, 2 * limit) for _ in range(rng.randrange(1, 12))]
    tail = rng.choice([b"", b"t" * (limit + 1 + rng.randrange(3 * limit)), b"{}", b"{"])
    path = tmp_path / "s.jsonl"
    raw = b"".join(line + b"\n" for line in lines) + tail
    path.write_bytes(raw)
    snapshot = read_snapshot(path, line_limit=limit)
    kept = [line if len(line) <= limit else b"" for line in lines]
    long_tail = len(tail) > limit
    expected = b"".join(line + b"\n" for line in kept) + (b"\n" if long_tail else b"{}" if tail == b"{}" else b"")
    if len(raw) > limit:
        assert snapshot.data == expected
        assert snapshot.long_lines == sum(len(line) > limit for line in lines) + long_tail
    assert snapshot.partial_tail == (tail == b"{")
    hashed = raw[: -len(tail)] if tail == b"{" else raw
    assert snapshot.content_hash == xxhash.xxh3_128_hexdigest(hashed)  # every byte of every complete line
    assert snapshot.size == len(raw)


def test_a_line_of_exactly_the_limit_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"a" * 8 + b"\n" + b"b" * 9 + b"\n" + b"c\n")
    snapshot = read_snapshot(path, line_limit=8)
    assert (snapshot.data, snapshot.long_lines) == (b"a" * 8 + b"\n\nc\n", 1)


def test_names_are_escaped_for_keys_and_for_text() -> None:
    assert key_part("plain.jsonl") == "plain.jsonl"
    assert key_part("café.jsonl") == "café.jsonl"
    assert key_part(os.fsdecode(b"bad\xff\xfe.jsonl")) == "bad\\xff\\xfe.jsonl"
    assert printable("a\nb\rc\td\x1b[2J\x7f\u2028é") == "a\\nb\\rc\\td\\x1b[2J\\x7f\\u2028é"
    assert valid_text("refusing " + os.fsdecode(b"\xff")) == "refusing \\udcff"


def test_the_readme_states_the_limits_and_names_the_reasons() -> None:
    readme = " ".join((REPO / "README.md").read_text().split())
    assert readme.count(f"{MAX_LINE_BYTES // MiB} MiB") >= 3  # on a laptop, sizing, writing a processor
    assert f"more than {MAX_FOLDER_DEPTH} levels below the user's folder" in readme
    for reason in ("symlink_skipped", "symlinked_dir_skipped", "not_a_file", "too_deep", "name_collision"):
        assert f"`{reason}`" in readme, reason
    assert "`line_too_long`" in readme


@pytest.mark.parametrize(
    "reading",
    [{}, {"SESSIONPIPE_SCAN_INDEX": "off"}, {"SESSIONPIPE_LISTING": "python", "SESSIONPIPE_FILE_READING": "python"}],
    ids=["compiled", "without-index", "python"],
)
def test_a_file_dated_past_what_the_store_holds_is_read_and_counted(
    tmp_path: Path, plugin_env: dict[str, str], reading: dict[str, str]
) -> None:
    """A file whose mtime is past 2262 (more nanoseconds than a BIGINT holds) failed the whole run;
    it is read, its mtime kept at the store's bound, and the next run finds it unchanged."""
    sessions, project = make_project(tmp_path)
    write_session(project / "now.jsonl")
    write_session(project / "future.jsonl", lines=3)
    beyond = 2**63 + 10**18  # in 2294; ext4 keeps times up to 2446
    os.utime(project / "future.jsonl", ns=(beyond, beyond))
    assert (project / "future.jsonl").stat().st_mtime_ns == beyond
    db = tmp_path / "db.duckdb"
    env = {**plugin_env, **reading}
    command = ("run", "--processor", "lines", "--sessions", sessions, "--db", db, "--json")

    first = sessionpipe(*command, env=env)
    summary = run_summary(first)
    assert (first.returncode, summary["processed"], summary["issues"]) == (EXIT_OK, 2, {"mtime_out_of_range": 1})
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM line_rows").fetchone() == (5,)
        stored = con.execute("SELECT mtime_ns FROM session_processor_state WHERE session_file LIKE '%future%'")
        assert stored.fetchone() == (2**63 - 1,)

    again = run_summary(sessionpipe(*command, env=env))
    assert (again["processed"], again["unchanged"], again["issues"]) == (0, 2, {"mtime_out_of_range": 1})
