"""The console's aggregate queries, on SQLite and PostgreSQL: buckets, groups, filters, CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.console import charts, reports
from nanogate.db.tables import usage_records

NOW = datetime(2026, 11, 21, 12, 0, 30, tzinfo=UTC)


def row(at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "request_id": f"r{at.timestamp()}-{fields.get('model', 'm')}-{fields.get('status', 200)}",
        "key_id": None,
        "key_prefix": fields.pop("key_prefix", "ng_a"),
        "account_id": None,
        "dialect": fields.pop("dialect", "gemini"),
        "method": "generateContent",
        "model": fields.pop("model", "gemini-2.5-flash-image"),
        "upstream": fields.pop("upstream", "google"),
        "status": fields.pop("status", 200),
        "latency_ms": 100,
        "images": fields.pop("images", 1),
        "cost": fields.pop("cost", 10),
        "error": fields.pop("error", None),
        "error_message": fields.pop("error_message", None),
        "created_at": at,
    }


async def seed(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(usage_records), rows)


async def test_series_buckets_by_the_minute_and_groups_by_model(engine: AsyncEngine) -> None:
    await seed(
        engine,
        [
            row(NOW - timedelta(seconds=10)),  # this minute
            row(NOW - timedelta(seconds=20), status=502, images=0, cost=0, error="upstream"),
            row(NOW - timedelta(minutes=5), model="gemini-3-pro-image-preview", cost=100),
            row(NOW - timedelta(minutes=59, seconds=30)),  # the window's first minute
            row(NOW - timedelta(hours=2)),  # outside the hour
        ],
    )
    figures = await reports.series(engine, "hour", "model", now=NOW)
    assert figures["buckets"] == 60 and figures["bucket_seconds"] == 60
    assert figures["start"] == "2026-11-21T11:01:00+00:00"
    by_name = {s["name"]: s for s in figures["series"]}
    flash = by_name["gemini-2.5-flash-image"]
    assert flash["requests"][-1] == 2 and flash["errors"][-1] == 1 and flash["images"][-1] == 1
    assert flash["requests"][0] == 1 and sum(flash["requests"]) == 3
    pro = by_name["gemini-3-pro-image-preview"]
    assert pro["credits"][-6] == 100 and sum(pro["requests"]) == 1
    assert figures["totals"] == {
        "requests": 4,
        "images": 3,
        "credits": 120,
        "errors": 1,
        "error_rate": 0.25,
    }
    # The busiest series comes first.
    assert figures["series"][0]["name"] == "gemini-2.5-flash-image"


async def test_series_by_upstream_names_refusals_and_folds_small_groups(
    engine: AsyncEngine,
) -> None:
    rows = [row(NOW - timedelta(hours=1), upstream=None, status=429)]
    for i in range(10):  # ten upstreams, i+1 calls each: more than a chart shows
        rows += [row(NOW - timedelta(hours=3, minutes=j), upstream=f"u{i}") for j in range(i + 1)]
    await seed(engine, rows)
    figures = await reports.series(engine, "day", "upstream", now=NOW)
    names = [s["name"] for s in figures["series"]]
    assert len(names) == reports.MAX_SERIES and names[-1] == "other"
    assert names[:3] == ["u9", "u8", "u7"]
    other = figures["series"][-1]
    # u0..u2 (1+2+3 calls) and the refusal with no upstream are folded together.
    assert sum(other["requests"]) == 7 and sum(other["errors"]) == 1
    assert figures["totals"]["requests"] == 56
    assert figures["bucket_seconds"] == 900 and figures["buckets"] == 96


async def test_a_series_without_a_name_is_called_none(engine: AsyncEngine) -> None:
    # A key refused before its model was read, or before any upstream was tried.
    refused = row(NOW - timedelta(seconds=5), model="", upstream=None, status=401, cost=0, images=0)
    await seed(engine, [refused, row(NOW - timedelta(seconds=5))])
    by_model = await reports.series(engine, "hour", "model", now=NOW)
    assert sorted(s["name"] for s in by_model["series"]) == ["(none)", "gemini-2.5-flash-image"]
    by_upstream = await reports.series(engine, "hour", "upstream", now=NOW)
    assert sorted(s["name"] for s in by_upstream["series"]) == ["(none)", "google"]
    svg = charts.chart(by_model, "error_rate")
    legend = re.findall(r'<text x="[\d.]+" y="[\d.]+" fill="#222">([^<]*)</text>', svg)
    assert sorted(legend) == ["(none): 100%", "gemini-2.5-flash-image: 0%"]


async def test_the_month_window_counts_days(engine: AsyncEngine) -> None:
    await seed(engine, [row(NOW - timedelta(days=d)) for d in (0, 1, 1, 29, 31)])
    figures = await reports.series(engine, "month", "model", now=NOW)
    requests = figures["series"][0]["requests"]
    assert len(requests) == 30 and requests[-1] == 1 and requests[-2] == 2
    assert sum(requests) == 4, "31 days ago is outside the window"


async def test_usage_pages_filter_and_page_by_id(engine: AsyncEngine) -> None:
    rows = [row(NOW - timedelta(minutes=i), key_prefix="ng_a") for i in range(5)]
    rows += [row(NOW - timedelta(minutes=i), key_prefix="ng_b", status=400) for i in range(3)]
    rows.append(row(NOW - timedelta(days=2), key_prefix="ng_a", dialect="openai"))
    await seed(engine, rows)
    where = reports.UsageFilter(key_prefix="ng_a")
    first = await reports.usage_page(engine, where, limit=4)
    assert len(first) == 4 and all(r["key_prefix"] == "ng_a" for r in first)
    rest = await reports.usage_page(engine, where, limit=4, before=first[-1]["id"])
    assert len(rest) == 2 and rest[0]["id"] < first[-1]["id"]
    assert {r["id"] for r in first}.isdisjoint(r["id"] for r in rest)
    errors = await reports.usage_page(engine, reports.UsageFilter(outcome="error"), limit=50)
    assert [r["key_prefix"] for r in errors] == ["ng_b"] * 3
    recent = reports.UsageFilter(since=NOW - timedelta(hours=1), dialect="gemini")
    assert len(await reports.usage_page(engine, recent, limit=50)) == 8
    older = reports.UsageFilter(until=NOW - timedelta(days=1))
    assert [r["dialect"] for r in await reports.usage_page(engine, older, limit=50)] == ["openai"]


async def test_csv_export_streams_every_row_and_defuses_formulas(
    engine: AsyncEngine, monkeypatch: Any
) -> None:
    monkeypatch.setattr(reports, "_CSV_CHUNK", 3)  # several chunks from a few rows
    rows = [row(NOW - timedelta(minutes=i)) for i in range(7)]
    rows.append(row(NOW, status=400, error='=HYPERLINK("http://evil")', key_prefix="ng_x"))
    rows.append(
        row(
            NOW,
            status=402,
            error="RESOURCE_EXHAUSTED",
            error_message="The key's daily cap of 1000 credits is reached.",
            key_prefix="ng_cap",
        )
    )
    await seed(engine, rows)
    chunks = [c async for c in reports.usage_csv(engine, reports.UsageFilter())]
    assert len(chunks) >= 3
    table = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert len(table) == 9 and list(table[0]) == reports.CSV_COLUMNS
    bad = next(r for r in table if r["key_prefix"] == "ng_x")
    assert bad["error"].startswith("'=HYPERLINK")
    capped = next(r for r in table if r["key_prefix"] == "ng_cap")
    assert (capped["status"], capped["error"]) == ("402", "RESOURCE_EXHAUSTED")
    assert capped["error_message"] == "The key's daily cap of 1000 credits is reached."
    assert datetime.fromisoformat(table[0]["created_at"]).tzinfo is not None


async def test_concurrent_identical_series_share_one_query(engine: AsyncEngine) -> None:
    await seed(engine, [row(datetime.now(UTC) - timedelta(minutes=1))])
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "GROUP BY" in statement:
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        # A caller that gives up (a closed tab) must not cancel the query for the others.
        quitter = asyncio.ensure_future(reports.series(engine, "day", "model"))
        together = [reports.series(engine, "day", "model") for _ in range(4)]
        await asyncio.sleep(0)
        quitter.cancel()
        results = await asyncio.gather(*together)
        assert len(statements) == 1
        assert all(r is results[0] for r in results) and results[0]["totals"]["requests"] == 1
        # Once the query is done nothing is kept: the next call reads afresh.
        await reports.series(engine, "day", "model")
        await reports.series(engine, "day", "upstream")
        assert len(statements) == 3
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
