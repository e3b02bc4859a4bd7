"""``sessionpipe report``: each processor's reports behind one command."""

from __future__ import annotations

import argparse
from datetime import date
from typing import Any

import duckdb

USAGE_GROUPINGS = ("day", "month", "session", "user", "project", "model")


class ReportError(Exception):
    """The report cannot be made (no data yet, a bad date…); explained to the user."""


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def add_arguments(parser: argparse.ArgumentParser, *, db_help: str) -> None:
    from pathlib import Path

    kinds = parser.add_subparsers(dest="report", required=True, metavar="REPORT")
    usage = kinds.add_parser("usage", help="tokens by kind and cost (ccusage-compatible JSON)")
    usage.add_argument("--by", choices=USAGE_GROUPINGS, default="day", help="grouping (default: day)")
    usage.add_argument("--since", type=_date, metavar="YYYY-MM-DD", help="first day included")
    usage.add_argument("--until", type=_date, metavar="YYYY-MM-DD", help="last day included")
    usage.add_argument("--tz", default="UTC", help="IANA time zone for days and months (default UTC)")
    usage.add_argument("--db", type=Path, help=db_help)
    usage.add_argument("--json", action="store_true", help="print JSON")
    verification = kinds.add_parser("verification", help="extracted knowledge items with their evidence")
    verification.add_argument("--db", type=Path, help=db_help)
    verification.add_argument("--json", action="store_true", help="print JSON")


def _require_table(con: duckdb.DuckDBPyConnection, table: str, processor: str) -> None:
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()
    if not found or not found[0]:
        raise ReportError(f"no {processor} data in this database yet: run 'sessionpipe run --processor {processor}'")


def build(con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """(JSON-able data, plain-text rendering) of the requested report."""
    if args.report == "usage":
        from sessionpipe_runner.processors.usage import report as usage

        _require_table(con, "usage_rows", "usage")
        if args.since and args.until and args.since > args.until:
            raise ReportError(f"--since {args.since} is after --until {args.until}")
        try:
            data = usage.usage_report(con, args.by, since=args.since, until=args.until, tz=args.tz)
        except ValueError as error:
            raise ReportError(str(error)) from None
        return data, usage.render_text(data, args.by)
    from sessionpipe_runner.processors.verification import report as verification

    _require_table(con, "knowledge_items", "verification")
    data = verification.verification_report(con)
    return data, verification.render_text(data)
