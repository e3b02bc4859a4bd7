"""The README's table of the operator's metrics names exactly the metrics the operator registers."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from sessionpipe_operator import metrics

README = Path(__file__).resolve().parents[3] / "README.md"


def _registered() -> dict[str, list[str]]:
    found = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            family = value.describe()[0]
            name = family.name + ("_total" if family.type == "counter" else "")
            found[name] = list(value._labelnames)
    return found


def test_the_readme_lists_every_metric_with_its_labels() -> None:
    rows = re.findall(r"^\| `(sessionpipe_[a-z_]+)` \| ([a-z, ]+) \|", README.read_text(), re.MULTILINE)
    documented = {name: [label.strip() for label in labels.split(",")] for name, labels in rows}
    assert documented == _registered()
