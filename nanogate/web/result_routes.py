"""GET /v1/results/{request_id}: a synchronous call's stored answer (the rescue path).

A client whose call outlived its connection asks again with the request id it sent in
`x-request-id` (or got back in it). Errors use Google's envelope: these are Gemini-dialect calls.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from nanogate.core.errors import NotFound
from nanogate.engine.gateway import Context, Gateway
from nanogate.engine.replay import ResultKeeper
from nanogate.web.common import JSON_TYPE, client_address, extract_key

PREFIX = "/v1/results/"

router = APIRouter(tags=["Gemini native"])


@router.get(PREFIX + "{request_id}")
async def get_result(request: Request, request_id: str) -> Response:
    gateway: Gateway = request.app.state.gateway
    key = await gateway.authenticate(
        Context(request.state.request_id, "gemini", client=client_address(request)),
        extract_key(request),
    )
    request.state.key_prefix = key.prefix
    keeper: ResultKeeper = request.app.state.results
    found = await keeper.fetch(key.id, request_id)
    if found is not None:
        status, body = found
        return Response(body, status, media_type=JSON_TYPE)
    if keeper.is_running(key.id, request_id):
        return Response(b'{"state":"running"}', 202, {"Retry-After": "2"}, media_type=JSON_TYPE)
    raise NotFound(
        f"No stored answer for request id '{request_id[:64]}' and this API key. Answers are "
        "kept for calls that sent their own x-request-id or an Idempotency-Key, or whose client "
        "left before the answer, and only for the retention period."
    )
