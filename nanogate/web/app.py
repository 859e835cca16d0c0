"""The ASGI application: wiring of settings, storage, upstreams and routes. No request logic."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.routing import Router as StarletteRouter

from nanogate import __version__
from nanogate.console.sessions import SessionStore
from nanogate.console.thumbnails import Thumbnails
from nanogate.core.catalog import load_catalog
from nanogate.core.config import Settings
from nanogate.core.errors import GatewayError, Internal, InvalidArgument, NotFound
from nanogate.web import (
    admin_accounts,
    admin_keys,
    admin_tasks,
    admin_upstreams,
    console_routes,
    file_routes,
    gemini_routes,
    openai_common,
    openai_images_routes,
    openai_routes,
    ops,
    report_routes,
    result_routes,
    session_routes,
    task_routes,
)
from nanogate.web.front import Front
from nanogate.web.handling import either
from nanogate.web.middleware import RequestIdMiddleware
from nanogate.web.runtime import running

log = logging.getLogger("nanogate")


def create_app(settings: Settings) -> Front:
    catalog = load_catalog(settings.models)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(settings, catalog, workers=settings.task_workers) as runtime:
            app.state.engine = runtime.engine
            app.state.gateway = runtime.gateway
            app.state.keys = runtime.keys
            app.state.accounts = runtime.accounts
            app.state.tasks = runtime.tasks
            app.state.results = runtime.results
            app.state.storage = runtime.storage
            app.state.url_signer = runtime.signer
            app.state.journal = runtime.journal
            app.state.images = runtime.images
            app.state.callback_secret = runtime.callback_secret
            app.state.sessions = SessionStore(
                runtime.engine, timedelta(hours=settings.console_session_hours)
            )
            app.state.thumbnails = Thumbnails(runtime.engine, runtime.storage)
            # Everything allocated so far lives as long as the process: move it out of the
            # collector's sight, so full collections stay short (they stalled p99 latency).
            gc.collect()
            gc.freeze()
            # Fewer, later collections: a burst of slow requests otherwise paid several long
            # full-collection pauses (bench/slow.py measures it).
            gc.set_threshold(20_000, 20, 100)
            log.info(
                "gateway started",
                extra={"upstreams": [f"{u.name}:{u.kind}" for u in settings.upstreams]},
            )
            yield

    app = FastAPI(
        title="nanogate",
        version=__version__,
        summary="Gateway for Gemini image models and any generateContent call.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(RequestIdMiddleware)
    app.include_router(ops.router)
    app.include_router(admin_keys.router)
    app.include_router(admin_accounts.router)
    app.include_router(admin_tasks.router)
    app.include_router(admin_upstreams.router)
    app.include_router(report_routes.router)
    app.include_router(session_routes.router)
    app.include_router(console_routes.router)
    app.include_router(console_routes.home)
    app.include_router(task_routes.router)
    app.include_router(file_routes.router)
    app.include_router(result_routes.router)
    _document(
        app,
        {
            **gemini_routes.OPENAPI_PATHS,
            **openai_routes.OPENAPI_PATHS,
            **openai_images_routes.OPENAPI_PATHS,
        },
    )
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    relay = ServerErrorMiddleware(
        RequestIdMiddleware(
            ExceptionMiddleware(
                StarletteRouter(
                    [
                        *gemini_routes.routes,
                        *openai_routes.routes,
                        *openai_images_routes.routes,
                        *_shared_routes(),
                    ]
                ),
                handlers={HTTPException: _http_error},
            )
        ),
        handler=_unexpected_error,
    )
    return Front(relay, app)


def _shared_routes() -> list[Route]:
    """GET /v1/models and /v1/models/{model}: Gemini's listing for Gemini clients, OpenAI's for
    the others (see gemini_routes.wants_gemini)."""
    wants = gemini_routes.wants_gemini
    listing = either(gemini_routes.list_models, openai_routes.list_models, wants)
    model = either(gemini_routes.get_model, openai_routes.get_model, wants)
    return [
        Route("/v1/models", listing, methods=["GET"]),
        Route("/v1/models/{tail:path}", model, methods=["GET"]),
    ]


def _document(app: FastAPI, paths: dict[str, Any]) -> None:
    """Add the plain Starlette routes' descriptions to the generated OpenAPI schema."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schema.setdefault("paths", {}).update(paths)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _render(request: Request, error: GatewayError) -> Response:
    # Every route family renders its own envelope; Google's is the default for the rest.
    path = request.url.path
    if path.startswith("/api/v1/"):
        return task_routes.error_response(request, error)
    if path.startswith(result_routes.PREFIX):
        return gemini_routes.error_response(error)
    openai_family = path.startswith("/v1/") and not path.startswith(("/v1/v1beta/", "/v1/models"))
    shared_listing = path.startswith("/v1/models") and request.method == "GET"
    if openai_family or (shared_listing and not gemini_routes.wants_gemini(request)):
        return openai_common.error_response(error)
    return gemini_routes.error_response(error)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error: GatewayError = NotFound(f"No route {request.method} {request.url.path}.")
    else:
        error = GatewayError(exc.detail if isinstance(exc.detail, str) else "Request failed.")
        error.status = exc.status_code
        error.reason = "INVALID_ARGUMENT" if exc.status_code == 405 else "FAILED_PRECONDITION"
    return _render(request, error)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _render(request, exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'body'}: {err.get('msg')}"
        for err in exc.errors()[:5]
    )
    return _render(request, InvalidArgument(f"Invalid request: {problems}."))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    request_id = getattr(request.state, "request_id", "-")
    log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
    return _render(request, Internal(f"Internal error; quote request id {request_id}."))
