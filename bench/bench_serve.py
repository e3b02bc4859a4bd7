"""Warm latency of every ``sessionpipe serve`` page and API call on a database of a generated corpus.

``python -m bench.bench_serve [--megabytes 1000] [--users 16] [--seed 2] [--requests 20]`` generates
the corpus (``gen_corpus.py``, cached), builds its database once with ``sessionpipe run --processor
usage`` (cached beside the corpus), starts a real ``sessionpipe serve`` on a free loopback port, and
for every URL sends 2 warm-up requests then ``--requests`` timed ones, one at a time. It prints the
first request's time (computed from the snapshot: the dashboard keeps answers per snapshot and
minute, so this is what a view costs the first time it is asked for), the median and p95 of the
warm ones, and a MET/MISSED verdict against the target: p95 < 300 ms, warm.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script or as a module (-m)

from bench.gen_corpus import DEFAULT_OUT, ensure_corpus  # noqa: E402
from tests.serve_support import PAGE_PATHS, serving  # noqa: E402

TARGET_P95_MS = 300.0
URLS = (
    *PAGE_PATHS,
    "/healthz",
    "/metrics",
    "/api/runs",
    *(f"/api/usage?by={by}" for by in ("day", "week", "month", "session", "user", "project", "model", "block")),
    "/api/usage?by=day&since=2025-01-01&tz=Europe/Paris",
)


def build_database(corpus: Path) -> Path:
    """The usage database of ``corpus``, built once (a ``.complete`` marker beside it)."""
    db = corpus.with_name(corpus.name + "-serve.duckdb")
    marker = db.with_name(db.name + ".complete")
    if marker.exists():
        return db
    for stale in db.parent.glob(db.stem + "*"):
        if stale.is_file():
            stale.unlink()
    started = time.perf_counter()
    command = [sys.executable, "-m", "sessionpipe_runner.cli", "run", "--processor", "usage"]
    subprocess.run([*command, "--sessions", str(corpus), "--db", str(db)], check=True, stdout=subprocess.DEVNULL)
    marker.write_text(f"built in {time.perf_counter() - started:.1f} s\n")
    return db


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def timed_get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        response.read()
        if response.status != 200:
            raise AssertionError(f"{url}: HTTP {response.status}")
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1000)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    corpus = ensure_corpus(args.out, args.megabytes, args.users, args.seed)
    db = build_database(corpus)
    size = sum(f.stat().st_size for f in corpus.rglob("*.jsonl"))
    print(
        f"corpus {corpus.name}: {size / 1024 / 1024:.0f} MB of transcripts; database {db.stat().st_size / 1e6:.0f} MB"
    )
    missed = 0
    with serving(db) as base:
        print(f"{'url':<52} {'first ms':>9} {'median ms':>10} {'p95 ms':>8}  verdict")
        for path in URLS:
            first = timed_get(base + path)
            timed_get(base + path)
            times = [timed_get(base + path) for _ in range(args.requests)]
            p95 = percentile(times, 0.95)
            verdict = "MET" if p95 < TARGET_P95_MS else "MISSED"
            missed += verdict == "MISSED"
            print(f"{path:<52} {first:>9.1f} {statistics.median(times):>10.1f} {p95:>8.1f}  {verdict}")
    print(f"{len(URLS) - missed}/{len(URLS)} under {TARGET_P95_MS:.0f} ms p95")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
