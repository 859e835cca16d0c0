"""Gemini native routes, under /v1beta and /v1/v1beta. Thin: authenticate, parse, call, render."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nanogate.billing import prices
from nanogate.core.errors import GatewayError, NotFound
from nanogate.core.payload import Piece, joined
from nanogate.core.types import Reply
from nanogate.dialects import gemini
from nanogate.engine.gateway import Context
from nanogate.web.common import JSON_TYPE, extract_key, idempotency_key, read_body
from nanogate.web.gemini_stream import Rescue, relay
from nanogate.web.handling import Answer, endpoint, gateway_of
from nanogate.web.replay import answer_once

log = logging.getLogger(__name__)

# /v1beta is Google's; /v1/v1beta is what resellers that mount Gemini under /v1 expose; /v1 is
# where google-genai 3.x sends requests by default (its api_version is "v1"). GET /v1/models is
# shared with the OpenAI dialect: see app.py.
PREFIXES = ("/v1beta", "/v1/v1beta", "/v1")


def error_response(error: GatewayError) -> Response:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return Response(gemini.error_body(error), error.status, headers, JSON_TYPE)


@endpoint("gemini", error_response)
async def generate(request: Request, ctx: Context) -> Answer:
    """generateContent, streamGenerateContent and countTokens for `models/{model}:{method}`."""
    gateway = gateway_of(request)
    key = await gateway.authenticate(ctx, extract_key(request))
    model_name, method = gemini.split_model_action(request.path_params["tail"])
    ctx.method = method
    spec = await gateway.resolve(ctx, key, model_name)
    body = await read_body(request, request.app.state.settings.max_request_bytes)
    idem = idempotency_key(request, body, stream=method == "streamGenerateContent")
    call = gemini.parse_call(ctx.request_id, method, spec, body)
    if method == "streamGenerateContent":
        # An image stream whose client leaves is finished anyway and kept (the rescue path);
        # a text stream stops, and costs what was produced until then.
        keeper = request.app.state.results if prices.expects_image(call) else None
        rescue = Rescue(ctx, keeper) if keeper is not None else None
        first, rest = await gateway.stream(ctx, call, rescue.seal if rescue else None)
        sse = request.query_params.get("alt") == "sse"
        return relay(ctx, first, rest, sse=sse, rescue=rescue)
    if method == "countTokens":
        counted = (await gateway.generate(ctx, call)).body
        return Response(joined(counted), media_type=JSON_TYPE)
    return await answer_once(request, ctx, idem, call, _as_it_came)


async def _as_it_came(replies: list[Reply]) -> bytes | Sequence[Piece]:
    """A native answer is the upstream's, as it came (in the pieces it was read in)."""
    body = replies[0].body
    return body if isinstance(body, bytes) else body.pieces


def wants_gemini(request: Request) -> bool:
    """On the shared GET /v1/models, Gemini clients send x-goog-api-key or ?key=."""
    return (
        not request.url.path.startswith("/v1/models")
        or "x-goog-api-key" in request.headers
        or "key" in request.query_params
    )


@endpoint("gemini", error_response, record=False)
async def list_models(request: Request, ctx: Context) -> Answer:
    gateway = gateway_of(request)
    key = await gateway.authenticate(ctx, extract_key(request))
    return Response(gemini.list_models(gateway.callable_models(key)), media_type=JSON_TYPE)


@endpoint("gemini", error_response, record=False)
async def get_model(request: Request, ctx: Context) -> Answer:
    gateway = gateway_of(request)
    key = await gateway.authenticate(ctx, extract_key(request))
    tail: str = request.path_params["tail"]
    if ":" in tail:
        raise NotFound(f"GET is not supported on models/{tail}; use POST.")
    spec = await gateway.describe(ctx, key, tail)
    return Response(gemini.model_resource_bytes(spec), media_type=JSON_TYPE)


# Plain Starlette routes: the relay is the hot path, and FastAPI's per-request machinery
# (dependency solving, its router) cost more than the rest of the request. web/openapi
# describes them for /docs instead.
# GET /v1/models(/…) is shared with the OpenAI dialect: app.py routes it to either.
routes = [
    route
    for prefix in PREFIXES
    for route in (
        Route(f"{prefix}/models/{{tail:path}}", generate, methods=["POST"]),
        *(
            (
                Route(f"{prefix}/models", list_models, methods=["GET"]),
                Route(f"{prefix}/models/{{tail:path}}", get_model, methods=["GET"]),
            )
            if prefix != "/v1"
            else ()
        ),
    )
]
