"""ccusage's 5-hour session blocks: how calls are cut into blocks and gaps, and the active block's
burn rate and projection, at a fixed "now"."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from sessionpipe_runner.processors.usage.blocks import Call, blocks_report, identify_blocks
from sessionpipe_runner.processors.usage.text import render_blocks

T0 = datetime(2026, 1, 9, 10, 17, 30, tzinfo=UTC)
NO_MODELS: frozenset[str] = frozenset({"<synthetic>"})


def call(minutes: float, tokens: tuple[int, int, int, int] = (100, 50, 0, 0), cost: float = 1.0) -> Call:
    return Call(T0 + timedelta(minutes=minutes), "claude-sonnet-4-5", tokens, cost)


def test_a_block_starts_at_the_first_calls_hour_and_lasts_five_hours() -> None:
    blocks = identify_blocks([call(0), call(100), call(280)], now=T0 + timedelta(days=30))
    assert len(blocks) == 1
    assert blocks[0].start == datetime(2026, 1, 9, 10, tzinfo=UTC)
    assert blocks[0].end == datetime(2026, 1, 9, 15, tzinfo=UTC)
    assert not blocks[0].is_active


def test_a_call_past_the_blocks_five_hours_starts_a_new_block_without_a_gap() -> None:
    # 10:17:30 + 4h50 = 15:07:30: within 5 h of the previous call, but past the block (10:00-15:00)
    blocks = identify_blocks([call(0), call(170), call(290)], now=T0 + timedelta(days=30))
    assert [(b.start.hour, b.is_gap, len(b.calls)) for b in blocks] == [(10, False, 2), (15, False, 1)]


def test_more_than_five_idle_hours_leave_a_gap_block_from_last_call_plus_five_hours() -> None:
    blocks = identify_blocks([call(0), call(60 * 7)], now=T0 + timedelta(days=30))
    assert [b.is_gap for b in blocks] == [False, True, False]
    gap = blocks[1]
    assert gap.start == T0 + timedelta(hours=5) and gap.end == T0 + timedelta(hours=7)
    report = blocks_report([call(0), call(60 * 7)], T0 + timedelta(days=30), "UTC", NO_MODELS)
    assert report["blocks"][1]["id"] == "gap-2026-01-09T15:17:30.000Z"
    assert report["blocks"][1]["actualEndTime"] is None and report["blocks"][1]["entries"] == 0


def test_the_active_block_has_a_burn_rate_and_a_projection_to_its_end() -> None:
    calls = [call(0, (600, 300, 100, 0), 0.30), call(30, (300, 150, 0, 50), 0.15)]
    now = T0 + timedelta(minutes=60)  # 11:17:30; the block (10:00-15:00) has 222.5 minutes left
    block = blocks_report(calls, now, "UTC", NO_MODELS)["blocks"][0]
    assert block["isActive"] is True
    assert block["burnRate"] == {
        "tokensPerMinute": pytest.approx(1500 / 30),
        "tokensPerMinuteForIndicator": pytest.approx(1350 / 30),
        "costPerHour": pytest.approx(0.45 / 30 * 60),
    }
    remaining = 223  # 222.5 rounds half away from zero, as ccusage (Rust) rounds
    assert block["projection"] == {
        "totalTokens": 1500 + 50 * remaining,
        "totalCost": round(0.45 + 0.015 * remaining, 2),
        "remainingMinutes": remaining,
    }


@pytest.mark.parametrize(
    "now",
    [T0 + timedelta(hours=5, minutes=31), datetime(2026, 1, 9, 15, 0, tzinfo=UTC)],
    ids=["five-hours-after-the-last-call", "at-the-blocks-end"],
)
def test_a_block_is_inactive_once_idle_five_hours_or_past_its_end(now: datetime) -> None:
    block = blocks_report([call(0), call(30)], now, "UTC", NO_MODELS)["blocks"][0]
    assert block["isActive"] is False
    assert block["burnRate"] is None and block["projection"] is None


def test_one_call_active_block_has_no_burn_rate() -> None:
    block = blocks_report([call(0)], T0 + timedelta(minutes=5), "UTC", NO_MODELS)["blocks"][0]
    assert block["isActive"] is True and block["burnRate"] is None and block["projection"] is None


def test_blocks_are_kept_by_their_starts_day_in_the_time_zone() -> None:
    calls = [call(0), call(60 * 20)]  # 2026-01-09 10:00 UTC and 2026-01-10 06:00 UTC
    later = T0 + timedelta(days=30)
    utc = blocks_report(calls, later, "UTC", NO_MODELS, since=date(2026, 1, 10))["blocks"]
    assert [b["startTime"] for b in utc] == ["2026-01-10T06:00:00.000Z"]
    # In Tokyo (UTC+9) the gap starting 15:17:30 UTC starts on the 10th too; the 10:00 block does not.
    tokyo = blocks_report(calls, later, "Asia/Tokyo", NO_MODELS, since=date(2026, 1, 10))["blocks"]
    assert [b["id"] for b in tokyo] == ["gap-2026-01-09T15:17:30.000Z", "2026-01-10T06:00:00.000Z"]


def test_synthetic_calls_count_as_entries_but_not_as_models() -> None:
    calls = [call(0), Call(T0 + timedelta(minutes=1), "<synthetic>", (0, 0, 0, 0), 0.0)]
    block = blocks_report(calls, T0 + timedelta(days=1), "UTC", NO_MODELS)["blocks"][0]
    assert block["models"] == ["claude-sonnet-4-5"] and block["entries"] == 2


def test_the_blocks_table_shows_the_active_blocks_burn_rate_and_projection() -> None:
    calls = [call(0, (600, 300, 100, 0), 0.30), call(30, (300, 150, 0, 50), 0.15)]
    data = blocks_report(calls, T0 + timedelta(minutes=60), "UTC", NO_MODELS)
    text = render_blocks(data)
    assert "ACTIVE" in text and "50 tok/min" in text and "$0.90/h" in text
    projected = next(line for line in text.splitlines() if "PROJECTED" in line)
    assert "223 min left" in projected and f"{1500 + 50 * 223:,}" in projected


def test_the_blocks_table_shows_start_times_in_the_reports_time_zone() -> None:
    calls = [call(0, (600, 300, 100, 0), 0.30)]
    data = blocks_report(calls, T0 + timedelta(days=1), "Asia/Tokyo", NO_MODELS)
    text = render_blocks(data, tz="Asia/Tokyo")
    # The block starts at 10:00 UTC, 19:00 in Tokyo; the header names the zone.
    assert "2026-01-09 19:00" in text and "2026-01-09 10:00" not in text
    assert "block start (Asia/Tokyo)" in text
