"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nanogate.core import metrics
from nanogate.web.runtime import Probe

router = APIRouter(tags=["Operations"])

# A probe that takes longer is "down": a load balancer's check must not hang on it.
PROBE_TIMEOUT_S = 2.0
# What /readyz reports; a part this process does not use (Redis unless `redis_url`) is null.
PARTS = ("database", "redis", "storage")


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """Liveness: the process answers. Touches nothing else."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """503 while draining (SIGTERM) or while the database does not answer: no call can run
    then. Redis and storage are reported but do not fail it: every node shares them, so a
    503 on each would take the whole gateway out, text calls that need neither too."""
    probes: dict[str, Probe] = request.app.state.probes
    found = await asyncio.gather(*(_reach(probes.get(part)) for part in PARTS))
    parts = dict(zip(PARTS, found, strict=True))
    if request.app.state.drain.draining:
        status, code = "draining", 503
    elif parts["database"] != "up":
        status, code = "unavailable", 503
    elif "down" in parts.values():
        status, code = "degraded", 200
    else:
        status, code = "ready", 200
    gateway = request.app.state.gateway
    body = {"status": status, **parts, "upstreams": gateway.router.health()}
    if gateway.watch is not None and gateway.watch.upstreams:
        # Per gemini upstream: the catalog models it does not list, from the daily check
        # (empty until the first check, which this starts, has answered).
        body["models"] = gateway.watch.kick()
    return JSONResponse(body, status_code=code)


async def _reach(probe: Probe | None) -> str | None:
    if probe is None:
        return None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await probe()
    except Exception:
        return "down"
    return "up"


@router.get("/metrics")
async def prometheus() -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
