"""OpenAI-compatible routes. GET /v1/models is shared with Gemini's /v1 prefix and dispatched
from gemini_routes; the rest of this dialect arrives with its own issue."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..dialects import openai
from ..errors import GatewayError
from ..gateway import Context, Gateway
from .common import extract_key

JSON_TYPE = "application/json"


def error_response(error: GatewayError) -> Response:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return Response(openai.error_body(error), error.status, headers, JSON_TYPE)


async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        await gateway.authenticate(
            Context(request.state.request_id, "openai"), extract_key(request)
        )
    except GatewayError as error:
        return error_response(error)
    return Response(openai.list_models(gateway.catalog), media_type=JSON_TYPE)


async def get_model(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        await gateway.authenticate(
            Context(request.state.request_id, "openai"), extract_key(request)
        )
        spec = gateway.catalog.resolve(request.path_params["tail"])
    except GatewayError as error:
        return error_response(error)
    return Response(orjson.dumps(openai.model_object(spec)), media_type=JSON_TYPE)
