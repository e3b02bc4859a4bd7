"""Start-up cost: ``sessionpipe --help`` imports no engine, no Arrow and no command it does not run.

Each check runs the console script's ``main`` in a fresh interpreter and lists the modules it
loaded: a module imported at the top of any command (or of the CLI itself) shows up here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

#: What ``--help`` must not load: DuckDB's engine and its pure-Python wrapper, Arrow, and every
#: command's module (the top-level help needs each command's name and one-line help only).
NOT_FOR_HELP = ("pyarrow", "duckdb", "_duckdb", "sessionpipe_runner.commands.", "sessionpipe_runner.runner")


def loaded_modules(argv: list[str]) -> set[str]:
    """The modules ``sessionpipe <argv>`` has imported when it exits."""
    script = (
        "import json, sys\n"
        "from sessionpipe_runner.__main__ import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(done.stderr.rsplit("MODULES ", 1)[1]))


#: The command line's parser classes: what the top-level parser is built from.
PARSERS = "sessionpipe_runner.commands.parsers"
LINE = (
    '{"type":"assistant","timestamp":"2026-01-01T00:00:00Z","requestId":"r1","message":{"id":"m1",'
    '"model":"claude-sonnet-4-20250514","usage":{"input_tokens":1,"output_tokens":1}}}\n'
)


def heavy(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    """The loaded modules that are, or are below, one of ``prefixes`` (a prefix ending in a dot: below only)."""
    return sorted(
        m
        for m in modules - {PARSERS}
        if any(m == p or m.startswith(p if p.endswith(".") else p + ".") for p in prefixes)
    )


def test_help_imports_neither_duckdb_nor_pyarrow_nor_any_command() -> None:
    assert heavy(loaded_modules(["--help"]), NOT_FOR_HELP) == []


def test_a_command_help_imports_that_command_only() -> None:
    modules = loaded_modules(["status", "--help"])
    commands = {m for m in modules if m.startswith("sessionpipe_runner.commands.")}
    assert commands <= {"sessionpipe_runner.commands.status", "sessionpipe_runner.commands.common", PARSERS}
    assert heavy(modules, ("pyarrow", "duckdb")) == []


def run_python(script: str) -> str:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


ARROW_INSERT = (
    "import _duckdb, sys, pyarrow as pa\n"
    "from sessionpipe_runner import tables\n"
    "con = _duckdb.connect()\n"
    "con.execute('CREATE TABLE t (a BIGINT, s VARCHAR)')\n"
    "tables.insert_arrow(con, 't', [pa.table({'a': [1, 2], 's': ['x', None]})])\n"
    "print(con.execute('SELECT * FROM t ORDER BY a').fetchall())\n"
    "print('duckdb' in sys.modules)\n"
)


def test_an_arrow_insert_loads_the_engines_arrow_scan_not_the_duckdb_package() -> None:
    """A cold run's writer inserts Arrow tables: it needs ``duckdb._sources`` (~12 ms), not the
    package around it (~55 ms of imports with the GIL held); the package still imports whole later."""
    out = run_python(
        ARROW_INSERT + "import duckdb\n"
        "print(duckdb.sql('SELECT 42').fetchall(), duckdb._sources is sys.modules['duckdb._sources'])\n"
        "print(duckdb.connect().sql('SELECT count(*) FROM (SELECT 1)').fetchall())\n"
    )
    assert out.split("\n")[:4] == ["[(1, 'x'), (2, None)]", "False", "[(42,)] True", "[(1,)]"]


def test_an_arrow_insert_imports_the_duckdb_package_where_its_parts_are_laid_out_otherwise() -> None:
    not_found = "import importlib.util\nimportlib.util.find_spec = lambda name, *args: None\n"
    out = run_python(not_found + ARROW_INSERT)
    assert out.split("\n")[:2] == ["[(1, 'x'), (2, None)]", "True"]


def test_a_run_with_worker_threads_sets_the_arrow_scan_up_before_they_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While ``duckdb._sources`` loads, the package stands empty in ``sys.modules``: no worker
    thread (where a processor's code runs) may exist yet to import it."""
    from sessionpipe_contract import EXIT_OK
    from sessionpipe_runner import tables, work
    from sessionpipe_runner.lease.file import FileLease
    from sessionpipe_runner.processors.usage import UsageProcessor
    from sessionpipe_runner.runner import RunSettings, run

    sessions, db = tmp_path / "sessions", tmp_path / "db.duckdb"
    (sessions / "alice" / "-app").mkdir(parents=True)
    (sessions / "alice" / "-app" / "s.jsonl").write_text(LINE)
    order: list[str] = []
    arrow_scans, pool_init = tables.arrow_scans, work.WorkerPool.__init__
    monkeypatch.setattr(tables, "arrow_scans", lambda: order.append("arrow_scans") or arrow_scans())

    def recording_init(pool: work.WorkerPool, *args: Any, **kwargs: Any) -> None:
        order.append(f"workers, threads alive: {threading.active_count()}")
        pool_init(pool, *args, **kwargs)

    monkeypatch.setattr(work.WorkerPool, "__init__", recording_init)
    settings = RunSettings(processor="usage", sessions=sessions, database=db, lease_wait_seconds=5, workers=2)
    summary = run(settings, UsageProcessor(), FileLease(db, "usage"))
    assert summary.exit_code == EXIT_OK and summary.workers == 2, summary.message
    assert order[0] == "arrow_scans" and order[1].startswith("workers")
