"""``sessionpipe forget``: delete session files' state and every processor's rows for them, for good."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Sequence

from sessionpipe_contract import EXIT_OK
from sessionpipe_runner import store
from sessionpipe_runner.commands.common import (
    add_db_flag,
    add_lease_wait_flag,
    load_processor,
    open_for_reading,
)
from sessionpipe_runner.lease.factory import holding_lease
from sessionpipe_runner.names import printable
from sessionpipe_runner.settings import UsageError, database_path
from sessionpipe_runner.snapshot import publish_snapshot, remove_old_snapshots, remove_stale_snapshots
from sessionpipe_runner.store.queries import forget_sessions, forgettable

NAME = "forget"
DESCRIPTION = (
    "Delete session files' state and every processor's rows for them, for good: the files that vanished "
    "from the volume, one user's files, or one file. --dry-run lists them first."
)
EXAMPLES = """examples:
  sessionpipe forget --vanished --dry-run
  sessionpipe forget --user alice
  sessionpipe forget --session alice/-home-alice-app/0b1c.jsonl --db team.duckdb"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--vanished", action="store_true", help="every file that vanished from the volume")
    which.add_argument("--user", metavar="NAME", help="every file of one user")
    which.add_argument("--session", metavar="KEY", help="one session file key (<user>/<project>/<file>.jsonl)")
    p.add_argument("--dry-run", action="store_true", help="list what would be forgotten, change nothing")
    add_db_flag(p)
    add_lease_wait_flag(p)


def handle(args: argparse.Namespace) -> int:
    """Delete session files' state and every processor's rows for them, for good (or list them)."""
    database = database_path(args.db, os.environ, writing=True)
    if not database.exists():
        raise UsageError(f"database {database} does not exist")
    if args.dry_run:
        with open_for_reading(database) as con:
            doomed = forgettable(con, vanished=args.vanished, user=args.user, session=args.session)
        print(f"would forget {_files(len(doomed))}{_by_processor(doomed)}")
        for processor, key in doomed:
            print(f"  {processor}  {printable(key)}")
        return EXIT_OK
    with holding_lease(database, "forget", args.lease_wait):
        remove_stale_snapshots(database)
        con = store.connect(database)
        with con:
            store.migrate(con)
            doomed = forgettable(con, vanished=args.vanished, user=args.user, session=args.session)
            forget_sessions(con, doomed, load_processor)
            con.execute("CHECKPOINT")
        publish_snapshot(database)  # the snapshot must not keep what was forgotten
        remove_old_snapshots(database)  # nor the older copies runs kept
    print(f"forgot {_files(len(doomed))}{_by_processor(doomed)}")
    return EXIT_OK


def _files(count: int) -> str:
    return f"{count} session file{'' if count == 1 else 's'}"


def _by_processor(doomed: Sequence[tuple[str, str]]) -> str:
    counts = Counter(processor for processor, _ in doomed)
    if not counts:
        return ""
    return " (" + ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) + ")"
