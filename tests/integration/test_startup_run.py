"""A run with nothing to do imports neither Arrow nor DuckDB's Python wrapper nor any other command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.runner_support import CORPUS
from tests.support.db import rows
from tests.unit.test_startup import heavy, loaded_modules

#: What a run needs only for some files: the Python usage reading (msgspec) for a line the compiled
#: parser hands back, orjson for a last line without a newline, ctypes for worker processes.
ONLY_FOR_SOME_FILES = ("msgspec", "orjson", "ctypes")

#: What a run that finds every file unchanged must not load. (DuckDB's engine, ``_duckdb``, it
#: needs: the state is in the database.)
NOT_FOR_A_RUN_WITH_NOTHING_TO_DO = (
    "pyarrow",
    "duckdb",
    "multiprocessing",
    "sessionpipe_runner.lease.k8s",  # a file lease's run: no Kubernetes client
    *ONLY_FOR_SOME_FILES,
    *(
        f"sessionpipe_runner.commands.{name}"
        for name in ("demo", "forget", "pricing", "processors", "quickstart", "report", "reset", "run_now", "status")
    ),
)


def test_a_run_with_nothing_to_do_imports_no_arrow_no_wrapper_and_no_other_command(tmp_path: Path) -> None:
    projects = str(CORPUS / "ccusage-fixtures" / "projects")  # read in place, as one user's projects/
    argv = [
        "run",
        "--processor",
        "usage",
        "--sessions",
        projects,
        "--user",
        "alice",
        "--db",
        str(tmp_path / "u.duckdb"),
    ]
    loaded_modules(argv)  # the first run writes the rows
    assert heavy(loaded_modules(argv), NOT_FOR_A_RUN_WITH_NOTHING_TO_DO) == []


def test_a_run_after_one_appended_line_imports_no_arrow_and_no_wrapper(tmp_path: Path) -> None:
    projects = tmp_path / "projects"
    shutil.copytree(CORPUS / "ccusage-fixtures" / "projects", projects)  # a copy in tmp: this test appends
    argv = ["run", "--processor", "usage", "--sessions", str(projects), "--user", "alice"]
    argv += ["--db", str(tmp_path / "u.duckdb"), "--workers", "1"]
    loaded_modules(argv)
    grown = projects / "project-alpha" / "session-alpha" / "chat.jsonl"
    call = json.loads(next(line for line in grown.read_bytes().splitlines() if b'"usage"' in line))
    call["message"]["id"], call["requestId"] = "msg_appended", "req_appended"
    with grown.open("ab") as handle:
        handle.write(json.dumps(call).encode() + b"\n")

    assert heavy(loaded_modules(argv), ("pyarrow", "duckdb", *ONLY_FOR_SOME_FILES)) == []
    appended = "SELECT count(*) FROM usage_rows WHERE message_id = 'msg_appended'"
    assert rows(tmp_path / "u.duckdb", appended) == [(1,)]  # the run did write the appended call


def _console(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``sessionpipe <argv>`` through the console script's function, with an exit handler that
    says whether the interpreter's teardown ran."""
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('TEARDOWN RAN'))\n"
        f"sys.argv = ['sessionpipe', *{argv!r}]\n"
        "from sessionpipe_runner.__main__ import console\n"
        "console()\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)


def test_the_console_script_flushes_its_output_and_skips_the_teardown(tmp_path: Path) -> None:
    """The teardown of what a run loaded cost 20 ms of each command: the console script flushes
    the streams and the log and leaves without it, with the command's exit code."""
    projects = str(CORPUS / "ccusage-fixtures" / "projects")
    db = str(tmp_path / "u.duckdb")
    done = _console(["run", "--processor", "usage", "--sessions", projects, "--user", "alice", "--db", db, "--json"])
    assert done.returncode == 0, done.stderr
    assert "TEARDOWN RAN" not in done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["outcome"] == "succeeded"  # flushed whole
    refused = _console(["report", "usage", "--db", str(tmp_path / "missing.duckdb")])
    assert refused.returncode != 0 and "TEARDOWN RAN" not in refused.stderr and refused.stderr.strip()
