"""Session blocks: ccusage 20.0.24's ``blocks`` report, Claude's 5-hour billing windows.

The rules are ccusage's (``identify_session_blocks`` in its ``blocks.rs``): calls in time order; a
block starts at the first call's UTC hour, floored, and lasts 5 hours; a call more than 5 hours after
the block's start or after the previous call starts a new block, and when it came more than 5 hours
after the previous call a gap block (``gap-…``) covers the idle time from that call's time plus 5
hours to the new call. A block is active while "now" is within 5 hours of its last call and before
its end; only an active block has a burn rate (over its first to last call) and a projection to its
end at that rate. "Now" is a parameter, so tests can pin it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

BLOCK_HOURS = 5
BLOCK = timedelta(hours=BLOCK_HOURS)
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Call:
    """One deduplicated call as a block counts it."""

    at: datetime  # aware, UTC
    model: str | None
    tokens: tuple[int, int, int, int]  # input, output, cache creation, cache read
    cost: float


@dataclass
class Block:
    """One 5-hour window (or the idle gap between two) and the calls in it."""

    start: datetime
    end: datetime
    calls: list[Call] = field(default_factory=list)
    is_gap: bool = False
    is_active: bool = False

    @property
    def tokens(self) -> list[int]:
        return [sum(call.tokens[i] for call in self.calls) for i in range(4)]

    @property
    def cost(self) -> float:
        return sum(call.cost for call in self.calls)


def _floor_to_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _closed(start: datetime, calls: list[Call], now: datetime) -> Block:
    end = start + BLOCK
    last = calls[-1].at
    return Block(start, end, calls, is_active=now - last < BLOCK and now < end)


def identify_blocks(calls: list[Call], now: datetime) -> list[Block]:
    """The blocks and gaps of ``calls`` (in time order), as ccusage cuts them."""
    blocks: list[Block] = []
    start: datetime | None = None
    current: list[Call] = []
    for call in calls:
        if start is not None:
            last = current[-1].at
            if call.at - start > BLOCK or call.at - last > BLOCK:
                blocks.append(_closed(start, current, now))
                if call.at - last > BLOCK:
                    blocks.append(Block(last + BLOCK, call.at, is_gap=True))
                start, current = None, []
        if start is None:
            start = _floor_to_hour(call.at)
        current.append(call)
    if start is not None:
        blocks.append(_closed(start, current, now))
    return blocks


def iso_millis(moment: datetime) -> str:
    """``2026-01-09T10:00:00.000Z``, as ccusage prints moments."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _round_half_away(value: float) -> int:
    """Rust's ``f64::round`` (halves away from zero), not Python's banker's rounding."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def burn_rate(block: Block) -> dict[str, float] | None:
    """Tokens per minute (all kinds, and input+output only) and cost per hour from first to last call."""
    if block.is_gap or not block.calls:
        return None
    minutes = (block.calls[-1].at - block.calls[0].at) / MINUTE
    if minutes <= 0:
        return None
    tokens = block.tokens
    return {
        "tokensPerMinute": sum(tokens) / minutes,
        "tokensPerMinuteForIndicator": (tokens[0] + tokens[1]) / minutes,
        "costPerHour": block.cost / minutes * 60,
    }


def projection(block: Block, now: datetime) -> dict[str, Any] | None:
    """The active block's tokens and cost at its end if calls go on at the burn rate."""
    rate = burn_rate(block) if block.is_active else None
    if rate is None:
        return None
    remaining = _round_half_away((block.end - now) / MINUTE)
    return {
        "totalTokens": _round_half_away(sum(block.tokens) + rate["tokensPerMinute"] * remaining),
        "totalCost": _round_half_away((block.cost + rate["costPerHour"] / 60 * remaining) * 100) / 100,
        "remainingMinutes": max(remaining, 0),
    }


def block_json(block: Block, now: datetime, not_models: frozenset[str]) -> dict[str, Any]:
    """One block in ccusage's ``blocks --json`` shape."""
    models: list[str] = []
    for call in block.calls:
        if call.model is not None and call.model not in not_models and call.model not in models:
            models.append(call.model)
    tokens = block.tokens
    active = block.is_active and not block.is_gap
    return {
        "id": ("gap-" if block.is_gap else "") + iso_millis(block.start),
        "startTime": iso_millis(block.start),
        "endTime": iso_millis(block.end),
        "actualEndTime": iso_millis(block.calls[-1].at) if block.calls else None,
        "isActive": block.is_active,
        "isGap": block.is_gap,
        "entries": len(block.calls),
        "tokenCounts": {
            "inputTokens": tokens[0],
            "outputTokens": tokens[1],
            "cacheCreationInputTokens": tokens[2],
            "cacheReadInputTokens": tokens[3],
        },
        "totalTokens": sum(tokens),
        "costUSD": block.cost,
        "models": models,
        "burnRate": burn_rate(block) if active else None,
        "projection": projection(block, now) if active else None,
    }


def load_calls(con: duckdb.DuckDBPyConnection, calls_sql: str, parameters: dict[str, Any]) -> list[Call]:
    """The selected calls in time order (``calls_sql`` is the report's filtered call query)."""
    rows = con.execute(
        f"""
        SELECT epoch_ms(ts), model_label, input_tokens, output_tokens,
            cache_write_5m_tokens + cache_write_1h_tokens, cache_read_tokens, cost_usd
        FROM ({calls_sql})
        ORDER BY ts, session_file, line_no
        """,
        parameters,
    ).fetchall()
    return [
        Call(
            datetime.fromtimestamp(millis / 1000, tz=UTC),
            model,
            (int(i), int(o), int(cc), int(cr)),
            float(cost),
        )
        for millis, model, i, o, cc, cr, cost in rows
    ]


def blocks_report(
    calls: list[Call],
    now: datetime,
    tz: str,
    not_models: frozenset[str],
    since: date | None = None,
    until: date | None = None,
) -> dict[str, Any]:
    """``{"blocks": […]}``: the blocks of ``calls``, kept when their start's day in ``tz`` is within [since, until]."""
    zone = ZoneInfo(tz)
    kept = []
    for block in identify_blocks(calls, now):
        day = block.start.astimezone(zone).date()
        if (since is None or day >= since) and (until is None or day <= until):
            kept.append(block_json(block, now, not_models))
    return {"blocks": kept}
