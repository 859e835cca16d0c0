"""Server-drawn SVG charts: well-formed, accessible, escaped, and true to the figures; credits
shown as money in the operator's currency."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from pydantic import ValidationError

from nanogate.console import charts
from nanogate.console.money import Money
from nanogate.core.config import Settings

SVG = "{http://www.w3.org/2000/svg}"


def figures(series: list[dict[str, Any]], buckets: int = 4) -> dict[str, Any]:
    return {
        "window": "hour",
        "by": "model",
        "bucket_seconds": 60,
        "start": "2026-11-21T11:00:00+00:00",
        "buckets": buckets,
        "series": series,
    }


def entry(name: str, requests: list[int], errors: list[int] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "requests": requests,
        "images": requests,
        "credits": [r * 1000 for r in requests],
        "errors": errors or [0] * len(requests),
    }


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # raises on anything that is not well-formed XML


def test_one_line_per_series_with_a_legend_and_text_alternatives() -> None:
    svg = charts.chart(figures([entry("a", [1, 2, 3, 4]), entry("b", [0, 1, 0, 1])]), "requests")
    root = parse(svg)
    assert root.get("role") == "img"
    assert root.get("aria-labelledby") == "requests-t requests-d"
    assert root.find(f"{SVG}title").text == "Requests per model, last hour"  # type: ignore[union-attr]
    assert root.find(f"{SVG}desc").text == "a total 10; b total 2."  # type: ignore[union-attr]
    groups = root.findall(f"{SVG}g")
    assert [g.get("data-series") for g in groups] == ["a", "b"]
    assert all(len(g.findall(f"{SVG}polyline")) == 1 for g in groups)
    # The y axis tops out at a round number above the largest value.
    labels = [t.text for t in root.findall(f"{SVG}text")]
    assert "4" in labels and "0" in labels


def test_a_higher_value_is_drawn_higher() -> None:
    root = parse(charts.chart(figures([entry("a", [0, 5, 10, 0])]), "requests"))
    points = root.find(f"{SVG}g/{SVG}polyline").get("points").split()  # type: ignore[union-attr]
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[2] < ys[1] < ys[0] == ys[3]  # SVG y grows downwards


def test_error_rate_breaks_the_line_where_nothing_ran() -> None:
    series = entry("a", [2, 0, 4, 4], errors=[1, 0, 0, 2])
    lines = charts.values_for(figures([series]), "error_rate")
    assert lines == [("a", [0.5, None, 0.0, 0.5])]
    root = parse(charts.chart(figures([series]), "error_rate"))
    group = root.find(f"{SVG}g")
    assert group is not None
    # Bucket 0 stands alone (a dot); buckets 2-3 make a line.
    assert len(group.findall(f"{SVG}circle")) == 1 and len(group.findall(f"{SVG}polyline")) == 1
    assert "80%" in [t.text for t in root.findall(f"{SVG}text")], "the axis tops out above 50%"


def test_names_are_escaped() -> None:
    hostile = '<script>alert(1)</script>"&'
    svg = charts.chart(figures([entry(hostile, [1, 1, 1, 1])]), "images")
    assert "<script>" not in svg
    root = parse(svg)
    assert root.find(f"{SVG}g").get("data-series") == hostile  # type: ignore[union-attr]


def test_no_traffic_says_so() -> None:
    root = parse(charts.chart(figures([]), "credits"))
    assert "No traffic in this window" in [t.text for t in root.findall(f"{SVG}text")]
    assert root.find(f"{SVG}desc").text == "No traffic in this window."  # type: ignore[union-attr]


def test_large_numbers_are_abbreviated_and_days_label_dates() -> None:
    data = figures([entry("a", [1_200_000, 0, 0])], buckets=3)
    data.update(bucket_seconds=86_400, window="month")
    root = parse(charts.chart(data, "credits"))
    labels = [t.text or "" for t in root.findall(f"{SVG}text")]
    assert any(label.endswith("G") for label in labels)  # 1.2e9 credits on the y axis
    assert "11-21" in labels and "11-22" in labels


def test_a_narrow_chart_keeps_its_text_size_and_stacks_long_legends() -> None:
    names = ["gemini-3-pro-image-preview", "gemini-3.1-flash-image-preview", "gemini-2.5-flash"]
    data = figures([entry(name, [1, 2, 3, 4]) for name in names], buckets=60)
    wide, narrow = parse(charts.chart(data, "requests")), parse(charts.chart(data, "requests", 340))
    assert (
        wide.get("viewBox", "").split()[2] == "720"
        and narrow.get("viewBox", "").split()[2] == "340"
    )
    assert narrow.get("font-size") == "12"

    def legend_rows(root: ET.Element) -> set[str | None]:
        return {r.get("y") for r in root.findall(f"{SVG}rect")}

    assert len(legend_rows(narrow)) == 3, "one legend entry per row when names are long"
    assert len(legend_rows(wide)) <= 2
    times = [t for t in narrow.findall(f"{SVG}text") if re.fullmatch(r"\d\d:\d\d", t.text or "")]
    assert 2 <= len(times) <= 4, "fewer time labels on a narrow chart"


def test_error_rate_axis_splits_into_round_quarters() -> None:
    root = parse(charts.chart(figures([entry("a", [10, 10, 10, 10], [1, 3, 0, 0])]), "error_rate"))
    labels = [t.text for t in root.findall(f"{SVG}text")]
    assert {"0%", "10%", "20%", "30%", "40%"} <= set(labels)


def test_credits_read_as_money_in_the_legend_and_description() -> None:
    data = figures([entry("a", [1, 2, 3, 4])])  # 10,000 credits
    root = parse(charts.chart(data, "credits", money=Money("€", 1000)))
    assert "a: 10k (€10.00)" in [t.text for t in root.findall(f"{SVG}text")]
    assert root.find(f"{SVG}desc").text == "a total 10k (€10.00)."  # type: ignore[union-attr]
    # Other metrics are counts, not money.
    requests = parse(charts.chart(data, "requests", money=Money()))
    assert "a: 10" in [t.text for t in requests.findall(f"{SVG}text")]


@pytest.mark.parametrize(
    ("credits", "shown"),
    [
        (0, "$0.00"),
        (1_000_000, "$1.00"),
        (1_234_567_890, "$1,234.57"),
        (38_766, "$0.0388"),
        (39_000, "$0.039"),
        (3_500, "$0.0035"),
        (1, "$0.000001"),
        (-2_500_000, "-$2.50"),
    ],
)
def test_money_has_separators_and_enough_decimals(credits: int, shown: str) -> None:
    assert Money().format(credits) == shown


@pytest.mark.parametrize(
    ("currency", "rate", "credits", "shown"),
    [
        ("USD", 1_000_000, 1_500_000, "$1.50"),
        ("eur", 1_000_000, 1_500_000, "€1.50"),
        ("CHF", 1_000_000, 1_500_000, "CHF 1.50"),
        ("pts", 1_000, 1_500_000, "pts 1,500.00"),
        ("₿", 100_000_000, 1_500_000, "₿0.015"),
    ],
)
def test_the_operator_picks_the_currency_and_the_rate(
    currency: str, rate: int, credits: int, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NANOGATE_CURRENCY", currency)
    monkeypatch.setenv("NANOGATE_CREDITS_PER_UNIT", str(rate))
    assert Money.of(Settings()).format(credits) == shown


def test_a_currency_must_be_a_short_word_or_symbol() -> None:
    for bad in ("", " $", "€ ", "ninechars"):  # empty, padded, longer than 8
        with pytest.raises(ValidationError):
            Settings(currency=bad)
    with pytest.raises(ValidationError):
        Settings(credits_per_unit=0)
