"""sessionpipe's compiled usage-line parser (see native/README.md)."""

from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any

def usage_rows(
    data: bytes,
    first_line: int,
    max_line_bytes: int,
    session: tuple[str, str, str, str],
    pricing_version: str,
    price_of: Callable[[str], tuple[float | None, ...] | None],
    parse_timestamp: Callable[[str], datetime | None],
    reference: Callable[[int, bytes], tuple[tuple[Any, ...], bool] | str | None],
    datetime: type[datetime],
    utc: tzinfo,
) -> tuple[list[tuple[Any, ...]], dict[str, int]]: ...
def read_below(root: str, parts: list[str], limit: int) -> tuple[int, int, int, int, bytes | None, int]: ...
def walk_user_folders(
    fds: list[int], max_depth: int
) -> list[tuple[list[tuple[bytes, bytes, list[int], list[int]]], dict[str, int]]]: ...

class ScanIndex:
    """A scan index's rows (``native/src/scanindex.rs``; ``sessionpipe_runner.scanindex``)."""

    def __init__(self, data: bytes, offset: int, rows: int, checksum: int) -> None: ...
    @staticmethod
    def checksum(body: bytes) -> int: ...
    def __len__(self) -> int: ...
    def patched(self, keys: list[str], lines: bytes) -> tuple[bytes, int]: ...
    def walk_user_folders(
        self, fds: list[int], max_depth: int, user_keys: list[bytes]
    ) -> list[tuple[list[tuple[bytes, bytes, list[int], list[int]]], dict[str, int], int, bool]]: ...
    def vanished(self, user: bytes | None = None) -> list[str]: ...
    def reappeared(self) -> list[str]: ...

class UsageColumns:
    """One file's ``usage_rows`` rows as columns (see ``processors/usage/columns.py``)."""

    def __len__(self) -> int: ...

def usage_columns(
    data: bytes,
    first_line: int,
    max_line_bytes: int,
    session: tuple[str, str, str, str],
    pricing_version: str,
    price_of: Callable[[str], tuple[float | None, ...] | None],
    parse_timestamp: Callable[[str], int | None],
    reference: Callable[[int, bytes], tuple[tuple[Any, ...], bool] | str | None],
) -> tuple[UsageColumns, dict[str, int]]: ...
def arrow_buffers(
    parts: list[UsageColumns],
) -> tuple[int, list[tuple[bytes | None, bytes | None, bytes]]]: ...
def usage_files(
    files: list[tuple[str, list[str]]],
    limit: int,
    max_line_bytes: int,
    sessions: list[tuple[str, str, str, str]],
    pricing_version: str,
    price_of: Callable[[str], tuple[float | None, ...] | None],
    parse_timestamp: Callable[[str], int | None],
    reference: Callable[[int, int, bytes], tuple[tuple[Any, ...], bool] | str | None],
) -> list[tuple[int, int, int, int, int, int, str | None, UsageColumns | None, dict[str, int] | None]]: ...
