"""Reading a session file that may still be growing, from a sessions volume that may be hostile.

Two promises hold whatever is on the volume:

- Nothing outside the sessions root is read. A file is opened by walking down from the root one
  component at a time, each opened relative to its parent's descriptor with ``O_NOFOLLOW``, so a
  symlink anywhere below the root (put there before the scan, or swapped in after it) is refused
  rather than followed, and a path longer than ``PATH_MAX`` is no obstacle. The root's own path may
  pass through symlinks (a volume mount, ``--sessions`` given through a link). The file is opened
  non-blocking and must be a regular file, so a FIFO swapped in cannot hang the run. Left open:
  someone able to create device nodes on the volume could have one opened (a pod cannot), and a
  hard link is a file like any other (a volume on its own file system cannot link to files outside
  it; elsewhere Linux's ``protected_hardlinks`` stops links to files their maker cannot read).
- A line longer than :data:`MAX_LINE_BYTES` is never held whole: it is hashed as it streams past
  and handed to the processor as an empty line, so line numbers after it still hold, and is
  counted (``line_too_long``).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType, ModuleType
from typing import NamedTuple

import xxhash

from sessionpipe_runner import native

#: The longest line a processor is given. Longer lines are skipped and counted ``line_too_long``;
#: while one streams past, the reader holds at most this much of it (plus one read). Claude Code
#: writes tool results and images into single lines of a few MB; a 32 MB PDF sent to the API,
#: base64 in a transcript line, is about 43 MB. 64 MiB keeps all of that and the runner within the
#: memory the README budgets.
MAX_LINE_BYTES = 64 * 1024 * 1024
#: How much a file longer than :data:`MAX_LINE_BYTES` is read at a time.
READ_CHUNK_BYTES = 1024 * 1024

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

#: ``SESSIONPIPE_FILE_READING=python`` opens and reads files in Python (the reference) even where
#: the compiled module (``sessionpipe-native``'s ``read_below``) is installed.
ENV_FILE_READING = "SESSIONPIPE_FILE_READING"
PYTHON_FILE_READING = native.PYTHON
#: What ``read_below`` found (native/src/reading.rs), and what ``usage_files`` leaves to
#: :func:`read_snapshot`: a last line with no newline that only :func:`complete_prefix` can judge.
_READ, _TOO_LONG, _OS_ERROR, _SYMLINK, _NOT_A_FILE, _UNDECIDED_TAIL = range(6)


class SymlinkRefused(OSError):
    """A component of a session file's path below the sessions root is a symlink: not followed."""


class NotARegularFile(OSError):
    """The session file's path names a FIFO, a device or a directory: not read."""


class Committed(NamedTuple):
    """What the store recorded of a file's complete lines when a run last committed its rows."""

    content_hash: str | None  # of the complete lines then (:attr:`Snapshot.content_hash`)
    length: int | None = None  # how many bytes they were (``None``: not recorded, read it whole)
    lines: int | None = None  # how many lines they were


@dataclass(frozen=True)
class Snapshot:
    """A file's complete lines as read now, and the file's size and mtime at that moment."""

    data: bytes  # up to and including the last complete line (empty once :meth:`without_data`)
    length: int  # bytes of complete lines: len(data) as read
    size: int
    mtime_ns: int
    partial_tail: bool  # the file ends in a line still being written, left for a later run
    #: A 128-bit xxh3 digest of the complete lines as they are in the file (a line too long to be
    #: kept counts with all its bytes): enough to tell a touched file from a changed one (change
    #: detection, not security; ~20x faster than blake2b).
    content_hash: str
    long_lines: int = 0  # lines over MAX_LINE_BYTES, given to the processor as empty lines
    lines: int = 0  # complete lines in ``data`` (a last one without its newline included)
    #: Bytes at the start of ``data`` that are the lines a run already committed, unchanged (their
    #: hash is the one recorded): only what follows is new. 0 when the file is read as new.
    appended_from: int = 0
    first_line: int = 1  # the number of the first line of :attr:`appended` in the file

    @property
    def appended(self) -> bytes:
        """The complete lines after the committed prefix (all of them when there is none)."""
        return self.data[self.appended_from :] if self.appended_from else self.data

    def without_data(self) -> Snapshot:
        """The same snapshot without the bytes, once they are processed (what a worker sends back)."""
        # Not dataclasses.replace: a worker calls this once per file, and replace costs 5x more.
        return Snapshot(
            b"",
            self.length,
            self.size,
            self.mtime_ns,
            self.partial_tail,
            self.content_hash,
            self.long_lines,
            self.lines,
            self.appended_from,
            self.first_line,
        )


def _is_complete_line(tail: bytes) -> bool:
    """Whether a last line without a newline is a whole JSON object (some writers omit the newline)."""
    import orjson  # here: few files end so, and a run that meets none need not import it

    try:
        return isinstance(orjson.loads(tail), dict)
    except orjson.JSONDecodeError:
        return False


def complete_prefix(raw: bytes) -> tuple[bytes, bool]:
    """The part of ``raw`` made of complete lines, and whether an incomplete tail was left out.

    A last line without a newline counts as complete only when it is a whole JSON object; anything
    else is a line still being written.
    """
    cut = raw.rfind(b"\n") + 1
    tail = raw[cut:]
    if not tail.strip() or _is_complete_line(tail):
        return raw, False
    return raw[:cut], True


#: Path components that do not name an entry of their folder.
_NOT_PLAIN = frozenset({"", ".", ".."})


def _path_below(root: str, location: str) -> list[str]:
    """The components of ``location`` below ``root`` (``location`` is ``os.path.join(root, …)``)."""
    rest = location[len(root) :]
    if not location.startswith(root) or not (root.endswith("/") or rest.startswith("/")):
        raise OSError(errno.EINVAL, f"not below the sessions root {root!r}", location)
    parts = rest.lstrip("/").split("/")
    if not _NOT_PLAIN.isdisjoint(parts):
        raise OSError(errno.EINVAL, "not a plain path below the sessions root", location)
    return parts


def _refuse_symlink(error: OSError, name: str, parent: int) -> OSError:
    """:class:`SymlinkRefused` if ``name`` in ``parent`` is a symlink, else ``error`` itself."""
    try:
        if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            return SymlinkRefused(errno.ELOOP, "a symlink below the sessions root is not followed", name)
    except OSError:
        pass
    return error


def _open_walking(root: str, parts: list[str]) -> int:
    """Open ``parts`` below ``root`` one component at a time, each relative to its folder's
    descriptor with ``O_NOFOLLOW``: no symlink is followed, and no path is too long."""
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the root's path is trusted
    try:
        for name in parts[:-1]:
            try:
                child = os.open(name, _DIRECTORY, dir_fd=directory)
            except OSError as error:  # a symlink opened with O_DIRECTORY | O_NOFOLLOW fails with ENOTDIR
                raise _refuse_symlink(error, name, directory) from None
            os.close(directory)
            directory = child
        try:
            return os.open(parts[-1], _FILE, dir_fd=directory)
        except OSError as error:
            raise _refuse_symlink(error, parts[-1], directory) from None
    finally:
        os.close(directory)


def root_and_parts(location: str, root: str) -> tuple[str, list[str]]:
    """The folder to start from and the components to walk down from it (with no ``root``, the
    file's own folder and its name)."""
    if not root:
        folder, slash, name = location.rpartition("/")
        return folder or slash or ".", [name]
    return root, _path_below(root, location)


def open_session_file(location: str, root: str = "") -> tuple[int, os.stat_result]:
    """A read-only descriptor of the regular file at ``location``, and its status, reached from
    ``root`` without following any symlink below it (with no ``root``, only the file itself is
    not followed).

    Raises ``FileNotFoundError`` if it vanished, :class:`SymlinkRefused`, :class:`NotARegularFile`,
    or another ``OSError`` if it cannot be opened.
    """
    root, parts = root_and_parts(location, root)
    fd = _open_walking(root, parts)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotARegularFile(errno.EINVAL, "not a regular file", location)
    os.set_blocking(fd, True)  # O_NONBLOCK was for the open; reads of a regular file block anyway
    return fd, info


class _BoundedLines:
    """Complete lines fed in chunks, held only up to :data:`MAX_LINE_BYTES` each, and their hash.

    ``kept`` holds the complete lines so far (a line over the limit as an empty line) and, after
    ``line_start``, the line still open. A line that grows past the limit is hashed, dropped, and
    the rest of it, up to its newline, is hashed as it comes and never kept.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.hasher = xxhash.xxh3_128()
        self.kept = bytearray()
        self.line_start = 0
        self.skipping = False
        self.long_lines = 0

    def _hash_kept(self, start: int, end: int) -> None:
        with memoryview(self.kept) as view, view[start:end] as part:
            self.hasher.update(part)

    def feed(self, chunk: bytes) -> None:
        if self.skipping:
            end = chunk.find(b"\n")
            if end < 0:
                self.hasher.update(chunk)
                return
            self.hasher.update(chunk[: end + 1])
            self.kept += b"\n"  # the long line's place, so the lines after it keep their numbers
            self.line_start = len(self.kept)
            self.skipping = False
            chunk = chunk[end + 1 :]
        appended_at = len(self.kept)
        self.kept += chunk
        first = self.kept.find(b"\n", appended_at)
        if first >= 0 and first - self.line_start > self.limit:  # this chunk ends a line already too long
            self._hash_kept(self.line_start, first + 1)
            self.kept[self.line_start : first + 1] = b"\n"
            self.line_start += 1
            self.long_lines += 1
        last = self.kept.rfind(b"\n", self.line_start)
        if last >= 0:
            self._hash_kept(self.line_start, last + 1)
            self.line_start = last + 1
        if len(self.kept) - self.line_start > self.limit:
            self._hash_kept(self.line_start, len(self.kept))
            del self.kept[self.line_start :]
            self.skipping = True
            self.long_lines += 1

    def finish(self) -> tuple[bytes, bool, str]:
        """(complete lines, whether an incomplete tail was left out, the hash of the complete lines)."""
        partial = False
        if self.skipping:
            # A last line already too long is complete as far as anyone can use it: it is counted,
            # not left for a later run it could never pass.
            self.kept += b"\n"
        elif self.line_start < len(self.kept):
            tail = bytes(self.kept[self.line_start :])
            if not tail.strip() or _is_complete_line(tail):
                self.hasher.update(tail)
            else:
                del self.kept[self.line_start :]
                partial = True
        return bytes(self.kept), partial, self.hasher.hexdigest()


def _read(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from ``fd``'s position (fewer at the end of the file)."""
    data = os.read(fd, size)
    if len(data) in (0, size):
        return data
    pieces = [data]
    got = len(data)
    while got < size:
        piece = os.read(fd, size - got)
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


def _line_count(data: bytes) -> int:
    """Lines in complete lines' bytes: one per newline, and a last line without one."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _after_committed(data: bytes, committed: Committed | None) -> tuple[int, str]:
    """(bytes of ``data`` that are the committed lines, unchanged, or 0; the hash of all of ``data``).

    The prefix counts only when it still hashes as recorded and ends a line: a committed last line
    without its newline may have been continued since. Hashing the prefix on the way to the whole
    hash costs nothing extra (xxh3 streams); a rewritten prefix is caught by the hash, however
    the file's size moved.
    """
    length = committed.length if committed is not None and committed.lines is not None else None
    if committed is None or length is None or not 0 < length <= len(data) or data[length - 1] != 0x0A:  # b"\n"
        return 0, xxhash.xxh3_128_hexdigest(data)
    hasher = xxhash.xxh3_128()
    with memoryview(data) as view:
        hasher.update(view[:length])
        unchanged = hasher.hexdigest() == committed.content_hash
        hasher.update(view[length:])
    return (length if unchanged else 0), hasher.hexdigest()


def compiled_reading() -> ModuleType | None:
    """The compiled module that opens and reads files, or ``None`` when Python is to do it."""
    return native.compiled(ENV_FILE_READING, "read_below")


#: The store keeps an mtime as a BIGINT of nanoseconds: 1677-09-21 to 2262-04-11.
MTIME_NS_MIN, MTIME_NS_MAX = -(2**63), 2**63 - 1


def clamp_mtime_ns(mtime_ns: int) -> int:
    """An mtime the store can hold: one beyond its range (a file's time set past 2262) becomes the
    nearest bound, as the scan records it (``scan._clamp_mtimes``, issue ``mtime_out_of_range``)."""
    return min(max(mtime_ns, MTIME_NS_MIN), MTIME_NS_MAX)


def read_snapshot(
    location: str | Path,
    root: str = "",
    line_limit: int = MAX_LINE_BYTES,
    committed: Committed | None = None,
    compiled: ModuleType | EllipsisType | None = ...,
) -> Snapshot:
    """Read a file once, as :func:`open_session_file` opens it; size and mtime come from the open
    descriptor, and only the bytes there were then are read, so they match.

    A file no longer than ``line_limit`` is read whole, in one piece (no line of it can be too
    long); a longer one in chunks no longer than a line may be, through :class:`_BoundedLines`
    (whose complete lines are copied once into ``bytes`` at the end).

    With ``committed`` (what a run committed of this file), a file that only grew since is
    recognised: :attr:`Snapshot.appended` is then just the new lines. (A file longer than
    ``line_limit`` is always given whole.)

    With the compiled module (:func:`compiled_reading`, or ``compiled`` when the caller looked it
    up once for many files), the opening and a whole read happen there, the same calls with the
    GIL released around them, not around each.
    """
    if compiled is ...:
        compiled = compiled_reading()
    if compiled is None:
        fd, info = open_session_file(str(location), root)
        size, mtime_ns = info.st_size, clamp_mtime_ns(info.st_mtime_ns)
    else:
        folder, parts = root_and_parts(str(location), root)
        found, number, size, mtime_ns, raw, newlines = compiled.read_below(folder, parts, line_limit)
        mtime_ns = clamp_mtime_ns(mtime_ns)
        if found == _READ:
            return _whole(raw, newlines, mtime_ns, committed)
        if found != _TOO_LONG:
            raise _refused(found, number, str(location))
        fd = number
        os.set_blocking(fd, True)  # as open_session_file leaves it
    try:
        if size <= line_limit:
            return _whole(_read(fd, size), None, mtime_ns, committed)
        return _bounded(fd, size, mtime_ns, line_limit)
    finally:
        os.close(fd)


def compiled_snapshot(
    found: int, number: int, size: int, mtime_ns: int, length: int, lines: int, content_hash: str, location: str
) -> Snapshot | OSError | None:
    """What :func:`read_snapshot` gives for a new file (no committed lines) that a compiled call of
    many files read whole (``usage_files``, native/src/lib.rs): its :class:`Snapshot` without the
    data, the ``OSError`` it raises, or ``None`` for a file left to it (too long to read whole, or
    a last line without a newline to judge).
    """
    if found == _READ:
        return Snapshot(b"", length, size, clamp_mtime_ns(mtime_ns), False, content_hash, lines=lines)
    if found in (_TOO_LONG, _UNDECIDED_TAIL):
        return None
    return _refused(found, number, location)


def _refused(found: int, number: int, location: str) -> OSError:
    """The exception :func:`open_session_file` raises for what ``read_below`` found."""
    if found == _SYMLINK:
        return SymlinkRefused(errno.ELOOP, "a symlink below the sessions root is not followed", location)
    if found == _NOT_A_FILE:
        return NotARegularFile(errno.EINVAL, "not a regular file", location)
    return OSError(number, os.strerror(number), location)  # FileNotFoundError for ENOENT, and so on


def _whole(raw: bytes, newlines: int | None, mtime_ns: int, committed: Committed | None) -> Snapshot:
    """The snapshot of a file read whole (``newlines``: the count of ``raw``'s, if known)."""
    data, partial = complete_prefix(raw)
    appended_from, content_hash = _after_committed(data, committed)
    first_line = 1
    if appended_from and committed is not None and committed.lines is not None:
        first_line = committed.lines + 1
        lines = committed.lines + _line_count(data[appended_from:])
    elif newlines is None:
        lines = _line_count(data)
    else:  # an incomplete tail left out holds no newline; a complete last line without one counts
        lines = newlines + (1 if data and not data.endswith(b"\n") else 0)
    return Snapshot(
        data=data,
        length=len(data),
        size=len(raw),
        mtime_ns=mtime_ns,
        partial_tail=partial,
        content_hash=content_hash,
        lines=lines,
        appended_from=appended_from,
        first_line=first_line,
    )


def _bounded(fd: int, size: int, mtime_ns: int, line_limit: int) -> Snapshot:
    """The snapshot of a file longer than ``line_limit``, read in chunks through :class:`_BoundedLines`."""
    bounded = _BoundedLines(line_limit)
    done = 0
    chunk_size = min(READ_CHUNK_BYTES, line_limit)  # so a chunk holds at most one line too long
    while done < size:
        chunk = _read(fd, min(chunk_size, size - done))
        if not chunk:
            break  # truncated while being read
        done += len(chunk)
        bounded.feed(chunk)
    data, partial, content_hash = bounded.finish()
    return Snapshot(
        data=data,
        length=len(data),
        size=done,
        mtime_ns=mtime_ns,
        partial_tail=partial,
        content_hash=content_hash,
        long_lines=bounded.long_lines,
        lines=_line_count(data),
    )
