"""The read-only snapshot: a copy of the database that readers use while a run writes it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xxhash import xxh3_64_intdigest, xxh3_128_intdigest

#: ``FICLONE`` (<linux/fs.h>): make a file share another's blocks, copy-on-write (Btrfs, XFS with
#: reflink, bcachefs, OCFS2). Not in Python's ``fcntl`` module before 3.12.
FICLONE = 0x40049409

#: How much of the database one read takes when the spare is patched (:func:`publish_snapshot`).
CHUNK_BYTES = 1 << 20
#: Within a chunk that differs, what is compared and written: a page of the page cache.
PAGE_BYTES = 4096
#: What one digest of a snapshot's digest list covers (a chunk holds a whole number of them).
SPAN_BYTES = 64 << 10
DIGESTS_FORMAT = 1
#: DuckDB's file header: its main header and two database headers of 4 KiB each. A checkpoint
#: writes its blocks where no block the current header refers to lies, then one database header
#: (with the checkpoint's iteration count): the blocks a header refers to never change under it.
DUCKDB_HEADER_BYTES = 3 * 4096
#: The size of the database's write-ahead log from which a run checkpoints rather than publish the
#: log beside the snapshot (:func:`checkpoint_needed`). Every reader replays the log when it opens
#: the snapshot (and the next run when it opens the database), about 10 ms per MiB; a checkpoint
#: and a publish of the database cost a run ~30 ms. An incremental run adds a few KiB.
LOG_PUBLISH_LIMIT = 256 << 10


def snapshot_path(database: Path) -> Path:
    """Where the read-only copy of the database is published after each successful run."""
    return database.with_name(database.stem + ".snapshot" + database.suffix)


def spare_path(database: Path) -> Path:
    """Where the snapshot a run replaced is kept, for the next publish to patch (hidden)."""
    return database.with_name(f".{snapshot_path(database).name}.spare")


def log_path(path: Path) -> Path:
    """DuckDB's write-ahead log of the database file ``path`` (DuckDB's naming): the transactions
    committed since its last checkpoint, replayed by whoever opens the file."""
    return path.with_name(path.name + ".wal")


def base_record_path(database: Path) -> Path:
    """Where the state of the database file the snapshot was copied at lies (hidden)."""
    return database.with_name(f".{snapshot_path(database).name}.base")


def due_path(database: Path) -> Path:
    """Where a run marks, while it writes, that the snapshot may fall behind the database (hidden)."""
    return database.with_name(f".{snapshot_path(database).name}.due")


def mark_due(database: Path) -> bool:
    """Mark, before a run writes, that the snapshot may fall behind; whether it was marked already.

    A run that changed what readers see and was killed (or failed to publish) before it published
    left the mark: the next run publishes though it changes nothing itself, else the snapshot would
    lack what was committed until a run changed something again. Publishing clears the mark
    (:func:`publish_snapshot`, :func:`publish_log`), and so does a run with nothing to publish
    (:func:`clear_due`).
    """
    try:
        due_path(database).touch(exist_ok=False)
    except OSError:  # marked already; or, unable to mark, count it as due
        return True
    return False


def clear_due(database: Path) -> None:
    """The snapshot has all the database holds that readers see (:func:`mark_due`)."""
    due_path(database).unlink(missing_ok=True)


def digests_path(database: Path, inode: int) -> Path:
    """Where the digests of the snapshot file with this inode number lie (hidden)."""
    return database.with_name(f".{snapshot_path(database).name}.{inode}.digests")


def _digests_name(database: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(snapshot_path(database).name)}\.(\d+)\.digests(\.tmp)?")


#: What a publish writes under a temporary name before renaming it into place, besides the
#: snapshot itself: its log (:func:`publish_log`) and its base record (:func:`_record_base`).
TEMPORARY_KINDS = ("wal", "base")


def _temporary_path(database: Path, kind: str = "") -> Path:
    """The hidden temporary name of what this process publishes (the snapshot, or one of
    :data:`TEMPORARY_KINDS`); one a killed run left is removed by :func:`remove_stale_snapshots`."""
    suffix = f".{kind}" if kind else ""
    return database.with_name(f".{snapshot_path(database).name}.{os.getpid()}{suffix}.tmp")


def _temporary_snapshot_name(database: Path) -> re.Pattern[str]:
    """The names :func:`_temporary_path` gives, whatever the process."""
    kinds = "|".join(map(re.escape, TEMPORARY_KINDS))
    return re.compile(rf"\.{re.escape(snapshot_path(database).name)}\.\d+(?:\.(?:{kinds}))?\.tmp")


def _retired_snapshot_name(database: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(snapshot_path(database).name)}\.\d+-[0-9a-f]{{8}}\.retired")


def publish_snapshot(database: Path, *, retire_old: bool = False) -> Path:
    """Make the checkpointed database the snapshot: a fresh copy renamed into place atomically.

    The copy is a copy-on-write clone where the file system has them. Otherwise, with
    ``retire_old``, it is the spare, patched: the snapshot the publish before this one replaced,
    kept under a hidden name (:func:`spare_path`), with the pages that differ from the database
    written over (a run changes a few megabytes of a database of a hundred; copying all of it
    made the publish most of an incremental run). The spare is patched only when no reader has
    it open: DuckDB locks a file it opens (a shared ``fcntl`` lock for reading), and a reader that
    opened the snapshot before it was replaced may still be reading it. Then, or when there is
    no spare, every byte is copied. Patching reads the spare only where it is in the page cache;
    a chunk that is not is written without comparing, as a copy would.

    With ``retire_old`` the snapshot being replaced becomes the spare. Where clones are made, a
    spare is never patched: the old snapshot stays retired instead, and the next run frees it
    (:func:`free_retired_snapshots`). Without ``retire_old`` (``forget``), the rename frees it.

    A patch leaves the digests of what it made (:func:`digests_path`): when that file is the spare
    two publishes later, unchanged since (:func:`_known_digests`), its patch reads only the
    database and writes each span whose digest differs, without reading the spare: half the bytes
    read. Otherwise it compares the two files.

    If a step fails (a full disk, a directory in the way) or is interrupted, the temporary copy is
    removed: left behind, it would fill the disk the next run needs. A spare left half-patched is
    harmless: its digests were removed before its first write, so the next patch compares every
    page it reads.
    """
    target = snapshot_path(database)
    temporary = _temporary_path(database)
    spare = spare_path(database)
    fresh = temporary
    try:
        copied = database.stat()  # before: a write while copying (there is none) would not count
        cloned = _clone(database, temporary)
        if not cloned:
            if retire_old and _patch(spare, database):
                fresh = spare
            else:
                shutil.copyfile(database, temporary)  # in-kernel (sendfile), but every byte
        old = _retire(target) if retire_old else None
        # First: the old snapshot's log does not fit the new one (DuckDB would refuse the pair),
        # and until the rename a reader sees the old snapshot without it, older but whole.
        base_record_path(database).unlink(missing_ok=True)
        log_path(target).unlink(missing_ok=True)
        fresh.replace(target)
        with contextlib.suppress(OSError):  # without it, the next publishing run checkpoints
            _record_base(database, copied)
        clear_due(database)
        if old is not None and not cloned:
            with contextlib.suppress(OSError):  # else the next run frees it as a retired copy
                old.replace(spare)
        _remove_other_digests(database, target, spare)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    return target


def checkpoint_needed(database: Path, *, publishing: bool) -> bool:
    """Whether a run that wrote ``database`` (and holds it open) checkpoints it before closing.

    A checkpoint folds DuckDB's log into the database file, and publishing the database
    (:func:`publish_snapshot`) then gives readers all of it. While the snapshot is the database as
    of its last checkpoint (:func:`shares_base`), the log published beside it (:func:`publish_log`)
    gives them the same, without the checkpoint and the publish of the database: ~15 % of an
    incremental run at 1 GB. The log is folded in once it reaches :data:`LOG_PUBLISH_LIMIT`, or when
    the run publishes (``publishing``) and the snapshot's base is not the database's (a first run; a
    ``reset``, a ``forget`` or DuckDB itself checkpointed; a large append wrote row groups into the
    file).
    """
    try:
        size = log_path(database).stat().st_size
    except FileNotFoundError:
        size = 0
    if size >= LOG_PUBLISH_LIMIT:
        return True
    return publishing and not shares_base(database)


def shares_base(database: Path) -> bool:
    """Whether the published snapshot is ``database`` as of its last checkpoint: the database file
    has not been written since the snapshot was copied from it.

    Its inode, length and change times are those :func:`publish_snapshot` recorded as it copied
    (:func:`base_record_path`); any write changes them. Its headers are the snapshot's, byte for
    byte, too (:data:`DUCKDB_HEADER_BYTES`). The headers alone would not do: DuckDB writes a large
    append's row groups straight into the file, where no checkpoint refers to them yet, and logs
    only where they are; a snapshot with that log and without those blocks cannot be read.
    """
    try:
        recorded = json.loads(base_record_path(database).read_bytes())
        if recorded != _file_state(database.stat()):
            return False
        with database.open("rb") as ours, snapshot_path(database).open("rb") as theirs:
            header = ours.read(DUCKDB_HEADER_BYTES)
            return len(header) == DUCKDB_HEADER_BYTES and header == theirs.read(DUCKDB_HEADER_BYTES)
    except (OSError, ValueError):
        return False


def _file_state(info: os.stat_result) -> dict[str, int]:
    """What changes when a file is written: its inode, length and modification and change times."""
    return {"inode": info.st_ino, "size": info.st_size, "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns}


def _record_base(database: Path, copied: os.stat_result) -> None:
    """Record ``copied``, the database's state the snapshot was copied at (:func:`shares_base`)."""
    temporary = _temporary_path(database, "base")
    temporary.write_text(json.dumps(_file_state(copied)))
    temporary.replace(base_record_path(database))


def publish_log(database: Path) -> Path:
    """Publish the database's write-ahead log beside the snapshot, which shares its base
    (:func:`checkpoint_needed`): a copy renamed into place, so a reader opens the old log or the new
    one, each whole and of that base. Returns the log's path beside the snapshot.

    A reader that read the snapshot's header just before a publish that replaced it, and its log
    only after a later publish, finds a log of another checkpoint: DuckDB refuses that pair, and
    :func:`~sessionpipe_runner.store.connect` opens again.
    """
    target = log_path(snapshot_path(database))
    temporary = _temporary_path(database, "wal")
    try:
        shutil.copyfile(log_path(database), temporary)
        temporary.replace(target)
    except FileNotFoundError:  # no log: the database is its checkpoint, and so is the snapshot
        target.unlink(missing_ok=True)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    clear_due(database)
    return target


def _patch(spare: Path, database: Path) -> bool:
    """Make ``spare`` a byte-for-byte copy of ``database`` by writing what differs; ``False`` when
    it is not there, has another name too, is open in a reader, or patching fails (then it is not
    used, whatever it now holds).

    A reader is seen by its lock only from another process: POSIX record locks never conflict
    within one, and closing any descriptor of a file drops the process's locks on it. No process
    that publishes also reads the snapshot (the dashboard and ``report`` only read).
    """
    if not hasattr(os, "preadv"):  # not on macOS: copy instead
        return False
    try:
        spare_fd = os.open(spare, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        info = os.fstat(spare_fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:  # never write a file readers can open
            return False
        # Held until the descriptor is closed, after the last write: a DuckDB reader's shared lock
        # refuses it, and a reader opening the file meanwhile would be refused.
        fcntl.lockf(spare_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        known = _known_digests(database, info)
        digests_path(database, info.st_ino).unlink(missing_ok=True)  # before the spare changes
        source_fd = os.open(database, os.O_RDONLY | os.O_CLOEXEC)
        try:
            patched = _write_differences(source_fd, spare_fd, info.st_size, known)
        finally:
            os.close(source_fd)
        with contextlib.suppress(OSError):  # without them, the next patch of it compares
            _save_digests(database, os.fstat(spare_fd), patched.digests)
    except OSError:
        return False
    finally:
        os.close(spare_fd)
    return True


@dataclass(frozen=True)
class Digests:
    """The digests of a file's spans of :data:`SPAN_BYTES` (the last may be shorter), made with
    ``seed``: xxh3's 128-bit hash, keyed by a seed drawn for each list, so that no text in a
    transcript can be made to collide with what the database held before."""

    seed: int
    values: list[int]


@dataclass(frozen=True)
class Patched:
    """What :func:`_write_differences` did: the bytes it wrote, and the digests of what it made."""

    written: int
    digests: Digests


def _write_differences(source_fd: int, target_fd: int, target_size: int, known: Digests | None = None) -> Patched:
    """Write over ``target_fd`` whatever differs from ``source_fd`` and cut it to the same length.

    With ``known``, the digests of what ``target_fd`` holds, only ``source_fd`` is read: each span
    whose digest differs is written. Without, the two are compared.

    The two halves are compared at once, one in a thread: the reads are copies out of the page
    cache, which the kernel makes without the GIL, and one core alone took twice as long (86 MB:
    29-36 ms on one thread, 16-17 ms on two).
    """
    size = os.fstat(source_fd).st_size
    seed = known.seed if known is not None else int.from_bytes(os.urandom(8), "little")
    middle = -(-size // 2 // CHUNK_BYTES) * CHUNK_BYTES
    if middle >= size:
        written, values = _write_range(source_fd, target_fd, target_size, 0, size, known, seed)
    else:
        second: list[tuple[int, list[int]]] = []
        failure: list[BaseException] = []

        def second_half() -> None:
            try:
                second.append(_write_range(source_fd, target_fd, target_size, middle, size, known, seed))
            except BaseException as error:  # raised in the publishing thread below
                failure.append(error)

        thread = threading.Thread(target=second_half, name="publish-second-half")
        thread.start()
        try:
            written, values = _write_range(source_fd, target_fd, target_size, 0, middle, known, seed)
        finally:
            thread.join()
        if failure:
            raise failure[0]
        written += second[0][0]
        values += second[0][1]
    if target_size > size:
        os.ftruncate(target_fd, size)
    return Patched(written, Digests(seed, values))


def _write_range(
    source_fd: int, target_fd: int, target_size: int, offset: int, end: int, known: Digests | None, seed: int
) -> tuple[int, list[int]]:
    """:func:`_write_differences` for the bytes from ``offset`` to ``end``: the bytes written and
    the digests of those spans."""
    ours = bytearray(CHUNK_BYTES)
    theirs = bytearray(CHUNK_BYTES if known is None else 0)  # with digests, the target is not read
    source = memoryview(ours)
    read_flags = getattr(os, "RWF_NOWAIT", 0)
    written = 0
    values: list[int] = []
    while offset < end:
        length = os.preadv(source_fd, [source[: min(CHUNK_BYTES, end - offset)]], offset)
        if length == 0:
            break
        chunk = _span_digests(source, length, seed)
        values += chunk
        if known is not None:
            for start, stop in _differing_spans(chunk, known, offset, length, target_size):
                written += _write_all(target_fd, source[start:stop], offset + start)
            offset += length
            continue
        cached = 0
        if offset < target_size:
            try:
                cached = os.preadv(target_fd, [theirs], offset, read_flags)
            except BlockingIOError:  # not in the page cache: reading it would cost more than writing
                cached = 0
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                read_flags = 0  # this file system has no RWF_NOWAIT: read as usual from here on
                cached = os.preadv(target_fd, [theirs], offset)
        if cached < length:
            written += _write_all(target_fd, source[:length], offset)
        elif length == CHUNK_BYTES and ours == theirs:
            pass
        else:
            for start, stop in _differing_pages(ours, theirs, length):
                written += _write_all(target_fd, source[start:stop], offset + start)
        offset += length
    return written, values


def _span_digests(data: memoryview, length: int, seed: int) -> list[int]:
    """The digests of the spans of the first ``length`` bytes of ``data``."""
    return [
        xxh3_128_intdigest(data[start : min(start + SPAN_BYTES, length)], seed)
        for start in range(0, length, SPAN_BYTES)
    ]


def _differing_spans(
    chunk: list[int], known: Digests, offset: int, length: int, target_size: int
) -> list[tuple[int, int]]:
    """The runs of spans of the chunk at ``offset`` (its ``length`` bytes with digests ``chunk``)
    that differ from the target's: a span the target lacks, or has of another length, differs."""
    first = offset // SPAN_BYTES
    differing = []
    for number, digest in enumerate(chunk):
        start = number * SPAN_BYTES
        stop = min(start + SPAN_BYTES, length)
        theirs = min(SPAN_BYTES, target_size - offset - start)
        same = first + number < len(known.values) and theirs == stop - start and known.values[first + number] == digest
        if not same:
            differing.append((start, stop))
    return _joined(differing)


def _differing_pages(ours: bytearray, theirs: bytearray, length: int) -> list[tuple[int, int]]:
    """The runs of pages in the first ``length`` bytes where the two buffers differ."""
    pages = ((start, min(start + PAGE_BYTES, length)) for start in range(0, length, PAGE_BYTES))
    return _joined([(start, end) for start, end in pages if ours[start:end] != theirs[start:end]])


def _joined(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` (in order, not overlapping) with each that starts where the one before ends
    joined to it: one write each."""
    runs: list[tuple[int, int]] = []
    for start, end in ranges:
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def _write_all(fd: int, data: memoryview, offset: int) -> int:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)
    return done


def _known_digests(database: Path, info: os.stat_result) -> Digests | None:
    """The digests saved for the snapshot file ``info`` describes, if they are whole and of the
    file as it is: its inode, length and modification time as when they were saved (a write since,
    such as a publish killed half way, changes the time; the patch removes them before it writes,
    too)."""
    try:
        data = digests_path(database, info.st_ino).read_bytes()
    except OSError:
        return None
    header, _, body = data.partition(b"\n")
    try:
        fields = json.loads(header)
    except ValueError:
        return None
    expected = _digests_header(info)
    if not isinstance(fields, dict) or any(fields.get(name) != value for name, value in expected.items()):
        return None
    seed, checksum = fields.get("seed"), fields.get("checksum")
    if not isinstance(seed, int) or checksum != xxh3_64_intdigest(body) or len(body) != 16 * expected["count"]:
        return None
    values = [int.from_bytes(body[at : at + 16], "little") for at in range(0, len(body), 16)]
    return Digests(seed, values)


def _save_digests(database: Path, info: os.stat_result, digests: Digests) -> None:
    """Save ``digests`` as those of the file ``info`` describes (taken after its last write)."""
    body = b"".join(value.to_bytes(16, "little") for value in digests.values)
    header = {**_digests_header(info), "seed": digests.seed, "checksum": xxh3_64_intdigest(body)}
    path = digests_path(database, info.st_ino)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(json.dumps(header).encode() + b"\n" + body)
    temporary.replace(path)


def _digests_header(info: os.stat_result) -> dict[str, int]:
    """What a digest file says of the file it describes (``info``), and of its own format."""
    return {
        "format": DIGESTS_FORMAT,
        "span": SPAN_BYTES,
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "count": -(-info.st_size // SPAN_BYTES),
    }


def _remove_other_digests(database: Path, *snapshots: Path) -> None:
    """Remove the digests beside the database but those of ``snapshots`` (the snapshot and the
    spare): of files replaced or freed, or half written."""
    keep: set[str] = set()
    for path in snapshots:
        with contextlib.suppress(OSError):
            keep.add(str(path.stat().st_ino))
    _remove_matching(database, _digests_name(database), lambda match: match[2] is not None or match[1] not in keep)


def _retire(snapshot: Path) -> Path | None:
    """Give the published snapshot a retired name as well (a hard link), so that the rename over it
    frees nothing; that name, or ``None`` when there is no snapshot yet or the file system refuses
    hard links (then the rename frees the old copy at once)."""
    retired = snapshot.with_name(f".{snapshot.name}.{os.getpid()}-{os.urandom(4).hex()}.retired")
    try:
        os.link(snapshot, retired)
    except OSError:
        return None
    return retired


def free_retired_snapshots(database: Path) -> int:
    """Remove the retired snapshots beside the database: the old snapshot is retired just before it
    becomes the spare, and a publish interrupted between the two leaves it retired. Returns how
    many. Only the lease holder calls this."""
    return _remove_matching(database, _retired_snapshot_name(database))


def remove_old_snapshots(database: Path) -> int:
    """Remove every older snapshot beside the database, the spare and the retired ones (``forget``:
    they may hold what was forgotten); returns how many."""
    removed = free_retired_snapshots(database)
    with contextlib.suppress(FileNotFoundError):
        spare_path(database).unlink()
        removed += 1
    _remove_other_digests(database, snapshot_path(database))
    return removed


def free_retired_snapshots_in_background(database: Path) -> threading.Thread:
    """:func:`free_retired_snapshots` in a thread (the kernel frees the blocks without the GIL);
    join it before releasing the lease."""
    thread = threading.Thread(target=free_retired_snapshots, args=(database,), name="free-retired-snapshots")
    thread.start()
    return thread


def _clone(source: Path, target: Path) -> bool:
    """Make ``target`` a copy-on-write clone of ``source``, in constant time; ``False`` if the file
    system cannot (ext4, tmpfs, NFS), and then no ``target`` is left."""
    with source.open("rb") as original:
        try:
            with target.open("wb") as clone:
                fcntl.ioctl(clone.fileno(), FICLONE, original.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                target.unlink(missing_ok=True)
            return False
    return True


def remove_stale_snapshots(database: Path) -> int:
    """Remove temporary snapshot copies a killed run left beside the database; returns how many.

    Only the lease holder calls this: no other process can be publishing at the same time.
    """
    return _remove_matching(database, _temporary_snapshot_name(database))


def _remove_matching(
    database: Path, pattern: re.Pattern[str], doomed: Callable[[re.Match[str]], bool] = lambda _: True
) -> int:
    """Remove the files beside the database whose names match ``pattern`` and whose match is
    ``doomed``; returns how many."""
    removed = 0
    with contextlib.suppress(OSError), os.scandir(database.parent) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match is not None and doomed(match):
                with contextlib.suppress(OSError):
                    Path(entry.path).unlink()
                    removed += 1
    return removed
