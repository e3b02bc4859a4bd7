"""``sessionpipe status``: sessions done / failed / quarantined per processor, and the last runs."""

from __future__ import annotations

import argparse
import os

from sessionpipe_contract import EXIT_OK
from sessionpipe_runner.commands.common import add_db_flag, open_for_reading
from sessionpipe_runner.reports import report_json
from sessionpipe_runner.settings import database_path
from sessionpipe_runner.store.queries import status_data

NAME = "status"
HELP = "sessions done / failed / quarantined per processor, and the last runs"
DESCRIPTION = (
    "Per processor: how many session files are done, failed or quarantined, how many vanished from "
    "the volume, and its last runs. Reads the snapshot while a run holds the database."
)
EXAMPLES = """examples:
  sessionpipe status
  sessionpipe status --db team.duckdb --json"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_db_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def handle(args: argparse.Namespace) -> int:
    database = database_path(args.db, os.environ, writing=False)
    con = open_for_reading(database)
    with con:
        data = status_data(con)
    if args.json:
        print(report_json(data))
        return EXIT_OK
    if not data["processors"]:
        print(f"{database}: no processor has run yet")
    for name, info in data["processors"].items():
        sessions = info["sessions"]
        print(
            f"{name}: {sessions.get('done', 0)} done, {sessions.get('failed', 0)} failed, "
            f"{sessions.get('quarantined', 0)} quarantined, {info['items']} items; "
            f"{info['vanished']} vanished from the volume (kept)"
        )
        for last in info["last_runs"]:
            print(f"  {last['started_at']}  {last['outcome']:<22} {last['summary_line']}")
    return EXIT_OK
