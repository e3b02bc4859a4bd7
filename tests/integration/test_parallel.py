"""Worker processes (``--workers``): the same tables as the runner alone, failures isolated, no orphans."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import duckdb
import pytest

from sessionpipe_contract import EXIT_OK
from sessionpipe_demo import generate_corpus
from sessionpipe_runner import batches, work
from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.processors.base import Migration, Output, Processor, SessionFile, replace_session_rows
from sessionpipe_runner.processors.usage import UsageProcessor
from sessionpipe_runner.runner import RunSettings, run
from tests.runner_support import install_test_plugin, run_summary, sessionpipe, sessionpipe_env

STATE = (
    "SELECT processor, session_file, user_name, size, mtime_ns, content_hash, processor_version, items, "
    "attempts, last_error, status FROM session_processor_state ORDER BY ALL"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parallel") / "sessions"
    generate_corpus(root, users=3, target_bytes=3 * 1024 * 1024, seed=7)
    return root


def table(db: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_workers_store_exactly_what_the_runner_alone_stores(corpus: Path, tmp_path: Path) -> None:
    summaries = {}
    for workers in ("1", "2"):
        db = tmp_path / f"w{workers}.duckdb"
        result = sessionpipe(
            "run", "--processor", "usage", "--sessions", corpus, "--db", db, "--workers", workers, "--json"
        )
        assert result.returncode == 0, result.stderr
        summaries[workers] = run_summary(result)
    assert summaries["1"]["workers"] == 0
    assert summaries["2"]["workers"] == 2
    for key in ("scanned", "hashed", "processed", "items", "errors", "issues"):
        assert summaries["2"][key] == summaries["1"][key], key
    assert summaries["2"]["items"] > 1000
    alone, parallel = tmp_path / "w1.duckdb", tmp_path / "w2.duckdb"
    rows = "SELECT * FROM usage_rows ORDER BY session_file, line_no"
    assert table(parallel, rows) == table(alone, rows)
    assert table(parallel, STATE) == table(alone, STATE)
    # Sums of floats depend on the order rows are met in: costs agree to the nano-dollar.
    report = "SELECT * EXCLUDE (cost_usd), round(cost_usd, 9) FROM usage_sessions ORDER BY ALL"
    assert table(parallel, report) == table(alone, report)


def test_a_session_that_fails_in_a_worker_fails_alone(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    for index in range(40):
        path = sessions / f"user{index % 2}" / "-proj" / f"s{index:02}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        marker = "PLEASE-FAIL" if index == 17 else "fine"
        path.write_text("".join(f'{{"i": {i}, "m": "{marker}"}}\n' for i in range(index + 1)))
    env = sessionpipe_env(install_test_plugin(tmp_path / "site"), TESTPLUGIN_PARALLEL="1")
    db = tmp_path / "db.duckdb"
    result = sessionpipe(
        "run", "--processor", "lines", "--sessions", sessions, "--db", db, "--workers", "2", "--json", env=env
    )
    summary = run_summary(result)
    assert (summary["outcome"], summary["workers"], summary["processed"], summary["errors"]) == (
        "completed_with_errors",
        2,
        39,
        1,
    )
    assert summary["failures"] == {
        "user1/-proj/s17.jsonl": "RuntimeError: refusing user1/-proj/s17.jsonl: it asks to fail"
    }
    failed = table(db, "SELECT session_file, attempts, status FROM session_processor_state WHERE status <> 'done'")
    assert failed == [("user1/-proj/s17.jsonl", 1, "failed")]
    assert table(db, "SELECT count(*) FROM line_rows")[0][0] == sum(range(1, 41)) - 18


class _Budgeted(Processor):
    name = "budgeted"
    version = "1"
    tables = ("budgeted_rows",)
    parallel = True

    def process(self, session: SessionFile, data: bytes) -> Output:
        return Output()


class _OwnWriter(_Budgeted):
    def write(self, con: duckdb.DuckDBPyConnection, batch: Sequence[tuple[SessionFile, Output]]) -> None:
        pass


def test_worker_count_follows_the_setting_the_processor_and_the_amount_of_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big, small = work.AUTO_PARALLEL_MIN_BYTES, work.AUTO_PARALLEL_MIN_BYTES - 1
    monkeypatch.setattr(work, "available_cpus", lambda: 4)
    assert work.worker_count(0, UsageProcessor(), big) == 4
    assert work.worker_count(0, UsageProcessor(), small) == 0  # not worth starting interpreters
    assert work.worker_count(1, UsageProcessor(), big) == 0
    assert work.worker_count(3, UsageProcessor(), 1) == 3  # asked for explicitly
    assert work.worker_count(3, _OwnWriter(), big) == 0  # its own write() runs in the runner
    monkeypatch.setattr(_Budgeted, "parallel", False)
    assert work.worker_count(3, _Budgeted(), big) == 0
    monkeypatch.setattr(work, "available_cpus", lambda: 1)
    assert work.worker_count(0, UsageProcessor(), big) == 0


def test_available_cpus_is_at_least_one_and_at_most_the_affinity() -> None:
    import os

    assert 1 <= work.available_cpus() <= len(os.sched_getaffinity(0))


def test_rows_that_do_not_fit_the_table_fail_their_session_only(tmp_path: Path) -> None:
    columns = [("session_file", "VARCHAR"), ("n", "BIGINT")]
    assert work.to_arrow([("a", 1), ("b", 2)], columns).num_rows == 2
    with pytest.raises(ValueError, match="2 columns, a row has 3"):
        work.to_arrow([("a", 1, 2)], columns)
    with pytest.raises(Exception, match=r"str|int"):
        work.to_arrow([("a", "not a number")], columns)


class StrayRowsProcessor(Processor):
    """Declares one table and writes rows for another when a session's bytes ask for it."""

    name = "stray"
    tables = ("kept",)

    def process(self, session: SessionFile, data: bytes) -> Output:
        return Output(rows={"elsewhere" if b"stray" in data else "kept": [(session.key, 1)]})


def test_rows_for_an_undeclared_table_fail_their_session_in_a_worker_and_in_the_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = []
    for name, text in (("good", b"{}\n"), ("bad", b'{"stray": 1}\n')):
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(text)
        files.append(SessionFile(f"alice/-app/{name}.jsonl", str(path), "alice", "-app", name, len(text), 0))
    processor = StrayRowsProcessor()
    monkeypatch.setattr(work, "_worker_processor", processor)
    monkeypatch.setattr(work, "_worker_columns", {"kept": [("session_file", "VARCHAR"), ("n", "BIGINT")]})
    chunk = work._examine_chunk([(file, None) for file in files])
    good, bad = chunk.examined
    assert (good.outcome, bad.outcome) == (work.Outcome.PROCESSED, work.Outcome.FAILED)
    message = "alice/-app/bad.jsonl: rows for tables the processor does not declare: ['elsewhere']"
    assert str(bad.error) == f"ValueError: {message}"
    assert chunk.tables["kept"].num_rows == 1
    con = duckdb.connect()
    con.execute("CREATE TABLE kept (session_file VARCHAR, n BIGINT)")
    with pytest.raises(ValueError, match=re.escape(message)):
        processor.write(con, [(file, processor.process(file, Path(file.location).read_bytes())) for file in files])


def worker_pids(mark: str) -> list[int]:
    """Processes whose environment carries ``mark`` (the runner's workers, here)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_a_killed_runner_leaves_no_worker_behind_and_the_rerun_completes_the_tables(
    corpus: Path, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    mark = f"sessionpipe-test-{uuid.uuid4().hex}"
    env = sessionpipe_env(TESTPLUGIN_MARK=mark)
    wrapper = Path(__file__).resolve().parent.parent / "crash_wrapper.py"
    args = ["run", "--processor", "usage", "--sessions", str(corpus), "--db", str(tmp_path / "db.duckdb")]
    killed = subprocess.run(
        [sys.executable, str(wrapper), "fn:sessionpipe_runner.tables:insert_arrow:1", "--", *args, "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    deadline = time.monotonic() + 10
    while worker_pids(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker_pids(mark) == []
    again = sessionpipe(*args, "--workers", "2", "--json", env=env)
    assert again.returncode == 0, again.stderr
    reference = tmp_path / "reference.duckdb"
    uninterrupted = sessionpipe(*args[:-1], str(reference), "--workers", "2", env=env)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    rows = "SELECT * FROM usage_rows ORDER BY session_file, line_no"
    assert table(tmp_path / "db.duckdb", rows) == table(reference, rows)
    assert table(tmp_path / "db.duckdb", STATE) == table(reference, STATE)


class _WhereRun(Processor):
    """Records where each session was processed: the process and the thread."""

    name = "where"
    version = "1"
    tables = ("where_rows",)
    batchable = True
    parallel = True

    def migrations(self) -> Sequence[Migration]:
        return (Migration("0001", "CREATE TABLE where_rows (session_file VARCHAR, pid BIGINT, thread VARCHAR)"),)

    def process(self, session: SessionFile, data: bytes) -> Output:
        return Output(rows={"where_rows": [(session.key, os.getpid(), threading.current_thread().name)]}, items=1)


class _WhereRunReleasingTheGil(_WhereRun):
    releases_gil = True


def _small_sessions(root: Path, count: int) -> Path:
    for index in range(count):
        path = root / f"user{index % 2}" / "-proj" / f"s{index:03}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"i": 1}\n')
    return root


@pytest.mark.parametrize("processor", [_WhereRun(), _WhereRunReleasingTheGil()], ids=["gil-bound", "gil-free"])
def test_a_processor_that_releases_the_gil_runs_in_threads_of_the_runner_others_in_processes(
    processor: _WhereRun, tmp_path: Path
) -> None:
    sessions = _small_sessions(tmp_path / "sessions", 150)
    db = tmp_path / "db.duckdb"
    settings = RunSettings(processor=processor.name, sessions=sessions, database=db, workers=2, lease_wait_seconds=5)
    summary = run(settings, processor, FileLease(db, processor.name))
    assert (summary.exit_code, summary.workers, summary.processed) == (EXIT_OK, 2, 150)
    where = table(db, "SELECT pid, thread FROM where_rows")
    assert len(where) == 150
    if processor.releases_gil:  # no interpreter started, nothing pickled
        assert {pid for pid, _ in where} == {os.getpid()}
        assert "MainThread" not in {thread for _, thread in where}
    else:  # processes, so that a GIL-bound processor's work runs in parallel
        assert os.getpid() not in {pid for pid, _ in where}
        assert len({pid for pid, _ in where}) >= 1


class _WriteSetting(_WhereRun):
    """Looks at a DuckDB setting while its batches are written (a write of its own: in the runner), and after."""

    parallel = False
    setting: ClassVar[str]
    seen: ClassVar[list[str]] = []

    def write(self, con: duckdb.DuckDBPyConnection, batch: Sequence[tuple[SessionFile, Output]]) -> None:
        replace_session_rows(con, self.tables, batch)
        (value,) = con.execute(f"SELECT current_setting('{self.setting}')").fetchone() or ("",)
        self.seen.append(str(value))

    def finish(self, con: duckdb.DuckDBPyConnection) -> Counter[str]:
        (value,) = con.execute(f"SELECT current_setting('{self.setting}')").fetchone() or ("",)
        self.seen.append(f"after: {value}")
        return Counter()


class _WriteThreads(_WriteSetting):
    setting = "threads"


def test_batches_are_written_on_one_duckdb_thread_and_the_threads_come_back_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches, "SMALL_WRITE_BYTES", 1)  # these few bytes count as a run's writes
    seen, default = _threads_while_writing(_small_sessions(tmp_path / "sessions", 3), tmp_path / "db.duckdb")
    assert seen == ["1", f"after: {default}"]


def _threads_while_writing(sessions: Path, db: Path) -> tuple[list[str], str]:
    """DuckDB's threads as a run over ``sessions`` wrote its batches and after, and its default."""
    settings = RunSettings(processor="where", sessions=sessions, database=db, workers=1, lease_wait_seconds=5)
    _WriteThreads.seen = []
    assert run(settings, _WriteThreads(), FileLease(db, "where")).exit_code == EXIT_OK
    with duckdb.connect() as con:
        (default,) = con.execute("SELECT current_setting('threads')").fetchone() or ("",)
    return _WriteThreads.seen, str(default)


class _WriteCheckpointThreshold(_WriteSetting):
    setting = "checkpoint_threshold"


def test_batches_are_not_checkpointed_one_by_one_and_the_threshold_comes_back_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold run's commits leave the checkpoint to the run's end (bench/README.md, "columnar rows")."""
    monkeypatch.setattr(batches, "SMALL_WRITE_BYTES", 1)
    sessions = _small_sessions(tmp_path / "sessions", 3)
    db = tmp_path / "db.duckdb"
    settings = RunSettings(processor="where", sessions=sessions, database=db, workers=1, lease_wait_seconds=5)
    _WriteCheckpointThreshold.seen = []
    assert run(settings, _WriteCheckpointThreshold(), FileLease(db, "where")).exit_code == EXIT_OK
    with duckdb.connect() as con:
        (default,) = con.execute("SELECT current_setting('checkpoint_threshold')").fetchone() or ("",)
        con.execute(f"SET checkpoint_threshold = '{batches.WRITE_CHECKPOINT_THRESHOLD}'")
        (raised,) = con.execute("SELECT current_setting('checkpoint_threshold')").fetchone() or ("",)
    assert raised != default
    assert _WriteCheckpointThreshold.seen == [raised, f"after: {default}"]


def test_a_run_that_reads_little_keeps_duckdbs_settings_while_it_writes(tmp_path: Path) -> None:
    """Setting and resetting them cost an incremental run ~2.5 ms, for a write of a few rows."""
    sessions = _small_sessions(tmp_path / "sessions", 3)
    assert sum(path.stat().st_size for path in sessions.rglob("*.jsonl")) < batches.SMALL_WRITE_BYTES
    seen, default = _threads_while_writing(sessions, tmp_path / "db.duckdb")
    assert seen == [default, f"after: {default}"]


class _FailsOnCueInThreads(_WhereRunReleasingTheGil):
    def process(self, session: SessionFile, data: bytes) -> Output:
        if b"PLEASE-FAIL" in data:
            raise RuntimeError(f"refusing {session.key}: it asks to fail")
        return super().process(session, data)


def test_a_session_that_fails_in_a_worker_thread_fails_alone(tmp_path: Path) -> None:
    sessions = _small_sessions(tmp_path / "sessions", 40)
    (sessions / "user1" / "-proj" / "s017.jsonl").write_text('{"m": "PLEASE-FAIL"}\n')
    db = tmp_path / "db.duckdb"
    processor = _FailsOnCueInThreads()
    settings = RunSettings(processor=processor.name, sessions=sessions, database=db, workers=2, lease_wait_seconds=5)
    summary = run(settings, processor, FileLease(db, processor.name))
    assert (summary.workers, summary.processed, summary.errors) == (2, 39, 1)
    assert summary.failures == {
        "user1/-proj/s017.jsonl": "RuntimeError: refusing user1/-proj/s017.jsonl: it asks to fail"
    }
    assert table(db, "SELECT count(*) FROM where_rows")[0][0] == 39
    failed = table(db, "SELECT session_file, attempts, status FROM session_processor_state WHERE status <> 'done'")
    assert failed == [("user1/-proj/s017.jsonl", 1, "failed")]


def test_consecutive_slices_of_a_workers_table_are_inserted_as_one_slice() -> None:
    import pyarrow as pa

    from sessionpipe_runner.tables import joined_slices

    whole = pa.table({"session_file": ["a", "a", "b", "c", "c", "c"], "n": [1, 2, 3, 4, 5, 6]})
    other = pa.table({"session_file": ["z"], "n": [9]})
    a, b, c = whole.slice(0, 2), whole.slice(2, 1), whole.slice(3, 3)
    joined = joined_slices([(a, (whole, 0)), (b, (whole, 2)), (other, None), (c, (whole, 3)), (a, (whole, 0))])
    assert [part.to_pydict()["n"] for part in joined] == [[1, 2, 3], [9], [4, 5, 6], [1, 2]]
    assert joined_slices([(a, (whole, 0)), (c, (whole, 3))])[0].num_rows == 2  # a gap: not one slice
    assert joined_slices([(a, (whole, 0)), (b, (whole.slice(0), 2))])[0].num_rows == 2  # another table


def _counting_pool(tmp_path: Path, chunks: int) -> tuple[work.WorkerPool, list[tuple[SessionFile, None]], list[int]]:
    """Worker threads, tasks of files that do not exist (examined in no time), and the sizes of the
    chunks handed out so far."""
    tasks = [
        (SessionFile(f"u/-p/s{i}.jsonl", str(tmp_path / f"s{i}.jsonl"), "u", "-p", f"s{i}", 1, 0), None)
        for i in range(work.CHUNK_FILES * chunks)
    ]
    pool = work.WorkerPool(2, _WhereRunReleasingTheGil(), {"where_rows": [("session_file", "VARCHAR")]})
    submitted: list[int] = []
    submit = pool._submit

    def counting(chunk: list[tuple[SessionFile, None]]) -> object:
        submitted.append(len(chunk))
        return submit(chunk)  # type: ignore[arg-type]

    pool._submit = counting  # type: ignore[method-assign,assignment]
    return pool, tasks, submitted


def test_workers_have_chunks_ahead_to_examine_while_the_runner_commits(tmp_path: Path) -> None:
    """A whole row group's commit takes the runner 0.1-0.2 s: the workers must not run out of work."""
    pool, tasks, submitted = _counting_pool(tmp_path, 100)
    try:
        examined = pool.examine(tasks)
        assert next(examined).outcome is work.Outcome.VANISHED
        assert len(submitted) >= 2 * 16  # chunks handed out before the runner took the first
        assert sum(1 for _ in examined) == len(tasks) - 1
    finally:
        pool.close()


def test_the_runner_works_meanwhile_once_the_first_chunks_are_handed_out(tmp_path: Path) -> None:
    """The runner's thread has nothing to do until the first chunk is examined: it loads the Arrow
    insert's modules (pyarrow, the DuckDB wrapper: ~90 ms) then, not in its first commit."""
    pool, tasks, submitted = _counting_pool(tmp_path, 3)
    calls: list[int] = []
    try:
        examined = list(pool.examine(tasks, meanwhile=lambda: calls.append(len(submitted))))
    finally:
        pool.close()
    assert len(examined) == len(tasks)
    assert calls == [3]  # once, with every chunk handed out, before the first was waited for


def test_a_cold_run_with_worker_threads_loads_the_arrow_insert_before_its_first_commit(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionpipe_runner import tables

    order: list[str] = []
    load = tables.load_arrow_insert
    monkeypatch.setattr(tables, "load_arrow_insert", lambda: (order.append("load"), load())[1])
    processor = UsageProcessor()
    write = processor.write
    monkeypatch.setattr(processor, "write", lambda con, batch: (order.append("write"), write(con, batch))[1])
    db = tmp_path / "db.duckdb"
    settings = RunSettings(processor="usage", sessions=corpus, database=db, workers=2, lease_wait_seconds=5)
    assert run(settings, processor, FileLease(db, "usage")).exit_code == EXIT_OK
    assert order[:2] == ["load", "write"] and order.count("load") == 1
