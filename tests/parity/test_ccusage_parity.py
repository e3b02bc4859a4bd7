"""``sessionpipe report usage`` against ``ccusage claude monthly|weekly|session|blocks --json --offline -z UTC``.

Each corpus folder is a Claude config directory. sessionpipe reads its ``projects/`` as one user's
sessions (``--user <folder>``); ccusage reads it through ``CLAUDE_CONFIG_DIR``. Tokens of every kind
must be equal, costs within 0.1%, per month, per session, per model within each, and in total.
ccusage names a session by its file stem (files inside ``<session>/`` roll up into it) and shows the
project folder as ``projectPath``; the usage report uses the same two fields, so rows are matched
on (projectPath, sessionId). Blocks are compared field for field: the corpora are old, so no block is
active and burn rates and projections are null on both sides (tests/unit covers an active block).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sessionpipe_contract import EXIT_OK
from tests import ccusage
from tests.runner_support import CORPUS, run_summary, sessionpipe

pytestmark = pytest.mark.parity

FOLDERS = ("ccusage-fixtures", "claude-code-viewer", "sniffly")
TOKEN_FIELDS = ("inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens")
COST_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def ccusage_installed() -> Path:
    return ccusage.install()


def _close(ours: float, theirs: float) -> bool:
    return abs(ours - theirs) <= COST_TOLERANCE * abs(theirs) + 1e-12


def _report(db: Path, by: str, *extra: str) -> dict[str, Any]:
    result = sessionpipe("report", "usage", "--by", by, "--json", "--tz", "UTC", "--db", db, *extra)
    assert result.returncode == EXIT_OK, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.fixture(scope="module", params=FOLDERS)
def reports(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ccusage_installed: Path) -> Any:
    folder: str = request.param
    db = tmp_path_factory.mktemp(folder) / "usage.duckdb"
    run = sessionpipe(
        "run",
        "--processor",
        "usage",
        "--sessions",
        CORPUS / folder / "projects",
        "--user",
        folder,
        "--db",
        db,
        "--json",
    )
    summary = run_summary(run)
    assert run.returncode == EXIT_OK and summary["errors"] == 0, summary
    ours = {
        "monthly": _report(db, "month"),
        "session": _report(db, "session"),
        "weekly": _report(db, "week"),
        "weekly-monday": _report(db, "week", "--start-of-week", "monday"),
        "blocks": _report(db, "block"),
    }
    theirs = {report: ccusage.run(report, CORPUS / folder) for report in ("monthly", "session", "weekly", "blocks")}
    theirs["weekly-monday"] = ccusage.run("weekly", CORPUS / folder, "--start-of-week", "monday")
    return folder, ours, theirs


def assert_same_usage(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
    for name in (*TOKEN_FIELDS, "totalTokens"):
        assert ours[name] == theirs[name], f"{where}: {name} {ours[name]} != ccusage {theirs[name]}"
    assert _close(ours["totalCost"], theirs["totalCost"]), f"{where}: cost {ours['totalCost']} vs {theirs['totalCost']}"


def assert_same_models(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
    assert ours["modelsUsed"] == theirs["modelsUsed"], where
    our_models = {b["modelName"]: b for b in ours["modelBreakdowns"]}
    their_models = {b["modelName"]: b for b in theirs["modelBreakdowns"]}
    assert our_models.keys() == their_models.keys(), where
    for model, breakdown in their_models.items():
        for name in TOKEN_FIELDS:
            assert our_models[model][name] == breakdown[name], f"{where} {model}: {name}"
        assert _close(our_models[model]["cost"], breakdown["cost"]), f"{where} {model}: cost"


def test_monthly_report_matches_ccusage(reports: Any) -> None:
    folder, ours, theirs = reports
    our_months = {m["month"]: m for m in ours["monthly"]["monthly"]}
    their_months = {m["month"]: m for m in theirs["monthly"]["monthly"]}
    assert their_months, f"ccusage found no usage in {folder}"
    assert list(our_months) == list(their_months)
    for month, expected in their_months.items():
        assert_same_usage(our_months[month], expected, f"{folder} {month}")
        assert_same_models(our_months[month], expected, f"{folder} {month}")
    assert_same_usage(ours["monthly"]["totals"], theirs["monthly"]["totals"], f"{folder} totals")


@pytest.mark.parametrize("report", ["weekly", "weekly-monday"])
def test_weekly_report_matches_ccusage(reports: Any, report: str) -> None:
    folder, ours, theirs = reports
    our_weeks = {w["week"]: w for w in ours[report]["weekly"]}
    their_weeks = {w["week"]: w for w in theirs[report]["weekly"]}
    assert their_weeks, f"ccusage found no usage in {folder}"
    assert list(our_weeks) == list(their_weeks)
    for week, expected in their_weeks.items():
        assert set(expected) <= set(our_weeks[week]), f"{folder} {week}: fields"
        assert_same_usage(our_weeks[week], expected, f"{folder} {report} {week}")
        assert_same_models(our_weeks[week], expected, f"{folder} {report} {week}")
    assert_same_usage(ours[report]["totals"], theirs[report]["totals"], f"{folder} {report} totals")


def test_blocks_report_matches_ccusage(reports: Any) -> None:
    folder, ours, theirs = reports
    their_blocks = theirs["blocks"]["blocks"]
    assert their_blocks, f"ccusage found no blocks in {folder}"
    assert [b["id"] for b in ours["blocks"]["blocks"]] == [b["id"] for b in their_blocks]
    for our_block, their_block in zip(ours["blocks"]["blocks"], their_blocks, strict=True):
        where = f"{folder} block {their_block['id']}"
        assert our_block.keys() == their_block.keys(), where
        assert _close(our_block["costUSD"], their_block["costUSD"]), where
        assert {**our_block, "costUSD": 0} == {**their_block, "costUSD": 0}, where


def test_session_report_matches_ccusage(reports: Any) -> None:
    folder, ours, theirs = reports
    our_sessions = {(s["projectPath"], s["sessionId"]): s for s in ours["session"]["sessions"]}
    their_sessions = {(s["projectPath"], s["sessionId"]): s for s in theirs["session"]["sessions"]}
    assert their_sessions, f"ccusage found no sessions in {folder}"
    assert our_sessions.keys() == their_sessions.keys()
    for key, expected in their_sessions.items():
        where = f"{folder} session {key}"
        assert_same_usage(our_sessions[key], expected, where)
        assert_same_models(our_sessions[key], expected, where)
        assert our_sessions[key]["firstActivity"] == expected["firstActivity"], where
        assert our_sessions[key]["lastActivity"] == expected["lastActivity"], where
    assert_same_usage(ours["session"]["totals"], theirs["session"]["totals"], f"{folder} totals")


def test_shipped_prices_are_ccusages_offline_prices(ccusage_installed: Path) -> None:
    from sessionpipe_runner.processors.usage.pricing import shipped_content

    expected = ccusage.claude_price_file()
    shipped = shipped_content()
    assert shipped["version"] == f"ccusage-{ccusage.VERSION}"
    assert shipped["models"] == expected["models"]
    assert shipped["fast_multiplier_overrides"] == expected["fast_multiplier_overrides"]
    assert "claude-sonnet-4-20250514" in shipped["models"]


def _call(n: int, model: str, usage: dict[str, Any]) -> str:
    return json.dumps(
        {
            "type": "assistant",
            "timestamp": f"2026-01-09T10:00:{n:02d}.000Z",
            "sessionId": "probe",
            "version": "2.0.1",
            "requestId": f"req-{n}",
            "message": {"id": f"msg-{n}", "model": model, "role": "assistant", "usage": usage},
        },
        separators=(",", ":"),  # as Claude Code writes them; ccusage does not see lines spaced otherwise
    )


#: Calls that exercise each pricing rule: tiering above 200k in one bucket, the 1-hour cache write,
#: fast-mode multipliers (with and without one), an empty 5m/1h split, a name found by its Bedrock
#: spelling.
PRICE_PROBES: list[tuple[str, dict[str, Any]]] = [
    ("claude-sonnet-4-20250514", {"input_tokens": 10, "output_tokens": 100, "cache_read_input_tokens": 300000}),
    (
        "claude-opus-4-1-20250805",
        {
            "input_tokens": 10,
            "output_tokens": 100,
            "cache_creation_input_tokens": 2000,
            "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 1000},
        },
    ),
    ("claude-opus-4-6", {"input_tokens": 1000, "output_tokens": 1000, "speed": "fast"}),
    ("claude-opus-4-20250514", {"input_tokens": 1000, "output_tokens": 1000, "speed": "fast"}),
    ("claude-sonnet-4-5", {"input_tokens": 250000, "output_tokens": 1000}),
    (
        "claude-haiku-4-5",
        {"input_tokens": 1000, "output_tokens": 1000, "cache_creation_input_tokens": 500, "cache_creation": {}},
    ),
    ("claude-3-5-sonnet-20241022", {"input_tokens": 1000, "output_tokens": 1000}),
]


def test_pricing_rules_match_ccusage_call_by_call(tmp_path: Path, ccusage_installed: Path) -> None:
    config = tmp_path / "claude"
    session = config / "projects" / "probe-project" / "probe.jsonl"
    session.parent.mkdir(parents=True)
    session.write_text("".join(_call(n, model, usage) + "\n" for n, (model, usage) in enumerate(PRICE_PROBES)))
    db = tmp_path / "usage.duckdb"
    run = sessionpipe("run", "--processor", "usage", "--sessions", config / "projects", "--user", "probe", "--db", db)
    assert run.returncode == EXIT_OK, run.stderr
    ours = _report(db, "day")
    theirs = ccusage.run("daily", config)
    assert [d["date"] for d in ours["daily"]] == [d["date"] for d in theirs["daily"]] == ["2026-01-09"]
    assert_same_models(ours["daily"][0], theirs["daily"][0], "probe")
    assert_same_usage(ours["totals"], theirs["totals"], "probe totals")


def test_daily_report_has_ccusages_fields(tmp_path: Path, ccusage_installed: Path) -> None:
    folder = CORPUS / "ccusage-fixtures"
    db = tmp_path / "usage.duckdb"
    run = sessionpipe("run", "--processor", "usage", "--sessions", folder / "projects", "--user", "f", "--db", db)
    assert run.returncode == EXIT_OK, run.stderr
    ours, theirs = _report(db, "day"), ccusage.run("daily", folder)
    assert [d["date"] for d in ours["daily"]] == [d["date"] for d in theirs["daily"]]
    for our_day, their_day in zip(ours["daily"], theirs["daily"], strict=True):
        assert set(their_day) <= set(our_day)
        assert_same_usage(our_day, their_day, our_day["date"])
        assert_same_models(our_day, their_day, our_day["date"])
    assert set(theirs["totals"]) <= set(ours["totals"])


def test_usage_lines_spaced_as_valid_json_count_though_ccusage_20_0_24_skips_them(
    tmp_path: Path, ccusage_installed: Path
) -> None:
    """``"usage": {`` (a space after the colon) is valid JSON; ccusage 20.0.24 finds usage lines by
    the compact spelling only and leaves such a line out, sessionpipe counts it (README, "Reports")."""
    compact = json.loads(_call(1, "claude-sonnet-4-20250514", {"input_tokens": 10, "output_tokens": 100}))
    spaced = json.loads(_call(2, "claude-sonnet-4-20250514", {"input_tokens": 20, "output_tokens": 200}))
    config = tmp_path / "claude"
    session = config / "projects" / "probe-project" / "probe.jsonl"
    session.parent.mkdir(parents=True)
    session.write_text(json.dumps(compact, separators=(",", ":")) + "\n" + json.dumps(spaced) + "\n")
    assert '"usage": {' in session.read_text()
    db = tmp_path / "usage.duckdb"
    run = sessionpipe("run", "--processor", "usage", "--sessions", config / "projects", "--user", "probe", "--db", db)
    assert run.returncode == EXIT_OK, run.stderr
    assert ccusage.run("daily", config)["totals"]["totalTokens"] == 110  # the compact line only
    assert _report(db, "day")["totals"]["totalTokens"] == 330  # both
