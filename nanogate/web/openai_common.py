"""What the OpenAI-compatible routes share: the error envelope, the canonical call, reading
candidates off an answer, and result URLs for images."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from nanogate.core import canonical, inline
from nanogate.core.catalog import ModelSpec
from nanogate.core.config import Settings
from nanogate.core.errors import (
    BadUpstreamAnswer,
    GatewayError,
    InvalidArgument,
)
from nanogate.core.payload import Payload
from nanogate.core.types import Call, Method
from nanogate.dialects import gemini, openai
from nanogate.engine.gateway import Context
from nanogate.storage import Storage, UrlSigner
from nanogate.transport.fetch import InputRejected
from nanogate.web.common import JSON_TYPE

OUTPUT_MIMES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def error_response(error: GatewayError) -> Response:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return Response(openai.error_body(error), error.status, headers, JSON_TYPE)


class ContentFiltered(InvalidArgument):
    """No image came back: OpenAI's images API answers a moderation block with this code."""

    reason = "CONTENT_POLICY_VIOLATION"


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def canonical_call(ctx: Context, spec: ModelSpec, request: dict[str, Any], method: Method) -> Call:
    """The canonical call, checked by the same validator as a native Gemini request."""
    return gemini.parse_call(ctx.request_id, method, spec, inline.dumps(request))


async def stored_file(request: Request, tail: str) -> tuple[str, bytes]:
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


def candidates(
    body: bytes | Payload, copy: int | None
) -> tuple[list[canonical.Candidate], dict[str, Any]]:
    """An answer's candidates (numbered by `copy` when it is one of n calls) and its
    usageMetadata."""
    doc = inline.loads(body)
    found = canonical.candidates(doc)
    if not found and canonical.block_reason(doc):
        found = [canonical.Candidate(finish="PROHIBITED_CONTENT")]
    if copy is not None:
        for candidate in found:
            candidate.index = copy
    return found, canonical.usage_metadata(doc)


async def store_images(request: Request, candidates: list[canonical.Candidate]) -> dict[int, str]:
    """Put every image in result storage; their signed URLs by id(image)."""
    urls: dict[int, str] = {}
    for candidate in candidates:
        for image in candidate.images:
            urls[id(image)] = await stored_url(request, image.mime, image.data)
    return urls


async def stored_url(request: Request, mime: str, data: inline.Text | bytes) -> str:
    storage: Storage = request.app.state.storage
    raw = data if isinstance(data, bytes) else await asyncio.to_thread(inline.decode, data)
    if not raw:
        raise bad_image()
    stored = await storage.put(raw, mime)
    expires = int(time.time() + settings_of(request).result_ttl_hours * 3600)
    return storage.url(stored.name, expires=expires)


def bad_image() -> GatewayError:
    return BadUpstreamAnswer("Bad upstream answer: an image that is not valid base64.")


def sse(obj: Any) -> bytes:
    return b"data: " + inline.dumps(obj) + b"\n\n"
