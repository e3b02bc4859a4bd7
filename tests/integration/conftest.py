"""Marks each integration test with why it is not in the unit tier, so ``-m`` can pick them.

The marks live here rather than in each file so that a file moved from ``tests/unit`` stays as it
was. A file not named below is ``slow``: it kills, stalls or floods real processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
#: File name -> the marker that says what it needs beyond the venv.
NEEDS = {
    "test_images.py": "images",
    "test_chart_values.py": "helm",
    "test_chart_dashboard.py": "helm",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent == HERE:
            item.add_marker(getattr(pytest.mark, NEEDS.get(item.path.name, "slow")))
