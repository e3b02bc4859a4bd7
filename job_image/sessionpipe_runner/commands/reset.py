"""``sessionpipe reset``: make sessions be processed again on the next run."""

from __future__ import annotations

import argparse
import os

from sessionpipe_contract import EXIT_OK
from sessionpipe_runner import store
from sessionpipe_runner.commands.common import add_db_flag, add_lease_wait_flag, load_processor
from sessionpipe_runner.lease.factory import holding_lease
from sessionpipe_runner.settings import UsageError, database_path
from sessionpipe_runner.store.queries import NoStateToReset, reset_sessions

NAME = "reset"
DESCRIPTION = (
    "Forget one processor's state and rows for some sessions, so that its next run processes them again: "
    "one file, the quarantined ones, or all. Other processors' state and rows are left alone."
)
EXAMPLES = """examples:
  sessionpipe reset --processor usage --quarantined
  sessionpipe reset --processor usage --session alice/-home-alice-app/0b1c.jsonl
  sessionpipe reset --processor verification --all --db team.duckdb"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--processor", required=True, metavar="NAME", help="the processor whose sessions to reset")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", metavar="KEY", help="one session file key (<user>/<project>/<file>.jsonl)")
    which.add_argument("--quarantined", action="store_true", help="every quarantined session")
    which.add_argument("--all", action="store_true", help="every session of the processor")
    add_db_flag(p)
    add_lease_wait_flag(p)


def handle(args: argparse.Namespace) -> int:
    database = database_path(args.db, os.environ, writing=True)
    if not database.exists():
        raise UsageError(f"database {database} does not exist")
    processor = load_processor(args.processor)
    with holding_lease(database, f"reset {args.processor}", args.lease_wait):
        con = store.connect(database)
        with con:
            store.migrate(con, processor)
            try:
                count = reset_sessions(con, processor, session=args.session, quarantined=args.quarantined)
            except NoStateToReset as error:
                raise UsageError(str(error)) from None
            con.execute("CHECKPOINT")
    print(f"reset {count} session(s) of {args.processor}; they are processed again on the next run")
    return EXIT_OK
