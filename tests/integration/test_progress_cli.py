"""``sessionpipe run`` shows its progress where it is watched: a bar on a terminal, log lines elsewhere.

Each test runs the real command over the real sniffly transcripts; the terminal is a pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from sessionpipe_contract import EXIT_OK
from tests.runner_support import CORPUS, sessionpipe, sessionpipe_env

pytestmark = pytest.mark.slow

SNIFFLY = CORPUS / "sniffly" / "projects"
FILES = len(list(SNIFFLY.rglob("*.jsonl")))


def run_args(db: Path) -> list[str | Path]:
    return ["run", "--processor", "usage", "--sessions", SNIFFLY, "--user", "chip", "--db", db]


def test_without_a_terminal_progress_is_logged_as_json_lines_when_asked(tmp_path: Path) -> None:
    result = sessionpipe(*run_args(tmp_path / "u.duckdb"), env=sessionpipe_env(SESSIONPIPE_LOG_FORMAT="json"))
    assert result.returncode == EXIT_OK, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    progress = [line for line in lines if line["logger"] == "sessionpipe_runner.progress"]
    assert progress, result.stderr
    first = progress[0]
    assert (first["files_done"], first["files_total"]) == (0, FILES)  # said as soon as the work is known
    assert first["message"].startswith(f"progress: 0/{FILES} files")
    assert first["level"] == "info" and first["time"].endswith("Z")


def test_without_a_terminal_progress_is_a_plain_line_by_default(tmp_path: Path) -> None:
    result = sessionpipe(*run_args(tmp_path / "u.duckdb"))
    assert result.returncode == EXIT_OK, result.stderr
    assert f"sessionpipe: progress: 0/{FILES} files, 0 B/" in result.stderr
    assert "\r" not in result.stderr  # no bar drawn into a log


def test_on_a_terminal_a_bar_is_drawn_in_place_and_erased(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "sessionpipe_runner.cli", *map(str, run_args(tmp_path / "u.duckdb"))],
            env=sessionpipe_env(),
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the run ended
                break
            if not chunk:
                break
            drawn += chunk
        stdout, _ = process.communicate(timeout=120)
    finally:
        os.close(leader)
    assert process.returncode == EXIT_OK, drawn
    text = drawn.decode()
    frames = text.split("\r\x1b[2K")
    assert len(frames) >= 3 and frames[-1] == "", text  # drawn at least twice, then erased
    assert f"] 100% {FILES}/{FILES} files" in frames[-2]
    assert "sessionpipe: progress" not in text  # a terminal gets the bar, not log lines
    assert "usage succeeded" in stdout
