"""The compiled parser's rows as columns: a batch of files' rows becomes one Arrow table.

:func:`sessionpipe_native.usage_columns` keeps a file's kept rows in columns (no Python object per
value), and :func:`sessionpipe_native.arrow_buffers` joins the files of a batch into one set of
Arrow buffers, which :func:`arrow_table` wraps without copying. The values are those of the
``usage_rows`` tuples, with ``ts`` as microseconds since the epoch, UTC (DuckDB's TIMESTAMPTZ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sessionpipe_runner.processors.base import Output
from sessionpipe_runner.processors.usage.lines import parse_timestamp

if TYPE_CHECKING:
    import pyarrow as pa

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

#: ``usage_rows``' columns in table order, each with its Arrow type's name (see :func:`_arrow_type`).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("session_file", "text"),
    ("line_no", "int64"),
    ("user_name", "text"),
    ("project", "text"),
    ("session_id", "text"),
    ("transcript_session_id", "text"),
    ("cwd", "text"),
    ("git_branch", "text"),
    ("agent_id", "text"),
    ("is_sidechain", "bool"),
    ("model", "text"),
    ("message_id", "text"),
    ("request_id", "text"),
    ("ts", "timestamp"),
    ("input_tokens", "int64"),
    ("output_tokens", "int64"),
    ("cache_write_5m_tokens", "int64"),
    ("cache_write_1h_tokens", "int64"),
    ("cache_read_tokens", "int64"),
    ("web_search_requests", "int64"),
    ("speed", "text"),
    ("cost_usd", "float64"),
    ("cost_source", "text"),
    ("pricing_version", "text"),
    ("claude_version", "text"),
)
TS_COLUMN = 13


@dataclass
class ColumnarOutput(Output):
    """An :class:`Output` whose ``usage_rows`` rows are in ``columns`` (a ``UsageColumns``), not ``rows``."""

    columns: Any = None

    def row_count(self) -> int:
        return super().row_count() + (len(self.columns) if self.columns is not None else 0)


def micros(moment: datetime) -> int:
    """An aware datetime as microseconds since the epoch (exact: integer arithmetic)."""
    return (moment - _EPOCH) // _MICROSECOND


def timestamp_micros(value: object) -> int | None:
    """:func:`.lines.parse_timestamp` in microseconds since the epoch; ``None`` if it does not parse."""
    parsed = parse_timestamp(value)
    return None if parsed is None else micros(parsed)


def with_micros(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A ``usage_rows`` tuple with its ``ts`` in microseconds (as the columns hold it)."""
    return (*row[:TS_COLUMN], micros(row[TS_COLUMN]), *row[TS_COLUMN + 1 :])


def _arrow_type(name: str) -> pa.DataType:
    import pyarrow as pa

    if name == "text":
        return pa.large_string()
    if name == "timestamp":
        return pa.timestamp("us", tz="UTC")
    if name == "bool":
        return pa.bool_()
    factory: Any = getattr(pa, name)
    return factory()


#: Rows joined into one Arrow table per insert (:func:`pieces`).
INSERT_ROWS = 32_768


def pieces(parts: Sequence[Any], rows: int = INSERT_ROWS) -> list[list[Any]]:
    """``parts`` (``UsageColumns``, in order) in consecutive groups of at least ``rows`` rows (the last
    may hold fewer)."""
    grouped: list[list[Any]] = []
    current: list[Any] = []
    held = 0
    for part in parts:
        current.append(part)
        held += len(part)
        if held >= rows:
            grouped.append(current)
            current, held = [], 0
    if current:
        grouped.append(current)
    return grouped


def arrow_table(parts: Sequence[Any]) -> pa.Table:
    """The rows of ``parts`` (``UsageColumns``, in order) as one Arrow table over the native buffers."""
    import pyarrow as pa
    import sessionpipe_native  # installed: it made the parts (whatever the reading setting says now)

    length, buffers = sessionpipe_native.arrow_buffers(list(parts))
    arrays = []
    for (_, kind), (validity, offsets, data) in zip(COLUMNS, buffers, strict=True):
        layout = [None if validity is None else pa.py_buffer(validity)]
        if offsets is not None:
            layout.append(pa.py_buffer(offsets))
        layout.append(pa.py_buffer(data))
        arrays.append(pa.Array.from_buffers(_arrow_type(kind), length, layout))
    return pa.Table.from_arrays(arrays, names=[name for name, _ in COLUMNS])
