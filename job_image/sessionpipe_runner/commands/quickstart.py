"""``sessionpipe quickstart``: run ``usage`` on the embedded default and print a monthly report.

The README's first command: with no ``~/.claude/projects`` and no ``SESSIONPIPE_SESSIONS``, it runs
on demo transcripts it generates once under ``.sessionpipe/demo-sessions``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sessionpipe_contract import ENV_SESSIONS, EXIT_OK
from sessionpipe_runner.settings import CLAUDE_PROJECTS

NAME = "quickstart"
HELP = "run usage on the default sessions (or demo data) and report"
DEMO_SESSIONS = Path(".sessionpipe/demo-sessions")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No flags: the quickstart is the defaults."""


def handle(args: argparse.Namespace) -> int:
    from sessionpipe_runner.cli import main

    environ = dict(os.environ)
    sessions_arg: list[str] = []
    if not environ.get(ENV_SESSIONS) and not CLAUDE_PROJECTS.expanduser().is_dir():
        from sessionpipe_demo import generate_corpus

        if not DEMO_SESSIONS.is_dir():
            stats = generate_corpus(DEMO_SESSIONS, users=3, target_bytes=4 * 1024 * 1024, seed=7)
            print(f"no ~/.claude/projects here: generated demo transcripts ({stats}) in {DEMO_SESSIONS}")
        sessions_arg = ["--sessions", str(DEMO_SESSIONS)]
    code = main(["run", "--processor", "usage", *sessions_arg])
    if code != EXIT_OK:
        return code
    print()
    return main(["report", "usage", "--by", "month"])
