"""``sessionpipe run``: run one processor over the sessions once, and print its summary."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sessionpipe_contract import (
    DEFAULT_DB_MEMORY,
    DEFAULT_LEASE_DURATION_SECONDS,
    DEFAULT_LEASE_WAIT_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TERMINATION_LOG,
    ENV_CONFIG,
    ENV_DB_MEMORY,
    ENV_LEASE,
    ENV_LEASE_DURATION,
    ENV_LEASE_NAMESPACE,
    ENV_MAX_ATTEMPTS,
    ENV_MAX_SESSIONS,
    ENV_PROCESSOR,
    ENV_SESSIONS,
    ENV_TERMINATION_LOG,
    ENV_USER,
    ENV_WORKERS,
    EXIT_FAILED,
)
from sessionpipe_runner.commands.common import add_db_flag, add_lease_wait_flag, load_processor
from sessionpipe_runner.names import printable
from sessionpipe_runner.scanindex import PendingScan
from sessionpipe_runner.settings import (
    arg_type,
    lease_settings,
    memory_size,
    non_negative_int,
    parse_config,
    positive_int,
    run_settings,
)

if TYPE_CHECKING:
    from sessionpipe_runner.lease import Lease
    from sessionpipe_runner.progress import Progress
    from sessionpipe_runner.summary import RunSummary

NAME = "run"
DESCRIPTION = (
    "Run one processor over the session files once: scan the sessions directory, process the new and "
    "changed files into the DuckDB file, print a summary. Every flag has a SESSIONPIPE_* variable; the "
    "flag wins."
)
EXAMPLES = """examples:
  sessionpipe run --processor usage
  sessionpipe run --processor usage --sessions /data/sessions --db team.duckdb --json
  sessionpipe run --processor verification --config '{"max_turns": 40}' --max-sessions 10"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--processor", metavar="NAME", help=f"processor name (env {ENV_PROCESSOR})")
    p.add_argument(
        "--sessions",
        type=Path,
        action="append",
        metavar="DIR",
        help=f"sessions root; repeat to read several in one run (env {ENV_SESSIONS}, one DIR; default: the Claude "
        "projects folders ccusage reads: each of CLAUDE_CONFIG_DIR's, else ~/.config/claude/projects and "
        "~/.claude/projects)",
    )
    p.add_argument(
        "--user", metavar="NAME", help=f"read --sessions as this one user's Claude projects/ directory (env {ENV_USER})"
    )
    add_db_flag(p)
    p.add_argument(
        "--lease",
        metavar="file|k8s:NAME",
        help=f"single-writer lease: 'file' or 'k8s:NAME' (env {ENV_LEASE}; default file)",
    )
    add_lease_wait_flag(p, DEFAULT_LEASE_WAIT_SECONDS)
    p.add_argument(
        "--lease-namespace",
        metavar="NS",
        help=f"namespace of a k8s: lease (env {ENV_LEASE_NAMESPACE}; default the pod's or the kubeconfig's)",
    )
    p.add_argument(
        "--lease-duration",
        type=arg_type(positive_int),
        metavar="SECONDS",
        help=f"duration of a k8s: lease (env {ENV_LEASE_DURATION}; default {DEFAULT_LEASE_DURATION_SECONDS})",
    )
    p.add_argument(
        "--max-sessions",
        type=arg_type(non_negative_int),
        metavar="N",
        help=f"process at most N sessions this run, 0 for no cap (env {ENV_MAX_SESSIONS})",
    )
    p.add_argument(
        "--max-attempts",
        type=arg_type(positive_int),
        metavar="N",
        help=f"failures before a session is quarantined (env {ENV_MAX_ATTEMPTS}; default {DEFAULT_MAX_ATTEMPTS})",
    )
    p.add_argument(
        "--workers",
        type=arg_type(non_negative_int),
        metavar="N",
        help="workers that read and process files, for processors that allow it (processes, or threads for a "
        "processor that releases the GIL): 1 for none besides the runner, 0 (default) for one per available "
        "CPU when there are over 32 MB to read "
        f"(env {ENV_WORKERS})",
    )
    p.add_argument(
        "--db-memory",
        type=arg_type(memory_size),
        metavar="SIZE",
        help=f"what DuckDB may keep in memory while writing, such as 256MB or 1GiB; it spills to disk beyond "
        f"(env {ENV_DB_MEMORY}; default {DEFAULT_DB_MEMORY})",
    )
    p.add_argument(
        "--config",
        type=arg_type(parse_config),
        metavar="JSON|@FILE",
        help=f"processor settings as a JSON object or @file (env {ENV_CONFIG})",
    )
    p.add_argument(
        "--termination-log",
        type=Path,
        metavar="FILE",
        help=f"also write a compact summary here (env {ENV_TERMINATION_LOG}; "
        f"default {DEFAULT_TERMINATION_LOG} in a pod)",
    )
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")


def handle(args: argparse.Namespace) -> int:
    settings = run_settings(args, os.environ)
    # The walk (kernel work, in a thread, without the GIL) starts before the processor and the
    # runner's modules load and the lease is taken: on an incremental run it is the longest part,
    # and the loading (~25 ms) can go on beside it on a second core.
    scan = PendingScan.of_run(settings)
    try:
        processor = load_processor(settings.processor)
        from sessionpipe_runner.lease.factory import make_lease

        lease = make_lease(lease_settings(args, settings.environ), settings)
    except BaseException:
        scan.join()
        raise
    from sessionpipe_runner.progress import ProgressLog, TerminalBar
    from sessionpipe_runner.runner import run

    shown = TerminalBar(sys.stderr) if sys.stderr.isatty() else ProgressLog()
    try:
        summary = run(settings, processor, lease, progress_reporter(shown, lease), scan=scan)
    finally:
        shown.close()
    print_summary(summary, as_json=args.json)
    return summary.exit_code if summary.exit_code is not None else EXIT_FAILED


def progress_reporter(shown: Callable[[Progress], None], lease: Lease) -> Callable[[Progress], None]:
    """Show progress (a bar on a terminal, else log lines) and, on a cluster lease, publish it there."""
    # A cluster lease publishes progress; asked by attribute, so a laptop's run never imports the
    # Kubernetes client to find out.
    publish: Callable[[str], None] | None = getattr(lease, "publish_progress", None)

    def report(progress: Progress) -> None:
        if publish is not None:
            publish(progress.annotation())
        shown(progress)

    return report


def print_summary(summary: RunSummary, *, as_json: bool) -> None:
    """The summary as JSON, or as a few lines for a person."""
    if as_json:
        print(summary.to_json())
        return
    counts = (
        f"scanned {summary.scanned}, unchanged {summary.unchanged}, read {summary.hashed}, "
        f"processed {summary.processed}, skipped {summary.skipped}, errors {summary.errors}, "
        f"quarantined {summary.quarantined}, items {summary.items}"
    )
    print(f"{summary.processor} {summary.outcome} in {summary.duration_seconds:.2f}s: {counts}")
    if summary.issues:
        print("  noted: " + ", ".join(f"{reason} {count}" for reason, count in sorted(summary.issues.items())))
    for key, error in list(summary.failures.items())[:10]:
        print(f"  failed: {printable(key)}: {printable(error)}")  # one line each, whatever the name
    if summary.message:
        print(f"  {summary.message}")
