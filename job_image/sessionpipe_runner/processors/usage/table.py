"""Plain-text tables for the usage reports that fit the terminal they are printed on.

Tables are laid out by rich (no colour, no markup: every cell is literal text). Printed to a pipe or
a file they keep their natural width. On a terminal narrower than that, the table goes compact as
ccusage's does: the cache columns are dropped (``--json`` has them) and the remaining text columns
wrap within the width.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

#: Wide enough that no table wraps: the width used when output is not a terminal.
UNLIMITED = 100_000
#: A home folder at the start of a path: shown as ``~``.
HOME = re.compile(r"^(/home/[^/]+|/Users/[^/]+|/root)(?=/|$)")


@dataclass(frozen=True)
class Column:
    """A column's header, whether it is text (left-aligned, may wrap) and whether compact tables drop it."""

    header: str
    text: bool = False
    optional: bool = False


def render_table(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], total: Sequence[str], width: int | None
) -> str:
    """``rows`` under ``columns`` and a ``total`` line, ruled, within ``width`` characters (None: no limit)."""
    natural = _render(columns, rows, total, UNLIMITED, compact=False)
    if width is None or max(map(len, natural.splitlines()), default=0) <= width:
        return natural
    return _render(columns, rows, total, width, compact=True)


def _render(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], total: Sequence[str], width: int, compact: bool
) -> str:
    # rich is imported when a table is drawn, not whenever the CLI builds its parser.
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    kept = [i for i, column in enumerate(columns) if not (compact and column.optional)]
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False, show_footer=True)
    for i in kept:
        column = columns[i]
        table.add_column(
            Text(column.header),
            footer=Text(total[i]),
            justify="left" if column.text else "right",
            no_wrap=not column.text,
            overflow="fold",
            min_width=None if column.text else len(column.header),
        )
    for row in rows:
        table.add_row(*(Text(row[i]) for i in kept))
    out = io.StringIO()
    console = Console(
        file=out, width=width, color_system=None, emoji=False, highlight=False, markup=False, force_terminal=False
    )
    console.print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def readable_path(path: str) -> str:
    """A working directory as people write it: the home folder as ``~``."""
    return HOME.sub("~", path)


def folder_of(path: str) -> str:
    """The project folder Claude Code names after a working directory (every other character a ``-``)."""
    return re.sub(r"[^A-Za-z0-9]", "-", path)
