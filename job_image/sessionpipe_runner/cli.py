"""The ``sessionpipe`` command line: the commands (:mod:`.commands`) assembled into one parser.

Every setting resolves the same way (:mod:`.settings`): a flag beats its ``SESSIONPIPE_*``
environment variable, which beats the default. User mistakes end with one line on stderr and exit
code 2, a database that cannot be read or written with one line and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sessionpipe_contract import ENV_LOG_FORMAT, EXIT_DATABASE_BUSY, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from sessionpipe_runner import signals
from sessionpipe_runner.commands.parsers import CommandParser, HelpFormatter, OneLineParser
from sessionpipe_runner.settings import UsageError


@dataclass(frozen=True)
class Command:
    """A command as the top-level help lists it; its module is imported only when it is used.

    The module (``sessionpipe_runner.commands.<module>``) has ``DESCRIPTION``, ``EXAMPLES``,
    ``add_arguments(parser)`` and ``handle(args)``. Importing every command to build the parser
    made each run (and ``--help``) pay for DuckDB's wrapper, the reports and the pricing importer.
    """

    name: str
    module: str
    help: str

    def load(self) -> ModuleType:
        return importlib.import_module(f"sessionpipe_runner.commands.{self.module}")

    def complete(self, p: argparse.ArgumentParser) -> None:
        """Give the command's parser its text and arguments, once this command is the one used."""
        module = self.load()
        p.description, p.epilog = module.DESCRIPTION, module.EXAMPLES
        module.add_arguments(p)
        p.set_defaults(handler=module.handle)


#: The commands in the order ``sessionpipe --help`` lists them.
COMMANDS = (
    Command("run", "run", "run one processor over the sessions once"),
    Command("status", "status", "sessions done / failed / quarantined per processor, and the last runs"),
    Command("report", "report", "reports of a processor's results"),
    Command("serve", "serve", "a read-only web dashboard, JSON API and /metrics of the database's snapshot"),
    Command("reset", "reset", "make sessions be processed again on the next run"),
    Command("forget", "forget", "delete session files' state and rows for good (vanished files, a user's files)"),
    Command("processors", "processors", "list the installed processors"),
    Command("pricing", "pricing", "list the model prices the usage processor uses, or import a LiteLLM price table"),
    Command("demo", "demo", "generate realistic demo transcripts"),
    Command(
        "quickstart",
        "quickstart",
        "run usage on your Claude Code transcripts (or demo data) and print a monthly report",
    ),
    Command("run-now", "run_now", "ask the operator to run a SessionProcessor now (a cluster)"),
)


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
    parser.add_argument("--version", action=VersionAction, nargs=0, help="show the version and exit")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=CommandParser, help="what to do"
    )
    for command in COMMANDS:
        p = commands.add_parser(command.name, help=command.help, formatter_class=HelpFormatter)
        assert isinstance(p, CommandParser)
        p.complete_later(command.complete)
    return parser


class VersionAction(argparse.Action):
    """``--version``: looks the version up only when asked (``importlib.metadata`` costs every run ~20 ms)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        print(f"{parser.prog} {installed_version()}")
        parser.exit()


def installed_version() -> str:
    """The installed distribution's version (``pyproject.toml``), or ``unknown`` when run from a bare tree."""
    from importlib import metadata

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
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["report"]:
        from sessionpipe_runner.commands.report import processor_as_report

        arguments = processor_as_report(arguments)
    args = build_parser().parse_args(arguments)
    try:
        _log_to_stderr(log_format(os.environ))
    except UsageError as error:
        print(f"sessionpipe: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.command != "run":
        signals.stop_recording()  # only a run turns SIGTERM into a summary
    try:
        code: int = args.handler(args)
    except UsageError as error:
        print(f"sessionpipe: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except Exception as error:
        failed = _failure(error)
        if failed is None:
            raise
        code, line = failed
        print(line, file=sys.stderr)
    return code


def _failure(error: Exception) -> tuple[int, str] | None:
    """The exit code and stderr line of a command's expected failure; ``None`` for a bug.

    Imported here, not at the top: only a command that ran can fail this way, and it has
    imported these modules already.
    """
    import _duckdb

    from sessionpipe_runner.commands.common import DatabaseBusy
    from sessionpipe_runner.lease.factory import LeaseBusy
    from sessionpipe_runner.processors.registry import ProcessorLoadError
    from sessionpipe_runner.tables import StoreError

    if isinstance(error, DatabaseBusy):
        return EXIT_DATABASE_BUSY, f"sessionpipe: {error}"
    if isinstance(error, LeaseBusy):
        return EXIT_FAILED, f"sessionpipe: {error}"
    if isinstance(error, ProcessorLoadError | StoreError):
        return EXIT_FAILED, f"sessionpipe: error: {_one_line(error)}"
    if isinstance(error, _duckdb.Error):  # a damaged file fails on the block a statement reads, not on opening
        return EXIT_FAILED, f"sessionpipe: error: the database cannot be used: {_one_line(error)}"
    return None


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


if __name__ == "__main__":
    raise SystemExit(main())
