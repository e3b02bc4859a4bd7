"""The dashboard's SVG charts: proportions, folding of small series, escaping of labels."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from sessionpipe_runner.serve.charts import (
    MAX_SERIES,
    OTHER,
    horizontal_bars,
    money,
    nice_ceiling,
    series_order,
    short_number,
    stacked_bars,
)

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<img src=x onerror=alert(1)>"


def rects(svg: str) -> list[ET.Element]:
    return [r for r in ET.fromstring(svg).iter(f"{SVG}rect") if r.get("class") == "bar"]


@pytest.mark.parametrize(
    ("value", "ceiling"), [(0, 1.0), (0.7, 1.0), (1, 1.0), (1.2, 2.0), (2.3, 2.5), (4, 5.0), (7, 10.0), (1234, 2000.0)]
)
def test_nice_ceiling_is_the_next_round_number(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == ceiling


def test_short_numbers_and_money() -> None:
    assert [short_number(v) for v in (0, 999, 1500, 2_500_000, 3e9)] == ["0", "999", "1.5k", "2.5M", "3G"]
    assert money(1234.5) == "$1,234.50"


def test_stacked_bars_are_proportional_and_stack_in_series_order() -> None:
    svg = stacked_bars([("2025-01", {"a": 3.0, "b": 1.0}), ("2025-02", {"a": 1.0})], title="t")
    bars = rects(svg)
    assert len(bars) == 3
    heights = [float(bar.get("height", "0")) for bar in bars]
    assert heights[0] == pytest.approx(3 * heights[2]) and heights[1] == pytest.approx(heights[2])
    first, second = bars[0], bars[1]  # a at the bottom, b stacked on top of it
    assert float(second.get("y", "0")) + float(second.get("height", "0")) == pytest.approx(float(first.get("y", "0")))
    assert first.get("fill") != second.get("fill")


def test_series_beyond_the_limit_are_summed_into_other() -> None:
    parts = {f"model-{n}": float(100 - n) for n in range(MAX_SERIES + 3)}
    order = series_order([("x", parts)])
    assert len(order) == MAX_SERIES and order[-1] == OTHER and order[0] == "model-0"
    svg = stacked_bars([("x", parts)], title="t")
    titles = [bar.findtext(f"{SVG}title") or "" for bar in rects(svg)]
    other = [t for t in titles if f"· {OTHER}:" in t]
    assert other == [
        f"x · {OTHER}: {short_number(sum(parts[f'model-{n}'] for n in range(MAX_SERIES - 1, MAX_SERIES + 3)))}"
    ]


def test_labels_titles_and_series_names_are_escaped() -> None:
    for svg in (
        stacked_bars([(HOSTILE, {HOSTILE: 1.0})], title=HOSTILE),
        horizontal_bars([(HOSTILE, 2.0)], title=HOSTILE),
    ):
        assert "<img" not in svg
        root = ET.fromstring(svg)  # well-formed XML, the name kept as text
        texts = [t.text for t in root.iter(f"{SVG}text")]
        assert HOSTILE in texts
        assert root.get("aria-label") == HOSTILE


def test_horizontal_bars_scale_to_the_largest_and_say_when_empty() -> None:
    bars = rects(horizontal_bars([("a", 4.0), ("b", 1.0)], title="t"))
    widths = [float(bar.get("width", "0")) for bar in bars]
    assert widths[0] == pytest.approx(4 * widths[1])
    assert "nothing in this selection" in horizontal_bars([], title="t")


def test_an_empty_stacked_chart_is_still_a_chart() -> None:
    svg = stacked_bars([], title="nothing")
    assert rects(svg) == [] and re.search(r"<svg[^>]*class=\"chart\"", svg)
