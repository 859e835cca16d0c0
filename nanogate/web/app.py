"""The ASGI application: wiring of settings, storage, upstreams and routes. No request logic."""

from __future__ import annotations

import gc
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.routing import Router as StarletteRouter
from starlette.types import Scope

from nanogate import __version__
from nanogate.console.sessions import SessionStore
from nanogate.console.thumbnails import Thumbnails
from nanogate.core.catalog import Catalog, load_catalog
from nanogate.core.config import Settings
from nanogate.core.errors import GatewayError, Internal, InvalidArgument, NotFound, Unavailable
from nanogate.db.engine import unreachable
from nanogate.web import (
    admin_accounts,
    admin_keys,
    admin_reload,
    admin_switches,
    admin_tasks,
    admin_upstreams,
    console_routes,
    docs,
    file_routes,
    gemini_routes,
    openai_common,
    openai_images_routes,
    openai_routes,
    openapi,
    ops,
    report_routes,
    result_routes,
    session_routes,
    task_routes,
)
from nanogate.web.drain import Drain, Drained
from nanogate.web.front import Front
from nanogate.web.handling import database_down, either
from nanogate.web.middleware import RequestIdMiddleware
from nanogate.web.runtime import running

log = logging.getLogger("nanogate")


def create_app(
    settings: Settings, drain: Drain | None = None, shared_limits: str | None = None
) -> Front:
    """The app; `drain` is the process's (see web/drain.py), begun by the server on SIGTERM.
    `shared_limits`: the supervisor's socket, in a worker process of `serve --workers N`."""
    catalog = load_catalog(settings.models)
    drain = drain or Drain(settings.shutdown_grace_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(
            settings, catalog, workers=settings.task_workers, shared_limits=shared_limits
        ) as runtime:
            app.state.engine = runtime.engine
            app.state.gateway = runtime.gateway
            app.state.switches = runtime.switches
            app.state.reloader = runtime.reloader
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
            app.state.probes = runtime.probes
            if runtime.worker is not None:
                # Its running tasks go back to the queue as the drain begins, for another
                # node to take at once, not when the grace for requests is over.
                drain.on_begin(runtime.worker.stop)
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
            # Requests the drain cut are still refunding their holds: before the database goes.
            await drain.settled()

    app = FastAPI(
        title="nanogate",
        version=__version__,
        summary="Gateway for Gemini image models and any generateContent call.",
        lifespan=lifespan,
        # /docs is docs.router's: Swagger UI from the fastapi-offline package, under a strict CSP.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.settings = settings
    app.state.drain = drain
    # Under the request id: a call the drain cuts gets its 503 with the id, and logged as such.
    app.add_middleware(Drained, drain=drain, render=_cut)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(ops.router)
    app.include_router(admin_keys.router)
    app.include_router(admin_accounts.router)
    app.include_router(admin_tasks.router)
    app.include_router(admin_upstreams.router)
    app.include_router(admin_switches.router)
    app.include_router(admin_reload.router)
    app.include_router(report_routes.router)
    app.include_router(session_routes.router)
    app.include_router(console_routes.router)
    app.include_router(console_routes.home)
    app.include_router(task_routes.router)
    app.include_router(file_routes.router)
    app.include_router(result_routes.router)
    app.include_router(docs.router)
    openapi.install(app, _model_examples(catalog))
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(sqlite3.Error, _database_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
    relay = ServerErrorMiddleware(
        RequestIdMiddleware(
            Drained(
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
                ),
                drain,
                _cut,
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


def _model_examples(catalog: Catalog) -> list[str]:
    """An image model and a text model of the catalog, as examples of `model` in the document."""
    image = [spec.name for spec in catalog if spec.is_image][:1]
    text = [spec.name for spec in catalog if not spec.is_image][:1]
    return image + text


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


def _cut(scope: Scope, error: Unavailable) -> Response:
    return _render(Request(scope), error)


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


async def _database_error(request: Request, exc: Exception) -> Response:
    if not unreachable(exc):
        return await _unexpected_error(request, exc)
    # A lock another process held too long, or a lost connection: a retry may succeed. Not
    # a bug, so no traceback.
    log.warning(
        "database did not answer (%s)",
        type(exc).__name__,
        extra={"request_id": getattr(request.state, "request_id", "-")},
    )
    return _render(request, database_down())


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    request_id = getattr(request.state, "request_id", "-")
    log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
    return _render(request, Internal(f"Internal error; quote request id {request_id}."))
