"""One contender for a database's Kubernetes Lease: ``rounds`` runs of the real runner, in-process.

Used by the lease tests as a separate process (``python -m tests.lease_contender``). Before each run
it appends a line to its own session file, so every run writes rows; around each run it prints
when it held the lease by this machine's clock, so the test can check that no two overlap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sessionpipe_runner.lease import LeaseNotAcquired
from sessionpipe_runner.lease.k8s import KubernetesLease, load_api_client
from sessionpipe_runner.runner import RunSettings, run

sys.path.insert(0, str(Path(__file__).resolve().parent / "plugins"))
from sessionpipe_testplugin import LinesProcessor


class _Reporting(KubernetesLease):
    """The real lease, noting when it was won and when it was given up."""

    held: list[float]

    def acquire(self, wait_seconds: float) -> int:
        epoch = super().acquire(wait_seconds)
        self.held = [time.time()]
        return epoch

    def release(self) -> None:
        if getattr(self, "held", None):
            self.held.append(time.time())
        super().release()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--lease", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--sessions", type=Path, required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--duration", type=int, default=3)
    args = parser.parse_args()
    api_client, namespace = load_api_client(args.namespace)
    lease = _Reporting(args.lease, namespace, args.name, api_client, duration_seconds=args.duration)
    settings = RunSettings(processor="lines", sessions=args.sessions, database=args.db, lease_wait_seconds=120)
    own = args.sessions / "contenders" / f"{args.name}.jsonl"
    own.parent.mkdir(parents=True, exist_ok=True)
    for number in range(args.rounds):
        with own.open("a") as out:
            out.write(json.dumps({"contender": args.name, "round": number}) + "\n")
        lease.held = []
        try:
            summary = run(settings, LinesProcessor(), lease)
        except LeaseNotAcquired as error:  # run() reports this in the summary; never expected here
            print(json.dumps({"error": str(error)}), flush=True)
            return 1
        print(
            json.dumps(
                {
                    "contender": args.name,
                    "round": number,
                    "exit_code": summary.exit_code,
                    "epoch": summary.writer_epoch,
                    "processed": summary.processed,
                    "held": lease.held,
                    "message": summary.message,
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
