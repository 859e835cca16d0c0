"""OpenAI-compatible routes: chat completions and the models listing. Thin: authenticate,
parse (dialects/openai_chat), call the gateway, render.

Conversion is in the pure dialect modules; the gateway underneath (limits, credits, router,
usage records) is the one every dialect uses. Image answers are read and written with
`inline`, so a 16 MB image is sliced into the response, not parsed and copied.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nanogate.core import canonical, inline
from nanogate.core.catalog import ModelSpec
from nanogate.core.errors import (
    FeatureDisabled,
)
from nanogate.core.payload import Payload, Piece
from nanogate.core.types import Reply
from nanogate.dialects import openai
from nanogate.dialects import openai_chat as chat
from nanogate.engine.gateway import Context
from nanogate.transport.fetch import ImageFetcher, InputRejected
from nanogate.web.common import JSON_TYPE, extract_key, idempotency_key, read_body
from nanogate.web.handling import Answer, endpoint, gateway_of
from nanogate.web.openai_common import (
    candidates,
    canonical_call,
    error_response,
    settings_of,
    store_images,
    stored_file,
)
from nanogate.web.openai_stream import Copy, chat_events, chat_stream
from nanogate.web.replay import answer_once

# -- models ------------------------------------------------------------------------------------


@endpoint("openai", error_response, record=False)
async def list_models(request: Request, ctx: Context) -> Answer:
    gateway = gateway_of(request)
    key = await gateway.authenticate(ctx, extract_key(request))
    return Response(openai.list_models(gateway.callable_models(key)), media_type=JSON_TYPE)


@endpoint("openai", error_response, record=False)
async def get_model(request: Request, ctx: Context) -> Answer:
    gateway = gateway_of(request)
    key = await gateway.authenticate(ctx, extract_key(request))
    spec = await gateway.describe(ctx, key, request.path_params["tail"])
    return Response(orjson.dumps(openai.model_object(spec)), media_type=JSON_TYPE)


# -- chat completions --------------------------------------------------------------------------


@endpoint("openai", error_response)
async def chat_completions(request: Request, ctx: Context) -> Answer:
    gateway = gateway_of(request)
    settings = settings_of(request)
    key = await gateway.authenticate(ctx, extract_key(request))
    body = await read_body(request, settings.max_request_bytes)
    doc = openai.json_object(body, "chat completions")
    spec = await gateway.resolve(ctx, key, openai.model_name(doc))
    parsed = chat.parse(doc, spec, max_images=settings.max_images_per_request)
    del doc
    idem = idempotency_key(request, body, stream=parsed.stream)
    await _fetch_remote(request, parsed.remote)
    as_urls = (parsed.image_output or key.image_output or "data") == "url"
    copies = parsed.n if spec.is_image else 1
    if not parsed.stream:
        call = canonical_call(ctx, spec, parsed.gemini, "generateContent")

        async def render(replies: list[Reply]) -> list[Piece]:
            return await _completion(request, ctx, spec, [r.body for r in replies], as_urls)

        return await answer_once(request, ctx, idem, call, render, copies)
    if copies > 1 or (as_urls and spec.is_image):
        # n images come from n calls at once, and images sent as URLs must be stored before
        # they are charged: such answers are streamed once they have finished.
        call = canonical_call(ctx, spec, parsed.gemini, "generateContent")
        copied: list[Copy] = []

        async def store(replies: list[Reply]) -> None:
            for copy, reply in enumerate(replies):
                found, meta = candidates(reply.body, copy)
                copied.append(
                    (found, meta, await store_images(request, found) if as_urls else None)
                )

        await gateway.generate_many(ctx, call, copies, store)
        return chat_events(ctx, spec, parsed, copied)
    call = canonical_call(ctx, spec, parsed.gemini, "streamGenerateContent")
    first, rest = await gateway.stream(ctx, call)
    return chat_stream(request, ctx, spec, parsed, first, rest, as_urls)


async def _fetch_remote(request: Request, remote: list[chat.RemoteImage]) -> None:
    """Fill the request's http(s) images: this gateway's own result URLs (a URL-mode answer
    sent back as history) straight from storage, the rest fetched under the egress guard."""
    if not remote:
        return
    settings = settings_of(request)
    own = f"{settings.resolved_public_base_url}/files/"
    foreign = [image for image in remote if not image.url.startswith(own)]
    if foreign and gateway_of(request).switches.disabled("image_urls"):
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
            raise openai.bad(image.param, str(exc)) from None
        chat.attach(image, mime, data)

    await asyncio.gather(*(fetch(image) for image in remote))


async def _completion(
    request: Request, ctx: Context, spec: ModelSpec, bodies: list[bytes | Payload], as_urls: bool
) -> list[Piece]:
    choices: list[canonical.Candidate] = []
    tokens = openai.Tokens()
    for copy, body in enumerate(bodies):
        found, meta = candidates(body, copy if len(bodies) > 1 else None)
        choices += found
        tokens.add(meta)
    urls = await store_images(request, choices) if as_urls else None
    answer = chat.completion(
        ctx.request_id, spec.name, int(time.time()), choices, tokens, urls=urls
    )
    # In pieces: the images are views of the upstream's answer, sent without a copy.
    return inline.dump_pieces(answer)


# Plain Starlette routes on the lean relay router, like the Gemini ones (see gemini_routes).
routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"])]
