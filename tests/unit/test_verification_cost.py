"""What the LLM calls cost in dollars: from the model's price, summed per run, shown by the report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import duckdb

from sessionpipe_runner.processors.verification import VerificationProcessor
from sessionpipe_runner.processors.verification.report import VerificationReport
from tests.anthropic_replay import AnthropicReplay, tool_reply
from tests.unit.test_verification_processor import run_once, write_session

PRICE_FILE = Path(__file__).resolve().parents[2] / "job_image/sessionpipe_runner/processors/usage/pricing.json"


def test_each_run_counts_its_llm_cost_from_the_models_price_and_the_report_sums_the_runs(tmp_path: Path) -> None:
    sonnet = json.loads(PRICE_FILE.read_text())["models"]["claude-sonnet-4-6"]
    per_call = (
        1000 * sonnet["input_cost_per_token"]
        + 200 * sonnet["output_cost_per_token"]
        + 500 * sonnet["cache_creation_input_token_cost"]
        + 3000 * sonnet["cache_read_input_token_cost"]
    )
    sessions = tmp_path / "sessions"
    replay = AnthropicReplay(
        responder=lambda body: tool_reply([], input_tokens=1000, output_tokens=200, cache_write=500, cache_read=3000)
    )
    db = tmp_path / "db.duckdb"
    costs = []
    for count in (2, 3):  # two runs: two sessions, then one more
        for n in range(count):
            write_session(sessions / "alice" / "app" / f"s{n}.jsonl", [(f"Fact {n} holds.", "OK.")])
        summary = run_once(sessions, db, VerificationProcessor(http_client=replay.client(), sleep=lambda s: None))
        costs.append(summary.counters["llm_cost_microusd"])
    assert costs == [round(2 * per_call * 1e6), round(1 * per_call * 1e6)]

    with duckdb.connect(str(db), read_only=True) as con:
        data, text = VerificationReport().build(con, argparse.Namespace())
    assert data["llm"] == {"runs": 2, "calls": 3, "tokens": 3 * 4700, "cost_usd": round(3 * per_call, 6)}
    assert f"${3 * per_call:.4f}" in text
