"""Schema migrations: an owner's pending steps are applied in order, all of them or none."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from sessionpipe_runner.migrations import Migration, apply_migrations

STEPS = (
    Migration("0002_more", "ALTER TABLE things ADD COLUMN size BIGINT"),
    Migration("0001_things", "CREATE TABLE things (name VARCHAR); CREATE TABLE other (id INTEGER)"),
)


def recorded(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return con.execute("SELECT owner, id FROM schema_migrations ORDER BY ALL").fetchall()


def test_pending_steps_are_applied_in_order_once(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "db.duckdb")) as con:
        assert apply_migrations(con, "p", STEPS) == ["0001_things", "0002_more"]
        assert apply_migrations(con, "p", STEPS) == []
        later = (*STEPS, Migration("0003_index", "CREATE INDEX things_name ON things (name)"))
        assert apply_migrations(con, "p", later) == ["0003_index"]
        assert recorded(con) == [("p", "0001_things"), ("p", "0002_more"), ("p", "0003_index")]
        assert [row[0] for row in con.execute("DESCRIBE things").fetchall()] == ["name", "size"]


def test_a_failing_step_leaves_none_of_the_owners_pending_steps_applied(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "db.duckdb")) as con:
        apply_migrations(con, "runner", (Migration("0001_a", "CREATE TABLE a (x INTEGER)"),))
        broken = (*STEPS, Migration("0003_broken", "ALTER TABLE nowhere ADD COLUMN y INTEGER"))
        with pytest.raises(duckdb.CatalogException):
            apply_migrations(con, "p", broken)
        assert recorded(con) == [("runner", "0001_a")]  # another owner's steps stay
        tables = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert tables == {"schema_migrations", "a"}
        assert apply_migrations(con, "p", STEPS) == ["0001_things", "0002_more"]  # the fixed set applies
