"""Helpers for tests that run ``sessionpipe`` as a user would: as a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
PLUGINS = Path(__file__).resolve().parent / "plugins"


def install_test_plugin(site: Path) -> Path:
    """Make ``lines`` discoverable through the ``sessionpipe.processors`` entry-point group."""
    dist = site / "sessionpipe_testplugin-1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sessionpipe-testplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[sessionpipe.processors]\nlines = sessionpipe_testplugin:LinesProcessor\n")
    return site


def sessionpipe_env(site: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONPIPE_")}
    paths = [str(PLUGINS)]
    if site is not None:
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def sessionpipe(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "sessionpipe_runner.cli", *map(str, args)],
        env=env if env is not None else sessionpipe_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def start_sessionpipe(*args: str | Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start the CLI in a fresh interpreter without waiting; stdout and stderr are captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "sessionpipe_runner.cli", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Wait for a started CLI and return what it printed, as :func:`sessionpipe` does."""
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON summary a ``run --json`` printed on its last stdout line."""
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary (exit {result.returncode}); stderr:\n{result.stderr}\nstdout:\n{result.stdout}"
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


def assert_same(ours: Any, theirs: Any, where: str = "report") -> None:
    """Equal, costs up to float summation order (DuckDB sums floats in no fixed order)."""
    if isinstance(ours, float) or isinstance(theirs, float):
        assert ours == pytest.approx(theirs, rel=1e-12), where
    elif isinstance(ours, dict) and isinstance(theirs, dict):
        assert list(ours) == list(theirs), where
        for key in ours:
            assert_same(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list) and isinstance(theirs, list):
        assert len(ours) == len(theirs), where
        for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(mine, other, f"{where}[{index}]")
    else:
        assert ours == theirs, where
