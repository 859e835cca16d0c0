"""OpenAI-compatible routes: images generations and edits. Thin: authenticate, parse
(dialects/openai_images), call the gateway, render (converting or storing images as asked)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from nanogate.access.keys import KeyRecord
from nanogate.core import canonical, inline
from nanogate.core.catalog import ModelSpec
from nanogate.core.types import Reply
from nanogate.dialects import openai
from nanogate.dialects import openai_images as images
from nanogate.engine.gateway import Context
from nanogate.web.common import extract_key, idempotency_key, read_body
from nanogate.web.handling import Answer, endpoint, gateway_of
from nanogate.web.openai_common import (
    ContentFiltered,
    candidates,
    canonical_call,
    error_response,
    settings_of,
)
from nanogate.web.openai_images_io import image_item, produced_size, read_form, read_upload
from nanogate.web.replay import answer_once

# -- images ------------------------------------------------------------------------------------


Parse = Callable[
    [Request, Context, KeyRecord, bytes], Awaitable[tuple[ModelSpec, images.ImagesRequest]]
]


@endpoint("openai", error_response)
async def image_generations(request: Request, ctx: Context) -> Answer:
    async def parse(
        request: Request, ctx: Context, key: KeyRecord, body: bytes
    ) -> tuple[ModelSpec, images.ImagesRequest]:
        gateway = gateway_of(request)
        doc = openai.json_object(body, "images generations")
        spec = await gateway.resolve(
            ctx, key, openai.model_name(doc, gateway.default_image_model())
        )
        limit = settings_of(request).max_images_per_request
        return spec, images.parse_generation(doc, spec, max_images=limit)

    return await _images_route(request, ctx, parse)


@endpoint("openai", error_response)
async def image_edits(request: Request, ctx: Context) -> Answer:
    async def parse(
        request: Request, ctx: Context, key: KeyRecord, body: bytes
    ) -> tuple[ModelSpec, images.ImagesRequest]:
        gateway = gateway_of(request)
        fields, files = await read_form(request.headers, body)
        spec = await gateway.resolve(ctx, key, fields.get("model") or gateway.default_image_model())
        uploads = [*files.get("image", []), *files.get("image[]", [])]
        inputs = [await read_upload(request, f"image[{i}]", f) for i, f in enumerate(uploads)]
        masks = files.get("mask", [])
        mask = await read_upload(request, "mask", masks[0]) if masks else None
        limit = settings_of(request).max_images_per_request
        return spec, images.parse_edit(fields, inputs, mask, spec, max_images=limit)

    return await _images_route(request, ctx, parse)


async def _images_route(request: Request, ctx: Context, parse: Parse) -> Answer:
    """Both images endpoints: authenticate, read, parse (their own part), call, render."""
    key = await gateway_of(request).authenticate(ctx, extract_key(request))
    body = await read_body(request, settings_of(request).max_request_bytes)
    idem = idempotency_key(request, body)
    spec, parsed = await parse(request, ctx, key, body)
    return await _images(request, ctx, spec, parsed, idem)


async def _images(
    request: Request,
    ctx: Context,
    spec: ModelSpec,
    parsed: images.ImagesRequest,
    idem: tuple[str, str] | None,
) -> Answer:
    call = canonical_call(ctx, spec, parsed.gemini, "generateContent")

    async def render(replies: list[Reply]) -> bytes:
        data: list[dict[str, Any]] = []
        tokens = openai.Tokens()
        reasons: list[str] = []
        mime = "image/png"
        produced: canonical.Image | None = None
        for reply in replies:
            found, meta = candidates(reply.body, None)
            tokens.add(meta)
            first = found[0] if found else None
            if first is None or not first.images:
                reasons.append(first.finish or "no image" if first else "prompt blocked")
                continue
            revised = "".join(first.text).strip() or None
            produced = produced or first.images[0]
            for image in first.images:
                item, mime = await image_item(request, image, parsed)
                if revised:
                    item["revised_prompt"] = revised
                data.append(item)
        if not data:
            raise ContentFiltered(
                f"No image was generated ({', '.join(reasons)}): the model declined this "
                "prompt. Nothing was charged for it; rephrase the prompt and try again."
            )
        fmt = parsed.output_format or mime.removeprefix("image/")
        assert produced is not None
        # The size made, not the size asked: an edit keeps its input's shape.
        size = await asyncio.to_thread(produced_size, produced.data)
        answer = images.response(int(time.time()), data, tokens, output_format=fmt, size=size)
        return inline.dumps(answer)

    return await answer_once(request, ctx, idem, call, render, parsed.n)


# Plain Starlette routes on the lean relay router, like the Gemini ones (see gemini_routes).
routes = [
    Route("/v1/images/generations", image_generations, methods=["POST"]),
    Route("/v1/images/edits", image_edits, methods=["POST"]),
]
