"""The usage processor's database side, on real transcripts and real DuckDB files: global deduplication,
the reports' groupings, time zones and date filters, and price overrides."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pytest

from sessionpipe_contract import ENV_PRICING, EXIT_OK, EXIT_USAGE
from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.processors.usage import UsageProcessor
from sessionpipe_runner.processors.usage.report import (
    Selection,
    UsageReport,
    local_timezone,
    usage_report,
    week_day,
)
from sessionpipe_runner.processors.usage.text import render_text
from sessionpipe_runner.reports import iso_date
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


def call_tokens(db: Path) -> list[tuple[datetime, int]]:
    """Each deduplicated call's moment (UTC) and tokens of every kind, read directly."""
    with reading(db) as con:
        rows = con.execute(
            "SELECT epoch_ms(ts), input_tokens + output_tokens + cache_write_5m_tokens + cache_write_1h_tokens"
            " + cache_read_tokens FROM usage_messages"
        ).fetchall()
    return [(datetime.fromtimestamp(millis / 1000, tz=UTC), tokens) for millis, tokens in rows]


def expected_days(db: Path, tz: str) -> dict[str, int]:
    zone = ZoneInfo(tz)
    days: dict[str, int] = defaultdict(int)
    for moment, tokens in call_tokens(db):
        days[moment.astimezone(zone).date().isoformat()] += tokens
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
        reports = {by: usage_report(con, by) for by in ("day", "week", "month", "session", "user", "project", "model")}
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


def expected_weeks(db: Path, first_day: int) -> dict[str, int]:
    """Tokens per week (named by its first day, ``first_day`` 0 = Sunday) in UTC, computed in Python."""
    weeks: dict[str, int] = defaultdict(int)
    for moment, tokens in call_tokens(db):
        day = moment.date()
        from_sunday = (day.weekday() + 1) % 7
        weeks[(day - timedelta(days=(from_sunday - first_day) % 7)).isoformat()] += tokens
    return dict(weeks)


@pytest.mark.parametrize(("start", "first_day"), [("sunday", 0), ("monday", 1), ("saturday", 6)])
def test_weeks_are_named_by_their_first_day(sniffly_db: Path, start: str, first_day: int) -> None:
    with reading(sniffly_db) as con:
        report = usage_report(con, "week", selection=Selection(start_of_week=week_day(start)))
    weeks = {week["week"]: week["totalTokens"] for week in report["weekly"]}
    assert weeks == expected_weeks(sniffly_db, first_day)
    for week in weeks:
        assert (date.fromisoformat(week).weekday() + 1) % 7 == first_day


def test_week_days_are_named_as_ccusage_names_them() -> None:
    assert week_day("Sunday") == 0 and week_day("monday") == 1
    with pytest.raises(argparse.ArgumentTypeError, match="day of the week"):
        week_day("someday")


def test_user_and_project_filters_keep_only_their_calls(tmp_path: Path) -> None:
    data = SNIFFLY_FILE.read_bytes()
    place(tmp_path / "sessions", "alice/-home-alice-src-x/a.jsonl", data)
    other = VIEWER.glob("*/*.jsonl")
    place(tmp_path / "sessions", "bob/-home-bob-src-y/b.jsonl", next(iter(other)).read_bytes())
    db = tmp_path / "two.duckdb"
    run_usage(tmp_path / "sessions", db)
    with reading(db) as con:
        users = {u["user"]: u for u in usage_report(con, "user")["users"]}
        alice = usage_report(con, "month", selection=Selection(users=("alice",)))
        bob_y = usage_report(con, "month", selection=Selection(projects=("-home-bob-src-y",)))
        nobody = usage_report(con, "month", selection=Selection(users=("alice",), projects=("-home-bob-src-y",)))
    assert set(users) == {"alice", "bob"}
    assert alice["totals"]["totalTokens"] == users["alice"]["totalTokens"] > 0
    assert bob_y["totals"]["totalTokens"] == users["bob"]["totalTokens"] > 0
    assert nobody["monthly"] == []


def test_dates_are_read_in_both_spellings_the_help_gives() -> None:
    assert iso_date("20260109") == iso_date("2026-01-09") == date(2026, 1, 9)
    for bad in ("2026-1-9", "20261309", "Jan 9", "2026010"):
        with pytest.raises(argparse.ArgumentTypeError, match="YYYYMMDD"):
            iso_date(bad)


def usage_arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    UsageReport().add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_report_flags_take_ccusages_spellings() -> None:
    args = usage_arguments("-z", "Europe/Paris", "--since", "20260101", "--start-of-week", "monday", "--breakdown")
    assert (args.tz, args.since, args.start_of_week, args.breakdown) == ("Europe/Paris", date(2026, 1, 1), 1, True)
    args = usage_arguments("--user", "a", "--user", "b", "--project", "p", "--by", "block")
    assert (args.user, args.project, args.by, args.tz) == (["a", "b"], ["p"], "block", None)


def test_the_default_time_zone_is_the_machines(tmp_path: Path) -> None:
    zoneinfo = tmp_path / "usr/share/zoneinfo/America"
    zoneinfo.mkdir(parents=True)
    (zoneinfo / "New_York").write_bytes(b"TZif")
    link = tmp_path / "localtime"
    link.symlink_to(zoneinfo / "New_York")
    assert local_timezone({}, link) == "America/New_York"
    assert local_timezone({"TZ": "Asia/Tokyo"}, link) == "Asia/Tokyo"
    assert local_timezone({"TZ": ":Europe/Paris"}, link) == "Europe/Paris"
    assert local_timezone({"TZ": "EST5EDT,M3.2.0,M11.1.0x"}, link) == "America/New_York"
    assert local_timezone({}, tmp_path / "missing") == "UTC"


def test_breakdown_puts_a_row_per_model_under_each_period(sniffly_db: Path) -> None:
    with reading(sniffly_db) as con:
        data = usage_report(con, "month")
    plain = render_text(data, "month").splitlines()
    detailed = render_text(data, "month", breakdown=True).splitlines()
    model_rows = [line for line in detailed if line.startswith("  - ")]
    assert len(model_rows) == sum(len(m["modelBreakdowns"]) for m in data["monthly"]) > 0
    assert len(detailed) == len(plain) + len(model_rows)
    assert "sonnet-4-20250514" in model_rows[0]


def assistant_line(n: int, model: str, usage: dict[str, int], day: str = "2026-01-09") -> str:
    """One assistant call as Claude Code writes it."""
    message = {"id": f"msg-{n}", "model": model, "role": "assistant", "usage": usage}
    line = {"type": "assistant", "timestamp": f"{day}T10:00:{n:02d}.000Z", "sessionId": "s", "requestId": f"r-{n}"}
    return json.dumps({**line, "message": message}, separators=(",", ":")) + "\n"


def test_the_report_names_the_models_it_could_not_price_and_their_tokens(tmp_path: Path) -> None:
    lines = [
        assistant_line(1, "claude-made-up-9", {"input_tokens": 1000, "output_tokens": 200}),
        assistant_line(2, "claude-made-up-9", {"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 5}),
        assistant_line(3, "claude-sonnet-4-20250514", {"input_tokens": 100, "output_tokens": 20}),
        assistant_line(4, "<synthetic>", {"input_tokens": 0, "output_tokens": 0}),
    ]
    place(tmp_path / "sessions", "alice/-work/s.jsonl", "".join(lines).encode())
    db = tmp_path / "usage.duckdb"
    run_usage(tmp_path / "sessions", db)
    args = usage_arguments("--by", "month", "--tz", "UTC")
    with reading(db) as con:
        data, _ = UsageReport().build(con, args)
    assert data["unpricedModels"] == [
        {
            "model": "claude-made-up-9",
            "calls": 2,
            "inputTokens": 1010,
            "outputTokens": 202,
            "cacheCreationTokens": 0,
            "cacheReadTokens": 5,
            "totalTokens": 1217,
        }
    ]
    (note,) = UsageReport().notes(data)
    assert "claude-made-up-9" in note and "1,217 tokens" in note and "2 calls" in note
    text = sessionpipe("report", "usage", "--by", "month", "--tz", "UTC", "--db", db)
    assert text.returncode == EXIT_OK
    assert "claude-made-up-9" in text.stderr and "no price" not in text.stdout


def test_a_fully_priced_report_has_no_unpriced_list(sniffly_db: Path) -> None:
    with reading(sniffly_db) as con:
        data, _ = UsageReport().build(con, usage_arguments("--by", "block", "--tz", "UTC"))
    assert "unpricedModels" not in data and UsageReport().notes(data) == []


def test_tables_go_compact_and_wrap_on_a_narrow_terminal(sniffly_db: Path) -> None:
    with reading(sniffly_db) as con:
        data = usage_report(con, "session")
    wide = render_text(data, "session")
    narrow = render_text(data, "session", width=60)
    assert max(map(len, wide.splitlines())) > 100 and "cache read" in wide
    assert max(map(len, narrow.splitlines())) <= 60
    assert "cache read" not in narrow and "cache create" not in narrow  # --json still has them
    assert f"{data['totals']['totalTokens']:,}" in narrow and f"${data['totals']['totalCost']:,.2f}" in narrow
    assert render_text(data, "session", width=400) == wide  # a wide terminal changes nothing


def test_project_folders_are_shown_as_the_directory_they_stand_for(tmp_path: Path) -> None:
    data = SNIFFLY_FILE.read_bytes()  # its calls ran in /Users/chip/dev/ai-music
    place(tmp_path / "sessions", "chip/-Users-chip-dev-ai-music/a.jsonl", data)
    place(tmp_path / "sessions", "chip/-elsewhere/b.jsonl", data.replace(b'"id":"msg_', b'"id":"other_'))
    db = tmp_path / "usage.duckdb"
    run_usage(tmp_path / "sessions", db)
    with reading(db) as con:
        data_, text = UsageReport().build(con, usage_arguments("--by", "project", "--tz", "UTC"))
    assert {p["project"] for p in data_["projects"]} == {"-Users-chip-dev-ai-music", "-elsewhere"}  # JSON as is
    labels = [line.split()[0] for line in text.splitlines()[2:4]]
    assert sorted(labels) == ["-elsewhere", "~/dev/ai-music"]  # a cwd that does not name the folder is not used
    with reading(db) as con:
        by_dir, _ = UsageReport().build(
            con, usage_arguments("--by", "project", "--project", "/Users/chip/dev/ai-music")
        )
        by_folder, _ = UsageReport().build(con, usage_arguments("--by", "project", "--project=-elsewhere"))
    assert [p["project"] for p in by_dir["projects"]] == ["-Users-chip-dev-ai-music"]
    assert [p["project"] for p in by_folder["projects"]] == ["-elsewhere"]


def test_periods_of_synthetic_placeholders_only_are_not_shown_as_empty_rows(tmp_path: Path) -> None:
    lines = [
        assistant_line(1, "claude-sonnet-4-20250514", {"input_tokens": 100, "output_tokens": 20}),
        assistant_line(2, "<synthetic>", {"input_tokens": 0, "output_tokens": 0}, day="2026-01-10"),
    ]
    place(tmp_path / "sessions", "alice/-work/s.jsonl", "".join(lines).encode())
    db = tmp_path / "usage.duckdb"
    run_usage(tmp_path / "sessions", db)
    with reading(db) as con:
        data = usage_report(con, "day")
        models = usage_report(con, "model")
    assert [d["date"] for d in data["daily"]] == ["2026-01-09", "2026-01-10"]  # the JSON keeps ccusage's rows
    assert "2026-01-09" in render_text(data, "day") and "2026-01-10" not in render_text(data, "day")
    assert "<synthetic>" not in render_text(models, "model")


def test_model_narrows_a_report_to_that_models_calls_fast_mode_included(tmp_path: Path) -> None:
    fast = json.loads(assistant_line(3, "claude-opus-4-1", {"input_tokens": 7, "output_tokens": 3}))
    fast["message"]["usage"]["speed"] = "fast"
    lines = [
        assistant_line(1, "claude-opus-4-1", {"input_tokens": 100, "output_tokens": 10}),
        assistant_line(2, "claude-sonnet-4-20250514", {"input_tokens": 1000, "output_tokens": 200}),
        json.dumps(fast) + "\n",
    ]
    place(tmp_path / "sessions", "alice/-work/s.jsonl", "".join(lines).encode())
    db = tmp_path / "usage.duckdb"
    run_usage(tmp_path / "sessions", db)
    with reading(db) as con:
        opus = UsageReport().data(con, usage_arguments("--by", "model", "--tz", "UTC", "--model", "claude-opus-4-1"))
        both = UsageReport().data(
            con,
            usage_arguments(
                "--by", "model", "--tz", "UTC", "--model", "claude-opus-4-1-fast", "--model", "claude-opus-4-1"
            ),
        )
    assert [(m["model"], m["inputTokens"]) for m in opus["models"]] == [("claude-opus-4-1", 100)]
    assert sorted((m["model"], m["inputTokens"]) for m in both["models"]) == [
        ("claude-opus-4-1", 100),
        ("claude-opus-4-1-fast", 7),
    ]
