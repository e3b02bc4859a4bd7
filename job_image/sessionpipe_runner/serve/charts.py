"""Charts as SVG drawn on the server: no script, no web font, nothing fetched, so a page works
offline and in a locked-down cluster. Pure functions from numbers to markup; every label is
escaped (a project folder may be named ``<img src=x onerror=alert(1)>``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup, escape

#: Series colours (colour-blind-safe, Okabe-Ito), reused in order past the eighth series.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")
#: Series past this many are summed into one "other" series: a legend of 30 models reads as noise.
MAX_SERIES = 7
OTHER = "other"


def colour(index: int) -> str:
    """The colour of the ``index``-th series."""
    return PALETTE[index % len(PALETTE)]


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least ``value`` (1 for nothing)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * (1 - 1e-12):
            return float(step * power)
    return float(10 * power)  # unreachable: 10 * power > value always


def short_number(value: float) -> str:
    """``1234567`` as ``1.2M``: axis labels stay narrow."""
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def money(value: float) -> str:
    """A dollar amount for a label."""
    return f"${value:,.2f}"


def series_order(bars: Sequence[tuple[str, Mapping[str, float]]]) -> list[str]:
    """The series of ``bars``, largest total first, the tail beyond :data:`MAX_SERIES` as :data:`OTHER`."""
    totals: dict[str, float] = {}
    for _, parts in bars:
        for name, value in parts.items():
            totals[name] = totals.get(name, 0.0) + value
    ordered = sorted(totals, key=lambda name: (-totals[name], name))
    if len(ordered) > MAX_SERIES:
        return [*ordered[: MAX_SERIES - 1], OTHER]
    return ordered


def _fold(parts: Mapping[str, float], series: Sequence[str]) -> dict[str, float]:
    kept = {name: value for name, value in parts.items() if name in series}
    rest = sum(value for name, value in parts.items() if name not in series)
    if rest:
        kept[OTHER] = kept.get(OTHER, 0.0) + rest
    return kept


def stacked_bars(
    bars: Sequence[tuple[str, Mapping[str, float]]],
    *,
    title: str,
    format_value: Callable[[float], str] = short_number,
    width: int = 900,
    height: int = 260,
) -> Markup:
    """Vertical bars, one per (label, {series: value}), each stacked by series, with axis and legend.

    Each segment has a ``<title>`` (label, series, value) that a browser shows on hover.
    """
    series = series_order(bars)
    left, right, top, bottom = 64, 12, 28, 44
    legend_height = 18 * math.ceil(len(series) / 4) if series else 0
    plot_w, plot_h = width - left - right, height - top - bottom
    folded = [(label, _fold(parts, series)) for label, parts in bars]
    peak = nice_ceiling(max((sum(parts.values()) for _, parts in folded), default=0.0))
    out = [_open_svg(width, height + legend_height, title), _text(left, 18, title, "chart-title")]
    for tick in range(5):
        value = peak * tick / 4
        y = top + plot_h - plot_h * tick / 4
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(_text(left - 6, y + 4, format_value(value), "axis", anchor="end"))
    slot = plot_w / max(len(folded), 1)
    bar_w = max(slot * 0.8, 1.0)
    label_every = max(1, math.ceil(len(folded) / 12))
    for index, (label, parts) in enumerate(folded):
        x = left + slot * index + (slot - bar_w) / 2
        y = top + plot_h
        for number, name in enumerate(series):
            value = parts.get(name, 0.0)
            if value <= 0:
                continue
            h = plot_h * value / peak
            y -= h
            out.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{colour(number)}"><title>{escape(label)} · {escape(name)}: '
                f"{escape(format_value(value))}</title></rect>"
            )
        if index % label_every == 0:
            out.append(_text(x + bar_w / 2, top + plot_h + 16, label, "axis", anchor="middle"))
    out.append(_legend(series, left, height + 4, plot_w))
    out.append("</svg>")
    return Markup("".join(out))


def horizontal_bars(
    items: Sequence[tuple[str, float]],
    *,
    title: str,
    format_value: Callable[[float], str] = short_number,
    width: int = 440,
    bar_height: int = 20,
) -> Markup:
    """One horizontal bar per (label, value), largest scale first as given, value at the bar's end."""
    label_w, top = 170, 28
    height = top + bar_height * max(len(items), 1) + 8
    peak = max((value for _, value in items), default=0.0) or 1.0
    plot_w = width - label_w - 80
    out = [_open_svg(width, height, title), _text(0, 18, title, "chart-title")]
    for index, (label, value) in enumerate(items):
        y = top + bar_height * index
        w = max(plot_w * value / peak, 0.0)
        out.append(_text(label_w - 6, y + bar_height * 0.7, _clip(label, 26), "axis", anchor="end"))
        out.append(
            f'<rect class="bar" x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{bar_height - 4}" '
            f'fill="{colour(0)}"><title>{escape(label)}: {escape(format_value(value))}</title></rect>'
        )
        out.append(_text(label_w + w + 4, y + bar_height * 0.7, format_value(value), "axis"))
    if not items:
        out.append(_text(label_w, top + 14, "nothing in this selection", "axis"))
    out.append("</svg>")
    return Markup("".join(out))


def _open_svg(width: int, height: int, title: str) -> str:
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'
    )


def _text(x: float, y: float, text: str, css: str, anchor: str = "start") -> str:
    return f'<text class="{css}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{escape(text)}</text>'


def _legend(series: Sequence[str], left: int, y: int, width: int) -> str:
    column = width / 4
    out = []
    for index, name in enumerate(series):
        x = left + column * (index % 4)
        row_y = y + 18 * (index // 4)
        out.append(f'<rect x="{x:.1f}" y="{row_y}" width="10" height="10" fill="{colour(index)}"/>')
        out.append(_text(x + 14, row_y + 9, _clip(name, 32), "legend"))
    return "".join(out)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
