"""``sessionpipe report <processor> …``: the report each installed processor contributes.

The reports come from the processors' :meth:`~sessionpipe_runner.processors.base.Processor.report`
hook, built-ins and plugins alike, and are looked up only when this command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sessionpipe_contract import EXIT_OK
from sessionpipe_runner.commands.common import CommandParser, HelpFormatter, add_db_flag, open_for_reading
from sessionpipe_runner.processors import registry
from sessionpipe_runner.reports import Report, ReportError, report_json
from sessionpipe_runner.settings import UsageError, database_path

NAME = "report"
HELP = "reports of a processor's results"
DESCRIPTION = (
    "Print the report a processor contributes (REPORT is the processor's name; --processor NAME is "
    "accepted in its place, as in run and reset). Reads the snapshot while a run holds the database."
)
EXAMPLES = """examples:
  sessionpipe report usage --by month
  sessionpipe report --processor usage --by session --json
  sessionpipe report verification --db team.duckdb"""


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
    kinds = p.add_subparsers(
        dest="report", required=True, metavar="REPORT", help="the processor whose report to print (or --processor NAME)"
    )
    for name, report in installed_reports():
        examples = report.examples or f"sessionpipe report {name} --json"
        kind = kinds.add_parser(
            name,
            help=report.help,
            description=f"{name}: {report.help}." if report.help else f"The report of the {name} processor.",
            epilog="examples:\n" + "".join(f"  {line}\n" for line in examples.strip().splitlines()),
            formatter_class=HelpFormatter,
        )
        report.add_arguments(kind)
        add_db_flag(kind)
        kind.add_argument("--json", action="store_true", help="print JSON")
        kind.set_defaults(report_of=report)


def processor_as_report(argv: Sequence[str]) -> list[str]:
    """``report --processor NAME …`` (or ``--processor=NAME``) read as ``report NAME …``.

    ``run`` and ``reset`` name the processor with ``--processor``; ``report`` takes it as its
    first word, and both spellings work. Only the arguments after ``report`` are looked at.
    """
    args = list(argv)
    if not args or args[0] != NAME:
        return args
    rest = args[1:]
    for index, arg in enumerate(rest):
        if arg == "--":
            break
        if arg == "--processor" and index + 1 < len(rest):
            name = rest[index + 1]
            return [NAME, name, *rest[:index], *rest[index + 2 :]]
        if arg.startswith("--processor="):
            return [NAME, arg.removeprefix("--processor="), *rest[:index], *rest[index + 1 :]]
    return args


def handle(args: argparse.Namespace) -> int:
    report: Report = args.report_of
    database = database_path(args.db, os.environ, writing=False)
    con = open_for_reading(database)
    with con:
        try:
            data, text = (report.data(con, args), "") if args.json else report.build(con, args)
        except ReportError as error:
            raise UsageError(str(error)) from None
    print(report_json(data) if args.json else text)
    if not args.json:
        for note in report.notes(data):
            print(note, file=sys.stderr)
    return EXIT_OK
