"""A dashboard database built as a user would build one, and a real ``sessionpipe serve`` process.

The database holds the usage of the three shared corpora (read in place, one user each), of a
project folder named ``<img src=x onerror=alert(1)>`` (user ``mallory``) whose transcripts also
carry HTML in what the user said, and verification items from a replayed API on that folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sessionpipe_kubetest.cluster import free_port
from tests.anthropic_replay import ReplayServer, Responder
from tests.runner_support import CORPUS, run_summary, sessionpipe, sessionpipe_env
from tests.unit.test_usage_report import assistant_line
from tests.unit.test_verification_processor import quote_first_user_turn, write_session

#: The corpora, each read as one user's Claude projects folder named after it.
CORPORA = ("sniffly", "claude-code-viewer", "ccusage-fixtures")
XSS_FOLDER = "<img src=x onerror=alert(1)>"
XSS_USER = "mallory"
#: The dashboard's HTML views, as the tests and the benchmark request them.
PAGE_PATHS = ("/", "/?by=week", "/?by=month", "/users", "/projects", "/sessions", "/blocks", "/verification", "/runs")
XSS_QUOTE = "<script>alert('quote')</script> always run the linter before committing"


def run_usage(sessions: Path, user: str, db: Path, timeout: float = 300) -> None:
    """``sessionpipe run --processor usage`` of one user's folder into ``db``; it must succeed."""
    command = ("run", "--processor", "usage", "--sessions", sessions, "--user", user, "--db", db, "--json")
    result = sessionpipe(*command, timeout=timeout)
    summary = run_summary(result)
    assert result.returncode == 0 and summary["outcome"] == "succeeded", summary


def write_hostile_sessions(root: Path) -> Path:
    """Transcripts under a project folder whose name is HTML, with HTML in the user's words."""
    folder = root / XSS_FOLDER
    folder.mkdir(parents=True)
    usage = {"input_tokens": 1200, "output_tokens": 300, "cache_read_input_tokens": 5000}
    lines = [assistant_line(n, "claude-sonnet-4-20250514", usage, day="2025-07-14") for n in range(1, 4)]
    (folder / "usage-session.jsonl").write_text("".join(lines))
    write_session(folder / "talk-session.jsonl", [(XSS_QUOTE, "I will run the linter first.")])
    return root


def build_dashboard_db(workdir: Path) -> Path:
    """The database the dashboard tests read (see the module's docstring); returns its path."""
    db = workdir / "team.duckdb"
    for corpus in CORPORA:
        run_usage(CORPUS / corpus / "projects", corpus, db)
    hostile = write_hostile_sessions(workdir / "hostile")
    run_usage(hostile, XSS_USER, db)
    result = run_verification(hostile, db, quote_first_user_turn)
    summary = run_summary(result)
    assert result.returncode == 0 and summary["items"] >= 1, summary
    return db


def run_verification(hostile: Path, db: Path, responder: Responder) -> subprocess.CompletedProcess[str]:
    """``sessionpipe run --processor verification`` of the hostile sessions against a fake API answering
    with ``responder``."""
    server = ReplayServer(responder=responder)
    with server.running():
        env = sessionpipe_env(ANTHROPIC_API_KEY="sk-ant-test-key", ANTHROPIC_BASE_URL=server.url)
        argv = ("run", "--processor", "verification", "--sessions", hostile, "--user", XSS_USER, "--db", db, "--json")
        return sessionpipe(*argv, env=env)


def cli_json(*args: str | Path) -> object:
    """What a ``sessionpipe`` command prints with ``--json``, parsed; it must succeed."""
    result = sessionpipe(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def get(url: str, timeout: float = 30) -> tuple[int, str]:
    """(status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@contextmanager
def serving(db: Path, tz: str = "UTC") -> Iterator[str]:
    """A real ``sessionpipe serve`` process on a free loopback port; yields its base URL once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sessionpipe_runner.cli", "serve", "--db", str(db), "--port", str(port), "--tz", tz],
        env=sessionpipe_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(base + "/healthz", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"serve did not start: {process.communicate(timeout=5)}") from None
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
