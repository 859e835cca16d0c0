"""A standalone HTTP server that speaks Google's Gemini REST API, with recording and faults.

It also speaks what resellers of the same models offer: both task API forms (tasks.py) and
OpenAI's chat completions and images generations (openai.py), with the same faults.

It is the upstream in the gateway's integration tests and "the direct upstream" the benchmark
compares the gateway against, so the hot path stays lean: no access log, no per-request image
work, responses serialized once with orjson.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
from aiohttp import web

from tests.simulator import openai, tasks, wire
from tests.simulator import responses as r
from tests.simulator.control import add_control_routes
from tests.simulator.faults import Fault
from tests.simulator.state import STATE_KEY, SimState
from tests.simulator.state import error_response as _error
from tests.simulator.state import json_bytes as _json_bytes
from tests.simulator.state import json_response as _json

__all__ = ["STATE_KEY", "SimState", "build_app", "start"]


# /v1beta is Google's usual surface and /v1/v1beta the shape some gateways expose. Google also
# serves /v1, and google-genai 3.x defaults to it, so a stock SDK client works against us too.
PREFIXES = ("/v1beta", "/v1/v1beta", "/v1")
# Google takes inline requests up to 20 MB; leave room so the gateway's own limit is what a test
# hits, not ours (aiohttp's default is 1 MiB).
CLIENT_MAX_SIZE = 64 * 1024 * 1024

_MISSING_KEY_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
_BAD_KEY_DETAILS = [
    {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"},
    }
]


# --- the Gemini API -----------------------------------------------------------------------


def _presented_key(request: web.Request) -> str | None:
    key = request.headers.get("x-goog-api-key")
    if key:
        return key
    return wire.bearer_token(request) or request.query.get("key") or None


def _auth_error(state: SimState, request: web.Request) -> web.Response | None:
    if state.api_key is None:
        return None
    key = _presented_key(request)
    if key is None:
        return _error(403, _MISSING_KEY_MESSAGE)
    if key != state.api_key:
        return _error(
            400, "API key not valid. Please pass a valid API key.", details=_BAD_KEY_DETAILS
        )
    return None


def _split_tail(tail: str) -> tuple[str, str | None]:
    """`gemini-2.5-flash-image:generateContent` -> (model, method); a plain name has no method."""
    model, sep, method = tail.rpartition(":")
    if not sep:
        return tail, None
    return model, method


async def _api(
    request: web.Request, state: SimState, raw: bytes, parsed: Any
) -> web.StreamResponse:
    tail = request.match_info.get("tail")
    model, method = (None, None) if tail is None else _split_tail(tail)
    if model is not None:
        model = model.removeprefix("models/")

    denied = _auth_error(state, request)
    if denied is not None:
        return denied

    fault = await wire.take_fault(request, state, raw, model)
    if fault.reset:
        return wire.abort(request)
    if fault.status is not None:
        return _error(fault.status, fault.message, retry_after=fault.retry_after)
    extra = wire.retry_after_header(fault)
    streaming = method == "streamGenerateContent"
    sse = request.query.get("alt") == "sse"

    if fault.malformed:
        if streaming:
            return await _stream(request, [r.MALFORMED_BODY], sse, fault, complete=False)
        return _json_bytes(r.MALFORMED_BODY, 200, extra)
    if fault.has_body:
        if streaming:
            items = fault.body if isinstance(fault.body, list) else [fault.body]
            return await _stream(request, [orjson.dumps(i) for i in items], sse, fault)
        return _json_bytes(orjson.dumps(fault.body), 200, extra)

    if tail is None:  # GET /models
        if request.method != "GET":
            return _error(404, "Method not found.")
        return _json_bytes(r.models_list_body(state.models), 200, extra)
    if method is None:
        return _get_model(request, state, model or "")

    if request.method != "POST" or method not in (
        "generateContent",
        "streamGenerateContent",
        "countTokens",
    ):
        return _error(404, f"Method {method!r} is not found for model {model!r} in the simulator.")
    if isinstance(parsed, wire.BadJson):
        return _error(400, "Invalid JSON payload received. Unexpected token.")
    if parsed is None:
        parsed = {}
    if not isinstance(parsed, dict):
        return _error(400, "Invalid JSON payload received. Expected an object.")

    if method == "countTokens":
        return _json_bytes(r.count_tokens_body(parsed), 200, extra)
    if not r.contents_of(parsed):
        return _error(400, "* GenerateContentRequest.contents: contents is not specified\n")

    image = state.image_b64() if r.is_image_model(model or "") else None
    reply = r.Reply(model or "", parsed, image, state.image_tokens)
    if streaming:
        return await _stream(request, reply.chunks(), sse, fault, headers=extra)
    if fault.drip:
        return await _drip_response(request, reply.whole(), fault.drip)
    return _json_bytes(reply.whole(), 200, extra)


def _get_model(request: web.Request, state: SimState, model: str) -> web.Response:
    if request.method != "GET":
        return _error(404, "Method not found.")
    if model not in state.models:
        return _error(404, f"models/{model} is not found for API version v1beta.")
    return _json(r.model_info(model))


async def _stream(
    request: web.Request,
    chunks: list[bytes],
    sse: bool,
    fault: Fault,
    *,
    complete: bool = True,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Send chunks as SSE events (`alt=sse`) or as one JSON array written piece by piece.

    `complete=False` leaves an array unclosed, for the malformed-stream fault.
    """
    resp = web.StreamResponse(status=200)
    resp.content_type = "text/event-stream" if sse else "application/json"
    if not sse:
        resp.charset = "UTF-8"
    if headers:
        resp.headers.update(headers)
    frames = [
        b"data: " + chunk + b"\r\n\r\n" if sse else (b"[" if i == 0 else b",\r\n") + chunk
        for i, chunk in enumerate(chunks)
    ]
    tail = b"]" if not sse and complete else b""
    try:
        await resp.prepare(request)
        for i, frame in enumerate(frames):
            if i and fault.drip:
                await _drip(resp, b"".join(frames[i:]) + tail, fault.drip)
            if i and fault.slow_stream:
                await asyncio.sleep(fault.slow_stream)
            await resp.write(frame)
            if fault.stream_break:
                await wire.close_after_flush(request)
                return resp
        if tail:
            await resp.write(tail)
        await resp.write_eof()
    except ConnectionError:
        # The client went away mid-stream; nothing to tell it, and not worth a traceback.
        pass
    return resp


async def _drip_response(request: web.Request, body: bytes, every: float) -> web.StreamResponse:
    resp = web.StreamResponse(status=200)
    resp.content_type = "application/json"
    try:
        await resp.prepare(request)
        await _drip(resp, body, every)
    except ConnectionError:
        pass  # the client gave up: what the fault is for
    return resp


async def _drip(resp: web.StreamResponse, data: bytes, every: float) -> None:
    """`data` a byte at a time, then newlines (blank lines to an SSE reader, whitespace to a
    JSON one), until the client leaves: never returns otherwise."""
    for i in itertools.count():
        await asyncio.sleep(every)
        await resp.write(data[i : i + 1] or b"\n")


async def _not_found(
    request: web.Request, state: SimState, raw: bytes, parsed: Any
) -> web.StreamResponse:
    return _error(404, f"The requested URL {request.path} was not found on the simulator.")


# --- app and runner -----------------------------------------------------------------------


def build_app(state: SimState | None = None) -> web.Application:
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[STATE_KEY] = state if state is not None else SimState()
    router = app.router
    # Control routes first: the catch-all at the end would otherwise swallow them.
    add_control_routes(router)
    tasks.add_routes(router)
    openai.add_routes(router)
    api = wire.instrumented(_api)
    for prefix in PREFIXES:
        router.add_route("*", prefix + "/models", api)
        router.add_route("*", prefix + "/models/{tail:.*}", api)
    router.add_route("*", "/{path:.*}", wire.instrumented(_not_found))
    app.on_cleanup.append(_close_state)
    return app


async def _close_state(app: web.Application) -> None:
    await app[STATE_KEY].close()


async def start(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    state: SimState | None = None,
    api_key: str | None = None,
    image_bytes: int | None = None,
    shutdown_timeout: float = 1.0,
) -> tuple[web.AppRunner, int]:
    """Serve in the running loop; returns the runner (call `cleanup()` to stop) and bound port.

    `api_key`/`image_bytes` are shortcuts used only when no `state` is passed.
    """
    if state is None:
        state = SimState(api_key=api_key, image_bytes=image_bytes)
    state.image_b64()  # build the payload now, so the first timed request doesn't pay for it
    # access_log=None: one log line per request would cost more than the simulated work.
    # A short shutdown_timeout keeps test teardown quick when a delay fault is still sleeping.
    runner = web.AppRunner(build_app(state), access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)
