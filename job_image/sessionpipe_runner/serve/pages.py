"""What each page shows: the figures, from the same report functions the CLI prints, and the charts.

Each builder takes the snapshot's connection and the page's :class:`~.params.Filters` and returns
the template's context; the templates only lay it out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sessionpipe_runner.processors.usage.groupings import GROUPINGS
from sessionpipe_runner.processors.usage.report import Selection, block_report, project_folder, usage_report
from sessionpipe_runner.processors.verification.report import verification_report
from sessionpipe_runner.processors.verification.store import ITEMS
from sessionpipe_runner.serve.charts import horizontal_bars, money, stacked_bars
from sessionpipe_runner.serve.params import Filters
from sessionpipe_runner.serve.snapshots import OpenSnapshot
from sessionpipe_runner.store.queries import status_data, troubled_sessions

#: The groupings the overview's time charts offer.
TIME_GROUPINGS = ("day", "week", "month")
#: Rows in a "top" list, and at most in a long table (sessions).
TOP = 10
TABLE_LIMIT = 200
#: Blocks per user in the blocks page's chart and table.
RECENT_BLOCKS = 48
TOKEN_KEYS = ("inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens")


def _usage(snapshot: OpenSnapshot, by: str, selection: Selection) -> dict[str, Any]:
    """The usage report as ``report usage --json`` gives it, or an empty one before any usage run."""
    if not snapshot.has("usage_messages"):
        empty = dict.fromkeys((*TOKEN_KEYS, "totalTokens"), 0)
        return {GROUPINGS[by][1]: [], "totals": {**empty, "totalCost": 0.0}}
    return usage_report(snapshot.con, by, selection=selection)


def cache_read_share(totals: Mapping[str, Any]) -> float | None:
    """Of the input side (fresh input, cache writes, cache reads), the share read from the cache."""
    read = totals["cacheReadTokens"]
    input_side = totals["inputTokens"] + totals["cacheCreationTokens"] + read
    return read / input_side if input_side else None


def by_model(entry: Mapping[str, Any], value: Callable[[Mapping[str, Any]], float]) -> dict[str, float]:
    """An entry's ``modelBreakdowns`` as {model: value(breakdown)}."""
    return {part["modelName"]: value(part) for part in entry.get("modelBreakdowns", [])}


def _tokens(part: Mapping[str, Any]) -> float:
    return float(sum(part[key] for key in TOKEN_KEYS))


def _cost(part: Mapping[str, Any]) -> float:
    return float(part["cost"])


def month_keys(now: datetime, tz: str) -> tuple[str, str]:
    """This month and the one before, as the monthly report names them, in the zone ``tz``."""
    local = now.astimezone(ZoneInfo(tz))
    year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
    return local.strftime("%Y-%m"), f"{year:04d}-{month:02d}"


def overview(snapshot: OpenSnapshot, filters: Filters) -> dict[str, Any]:
    """Cost and tokens over time stacked by model, this month against last, the cache-read share, tops."""
    by = filters.extra.get("by", "day")
    selection = filters.selection()
    series = _usage(snapshot, by, selection)
    entries = series[GROUPINGS[by][1]]
    key = GROUPINGS[by][2][0]
    this_key, last_key = month_keys(datetime.now(UTC), filters.tz)
    months = {m["month"]: m for m in _usage(snapshot, "month", filters.selection(since=None, until=None))["monthly"]}
    tops = {name: _usage(snapshot, name, selection)[GROUPINGS[name][1]][:TOP] for name in ("user", "project", "model")}
    return {
        "by": by,
        "groupings": TIME_GROUPINGS,
        "entries": entries,
        "key": key,
        "totals": series["totals"],
        "cache_share": cache_read_share(series["totals"]),
        "this_month": (this_key, months.get(this_key)),
        "last_month": (last_key, months.get(last_key)),
        "tops": tops,
        "cost_chart": stacked_bars(
            [(e[key], by_model(e, _cost)) for e in entries], title=f"Cost by {by}, by model", format_value=money
        ),
        "token_chart": stacked_bars(
            [(e[key], by_model(e, _tokens)) for e in entries], title=f"Tokens by {by}, by model"
        ),
        "top_charts": [
            horizontal_bars(
                [(t[name], t["totalCost"]) for t in tops[name]], title=f"Top {name}s by cost", format_value=money
            )
            for name in ("user", "project", "model")
        ],
    }


def _ranked(snapshot: OpenSnapshot, filters: Filters, by: str, title: str) -> dict[str, Any]:
    report = _usage(snapshot, by, filters.selection())
    entries = report[GROUPINGS[by][1]]
    key = GROUPINGS[by][2][0]  # a session is named by its id, the first of its key's parts
    return {
        "entries": entries[:TABLE_LIMIT],
        "more": max(len(entries) - TABLE_LIMIT, 0),
        "totals": report["totals"],
        "chart": horizontal_bars(
            [(str(e[key]), e["totalCost"]) for e in entries[: TOP * 2]], title=title, format_value=money, width=900
        ),
    }


def users(snapshot: OpenSnapshot, filters: Filters) -> dict[str, Any]:
    """Every user, most cost first; each leads to the user's projects."""
    return _ranked(snapshot, filters, "user", "Cost by user")


def projects(snapshot: OpenSnapshot, filters: Filters) -> dict[str, Any]:
    """The projects (of the filtered user), most cost first; each leads to its sessions."""
    return _ranked(snapshot, filters, "project", "Cost by project")


def sessions(snapshot: OpenSnapshot, filters: Filters) -> dict[str, Any]:
    """The sessions (of the filtered user and project), most cost first."""
    return _ranked(snapshot, filters, "session", "Cost by session (the most costly)")


def blocks(snapshot: OpenSnapshot, filters: Filters) -> dict[str, Any]:
    """One user's recent 5-hour blocks (ccusage's rules), gaps left out: the filtered user, else the
    user with the most cost in the selection; the other users are listed to pick from.

    One user at a time: blocks are cut in Python over every call of the user, all of their history.
    """
    users = [u["user"] for u in _usage(snapshot, "user", filters.selection(users=()))["users"]]
    name = filters.user or (users[0] if users else "")
    recent: list[dict[str, Any]] = []
    if name and snapshot.has("usage_messages"):
        report = block_report(snapshot.con, filters.selection(users=(name,)), datetime.now(UTC))
        recent = [b for b in report["blocks"] if not b["isGap"]][-RECENT_BLOCKS:]
    chart = stacked_bars(
        [(b["startTime"][5:13].replace("T", " "), {"cost": b["costUSD"]}) for b in recent],
        title=f"{name}: cost per 5-hour block (latest {len(recent)}, UTC)",
        format_value=money,
        height=220,
    )
    return {"user": name, "users": users, "blocks": list(reversed(recent)), "chart": chart}


def verification(snapshot: OpenSnapshot, filters: Filters) -> dict[str, Any]:
    """Knowledge items with their evidence quotes, kept when a source matches the user and project."""
    empty: dict[str, Any] = {"items": [], "totals": {"by_detection_type": {}}}
    data = verification_report(snapshot.con) if snapshot.has(ITEMS) else empty
    kind = filters.extra.get("kind", "")
    shown = []
    for item in data["items"]:
        if kind and item["detection_type"] != kind:
            continue
        sources = [s for s in item["sources"] if _source_matches(s, filters)]
        if sources or not (filters.user or filters.project):
            shown.append({**item, "sources": sources})
    counts: dict[str, float] = {}
    for item in shown:
        counts[item["detection_type"]] = counts.get(item["detection_type"], 0) + 1
    return {
        "items": shown,
        "kinds": sorted(data["totals"]["by_detection_type"]),
        "kind": kind,
        "chart": horizontal_bars(sorted(counts.items()), title="Items by kind", width=600),
    }


def _source_matches(source: Mapping[str, Any], filters: Filters) -> bool:
    return (not filters.user or source["user"] == filters.user) and (
        not filters.project or source.get("project") == project_folder(filters.project)
    )


def runs(snapshot: OpenSnapshot, filters: Filters) -> dict[str, Any]:
    """Each processor's sessions by status and last runs, and the sessions failed or quarantined."""
    data = status_data(snapshot.con)
    bars: Sequence[tuple[str, Mapping[str, float]]] = [
        (name, {status: float(count) for status, count in info["sessions"].items()})
        for name, info in data["processors"].items()
    ]
    recent = [
        (
            f"{name} {run['started_at'][5:16].replace('T', ' ')}",
            {run["outcome"]: float(run["summary"].get("processed", 0))},
        )
        for name, info in data["processors"].items()
        for run in reversed(info["last_runs"])
    ]
    return {
        "processors": data["processors"],
        "troubled": troubled_sessions(snapshot.con),
        "chart": stacked_bars(bars, title="Session files by status, per processor", height=220),
        "runs_chart": stacked_bars(recent, title="Sessions processed by each recent run, by outcome", height=220),
    }


#: (path, builder, template, the page's own parameters with their allowed values; () is any value)
PAGES: tuple[tuple[str, Callable[[OpenSnapshot, Filters], dict[str, Any]], str, dict[str, tuple[str, ...]]], ...] = (
    ("/", overview, "overview.html", {"by": TIME_GROUPINGS}),
    ("/users", users, "users.html", {}),
    ("/projects", projects, "projects.html", {}),
    ("/sessions", sessions, "sessions.html", {}),
    ("/blocks", blocks, "blocks.html", {}),
    ("/verification", verification, "verification.html", {"kind": ()}),
    ("/runs", runs, "runs.html", {}),
)
