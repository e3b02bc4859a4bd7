"""Finding session files on the sessions volume, and deciding which of them a run must look at.

Two layouts are read:

- the volume layout, ``<root>/<user>/<project>/<session>.jsonl`` (the first component is the user;
  a flat ``<root>/<user>/<session>.jsonl`` works too);
- one user's Claude ``projects/`` directory (``--user NAME``): ``<root>/<project>/<session>.jsonl``,
  whose keys are prefixed with that user.

Keys are always ``<user>/<path relative to the user's folder>`` with forward slashes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

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


@dataclass
class ScanResult:
    """The session files found, and everything else met on the way, counted by reason."""

    files: list[SessionFile] = field(default_factory=list)
    issues: Counter[str] = field(default_factory=Counter)


def scan_sessions(root: Path, user: str | None = None) -> ScanResult:
    """Walk the sessions tree without following directory symlinks (so a symlink loop is harmless).

    With ``user``, ``root`` is that user's ``projects/`` directory; without, the first path
    component below ``root`` names the user.
    """
    result = ScanResult()
    if user is not None:
        _walk(root, [], user, result)
        return result
    for entry in _entries(root, result):
        is_dir = _is_dir(entry, result)
        if is_dir is None:
            continue
        if is_dir:
            _walk(Path(entry.path), [], entry.name, result)
        elif entry.name.endswith(SESSION_SUFFIX):
            result.issues["outside_user_folder"] += 1
        else:
            result.issues["not_jsonl"] += 1
    return result


def _entries(directory: Path, result: ScanResult) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as iterator:
            return list(iterator)
    except FileNotFoundError:
        result.issues["vanished"] += 1
    except OSError:
        result.issues["unreadable_dir"] += 1
    return []


def _os_reason(error: OSError) -> str:
    """The issue an entry that cannot be looked at is counted under."""
    if isinstance(error, FileNotFoundError):
        return "vanished"  # deleted since listed, or a dangling symlink
    if error.errno == errno.ELOOP:
        return "symlink_loop"
    return "unreadable"  # a permission problem, an I/O error…


def _is_dir(entry: os.DirEntry[str], result: ScanResult) -> bool | None:
    """Whether to descend into ``entry``; ``None`` when it was counted as an issue and is done with.

    A symlink to a directory is counted and not followed (it could loop back on its parents).
    """
    try:
        if entry.is_dir(follow_symlinks=False):
            return True
        if entry.is_symlink() and entry.is_dir(follow_symlinks=True):
            result.issues["symlinked_dir_skipped"] += 1
            return None
    except OSError as error:
        result.issues[_os_reason(error)] += 1
        return None
    return False


def _walk(directory: Path, parts: list[str], user: str, result: ScanResult) -> None:
    for entry in _entries(directory, result):
        is_dir = _is_dir(entry, result)
        if is_dir is None:
            continue
        if is_dir:
            _walk(Path(entry.path), [*parts, entry.name], user, result)
            continue
        if not entry.name.endswith(SESSION_SUFFIX):
            result.issues["not_jsonl"] += 1
            continue
        try:
            info = entry.stat(follow_symlinks=True)
        except OSError as error:
            result.issues[_os_reason(error)] += 1
            continue
        if not stat.S_ISREG(info.st_mode):
            result.issues["not_a_file"] += 1
            continue
        relative = [*parts, entry.name]
        project, session_id = session_identity(relative)
        result.files.append(
            SessionFile(
                key="/".join([user, *relative]),
                location=entry.path,
                user=user,
                project=project,
                session_id=session_id,
                size=info.st_size,
                mtime_ns=info.st_mtime_ns,
            )
        )


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
