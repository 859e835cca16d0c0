"""Line charts drawn as SVG by the server, from the figures `reports.series` returns.

Why server-side SVG rather than a JavaScript charting library: the console must work offline
with nothing but Python installed, and an SVG string is the whole dependency. The same chart is
an image an operator can script (`GET /admin/stats/chart`), it scales to any width, and it
carries its own text alternative (title, description, one <title> per line).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any, Literal

from nanogate.console.money import Money

Metric = Literal["requests", "images", "credits", "error_rate"]
TITLES: dict[str, str] = {
    "requests": "Requests",
    "images": "Images",
    "credits": "Credits spent",
    "error_rate": "Error rate",
}
# Okabe and Ito's palette, told apart with every common colour-vision deficiency; the yellow is
# left out (too pale on white).
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#6b6b6b", "#000000")

WIDTH, MIN_WIDTH, MAX_WIDTH, PLOT_HEIGHT = 720, 280, 1600, 220
LEFT, RIGHT, TOP, AXIS = 56, 16, 14, 26
LEGEND_ROW, CHAR_WIDTH, SWATCH = 20, 7.0, 24  # 12 px system-ui runs about 7 px per character
TICK_SPACING = 90  # px between time labels, so "16:30" never collides with its neighbour
# Error-rate axis tops: each splits into round quarters (1%, 2%, 5%, 10%, 20%, 25%).
RATE_TOPS = (0.04, 0.08, 0.2, 0.4, 0.8, 1.0)


def values_for(figures: dict[str, Any], metric: Metric) -> list[tuple[str, list[float | None]]]:
    """Each series' points for `metric`; error rate is undefined (None) where nothing ran."""
    out: list[tuple[str, list[float | None]]] = []
    for entry in figures["series"]:
        if metric == "error_rate":
            points: list[float | None] = [
                errors / requests if requests else None
                for errors, requests in zip(entry["errors"], entry["requests"], strict=True)
            ]
        else:
            points = [float(v) for v in entry[metric]]
        out.append((entry["name"], points))
    return out


def chart(
    figures: dict[str, Any], metric: Metric, width: int = WIDTH, money: Money | None = None
) -> str:
    """The SVG chart of one metric of `reports.series(...)`, one line per series, drawn for
    `width` pixels so its text stays 12 px on a phone as on a desktop. With `money`, credits
    totals also read as money."""
    lines = values_for(figures, metric)
    start = datetime.fromisoformat(figures["start"])
    step = timedelta(seconds=figures["bucket_seconds"])
    count = figures["buckets"]
    title = f"{TITLES[metric]} per {figures['by']}, last {figures['window']}"
    moments = [start + step * i for i in range(count)]
    width = max(MIN_WIDTH, min(width, MAX_WIDTH))
    return line_chart(title, moments, lines, metric, width=width, money=money)


def line_chart(
    title: str,
    moments: Sequence[datetime],
    lines: Sequence[tuple[str, Sequence[float | None]]],
    metric: Metric,
    *,
    width: int = WIDTH,
    money: Money | None = None,
) -> str:
    plot_w = width - LEFT - RIGHT
    labels = [f"{name}: {_amount(points, metric, money)}" for name, points in lines]
    widest = max((len(label) for label in labels), default=0) * CHAR_WIDTH + SWATCH
    columns = max(1, min(3, int(plot_w // widest) if widest else 3))
    legend_rows = math.ceil(len(lines) / columns) if lines else 0
    height = TOP + PLOT_HEIGHT + AXIS + legend_rows * LEGEND_ROW + 6
    present = [v for _, points in lines for v in points if v is not None]
    top = _nice_ceiling(max(present, default=0.0), metric)
    n = len(moments)

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + PLOT_HEIGHT - (PLOT_HEIGHT * v / top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="{metric}-t {metric}-d" class="chart" '
        'font-family="system-ui, sans-serif" font-size="12">',
        # Ids carry the metric: the overview shows four charts inline in one document.
        f'<title id="{metric}-t">{escape(title)}</title>',
        f'<desc id="{metric}-d">{escape(_describe(lines, metric, money))}</desc>',
    ]
    for i in range(5):  # grid lines and y labels
        value = top * i / 4
        gy = y(value)
        out.append(
            f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}" '
            f'stroke="{"#767676" if i == 0 else "#e3e3e3"}" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end" fill="#333">'
            f"{_format(value, metric)}</text>"
        )
    for i in _tick_indexes(n, max(2, plot_w // TICK_SPACING)):
        label = _time_label(moments[i], moments[1] - moments[0] if n > 1 else timedelta(0))
        out.append(
            f'<text x="{x(i):.1f}" y="{TOP + PLOT_HEIGHT + 17}" text-anchor="middle" '
            f'fill="#333">{label}</text>'
        )
    if not present or (top == 0 and metric != "error_rate"):
        out.append(
            f'<text x="{LEFT + plot_w / 2}" y="{TOP + PLOT_HEIGHT / 2}" text-anchor="middle" '
            'fill="#555">No traffic in this window</text>'
        )
    for index, (name, points) in enumerate(lines):
        colour = COLOURS[index % len(COLOURS)]
        label = escape(labels[index])
        out.append(f'<g class="series" data-series="{escape(name)}"><title>{label}</title>')
        for run in _runs(points):
            coords = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
            if len(run) == 1:
                i, v = run[0]
                out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>')
            else:
                out.append(
                    f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                    'stroke-width="2" stroke-linejoin="round"/>'
                )
        out.append("</g>")
        lx = LEFT + (index % columns) * (plot_w / columns)
        ly = TOP + PLOT_HEIGHT + AXIS + (index // columns) * LEGEND_ROW + 12
        out.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{lx + 17:.1f}" y="{ly + 1}" fill="#222">{label}</text>')
    out.append("</svg>")
    return "".join(out)


def _runs(points: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """Consecutive defined points: a gap (no requests, so no error rate) breaks the line."""
    runs: list[list[tuple[int, float]]] = [[]]
    for i, v in enumerate(points):
        if v is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((i, v))
    return [run for run in runs if run]


def _nice_ceiling(value: float, metric: Metric) -> float:
    """The smallest 1-2-5 step times 4 that holds `value`, so grid labels are round numbers."""
    if metric == "error_rate":
        return next(top for top in RATE_TOPS if top >= value or top == RATE_TOPS[-1])
    if value <= 0:
        return 4.0
    raw = value / 4
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)
    return max(step * 4, 4.0)


def _format(value: float, metric: Metric) -> str:
    if metric == "error_rate":
        return f"{value * 100:.0f}%" if value >= 0.1 or value == 0 else f"{value * 100:.1f}%"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def _total(points: Sequence[float | None], metric: Metric) -> float:
    present = [v for v in points if v is not None]
    if metric == "error_rate":
        return sum(present) / len(present) if present else 0.0
    return sum(present)


def _amount(points: Sequence[float | None], metric: Metric, money: Money | None) -> str:
    """A series' total (mean for the error rate), as its legend entry and description say it."""
    total = _total(points, metric)
    if metric == "credits" and money is not None:
        return f"{_format(total, metric)} ({money.format(total)})"
    return _format(total, metric)


def _describe(
    lines: Sequence[tuple[str, Sequence[float | None]]], metric: Metric, money: Money | None
) -> str:
    if not lines:
        return "No traffic in this window."
    word = "mean" if metric == "error_rate" else "total"
    parts = [f"{name} {word} {_amount(points, metric, money)}" for name, points in lines]
    return "; ".join(parts) + "."


def _tick_indexes(n: int, most: int) -> list[int]:
    if n <= 1:
        return list(range(n))
    step = max(1, math.ceil((n - 1) / most))
    return list(range(0, n, step))


def _time_label(moment: datetime, step: timedelta) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%m-%d") if step >= timedelta(days=1) else moment.strftime("%H:%M")
