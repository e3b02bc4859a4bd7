"""The verification processor against a fake Anthropic API with latency: throughput and what a growing session costs.

``python -m bench.bench_verification [--sessions 24 --latency 1.0]`` runs the real runner in process
(real DuckDB files under a temporary folder) against :class:`tests.anthropic_fake_api.SlowAPI`, which
answers every call after ``--latency`` seconds:

1. sessions per minute at ``concurrency`` 1, 4 and 8 over ``--sessions`` one-exchange sessions;
2. a session growing in ten steps of ``--step-turns`` turns, one run after each step: the conversation
   characters sent to the API in total and per run, and the most times one turn was sent, *before*
   (the behaviour up to session 6: every run sends the session's last 40 turns, whatever was sent
   already; ``prepare``, the function that built that conversation, still renders it) and *after*
   (windows over the turns not yet extracted, with 4 context turns). Tokens are estimated as
   characters / 4, the fake API not having a tokenizer.

Targets: concurrency 4 at least 2x the sessions/minute of concurrency 1 (the issue's "well under half
the sequential time"); a growing session sends each turn at most twice.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.processors.verification import VerificationProcessor, prepare
from sessionpipe_runner.processors.verification.prompt import user_message
from sessionpipe_runner.runner import RunSettings, run
from sessionpipe_runner.summary import RunSummary
from tests.anthropic_fake_api import SlowAPI
from tests.unit.test_verification_processor import write_session

KEY = {"ANTHROPIC_API_KEY": "sk-ant-bench"}
TURN = re.compile(r"Turn (\d+) says")


def run_verification(sessions: Path, db: Path, processor: VerificationProcessor, config: dict[str, Any]) -> RunSummary:
    settings = RunSettings(
        processor="verification", sessions=sessions, database=db, lease_wait_seconds=5, config=config, environ=KEY
    )
    return run(settings, processor, FileLease(db, "verification"))


def throughput(root: Path, sessions: int, latency: float, concurrency: int) -> tuple[float, int]:
    """(sessions per minute, most calls seen in flight at once) of one cold run."""
    folder = root / f"c{concurrency}"
    for n in range(sessions):
        said = f"Session {n}: we deploy with Helm, never kubectl apply."
        write_session(folder / "sessions" / "alice" / "app" / f"s{n:03d}.jsonl", [(said, "Noted.")])
    api = SlowAPI(latency=latency)
    started = time.monotonic()
    summary = run_verification(
        folder / "sessions",
        folder / "db.duckdb",
        VerificationProcessor(http_client=api.client()),
        {"concurrency": concurrency},
    )
    elapsed = time.monotonic() - started
    assert summary.processed == sessions, summary.message
    return sessions / elapsed * 60, api.max_in_flight


def growth_steps(step_turns: int) -> list[list[tuple[str, str]]]:
    """The session's exchanges after each of the ten growth steps."""
    return [
        [(f"Turn {2 * n + 1} says: note {n}.", f"Reply {n}.") for n in range(step * step_turns // 2)]
        for step in range(1, 11)
    ]


def sends_of_one_turn(conversations: list[str]) -> int:
    sends: Counter[int] = Counter()
    for text in conversations:
        sends.update({int(turn) for turn in TURN.findall(text)})
    return max(sends.values())


def growing_before(root: Path, step_turns: int) -> tuple[list[int], int]:
    """Before: each run sent the session's last 40 turns (``prepare``, the code that did it, still renders them)."""
    path = root / "before.jsonl"
    sent = []
    for exchanges in growth_steps(step_turns):
        write_session(path, exchanges)
        sent.append(user_message(prepare(path.read_bytes(), 40, 4000).text)["content"])  # as sent
    return [len(text) for text in sent], sends_of_one_turn(sent)


def growing_after(root: Path, step_turns: int) -> tuple[list[int], int]:
    """After: one run per step against the fake API; what it was sent."""
    folder = root / "after"
    path = folder / "sessions" / "alice" / "app" / "growing.jsonl"
    api = SlowAPI()
    per_run = []
    for exchanges in growth_steps(step_turns):
        write_session(path, exchanges)
        before = len(api.requests)
        processor = VerificationProcessor(http_client=api.client())
        run_verification(folder / "sessions", folder / "db.duckdb", processor, {"concurrency": 1})
        per_run.append(sum(len(request.conversation) for request in api.requests[before:]))
    return per_run, sends_of_one_turn([request.conversation for request in api.requests])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=24)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--step-turns", type=int, default=10)
    args = parser.parse_args()
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="bench-verification-") as scratch:
        root = Path(scratch)
        rates = {}
        for concurrency in (1, 4, 8):
            rate, in_flight = throughput(root, args.sessions, args.latency, concurrency)
            rates[concurrency] = rate
            print(
                f"concurrency {concurrency}: {rate:.1f} sessions/minute ({args.sessions} sessions, "
                f"{args.latency} s latency, at most {in_flight} calls in flight)"
            )
        speedup = rates[4] / rates[1]
        verdicts.append(("concurrency 4 >= 2x concurrency 1", speedup >= 2.0, f"{speedup:.2f}x"))
        before, before_max = growing_before(root, args.step_turns)
        after, after_max = growing_after(root, args.step_turns)
        for label, per_run, most in (("before", before, before_max), ("after", after, after_max)):
            print(
                f"growing session, {label}: {sum(per_run):,} characters (~{sum(per_run) // 4:,} tokens) over 10 runs; "
                f"per run {per_run}; most sends of one turn {most}"
            )
        verdicts.append(("each turn sent at most twice", after_max <= 2, f"{after_max} (before: {before_max})"))
    for name, met, figure in verdicts:
        print(f"{'MET' if met else 'MISSED'}: {name}: {figure}")
    return 0 if all(met for _, met, _ in verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
