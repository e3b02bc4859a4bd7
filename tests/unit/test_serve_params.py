"""The dashboard's parameters: the API reads them with the report's own flags; pages' filters."""

from __future__ import annotations

from datetime import date

import pytest

from sessionpipe_runner.processors.usage.report import UsageReport
from sessionpipe_runner.serve.params import QueryError, parse_filters, report_query


def test_api_parameters_mean_what_the_cli_flags_mean() -> None:
    query = report_query(UsageReport())
    args = query.parse(
        [("by", "week"), ("since", "20250101"), ("user", "ann"), ("user", "bob"), ("tz", ""), ("model", "m")]
    )
    assert (args.by, args.since, args.user, args.tz, args.model) == (
        "week",
        date(2025, 1, 1),
        ["ann", "bob"],
        None,
        ["m"],
    )
    assert query.parse([]).by == "day"
    assert "breakdown" not in query.flags  # text-only flag, not a parameter
    assert query.flags["start_of_week"] == "--start-of-week"


@pytest.mark.parametrize(
    ("pairs", "reason"),
    [
        ([("by", "fortnight")], "invalid choice: 'fortnight'"),
        ([("since", "2025-02-30")], "is not a date"),
        ([("start_of_week", "someday")], "is not a day of the week"),
        ([("select", "1")], "unknown parameter 'select'"),
        ([("json", "1")], "unknown parameter 'json'"),
    ],
)
def test_bad_api_parameters_are_one_line_errors(pairs: list[tuple[str, str]], reason: str) -> None:
    with pytest.raises(QueryError, match=reason) as caught:
        report_query(UsageReport()).parse(pairs)
    assert "\n" not in str(caught.value)


def test_page_filters_parse_and_link_back() -> None:
    filters = parse_filters(
        {"since": "2025-01-02", "tz": "Europe/Paris", "user": "ann", "project": "<p>", "by": "week"},
        "UTC",
        {"by": ("day", "week", "month")},
    )
    assert (filters.since, filters.until, filters.tz, filters.user, filters.extra) == (
        date(2025, 1, 2),
        None,
        "Europe/Paris",
        "ann",
        {"by": "week"},
    )
    assert filters.selection().users == ("ann",) and filters.selection().projects == ("<p>",)
    assert filters.link("/sessions", user="") == "/sessions?since=2025-01-02&tz=Europe%2FParis&project=%3Cp%3E&by=week"
    assert parse_filters({}, "Asia/Tokyo").tz == "Asia/Tokyo"
    assert parse_filters({"project": "~/src/app"}, "UTC").selection().projects[0].endswith("-src-app")


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"since": "2025-13-01"}, "since: '2025-13-01' is not a date"),
        ({"since": "2025-02-01", "until": "2025-01-01"}, "since 2025-02-01 is after until 2025-01-01"),
        ({"tz": "Mars/Olympus"}, "tz 'Mars/Olympus' is not an IANA time zone"),
        ({"by": "year"}, "by='year' is not one of day, week, month"),
        ({"order": "1; DROP TABLE x"}, "unknown parameter 'order'"),
        ([("user", "a"), ("user", "b")], "parameter 'user' given twice"),
    ],
)
def test_bad_page_filters_are_one_line_errors(query: dict[str, str] | list[tuple[str, str]], reason: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_filters(query, "UTC", {"by": ("day", "week", "month")})
    assert reason in str(caught.value) and "\n" not in str(caught.value)
