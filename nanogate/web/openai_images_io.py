"""What the images endpoints read and write besides JSON: an edit's multipart form and its
uploaded images (checked as images), and each image of an answer as a `data` item: its base64 as
it came, converted to the asked format, or stored behind a signed URL."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncGenerator
from typing import Any

from python_multipart.exceptions import MultipartParseError
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from nanogate.core import canonical, inline
from nanogate.core.errors import InvalidArgument
from nanogate.core.images import ImageRejected, convert_image, image_size
from nanogate.core.media import decode_base64
from nanogate.dialects import openai
from nanogate.dialects import openai_images as images
from nanogate.transport.fetch import ImageFetcher
from nanogate.web.openai_common import OUTPUT_MIMES, bad_image, stored_url


async def read_form(
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


async def read_upload(request: Request, param: str, upload: UploadFile) -> tuple[str, bytes]:
    data = await upload.read()
    fetcher: ImageFetcher = request.app.state.images
    try:
        mime, _, _ = await asyncio.to_thread(fetcher.inspect, data)
    except ImageRejected as exc:
        raise openai.bad(param, f"{upload.filename or 'the file'}: {exc}.") from None
    return mime, data


_SIZE_HEAD = 64 * 1024  # base64 characters (48 KiB) decoded to find an image's header


def produced_size(data: inline.Text) -> str | None:
    """ "WIDTHxHEIGHT" of a base64 image. Its first 48 KiB hold a PNG's or a JPEG's header;
    a WebP, or a JPEG whose metadata pushes the header further, is decoded whole."""
    head = data.head(_SIZE_HEAD) if isinstance(data, inline.Blob) else data[:_SIZE_HEAD].encode()
    size = image_size(decode_base64(head) or b"")
    if size is None and len(data) > _SIZE_HEAD:
        size = image_size(inline.decode(data) or b"")
    return f"{size[0]}x{size[1]}" if size else None


async def image_item(
    request: Request, image: canonical.Image, parsed: images.ImagesRequest
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
