"""The read-only snapshot: a copy of the database that readers use while a run writes it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import threading
from pathlib import Path

#: ``FICLONE`` (<linux/fs.h>): make a file share another's blocks, copy-on-write (Btrfs, XFS with
#: reflink, bcachefs, OCFS2). Not in Python's ``fcntl`` module before 3.12.
FICLONE = 0x40049409


def snapshot_path(database: Path) -> Path:
    """Where the read-only copy of the database is published after each successful run."""
    return database.with_name(database.stem + ".snapshot" + database.suffix)


def _temporary_snapshot_name(database: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(snapshot_path(database).name)}\.\d+\.tmp")


def _retired_snapshot_name(database: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(snapshot_path(database).name)}\.\d+-[0-9a-f]{{8}}\.retired")


def publish_snapshot(database: Path, *, retire_old: bool = False) -> Path:
    """Copy the checkpointed database to a temporary name, then rename it into place atomically.

    If either step fails (a full disk, a directory in the way) or is interrupted, the temporary
    copy is removed: left behind, it would fill the disk the next run needs.

    Renaming over the old snapshot frees its blocks and page cache, which costs as much as the copy
    (25-40 ms for a 39 MB file on ext4). With ``retire_old``, the old snapshot is first given a
    second, hidden name, so the rename frees nothing; :func:`free_retired_snapshots` frees it later,
    off the run's path (the next run does it in the background while it scans). Readers that opened
    the old snapshot keep reading it either way.
    """
    target = snapshot_path(database)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if not _clone(database, temporary):
            shutil.copyfile(database, temporary)  # in-kernel (sendfile), but every byte
        if retire_old:
            _retire(target)
        temporary.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    return target


def _retire(snapshot: Path) -> None:
    """Give the published snapshot a retired name as well (a hard link). When there is none yet, or
    the file system refuses hard links, the rename frees the old copy at once, as it always did."""
    retired = snapshot.with_name(f".{snapshot.name}.{os.getpid()}-{os.urandom(4).hex()}.retired")
    with contextlib.suppress(OSError):
        os.link(snapshot, retired)


def free_retired_snapshots(database: Path) -> int:
    """Remove the retired snapshots beside the database (see :func:`publish_snapshot`); returns how
    many. Only the lease holder calls this."""
    return _remove_matching(database, _retired_snapshot_name(database))


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


def _remove_matching(database: Path, pattern: re.Pattern[str]) -> int:
    removed = 0
    with contextlib.suppress(OSError), os.scandir(database.parent) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name):
                with contextlib.suppress(OSError):
                    Path(entry.path).unlink()
                    removed += 1
    return removed
