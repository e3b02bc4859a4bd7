"""The read-only snapshot is published by runs that changed what readers see, not by every run.

Copying the whole database after each run made a run with nothing to do cost as much as the
database is large. A run that committed no session, marked no file vanished and applied no
migration leaves the published snapshot as it is (it holds the same data); a missing snapshot is
always published.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from sessionpipe_runner import snapshot, store
from sessionpipe_runner.snapshot import (
    CHUNK_BYTES,
    DUCKDB_HEADER_BYTES,
    LOG_PUBLISH_LIMIT,
    PAGE_BYTES,
    SPAN_BYTES,
    Digests,
    _write_differences,
    digests_path,
    free_retired_snapshots,
    log_path,
    publish_snapshot,
    remove_old_snapshots,
    snapshot_path,
    spare_path,
)
from tests.runner_support import REPO, install_test_plugin, run_summary, sessionpipe, sessionpipe_env
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


def published_log(db: Path) -> tuple[int, int] | None:
    """The inode and time of the log published beside the snapshot, if there is one."""
    try:
        info = log_path(snapshot_path(db)).stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


def append_lines(session: Path, count: int, first: int = 0) -> None:
    with session.open("a") as handle:
        handle.write("".join(f'{{"n": {n}}}\n' for n in range(first, first + count)))


#: Lines whose rows fill more of DuckDB's log than :data:`LOG_PUBLISH_LIMIT`: a run that commits
#: them checkpoints and publishes the database.
OVER_THE_LOG_LIMIT = 20_000


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
    assert (published(db), published_log(db)) == (first, None)

    with session.open("a") as handle:
        handle.write('{"n": 3}\n')
    assert run_lines(tmp_path / "sessions", db, plugin_env)["processed"] == 1
    assert (published(db), published_log(db) is not None) == (first, True)  # its log, beside the snapshot
    assert rows(snapshot_path(db), "SELECT count(*) FROM line_rows") == [(3,)]
    logged = published_log(db)
    assert run_lines(tmp_path / "sessions", db, plugin_env)["unchanged"] == 1
    assert (published(db), published_log(db)) == (first, logged)

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


def test_a_publishing_run_keeps_the_old_snapshot_as_the_spare_and_the_next_one_patches_it(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    """Renaming over the old snapshot would free it on the run's path, and copying the whole
    database each time made the publish most of an incremental run: the old snapshot is kept, and
    the next publish writes into it only what changed."""
    session = tmp_path / "sessions" / "alice" / "-app" / "s1.jsonl"
    session.parent.mkdir(parents=True)
    session.write_text('{"n": 1}\n')
    db = tmp_path / "db.duckdb"
    run_lines(tmp_path / "sessions", db, plugin_env)
    assert not spare_path(db).exists()  # nothing was published before
    first_inode, _ = published(db)

    append_lines(session, OVER_THE_LOG_LIMIT)
    run_lines(tmp_path / "sessions", db, plugin_env)
    assert spare_path(db).stat().st_ino == first_inode
    second_inode, _ = published(db)

    append_lines(session, OVER_THE_LOG_LIMIT)
    run_lines(tmp_path / "sessions", db, plugin_env)
    assert published(db)[0] == first_inode  # the spare, patched
    assert spare_path(db).stat().st_ino == second_inode
    assert rows(snapshot_path(db), "SELECT count(*) FROM line_rows") == [(1 + 2 * OVER_THE_LOG_LIMIT,)]
    assert snapshot_path(db).read_bytes() == db.read_bytes()
    assert (log_path(db).exists(), published_log(db)) == (False, None)
    assert retired(db) == {}


def test_a_run_whose_log_is_small_publishes_the_log_beside_the_snapshot_until_it_reaches_the_limit(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    """A checkpoint and a publish of the database were ~15 % of an incremental run at 1 GB: while
    the snapshot is the database as of its last checkpoint, the run leaves its transactions in
    DuckDB's log and publishes the log; readers replay it. Past the limit the log is folded in."""
    session = tmp_path / "sessions" / "alice" / "-app" / "s1.jsonl"
    session.parent.mkdir(parents=True)
    append_lines(session, 1)
    db = tmp_path / "db.duckdb"
    run_lines(tmp_path / "sessions", db, plugin_env)
    base = published(db)
    assert published_log(db) is None  # the first publish is the database, checkpointed

    logs = []
    for step in range(1, 3):
        append_lines(session, 1, first=step)
        assert run_lines(tmp_path / "sessions", db, plugin_env)["processed"] == 1
        assert published(db) == base  # the snapshot itself is not written
        assert snapshot_path(db).read_bytes() == db.read_bytes()  # nor the database: no checkpoint
        assert log_path(snapshot_path(db)).read_bytes() == log_path(db).read_bytes()
        assert rows(snapshot_path(db), "SELECT count(*) FROM line_rows") == [(1 + step,)]
        logs.append(published_log(db))
    assert logs[0] != logs[1]  # a fresh copy renamed over the last
    assert 0 < log_path(db).stat().st_size < LOG_PUBLISH_LIMIT

    # DuckDB writes the row groups of so large an append straight into the database file and
    # logs only where they are: the log stays small, the file does not stay the snapshot's base.
    append_lines(session, OVER_THE_LOG_LIMIT, first=3)
    run_lines(tmp_path / "sessions", db, plugin_env)
    assert (log_path(db).exists(), published_log(db)) == (False, None)
    assert published(db) != base
    assert snapshot_path(db).read_bytes() == db.read_bytes()
    assert rows(snapshot_path(db), "SELECT count(*) FROM line_rows") == [(3 + OVER_THE_LOG_LIMIT,)]


def test_after_a_checkpoint_by_another_writer_the_next_run_publishes_the_database(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    """A log fits only the checkpoint it was written after: once the database was checkpointed by
    anyone (``reset``, ``forget``, DuckDB itself), the snapshot's base is not the database's, and a
    publishing run checkpoints and publishes the database, removing the old log."""
    session = tmp_path / "sessions" / "alice" / "-app" / "s1.jsonl"
    session.parent.mkdir(parents=True)
    append_lines(session, 1)
    db = tmp_path / "db.duckdb"
    run_lines(tmp_path / "sessions", db, plugin_env)
    append_lines(session, 1, first=1)
    run_lines(tmp_path / "sessions", db, plugin_env)
    assert snapshot.shares_base(db) and published_log(db) is not None

    with duckdb.connect(str(db)) as con:
        con.execute("CHECKPOINT")
    assert not snapshot.shares_base(db)
    assert rows(snapshot_path(db), "SELECT count(*) FROM line_rows") == [(2,)]  # the pair still fits

    append_lines(session, 1, first=2)
    run_lines(tmp_path / "sessions", db, plugin_env)
    assert (published_log(db), log_path(db).exists()) == (None, False)
    assert snapshot_path(db).read_bytes() == db.read_bytes()
    assert rows(snapshot_path(db), "SELECT count(*) FROM line_rows") == [(3,)]


def test_publishing_the_log_copies_it_whole_or_removes_the_snapshots_when_the_database_has_none(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db.duckdb"
    write_rows(db, 1000)
    publish_snapshot(db)
    commit_to_the_log(db, "INSERT INTO t VALUES (-1, 'logged')")
    assert snapshot.shares_base(db)
    assert snapshot.publish_log(db) == log_path(snapshot_path(db))
    assert rows(snapshot_path(db), "SELECT count(*) FROM t") == [(1001,)]
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")] == []

    with duckdb.connect(str(db)) as con:
        con.execute("CHECKPOINT")  # the log folded in: the database's base is not the snapshot's
    assert not log_path(db).exists()
    publish_snapshot(db)  # the snapshot's log is removed before its new base is in place
    assert published_log(db) is None and snapshot.shares_base(db)
    snapshot.publish_log(db)  # nothing to publish: no log
    assert published_log(db) is None
    assert rows(snapshot_path(db), "SELECT count(*) FROM t") == [(1001,)]


def test_a_snapshot_shares_its_base_only_with_headers_the_same_byte_for_byte(tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    assert not snapshot.shares_base(db)  # neither file
    write_rows(db, 1000)
    assert not snapshot.shares_base(db)  # no snapshot
    publish_snapshot(db)
    assert snapshot.shares_base(db)
    with snapshot_path(db).open("r+b") as handle:
        handle.seek(DUCKDB_HEADER_BYTES - 1)
        last = handle.read(1)
        handle.seek(DUCKDB_HEADER_BYTES - 1)
        handle.write(bytes([last[0] ^ 1]))
    assert not snapshot.shares_base(db)
    snapshot_path(db).write_bytes(db.read_bytes()[: DUCKDB_HEADER_BYTES - 1])
    db.write_bytes(db.read_bytes()[: DUCKDB_HEADER_BYTES - 1])
    assert not snapshot.shares_base(db)  # too short to be DuckDB's


def write_rows(db: Path, count: int) -> None:
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER, padding VARCHAR)")
        con.execute("INSERT INTO t SELECT range, repeat('x', range % 500) FROM range(?, ?)", [count - 1000, count])
        con.execute("CHECKPOINT")


def commit_to_the_log(db: Path, statement: str) -> None:
    """Commit ``statement`` into DuckDB's log, without the checkpoint DuckDB makes at closing."""
    with duckdb.connect(str(db)) as con:
        con.execute("PRAGMA disable_checkpoint_on_shutdown")
        con.execute(statement)


READER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("SELECT count(*), sum(length(padding)) FROM t").fetchone(), flush=True)
sys.stdin.readline()
print(con.execute("SELECT count(*), sum(length(padding)) FROM t").fetchone(), flush=True)
"""


def test_a_spare_a_reader_still_has_open_is_not_written_and_the_snapshot_is_copied(tmp_path: Path) -> None:
    """A reader that opened the snapshot before it was replaced keeps reading it as it was: DuckDB
    holds a shared lock on what it opens, and the publish copies rather than patch a locked spare."""
    db = tmp_path / "db.duckdb"
    write_rows(db, 1000)
    publish_snapshot(db, retire_old=True)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(snapshot_path(db))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout is not None and reader.stdin is not None
        before = reader.stdout.readline()
        first_inode, _ = published(db)
        write_rows(db, 2000)
        publish_snapshot(db, retire_old=True)  # the reader's file becomes the spare
        assert spare_path(db).stat().st_ino == first_inode
        second_inode, _ = published(db)
        write_rows(db, 3000)
        publish_snapshot(db, retire_old=True)
        assert published(db)[0] not in (first_inode, second_inode)  # a copy: the spare is locked
        assert snapshot_path(db).read_bytes() == db.read_bytes()
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline() == before == "(1000, 249500)\n"
    finally:
        reader.kill()
        reader.wait()
    assert spare_path(db).stat().st_ino == second_inode
    write_rows(db, 4000)
    publish_snapshot(db, retire_old=True)
    assert published(db)[0] == second_inode  # no reader now: patched
    assert rows(snapshot_path(db), "SELECT count(*) FROM t") == [(4000,)]


@pytest.mark.parametrize("spare_bytes", [0, 5000, 3 * CHUNK_BYTES + 123, 9 * CHUNK_BYTES])
def test_whatever_the_spare_holds_the_patched_snapshot_is_the_database_byte_for_byte(
    tmp_path: Path, spare_bytes: int
) -> None:
    """A spare half-patched by a killed publish, shorter or longer than the database."""
    db = tmp_path / "db.duckdb"
    write_rows(db, 1000)
    spare_path(db).write_bytes(random.Random(spare_bytes).randbytes(spare_bytes))
    spare_inode = spare_path(db).stat().st_ino
    publish_snapshot(db, retire_old=True)
    assert published(db)[0] == spare_inode
    assert snapshot_path(db).read_bytes() == db.read_bytes()
    assert rows(snapshot_path(db), "SELECT count(*) FROM t") == [(1000,)]


def patch(source: Path, target: Path, known: Digests | None = None) -> int:
    with source.open("rb") as ours, target.open("r+b") as theirs:
        return _write_differences(ours.fileno(), theirs.fileno(), target.stat().st_size, known).written


def digests_of(path: Path, seed: int = 7) -> Digests:
    with path.open("rb") as source, (path.parent / "scratch").open("w+b") as scratch:
        return _write_differences(source.fileno(), scratch.fileno(), 0, Digests(seed, [])).digests


def test_only_the_pages_that_differ_are_written_and_a_chunk_not_in_the_page_cache_is_written_whole(
    tmp_path: Path,
) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    data = bytearray(random.Random(1).randbytes(4 * CHUNK_BYTES + 100))
    source.write_bytes(data)
    changed = bytearray(data)
    for offset in (0, PAGE_BYTES * 3 + 7, PAGE_BYTES * 4, 2 * CHUNK_BYTES + 1, len(data) - 1):
        changed[offset] ^= 0xFF
    target.write_bytes(changed)
    assert patch(source, target) == 4 * PAGE_BYTES + 100  # pages 0, 3-4 and one in chunk 2; the tail
    assert target.read_bytes() == data
    assert patch(source, target) == 0

    target.write_bytes(changed)
    with target.open("rb") as theirs:
        os.fsync(theirs.fileno())
        os.posix_fadvise(theirs.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache
    # The first chunk at least is written whole (the refused read starts the kernel's read-ahead,
    # so later chunks may be in the cache by the time they are read).
    assert CHUNK_BYTES <= patch(source, target) <= len(data)
    assert target.read_bytes() == data


def test_forget_removes_the_spare_and_the_retired_copies(tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    for content in (b"one", b"two", b"three"):
        db.write_bytes(content)
        publish_snapshot(db, retire_old=True)
    assert (snapshot_path(db).read_bytes(), spare_path(db).read_bytes()) == (b"three", b"two")
    os.link(spare_path(db), tmp_path / f".{snapshot_path(db).name}.7-0123abcd.retired")  # an interrupted publish
    assert remove_old_snapshots(db) == 2
    assert (retired(db), spare_path(db).exists()) == ({}, False)
    db.write_bytes(b"four")
    publish_snapshot(db)
    assert (spare_path(db).exists(), snapshot_path(db).read_bytes()) == (False, b"four")


@pytest.mark.parametrize("target_bytes", [0, CHUNK_BYTES, 3 * CHUNK_BYTES + 5, 9 * CHUNK_BYTES])
def test_both_halves_are_patched_whatever_the_targets_length(tmp_path: Path, target_bytes: int) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    data = random.Random(2).randbytes(5 * CHUNK_BYTES + 7)
    source.write_bytes(data)
    target.write_bytes(random.Random(target_bytes).randbytes(target_bytes))
    patch(source, target)
    assert target.read_bytes() == data


def test_where_the_file_system_clones_the_old_snapshot_is_retired_not_kept_as_the_spare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone is always made first, so a spare would never be patched, only take disk space."""

    def clone(source: Path, target: Path) -> bool:  # as FICLONE leaves it: a copy under the temporary name
        shutil.copyfile(source, target)
        return True

    monkeypatch.setattr(snapshot, "_clone", clone)
    db = tmp_path / "db.duckdb"
    for content in (b"one", b"two"):
        db.write_bytes(content)
        publish_snapshot(db, retire_old=True)
    assert not spare_path(db).exists()
    assert [tmp_path.joinpath(name).read_bytes() for name in retired(db).values()] == [b"one"]
    assert snapshot_path(db).read_bytes() == b"two"
    assert free_retired_snapshots(db) == 1


def test_with_the_targets_digests_only_the_spans_whose_digest_differs_are_written(tmp_path: Path) -> None:
    """The digests stand for the target's bytes: a span they call equal is not read, nor written."""
    source, target = tmp_path / "source", tmp_path / "target"
    data = random.Random(3).randbytes(3 * CHUNK_BYTES + 100)
    target.write_bytes(data)
    known = digests_of(target)
    assert len(known.values) == -(-len(data) // SPAN_BYTES)
    changed = bytearray(data)
    for offset in (5, SPAN_BYTES + 1, CHUNK_BYTES + 3 * SPAN_BYTES):
        changed[offset] ^= 0xFF
    source.write_bytes(bytes(changed) + b"longer")
    unknown_to_the_digests = bytearray(data)
    unknown_to_the_digests[2 * CHUNK_BYTES] ^= 0xFF  # the target changed behind its digests' back
    target.write_bytes(unknown_to_the_digests)
    assert patch(source, target, known) == 3 * SPAN_BYTES + 100 + len(b"longer")  # spans 0, 1, 19 and the tail
    assert target.read_bytes()[: 2 * CHUNK_BYTES] == changed[: 2 * CHUNK_BYTES]
    assert target.read_bytes()[2 * CHUNK_BYTES] != changed[2 * CHUNK_BYTES]  # trusted, so not read
    assert patch(source, target) == PAGE_BYTES  # compared, without digests: the page found different
    assert target.read_bytes() == bytes(changed) + b"longer"

    shorter = bytes(changed[: CHUNK_BYTES + 10])
    source.write_bytes(shorter)
    assert patch(source, target, digests_of(target)) == 10  # the last span is shorter: written; the rest cut
    assert target.read_bytes() == shorter


def test_a_patch_keeps_the_digests_of_what_it_made_and_the_patch_after_the_next_uses_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "db.duckdb"
    used: list[bool] = []
    original = snapshot._write_differences

    def spying(source_fd: int, target_fd: int, target_size: int, known: Digests | None = None) -> snapshot.Patched:
        used.append(known is not None)
        return original(source_fd, target_fd, target_size, known)

    monkeypatch.setattr(snapshot, "_write_differences", spying)
    for count in (1000, 2000, 3000, 4000, 5000):
        write_rows(db, count)
        publish_snapshot(db, retire_old=True)
        assert snapshot_path(db).read_bytes() == db.read_bytes()
    # Copies the first two times (no spare); then the two copies, patched by comparing (a copy has
    # no digests); then the first of them again, through the digests its patch left.
    assert used == [False, False, True]
    kept = {digests_path(db, path.stat().st_ino).name for path in (snapshot_path(db), spare_path(db))}
    assert {path.name for path in tmp_path.glob("*.digests*")} == kept
    assert rows(snapshot_path(db), "SELECT count(*) FROM t") == [(5000,)]


def test_digests_of_a_spare_written_since_or_garbled_are_refused(tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    for count in (1000, 2000, 3000, 4000):  # the spare now is a patch, with digests
        write_rows(db, count)
        publish_snapshot(db, retire_old=True)
    spare = spare_path(db)
    info = spare.stat()
    assert snapshot._known_digests(db, info) is not None

    with spare.open("r+b") as handle:  # a byte changed: the modification time moves on
        handle.seek(CHUNK_BYTES // 2)
        handle.write(b"\x00")
    assert snapshot._known_digests(db, spare.stat()) is None
    write_rows(db, 5000)
    publish_snapshot(db, retire_old=True)
    assert snapshot_path(db).read_bytes() == db.read_bytes()

    spare = spare_path(db)
    path = digests_path(db, spare.stat().st_ino)
    whole = path.read_bytes()
    for garbled in (whole[:-1], whole[:-16], whole.replace(b'"span": 65536', b'"span": 4096'), b"", b"{}\n"):
        path.write_bytes(garbled)
        assert snapshot._known_digests(db, spare.stat()) is None
    path.write_bytes(whole)
    assert snapshot._known_digests(db, spare.stat()) is not None


def test_a_patch_interrupted_leaves_no_digests_of_the_spare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "db.duckdb"
    for count in (1000, 2000, 3000, 4000):  # the spare now is a patch, with digests
        write_rows(db, count)
        publish_snapshot(db, retire_old=True)
    spare_inode = spare_path(db).stat().st_ino
    assert digests_path(db, spare_inode).exists()

    def interrupted(*args: object) -> snapshot.Patched:
        raise OSError("interrupted half way")

    monkeypatch.setattr(snapshot, "_write_differences", interrupted)
    write_rows(db, 5000)
    publish_snapshot(db, retire_old=True)  # copied instead
    assert snapshot_path(db).read_bytes() == db.read_bytes()
    assert not digests_path(db, spare_inode).exists()


def test_a_database_written_since_the_copy_does_not_share_its_base_though_its_headers_are_the_same(
    tmp_path: Path,
) -> None:
    """A large append's row groups go straight into the database file, where no header refers to
    them yet; the log says where they are. The snapshot has neither, so that log cannot go beside
    it: the file's state recorded at the copy tells."""
    db = tmp_path / "db.duckdb"
    write_rows(db, 1000)
    publish_snapshot(db)
    commit_to_the_log(db, "INSERT INTO t SELECT range, 'appended' FROM range(300000)")
    with db.open("rb") as ours, snapshot_path(db).open("rb") as theirs:
        assert ours.read(DUCKDB_HEADER_BYTES) == theirs.read(DUCKDB_HEADER_BYTES)
    assert 0 < log_path(db).stat().st_size < 64 << 10
    assert not snapshot.shares_base(db)

    shutil.copyfile(log_path(db), log_path(snapshot_path(db)))  # what publish_log must not do here
    with duckdb.connect(str(snapshot_path(db)), read_only=True) as con, pytest.raises(duckdb.IOException, match="read"):
        con.execute("SELECT sum(n) FROM t").fetchall()


def test_a_reader_that_meets_a_log_of_another_checkpoint_opens_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that read the snapshot's header before a publish replaced the snapshot, and its log
    after a later run published one, holds a pair of two checkpoints: DuckDB refuses it, and the
    open is tried again (the files as they are then fit); a pair that never fits is an error."""
    db = tmp_path / "db.duckdb"
    write_rows(db, 1000)
    publish_snapshot(db)
    commit_to_the_log(db, "INSERT INTO t VALUES (-1, 'logged')")
    older_log = snapshot.publish_log(db).read_bytes()
    write_rows(db, 2000)  # checkpointed: a new base
    publish_snapshot(db)
    log_path(snapshot_path(db)).write_bytes(older_log)

    with pytest.raises(store.StoreError, match="checkpoint iteration"):
        store.connect(snapshot_path(db), read_only=True)

    waits: list[float] = []

    def publish_meanwhile(seconds: float) -> None:
        waits.append(seconds)
        log_path(snapshot_path(db)).unlink()  # the reader's next look finds the pair that fits

    monkeypatch.setattr(store.time, "sleep", publish_meanwhile)
    con = store.connect(snapshot_path(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM t").fetchone() == (2001,)
    finally:
        con.close()
    assert len(waits) == 1


def test_what_runs_leave_beside_a_database_in_a_checkout_is_ignored_by_git(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    """``make run`` writes ./sessionpipe.duckdb in the checkout: its snapshot, log, spare, digests,
    base record and lease must not show as changes (the repository's .gitignore)."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    shutil.copyfile(REPO / ".gitignore", checkout / ".gitignore")
    session = tmp_path / "sessions" / "alice" / "-app" / "s1.jsonl"
    session.parent.mkdir(parents=True)
    db = checkout / "sessionpipe.duckdb"
    # The database published, then its log; then the database twice (``lines`` writes a file's rows
    # again whole: DuckDB writes 20,000 of them into the file), the second a patched spare with
    # digests; then the log of a run that wrote one other file's row.
    for count, first in ((1, 0), (1, 1), (OVER_THE_LOG_LIMIT, 2), (1, 2 + OVER_THE_LOG_LIMIT)):
        append_lines(session, count, first)
        run_lines(tmp_path / "sessions", db, plugin_env)
    append_lines(session.with_name("s2.jsonl"), 1)
    run_lines(tmp_path / "sessions", db, plugin_env)
    left = {path.name for path in checkout.iterdir()} - {".git", ".gitignore"}
    expected = {
        "sessionpipe.snapshot.duckdb.wal",
        ".sessionpipe.snapshot.duckdb.base",
        ".sessionpipe.snapshot.duckdb.spare",
    }
    assert expected <= left, left
    assert any(name.endswith(".digests") for name in left), left
    status = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=all"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout.splitlines() == ["?? .gitignore"]


def test_every_temporary_a_publish_writes_is_removed_when_a_killed_run_left_it(tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    left = [snapshot._temporary_path(db, kind) for kind in ("", *snapshot.TEMPORARY_KINDS)]
    for path in left:
        path.write_bytes(b"half")
    kept = tmp_path / f".{snapshot_path(db).name}.12.other.tmp"  # no name a publish gives
    kept.write_bytes(b"not ours")
    assert snapshot.remove_stale_snapshots(db) == len(left) == 3
    assert [path.name for path in tmp_path.iterdir()] == [kept.name]
