"""Reading what a run wrote: a real DuckDB file, opened read-only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Every row of ``sql`` over the database file ``db`` (opened read-only, closed afterwards)."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()
