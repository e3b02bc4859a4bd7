"""A third-party processor as a test would write one: one row per line, and a way to fail on cue.

Installed for a test run through a ``.dist-info`` with an entry point (see ``tests/runner_support``),
so the runner finds it exactly as it finds a plugin installed with pip.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from sessionpipe_runner.processors.base import Migration, Output, Processor, SessionFile, replace_session_rows
from sessionpipe_runner.reports import Report, require_table

#: A DuckDB statement that runs for a second or more. DuckDB notices a pending signal when the
#: statement ends and reports it as its own "Query interrupted" error.
SLOW_QUERY = "SELECT count(*) FROM range(50000) a, range(200000) b"


def _slow_query_once(con: duckdb.DuckDBPyConnection) -> None:
    """Run :data:`SLOW_QUERY` the first time only, after creating ``TESTPLUGIN_SLOW_QUERY_MARK``."""
    mark = Path(os.environ["TESTPLUGIN_SLOW_QUERY_MARK"])
    if not mark.exists():
        mark.touch()
        con.execute(SLOW_QUERY).fetchall()


class LinesReport(Report):
    """``sessionpipe report lines [--at-least N]``: lines per session, as a plugin contributes a report."""

    help = "lines per session"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--at-least", type=int, default=0, metavar="N", help="sessions of N lines or more")

    def build(self, con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
        require_table(con, "line_rows", "lines")
        rows = con.execute(
            "SELECT session_file, count(*) FROM line_rows GROUP BY ALL HAVING count(*) >= ? ORDER BY ALL",
            [args.at_least],
        ).fetchall()
        data = {"sessions": [{"session_file": key, "lines": lines} for key, lines in rows]}
        return data, "\n".join(f"{key}  {lines}" for key, lines in rows)


class LinesProcessor(Processor):
    """Stores each line's number and length; raises on a session containing ``FAIL_MARKER``."""

    name = "lines"
    version = os.environ.get("TESTPLUGIN_VERSION", "1")
    tables = ("line_rows",)
    batchable = os.environ.get("TESTPLUGIN_BATCHABLE", "1") == "1"
    parallel = os.environ.get("TESTPLUGIN_PARALLEL", "0") == "1"
    appendable = os.environ.get("TESTPLUGIN_APPENDABLE", "0") == "1"
    FAIL_MARKER = b"PLEASE-FAIL"

    def migrations(self) -> Sequence[Migration]:
        return (
            Migration(
                "0001_line_rows",
                "CREATE TABLE line_rows (session_file VARCHAR NOT NULL, line_no INTEGER NOT NULL, "
                "length INTEGER NOT NULL, PRIMARY KEY (session_file, line_no))",
            ),
        )

    def report(self) -> Report:
        return LinesReport()

    def process(self, session: SessionFile, data: bytes) -> Output:
        return self.process_appended(session, data, 1)

    def process_appended(self, session: SessionFile, data: bytes, first_line: int) -> Output:
        # Knobs for tests of the runner: a slow processor, a file that vanishes mid-run, and a
        # DuckDB statement to be interrupted in process() or in write().
        started_log = os.environ.get("TESTPLUGIN_STARTED_LOG")  # one line per session begun, for tests to wait on
        if started_log:
            with Path(started_log).open("a") as log:
                log.write(session.key + "\n")
        time.sleep(float(os.environ.get("TESTPLUGIN_SLEEP", "0")))
        hold_until = os.environ.get("TESTPLUGIN_HOLD_UNTIL")  # a run that lasts until a test says so
        while hold_until and not Path(hold_until).exists():
            time.sleep(0.05)
        if os.environ.get("TESTPLUGIN_SLOW_QUERY") == "process":
            with duckdb.connect() as scratch:
                _slow_query_once(scratch)
        doomed = os.environ.get("TESTPLUGIN_DELETE")
        if doomed:
            Path(doomed).unlink(missing_ok=True)
        if self.FAIL_MARKER in data:
            raise RuntimeError(f"refusing {session.key}: it asks to fail")
        lines = data.splitlines()
        rows = [(session.key, number, len(line)) for number, line in enumerate(lines, start=first_line)]
        return Output(rows={"line_rows": rows}, items=len(rows))

    # A custom write, only when asked for: a slow statement in the runner's transaction, or a look
    # at the settings of the runner's connection.
    if os.environ.get("TESTPLUGIN_SLOW_QUERY") == "write" or os.environ.get("TESTPLUGIN_SETTINGS_TO"):

        def write(self, con: duckdb.DuckDBPyConnection, batch: Sequence[tuple[SessionFile, Output]]) -> None:
            replace_session_rows(con, self.tables, batch)
            settings_to = os.environ.get("TESTPLUGIN_SETTINGS_TO")
            if settings_to:
                (memory_limit,) = con.execute("SELECT current_setting('memory_limit')").fetchone() or ("",)
                Path(settings_to).write_text(str(memory_limit))
            if os.environ.get("TESTPLUGIN_SLOW_QUERY") == "write":
                _slow_query_once(con)
