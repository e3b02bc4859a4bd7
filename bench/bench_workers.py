"""Workers for a cold run: the runner alone, worker processes, or worker threads.

``python -m bench.bench_workers [--megabytes 220] [--repeat 3] [--workers 2] [--simulate-native]``
runs the cold ``usage`` run over the same corpus, interleaved, three ways:

1. ``alone``: ``--workers 1``, everything in the runner's thread;
2. ``processes``: ``--workers N`` with ``UsageProcessor.releases_gil`` off (worker processes, rows
   sent back as Arrow tables);
3. ``threads``: ``--workers N`` with ``releases_gil`` on (threads of the runner's process).

Threads only pay when the processor's parsing runs with the GIL released. ``--simulate-native``
stands in for a compiled parser: each file's rows are computed beforehand (with the Python
parser) and ``process`` then costs what a native one would: a GIL-free pass over the bytes
(``hashlib.sha256``, ``--burn`` times; once is ~0.13 s per 220 MB here) plus building the rows'
Python objects with the GIL held (``pickle.loads``). Prints wall seconds, the CPU seconds of the
process tree (user + sys) and the peak PSS of the tree, medians over the repeats.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_usage import installed_env, warm_page_cache  # noqa: E402
from bench.gen_corpus import DEFAULT_OUT, ensure_corpus  # noqa: E402
from bench.memory import TreeSampler  # noqa: E402
from sessionpipe_runner.processors.base import Output, SessionFile  # noqa: E402
from sessionpipe_runner.processors.usage import UsageProcessor  # noqa: E402

#: Where :class:`SimulatedNative` finds the rows computed beforehand (a pickle), and its burn count.
ENV_ROWS = "BENCH_WORKERS_ROWS"
ENV_BURN = "BENCH_WORKERS_BURN"

_rows: dict[str, tuple[int, Counter[str], bytes]] | None = None


class SimulatedNative(UsageProcessor):
    """The usage processor with parsing as a compiled parser would cost it (see the module doc)."""

    def process_appended(self, session: SessionFile, data: bytes, first_line: int) -> Output:
        global _rows
        if _rows is None:
            with Path(os.environ[ENV_ROWS]).open("rb") as handle:
                _rows = pickle.load(handle)
        for _ in range(int(os.environ.get(ENV_BURN, "3"))):
            hashlib.sha256(data).digest()  # releases the GIL over large inputs
        items, issues, rows = _rows[session.key]
        return Output(rows={"usage_rows": pickle.loads(rows)}, items=items, issues=Counter(issues))


#: The child: pick the processor class and whether it releases the GIL, then run the real CLI.
CHILD = """
import sys
from sessionpipe_runner import cli
from sessionpipe_runner.processors import registry
from bench.bench_workers import SimulatedNative
from sessionpipe_runner.processors.usage import UsageProcessor
cls = SimulatedNative if sys.argv[1] == "simulated" else UsageProcessor
cls.releases_gil = sys.argv[2] == "threads"
registry.load = lambda name: cls()
sys.exit(cli.main(sys.argv[3:]))
"""

WAYS = ("alone", "processes", "threads")


def precompute_rows(sessions: Path, target: Path) -> None:
    """Each file's usage rows from the Python parser, pickled per file, for :class:`SimulatedNative`."""
    from sessionpipe_runner.processors.base import RunContext
    from sessionpipe_runner.reading import read_snapshot
    from sessionpipe_runner.scan import scan_sessions

    processor = UsageProcessor()
    processor.start(RunContext(run_id="bench", database=target, config={}, environ={}))
    rows: dict[str, tuple[int, dict[str, int], bytes]] = {}
    for file in scan_sessions(sessions, None).files:
        output = processor.process(file, read_snapshot(file.location).data)
        rows[file.key] = (output.items, dict(output.issues), pickle.dumps(output.rows["usage_rows"], protocol=5))
    target.write_bytes(pickle.dumps(rows, protocol=5))


def run_once(way: str, kind: str, sessions: Path, db: Path, workers: int, env: dict[str, str]) -> dict[str, float]:
    """One cold run; its wall and CPU seconds (the tree's, waited for) and peak PSS (MiB)."""
    threads = "threads" if way == "threads" else "processes"
    count = 1 if way == "alone" else workers
    command = [sys.executable, "-c", CHILD, kind, threads, "run", "--processor", "usage"]
    command += ["--sessions", str(sessions), "--db", str(db), "--workers", str(count)]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = TreeSampler(process.pid)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    memory = sampler.peaks(usage.ru_maxrss)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"{way} run failed: {process.stderr.read().decode(errors='replace') if process.stderr else ''}"
        )
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "pss": memory.pss_mb}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=220)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--simulate-native", action="store_true", help="parsing as a compiled parser costs it")
    parser.add_argument("--burn", type=int, default=3, help="GIL-free passes over each file when simulating")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    sessions = ensure_corpus(args.out, args.megabytes, args.users, args.seed)
    kind = "simulated" if args.simulate_native else "python"
    results: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as scratch_name:
        scratch = Path(scratch_name)
        env = {**installed_env(), "PYTHONPATH": str(REPO), ENV_ROWS: str(scratch / "rows.pickle")}
        env[ENV_BURN] = str(args.burn)
        if args.simulate_native:
            precompute_rows(sessions, scratch / "rows.pickle")
        warm_page_cache(sessions)
        for attempt in range(args.repeat):
            for way in WAYS:
                db = scratch / f"{way}-{attempt}.duckdb"
                results[way].append(run_once(way, kind, sessions, db, args.workers, env))
    print(f"cold run, {args.megabytes} MB, parser: {kind}, workers: {args.workers}, load {os.getloadavg()[0]:.1f}")
    for way, runs in results.items():
        wall, cpu, pss = (statistics.median(run[key] for run in runs) for key in ("wall", "cpu", "pss"))
        listed = ", ".join(f"{run['wall']:.2f}" for run in runs)
        print(f"  {way:10} {wall:5.2f} s wall  {cpu:5.2f} s CPU  {pss:4.0f} MB peak PSS   (wall: {listed})")
    print(json.dumps({"parser": kind, "runs": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
