"""Gemini native routes, under /v1beta and /v1/v1beta. Thin: authenticate, parse, call, render."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nanogate.billing import prices
from nanogate.core.errors import GatewayError, NotFound, UpstreamError
from nanogate.core.streams import GuardedStream
from nanogate.core.types import Call, Chunk
from nanogate.dialects import gemini
from nanogate.engine.gateway import Context
from nanogate.engine.replay import ResultKeeper
from nanogate.web.common import extract_key, idempotency_key, read_body
from nanogate.web.handling import Answer, endpoint, gateway_of
from nanogate.web.replay import answer_once, quoted
from nanogate.web.streaming import RelayStream

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
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
        first, rest = await gateway.stream(ctx, call)
        # An image stream whose client leaves is finished anyway and kept (the rescue path);
        # a text stream stops, and costs what was produced until then.
        keeper = request.app.state.results if prices.expects_image(call) else None
        sse = request.query_params.get("alt") == "sse"
        return _relay(ctx, first, rest, sse=sse, keeper=keeper)
    if method == "countTokens":
        return Response((await gateway.generate(ctx, call)).body, media_type=JSON_TYPE)
    return await _generate(request, ctx, call, idem)


async def _generate(
    request: Request, ctx: Context, call: Call, idem: tuple[str, str] | None
) -> Response:
    async def produce() -> bytes:
        return (await gateway_of(request).generate(ctx, call)).body

    return await answer_once(request, ctx, idem, produce)


def _relay(
    ctx: Context,
    first: Chunk,
    rest: GuardedStream,
    *,
    sse: bool,
    keeper: ResultKeeper | None,
) -> RelayStream:
    """SSE events, or the JSON array Google sends when `alt` is not `sse`."""
    completed = False
    # With a keeper, the chunks sent so far, to keep the whole answer if the client leaves.
    bodies: list[bytes] | None = [first.body] if keeper is not None else None

    async def frames() -> AsyncIterator[bytes]:
        nonlocal completed
        yield gemini.sse_event(first.body) if sse else b"[" + first.body
        try:
            async for chunk in rest:
                if bodies is not None:
                    bodies.append(chunk.body)
                yield gemini.sse_event(chunk.body) if sse else b",\r\n" + chunk.body
        except UpstreamError as exc:
            # Bytes already went out, so no retry and no status change: the error travels as
            # a final chunk the SDK raises from.
            error = gemini.error_body(exc.to_gateway_error())
            yield gemini.sse_event(error) if sse else b",\r\n" + error
        if not sse:
            yield b"]"
        completed = True

    async def cleanup() -> None:
        # Runs however the response ends, even if not one byte was sent: closing `rest`
        # releases the upstream and the limits and writes the usage record.
        if not completed and ctx.status == 200:
            if keeper is not None and bodies is not None:
                await _finish_for_later(ctx, rest, bodies, keeper)
            else:
                ctx.status, ctx.error = 499, "CLIENT_CLOSED"
        await rest.aclose()

    media_type = "text/event-stream" if sse else JSON_TYPE
    return RelayStream(frames(), media_type, cleanup, quoted(ctx))


async def _finish_for_later(
    ctx: Context, rest: GuardedStream, bodies: list[bytes], keeper: ResultKeeper
) -> None:
    """The client left an image stream: read it to its end (billed whole as it passes the
    meter) and keep it, as Google's JSON array of chunks, for GET /v1/results/{request_id}."""
    assert ctx.key is not None
    with keeper.running(ctx.key.id, ctx.request_id):
        try:
            async for chunk in rest:
                bodies.append(chunk.body)
        except UpstreamError:
            return  # the stream failed: refunded when it closes, nothing to keep
        try:
            answer = b"[" + b",\r\n".join(bodies) + b"]"
            await keeper.keep(ctx.key.id, ctx.request_id, answer)
        except Exception as exc:
            log.error("could not keep a stream's answer (%s)", type(exc).__name__)


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
    await gateway.authenticate(ctx, extract_key(request))
    tail: str = request.path_params["tail"]
    if ":" in tail:
        raise NotFound(f"GET is not supported on models/{tail}; use POST.")
    spec = await gateway.lookup(ctx, tail)
    return Response(gemini.model_resource_bytes(spec), media_type=JSON_TYPE)


# Plain Starlette routes: the relay is the hot path, and FastAPI's per-request machinery
# (dependency solving, its router) cost more than the rest of the request. OPENAPI_PATHS
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


def _operation(summary: str, description: str) -> dict[str, Any]:
    return {
        "tags": ["Gemini native"],
        "summary": summary,
        "description": description,
        "parameters": [
            {"name": "tail", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {"200": {"description": "Google's response, as the upstream sent it"}},
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/v1beta/models/{tail}": {
        "post": _operation(
            "generateContent / streamGenerateContent / countTokens",
            "`tail` is `{model}:{method}`. The body is Google's GenerateContentRequest, "
            "forwarded as it came. Also served under /v1/v1beta and /v1.",
        ),
        "get": _operation("Get a model", "Google's Model resource for `tail` = `{model}`."),
    },
    "/v1beta/models": {
        "get": {
            "tags": ["Gemini native"],
            "summary": "List models",
            "responses": {"200": {"description": "Google's ListModelsResponse"}},
        }
    },
}
