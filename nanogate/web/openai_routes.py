"""OpenAI-compatible routes: chat completions, images generations and edits, and the models
listing. Thin: authenticate, parse (dialects/openai_*), call the gateway, render.

Conversion is in the pure dialect modules; the gateway underneath (limits, credits, router,
usage records) is the one every dialect uses. Image answers are read and written with
`inline`, so a 16 MB image is sliced into the response, not parsed and copied.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from python_multipart.exceptions import MultipartParseError
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nanogate.access.keys import KeyRecord
from nanogate.core import inline
from nanogate.core.catalog import ModelSpec
from nanogate.core.config import Settings
from nanogate.core.errors import (
    FeatureDisabled,
    GatewayError,
    Internal,
    InvalidArgument,
    UpstreamError,
)
from nanogate.core.images import ImageRejected, convert_image, image_size
from nanogate.core.media import decode_base64
from nanogate.core.streams import GuardedStream
from nanogate.core.types import Call, Chunk, Method
from nanogate.dialects import gemini
from nanogate.dialects import openai as common
from nanogate.dialects import openai_chat as chat
from nanogate.dialects import openai_images as images
from nanogate.engine.gateway import Context
from nanogate.storage import Storage, UrlSigner
from nanogate.transport.fetch import ImageFetcher, InputRejected
from nanogate.web.common import extract_key, idempotency_key, read_body
from nanogate.web.handling import Answer, endpoint, gateway_of
from nanogate.web.replay import answer_once, quoted
from nanogate.web.streaming import RelayStream

JSON_TYPE = "application/json"
_OUTPUT_MIMES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def error_response(error: GatewayError) -> Response:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return Response(common.error_body(error), error.status, headers, JSON_TYPE)


class _ContentFiltered(InvalidArgument):
    """No image came back: OpenAI's images API answers a moderation block with this code."""

    reason = "CONTENT_POLICY_VIOLATION"


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _call(ctx: Context, spec: ModelSpec, request: dict[str, Any], method: Method) -> Call:
    """The canonical call, checked by the same validator as a native Gemini request."""
    return gemini.parse_call(ctx.request_id, method, spec, inline.dumps(request))


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
    settings = _settings(request)
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
        call = _call(ctx, spec, parsed.gemini, "generateContent")

        async def produce() -> bytes:
            replies = await gateway.generate_many(ctx, call, copies)
            return await _completion(request, ctx, spec, [r.body for r in replies], as_urls)

        return await answer_once(request, ctx, idem, produce)
    if copies > 1:
        # n images come from n calls at once: they are streamed when all have finished.
        call = _call(ctx, spec, parsed.gemini, "generateContent")
        replies = await gateway.generate_many(ctx, call, copies)
        bodies = [reply.body for reply in replies]
        return _chat_events(request, ctx, spec, parsed, bodies, as_urls)
    call = _call(ctx, spec, parsed.gemini, "streamGenerateContent")
    first, rest = await gateway.stream(ctx, call)
    return _chat_stream(request, ctx, spec, parsed, first, rest, as_urls)


async def _fetch_remote(request: Request, remote: list[chat.RemoteImage]) -> None:
    """Fill the request's http(s) images: this gateway's own result URLs (a URL-mode answer
    sent back as history) straight from storage, the rest fetched under the egress guard."""
    if not remote:
        return
    settings = _settings(request)
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
                mime, data = await _stored_file(request, image.url.removeprefix(own))
            else:
                mime, data = await fetcher.fetch(image.url)
        except InputRejected as exc:
            raise common.bad(image.param, str(exc)) from None
        chat.attach(image, mime, data)

    await asyncio.gather(*(fetch(image) for image in remote))


async def _stored_file(request: Request, tail: str) -> tuple[str, bytes]:
    """A result this gateway stored, by its signed URL's path and query."""
    name, _, query = tail.partition("?")
    params = dict(part.partition("=")[::2] for part in query.split("&"))
    signer: UrlSigner = request.app.state.url_signer
    verdict = signer.verify(name, params.get("expires", ""), params.get("sig", ""))
    if verdict != "ok":
        raise InputRejected(
            f"the result URL is {'expired' if verdict == 'expired' else 'not valid'}"
        )
    storage: Storage = request.app.state.storage
    found = await storage.get(name)
    if found is None:
        raise InputRejected("the result is no longer stored")
    data, mime = found
    return mime, data


def _candidates(body: bytes, copy: int | None) -> tuple[list[common.Candidate], dict[str, Any]]:
    """An answer's candidates (numbered by `copy` when it is one of n calls) and its
    usageMetadata."""
    doc = inline.loads(body)
    found = common.candidates(doc)
    if not found and common.block_reason(doc):
        found = [common.Candidate(finish="PROHIBITED_CONTENT")]
    if copy is not None:
        for candidate in found:
            candidate.index = copy
    return found, common.usage_metadata(doc)


async def _completion(
    request: Request, ctx: Context, spec: ModelSpec, bodies: list[bytes], as_urls: bool
) -> bytes:
    choices: list[common.Candidate] = []
    tokens = common.Tokens()
    for copy, body in enumerate(bodies):
        found, meta = _candidates(body, copy if len(bodies) > 1 else None)
        choices += found
        tokens.add(meta)
    urls = await _store(request, choices) if as_urls else None
    answer = chat.completion(
        ctx.request_id, spec.name, int(time.time()), choices, tokens, urls=urls
    )
    return inline.dumps(answer)


async def _store(request: Request, candidates: list[common.Candidate]) -> dict[int, str]:
    """Put every image in result storage; their signed URLs by id(image)."""
    urls: dict[int, str] = {}
    for candidate in candidates:
        for image in candidate.images:
            urls[id(image)] = await _stored_url(request, image.mime, image.data)
    return urls


async def _stored_url(request: Request, mime: str, data: inline.Text | bytes) -> str:
    storage: Storage = request.app.state.storage
    raw = data if isinstance(data, bytes) else await asyncio.to_thread(inline.decode, data)
    if not raw:
        raise _bad_image()
    stored = await storage.put(raw, mime)
    expires = int(time.time() + _settings(request).result_ttl_hours * 3600)
    return storage.url(stored.name, expires=expires)


def _bad_image() -> GatewayError:
    return Internal("The upstream answered with an image that is not valid base64.")


def _event(obj: Any) -> bytes:
    return b"data: " + inline.dumps(obj) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


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
            found, meta = _candidates(body, copy)
            tokens.add(meta)
            urls = await _store(request, found) if as_urls else None
            for event in stream.feed(found, urls):
                yield _event(event)
        for event in stream.close(tokens if parsed.include_usage else None):
            yield _event(event)
        yield _DONE

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
                found, meta = _candidates(chunk.body, None)
                last = meta or last  # Gemini repeats running totals; the last one counts
                urls = await _store(request, found) if as_urls else None
                for event in stream.feed(found, urls):
                    yield _event(event)
        except UpstreamError as exc:
            # Bytes already went out: no retry, no new status; the SDK raises this event.
            yield b"data: " + common.error_body(exc.to_gateway_error()) + b"\n\n"
            completed = True
            return
        tokens = common.Tokens()
        tokens.add(last)
        for event in stream.close(tokens if parsed.include_usage else None):
            yield _event(event)
        yield _DONE
        completed = True

    async def cleanup() -> None:
        if not completed and ctx.status == 200:
            ctx.status, ctx.error = 499, "CLIENT_CLOSED"
        await rest.aclose()

    return RelayStream(frames(), "text/event-stream", cleanup, quoted(ctx))


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
        limit = _settings(request).max_images_per_request
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
        limit = _settings(request).max_images_per_request
        return spec, images.parse_edit(fields, inputs, mask, spec, max_images=limit)

    return await _images_route(request, ctx, parse)


async def _images_route(request: Request, ctx: Context, parse: Parse) -> Answer:
    """Both images endpoints: authenticate, read, parse (their own part), call, render."""
    key = await gateway_of(request).authenticate(ctx, extract_key(request))
    body = await read_body(request, _settings(request).max_request_bytes)
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
    call = _call(ctx, spec, parsed.gemini, "generateContent")

    async def produce() -> bytes:
        replies = await gateway.generate_many(ctx, call, parsed.n)
        data: list[dict[str, Any]] = []
        tokens = common.Tokens()
        reasons: list[str] = []
        mime = "image/png"
        produced: common.Image | None = None
        for reply in replies:
            found, meta = _candidates(reply.body, None)
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
            raise _ContentFiltered(
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
    wanted = _OUTPUT_MIMES.get(parsed.output_format or "")
    if wanted is None or wanted == image.mime:
        if parsed.response_format == "url":
            return {"url": await _stored_url(request, image.mime, image.data)}, image.mime
        return {"b64_json": image.data}, image.mime
    raw = await asyncio.to_thread(inline.decode, image.data)
    if not raw:
        raise _bad_image()
    assert parsed.output_format is not None
    converted, mime = await asyncio.to_thread(convert_image, raw, parsed.output_format)
    if parsed.response_format == "url":
        return {"url": await _stored_url(request, mime, converted)}, mime
    return {"b64_json": base64.b64encode(converted).decode()}, mime


# Plain Starlette routes on the lean relay router, like the Gemini ones (see gemini_routes).
routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/images/generations", image_generations, methods=["POST"]),
    Route("/v1/images/edits", image_edits, methods=["POST"]),
]


def _operation(summary: str, description: str, body: str) -> dict[str, Any]:
    return {
        "tags": ["OpenAI-compatible"],
        "summary": summary,
        "description": description,
        "requestBody": {"required": True, "content": {body: {"schema": {"type": "object"}}}},
        "responses": {"200": {"description": "OpenAI's response object"}},
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/v1/chat/completions": {
        "post": _operation(
            "Chat completions (text and images)",
            "OpenAI's chat completions on any catalog model. Images come back in "
            "`choices[].message.images[]` (streamed: `delta.images`), as data URLs or, with "
            '`"image_output": "url"` or the key\'s default, signed result URLs. Extensions: '
            "`modalities`, `image_config {aspect_ratio, image_size}`, `image_output`.",
            JSON_TYPE,
        )
    },
    "/v1/images/generations": {
        "post": _operation(
            "Generate images",
            "`prompt`, `model`, `n`, `size` (to the nearest aspect ratio and size tier), "
            "`aspect_ratio`, `image_size`, `response_format` (b64_json or url), `output_format`.",
            JSON_TYPE,
        )
    },
    "/v1/images/edits": {
        "post": _operation(
            "Edit images",
            "Multipart: `image` or `image[]` (repeated), optional `mask`, `prompt`, `model`, "
            "`n`, `size`, `response_format`, `output_format`.",
            "multipart/form-data",
        )
    },
}
