"""Reading a session file that may still be growing."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import xxhash


@dataclass(frozen=True)
class Snapshot:
    """A file's complete lines as read now, and the file's size and mtime at that moment."""

    data: bytes  # up to and including the last complete line (empty once :meth:`without_data`)
    length: int  # bytes of complete lines: len(data) as read
    size: int
    mtime_ns: int
    partial_tail: bool  # the file ends in a line still being written, left for a later run
    #: A 128-bit xxh3 digest of the complete lines: enough to tell a touched file from a changed
    #: one (change detection, not security; ~20x faster than blake2b).
    content_hash: str

    def without_data(self) -> Snapshot:
        """The same snapshot without the bytes, once they are processed (what a worker sends back)."""
        return replace(self, data=b"")


def complete_prefix(raw: bytes) -> tuple[bytes, bool]:
    """The part of ``raw`` made of complete lines, and whether an incomplete tail was left out.

    A last line without a newline counts as complete only when it is a whole JSON object (some
    writers omit the final newline); anything else is a line still being written.
    """
    cut = raw.rfind(b"\n") + 1
    tail = raw[cut:]
    if not tail.strip():
        return raw, False
    try:
        complete = isinstance(orjson.loads(tail), dict)
    except orjson.JSONDecodeError:
        complete = False
    return (raw, False) if complete else (raw[:cut], True)


def read_snapshot(path: str | Path) -> Snapshot:
    """Read a file once; size and mtime come from the open descriptor, so they match the bytes.

    Raises ``FileNotFoundError`` if it vanished and ``OSError`` if it cannot be read.
    """
    with open(path, "rb") as handle:  # noqa: PTH123 (a str from the scan, no Path needed)
        info = os.fstat(handle.fileno())
        raw = handle.read()
    data, partial = complete_prefix(raw)
    return Snapshot(
        data=data,
        length=len(data),
        size=len(raw),
        mtime_ns=info.st_mtime_ns,
        partial_tail=partial,
        content_hash=xxhash.xxh3_128_hexdigest(data),
    )
