"""The usage processor's database side, on real transcripts and real DuckDB files: global deduplication,
the reports' groupings, time zones and date filters, and price overrides."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pytest

from sessionpipe_contract import ENV_PRICING, EXIT_OK, EXIT_USAGE
from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.processors.usage import UsageProcessor
from sessionpipe_runner.processors.usage.report import render_text, usage_report
from sessionpipe_runner.runner import RunSettings, run
from tests.runner_support import CORPUS, sessionpipe

SNIFFLY = CORPUS / "sniffly/projects"
SNIFFLY_FILE = SNIFFLY / "-Users-chip-dev-ai-music/d3ad4cdc-5657-435d-98fa-0035d53e383d.jsonl"
VIEWER = CORPUS / "claude-code-viewer/projects"
TOKEN_FIELDS = ("inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens")


def run_usage(sessions: Path, db: Path, user: str | None = None, environ: Mapping[str, str] | None = None) -> None:
    settings = RunSettings(
        processor="usage", sessions=sessions, database=db, user=user, lease_wait_seconds=5, environ=environ or {}
    )
    summary = run(settings, UsageProcessor(), FileLease(db, "usage"))
    assert summary.exit_code == EXIT_OK, summary.message
    assert summary.errors == 0, summary.failures


@contextmanager
def reading(db: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        yield con
    finally:
        con.close()


def assert_same_totals(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Token counts equal; costs equal up to float summation order."""
    assert {k: v for k, v in ours.items() if k != "totalCost"} == {k: v for k, v in theirs.items() if k != "totalCost"}
    assert ours["totalCost"] == pytest.approx(theirs["totalCost"], rel=1e-12)


def place(root: Path, key: str, data: bytes) -> None:
    target = root / key
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


@pytest.fixture(scope="module")
def sniffly_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("sniffly") / "usage.duckdb"
    run_usage(SNIFFLY, db, user="chip")
    return db


def test_the_same_calls_in_two_users_files_count_once_for_the_first(tmp_path: Path) -> None:
    data = SNIFFLY_FILE.read_bytes()
    place(tmp_path / "sessions", "alice/-work/d3ad4cdc.jsonl", data)
    place(tmp_path / "sessions", "bob/-work/d3ad4cdc.jsonl", data)
    place(tmp_path / "one", "alice/-work/d3ad4cdc.jsonl", data)
    alone = tmp_path / "alone.duckdb"
    run_usage(tmp_path / "one", alone)
    both = tmp_path / "both.duckdb"
    run_usage(tmp_path / "sessions", both)
    with reading(alone) as con:
        single = usage_report(con, "user")
        rows_alone = con.execute("SELECT count(*) FROM usage_rows").fetchone()
    with reading(both) as con:
        shared = usage_report(con, "user")
        rows_both = con.execute("SELECT count(*) FROM usage_rows").fetchone()
    assert rows_alone is not None and rows_both is not None and rows_both[0] == 2 * rows_alone[0]
    assert [entry["user"] for entry in shared["users"]] == ["alice"]
    assert_same_totals(shared["totals"], single["totals"])


def test_streaming_snapshots_and_sidechain_copies_keep_one_row_per_call(tmp_path: Path) -> None:
    # Independent reading: per (message id, request id) keep the non-sidechain line, then the one
    # with the most tokens, then the earliest; lines without a message id all count.
    best: dict[tuple[str, str | None], tuple[tuple[Any, ...], list[int]]] = {}
    unkeyed = [0, 0, 0, 0]
    for path in sorted(VIEWER.rglob("*.jsonl")):
        for text in path.read_text().splitlines():
            record = json.loads(text)
            message = record.get("message")
            if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
                continue
            usage = message["usage"]
            split = usage.get("cache_creation")
            write = (
                split["ephemeral_5m_input_tokens"] + split["ephemeral_1h_input_tokens"]
                if split is not None
                else usage.get("cache_creation_input_tokens", 0)
            )
            tokens = [usage["input_tokens"], usage["output_tokens"], write, usage.get("cache_read_input_tokens", 0)]
            if "id" not in message:
                unkeyed = [a + b for a, b in zip(unkeyed, tokens, strict=True)]
                continue
            rank = (record.get("isSidechain", False), -sum(tokens), record["timestamp"])
            key = (message["id"], record.get("requestId"))
            if key not in best or rank < best[key][0]:
                best[key] = (rank, tokens)
    expected = [sum(column) for column in zip(unkeyed, *(tokens for _, tokens in best.values()), strict=True)]
    db = tmp_path / "viewer.duckdb"
    run_usage(VIEWER, db, user="viewer")
    with reading(db) as con:
        totals = usage_report(con, "month")["totals"]
        calls = con.execute("SELECT count(*) FROM usage_messages").fetchone()
        lines = con.execute("SELECT count(*) FROM usage_rows").fetchone()
    assert [totals[name] for name in TOKEN_FIELDS] == expected
    assert calls is not None and lines is not None and calls[0] == len(best) < lines[0]


def test_a_sidechain_copy_never_replaces_the_main_sessions_row_even_when_larger(tmp_path: Path) -> None:
    first_usage_line = next(t for t in SNIFFLY_FILE.read_text().splitlines() if '"usage"' in t)
    record = json.loads(first_usage_line)
    main_output = record["message"]["usage"]["output_tokens"]
    copy = json.loads(first_usage_line)
    copy["isSidechain"] = True
    copy["message"]["usage"]["output_tokens"] = main_output + 1000
    place(tmp_path / "sessions", "zed/-work/main.jsonl", (first_usage_line + "\n").encode())
    place(tmp_path / "sessions", "amy/-work/agent-1.jsonl", (json.dumps(copy) + "\n").encode())
    db = tmp_path / "db.duckdb"
    run_usage(tmp_path / "sessions", db)
    with reading(db) as con:
        kept = con.execute("SELECT session_file, output_tokens, is_sidechain FROM usage_messages").fetchall()
    assert kept == [("zed/-work/main.jsonl", main_output, False)]


def expected_days(db: Path, tz: str) -> dict[str, int]:
    zone = ZoneInfo(tz)
    days: dict[str, int] = defaultdict(int)
    with reading(db) as con:
        rows = con.execute(
            "SELECT epoch_ms(ts), input_tokens + output_tokens + cache_write_5m_tokens + cache_write_1h_tokens"
            " + cache_read_tokens FROM usage_messages"
        ).fetchall()
    for millis, tokens in rows:
        moment = datetime.fromtimestamp(millis / 1000, tz=UTC).astimezone(zone)
        days[moment.date().isoformat()] += tokens
    return dict(days)


@pytest.mark.parametrize("tz", ["UTC", "Pacific/Kiritimati", "America/Los_Angeles"])
def test_days_are_cut_in_the_requested_time_zone(sniffly_db: Path, tz: str) -> None:
    with reading(sniffly_db) as con:
        report = usage_report(con, "day", tz=tz)
    assert {day["date"]: day["totalTokens"] for day in report["daily"]} == expected_days(sniffly_db, tz)


def test_since_and_until_keep_whole_local_days(sniffly_db: Path) -> None:
    tz = "Pacific/Kiritimati"  # UTC+14: the corpus's one UTC day spans two local days here
    days = expected_days(sniffly_db, tz)
    assert len(days) >= 2
    last = max(days)
    with reading(sniffly_db) as con:
        only_last = usage_report(con, "month", since=date.fromisoformat(last), tz=tz)
        before_last = usage_report(con, "day", until=date.fromisoformat(min(days)), tz=tz)
        none = usage_report(con, "day", since=date(2030, 1, 1))
    assert only_last["totals"]["totalTokens"] == days[last]
    assert [d["date"] for d in before_last["daily"]] == [min(days)]
    assert none == {
        "daily": [],
        "totals": dict.fromkeys((*TOKEN_FIELDS, "totalTokens"), 0) | {"totalCost": 0.0},
    }


def test_every_grouping_accounts_for_the_same_totals(sniffly_db: Path) -> None:
    with reading(sniffly_db) as con:
        reports = {by: usage_report(con, by) for by in ("day", "month", "session", "user", "project", "model")}
        sessions = con.execute("SELECT count(*), sum(cost_usd) FROM usage_sessions").fetchone()
    totals = reports["month"]["totals"]
    for report in reports.values():
        assert_same_totals(report["totals"], totals)
    assert reports["user"]["users"][0]["user"] == "chip"
    assert reports["project"]["projects"][0]["project"] == "-Users-chip-dev-ai-music"
    assert [m["model"] for m in reports["model"]["models"]] == ["claude-sonnet-4-20250514"]
    assert sessions is not None and sessions[0] == len(reports["session"]["sessions"])
    assert sessions[1] == pytest.approx(totals["totalCost"])
    for entry in reports["session"]["sessions"]:
        assert entry["totalTokens"] == sum(entry[name] for name in TOKEN_FIELDS)
        assert entry["firstActivity"] <= entry["lastActivity"]


def test_text_report_lists_each_group_and_the_total(sniffly_db: Path) -> None:
    with reading(sniffly_db) as con:
        data = usage_report(con, "session")
    text = render_text(data, "session")
    for entry in data["sessions"]:
        assert entry["sessionId"] in text
    total_line = next(line for line in text.splitlines() if line.startswith("Total"))
    assert f"{data['totals']['totalTokens']:,}" in total_line
    assert f"${data['totals']['totalCost']:,.2f}" in total_line


def test_unknown_time_zone_is_a_one_line_usage_error(sniffly_db: Path) -> None:
    with reading(sniffly_db) as con, pytest.raises(ValueError, match="IANA"):
        usage_report(con, "day", tz="Mars/Olympus_Mons")
    result = sessionpipe("report", "usage", "--by", "day", "--tz", "Mars/Olympus_Mons", "--db", sniffly_db)
    assert result.returncode == EXIT_USAGE
    assert "IANA time zone" in result.stderr and "Traceback" not in result.stderr


def test_a_users_price_file_replaces_the_shipped_price_of_a_model(tmp_path: Path, sniffly_db: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps(
            {
                "claude-sonnet-4-20250514": {
                    "input_cost_per_token": 6e-06,
                    "output_cost_per_token": 3e-05,
                    "cache_creation_input_token_cost": 7.5e-06,
                    "cache_read_input_token_cost": 6e-07,
                }
            }
        )
    )
    db = tmp_path / "doubled.duckdb"
    run_usage(SNIFFLY, db, user="chip", environ={ENV_PRICING: str(prices)})
    with reading(sniffly_db) as con:
        shipped = usage_report(con, "month")["totals"]["totalCost"]
    with reading(db) as con:
        doubled = usage_report(con, "month")["totals"]["totalCost"]
        versions = con.execute("SELECT DISTINCT pricing_version FROM usage_rows").fetchall()
    assert doubled == pytest.approx(2 * shipped, rel=1e-9)
    assert versions == [("ccusage-20.0.24+prices.json",)]


def test_an_unreadable_price_file_fails_the_run_with_an_explanation(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text("{not json")
    db = tmp_path / "db.duckdb"
    settings = RunSettings(
        processor="usage", sessions=SNIFFLY, database=db, user="chip", environ={ENV_PRICING: str(prices)}
    )
    summary = run(settings, UsageProcessor(), FileLease(db, "usage"))
    assert summary.exit_code == EXIT_USAGE  # a bad setting, not a failure to retry
    assert summary.processed == 0
    assert f"price file {prices} is not JSON" in summary.message
