"""The admin API for upstreams and the model catalog."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from nanogate.core import lifecycle
from nanogate.web.admin_common import (
    AdminGateway,
)

router = APIRouter(prefix="/admin", tags=["Admin"])


class ModelCheckOut(BaseModel):
    checked_at: datetime
    error: str | None = Field(description="Why the upstream could not be asked, if it failed.")
    missing: list[str] = Field(description="Catalog models clients may call that it does not list.")
    listed: int = Field(description="Catalog models routed to it that it lists.")
    expected: int = Field(description="Catalog models routed to it that clients may call.")
    not_in_catalog: list[str] = Field(description="Models it lists that the catalog does not know.")


class UpstreamOut(BaseModel):
    name: str
    kind: str
    breaker: Literal["closed", "open", "half-open"] = Field(
        description='"open" while cooling down after repeated failures; "half-open" once the '
        "cooldown has passed, until a health probe lets it back in."
    )
    failures_in_a_row: int
    in_flight: int = Field(description="Calls to it running now.")
    waiting: int = Field(description="Calls waiting for a slot (only with max_concurrency).")
    max_concurrency: int | None = Field(description="Its cap; null: none.")
    p50_ms: float | None = Field(description="Median of its last 500 successful attempts.")
    p99_ms: float | None = Field(description="99th percentile of the same.")
    error_rate: float = Field(description="Share of its last 500 attempts that failed retryably.")
    recent_attempts: int = Field(description="Attempts the error rate is computed over.")
    skip_until: datetime | None = Field(
        description="It answered with Retry-After: skipped until then (UTC)."
    )
    retry_after: int | None = Field(description="Seconds until then.")
    reported_by: str | None = Field(
        description="Cluster mode: the node that reported this upstream failing, when the "
        "breaker or skip_until above came from another node's calls rather than this one's."
    )
    models: ModelCheckOut | None = Field(
        default=None,
        description="gemini upstreams: the daily check of GET …/models against the catalog "
        "(null until the first check, which this call starts, has answered).",
    )


@router.get(
    "/upstreams",
    summary="Upstreams: breaker state, calls in flight, recent latency (p50/p99), error rate "
    "and which catalog models they do not list",
)
async def list_upstreams(gateway: AdminGateway) -> list[UpstreamOut]:
    checks = gateway.watch.kick() if gateway.watch is not None else {}
    return [UpstreamOut(**row, models=checks.get(row["name"])) for row in gateway.router.status()]


class ModelOut(BaseModel):
    name: str
    display_name: str
    kind: Literal["image", "text"]
    max_input_images: int
    image_sizes: list[str]
    default_image_size: str
    aspect_ratios: list[str]
    prices: dict[str, int] = Field(description="Credits per million tokens, by token kind.")
    image_prices: dict[str, int] = Field(description="Flat credits per image, by size tier.")
    status: Literal["preview", "ga", "deprecated", "shut_down"] = Field(
        description="Where the model is in Google's lifecycle today."
    )
    shutdown_date: date | None
    replacement: str | None


@router.get("/models", summary="The model catalog: kinds, input limits, sizes, aspect ratios")
async def list_models(gateway: AdminGateway) -> list[ModelOut]:
    return [
        ModelOut(
            name=spec.name,
            display_name=spec.display_name,
            kind="image" if spec.is_image else "text",
            max_input_images=spec.max_input_images,
            image_sizes=list(spec.image_sizes),
            default_image_size=spec.default_image_size,
            aspect_ratios=list(spec.aspect_ratios),
            prices=spec.prices,
            image_prices=spec.image_prices,
            status=lifecycle.state(spec, gateway.today()),
            shutdown_date=spec.shutdown_date,
            replacement=spec.replacement.model if spec.replacement else None,
        )
        for spec in gateway.catalog
    ]
