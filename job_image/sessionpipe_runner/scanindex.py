"""The scan index: the state of a processor's session files, beside the database, for the next scan.

An incremental run must stat every session file, but need not hand each one to Python and DuckDB:
after a run, ``<database>.<processor>.scanindex`` holds each state row's key, size, mtime, whether it is
settled (for the processor's version, neither failed nor quarantined) and whether it is marked
vanished. The next run's compiled walk (``ScanIndex.walk_user_folders``, without the GIL) leaves
out each file whose row is settled with the file's size and mtime, the rule
:func:`~sessionpipe_runner.scan.decide` calls unchanged; Python makes keys for, and DuckDB compares,
only the rest; the index tells the vanished and reappeared files.

The index is trusted only when it is provably the state now. Its header names the processor and
version and carries the summary (count and sum of row hashes, :func:`~.store.state.state_summary`)
of the rows it was made from, in the same statement as its body; the run recomputes the summary
and uses the index only if they are equal, so any writer of the state (``forget``, a failure
recorded, another version, a run killed half way) makes it stale. The body carries a checksum and
its row count, so a torn or garbled file is refused too. A refused index is logged and the scan
is compared as without one (``compare_scan``); the run then writes a new index.

The index is not used (the reference comparison is) with several roots (which copy of a file is
read depends on all copies), with the Python listing, when a name is not UTF-8 (its key is
:func:`~sessionpipe_runner.names.key_part`'s escape), or with ``SESSIONPIPE_SCAN_INDEX=off``.
Only the lease holder writes it, to a temporary file renamed over the old one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sessionpipe_runner.scan import ScanResult, compiled_listing, scan_roots
from sessionpipe_runner.store.state import (
    ScanComparison,
    StateSummary,
    compare_scan,
    scan_index_body,
    state_summary,
    unsettled_states,
)

if TYPE_CHECKING:
    import duckdb
    from sessionpipe_native import ScanIndex

    from sessionpipe_runner.settings import RunSettings

log = logging.getLogger(__name__)

#: ``off`` makes every run compare its whole scan with the state, as without an index.
ENV_SCAN_INDEX = "SESSIONPIPE_SCAN_INDEX"
OFF = "off"
FORMAT = 1

#: Why an index was not used, for reasons that mean it could not be trusted (logged at INFO; the
#: others, such as a first run's missing index, at DEBUG).
UNTRUSTED = frozenset({"unreadable", "malformed", "foreign", "stale"})


def index_path(database: Path, processor: str) -> Path:
    """Where the scan index of ``processor``'s state in ``database`` lies (one per processor, so
    processors run in turn keep theirs; a name that is not plain letters, digits, ``-`` and ``_``
    is written in hex)."""
    plain = processor.isascii() and processor.replace("-", "").replace("_", "").isalnum()
    part = processor if plain else "x" + processor.encode("utf-8", "surrogateescape").hex()
    return database.with_name(f"{database.name}.{part}.scanindex")


@dataclass(frozen=True)
class Trusted:
    """The index a run trusted, and what makes the next one from it: the rows the run may change
    are those of ``keys`` (the files it looks at, vanished and reappeared files), and the state's
    summary at the start less theirs is the summary of the rows it leaves as they are."""

    index: ScanIndex
    summary: StateSummary  # of the state at the start, which the index is
    keys: list[str]
    theirs: StateSummary  # of the rows of ``keys`` at the start


@dataclass
class Scanned:
    """A run's scan and its comparison with the state."""

    scan: ScanResult
    compared: ScanComparison
    #: Why no index filtered the scan ("" when one did).
    not_used: str
    trusted: Trusted | None = None


def scan_and_compare(
    con: duckdb.DuckDBPyConnection,
    database: Path,
    roots: Sequence[Path],
    user: str | None,
    processor: str,
    version: str,
) -> Scanned:
    """Scan ``roots`` and compare the scan with ``processor``'s state, through the scan index
    when it can be trusted, else as :func:`~.store.state.compare_scan` does (the same result)."""
    return PendingScan(database, roots, user, processor, background=False).compare(con, version)


class PendingScan:
    """A scan started before the database is open, compared with the state once it is.

    A run's walk (kernel work, without the GIL) and its opening of DuckDB (the engine's start,
    without the GIL too) take about as long each: started first, in a thread, the walk costs a run
    little. The thread reads the scan index from its file and filters the walk through it;
    :meth:`compare` then checks that index against the state (the summary the file says it was
    made at), and if it cannot be trusted, scans again without it: a stale index costs a second
    walk, never a wrong plan.

    So a scan may start before the lease is held (``sessionpipe run`` starts it before it loads
    the runner): it only reads, the index file is replaced whole (read old or new, never torn),
    and whatever another writer changed in between makes the index stale at :meth:`compare`, which
    runs under the lease.
    """

    def __init__(
        self,
        database: Path,
        roots: Sequence[Path],
        user: str | None,
        processor: str,
        *,
        background: bool = True,
    ) -> None:
        self.database, self.roots, self.user, self.processor = database, list(roots), user, processor
        self.index: ScanIndex | None = None
        self.indexed: StateSummary | None = None
        #: The processor version the index was made for (checked by :meth:`compare`).
        self.indexed_version = ""
        self.reason = ""
        self._scan: ScanResult | None = None
        self._error: BaseException | None = None
        self._index_read = threading.Event()  # set once the index's attributes are
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._walk, name="scan", daemon=True)
            self._thread.start()
        else:
            self._walk()

    @classmethod
    def of_run(cls, settings: RunSettings, *, background: bool = True) -> PendingScan:
        """The scan of a run with ``settings``, started (the processor need not be loaded yet)."""
        return cls(settings.database, settings.session_roots, settings.user, settings.processor, background=background)

    def _walk(self) -> None:
        try:
            found = _read_index(self.database, self.roots, self.processor)
            self.index, self.indexed, self.indexed_version, self.reason = found
            self._index_read.set()
            self._scan = scan_roots(self.roots, self.user, self.index)
        except BaseException as error:  # handed to the run's thread by compare()
            self._error = error

    def join(self) -> None:
        """Wait for the walk (a run that ends before it compares does, so no walk outlives it)."""
        if self._thread is not None:
            self._thread.join()

    def compare(self, con: duckdb.DuckDBPyConnection, version: str) -> Scanned:
        """The scan and its comparison with the state of ``version`` of the processor (waits for
        the scan). An index made for another version settles nothing of this one: the scan it
        filtered is made again without it."""
        summary = None
        walking = self._thread is not None and self._thread.is_alive()
        if walking and self._index_read.is_set() and self.index is not None:
            summary = state_summary(con, self.processor)  # while the walk goes on: it needs none of it
        self.join()
        if self._error is not None:
            raise self._error
        scan, index, processor, user = self._scan, self.index, self.processor, self.user
        assert scan is not None
        reason = self.reason
        if index is not None and self.indexed_version != version:
            index, reason = None, "other_version"  # every file is processed again: nothing to leave out
        elif index is not None and (summary if summary is not None else state_summary(con, processor)) != self.indexed:
            index, reason = None, "stale"
        if index is not None:
            if not scan.index_unusable:
                assert self.indexed is not None
                unsettled, theirs = unsettled_states(con, processor, scan.keys)
                vanished = index.vanished(None if user is None else user.encode("utf-8", "surrogateescape"))
                compared = ScanComparison(unsettled, vanished, index.reappeared())
                found = set(scan.keys)
                others = [key for key in {*vanished, *compared.reappeared} if key not in found]
                if others:  # the rows of files not found, or found unchanged, that this run marks
                    theirs = theirs.plus(state_summary(con, processor, others))
                trusted = Trusted(index, self.indexed, [*scan.keys, *others], theirs)
                return Scanned(scan, compared, "", trusted)
            reason = "odd_names"
        _note(reason)
        if self.index is not None:  # the scan was filtered through an index not to be trusted
            scan = scan_roots(self.roots, user)
        keys = (scan.keys, scan.sizes, scan.mtimes)
        return Scanned(scan, compare_scan(con, processor, version, user, keys), reason)


def _note(reason: str) -> None:
    if reason in UNTRUSTED:
        log.info("scan index not used (%s): the whole scan is compared with the state", reason)
    else:
        log.debug("scan index not used (%s)", reason)


def _read_index(
    database: Path, roots: Sequence[Path], processor: str
) -> tuple[ScanIndex | None, StateSummary | None, str, str]:
    """The scan index from its file, if it may filter this scan, with the state summary and the
    processor version it was made at (still to be checked: :meth:`PendingScan.compare`); else why
    not."""
    if os.environ.get(ENV_SCAN_INDEX) == OFF:
        return None, None, "", "disabled"
    listing = compiled_listing()
    if listing is None or not hasattr(listing, "ScanIndex"):
        return None, None, "", "python_listing"
    if len(roots) != 1:
        return None, None, "", "several_roots"
    try:
        data = index_path(database, processor).read_bytes()
    except FileNotFoundError:
        return None, None, "", "missing"
    except OSError:
        return None, None, "", "unreadable"
    offset = data.find(b"\n") + 1  # the body is handed over in place: no copy of it here
    fields = _header(data[: offset - 1] if offset else data)
    if fields is None:
        return None, None, "", "malformed"
    if fields["processor"] != processor:
        return None, None, "", "foreign"
    indexed = StateSummary(fields["rows"], fields["hashes"])
    try:
        index = listing.ScanIndex(data, offset or len(data), indexed.rows, fields["checksum"])
    except (ValueError, OverflowError):
        return None, None, "", "malformed"
    return index, indexed, fields["version"], ""


def _header(line: bytes) -> dict[str, Any] | None:
    """The header's fields, if it is one of this format with every field of its type."""
    try:
        fields = json.loads(line)
    except ValueError:
        return None
    types: dict[str, type | tuple[type, ...]] = {
        "format": int,
        "processor": str,
        "version": str,
        "rows": int,
        "hashes": (int, type(None)),
        "checksum": int,
    }
    if not isinstance(fields, dict) or fields.get("format") != FORMAT:
        return None
    if any(not isinstance(fields.get(name), kind) for name, kind in types.items()):
        return None
    return fields


def save(
    con: duckdb.DuckDBPyConnection,
    database: Path,
    processor: str,
    version: str,
    trusted: Trusted | None,
    changed: bool = True,
    write: Callable[[Callable[[], None]], None] | None = None,
) -> bool:
    """Write the scan index of ``processor``'s state now; returns whether one was written.

    ``write``, if given, is handed the writing of the file (what is read from the database is
    read before it returns): the runner writes it in a thread while it checkpoints and publishes.

    After a run that trusted an index (``trusted``): none if it ``changed`` nothing; else that
    index with the rows of the keys it may have changed read again, and the summary worked out
    from it (a row changed outside those keys makes the index stale at the next run's check, not
    wrong). Else the whole state is read. Only the lease holder calls this. The file is written
    whole to a temporary name and renamed, so a reader sees the old index or the new one; a torn
    one (a crash mid-write) fails its checksum.
    """
    listing = compiled_listing()
    if os.environ.get(ENV_SCAN_INDEX) == OFF or listing is None or not hasattr(listing, "ScanIndex"):
        return False
    if trusted is None:
        summary, body = scan_index_body(con, processor, version)
        checksum = listing.ScanIndex.checksum(body)
    elif not changed:
        return False  # the index on disk is the state still
    else:
        now, lines = scan_index_body(con, processor, version, trusted.keys) if trusted.keys else (trusted.theirs, b"")
        summary = trusted.summary.plus(trusted.theirs, sign=-1).plus(now)
        body, checksum = trusted.index.patched(trusted.keys, lines)
    path = index_path(database, processor)
    (write or _call)(lambda: _write(path, processor, version, summary, body, checksum))
    return True


def _call(work: Callable[[], None]) -> None:
    work()


def _write(path: Path, processor: str, version: str, summary: StateSummary, body: bytes, checksum: int) -> None:
    header = {
        "format": FORMAT,
        "processor": processor,
        "version": version,
        "rows": summary.rows,
        "hashes": summary.hashes,
        "checksum": checksum,
    }
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as file:
        file.write(json.dumps(header).encode() + b"\n")
        file.write(body)
    temporary.replace(path)
