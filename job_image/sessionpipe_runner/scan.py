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

The user folders are walked by the compiled listing (``walk_user_folders`` of the package
``sessionpipe-native``, ``native/src/listing.rs``) when it is installed: the same walk, on several
threads. The Python walk here is its reference (``tests/unit/test_native_listing.py`` holds the two
equal over hostile trees); ``SESSIONPIPE_LISTING=python`` selects it, and so does a missing package.

Given a scan index (:mod:`sessionpipe_runner.scanindex`), the compiled listing leaves out the files
the index shows plainly unchanged: only their number is kept (:attr:`ScanResult.unchanged`).
"""

from __future__ import annotations

import os
import stat
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from sessionpipe_runner import native
from sessionpipe_runner.names import key_part
from sessionpipe_runner.processors.base import SessionFile
from sessionpipe_runner.reading import MTIME_NS_MAX, MTIME_NS_MIN, clamp_mtime_ns
from sessionpipe_runner.store import StateRow

if TYPE_CHECKING:
    from sessionpipe_native import ScanIndex

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

#: ``python`` makes the scan walk user folders in Python even when the compiled listing is installed.
ENV_LISTING = "SESSIONPIPE_LISTING"
PYTHON_LISTING = native.PYTHON

#: User folders the compiled listing walks per call (each is an open descriptor until the call returns).
USERS_PER_CALL = 64

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class _Origin:
    """What the files found in one folder have in common: their keys' start, and enough to make
    each one's :class:`SessionFile`."""

    user: str
    parts: tuple[str, ...]  # key components of the folder below the user's folder
    escaped: bool  # whether the user's or one of these components is an escaped name
    key_prefix: str  # what every file's key here starts with (computed once per folder, not per file)
    location_prefix: str  # the folder's location, with a trailing slash
    root: str

    def session_file(self, key: str, name: str, size: int, mtime_ns: int) -> SessionFile:
        project, session_id = session_identity([*self.parts, key_part(name)])
        location = self.location_prefix + name
        return SessionFile(key, location, self.user, project, session_id, size, mtime_ns, self.root)


@dataclass
class ScanResult:
    """The session files found, as columns (index ``i`` of each is one file), and everything else
    met on the way, counted by reason.

    A run compares files by (key, size, mtime) alone, and most of them go no further: the
    :class:`SessionFile` of a file is made by :meth:`file`, for the few a run must look at.
    """

    keys: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)  # st_mtime_ns
    names: list[str] = field(default_factory=list)  # each file's name in its folder
    origins: list[_Origin] = field(default_factory=list)
    issues: Counter[str] = field(default_factory=Counter)
    #: Indexes of the files whose key has an escaped (undecodable) name in it.
    escaped: list[int] = field(default_factory=list)
    #: Files a scan index showed plainly unchanged: counted, not listed.
    unchanged: int = 0
    #: Whether the scan met a name a scan index cannot judge (one that is not UTF-8): its
    #: filtering is not to be trusted, and the scan is to be made again without it.
    index_unusable: bool = False

    def __len__(self) -> int:
        """How many session files were found (the listed ones and those an index left out)."""
        return len(self.keys) + self.unchanged

    def file(self, index: int) -> SessionFile:
        """The :class:`SessionFile` of the file at ``index``."""
        key, name, size, mtime_ns = self.keys[index], self.names[index], self.sizes[index], self.mtimes[index]
        return self.origins[index].session_file(key, name, size, mtime_ns)

    @property
    def files(self) -> list[SessionFile]:
        """Every file's :class:`SessionFile`, in scan order (made anew on each use: for tests and tools)."""
        return [self.file(index) for index in range(len(self.keys))]

    def _append(self, other: ScanResult, index: int) -> None:
        """Add ``other``'s file at ``index``."""
        self.keys.append(other.keys[index])
        self.sizes.append(other.sizes[index])
        self.mtimes.append(other.mtimes[index])
        self.names.append(other.names[index])
        self.origins.append(other.origins[index])

    def _replace(self, at: int, other: ScanResult, index: int) -> None:
        """Put ``other``'s file at ``index`` in place of this scan's file at ``at``."""
        self.keys[at], self.sizes[at], self.mtimes[at] = other.keys[index], other.sizes[index], other.mtimes[index]
        self.names[at], self.origins[at] = other.names[index], other.origins[index]

    def _drop(self, dropped: set[int]) -> None:
        """Remove the files at these indexes."""
        kept = [index for index in range(len(self.keys)) if index not in dropped]
        self.keys = [self.keys[index] for index in kept]
        self.sizes = [self.sizes[index] for index in kept]
        self.mtimes = [self.mtimes[index] for index in kept]
        self.names = [self.names[index] for index in kept]
        self.origins = [self.origins[index] for index in kept]


def scan_sessions(root: Path, user: str | None = None, index: ScanIndex | None = None) -> ScanResult:
    """Walk the sessions tree, never following a symlink below ``root`` (its own path may have some).

    Folders are opened relative to their parent's descriptor, so no path length limit applies and
    a folder swapped for a symlink during the scan is not entered. With ``user``, ``root`` is that
    user's ``projects/`` directory; without, the first path component below ``root`` names the user.
    With ``index`` (and the compiled listing), the files it shows plainly unchanged are only counted.
    """
    result = ScanResult()
    location = str(root)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        result.issues["vanished" if isinstance(error, FileNotFoundError) else "unreadable_dir"] += 1
        return result
    users = _UserFolders(location, result, compiled_listing(), index)
    try:
        if user is not None:
            user_key = key_part(user)
            users.walk(user_key, os.dup(root_fd), location, user_key != user)
        else:
            _walk_users(root_fd, location, users)
        users.flush()
    finally:
        users.close()
        os.close(root_fd)
    _drop_name_collisions(result)
    _clamp_mtimes(result)
    return result


def scan_roots(roots: Sequence[Path], user: str | None = None, index: ScanIndex | None = None) -> ScanResult:
    """:func:`scan_sessions` of each root, as one scan whose keys are unique.

    Keys do not name the root: a file has the key a scan of its root alone gives it, so adding or
    removing a root changes no other file's key. The same key in several roots is one session file
    copied (Claude Code's move from ``~/.claude`` to ``~/.config/claude`` leaves such copies): the
    largest copy is read (it holds the most lines; on a tie the root listed first), and each other
    copy is counted ``duplicate_in_other_root``.

    An ``index`` is for one root only: which copy of a file is read depends on the copies a scan
    index would leave out.
    """
    if index is not None and len(roots) != 1:
        raise ValueError("a scan index filters the scan of one root")
    scans = [scan_sessions(root, user, index) for root in roots]
    if len(scans) == 1:
        return scans[0]  # its keys are unique already
    merged = ScanResult()
    chosen: dict[str, int] = {}
    for scan in scans:
        merged.issues.update(scan.issues)
        for position, key in enumerate(scan.keys):
            at = chosen.get(key)
            if at is None:
                chosen[key] = len(merged.keys)
                merged._append(scan, position)
                continue
            merged.issues["duplicate_in_other_root"] += 1
            if scan.sizes[position] > merged.sizes[at]:
                merged._replace(at, scan, position)
    return merged


class _Kind(Enum):
    DIRECTORY = "directory"
    FILE = "file"  # anything that is neither a directory nor a symlink
    SYMLINK = "symlink"  # a symlink to anything but a directory, or dangling
    COUNTED = "counted"  # counted as an issue already


@dataclass
class _Folder:
    """A folder being walked: its open descriptor, what its files share, and its entries still to walk
    (folders and odd entries: its session files are added on entering it)."""

    fd: int
    location: str
    origin: _Origin
    entries: Iterator[os.DirEntry[str]]


def _enter(
    user: str, fd: int, location: str, parts: list[str], escaped: bool, root: str, result: ScanResult
) -> _Folder:
    """The folder open as ``fd``, listed, its session files added (``fd`` is closed if interrupted)."""
    try:
        key_prefix = "/".join([user, *parts]) + "/"
        origin = _Origin(user, tuple(parts), escaped, key_prefix, _join(location, ""), root)
        rest = _add_session_files(origin, _entries(fd, result), result)
        return _Folder(fd, location, origin, iter(rest))
    except BaseException:
        os.close(fd)
        raise


def _join(location: str, name: str) -> str:
    """``os.path.join`` for a name from a listing (never absolute), without building a ``Path``."""
    return location + name if location.endswith("/") else f"{location}/{name}"


def compiled_listing() -> ModuleType | None:
    """The compiled listing's module, or ``None`` when user folders are to be walked in Python."""
    return native.compiled(ENV_LISTING, "walk_user_folders")


@dataclass(frozen=True, slots=True)
class _User:
    """A user folder found, open as ``fd``, not walked yet."""

    user: str  # its key component
    fd: int
    location: str
    escaped: bool


class _UserFolders:
    """The user folders of one scan: walked in Python as each is found, or by the compiled listing,
    :data:`USERS_PER_CALL` at a time, its results added in the order the folders were found (the
    compiled listing leaves out the files ``index`` shows plainly unchanged)."""

    def __init__(
        self, root: str, result: ScanResult, listing: ModuleType | None, index: ScanIndex | None = None
    ) -> None:
        self.root, self.result, self.listing = root, result, listing
        self.index = index if listing is not None else None
        self.pending: list[_User] = []

    def walk(self, user: str, fd: int, location: str, escaped: bool) -> None:
        """Walk the user folder open as ``fd`` (closed here, now or at the next :meth:`flush`)."""
        if self.listing is None:
            _walk(_enter(user, fd, location, [], escaped, self.root, self.result), self.result)
            return
        self.pending.append(_User(user, fd, location, escaped))
        if len(self.pending) >= USERS_PER_CALL:
            self.flush()

    def flush(self) -> None:
        """Walk the pending user folders with the compiled listing and add what it found."""
        if not self.pending or self.listing is None:
            return
        users, self.pending = self.pending, []
        try:
            walks = self._walks(users)
        finally:
            for user in users:
                os.close(user.fd)
        for user, (groups, issues) in zip(users, walks, strict=True):
            self.result.issues.update(issues)
            for parts, names, sizes, mtimes in groups:
                _append_named(self._origin(user, parts), _decoded(names).split("/"), sizes, mtimes, self.result)

    def _walks(
        self, users: list[_User]
    ) -> list[tuple[list[tuple[bytes, bytes, list[int], list[int]]], dict[str, int]]]:
        """The compiled listing's walks of ``users``; with an index, what it left out is counted."""
        assert self.listing is not None
        fds = [user.fd for user in users]
        if self.index is None:
            walks: list[tuple[list[tuple[bytes, bytes, list[int], list[int]]], dict[str, int]]]
            walks = self.listing.walk_user_folders(fds, MAX_FOLDER_DEPTH)
            return walks
        filtered = self.index.walk_user_folders(fds, MAX_FOLDER_DEPTH, [user.user.encode() for user in users])
        for user, (_, _, unchanged, odd_name) in zip(users, filtered, strict=True):
            self.result.unchanged += unchanged
            # An escaped name's key is key_part's to make (and may collide): the index cannot judge it.
            self.result.index_unusable |= odd_name or user.escaped
        return [(groups, issues) for groups, issues, _, _ in filtered]

    def close(self) -> None:
        """Close the descriptors of the user folders not walked (an interrupted scan)."""
        for user in self.pending:
            os.close(user.fd)
        self.pending = []

    def _origin(self, user: _User, parts: bytes) -> _Origin:
        """What ``_enter`` makes for the folder at ``parts`` (raw names joined by ``/``) below ``user``'s."""
        names = _decoded(parts).split("/") if parts else []
        key_parts = [key_part(name) for name in names]
        escaped = user.escaped or key_parts != names
        key_prefix = "/".join([user.user, *key_parts]) + "/"
        location_prefix = _join(user.location, "") + "".join(name + "/" for name in names)
        return _Origin(user.user, tuple(key_parts), escaped, key_prefix, location_prefix, self.root)


def _decoded(names: bytes) -> str:
    """Raw names from a listing as ``os.scandir`` gives them (``os.fsdecode``: undecodable bytes as surrogates)."""
    return names.decode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def _walk_users(root_fd: int, location: str, users: _UserFolders) -> None:
    result = users.result
    for entry in _entries(root_fd, result):
        kind = _kind(entry, result)
        if kind is _Kind.DIRECTORY:
            fd = _open_folder(root_fd, entry.name, result)
            if fd is not None:
                user = key_part(entry.name)
                users.walk(user, fd, _join(location, entry.name), user != entry.name)
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


def _walk(user_folder: _Folder, result: ScanResult) -> None:
    """Add the session files of one user's folder (its descriptor is closed here), depth first.

    At most :data:`MAX_FOLDER_DEPTH` + 1 folders are open at once, one per level.

    Without recursion: the depth of the tree is the volume's to choose.
    """
    user, root = user_folder.origin.user, user_folder.origin.root
    stack = [user_folder]
    try:
        while stack:
            folder = stack[-1]
            entry = next(folder.entries, None)
            if entry is None:
                os.close(stack.pop().fd)
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
                    escaped = folder.origin.escaped or part != entry.name
                    stack.append(_enter(user, fd, location, [*folder.origin.parts, part], escaped, root, result))
            elif kind is not _Kind.COUNTED:
                _add_odd_file(entry, kind is _Kind.SYMLINK, folder.origin, result)
    finally:
        for folder in stack:
            os.close(folder.fd)


def _plain_file(entry: os.DirEntry[str]) -> bool:
    """Whether the listing says ``entry`` is a regular file (a symlink is not); ``False`` when in doubt."""
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False  # the general path looks again and counts why


def _add_session_files(origin: _Origin, entries: list[os.DirEntry[str]], result: ScanResult) -> list[os.DirEntry[str]]:
    """Add the folder's regular ``.jsonl`` files, all at once; returns its other entries, to walk.

    Most entries are session files, and a re-run with nothing to do is mostly this: the listing's
    d_type tells a regular file without a system call (never a symlink), one ``lstat`` each gives
    size and mtime, and each step is one comprehension over the folder rather than a call per file.
    """
    try:
        plain = [
            entry for entry in entries if entry.name.endswith(SESSION_SUFFIX) and entry.is_file(follow_symlinks=False)
        ]
    except OSError:  # the listing had no type and a look failed: sort them one by one
        plain = [entry for entry in entries if entry.name.endswith(SESSION_SUFFIX) and _plain_file(entry)]
    if not plain:
        return entries
    rest: list[os.DirEntry[str]] = []
    if len(plain) < len(entries):
        chosen = set(plain)
        rest = [entry for entry in entries if entry not in chosen]
    try:
        infos = [entry.stat(follow_symlinks=False) for entry in plain]
    except OSError:  # one vanished since the listing (a stat that worked is cached: not done twice)
        plain, infos = _stat_each(plain, result)
    _append_files(origin, plain, infos, result)
    return rest


def _stat_each(
    entries: list[os.DirEntry[str]], result: ScanResult
) -> tuple[list[os.DirEntry[str]], list[os.stat_result]]:
    """The entries that could be looked at, with their ``lstat``; the others counted."""
    kept: list[os.DirEntry[str]] = []
    infos: list[os.stat_result] = []
    for entry in entries:
        try:
            infos.append(entry.stat(follow_symlinks=False))
        except OSError as error:
            result.issues[_os_reason(error)] += 1
            continue
        kept.append(entry)
    return kept, infos


def _append_files(
    origin: _Origin, entries: list[os.DirEntry[str]], infos: list[os.stat_result], result: ScanResult
) -> None:
    """Add files of the folder of ``origin``, by entry and ``lstat``; one no longer a regular file is counted."""
    if not all([stat.S_ISREG(info.st_mode) for info in infos]):
        regular = [index for index, info in enumerate(infos) if stat.S_ISREG(info.st_mode)]
        result.issues["not_a_file"] += len(infos) - len(regular)
        entries, infos = [entries[index] for index in regular], [infos[index] for index in regular]
    sizes, mtimes = [info.st_size for info in infos], [info.st_mtime_ns for info in infos]
    _append_named(origin, [entry.name for entry in entries], sizes, mtimes, result)


def _append_named(origin: _Origin, names: list[str], sizes: list[int], mtimes: list[int], result: ScanResult) -> None:
    """Add regular files of the folder of ``origin`` by name, size and mtime (ns)."""
    start = len(result.keys)
    if "".join(names).isascii():  # the common case: every name is its own key component
        parts, renamed = names, []
    else:
        parts = [key_part(name) for name in names]
        renamed = [start + index for index, (part, name) in enumerate(zip(parts, names, strict=True)) if part != name]
    prefix = origin.key_prefix
    result.keys += [prefix + part for part in parts]
    result.sizes += sizes
    result.mtimes += mtimes
    result.names += names
    result.origins += [origin] * len(names)
    result.escaped += range(start, start + len(names)) if origin.escaped else renamed


def _add_odd_file(entry: os.DirEntry[str], is_symlink: bool, origin: _Origin, result: ScanResult) -> None:
    """An entry the bulk pass left: not ``.jsonl``, a symlink, not a regular file, or not known to be one."""
    if not entry.name.endswith(SESSION_SUFFIX):
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
    _append_files(origin, [entry], [info], result)


def _clamp_mtimes(result: ScanResult) -> None:
    """Bring mtimes the store cannot hold (a clock or a tool that set a file's time past 2262) to
    its nearest bound, counted ``mtime_out_of_range``: the file is read as any other, but only a
    change of its size shows it changed while its mtime stays out of range."""
    mtimes = result.mtimes
    if not mtimes or (min(mtimes) >= MTIME_NS_MIN and max(mtimes) <= MTIME_NS_MAX):
        return  # two passes in C over the column; the loop below is for the rare volume that needs it
    for index, mtime in enumerate(mtimes):
        clamped = clamp_mtime_ns(mtime)
        if clamped != mtime:
            mtimes[index] = clamped
            result.issues["mtime_out_of_range"] += 1


def _drop_name_collisions(result: ScanResult) -> None:
    """Skip each file whose escaped key another file has too (``name_collision``).

    A decodable name keeps its key; which escaped file would win must not depend on listing order.
    """
    if not result.escaped:
        return
    claims = Counter(result.keys)
    dropped = {index for index in result.escaped if claims[result.keys[index]] > 1}
    if dropped:
        result.issues["name_collision"] += len(dropped)
        result._drop(dropped)
        result.escaped = []  # the indexes no longer hold


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


@dataclass
class Plan:
    """What a run does with the files of a scan."""

    unchanged: int  # how many files are unchanged (never made into a SessionFile)
    #: Every other file with its decision, by key.
    decided: list[tuple[SessionFile, Decision]]


def new_files(scan: ScanResult) -> Iterator[SessionFile]:
    """Every file of ``scan`` in key order (:func:`plan`'s order), each made as it is reached.

    For a processor's first run, where :func:`plan` would decide every file ``PROCESS``: the runner
    hands files to its workers as they are made, instead of making them all first (~0.1 s before
    the first file is read at 25,000 files).
    """
    keys = scan.keys
    for index in sorted(range(len(keys)), key=keys.__getitem__):
        yield scan.file(index)


def plan(scan: ScanResult, unsettled: Mapping[str, StateRow | None], version: str) -> Plan:
    """Each file's decision: a file not in ``unsettled`` is unchanged, the others are decided by :func:`decide`.

    ``unsettled`` has the state (``None`` if there is none) of every file that may be anything but
    unchanged, as :func:`~sessionpipe_runner.store.compare_scan` finds them. Only those files
    get a :class:`SessionFile`.
    """
    if not unsettled:
        return Plan(len(scan), [])
    keys = scan.keys
    looked_at = sorted((index for index, key in enumerate(keys) if key in unsettled), key=keys.__getitem__)
    result = Plan(len(scan) - len(looked_at), [])
    for index in looked_at:
        file = scan.file(index)
        decision = decide(file, unsettled[file.key], version)
        if decision is Decision.UNCHANGED:
            result.unchanged += 1
        else:
            result.decided.append((file, decision))
    return result
