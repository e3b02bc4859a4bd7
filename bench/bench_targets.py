"""Issue 13's targets in one run: cold and incremental ratios against ccusage at several sizes,
the snapshot's cost, peak memory, and the unchanged re-run over 100,000 files.

``python -m bench.bench_targets [--sizes 220:8:1,1000:16:2,3000:32:3] [--repeat 2] [--files 100000]``
(each size is ``megabytes:users:seed`` of a corpus ``gen_corpus.py`` makes once and caches). Per
size, :func:`bench.bench_usage.measure` runs both tools interleaved on a working copy: cold runs
into a new database, then incremental runs after one appended line (ccusage re-reads everything),
then times publishing the snapshot: DuckDB's log beside it (what an incremental run publishes) and
the database (what a run that checkpoints publishes, every few dozen). ``--files 0`` skips the
unchanged re-run. ``--skip-cold`` measures only the incremental runs (one untimed run builds the
database; :mod:`bench.bench_incremental`), which saves the cold runs of both tools.

Targets: cold >= 1.0x ccusage at 220 MB and 1 GB; incremental >= 20x ccusage at 1 GB and >= 30x at
3 GB; publishing the snapshot (the database, the larger) < 20 % of the incremental run; peak memory (PSS, all processes)
< 500 MB; the unchanged re-run over 100,000 files <= 1 s; total tokens equal to ccusage's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_incremental import measure_incremental  # noqa: E402
from bench.bench_incremental import report as incremental_report  # noqa: E402
from bench.bench_unchanged import measure_unchanged  # noqa: E402
from bench.bench_usage import MB, CorpusRun, measure, verdict  # noqa: E402
from bench.gen_corpus import DEFAULT_OUT, ensure_corpus  # noqa: E402
from tests import ccusage  # noqa: E402

#: Incremental ratio targets by corpus size (MB): at least 20x from 1 GB, 30x from 3 GB.
INCREMENTAL_TARGETS = ((3000, 30.0), (1000, 20.0))
COLD_TARGET = 1.0
COLD_TARGET_UP_TO_MB = 1000
PUBLISH_SHARE_TARGET = 0.20
PEAK_PSS_TARGET_MB = 500.0
UNCHANGED_TARGET_SECONDS = 1.0


def incremental_target(megabytes: int) -> float | None:
    return next((ratio for size, ratio in INCREMENTAL_TARGETS if megabytes >= size), None)


def report(megabytes: int, result: CorpusRun) -> list[str]:
    """One line of figures for a corpus, and the verdicts of the targets that apply to its size."""
    cold, theirs_cold = result.median("cold"), result.median("theirs_cold")
    again, theirs_again = result.median("incremental"), result.median("theirs_again")
    publish, publish_database = statistics.median(result.publish), statistics.median(result.publish_database)
    cold_ratio, incremental_ratio = theirs_cold / cold, theirs_again / again
    # The target's share is the database's publish: the log's is the incremental runs' own, but a
    # run that checkpoints (every few dozen) publishes the database.
    share = publish_database / again
    lines = [
        f"{result.size / MB:,.0f} MB, {result.files:,} files: cold {cold:.2f}s vs ccusage {theirs_cold:.2f}s = "
        f"{cold_ratio:.2f}x; incremental {again:.3f}s vs {theirs_again:.2f}s = {incremental_ratio:.1f}x; "
        f"snapshot publish: the log {publish:.3f}s = {publish / again:.0%}, the database (a run that checkpoints) "
        f"{publish_database:.3f}s = {share:.0%} of the incremental run; peak {result.peak_pss_mb:.0f} MB PSS; "
        f"tokens {result.our_tokens:,} / {result.their_tokens:,}"
    ]
    if megabytes <= COLD_TARGET_UP_TO_MB:
        lines.append(f"  cold >= {COLD_TARGET:.1f}x ccusage: {verdict(cold_ratio >= COLD_TARGET)}")
    target = incremental_target(megabytes)
    if target is not None:
        lines.append(f"  incremental >= {target:.0f}x ccusage: {verdict(incremental_ratio >= target)}")
    lines.append(
        f"  snapshot publish (the database) < {PUBLISH_SHARE_TARGET:.0%} of incremental: "
        f"{verdict(share < PUBLISH_SHARE_TARGET)}"
    )
    lines.append(f"  peak < {PEAK_PSS_TARGET_MB:.0f} MB PSS: {verdict(result.peak_pss_mb < PEAK_PSS_TARGET_MB)}")
    agree = result.our_tokens == result.their_tokens
    lines.append(f"  total tokens equal ccusage's: {verdict(agree)}")
    return lines


def incremental_only(megabytes: int, source: Path, launcher: Path, repeat: int) -> bool:
    """``--skip-cold``: print the incremental figures of one corpus and their verdict; whether the tokens agree."""
    result = measure_incremental(source, launcher, repeat)
    print("\n".join(incremental_report(result)), flush=True)
    target = incremental_target(megabytes)
    if target is not None:
        print(f"  incremental >= {target:.0f}x ccusage: {verdict(result.ratio >= target)}", flush=True)
    return result.our_tokens == result.their_tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="220:8:1,1000:16:2,3000:32:3", help="megabytes:users:seed, comma-separated")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--files", type=int, default=100_000, help="small files for the unchanged re-run (0: skip)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--skip-cold", action="store_true", help="measure the incremental runs only")
    args = parser.parse_args()
    launcher = ccusage.install()
    tokens_agree = True
    for size in args.sizes.split(","):
        megabytes, users, seed = (int(part) for part in size.split(":"))
        source = ensure_corpus(args.out, megabytes, users, seed)
        if args.skip_cold:
            tokens_agree &= incremental_only(megabytes, source, launcher, args.repeat)
            continue
        result = measure(source, launcher, args.repeat)
        tokens_agree &= result.our_tokens == result.their_tokens
        print("\n".join(report(megabytes, result)), flush=True)
    if args.files:
        first, again, db_bytes = measure_unchanged(args.out, args.files, max(args.repeat, 3))
        median = statistics.median(again)
        runs = ", ".join(f"{seconds:.2f}" for seconds in again)
        print(
            f"unchanged re-run over {args.files:,} files: {median:.2f}s median ({runs}); "
            f"first run {first:.1f}s; database {db_bytes / MB:.0f} MB"
        )
        print(f"  unchanged re-run <= {UNCHANGED_TARGET_SECONDS:.0f}s: {verdict(median <= UNCHANGED_TARGET_SECONDS)}")
    return 0 if tokens_agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
