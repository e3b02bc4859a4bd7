"""Reports: what a processor contributes to ``sessionpipe report <processor> …``.

A processor returns a :class:`Report` from :meth:`Processor.report
<sessionpipe_runner.processors.base.Processor.report>`; the built-in processors use that hook as a
plugin does. The command adds ``--db`` and ``--json`` to every report, opens the database
read-only (or its snapshot while a run writes it), and prints the report's JSON data or its text.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

if TYPE_CHECKING:
    import duckdb


class ReportError(Exception):
    """The report cannot be made (no data yet, a bad date…); explained to the user in one line."""


class NoData(ReportError):
    """The processor whose report was asked for has not run on this database yet."""


class Report:
    """One processor's report; subclasses set :attr:`help` and implement :meth:`build`."""

    #: One line for ``sessionpipe report --help``.
    help: ClassVar[str] = ""
    #: Example command lines for ``sessionpipe report <processor> --help``, one a line; default: one
    #: with ``--json``.
    examples: ClassVar[str] = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the report's own flags (``--db`` and ``--json`` are added for every report)."""

    def build(self, con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
        """(JSON-able data, plain-text rendering) of the report; raise :class:`ReportError` for bad requests."""
        raise NotImplementedError

    def data(self, con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> dict[str, Any]:
        """The JSON-able data alone (``--json`` and ``sessionpipe serve``'s API); a report whose text
        is costly to render overrides this to skip it."""
        return self.build(con, args)[0]

    def notes(self, data: dict[str, Any]) -> list[str]:
        """Lines for stderr beside the text table (a caveat about the numbers); the JSON data says them itself."""
        return []


def require_table(con: duckdb.DuckDBPyConnection, table: str, processor: str) -> None:
    """Raise :class:`ReportError` unless ``table`` exists: the processor has not run on this database."""
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()
    if not found or not found[0]:
        raise NoData(f"no {processor} data in this database yet: run 'sessionpipe run --processor {processor}'")


def report_json(data: dict[str, Any]) -> str:
    """A report's data as ``--json`` prints it and the dashboard's API returns it (one spelling):
    indented by two, text as UTF-8, anything else JSON has no type for as its ``str()``.

    orjson writes it; Python's own encoder, pure Python when it indents, took seconds on a report of
    thousands of sessions. Text orjson refuses (a lone surrogate) falls back to that encoder, which
    escapes it.
    """
    try:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_PASSTHROUGH_DATETIME, default=str).decode()
    except orjson.JSONEncodeError:
        return json.dumps(data, indent=2, default=str)


def iso_date(text: str) -> date:
    """A ``YYYY-MM-DD`` or ``YYYYMMDD`` (ccusage's spelling) flag value, as an argparse ``type``."""
    try:
        if len(text) == 8 and text.isdigit():
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        if len(text) == 10:
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD or YYYYMMDD)")
