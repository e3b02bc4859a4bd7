"""``sessionpipe quickstart``: run ``usage`` on the embedded default and print a monthly report.

The README's first command: with no ``SESSIONPIPE_SESSIONS`` and no transcript in the Claude projects
folders (``~/.config/claude/projects``, ``~/.claude/projects``: missing, or empty on a fresh install),
it runs on demo transcripts it generates once under ``.sessionpipe/demo-sessions``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sessionpipe_contract import ENV_SESSIONS, EXIT_OK
from sessionpipe_runner.settings import claude_projects_dirs

NAME = "quickstart"
DESCRIPTION = (
    "Run the usage processor on your Claude Code transcripts (SESSIONPIPE_SESSIONS, else the projects folders "
    "of CLAUDE_CONFIG_DIR, else ~/.config/claude/projects and ~/.claude/projects) into ./sessionpipe.duckdb "
    "and print a monthly report; without any transcript there, on demo data it generates once under "
    ".sessionpipe/demo-sessions. `make run` runs it."
)
EXAMPLES = """example:
  sessionpipe quickstart"""
DEMO_SESSIONS = Path(".sessionpipe/demo-sessions")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No flags: the quickstart is the defaults."""


def handle(args: argparse.Namespace) -> int:
    from sessionpipe_runner.cli import main

    environ = dict(os.environ)
    sessions_arg: list[str] = []
    projects = claude_projects_dirs(environ)
    if not environ.get(ENV_SESSIONS) and not any(has_transcripts(folder) for folder in projects):
        from sessionpipe_demo import generate_corpus

        if projects:  # a fresh Claude Code install: a table of zeros would say nothing
            empty = " or ".join(tilde(folder) for folder in projects)
            print(f"note: no transcripts in {empty} yet; showing the demo data instead")
        if not DEMO_SESSIONS.is_dir():
            stats = generate_corpus(DEMO_SESSIONS, users=3, target_bytes=4 * 1024 * 1024, seed=7)
            print(f"no Claude Code transcripts here: generated demo transcripts ({stats}) in {DEMO_SESSIONS}")
        sessions_arg = ["--sessions", str(DEMO_SESSIONS)]
    code = main(["run", "--processor", "usage", *sessions_arg])
    if code != EXIT_OK:
        return code
    print()
    return main(["report", "usage", "--by", "month"])


def has_transcripts(root: Path) -> bool:
    """Whether ``root`` is a directory with at least one ``*.jsonl`` file below it (stops at the first)."""
    return root.is_dir() and next(root.rglob("*.jsonl"), None) is not None


def tilde(folder: Path) -> str:
    """``folder`` with the home directory written as ``~``."""
    home = Path.home()
    return f"~/{folder.relative_to(home)}" if folder.is_relative_to(home) else str(folder)
