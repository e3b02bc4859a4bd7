"""The README's first command (``make run`` runs ``sessionpipe quickstart``) works on a fresh machine.

Fresh means: an empty home (no ``~/.claude/projects``), an empty working directory, no
``SESSIONPIPE_*`` settings. Quickstart must then generate demo transcripts, run the ``usage``
processor over them into ``./sessionpipe.duckdb`` and print a monthly usage report; run again, it
reuses the demo data and reads nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import duckdb
import pytest

from sessionpipe_contract import EXIT_OK
from sessionpipe_runner.cli import main
from tests.runner_support import CORPUS, sessionpipe_env

SNIFFLY_FILE = CORPUS / "sniffly/projects/-Users-chip-dev-ai-music/fed8ce56-bc79-401f-a83e-af084253362f.jsonl"


def quickstart(cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """``sessionpipe quickstart`` through its console script, as ``make run`` runs it."""
    script = shutil.which("sessionpipe", path=sysconfig.get_path("scripts"))
    assert script, "the sessionpipe console script is not installed in this environment"
    env = sessionpipe_env(HOME=str(home))
    env.pop("USER", None)
    return subprocess.run(
        [script, "quickstart"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def usage_lines_in(root: Path) -> tuple[int, dict[str, int]]:
    """(usage lines, output tokens per month after keeping the largest line of each call), counted here."""
    lines = 0
    calls: dict[tuple[str, str | None], tuple[str, int]] = {}
    for path in root.rglob("*.jsonl"):
        for raw in path.read_bytes().splitlines():
            record = json.loads(raw)
            message = record.get("message")
            if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
                continue
            lines += 1
            key = (message["id"], record.get("requestId"))
            output = message["usage"]["output_tokens"]
            if key not in calls or calls[key][1] < output:
                calls[key] = (record["timestamp"][:7], output)
    months: dict[str, int] = {}
    for month, output in calls.values():
        months[month] = months.get(month, 0) + output
    return lines, months


def test_quickstart_on_a_fresh_machine_prints_a_usage_report(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()

    first = quickstart(work, home)
    assert first.returncode == EXIT_OK, first.stderr
    assert "generated demo transcripts" in first.stdout
    assert "usage succeeded" in first.stdout
    demo = work / ".sessionpipe" / "demo-sessions"
    lines, output_by_month = usage_lines_in(demo)
    assert lines > 1000 and len(output_by_month) >= 6
    # the report: one row per month with its output tokens as counted from the files, and a total
    for month, output in output_by_month.items():
        row = re.search(rf"^{month}\s.*$", first.stdout, re.MULTILINE)
        assert row, f"no report row for {month}:\n{first.stdout}"
        assert f"{output:,}" in row.group(0).split(), row.group(0)
    assert re.search(r"^Total\s.*\$\d", first.stdout, re.MULTILINE)

    database = work / "sessionpipe.duckdb"
    con = duckdb.connect(str(database), read_only=True)
    try:
        stored = con.execute("SELECT count(*) FROM usage_rows").fetchone()
        states = con.execute("SELECT count(*) FROM session_processor_state WHERE status = 'done'").fetchone()
    finally:
        con.close()
    assert stored == (lines,)
    assert states == (sum(1 for _ in demo.rglob("*.jsonl")),)
    assert not (home / ".claude").exists(), "quickstart must not create a Claude directory in the user's home"

    again = quickstart(work, home)
    assert again.returncode == EXIT_OK, again.stderr
    assert "generated demo transcripts" not in again.stdout
    assert re.search(r"read 0, processed 0", again.stdout), again.stdout
    assert report_of(again.stdout) == report_of(first.stdout)


def report_of(stdout: str) -> str:
    """The report table quickstart printed after the run's summary line."""
    return stdout[stdout.index("\nmonth ") :]


def test_quickstart_with_an_empty_claude_projects_directory_uses_the_demo_data_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    (home / ".claude" / "projects").mkdir(parents=True)  # Claude Code installed, never used
    demo = work / ".sessionpipe" / "demo-sessions" / "demo" / "-home-demo-app"
    demo.mkdir(parents=True)  # demo data already generated: the test needs no generator run
    usage_line = next(line for line in SNIFFLY_FILE.read_bytes().splitlines() if b'"usage"' in line)
    (demo / "s1.jsonl").write_bytes(usage_line + b"\n")
    monkeypatch.setenv("HOME", str(home))
    for variable in (
        "SESSIONPIPE_SESSIONS",
        "SESSIONPIPE_DB",
        "SESSIONPIPE_PROCESSOR",
        "SESSIONPIPE_USER",
        "XDG_CONFIG_HOME",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    monkeypatch.chdir(work)

    assert main(["quickstart"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "note: no transcripts in ~/.claude/projects yet; showing the demo data instead" in out
    output_tokens = json.loads(usage_line)["message"]["usage"]["output_tokens"]
    total = re.search(r"^Total\s.*$", out, re.MULTILINE)
    assert total and f"{output_tokens:,}" in total.group(0).split(), out
