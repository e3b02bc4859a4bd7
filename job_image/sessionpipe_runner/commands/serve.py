"""``sessionpipe serve``: the read-only dashboard, JSON API and Prometheus metrics of a database.

It reads the newest published snapshot only (never the file a run writes), so it runs beside the
scheduled runs without ever making one wait; a newly published snapshot is picked up at the next
request.
"""

from __future__ import annotations

import argparse
import os

from sessionpipe_contract import EXIT_OK
from sessionpipe_runner.commands.common import add_db_flag
from sessionpipe_runner.settings import UsageError, arg_type, database_path

NAME = "serve"
HELP = "a read-only web dashboard, JSON API and /metrics of the database's snapshot"
DESCRIPTION = (
    "Serve the newest published snapshot of the database: pages with charts (overview, users, "
    "projects, sessions, 5-hour blocks, verification findings, runs), /api/usage, /api/verification and "
    "/api/runs (the JSON the report and status commands print), /metrics (usage as Prometheus counters) "
    "and /healthz. Binds to localhost unless --host says otherwise."
)
EXAMPLES = """examples:
  sessionpipe serve
  sessionpipe serve --db team.duckdb --port 8080
  sessionpipe serve --host 0.0.0.0   # reachable from other machines: mind who can reach it"""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def port_number(text: str) -> int:
    """A TCP port (1-65535), or ValueError."""
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"{port} is not a TCP port (1-65535)")
    return port


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_db_flag(p)
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument(
        "--port", type=arg_type(port_number), default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})"
    )
    p.add_argument(
        "--tz", metavar="ZONE", help="IANA time zone the pages cut days in by default (default: this machine's)"
    )


def handle(args: argparse.Namespace) -> int:
    # Imported here: the web stack is the job image's (the `job` extra), and no other command needs it.
    try:
        import uvicorn

        from sessionpipe_runner.serve.app import create_app
    except ImportError as error:
        raise UsageError(f"sessionpipe serve needs the job extra (pip install 'sessionpipe[job]'): {error}") from None
    from sessionpipe_runner.processors.usage.report import check_timezone

    if args.tz:
        try:
            check_timezone(args.tz)
        except ValueError as error:
            raise UsageError(str(error)) from None
    database = database_path(args.db, os.environ, writing=False)
    app = create_app(database, default_tz=args.tz)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return EXIT_OK
