"""Schema migrations: the steps that create and evolve tables, each applied once per database.

The runner's tables and every processor's are migrated the same way; the applied steps are
recorded in ``schema_migrations`` by owner (``runner`` or ``processor:<name>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sessionpipe_runner.tables import transaction

if TYPE_CHECKING:
    import duckdb


@dataclass(frozen=True)
class Migration:
    """One schema step of a processor, applied once per database in ``id`` order.

    ``id`` is unique within the processor (``"0001_usage_rows"``); ``sql`` may hold several
    statements separated by semicolons.
    """

    id: str
    sql: str


def _ensure_migrations_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            owner       VARCHAR NOT NULL,
            id          VARCHAR NOT NULL,
            applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (owner, id)
        )
        """
    )


def apply_migrations(con: duckdb.DuckDBPyConnection, owner: str, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations of ``owner`` not yet recorded, in ``id`` order, in one transaction:
    all of them or, if one fails, none (a new database's first run paid a commit for each, about
    half of its migrating).

    Returns the ids applied now.
    """
    _ensure_migrations_table(con)
    done = {row[0] for row in con.execute("SELECT id FROM schema_migrations WHERE owner = ?", [owner]).fetchall()}
    pending = [migration for migration in sorted(migrations, key=lambda m: m.id) if migration.id not in done]
    if pending:
        with transaction(con):
            for migration in pending:
                con.execute(migration.sql)
                con.execute("INSERT INTO schema_migrations (owner, id) VALUES (?, ?)", [owner, migration.id])
    return [migration.id for migration in pending]
