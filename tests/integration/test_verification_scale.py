"""The verification processor at team scale: calls in flight at once, shared rate limits, exact budgets.

These runs go through the real runner on real DuckDB files against :class:`tests.anthropic_fake_api.SlowAPI`,
which takes real time to answer: they measure wall-clock ratios, so they live in the integration tier.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sessionpipe_contract import OUTCOME_STOPPED, OUTCOME_SUCCEEDED, OUTCOME_TERMINATED
from sessionpipe_runner.processors.verification import VerificationProcessor
from tests.anthropic_fake_api import BatchAPI, SlowAPI, serving
from tests.anthropic_replay import Reply, rate_limited, tool_reply
from tests.runner_support import sessionpipe_env
from tests.support.db import rows
from tests.unit.test_verification_batch import quote_the_user
from tests.unit.test_verification_processor import run_once, write_session

LATENCY = 1.0
WRAPPER = Path(__file__).resolve().parent.parent / "crash_wrapper.py"


def many_sessions(root: Path, count: int) -> Path:
    for n in range(count):
        write_session(
            root / "alice" / "-srv-app" / f"s{n:03d}.jsonl",
            [(f"Session {n}: we deploy with Helm, never kubectl apply.", "Noted.")],
        )
    return root


def test_four_calls_in_flight_take_well_under_half_the_sequential_time(tmp_path: Path) -> None:
    sessions = many_sessions(tmp_path / "sessions", 24)
    api = SlowAPI(latency=LATENCY)
    started = time.monotonic()
    summary = run_once(
        sessions, tmp_path / "db.duckdb", VerificationProcessor(http_client=api.client()), config={"concurrency": 4}
    )
    elapsed = time.monotonic() - started
    assert summary.outcome == OUTCOME_SUCCEEDED and summary.processed == 24, summary.message
    assert api.max_in_flight >= 3
    sequential = 24 * LATENCY
    assert elapsed < 0.5 * sequential, f"{elapsed:.1f} s for 24 sessions; one at a time takes {sequential:.0f} s"
    print(f"24 sessions, {LATENCY} s latency, concurrency 4: {elapsed:.1f} s, max in flight {api.max_in_flight}")


def test_a_429_with_retry_after_holds_back_every_caller_and_every_session_completes(tmp_path: Path) -> None:
    sessions = many_sessions(tmp_path / "sessions", 12)
    api = SlowAPI(latency=0.2)
    api.throttle(3, retry_after=1.0, after=4)  # while four sessions have calls in flight
    summary = run_once(
        sessions, tmp_path / "db.duckdb", VerificationProcessor(http_client=api.client()), config={"concurrency": 4}
    )
    assert summary.outcome == OUTCOME_SUCCEEDED and summary.processed == 12, summary.message
    assert summary.counters["llm_retries"] == summary.counters["llm_retries_http_429"] == 3
    assert api.early == [], f"{len(api.early)} calls came before their retry-after had passed: {api.early}"
    done = rows(tmp_path / "db.duckdb", "SELECT count(*) FROM session_processor_state WHERE status = 'done'")
    assert done == [(12,)]


def test_a_used_up_rate_limit_holds_back_every_caller_until_its_reset(tmp_path: Path) -> None:
    sessions = many_sessions(tmp_path / "sessions", 12)
    api = SlowAPI(latency=0.2)
    api.exhaust(after=3, reset_in=1.0)  # the third answer: no requests left for a second
    processor = VerificationProcessor(http_client=api.client())
    summary = run_once(sessions, tmp_path / "db.duckdb", processor, config={"concurrency": 4})
    assert summary.outcome == OUTCOME_SUCCEEDED and summary.processed == 12, summary.message
    assert api.early == [], f"{len(api.early)} calls came before the rate limit's reset: {api.early}"
    gaps = [later - earlier for earlier, later in zip(api.arrivals, api.arrivals[1:], strict=False)]
    assert max(gaps) >= 0.9  # the pause really happened


def test_the_token_budget_is_never_overshot_by_calls_in_flight(tmp_path: Path) -> None:
    sessions = many_sessions(tmp_path / "sessions", 12)
    api = SlowAPI(latency=0.3)
    db = tmp_path / "db.duckdb"
    processor = VerificationProcessor(http_client=api.client())
    # Each call is estimated at a little over 5,000 tokens (4,096 of them the output allowance) and
    # uses 1,380: a 16,000-token budget lets three calls be reserved at once, not four.
    summary = run_once(sessions, db, processor, config={"concurrency": 4, "max_tokens_per_run": 16_000})
    assert summary.outcome == OUTCOME_STOPPED
    assert processor.budget.tokens_used <= 16_000
    assert summary.counters["llm_tokens"] == processor.budget.tokens_used
    assert len(api.requests) == summary.processed  # every call paid for was committed
    assert rows(db, "SELECT count(*) FROM session_processor_state WHERE status = 'done'") == [(summary.processed,)]


def test_sigterm_cancels_the_calls_in_flight_and_nothing_is_sent_or_committed_after(tmp_path: Path) -> None:
    sessions = many_sessions(tmp_path / "sessions", 16)
    db = tmp_path / "db.duckdb"
    at_signal: dict[str, int] = {}

    def responder(body: dict[str, Any]) -> Reply:
        with api.lock:
            answered = api.answered
            api.answered += 1
        if answered == 5:
            # The sixth answer: a 429 that holds every caller back for a second, and a SIGTERM
            # while they wait. Cancelled, they send nothing more; otherwise they would, a second on.
            at_signal["answered"] = answered
            os.kill(os.getpid(), signal.SIGTERM)
            return rate_limited(retry_after=1.0)
        return tool_reply([])

    api = SlowAPI(responder, latency=0.5)
    api.answered = 0
    processor = VerificationProcessor(http_client=api.client())
    summary = run_once(sessions, db, processor, config={"concurrency": 4})
    sent_at_end = len(api.requests)
    assert summary.outcome == OUTCOME_TERMINATED
    time.sleep(2.0)  # past the retry-after and a latency: a call still waiting would have been sent
    assert len(api.requests) == sent_at_end, "requests were sent after the run ended"
    assert sent_at_end < 16
    done = rows(db, "SELECT count(*) FROM session_processor_state WHERE status = 'done'")[0][0]
    assert done <= at_signal["answered"], "a session answered after the SIGTERM was committed"


def test_sigkill_between_collecting_a_batch_and_committing_it_loses_nothing(tmp_path: Path) -> None:
    sessions = many_sessions(tmp_path / "sessions", 3)
    db = tmp_path / "db.duckdb"
    api = BatchAPI(quote_the_user)
    submitted = run_once(sessions, db, VerificationProcessor(http_client=api.client()), config={"mode": "batch"})
    assert submitted.issues["waiting_for_result"] == 3
    api.end()
    with serving(api) as url:
        env = sessionpipe_env(
            ANTHROPIC_API_KEY="sk-ant-test", ANTHROPIC_BASE_URL=url, SESSIONPIPE_CONFIG='{"mode": "batch"}'
        )
        args = ["run", "--processor", "verification", "--sessions", str(sessions), "--db", str(db)]
        point = "fn:sessionpipe_runner.processors.verification.store:replace_sessions:1"  # results read, not stored
        killed = subprocess.run(
            [sys.executable, str(WRAPPER), point, "--", *args], env=env, capture_output=True, text=True, timeout=120
        )
    assert killed.returncode == -signal.SIGKILL, f"the kill point was never reached: {killed.stderr}"
    assert any(request.url.endswith("/results") for request in api.requests)  # it had collected
    assert rows(db, "SELECT count(*) FROM knowledge_evidence") == [(0,)]
    assert rows(db, "SELECT count(*) FROM verification_batch_requests") == [(3,)]
    again = run_once(sessions, db, VerificationProcessor(http_client=api.client()), config={"mode": "batch"})
    assert again.processed == 3 and len(api.created) == 1  # the same results, read again: nothing resubmitted
    assert rows(db, "SELECT count(*) FROM knowledge_evidence") == [(3,)]
