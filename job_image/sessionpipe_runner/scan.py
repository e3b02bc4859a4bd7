"""Finding session files on the sessions volume, and deciding which of them a run must look at.

Two layouts are read:

- the volume layout, ``<root>/<user>/<project>/<session>.jsonl`` (the first component is the user;
  a flat ``<root>/<user>/<session>.jsonl`` works too);
- one user's Claude ``projects/`` directory (``--user NAME``): ``<root>/<project>/<session>.jsonl``,
  whose keys are prefixed with that user.

Keys are always ``<user>/<path relative to the user's folder>`` with forward slashes; a name that
is not UTF-8 is written with ``\\xNN`` escapes (:func:`~sessionpipe_runner.names.key_part`).

The volume is not trusted: no symlink below the root is followed (``symlink_skipped``,
``symlinked_dir_skipped``), folders deeper than :data:`MAX_FOLDER_DEPTH` are counted
(``too_deep``), and no name or depth makes the scan fail.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from sessionpipe_runner.names import key_part
from sessionpipe_runner.processors.base import SessionFile
from sessionpipe_runner.store import StateRow

SESSION_SUFFIX = ".jsonl"


def session_identity(parts: Sequence[str]) -> tuple[str, str]:
    """(project, session id) of a file, from its path parts below the user's folder.

    The project is the first folder; the session is the file's stem, except that files inside a
    ``<session>/`` folder (``<session>/subagents/agent-*.jsonl``, ``<session>/chat.jsonl``) roll up
    into that session, as ccusage counts them.
    """
    stem = parts[-1].removesuffix(SESSION_SUFFIX)
    if len(parts) == 1:
        return "", stem
    if len(parts) == 2:
        return parts[0], stem
    return parts[0], parts[1]


#: Folders a session file may lie below its user's folder (Claude Code uses three at most:
#: ``<project>/<session>/subagents/``). Deeper folders are not entered, and counted ``too_deep``;
#: the bound also bounds the descriptors a scan holds open (one per folder level).
MAX_FOLDER_DEPTH = 32

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class ScanResult:
    """The session files found, and everything else met on the way, counted by reason."""

    files: list[SessionFile] = field(default_factory=list)
    issues: Counter[str] = field(default_factory=Counter)
    #: Indexes in ``files`` of the files whose key has an escaped (undecodable) name in it.
    escaped: list[int] = field(default_factory=list)


def scan_sessions(root: Path, user: str | None = None) -> ScanResult:
    """Walk the sessions tree, never following a symlink below ``root`` (its own path may have some).

    Folders are opened relative to their parent's descriptor, so no path length limit applies and
    a folder swapped for a symlink during the scan is not entered. With ``user``, ``root`` is that
    user's ``projects/`` directory; without, the first path component below ``root`` names the user.
    """
    result = ScanResult()
    location = str(root)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        result.issues["vanished" if isinstance(error, FileNotFoundError) else "unreadable_dir"] += 1
        return result
    try:
        if user is not None:
            user_key = key_part(user)
            _walk(_enter(user_key, os.dup(root_fd), location, [], user_key != user, result), location, result)
        else:
            _walk_users(root_fd, location, result)
    finally:
        os.close(root_fd)
    _drop_name_collisions(result)
    return result


def scan_roots(roots: Sequence[Path], user: str | None = None) -> ScanResult:
    """:func:`scan_sessions` of each root, as one scan whose keys are unique.

    Keys do not name the root: a file has the key a scan of its root alone gives it, so adding or
    removing a root changes no other file's key. The same key in several roots is one session file
    copied (Claude Code's move from ``~/.claude`` to ``~/.config/claude`` leaves such copies): the
    largest copy is read (it holds the most lines; on a tie the root listed first), and each other
    copy is counted ``duplicate_in_other_root``.
    """
    merged = ScanResult()
    chosen: dict[str, int] = {}
    for root in roots:
        scan = scan_sessions(root, user)
        merged.issues.update(scan.issues)
        for file in scan.files:
            index = chosen.get(file.key)
            if index is None:
                chosen[file.key] = len(merged.files)
                merged.files.append(file)
                continue
            merged.issues["duplicate_in_other_root"] += 1
            if file.size > merged.files[index].size:
                merged.files[index] = file
    return merged


class _Kind(Enum):
    DIRECTORY = "directory"
    FILE = "file"  # anything that is neither a directory nor a symlink
    SYMLINK = "symlink"  # a symlink to anything but a directory, or dangling
    COUNTED = "counted"  # counted as an issue already


@dataclass
class _Folder:
    """A folder being walked: its open descriptor, and what its files' keys and locations start with."""

    fd: int
    location: str
    parts: list[str]  # key components below the user's folder
    escaped: bool  # whether the user's or one of these components is an escaped name
    entries: Iterator[os.DirEntry[str]]
    #: What every file's key and location here start with (computed once per folder, not per file).
    key_prefix: str = ""
    location_prefix: str = ""


def _enter(user: str, fd: int, location: str, parts: list[str], escaped: bool, result: ScanResult) -> _Folder:
    """The folder open as ``fd``, listed (``fd`` is closed if listing is interrupted)."""
    try:
        entries = iter(_entries(fd, result))
        key_prefix = "/".join([user, *parts]) + "/"
        return _Folder(fd, location, parts, escaped, entries, key_prefix, _join(location, ""))
    except BaseException:
        os.close(fd)
        raise


def _join(location: str, name: str) -> str:
    """``os.path.join`` for a name from a listing (never absolute), without building a ``Path``."""
    return location + name if location.endswith("/") else f"{location}/{name}"


def _walk_users(root_fd: int, location: str, result: ScanResult) -> None:
    for entry in _entries(root_fd, result):
        kind = _kind(entry, result)
        if kind is _Kind.DIRECTORY:
            fd = _open_folder(root_fd, entry.name, result)
            if fd is not None:
                user = key_part(entry.name)
                folder = _enter(user, fd, _join(location, entry.name), [], user != entry.name, result)
                _walk(folder, location, result)
        elif kind is not _Kind.COUNTED:
            result.issues["outside_user_folder" if entry.name.endswith(SESSION_SUFFIX) else "not_jsonl"] += 1


def _entries(fd: int, result: ScanResult) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(fd) as iterator:
            return list(iterator)
    except OSError:
        result.issues["unreadable_dir"] += 1
    return []


def _os_reason(error: OSError) -> str:
    """The issue an entry that cannot be looked at is counted under."""
    return "vanished" if isinstance(error, FileNotFoundError) else "unreadable"  # deleted since listed


def _open_folder(parent: int, name: str, result: ScanResult) -> int | None:
    """A descriptor of the folder ``name`` in ``parent``; ``None`` (counted) if it vanished or became a symlink."""
    try:
        return os.open(name, _DIRECTORY, dir_fd=parent)
    except FileNotFoundError:
        result.issues["vanished"] += 1
    except OSError:
        result.issues["unreadable_dir"] += 1
    return None


def _kind(entry: os.DirEntry[str], result: ScanResult) -> _Kind:
    """What ``entry`` is, without following it; a symlink to a directory is counted and done with."""
    try:
        if entry.is_symlink():
            if _points_to_directory(entry):
                result.issues["symlinked_dir_skipped"] += 1
                return _Kind.COUNTED
            return _Kind.SYMLINK
        return _Kind.DIRECTORY if entry.is_dir(follow_symlinks=False) else _Kind.FILE
    except OSError as error:
        result.issues[_os_reason(error)] += 1
        return _Kind.COUNTED


def _points_to_directory(entry: os.DirEntry[str]) -> bool:
    """Whether a symlink leads to a directory (only to name what is skipped: it is never entered)."""
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False  # a loop, or a target that cannot be looked at


def _walk(user_folder: _Folder, root: str, result: ScanResult) -> None:
    """Add the session files of one user's folder (its descriptor is closed here), depth first.

    At most :data:`MAX_FOLDER_DEPTH` + 1 folders are open at once, one per level.

    Without recursion: the depth of the tree is the volume's to choose.
    """
    user = user_folder.key_prefix[:-1]
    stack = [user_folder]
    try:
        while stack:
            folder = stack[-1]
            entry = next(folder.entries, None)
            if entry is None:
                os.close(stack.pop().fd)
                continue
            # Most entries are session files: a regular file by the listing's d_type (no system
            # call, never a symlink) skips the general sorting below.
            if entry.name.endswith(SESSION_SUFFIX) and _plain_file(entry):
                _add_file(entry, False, folder, user, root, result)
                continue
            kind = _kind(entry, result)
            if kind is _Kind.DIRECTORY:
                if len(stack) > MAX_FOLDER_DEPTH:
                    result.issues["too_deep"] += 1
                    continue
                fd = _open_folder(folder.fd, entry.name, result)
                if fd is not None:
                    part = key_part(entry.name)
                    location = _join(folder.location, entry.name)
                    escaped = folder.escaped or part != entry.name
                    stack.append(_enter(user, fd, location, [*folder.parts, part], escaped, result))
            elif kind is not _Kind.COUNTED:
                _add_file(entry, kind is _Kind.SYMLINK, folder, user, root, result)
    finally:
        for folder in stack:
            os.close(folder.fd)


def _plain_file(entry: os.DirEntry[str]) -> bool:
    """Whether the listing says ``entry`` is a regular file (a symlink is not); ``False`` when in doubt."""
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False  # the general path looks again and counts why


def _add_file(
    entry: os.DirEntry[str], is_symlink: bool, folder: _Folder, user: str, root: str, result: ScanResult
) -> None:
    name = entry.name
    if not name.endswith(SESSION_SUFFIX):
        result.issues["not_jsonl"] += 1
        return
    if is_symlink:
        result.issues["symlink_skipped"] += 1  # wherever it leads, it is not read
        return
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError as error:
        result.issues[_os_reason(error)] += 1
        return
    if not stat.S_ISREG(info.st_mode):
        result.issues["not_a_file"] += 1
        return
    part = name if name.isascii() else key_part(name)
    parts = folder.parts
    if len(parts) >= 2:
        project, session_id = parts[0], parts[1]  # session_identity, without a list per file
    else:
        project, session_id = session_identity([*parts, part])
    if folder.escaped or part != name:
        result.escaped.append(len(result.files))
    result.files.append(
        SessionFile(
            key=folder.key_prefix + part,
            location=folder.location_prefix + name,
            user=user,
            project=project,
            session_id=session_id,
            size=info.st_size,
            mtime_ns=info.st_mtime_ns,
            root=root,
        )
    )


def _drop_name_collisions(result: ScanResult) -> None:
    """Skip each file whose escaped key another file has too (``name_collision``).

    A decodable name keeps its key; which escaped file would win must not depend on listing order.
    """
    if not result.escaped:
        return
    claims = Counter(file.key for file in result.files)
    dropped = {index for index in result.escaped if claims[result.files[index].key] > 1}
    if dropped:
        result.issues["name_collision"] += len(dropped)
        result.files = [file for index, file in enumerate(result.files) if index not in dropped]
        result.escaped = []


class Decision(Enum):
    """What a run does with one scanned file."""

    UNCHANGED = "unchanged"  # same size and mtime as when last done: not even hashed
    QUARANTINED = "quarantined"  # failed too often, and unchanged since
    CHECK = "check"  # size or mtime changed: hash it, process only if the content changed
    PROCESS = "process"  # new, retried after a failure, or the processor's version changed


def decide(file: SessionFile, state: StateRow | None, version: str) -> Decision:
    """The change-detection rule for one file against what the store remembers of it."""
    if state is None or state.processor_version != version:
        return Decision.PROCESS
    stat_same = state.size == file.size and state.mtime_ns == file.mtime_ns
    if state.status == "quarantined":
        return Decision.QUARANTINED if stat_same else Decision.CHECK
    if state.status == "failed":
        return Decision.PROCESS
    return Decision.UNCHANGED if stat_same else Decision.CHECK


def plan(
    files: Sequence[SessionFile], unsettled: Mapping[str, StateRow | None], version: str
) -> Iterator[tuple[SessionFile, Decision]]:
    """Each file with its decision, in a stable order (by key).

    ``unsettled`` has the state (``None`` if there is none) of every file that may be anything but
    unchanged, as :func:`~sessionpipe_runner.store.unsettled_state` finds them; a file not in it
    is unchanged.
    """
    for file in sorted(files, key=lambda f: f.key):
        if file.key in unsettled:
            yield file, decide(file, unsettled[file.key], version)
        else:
            yield file, Decision.UNCHANGED
