"""Query parameters: the API's read with the report's own command-line flags, the pages' filters.

``/api/usage?by=week&user=ann`` is parsed as ``report usage --by week --user ann`` by the very
parser the command line builds, so the API accepts, refuses and means exactly what the CLI does.
No text from the client ever becomes SQL: values reach the queries as bound parameters only.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, NoReturn
from urllib.parse import urlencode

from sessionpipe_runner.processors.usage.report import Selection, check_timezone, project_folder
from sessionpipe_runner.reports import Report, iso_date


class QueryError(ValueError):
    """A query parameter the dashboard cannot use; the message is one line for an HTTP 400."""


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise QueryError(message)


@dataclass(frozen=True)
class ReportQuery:
    """A report's flags as query parameters: parameter name -> the flag it stands for."""

    report: Report
    parser: argparse.ArgumentParser
    flags: dict[str, str]

    def parse(self, query: Iterable[tuple[str, str]]) -> argparse.Namespace:
        """The namespace the CLI would make of these parameters; QueryError for an unknown or bad one.

        An empty value means the parameter was not given (an empty form field).
        """
        argv: list[str] = []
        for name, value in query:
            if name not in self.flags:
                known = ", ".join(sorted(self.flags)) or "none"
                raise QueryError(f"unknown parameter {name!r} (known: {known})")
            if value != "":
                argv += [self.flags[name], value]
        return self.parser.parse_args(argv)


def report_query(report: Report) -> ReportQuery:
    """The query parameters of ``report``: each of its flags that takes a value, by its dest name."""
    parser = _RaisingParser(add_help=False)
    report.add_arguments(parser)
    flags = {
        action.dest: max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings and action.nargs != 0
    }
    return ReportQuery(report, parser, flags)


#: The pages' filter parameters (each page may add its own, such as ``by`` or ``kind``).
FILTERS = ("since", "until", "tz", "user", "project", "model")


@dataclass(frozen=True)
class Filters:
    """A page's filters, from its URL: days (inclusive, in ``tz``), one user, project and model at
    most, and the page's own extra parameters (``by``, ``kind``) as given."""

    tz: str
    since: date | None = None
    until: date | None = None
    user: str = ""
    project: str = ""
    model: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def selection(self, **changes: Any) -> Selection:
        """The usage reports' selection of these filters (``changes`` override, as ``users=(…)``)."""
        chosen = Selection(
            since=self.since,
            until=self.until,
            tz=self.tz,
            users=(self.user,) if self.user else (),
            projects=(project_folder(self.project),) if self.project else (),
            models=(self.model,) if self.model else (),
        )
        return replace(chosen, **changes)

    def parameters(self) -> dict[str, str]:
        """The filters as URL parameters, only those set (the page's own extras included)."""
        values = {
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
            "tz": self.tz,
            "user": self.user,
            "project": self.project,
            "model": self.model,
            **self.extra,
        }
        return {name: value for name, value in values.items() if value}

    def link(self, path: str, **changes: str) -> str:
        """``path`` with these filters in its query, ``changes`` applied (an empty value drops one)."""
        values = {**self.parameters(), **changes}
        query = urlencode({name: value for name, value in values.items() if value})
        return f"{path}?{query}" if query else path


def parse_filters(
    query: Mapping[str, str] | Sequence[tuple[str, str]],
    default_tz: str,
    extra: Mapping[str, Sequence[str]] | None = None,
) -> Filters:
    """A page's filters from its query parameters; QueryError (one line) for anything unusable.

    ``extra`` names the page's own parameters with their allowed values (empty: any value).
    """
    pairs = list(query.items()) if isinstance(query, Mapping) else list(query)
    extra = extra or {}
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in FILTERS and name not in extra:
            raise QueryError(f"unknown parameter {name!r} (known: {', '.join([*FILTERS, *extra])})")
        if name in values:
            raise QueryError(f"parameter {name!r} given twice")
        values[name] = value.strip()
    own: dict[str, str] = {}
    for name, allowed in extra.items():
        value = values.get(name, "")
        if value and allowed and value not in allowed:
            raise QueryError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        if value:
            own[name] = value
    since, until = _day(values, "since"), _day(values, "until")
    if since and until and since > until:
        raise QueryError(f"since {since} is after until {until}")
    tz = values.get("tz") or default_tz
    try:
        check_timezone(tz)
    except ValueError:
        raise QueryError(f"tz {tz!r} is not an IANA time zone (for example UTC or Europe/Paris)") from None
    return Filters(
        tz=tz,
        since=since,
        until=until,
        user=values.get("user", ""),
        project=values.get("project", ""),
        model=values.get("model", ""),
        extra=own,
    )


def _day(values: Mapping[str, str], name: str) -> date | None:
    text = values.get(name, "")
    if not text:
        return None
    try:
        return iso_date(text)
    except argparse.ArgumentTypeError as error:
        raise QueryError(f"{name}: {error}") from None
