"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nanogate.core import metrics

router = APIRouter(tags=["Operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="The database answers and the gateway can take traffic")
async def readyz(request: Request) -> JSONResponse:
    try:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        return JSONResponse({"status": "unavailable", "database": "down"}, status_code=503)
    gateway = request.app.state.gateway
    body = {"status": "ready", "database": "up", "upstreams": gateway.router.health()}
    if gateway.watch is not None and gateway.watch.upstreams:
        # Per gemini upstream: the catalog models it does not list, from the daily check
        # (empty until the first check, which this starts, has answered).
        body["models"] = gateway.watch.kick()
    return JSONResponse(body)


@router.get("/metrics", summary="Prometheus metrics")
async def prometheus() -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
