"""Usage reports over the deduplicated calls (``usage_messages``), in ccusage 20.0.24's JSON shape.

``--by day|month|session`` print what ``ccusage claude daily|monthly|session --json`` print, field for
field (``{"monthly": [{"month", "inputTokens", "outputTokens", "cacheCreationTokens",
"cacheReadTokens", "totalTokens", "totalCost", "modelsUsed", "modelBreakdowns"}], "totals": {…}}``;
sessions carry ``sessionId``, ``projectPath``, ``firstActivity`` and ``lastActivity``), so scripts
written against ccusage keep working. ``--by user|project|model`` use the same field names under
``users`` / ``projects`` / ``models``. As in ccusage, a call made in fast mode is listed under its
model name with ``-fast`` appended.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb

from sessionpipe_runner.names import printable
from sessionpipe_runner.reports import Report, ReportError, iso_date, require_table

# TIMESTAMPTZ values are fetched as naive UTC TIMESTAMPs: fetching TIMESTAMPTZ needs pytz.
#: For each grouping: the key's SQL expressions (over the call's local time ``lt``), the JSON list
#: name, and the JSON names of the key's parts.
GROUPINGS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "day": (("strftime(lt, '%Y-%m-%d')",), "daily", ("date",)),
    "month": (("strftime(lt, '%Y-%m')",), "monthly", ("month",)),
    "session": (("session_id", "project", "user_name"), "sessions", ("sessionId", "projectPath", "user")),
    "user": (("user_name",), "users", ("user",)),
    "project": (("project",), "projects", ("project",)),
    "model": (("model_label",), "models", ("model",)),
}
#: Models that are not models: Claude Code's local placeholder for calls it never made.
NOT_A_MODEL = frozenset({"<synthetic>"})
TOKEN_FIELDS = ("inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens")


def check_timezone(tz: str) -> str:
    """The IANA time zone name, or ValueError explaining it is not one."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"--tz {tz!r} is not an IANA time zone (for example UTC or Europe/Paris)") from None
    return tz


def iso_utc(moment: datetime) -> str:
    """A moment (naive means UTC) as ccusage prints it: ``2025-09-03T00:52:35.576Z``."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


@dataclass
class _Group:
    key: tuple[Any, ...]
    tokens: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    cost: float = 0.0
    first: datetime | None = None
    last: datetime | None = None
    models: list[tuple[datetime, str, list[int], float]] = field(default_factory=list)

    def add(self, model: str | None, first: datetime, last: datetime, tokens: list[int], cost: float) -> None:
        self.tokens = [a + b for a, b in zip(self.tokens, tokens, strict=True)]
        self.cost += cost
        self.first = first if self.first is None else min(self.first, first)
        self.last = last if self.last is None else max(self.last, last)
        if model is not None and model not in NOT_A_MODEL:
            self.models.append((first, model, tokens, cost))


def _token_fields(tokens: list[int]) -> dict[str, int]:
    values = dict(zip(TOKEN_FIELDS, tokens, strict=True))
    values["totalTokens"] = sum(tokens)
    return values


def _entry(group: _Group, by: str) -> dict[str, Any]:
    names = GROUPINGS[by][2]
    entry: dict[str, Any] = dict(zip(names, group.key, strict=True))
    if by == "session" and group.first is not None and group.last is not None:
        entry["firstActivity"] = iso_utc(group.first)
        entry["lastActivity"] = iso_utc(group.last)
    entry.update(_token_fields(group.tokens))
    entry["totalCost"] = group.cost
    if by != "model":
        entry["modelsUsed"] = [model for _, model, _, _ in sorted(group.models, key=lambda m: (m[0], m[1]))]
        entry["modelBreakdowns"] = [
            {"modelName": model, **dict(zip(TOKEN_FIELDS, tokens, strict=True)), "cost": cost}
            for _, model, tokens, cost in sorted(group.models, key=lambda m: (-m[3], m[1]))
        ]
    return entry


def usage_report(
    con: duckdb.DuckDBPyConnection,
    by: str,
    since: date | None = None,
    until: date | None = None,
    tz: str = "UTC",
) -> dict[str, Any]:
    """Tokens and cost of the deduplicated calls grouped ``by`` day, month, session, user, project or model.

    ``since`` and ``until`` are inclusive days, and days and months are cut, in the time zone ``tz``.
    Raises ValueError for an unknown grouping or time zone.
    """
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}; use one of {', '.join(GROUPINGS)}")
    check_timezone(tz)
    key_sql, list_name, _ = GROUPINGS[by]
    keys = ", ".join(f"{expression} AS k{i}" for i, expression in enumerate(key_sql))
    key_names = ", ".join(f"k{i}" for i in range(len(key_sql)))
    rows = con.execute(
        f"""
        WITH calls AS (
            SELECT *, timezone($tz, ts) AS lt,
                CASE WHEN speed = 'fast' THEN model || '-fast' ELSE model END AS model_label
            FROM usage_messages
        )
        SELECT {keys}, model_label, timezone('UTC', min(ts)), timezone('UTC', max(ts)),
            sum(input_tokens), sum(output_tokens), sum(cache_write_5m_tokens + cache_write_1h_tokens),
            sum(cache_read_tokens), sum(cost_usd)
        FROM calls
        WHERE ($since IS NULL OR CAST(lt AS DATE) >= $since) AND ($until IS NULL OR CAST(lt AS DATE) <= $until)
        GROUP BY {key_names}, model_label
        """,
        {"tz": tz, "since": since, "until": until},
    ).fetchall()
    width = len(key_sql)
    groups: dict[tuple[Any, ...], _Group] = {}
    for row in rows:
        key = tuple(row[:width])
        model, first, last = row[width], row[width + 1], row[width + 2]
        tokens = [int(value) for value in row[width + 3 : width + 7]]
        group = groups.setdefault(key, _Group(key))
        group.add(model, first, last, tokens, float(row[width + 7]))
    if by in ("day", "month"):
        ordered = sorted(groups.values(), key=lambda g: g.key)
    else:
        ordered = sorted(groups.values(), key=lambda g: (-g.cost, tuple(str(part) for part in g.key)))
    totals = [0, 0, 0, 0]
    total_cost = 0.0
    for group in ordered:
        totals = [a + b for a, b in zip(totals, group.tokens, strict=True)]
        total_cost += group.cost
    return {
        list_name: [_entry(group, by) for group in ordered],
        "totals": {**_token_fields(totals), "totalCost": total_cost},
    }


def _short_model(name: str) -> str:
    return name.removeprefix("claude-")


def render_text(data: dict[str, Any], by: str) -> str:
    """The report as a plain table, one line per group and a total line."""
    _, list_name, names = GROUPINGS[by]
    entries: list[dict[str, Any]] = data[list_name]
    header = [names[0] if by != "session" else "session", "models", "input", "output", "cache create", "cache read"]
    header += ["total tokens", "cost (USD)"]
    table: list[list[str]] = [header]
    for entry in entries:
        label = str(entry[names[0]])
        if by == "session":
            label = f"{entry['projectPath']}/{label}" if entry["projectPath"] else label
        models = ", ".join(_short_model(m) for m in entry.get("modelsUsed", [])) if by != "model" else ""
        table.append(_line(printable(label), printable(models), entry))  # a name's newline stays in its cell
    totals = data["totals"]
    table.append(_line("Total", "", totals))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for number, row in enumerate(table):
        cells = [cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if number == 0 or number == len(table) - 2:
            lines.append("  ".join("-" * width for width in widths))
    if not entries:
        lines.insert(0, "no usage in this period")
    return "\n".join(lines)


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


class UsageReport(Report):
    """``sessionpipe report usage [--by GROUPING] [--since DAY] [--until DAY] [--tz ZONE]``."""

    help = "tokens by kind and cost (ccusage-compatible JSON)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--by", choices=tuple(GROUPINGS), default="day", help="grouping (default: day)")
        parser.add_argument("--since", type=iso_date, metavar="YYYY-MM-DD", help="first day included")
        parser.add_argument("--until", type=iso_date, metavar="YYYY-MM-DD", help="last day included")
        parser.add_argument("--tz", default="UTC", help="IANA time zone for days and months (default UTC)")

    def build(self, con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
        require_table(con, "usage_rows", "usage")
        if args.since and args.until and args.since > args.until:
            raise ReportError(f"--since {args.since} is after --until {args.until}")
        try:
            data = usage_report(con, args.by, since=args.since, until=args.until, tz=args.tz)
        except ValueError as error:
            raise ReportError(str(error)) from None
        return data, render_text(data, args.by)
