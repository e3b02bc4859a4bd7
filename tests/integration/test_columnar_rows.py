"""The compiled reading's columnar rows store exactly what the Python reading stores, every column.

A cold run with the compiled parser (its rows as columns, a batch of sessions inserted as one Arrow
table, by the runner alone and with worker threads) against a cold run with
``SESSIONPIPE_USAGE_READING=python`` (tuples), on the real corpus read in place and on a generated one.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from sessionpipe_demo import generate_corpus
from tests.runner_support import CORPUS, run_summary, sessionpipe, sessionpipe_env

ROWS = "SELECT * FROM usage_rows ORDER BY session_file, line_no"


def cold_run(sessions: Path, db: Path, workers: str, **env: str) -> tuple[dict[str, object], list[tuple[object, ...]]]:
    result = sessionpipe(
        "run", "--processor", "usage", "--sessions", sessions, "--db", db, "--workers", workers, "--json",
        env=sessionpipe_env(**env),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(ROWS).fetchall()
    return run_summary(result), rows


def comparable(row: tuple[object, ...]) -> tuple[object, ...]:
    """A row with float bits and value types visible (``==`` takes 1 for True and 0.0 for -0.0)."""
    return tuple((type(v).__name__, v.hex() if isinstance(v, float) else v) for v in row)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("columnar") / "sessions"
    generate_corpus(root, users=3, target_bytes=3 * 1024 * 1024, seed=11)
    return root


@pytest.mark.parametrize("which", ["real", "generated"])
def test_columnar_rows_store_the_same_values_as_the_python_reading(which: str, generated: Path, tmp_path: Path) -> None:
    sessions = CORPUS if which == "real" else generated
    python_summary, python_rows = cold_run(
        sessions, tmp_path / "python.duckdb", "1", SESSIONPIPE_USAGE_READING="python"
    )
    assert len(python_rows) > 100
    expected = [comparable(row) for row in python_rows]
    for workers in ("1", "2"):
        summary, rows = cold_run(sessions, tmp_path / f"native-{workers}.duckdb", workers)
        assert summary["workers"] == (0 if workers == "1" else 2)
        for key in ("processed", "items", "errors", "issues"):
            assert summary[key] == python_summary[key], (workers, key)
        assert len(rows) == len(python_rows)
        assert [comparable(row) for row in rows] == expected, workers
