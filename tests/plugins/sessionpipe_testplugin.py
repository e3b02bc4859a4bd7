"""A third-party processor as a test would write one: one row per line, and a way to fail on cue.

Installed for a test run through a ``.dist-info`` with an entry point (see ``tests/runner_support``),
so the runner finds it exactly as it finds a plugin installed with pip.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from sessionpipe_runner.processors.base import Migration, Output, Processor, SessionFile


class LinesProcessor(Processor):
    """Stores each line's number and length; raises on a session containing ``FAIL_MARKER``."""

    name = "lines"
    version = os.environ.get("TESTPLUGIN_VERSION", "1")
    tables = ("line_rows",)
    batchable = os.environ.get("TESTPLUGIN_BATCHABLE", "1") == "1"
    parallel = os.environ.get("TESTPLUGIN_PARALLEL", "0") == "1"
    FAIL_MARKER = b"PLEASE-FAIL"

    def migrations(self) -> Sequence[Migration]:
        return (
            Migration(
                "0001_line_rows",
                "CREATE TABLE line_rows (session_file VARCHAR NOT NULL, line_no INTEGER NOT NULL, "
                "length INTEGER NOT NULL, PRIMARY KEY (session_file, line_no))",
            ),
        )

    def process(self, session: SessionFile, data: bytes) -> Output:
        # Knobs for tests of the runner: a slow processor, and a file that vanishes mid-run.
        time.sleep(float(os.environ.get("TESTPLUGIN_SLEEP", "0")))
        doomed = os.environ.get("TESTPLUGIN_DELETE")
        if doomed:
            Path(doomed).unlink(missing_ok=True)
        if self.FAIL_MARKER in data:
            raise RuntimeError(f"refusing {session.key}: it asks to fail")
        lines = data.splitlines()
        rows = [(session.key, number, len(line)) for number, line in enumerate(lines, start=1)]
        return Output(rows={"line_rows": rows}, items=len(rows))
