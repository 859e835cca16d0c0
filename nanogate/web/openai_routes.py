"""OpenAI-compatible routes: chat completions and the models listing. Thin: authenticate,
parse (dialects/openai_chat), call the gateway, render.

Conversion is in the pure dialect modules; the gateway underneath (limits, credits, router,
usage records) is the one every dialect uses. Image answers are read and written with
`inline`, so a 16 MB image is sliced into the response, not parsed and copied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nanogate.core import inline
from nanogate.core.catalog import ModelSpec
from nanogate.core.errors import (
    FeatureDisabled,
    UpstreamError,
)
from nanogate.core.streams import GuardedStream
from nanogate.core.types import Chunk
from nanogate.dialects import openai as common
from nanogate.dialects import openai_chat as chat
from nanogate.engine.gateway import Context
from nanogate.transport.fetch import ImageFetcher, InputRejected
from nanogate.web.common import extract_key, idempotency_key, read_body
from nanogate.web.handling import Answer, endpoint, gateway_of
from nanogate.web.openai_common import (
    JSON_TYPE,
    candidates,
    canonical_call,
    error_response,
    operation,
    settings_of,
    sse,
    store_images,
    stored_file,
)
from nanogate.web.replay import answer_once, quoted
from nanogate.web.streaming import RelayStream

# -- models ------------------------------------------------------------------------------------


@endpoint("openai", error_response, record=False)
async def list_models(request: Request, ctx: Context) -> Answer:
    gateway = gateway_of(request)
    key = await gateway.authenticate(ctx, extract_key(request))
    return Response(common.list_models(gateway.callable_models(key)), media_type=JSON_TYPE)


@endpoint("openai", error_response, record=False)
async def get_model(request: Request, ctx: Context) -> Answer:
    gateway = gateway_of(request)
    key = await gateway.authenticate(ctx, extract_key(request))
    spec = await gateway.resolve(ctx, key, request.path_params["tail"])
    return Response(orjson.dumps(common.model_object(spec)), media_type=JSON_TYPE)


# -- chat completions --------------------------------------------------------------------------


@endpoint("openai", error_response)
async def chat_completions(request: Request, ctx: Context) -> Answer:
    gateway = gateway_of(request)
    settings = settings_of(request)
    key = await gateway.authenticate(ctx, extract_key(request))
    body = await read_body(request, settings.max_request_bytes)
    doc = common.json_object(body, "chat completions")
    spec = await gateway.resolve(ctx, key, common.model_name(doc))
    parsed = chat.parse(doc, spec, max_images=settings.max_images_per_request)
    del doc
    idem = idempotency_key(request, body, stream=parsed.stream)
    await _fetch_remote(request, parsed.remote)
    as_urls = (parsed.image_output or key.image_output or "data") == "url"
    copies = parsed.n if spec.is_image else 1
    if not parsed.stream:
        call = canonical_call(ctx, spec, parsed.gemini, "generateContent")

        async def produce() -> bytes:
            replies = await gateway.generate_many(ctx, call, copies)
            return await _completion(request, ctx, spec, [r.body for r in replies], as_urls)

        return await answer_once(request, ctx, idem, produce)
    if copies > 1:
        # n images come from n calls at once: they are streamed when all have finished.
        call = canonical_call(ctx, spec, parsed.gemini, "generateContent")
        replies = await gateway.generate_many(ctx, call, copies)
        bodies = [reply.body for reply in replies]
        return _chat_events(request, ctx, spec, parsed, bodies, as_urls)
    call = canonical_call(ctx, spec, parsed.gemini, "streamGenerateContent")
    first, rest = await gateway.stream(ctx, call)
    return _chat_stream(request, ctx, spec, parsed, first, rest, as_urls)


async def _fetch_remote(request: Request, remote: list[chat.RemoteImage]) -> None:
    """Fill the request's http(s) images: this gateway's own result URLs (a URL-mode answer
    sent back as history) straight from storage, the rest fetched under the egress guard."""
    if not remote:
        return
    settings = settings_of(request)
    own = f"{settings.resolved_public_base_url}/files/"
    foreign = [image for image in remote if not image.url.startswith(own)]
    if foreign and "image_urls" in settings.disabled_features:
        raise FeatureDisabled(
            f"{foreign[0].param}: fetching images from URLs is switched off on this gateway; "
            "send the image as a data: URL."
        )
    fetcher: ImageFetcher = request.app.state.images

    async def fetch(image: chat.RemoteImage) -> None:
        try:
            if image.url.startswith(own):
                mime, data = await stored_file(request, image.url.removeprefix(own))
            else:
                mime, data = await fetcher.fetch(image.url)
        except InputRejected as exc:
            raise common.bad(image.param, str(exc)) from None
        chat.attach(image, mime, data)

    await asyncio.gather(*(fetch(image) for image in remote))


DONE = b"data: [DONE]\n\n"


async def _completion(
    request: Request, ctx: Context, spec: ModelSpec, bodies: list[bytes], as_urls: bool
) -> bytes:
    choices: list[common.Candidate] = []
    tokens = common.Tokens()
    for copy, body in enumerate(bodies):
        found, meta = candidates(body, copy if len(bodies) > 1 else None)
        choices += found
        tokens.add(meta)
    urls = await store_images(request, choices) if as_urls else None
    answer = chat.completion(
        ctx.request_id, spec.name, int(time.time()), choices, tokens, urls=urls
    )
    return inline.dumps(answer)


def _chat_events(
    request: Request,
    ctx: Context,
    spec: ModelSpec,
    parsed: chat.ChatRequest,
    bodies: list[bytes],
    as_urls: bool,
) -> RelayStream:
    """Finished answers (n image calls), sent as a stream."""
    stream = chat.ChatStream(ctx.request_id, spec.name, int(time.time()))

    async def frames() -> AsyncIterator[bytes]:
        tokens = common.Tokens()
        for copy, body in enumerate(bodies):
            found, meta = candidates(body, copy)
            tokens.add(meta)
            urls = await store_images(request, found) if as_urls else None
            for event in stream.feed(found, urls):
                yield sse(event)
        for event in stream.close(tokens if parsed.include_usage else None):
            yield sse(event)
        yield DONE

    async def cleanup() -> None:
        return None

    return RelayStream(frames(), "text/event-stream", cleanup, quoted(ctx))


def _chat_stream(
    request: Request,
    ctx: Context,
    spec: ModelSpec,
    parsed: chat.ChatRequest,
    first: Chunk,
    rest: GuardedStream,
    as_urls: bool,
) -> RelayStream:
    """Gemini's stream as chat.completion.chunk events, then usage (if asked) and [DONE]."""
    stream = chat.ChatStream(ctx.request_id, spec.name, int(time.time()))
    completed = False

    async def chunks() -> AsyncIterator[Chunk]:
        yield first
        async for chunk in rest:
            yield chunk

    async def frames() -> AsyncIterator[bytes]:
        nonlocal completed
        last: dict[str, Any] = {}
        try:
            async for chunk in chunks():
                found, meta = candidates(chunk.body, None)
                last = meta or last  # Gemini repeats running totals; the last one counts
                urls = await store_images(request, found) if as_urls else None
                for event in stream.feed(found, urls):
                    yield sse(event)
        except UpstreamError as exc:
            # Bytes already went out: no retry, no new status; the SDK raises this event.
            yield b"data: " + common.error_body(exc.to_gateway_error()) + b"\n\n"
            completed = True
            return
        tokens = common.Tokens()
        tokens.add(last)
        for event in stream.close(tokens if parsed.include_usage else None):
            yield sse(event)
        yield DONE
        completed = True

    async def cleanup() -> None:
        if not completed and ctx.status == 200:
            ctx.status, ctx.error = 499, "CLIENT_CLOSED"
        await rest.aclose()

    return RelayStream(frames(), "text/event-stream", cleanup, quoted(ctx))


# Plain Starlette routes on the lean relay router, like the Gemini ones (see gemini_routes).
routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"])]


OPENAPI_PATHS: dict[str, Any] = {
    "/v1/chat/completions": {
        "post": operation(
            "Chat completions (text and images)",
            "OpenAI's chat completions on any catalog model. Images come back in "
            "`choices[].message.images[]` (streamed: `delta.images`), as data URLs or, with "
            '`"image_output": "url"` or the key\'s default, signed result URLs. Extensions: '
            "`modalities`, `image_config {aspect_ratio, image_size}`, `image_output`.",
            JSON_TYPE,
        )
    },
}
