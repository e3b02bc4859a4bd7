"""Usage reports over the deduplicated calls (``usage_messages``), in ccusage 20.0.24's JSON shape.

``--by day|week|month|session|block`` print what ``ccusage claude daily|weekly|monthly|session|blocks
--json`` print, field for field (``{"monthly": [{"month", "inputTokens", "outputTokens",
"cacheCreationTokens", "cacheReadTokens", "totalTokens", "totalCost", "modelsUsed",
"modelBreakdowns"}], "totals": {…}}``; sessions carry ``sessionId``, ``projectPath``,
``firstActivity`` and ``lastActivity``), so scripts written against ccusage keep working. Weeks are
named by their first day (Sunday unless ``--start-of-week`` says otherwise); blocks are ccusage's
5-hour billing windows (see :mod:`.blocks`). ``--by user|project|model`` use the same field names
under ``users`` / ``projects`` / ``models``. As in ccusage, a call made in fast mode is listed under
its model name with ``-fast`` appended. Days, weeks and months are cut in the machine's time zone
unless ``--tz`` names another, as ccusage does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb

from sessionpipe_runner.processors.usage import COST_UNPRICED
from sessionpipe_runner.processors.usage.blocks import blocks_report, load_calls
from sessionpipe_runner.processors.usage.groupings import (
    BY_TIME,
    GROUPINGS,
    NOT_A_MODEL,
    TOKEN_FIELDS,
    UNPRICED_KEY,
    WEEK_DAYS,
    token_fields,
)
from sessionpipe_runner.processors.usage.table import folder_of, readable_path
from sessionpipe_runner.processors.usage.text import render_text, unpriced_notes
from sessionpipe_runner.reports import Report, ReportError, iso_date, require_table

# TIMESTAMPTZ values are fetched as naive UTC TIMESTAMPs: fetching TIMESTAMPTZ needs pytz.


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


def _entry(group: _Group, by: str) -> dict[str, Any]:
    names = GROUPINGS[by][2]
    entry: dict[str, Any] = dict(zip(names, group.key, strict=True))
    if by == "session" and group.first is not None and group.last is not None:
        entry["firstActivity"] = iso_utc(group.first)
        entry["lastActivity"] = iso_utc(group.last)
    entry.update(token_fields(group.tokens))
    entry["totalCost"] = group.cost
    if by != "model":
        entry["modelsUsed"] = [model for _, model, _, _ in sorted(group.models, key=lambda m: (m[0], m[1]))]
        entry["modelBreakdowns"] = [
            {"modelName": model, **dict(zip(TOKEN_FIELDS, tokens, strict=True)), "cost": cost}
            for _, model, tokens, cost in sorted(group.models, key=lambda m: (-m[3], m[1]))
        ]
    return entry


@dataclass(frozen=True)
class Selection:
    """Which calls a report counts and how it cuts time.

    ``since`` and ``until`` are inclusive days in the time zone ``tz``; ``users``, ``projects`` and
    ``models``, when given, keep only those users' / projects' / models' calls (a model as the
    reports label it, ``-fast`` included); weeks start on ``start_of_week`` (0 is Sunday, as
    ccusage's default).
    """

    since: date | None = None
    until: date | None = None
    tz: str = "UTC"
    users: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    start_of_week: int = 0
    models: tuple[str, ...] = ()


#: A call's model as ccusage labels it: fast mode is a model of its own.
MODEL_LABEL_SQL = "CASE WHEN speed = 'fast' THEN model || '-fast' ELSE model END"
#: The calls a report reads: each deduplicated call with its local time ``lt``, the first day of its
#: local week, and its model as ccusage labels it; filtered by user, project and model (not by day:
#: blocks are cut before they are filtered).
CALLS_SQL = f"""
    SELECT *, timezone($tz, ts) AS lt,
        strftime(CAST(timezone($tz, ts) AS DATE)
            - CAST((dayofweek(timezone($tz, ts)) - $start_of_week + 7) % 7 AS INTEGER), '%Y-%m-%d') AS week_start,
        {MODEL_LABEL_SQL} AS model_label
    FROM usage_messages
    WHERE (len($users) = 0 OR list_contains($users, user_name))
        AND (len($projects) = 0 OR list_contains($projects, project))
        AND (len($models) = 0 OR list_contains($models, {MODEL_LABEL_SQL}))
"""
#: The four token sums (input, output, cache creation, cache read) and the cost of a group of calls.
SUMS_SQL = """sum(input_tokens), sum(output_tokens), sum(cache_write_5m_tokens + cache_write_1h_tokens),
    sum(cache_read_tokens), sum(cost_usd)"""


def calls_parameters(selection: Selection) -> dict[str, Any]:
    """The named parameters of :data:`CALLS_SQL`."""
    return {
        "tz": selection.tz,
        "start_of_week": selection.start_of_week,
        "users": list(selection.users),
        "projects": list(selection.projects),
        "models": list(selection.models),
    }


def usage_report(
    con: duckdb.DuckDBPyConnection,
    by: str,
    since: date | None = None,
    until: date | None = None,
    tz: str = "UTC",
    selection: Selection | None = None,
) -> dict[str, Any]:
    """Tokens and cost of the deduplicated calls grouped ``by`` day, week, month, session, user, project or model.

    ``since`` and ``until`` are inclusive days, and days, weeks and months are cut, in the time zone
    ``tz``; a ``selection`` replaces all three and adds the user, project and week-start choices.
    Raises ValueError for an unknown grouping or time zone.
    """
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}; use one of {', '.join(GROUPINGS)}")
    selection = selection or Selection(since=since, until=until, tz=tz)
    check_timezone(selection.tz)
    key_sql, list_name, _ = GROUPINGS[by]
    keys = ", ".join(f"{expression} AS k{i}" for i, expression in enumerate(key_sql))
    key_names = ", ".join(f"k{i}" for i in range(len(key_sql)))
    rows = con.execute(
        f"""
        WITH calls AS ({CALLS_SQL})
        SELECT {keys}, model_label, timezone('UTC', min(ts)), timezone('UTC', max(ts)), {SUMS_SQL}
        FROM calls
        WHERE ($since IS NULL OR CAST(lt AS DATE) >= $since) AND ($until IS NULL OR CAST(lt AS DATE) <= $until)
        GROUP BY {key_names}, model_label
        """,
        {**calls_parameters(selection), "since": selection.since, "until": selection.until},
    ).fetchall()
    width = len(key_sql)
    groups: dict[tuple[Any, ...], _Group] = {}
    for row in rows:
        key = tuple(row[:width])
        model, first, last = row[width], row[width + 1], row[width + 2]
        tokens = [int(value) for value in row[width + 3 : width + 7]]
        group = groups.setdefault(key, _Group(key))
        group.add(model, first, last, tokens, float(row[width + 7]))
    if by in BY_TIME:
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
        "totals": {**token_fields(totals), "totalCost": total_cost},
    }


def usage_by_user_and_model(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, list[int], float]]:
    """(user, model label, [input, output, cache creation, cache read] tokens, cost) of every call
    ever made, summed per user and model: the report's totals, cut finer (for ``/metrics``)."""
    rows = con.execute(
        f"""
        WITH calls AS ({CALLS_SQL})
        SELECT user_name, coalesce(model_label, ''), {SUMS_SQL}
        FROM calls
        GROUP BY ALL
        ORDER BY ALL
        """,
        calls_parameters(Selection()),
    ).fetchall()
    return [(user, model, [int(value) for value in sums[:4]], float(sums[4])) for user, model, *sums in rows]


def materialize_calls(con: duckdb.DuckDBPyConnection) -> None:
    """Compute the deduplicated calls once for this connection: a temporary table ``usage_messages``
    shadows the view of that name for every later query on it.

    Only for a reader of a file that no longer changes (the dashboard's snapshot): the view
    deduplicates ``usage_rows`` with a window over every row at each query, and a page asks
    several. Nothing is written to the file (temporary tables live in memory).
    """
    if con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'usage_messages'").fetchone() == (1,):
        con.execute("CREATE TEMPORARY TABLE usage_messages AS SELECT * FROM main.usage_messages")


def unpriced_usage(con: duckdb.DuckDBPyConnection, selection: Selection) -> list[dict[str, Any]]:
    """The models whose selected calls had tokens but no price (counted at $0), with those calls' tokens."""
    rows = con.execute(
        f"""
        WITH calls AS ({CALLS_SQL})
        SELECT model_label, count(*), sum(input_tokens), sum(output_tokens),
            sum(cache_write_5m_tokens + cache_write_1h_tokens), sum(cache_read_tokens)
        FROM calls
        WHERE cost_source = $unpriced
            AND input_tokens + output_tokens + cache_write_5m_tokens + cache_write_1h_tokens + cache_read_tokens > 0
            AND ($since IS NULL OR CAST(lt AS DATE) >= $since) AND ($until IS NULL OR CAST(lt AS DATE) <= $until)
        GROUP BY model_label
        ORDER BY model_label
        """,
        {
            **calls_parameters(selection),
            "since": selection.since,
            "until": selection.until,
            "unpriced": COST_UNPRICED,
        },
    ).fetchall()
    return [
        {"model": model, "calls": int(calls), **token_fields([int(value) for value in tokens])}
        for model, calls, *tokens in rows
    ]


def project_names(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Project folder -> the working directory it stands for (home as ``~``), for folders whose calls say it.

    A folder's most frequent ``cwd`` is used only if Claude Code would name the folder after it, so a
    session that changed directory does not rename its project.
    """
    rows = con.execute(
        "SELECT project, cwd FROM usage_messages WHERE cwd IS NOT NULL"
        " GROUP BY project, cwd ORDER BY project, count(*) DESC, cwd"
    ).fetchall()
    names: dict[str, str] = {}
    for folder, cwd in rows:
        if folder not in names and folder_of(cwd) == folder:
            names[folder] = readable_path(cwd)
    return names


def project_folder(name: str) -> str:
    """A ``--project`` value as a project folder: a directory (``/home/bob/src/x``, ``~/src/x``) is
    turned into the folder Claude Code names after it (``-home-bob-src-x``); anything else is a folder."""
    if name.startswith(("/", "~")):
        return folder_of(str(Path(name).expanduser()))
    return name


def local_timezone(environ: Mapping[str, str] | None = None, localtime: Path = Path("/etc/localtime")) -> str:
    """The machine's IANA time zone, as ccusage defaults to it: ``$TZ``, else ``/etc/localtime``'s link, else UTC."""
    environ = os.environ if environ is None else environ
    name = environ.get("TZ", "").removeprefix(":")
    if name:
        try:
            return check_timezone(name)
        except ValueError:
            pass  # a POSIX rule such as "EST5EDT,M3.2.0,M11.1.0" is not a zone name; try the link
    try:
        target = str(localtime.resolve(strict=True))
    except OSError:
        return "UTC"
    _, found, zone = target.partition("zoneinfo/")
    if found:
        try:
            return check_timezone(zone)
        except ValueError:
            pass
    return "UTC"


def week_day(text: str) -> int:
    """A ``--start-of-week`` value (``sunday`` … ``saturday``), as DuckDB numbers days (Sunday is 0)."""
    try:
        return WEEK_DAYS.index(text.lower())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day of the week ({', '.join(WEEK_DAYS)})") from None


class UsageReport(Report):
    """``sessionpipe report usage [--by GROUPING] [--since DAY] [--until DAY] [--tz ZONE] …``."""

    help = "tokens by kind and cost (ccusage-compatible JSON)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--by", choices=(*GROUPINGS, "block"), default="day", help="grouping; block: 5-hour windows (default: day)"
        )
        parser.add_argument("--since", type=iso_date, metavar="YYYY-MM-DD", help="first day included (or YYYYMMDD)")
        parser.add_argument("--until", type=iso_date, metavar="YYYY-MM-DD", help="last day included (or YYYYMMDD)")
        parser.add_argument(
            "-z",
            "--tz",
            "--timezone",
            dest="tz",
            metavar="ZONE",
            help="IANA time zone for days, weeks and months (default: this machine's)",
        )
        parser.add_argument(
            "--start-of-week", type=week_day, default=0, metavar="DAY", help="first day of a week (default: sunday)"
        )
        parser.add_argument("--user", action="append", default=[], metavar="NAME", help="only this user (repeatable)")
        parser.add_argument(
            "--project",
            action="append",
            default=[],
            metavar="DIR",
            help="only this project: its directory (/home/me/src/app) or its folder name (repeatable)",
        )
        parser.add_argument(
            "--model",
            action="append",
            default=[],
            metavar="NAME",
            help="only this model, as the report names it (claude-opus-4-1, …-fast; repeatable)",
        )
        parser.add_argument("--breakdown", action="store_true", help="a row per model under each group in the table")

    def build(self, con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
        data = self.data(con, args)
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        names = project_names(con) if args.by in ("session", "project") else {}
        return data, render_text(
            data, args.by, breakdown=args.breakdown, width=width, project_names=names, tz=_selection(args).tz
        )

    def data(self, con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> dict[str, Any]:
        require_table(con, "usage_rows", "usage")
        selection = _selection(args)
        try:
            if args.by == "block":
                data = block_report(con, selection, datetime.now(UTC))
            else:
                data = usage_report(con, args.by, selection=selection)
            unpriced = unpriced_usage(con, selection)
        except ValueError as error:
            raise ReportError(str(error)) from None
        if unpriced:
            data[UNPRICED_KEY] = unpriced
        return data

    def notes(self, data: dict[str, Any]) -> list[str]:
        """The models left unpriced, named with their tokens."""
        return unpriced_notes(data)


def _selection(args: argparse.Namespace) -> Selection:
    """The calls ``report usage``'s flags select; ReportError when the days are the wrong way round."""
    if args.since and args.until and args.since > args.until:
        raise ReportError(f"--since {args.since} is after --until {args.until}")
    return Selection(
        since=args.since,
        until=args.until,
        tz=args.tz or local_timezone(),
        users=tuple(args.user),
        projects=tuple(project_folder(name) for name in args.project),
        start_of_week=args.start_of_week,
        models=tuple(args.model),
    )


def block_report(con: duckdb.DuckDBPyConnection, selection: Selection, now: datetime) -> dict[str, Any]:
    """ccusage's ``blocks --json``: the selected calls in 5-hour blocks, as of ``now``."""
    check_timezone(selection.tz)
    calls = load_calls(con, CALLS_SQL, calls_parameters(selection))
    return blocks_report(calls, now, selection.tz, NOT_A_MODEL, since=selection.since, until=selection.until)
