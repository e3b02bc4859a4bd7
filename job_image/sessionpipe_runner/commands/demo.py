"""``sessionpipe demo``: generate realistic demo transcripts (:mod:`sessionpipe_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sessionpipe_contract import EXIT_OK
from sessionpipe_runner.settings import arg_type, positive_int

NAME = "demo"
DESCRIPTION = (
    "Write realistic Claude Code transcripts (several users, projects, models and months) under DIR, "
    "in the <user>/<project>/<session>.jsonl layout the runner reads. The same seed writes the same files."
)
EXAMPLES = """examples:
  sessionpipe demo --out demo-sessions
  sessionpipe demo --out demo-sessions --users 5 --megabytes 50 --seed 1"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to write the transcripts under")
    p.add_argument("--users", type=arg_type(positive_int), default=3, metavar="N", help="users (default 3)")
    p.add_argument(
        "--megabytes", type=arg_type(positive_int), default=4, metavar="N", help="about how much to write (default 4)"
    )
    p.add_argument("--seed", type=int, default=7, metavar="N", help="random seed (default 7)")


def handle(args: argparse.Namespace) -> int:
    from sessionpipe_demo import generate_corpus

    stats = generate_corpus(args.out, users=args.users, target_bytes=args.megabytes * 1024 * 1024, seed=args.seed)
    print(f"wrote {stats} under {args.out}")
    return EXIT_OK
