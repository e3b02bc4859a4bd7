"""The ``sessionpipe`` command line: the commands (:mod:`.commands`) assembled into one parser.

Every setting resolves the same way (:mod:`.settings`): a flag beats its ``SESSIONPIPE_*``
environment variable, which beats the default. User mistakes end with one line on stderr and exit
code 2, a database that cannot be read or written with one line and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata

import duckdb

from sessionpipe_contract import ENV_LOG_FORMAT, EXIT_DATABASE_BUSY, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from sessionpipe_runner import signals, store
from sessionpipe_runner.commands import (
    demo,
    forget,
    pricing,
    processors,
    quickstart,
    report,
    reset,
    run_now,
    serve,
    status,
)
from sessionpipe_runner.commands import run as run_command
from sessionpipe_runner.commands.common import CommandParser, DatabaseBusy, HelpFormatter, OneLineParser
from sessionpipe_runner.lease.factory import LeaseBusy
from sessionpipe_runner.processors import registry
from sessionpipe_runner.settings import UsageError

#: The commands in the order ``sessionpipe --help`` lists them.
COMMANDS = (run_command, status, report, serve, reset, forget, processors, pricing, demo, quickstart, run_now)


EXAMPLES = """examples:
  sessionpipe quickstart
  sessionpipe run --processor usage
  sessionpipe report usage --by month
  sessionpipe COMMAND --help"""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sessionpipe",
        description="Run session processors over AI-assistant transcripts into a DuckDB file.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=CommandParser, help="what to do"
    )
    for command in COMMANDS:
        p = commands.add_parser(
            command.NAME,
            help=command.HELP,
            description=command.DESCRIPTION,
            epilog=command.EXAMPLES,
            formatter_class=HelpFormatter,
        )
        command.add_arguments(p)
        p.set_defaults(handler=command.handle)
    return parser


def installed_version() -> str:
    """The installed distribution's version (``pyproject.toml``), or ``unknown`` when run from a bare tree."""
    try:
        return metadata.version("sessionpipe")
    except metadata.PackageNotFoundError:
        return "unknown"


LOG_FORMATS = ("plain", "json")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger and message, and a progress line's numbers."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        progress = getattr(record, "progress", None)
        if isinstance(progress, dict):
            line.update(progress)
        return json.dumps(line, default=str)


JsonLogFormatter.converter = time.gmtime  # log times in UTC, as the Z says


def log_format(environ: Mapping[str, str]) -> str:
    """The format of the runner's stderr lines, from ``SESSIONPIPE_LOG_FORMAT`` (default plain)."""
    chosen = environ.get(ENV_LOG_FORMAT, "").strip().lower() or "plain"
    if chosen not in LOG_FORMATS:
        raise UsageError(f"{ENV_LOG_FORMAT}={chosen!r}: use one of {', '.join(LOG_FORMATS)}")
    return chosen


def _log_to_stderr(chosen: str = "plain") -> None:
    """The runner's own notices (a lease wait, a failed lease renewal, progress) as lines on stderr.

    Only sessionpipe's loggers: libraries' INFO lines (an HTTP client's per request) stay quiet.
    ``chosen`` is ``plain`` (``sessionpipe: message``) or ``json`` (one object per line, for a
    cluster's log collector).
    """
    logger = logging.getLogger("sessionpipe_runner")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        formatter = JsonLogFormatter() if chosen == "json" else logging.Formatter("sessionpipe: %(message)s")
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(report.processor_as_report(sys.argv[1:] if argv is None else argv))
    try:
        _log_to_stderr(log_format(os.environ))
    except UsageError as error:
        print(f"sessionpipe: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.handler is not run_command.handle:
        signals.stop_recording()  # only a run turns SIGTERM into a summary
    try:
        code: int = args.handler(args)
    except UsageError as error:
        print(f"sessionpipe: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseBusy as error:
        print(f"sessionpipe: {error}", file=sys.stderr)
        return EXIT_DATABASE_BUSY
    except LeaseBusy as error:
        print(f"sessionpipe: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (registry.ProcessorLoadError, store.StoreError) as error:
        print(f"sessionpipe: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except duckdb.Error as error:  # a damaged file fails on the block a statement reads, not on opening
        print(f"sessionpipe: error: the database cannot be used: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK
    return code


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


if __name__ == "__main__":
    raise SystemExit(main())
