"""The catalog against an upstream's GET …/models: the comparison (pure) and the cached watch."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any

from nanogate.core.catalog import load_catalog
from nanogate.core.config import UpstreamConfig
from nanogate.core.errors import UpstreamError
from nanogate.upstreams.modelcheck import ModelWatch, check, compare

TODAY = date(2026, 12, 4)
NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)
CATALOG = load_catalog()


def listing(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": f"models/{n}", "inputTokenLimit": 1000, "outputTokenLimit": 100} for n in names
    ]


def test_missing_and_unknown_models() -> None:
    google = UpstreamConfig(name="google", kind="gemini")
    report = compare(
        CATALOG, google, listing("gemini-3-pro-image", "gemini-3.8-flash", "veo-9"), TODAY, NOW
    )
    rows = {row.model: row for row in report.catalog}
    assert rows["gemini-3-pro-image"].listed and rows["gemini-3-pro-image"].expected
    assert "gemini-3.1-flash-image" in report.missing  # deprecated, but clients may call it
    # Shut down at Google and replaced by another model: not expected there.
    assert not rows["gemini-2.5-flash"].expected and "gemini-2.5-flash" not in report.missing
    # A preview id that runs on its GA id has no row of its own.
    assert "gemini-3-pro-image-preview" not in rows
    assert report.unknown == ["veo-9"]
    assert report.limits["veo-9"] == (1000, 100)
    assert report.summary()["missing"] == report.missing


def test_only_models_routed_to_the_upstream_under_their_mapped_names() -> None:
    vendor = UpstreamConfig(
        name="v",
        kind="gemini",
        base_url="https://api.reseller.example",
        models=["gemini-3-pro-image-preview", "gemini-2.5-flash"],
        model_map={"gemini-3-pro-image-preview": "pro-image-v"},
    )
    report = compare(CATALOG, vendor, listing("pro-image-v"), TODAY, NOW)
    rows = {row.model: row for row in report.catalog}
    assert set(rows) == {"gemini-3-pro-image", "gemini-2.5-flash"}
    assert rows["gemini-3-pro-image"].upstream_name == "pro-image-v"
    assert rows["gemini-3-pro-image"].listed
    # A reseller keeps serving a shut-down model, so it should list it.
    assert report.missing == ["gemini-2.5-flash"]
    assert report.unknown == []  # its name for a catalog model is known


class Lister:
    def __init__(self, models: list[dict[str, Any]] | Exception) -> None:
        self.models = models
        self.calls = 0

    async def list_models(self) -> list[dict[str, Any]]:
        self.calls += 1
        await asyncio.sleep(0.01)
        if isinstance(self.models, Exception):
            raise self.models
        return self.models


async def test_a_failed_listing_is_a_report_with_its_reason() -> None:
    config = UpstreamConfig(name="g", kind="gemini")
    report = await check(CATALOG, config, Lister(UpstreamError("g", 403, "key")), TODAY, 5)
    assert report.error == "HTTP 403: key" and report.missing == []


async def test_the_watch_checks_once_and_keeps_the_answer() -> None:
    config = UpstreamConfig(name="g", kind="gemini")
    lister = Lister(listing("gemini-3-pro-image"))
    watch = ModelWatch(CATALOG, [(config, lister)], lambda: TODAY)
    assert watch.summary() == {}
    reports = await asyncio.gather(*(watch.current() for _ in range(5)))
    assert lister.calls == 1 and all(r is reports[0] for r in reports)
    assert watch.listing("gemini-3-pro-image") == {"g"} and watch.listing("x") == set()
    await watch.current()
    assert lister.calls == 1  # kept a day
    await watch.refresh()
    assert lister.calls == 2


async def test_kick_answers_at_once_and_checks_in_the_background() -> None:
    config = UpstreamConfig(name="g", kind="gemini")
    lister = Lister(listing())
    watch = ModelWatch(CATALOG, [(config, lister)], lambda: TODAY)
    assert watch.kick() == {}  # nothing yet: the check runs behind
    for _ in range(100):
        if watch.summary():
            break
        await asyncio.sleep(0.01)
    assert "gemini-3-pro-image" in watch.summary()["g"]["missing"]
    await watch.stop()
