"""``sessionpipe pricing``: the prices in use and where they come from; ``pricing import`` of a LiteLLM table.

The made-up model ``claude-nova-7-20270401`` exists in no price table: a transcript using it is
unpriced until a LiteLLM file that lists it is imported and named by ``SESSIONPIPE_PRICING``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from sessionpipe_contract import ENV_PRICING, EXIT_OK, EXIT_USAGE
from sessionpipe_runner.cli import main
from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.processors.usage import UsageProcessor
from sessionpipe_runner.processors.usage.pricing import SHIPPED_PRICING, load_prices
from sessionpipe_runner.processors.usage.report import usage_report
from sessionpipe_runner.runner import RunSettings, run
from tests.runner_support import CORPUS

TRANSCRIPT = CORPUS / "sniffly/projects/-Users-chip-dev-ai-music/ba79134d-b6e9-4867-af0c-6941038c9e4b.jsonl"
REAL_MODEL = "claude-sonnet-4-20250514"
NEW_MODEL = "claude-nova-7-20270401"
NEW_RATES = {
    "input_cost_per_token": 7e-06,
    "output_cost_per_token": 3.5e-05,
    "cache_creation_input_token_cost": 8.75e-06,
    "cache_read_input_token_cost": 7e-07,
}
LITELLM = {
    "sample_spec": {"max_tokens": "LEGACY parameter", "input_cost_per_token": 0.0, "output_cost_per_token": 0.0},
    NEW_MODEL: {**NEW_RATES, "max_input_tokens": 400000, "litellm_provider": "anthropic", "mode": "chat"},
    "gpt-9": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},
    "claude-image-1": {"output_cost_per_image": 0.04},
    "claude-broken-1": {"input_cost_per_token": "cheap", "output_cost_per_token": 1e-06},
}


def write_litellm(tmp_path: Path) -> Path:
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(json.dumps(LITELLM))
    return path


def import_prices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    prices = tmp_path / "prices.json"
    assert main(["pricing", "import", str(write_litellm(tmp_path)), "-o", str(prices)]) == EXIT_OK
    assert "imported 1 model(s)" in capsys.readouterr().err
    return prices


def test_import_keeps_the_priced_claude_models_in_the_projects_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = tmp_path / "prices.json"
    assert main(["pricing", "import", str(write_litellm(tmp_path)), "-o", str(prices)]) == EXIT_OK
    err = capsys.readouterr().err
    assert "left out: bad_price 1, no_token_prices 1, not_matching 2" in err
    content = json.loads(prices.read_text())
    assert content["format"] == 1 and content["version"].startswith("model_prices_and_context_window-")
    assert content["models"] == {NEW_MODEL: {**NEW_RATES, "max_input_tokens": 400000}}
    # what it wrote loads as a user's price file over the shipped one
    assert load_prices(prices).find(NEW_MODEL) is not None


def test_import_of_a_file_that_is_not_a_litellm_table_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["pricing", "import", str(bad)]) == EXIT_USAGE
    assert "must be a JSON object" in capsys.readouterr().err
    assert main(["pricing", "import", str(tmp_path / "missing.json")]) == EXIT_USAGE


def test_pricing_lists_each_model_with_where_its_price_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = import_prices(tmp_path, capsys)
    assert main(["pricing", "--json"]) == EXIT_OK
    shipped = json.loads(capsys.readouterr().out)
    assert {row["source"] for row in shipped["models"]} == {SHIPPED_PRICING}
    assert NEW_MODEL not in {row["model"] for row in shipped["models"]}

    assert main(["pricing", "--json", "--pricing", str(prices)]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    by_model = {row["model"]: row for row in listed["models"]}
    assert by_model[NEW_MODEL]["source"] == str(prices)
    assert by_model[NEW_MODEL]["input"] == pytest.approx(7.0)
    assert by_model[REAL_MODEL]["source"] == SHIPPED_PRICING
    assert listed["version"].startswith("ccusage-20.0.24+model_prices_and_context_window-")

    assert main(["pricing"]) == EXIT_OK  # the table for people names the shipped file
    assert f"from {SHIPPED_PRICING}" in capsys.readouterr().out


def run_usage_on(sessions: Path, db: Path, environ: dict[str, str]) -> dict[str, Any]:
    settings = RunSettings(processor="usage", sessions=sessions, database=db, user="chip", environ=environ)
    summary = run(settings, UsageProcessor(), FileLease(db, "usage"))
    assert summary.exit_code == EXIT_OK, summary.message
    con = duckdb.connect(str(db), read_only=True)
    try:
        report = usage_report(con, "month")
        tokens = con.execute(
            "SELECT sum(input_tokens), sum(output_tokens), sum(cache_write_5m_tokens), sum(cache_write_1h_tokens), "
            "sum(cache_read_tokens) FROM usage_messages"
        ).fetchone()
    finally:
        con.close()
    assert tokens is not None
    return {"report": report, "tokens": tokens, "issues": dict(summary.issues)}


def test_a_new_model_imported_from_a_litellm_file_is_priced_in_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sessions = tmp_path / "sessions" / "-Users-chip-dev-new"
    sessions.mkdir(parents=True)
    data = TRANSCRIPT.read_bytes()
    assert data.count(REAL_MODEL.encode()) > 10
    (sessions / "new-model.jsonl").write_bytes(data.replace(REAL_MODEL.encode(), NEW_MODEL.encode()))

    unpriced = run_usage_on(tmp_path / "sessions", tmp_path / "before.duckdb", {})
    assert unpriced["report"]["totals"]["totalCost"] == 0
    assert unpriced["issues"].get("missing_price", 0) > 0

    prices = import_prices(tmp_path, capsys)
    priced = run_usage_on(tmp_path / "sessions", tmp_path / "after.duckdb", {ENV_PRICING: str(prices)})
    input_tokens, output, write_5m, write_1h, read = priced["tokens"]
    assert input_tokens + output + write_5m + read > 0
    expected = (
        input_tokens * NEW_RATES["input_cost_per_token"]
        + output * NEW_RATES["output_cost_per_token"]
        + write_5m * NEW_RATES["cache_creation_input_token_cost"]
        + write_1h * 2 * NEW_RATES["input_cost_per_token"]
        + read * NEW_RATES["cache_read_input_token_cost"]
    )
    assert priced["report"]["totals"]["totalCost"] == pytest.approx(expected, rel=1e-9)
    assert "missing_price" not in priced["issues"]
