"""How fast this design can possibly be: the parts of a run that no parser speed-up removes.

``python -m bench.bench_floor [--megabytes 220] [--repeat 3]`` measures, beside ccusage 20.0.24 on
the same corpus (see ``bench_usage.py`` for the method):

1. the start of any run that records a change: a Python process that imports DuckDB's engine
   (``_duckdb``, as a run does), and one that also opens the database and reads one row (every
   run that writes must do both), against the
   time budget of the incremental target (ccusage's full re-read / 20);
2. the cold-run floor: the real runner (``--workers 1``) over the real files, reading and hashing
   every one and writing every row to DuckDB, but with the usage processor's rows computed
   beforehand, so parsing costs nothing. The loading of those rows is left out of the time; the
   interpreter's start is put back in. Also with all rows in one transaction (``--one-commit``
   variant) to see what batching could still win.

If the floor is above the target's budget, no faster parser can meet the target in this design.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_usage import (  # noqa: E402
    ccusage_config_dirs,
    ccusage_monthly,
    corpus_arguments,
    corpus_bytes,
    warm_page_cache,
)
from bench.gen_corpus import ensure_corpus  # noqa: E402
from tests import ccusage  # noqa: E402

MB = 1024 * 1024
TARGET_COLD_MB_S = 100.0
TARGET_INCREMENTAL_RATIO = 20.0

#: Run in a child process: load the precomputed outputs, then time the real runner fed with them.
FLOOR_CHILD = """
import pickle, sys, time
started = time.perf_counter()
from dataclasses import replace
from sessionpipe_runner import batches, cli, runner
from sessionpipe_runner.processors.base import Output
from sessionpipe_runner.reading import read_snapshot
from sessionpipe_runner.work import Examined, Outcome
loading = time.perf_counter()
with open(sys.argv[1], "rb") as handle:
    chunks = pickle.load(handle)
outputs = {}
for table, sessions in chunks:
    offset = 0
    for key, items, issues, count in sessions:
        arrow, origin = {"usage_rows": table.slice(offset, count)}, {"usage_rows": (table, offset)}
        outputs[key] = Output(items=items, issues=issues, arrow=arrow, arrow_origin=origin)  # as work._unpack does
        offset += count
loaded = time.perf_counter() - loading

def examine_here(self, candidates):
    for file, _ in candidates:
        snapshot = read_snapshot(file.location)
        file = replace(file, size=snapshot.size, mtime_ns=snapshot.mtime_ns)
        yield Examined(file, Outcome.PROCESSED, snapshot.without_data(), outputs[file.key])

runner.Run._examine_here = examine_here
if sys.argv[2] == "one-commit":
    batches.BATCH_SESSIONS = batches.BATCH_BYTES = 1 << 60
code = cli.main(sys.argv[3:])
print(f"{time.perf_counter() - started - loaded:.4f}")
sys.exit(code)
"""


def precompute(sessions: Path, target: Path) -> None:
    """The usage processor's output for every file, as the worker processes make it, pickled."""
    import pickle
    from unittest import mock

    import duckdb

    from sessionpipe_runner import store, work
    from sessionpipe_runner.processors.base import RunContext
    from sessionpipe_runner.processors.usage import UsageProcessor
    from sessionpipe_runner.processors.usage.native import ENV_USAGE_READING, PYTHON_READING
    from sessionpipe_runner.scan import scan_sessions

    # The floor feeds the runner the Arrow tables worker processes send back; the compiled reading
    # keeps its rows as columns for UsageProcessor.write instead, so the rows are made the Python way.
    processor = UsageProcessor()
    with mock.patch.dict("os.environ", {ENV_USAGE_READING: PYTHON_READING}):
        processor.start(RunContext(run_id="floor", database=target, config={}, environ={}))
    con = duckdb.connect()
    store.migrate(con, processor)
    # what a worker's initializer sets up, here in this process
    work._worker_processor = processor
    work._worker_columns = {"usage_rows": store.table_columns(con, "usage_rows")}
    chunks = []
    for tasks in work.chunked([(file, None) for file in scan_sessions(sessions, None).files]):
        with mock.patch.dict("os.environ", {ENV_USAGE_READING: PYTHON_READING}):
            chunk = work._examine_chunk(tasks)
        sessions_of_chunk = [
            (one.file.key, one.output.items, one.output.issues, counts.get("usage_rows", 0))
            for one, counts in zip(chunk.examined, chunk.row_counts, strict=True)
            if one.output is not None
        ]
        chunks.append((chunk.tables["usage_rows"], sessions_of_chunk))
    target.write_bytes(pickle.dumps(chunks))


def seconds_of(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    args = corpus_arguments(__doc__.splitlines()[0])
    sessions = ensure_corpus(args.out, args.megabytes, args.users, args.seed)
    size = corpus_bytes(sessions)
    launcher = ccusage.install()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as scratch_name:
        scratch = Path(scratch_name)
        config_dirs = ccusage_config_dirs(sessions, scratch)
        warm_page_cache(sessions)
        outputs = scratch / "outputs.pickle"
        precompute(sessions, outputs)
        db = scratch / "probe.duckdb"
        subprocess.run(
            [python, "-c", f"import duckdb; duckdb.connect({str(db)!r}).execute('CREATE TABLE t AS SELECT 1 AS x')"],
            check=True,
        )
        start_only: dict[str, list[float]] = {"python": [], "import _duckdb": [], "import _duckdb, open, one query": []}
        floors: dict[str, list[float]] = {"batches": [], "one-commit": []}
        theirs: list[float] = []
        for attempt in range(args.repeat):
            start_only["python"].append(seconds_of([python, "-c", "pass"]))
            # The engine alone, as a run imports it (store.connect), not the ``duckdb`` package's wrapper.
            start_only["import _duckdb"].append(seconds_of([python, "-c", "import _duckdb"]))
            query = f"import _duckdb; _duckdb.connect({str(db)!r}).execute('SELECT x FROM t').fetchall()"
            start_only["import _duckdb, open, one query"].append(seconds_of([python, "-c", query]))
            for variant, seconds in floors.items():
                target = scratch / f"floor-{variant}-{attempt}.duckdb"
                command = [python, "-c", FLOOR_CHILD, str(outputs), variant, "run", "--processor", "usage"]
                command += ["--sessions", str(sessions), "--db", str(target), "--workers", "1"]
                result = subprocess.run(command, check=True, capture_output=True, text=True)
                seconds.append(float(result.stdout.strip().splitlines()[-1]) + statistics.median(start_only["python"]))
            theirs.append(ccusage_monthly(launcher, config_dirs).seconds)

    ccusage_s = statistics.median(theirs)
    budget = ccusage_s / TARGET_INCREMENTAL_RATIO
    print(f"corpus: {size / MB:.1f} MB; ccusage claude monthly {ccusage_s:.2f}s (runs: {_list(theirs)})")
    print(f"incremental target (>= {TARGET_INCREMENTAL_RATIO:.0f}x) leaves a run {budget * 1000:.0f} ms")
    for name, seconds in start_only.items():
        median = statistics.median(seconds)
        fits = "fits" if median <= budget else f"{median / budget:.1f}x over budget"
        print(f"  {name:32} {median * 1000:5.0f} ms   ({fits}; runs: {_list(seconds)})")
    cold_budget = size / MB / TARGET_COLD_MB_S
    print(f"cold target (>= {TARGET_COLD_MB_S:.0f} MB/s) leaves a run {cold_budget:.2f}s")
    for variant, seconds in floors.items():
        median = statistics.median(seconds)
        speed = size / MB / median
        print(f"  floor, parsing free, {variant:10} {median:5.2f}s = {speed:.0f} MB/s   (runs: {_list(seconds)})")
    print(json.dumps({"ccusage_s": ccusage_s, "start_only": start_only, "floors": floors}))
    return 0


def _list(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


if __name__ == "__main__":
    raise SystemExit(main())
