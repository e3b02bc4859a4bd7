"""Generate (once) the benchmark corpus with sessionpipe's own generator.

``python bench/gen_corpus.py [--megabytes 220] [--users 8] [--seed 1] [--out bench/out]`` writes
``<out>/corpus-s<seed>-u<users>-<megabytes>mb/`` (a sessions volume: ``<user>/<project>/<session>.jsonl``)
unless it is already there, and prints its path. A ``<name>.complete`` marker beside it, holding the
corpus statistics, is written last, so an interrupted generation is redone, not reused.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from sessionpipe_demo import generate_corpus

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
MARKER_SUFFIX = ".complete"


def corpus_dir(out: Path, megabytes: int, users: int, seed: int) -> Path:
    return out / f"corpus-s{seed}-u{users}-{megabytes}mb"


def marker_of(corpus: Path) -> Path:
    return corpus.with_name(corpus.name + MARKER_SUFFIX)


def ensure_corpus(out: Path, megabytes: int, users: int, seed: int, *, quiet: bool = False) -> Path:
    """The corpus for these parameters, generated if it is not complete yet."""
    target = corpus_dir(out, megabytes, users, seed)
    marker = marker_of(target)
    if marker.exists():
        return target
    if target.exists():
        shutil.rmtree(target)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("*\n")  # generated data, never committed
    started = time.perf_counter()
    stats = generate_corpus(target, users=users, target_bytes=megabytes * 1024 * 1024, seed=seed)
    marker.write_text(f"{stats}\n")
    if not quiet:
        print(f"generated {stats} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=220)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    path = ensure_corpus(args.out, args.megabytes, args.users, args.seed)
    print(path)
    print(marker_of(path).read_text().strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
