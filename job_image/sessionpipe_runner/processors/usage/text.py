"""Usage reports as text: tables that fit the terminal, and the notes printed beside them on stderr."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sessionpipe_contract import ENV_PRICING
from sessionpipe_runner.names import printable
from sessionpipe_runner.processors.usage.groupings import GROUPINGS, TOKEN_FIELDS, UNPRICED_KEY, token_fields
from sessionpipe_runner.processors.usage.table import Column, render_table


def unpriced_notes(data: dict[str, Any]) -> list[str]:
    """One stderr line per model the report counted at $0 for want of a price."""
    return [
        f"warning: no price for model {printable(str(entry['model']))}: {entry['totalTokens']:,} tokens in "
        f"{entry['calls']:,} calls are counted at $0 (set {ENV_PRICING} to a price file that has it)"
        for entry in data.get(UNPRICED_KEY, [])
    ]


def _short_model(name: str) -> str:
    return name.removeprefix("claude-")


#: The grouped reports' columns: the group, its models, then the numbers (cache columns go first when narrow).
USAGE_COLUMNS = (
    Column("models", text=True),
    Column("input"),
    Column("output"),
    Column("cache create", optional=True),
    Column("cache read", optional=True),
    Column("total tokens"),
    Column("cost (USD)"),
)


def render_text(
    data: dict[str, Any],
    by: str,
    breakdown: bool = False,
    width: int | None = None,
    project_names: Mapping[str, str] | None = None,
    tz: str = "UTC",
) -> str:
    """The report as a table: a row per group (and per model under it with ``breakdown``) and a total line.

    Groups without tokens or cost (a day of ``<synthetic>`` placeholders only) are left out of the
    table, not of the JSON. Project folders are shown as the working directory they stand for when
    ``project_names`` knows it; the table fits ``width`` columns (None: no limit).
    """
    if by == "block":
        return render_blocks(data, width, tz)
    _, list_name, names = GROUPINGS[by]
    entries = [e for e in data[list_name] if e["totalTokens"] or e["totalCost"]]
    known = project_names or {}
    rows: list[list[str]] = []
    for entry in entries:
        label = str(entry[names[0]])
        if by == "project":
            label = known.get(label, label)
        elif by == "session" and entry["projectPath"]:
            label = f"{known.get(entry['projectPath'], entry['projectPath'])}/{label}"
        models = _models_cell(entry.get("modelsUsed", [])) if by != "model" else ""
        rows.append(_line(printable(label), models, entry))  # a name's newline stays in its cell
        if breakdown:
            for model in entry.get("modelBreakdowns", []):
                values = {**token_fields([model[name] for name in TOKEN_FIELDS]), "totalCost": model["cost"]}
                rows.append(_line(f"  - {printable(_short_model(model['modelName']))}", "", values))
    header = names[0] if by != "session" else "session"
    text = render_table((Column(header, text=True), *USAGE_COLUMNS), rows, _line("Total", "", data["totals"]), width)
    return text if entries else "no usage in this period\n" + text


def _models_cell(models: list[str]) -> str:
    """Models one per line, shortened; a newline inside a name is shown escaped, not as a line break."""
    return "\n".join(printable(_short_model(model)) for model in models)


def _duration(delta_minutes: int) -> str:
    hours, minutes = divmod(delta_minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


BLOCK_COLUMNS = (
    Column("block start", text=True),  # named with the zone when drawn
    Column("duration/status", text=True),
    Column("models", text=True),
    Column("tokens"),
    Column("cost (USD)"),
)


def render_blocks(data: dict[str, Any], width: int | None = None, tz: str = "UTC") -> str:
    """Blocks as a table: start (in ``tz``), duration or status, models, tokens, cost; the active block's projection."""
    zone = ZoneInfo(tz)
    rows: list[list[str]] = []
    for block in data["blocks"]:
        start = _moment(block["startTime"]).astimezone(zone).strftime("%Y-%m-%d %H:%M")
        if block["isGap"]:
            hours = (_moment(block["endTime"]) - _moment(block["startTime"])).total_seconds() // 3600
            rows.append([f"{start} ({int(hours)}h gap)", "(inactive)", "-", "-", "-"])
            continue
        minutes = int((_moment(block["actualEndTime"]) - _moment(block["startTime"])).total_seconds() // 60)
        status = _duration(minutes)
        if block["isActive"]:
            rate = block["burnRate"]
            status = (
                "ACTIVE"
                if rate is None
                else f"ACTIVE\n{rate['tokensPerMinute']:,.0f} tok/min\n${rate['costPerHour']:,.2f}/h"
            )
        models = _models_cell(block["models"]) or "-"
        rows.append([start, status, models, f"{block['totalTokens']:,}", f"${block['costUSD']:,.2f}"])
        if block["projection"] is not None:
            projected = block["projection"]
            rows.append(
                [
                    "  (at the current burn rate)",
                    "PROJECTED",
                    f"{projected['remainingMinutes']} min left",
                    f"{projected['totalTokens']:,}",
                    f"${projected['totalCost']:,.2f}",
                ]
            )
    blocks = [b for b in data["blocks"] if not b["isGap"]]
    tokens, cost = sum(b["totalTokens"] for b in blocks), sum(b["costUSD"] for b in blocks)
    count = f"{len(blocks)} block" + ("" if len(blocks) == 1 else "s")
    total = ["Total", count, "", f"{tokens:,}", f"${cost:,.2f}"]
    columns = (replace(BLOCK_COLUMNS[0], header=f"block start ({tz})"), *BLOCK_COLUMNS[1:])
    text = render_table(columns, rows, total, width)
    return text if blocks else "no usage in this period\n" + text


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _line(label: str, models: str, values: dict[str, Any]) -> list[str]:
    return [
        label,
        models,
        f"{values['inputTokens']:,}",
        f"{values['outputTokens']:,}",
        f"{values['cacheCreationTokens']:,}",
        f"{values['cacheReadTokens']:,}",
        f"{values['totalTokens']:,}",
        f"${values['totalCost']:,.2f}",
    ]
