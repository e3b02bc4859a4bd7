"""The usage processor's reading alone: the compiled parser against the Python reading.

``python -m bench.bench_parse [--megabytes 220 --users 8 --seed 1] [--repeat 3]`` loads every file
of a generated corpus into memory, then calls ``UsageProcessor.process_appended`` on each, with
``SESSIONPIPE_USAGE_READING`` set to ``native`` and ``python`` in turn (interleaved), and prints
the seconds (wall and process CPU) per pass over the corpus, the median of ``--repeat`` passes
each. Nothing is written: this is the part of a cold run the compiled parser replaces. It exits 1
when the two readings give different rows or issues.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.gen_corpus import DEFAULT_OUT, ensure_corpus  # noqa: E402
from sessionpipe_runner.processors.base import SessionFile  # noqa: E402
from sessionpipe_runner.processors.usage import UsageProcessor  # noqa: E402
from sessionpipe_runner.processors.usage.native import ENV_USAGE_READING  # noqa: E402

SESSION = SessionFile(key="k", location="", user="u", project="p", session_id="s", size=0, mtime_ns=0)


def one_pass(processor: UsageProcessor, files: list[bytes], reading: str) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds, (row count, issues)) of one pass over ``files``."""
    os.environ[ENV_USAGE_READING] = reading
    rows = 0
    issues: Counter[str] = Counter()
    wall, cpu = time.perf_counter(), time.process_time()
    for data in files:
        output = processor.process_appended(SESSION, data, 1)
        rows += len(output.rows["usage_rows"])
        issues.update(output.issues)
    return time.perf_counter() - wall, time.process_time() - cpu, (rows, dict(issues))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=220)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    corpus = ensure_corpus(DEFAULT_OUT, args.megabytes, args.users, args.seed)
    files = [path.read_bytes() for path in sorted(corpus.rglob("*.jsonl"))]
    size = sum(map(len, files)) / 1e6
    processor = UsageProcessor()
    times: dict[str, list[tuple[float, float]]] = {"native": [], "python": []}
    results = {}
    for _ in range(args.repeat):
        for reading in times:
            wall, cpu, results[reading] = one_pass(processor, files, reading)
            times[reading].append((wall, cpu))
    for reading, measured in times.items():
        wall = statistics.median(w for w, _ in measured)
        cpu = statistics.median(c for _, c in measured)
        print(f"{reading}: {wall:.3f} s wall, {cpu:.3f} CPU-s per pass over {size:.0f} MB, {len(files):,} files")
    print(f"rows and issues: {results['native']}")
    if results["native"] != results["python"]:
        print(f"DIFFERENT: python gives {results['python']}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
