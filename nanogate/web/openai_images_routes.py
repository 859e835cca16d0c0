"""OpenAI-compatible routes: images generations and edits. Thin: authenticate, parse
(dialects/openai_images), call the gateway, render (converting or storing images as asked)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from python_multipart.exceptions import MultipartParseError
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nanogate.access.keys import KeyRecord
from nanogate.core import inline
from nanogate.core.catalog import ModelSpec
from nanogate.core.errors import (
    InvalidArgument,
)
from nanogate.core.images import ImageRejected, convert_image, image_size
from nanogate.core.media import decode_base64
from nanogate.dialects import openai as common
from nanogate.dialects import openai_images as images
from nanogate.engine.gateway import Context
from nanogate.transport.fetch import ImageFetcher
from nanogate.web.common import extract_key, idempotency_key, read_body
from nanogate.web.handling import Answer, endpoint, gateway_of
from nanogate.web.openai_common import (
    JSON_TYPE,
    OUTPUT_MIMES,
    ContentFiltered,
    bad_image,
    candidates,
    canonical_call,
    error_response,
    operation,
    settings_of,
    stored_url,
)
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
        doc = common.json_object(body, "images generations")
        spec = await gateway.resolve(
            ctx, key, common.model_name(doc, gateway.default_image_model())
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
        fields, files = await _form(request.headers, body)
        spec = await gateway.resolve(ctx, key, fields.get("model") or gateway.default_image_model())
        uploads = [*files.get("image", []), *files.get("image[]", [])]
        inputs = [await _upload(request, f"image[{i}]", f) for i, f in enumerate(uploads)]
        masks = files.get("mask", [])
        mask = await _upload(request, "mask", masks[0]) if masks else None
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


async def _form(
    headers: Headers, body: bytes
) -> tuple[dict[str, str], dict[str, list[UploadFile]]]:
    if not headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidArgument(
            "Send the edit as multipart/form-data: the image file(s) as 'image' or 'image[]', "
            "and 'prompt'."
        )

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(headers, stream(), max_files=64, max_fields=64)
    try:
        form = await parser.parse()
    except (MultiPartException, MultipartParseError) as exc:
        raise InvalidArgument(f"The multipart body cannot be read: {exc}.") from None
    fields: dict[str, str] = {}
    files: dict[str, list[UploadFile]] = {}
    for name, value in form.multi_items():
        if isinstance(value, str):
            fields[name] = value
        else:
            files.setdefault(name, []).append(value)
    return fields, files


async def _upload(request: Request, param: str, upload: UploadFile) -> tuple[str, bytes]:
    data = await upload.read()
    fetcher: ImageFetcher = request.app.state.images
    try:
        mime, _, _ = await asyncio.to_thread(fetcher.inspect, data)
    except ImageRejected as exc:
        raise common.bad(param, f"{upload.filename or 'the file'}: {exc}.") from None
    return mime, data


async def _images(
    request: Request,
    ctx: Context,
    spec: ModelSpec,
    parsed: images.ImagesRequest,
    idem: tuple[str, str] | None,
) -> Response:
    gateway = gateway_of(request)
    call = canonical_call(ctx, spec, parsed.gemini, "generateContent")

    async def produce() -> bytes:
        replies = await gateway.generate_many(ctx, call, parsed.n)
        data: list[dict[str, Any]] = []
        tokens = common.Tokens()
        reasons: list[str] = []
        mime = "image/png"
        produced: common.Image | None = None
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
                item, mime = await _image_item(request, image, parsed)
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
        size = await asyncio.to_thread(_produced_size, produced.data)
        answer = images.response(int(time.time()), data, tokens, output_format=fmt, size=size)
        return inline.dumps(answer)

    return await answer_once(request, ctx, idem, produce)


_SIZE_HEAD = 64 * 1024  # base64 characters (48 KiB) decoded to find an image's header


def _produced_size(data: inline.Text) -> str | None:
    """ "WIDTHxHEIGHT" of a base64 image. Its first 48 KiB hold a PNG's or a JPEG's header;
    a WebP, or a JPEG whose metadata pushes the header further, is decoded whole."""
    head = data.head(_SIZE_HEAD) if isinstance(data, inline.Blob) else data[:_SIZE_HEAD].encode()
    size = image_size(decode_base64(head) or b"")
    if size is None and len(data) > _SIZE_HEAD:
        size = image_size(inline.decode(data) or b"")
    return f"{size[0]}x{size[1]}" if size else None


async def _image_item(
    request: Request, image: common.Image, parsed: images.ImagesRequest
) -> tuple[dict[str, Any], str]:
    """One `data` item: the base64 as it came, or converted to output_format, or stored."""
    wanted = OUTPUT_MIMES.get(parsed.output_format or "")
    if wanted is None or wanted == image.mime:
        if parsed.response_format == "url":
            return {"url": await stored_url(request, image.mime, image.data)}, image.mime
        return {"b64_json": image.data}, image.mime
    raw = await asyncio.to_thread(inline.decode, image.data)
    if not raw:
        raise bad_image()
    assert parsed.output_format is not None
    converted, mime = await asyncio.to_thread(convert_image, raw, parsed.output_format)
    if parsed.response_format == "url":
        return {"url": await stored_url(request, mime, converted)}, mime
    return {"b64_json": base64.b64encode(converted).decode()}, mime


# Plain Starlette routes on the lean relay router, like the Gemini ones (see gemini_routes).
routes = [
    Route("/v1/images/generations", image_generations, methods=["POST"]),
    Route("/v1/images/edits", image_edits, methods=["POST"]),
]


OPENAPI_PATHS: dict[str, Any] = {
    "/v1/images/generations": {
        "post": operation(
            "Generate images",
            "`prompt`, `model`, `n`, `size` (to the nearest aspect ratio and size tier), "
            "`aspect_ratio`, `image_size`, `response_format` (b64_json or url), `output_format`.",
            JSON_TYPE,
        )
    },
    "/v1/images/edits": {
        "post": operation(
            "Edit images",
            "Multipart: `image` or `image[]` (repeated), optional `mask`, `prompt`, `model`, "
            "`n`, `size`, `response_format`, `output_format`.",
            "multipart/form-data",
        )
    },
}
