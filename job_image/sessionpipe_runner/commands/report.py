"""``sessionpipe report <processor> …``: the report each installed processor contributes.

The reports come from the processors' :meth:`~sessionpipe_runner.processors.base.Processor.report`
hook, built-ins and plugins alike, and are looked up only when this command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sessionpipe_contract import ENV_DB, EXIT_OK
from sessionpipe_runner.commands.common import CommandParser, open_for_reading
from sessionpipe_runner.processors import registry
from sessionpipe_runner.reports import Report, ReportError
from sessionpipe_runner.settings import UsageError, database_path

NAME = "report"
HELP = "reports of a processor's results"
DB_HELP = f"DuckDB file (env {ENV_DB})"


def add_arguments(p: argparse.ArgumentParser) -> None:
    if isinstance(p, CommandParser):
        p.complete_later(add_reports)
    else:
        add_reports(p)


def installed_reports() -> list[tuple[str, Report]]:
    """(processor name, its report) of every installed processor that has one, by name.

    A processor that fails to load contributes no report: ``sessionpipe processors`` explains it.
    """
    found = []
    for name in registry.available():
        try:
            report = registry.load(name).report()
        except registry.ProcessorLoadError:
            continue
        if report is not None:
            found.append((name, report))
    return found


def add_reports(p: argparse.ArgumentParser) -> None:
    """One subcommand per report, each with the report's own flags, then ``--db`` and ``--json``."""
    kinds = p.add_subparsers(dest="report", required=True, metavar="REPORT")
    for name, report in installed_reports():
        kind = kinds.add_parser(name, help=report.help)
        report.add_arguments(kind)
        kind.add_argument("--db", type=Path, help=DB_HELP)
        kind.add_argument("--json", action="store_true", help="print JSON")
        kind.set_defaults(report_of=report)


def handle(args: argparse.Namespace) -> int:
    report: Report = args.report_of
    database = database_path(args.db, os.environ, writing=False)
    con = open_for_reading(database)
    with con:
        try:
            data, text = report.build(con, args)
        except ReportError as error:
            raise UsageError(str(error)) from None
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    if not args.json:
        for note in report.notes(data):
            print(note, file=sys.stderr)
    return EXIT_OK
