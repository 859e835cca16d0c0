"""The OpenAI-compatible endpoints a reseller offers for Gemini image models.

`POST /v1/chat/completions` (plain, or SSE with `stream: true`): text in `message.content`, the
image either in `message.images[]` as `{"type": "image_url", "image_url": {"url": "data:..."}}`
or as a markdown data URL `![image](data:...)` in `content`, by the `chat_images` option or
fault. `POST /v1/images/generations`: `data[]` items with `b64_json`, or with a `url` on this
simulator (`/_sim/files/<id>.<ext>`) when `response_format` is "url". Key as
`Authorization: Bearer`; errors in OpenAI's `{"error": {message, type, param, code}}`.

Text and usage come from the same `Reply` the Gemini side answers with, so a model is an image
model here exactly when it is one there (plus the "nano-banana" names resellers use).
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import time
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson
from aiohttp import web

from tests.simulator import responses as r
from tests.simulator import wire
from tests.simulator.faults import Fault
from tests.simulator.state import SimState
from tests.simulator.state import json_bytes as _json_bytes

_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_error"}
_CODES = {429: "rate_limit_exceeded"}
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
RESPONSE_FORMATS = ("b64_json", "url")
MAX_IMAGES = 10
MALFORMED_BODY = b'{"id": "chatcmpl-sim", "object": "chat.completion", "choices": [{"mess'
MALFORMED_CHUNK = b'{"id": "chatcmpl-sim", "object": "chat.completion.chunk", "choi'


def _error(
    code: int,
    message: str | None = None,
    *,
    param: str | None = None,
    error_code: str | None = None,
    retry_after: str | None = None,
) -> web.Response:
    kind = _TYPES.get(code, "server_error" if code >= 500 else "invalid_request_error")
    error = {
        "message": message or f"simulated {code}",
        "type": kind,
        "param": param,
        "code": error_code or _CODES.get(code),
    }
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return _json_bytes(orjson.dumps({"error": error}), code, headers)


def _auth_error(state: SimState, request: web.Request) -> web.Response | None:
    if state.api_key is None:
        return None
    key = wire.bearer_token(request)
    if key is None:
        return _error(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
        )
    if key != state.api_key:
        return _error(401, "Incorrect API key provided.", error_code="invalid_api_key")
    return None


def is_image_model(model: str) -> bool:
    return r.is_image_model(model) or "banana" in model.lower()


def _model_of(parsed: Any) -> str | None:
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else None


def _opening(request: web.Request, fault: Fault) -> web.StreamResponse | None:
    """What every fault that replaces the whole answer answers (streams handle the rest)."""
    if fault.reset:
        return wire.abort(request)
    if fault.status is not None:
        return _error(fault.status, fault.message, retry_after=fault.retry_after)
    return None


def _body_checks(parsed: Any) -> tuple[dict[str, Any], str] | web.Response:
    if isinstance(parsed, wire.BadJson) or not isinstance(parsed, dict):
        return _error(400, "The request body must be a JSON object.")
    model = parsed.get("model")
    if not isinstance(model, str) or not model.strip():
        return _error(400, "you must provide a model parameter", param="model")
    return parsed, model.strip()


def _usage(reply: r.Reply) -> dict[str, Any]:
    usage = reply.usage()
    prompt, completion = usage["promptTokenCount"], usage["candidatesTokenCount"]
    images = sum(
        d["tokenCount"] for d in usage["candidatesTokensDetails"] if d["modality"] == "IMAGE"
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"image_tokens": reply.prompt_image_tokens},
        "completion_tokens_details": {"image_tokens": images},
    }


# --- chat completions ---------------------------------------------------------------------


def _parts(content: Any) -> list[dict[str, Any]]:
    """A message's content as Gemini parts (images only counted, never decoded)."""
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for item in content if isinstance(content, list) else ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "text" and isinstance(item.get("text"), str):
            parts.append({"text": item["text"]})
        elif item.get("type") == "image_url":
            parts.append({"inlineData": {"mimeType": "image/png", "data": ""}})
    return parts


def _gemini_body(doc: dict[str, Any]) -> dict[str, Any]:
    """The chat request as a GenerateContentRequest, for the shared `Reply`."""
    contents: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    for message in doc["messages"]:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        parts = _parts(message.get("content"))
        if role in ("system", "developer"):
            system.extend(parts)
        elif parts:
            contents.append({"role": "model" if role == "assistant" else "user", "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    modalities = doc.get("modalities")
    if isinstance(modalities, list):
        names = [m.upper() for m in modalities if isinstance(m, str)]
        body["generationConfig"] = {"responseModalities": names}
    return body


class _Chat:
    """One chat answer, whole or as chunks, with the image in the shape asked for."""

    def __init__(self, model: str, reply: r.Reply, markdown: bool) -> None:
        self.model = model
        self.reply = reply
        self.markdown = markdown
        self.id = f"chatcmpl-{reply.rid}"
        self.created = int(time.time())

    def _image_url(self) -> str:
        return f"data:image/png;base64,{self.reply.image}"

    def _markdown(self) -> str:
        return f"![image]({self._image_url()})"

    def _images(self) -> list[dict[str, Any]]:
        return [{"type": "image_url", "image_url": {"url": self._image_url()}}]

    def whole(self) -> bytes:
        text = self.reply.text
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.reply.image is not None:
            if self.markdown:
                message["content"] = (text + "\n\n" if text else "") + self._markdown()
            else:
                message["images"] = self._images()
        choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                "usage": _usage(self.reply),
            }
        )

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                **extra,
            }
        )

    def chunks(self) -> list[bytes]:
        """Role and text, then the image (in delta.images or as markdown content), then the
        finish reason with usage."""
        out = [self._chunk({"role": "assistant", "content": self.reply.text or ""})]
        if self.reply.image is not None:
            if self.markdown:
                sep = "\n\n" if self.reply.text else ""
                out.append(self._chunk({"content": sep + self._markdown()}))
            else:
                out.append(self._chunk({"images": self._images()}))
        out.append(self._chunk({}, "stop", usage=_usage(self.reply)))
        return out


async def _sse(
    request: web.Request,
    chunks: list[bytes],
    fault: Fault,
    *,
    done: bool = True,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """`data: <chunk>` events, then `data: [DONE]` (left off when `done` is False)."""
    resp = web.StreamResponse(status=200)
    resp.content_type = "text/event-stream"
    resp.headers["Cache-Control"] = "no-cache"
    if headers:
        resp.headers.update(headers)
    try:
        await resp.prepare(request)
        for i, chunk in enumerate(chunks):
            if i and fault.slow_stream:
                await asyncio.sleep(fault.slow_stream)
            await resp.write(b"data: " + chunk + b"\n\n")
            if fault.stream_break:
                await wire.close_after_flush(request)
                return resp
        if done:
            if fault.slow_stream:
                await asyncio.sleep(fault.slow_stream)
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionError:
        pass  # the client left mid-stream
    return resp


async def _chat(
    request: web.Request, state: SimState, raw: bytes, parsed: Any
) -> web.StreamResponse:
    denied = _auth_error(state, request)
    if denied is not None:
        return denied
    fault = await wire.take_fault(request, state, raw, _model_of(parsed))
    opening = _opening(request, fault)
    if opening is not None:
        return opening
    extra = wire.retry_after_header(fault)
    streaming = isinstance(parsed, dict) and parsed.get("stream") is True
    if fault.malformed:
        if streaming:
            return await _sse(request, [MALFORMED_CHUNK], fault, done=False, headers=extra)
        return _json_bytes(MALFORMED_BODY, 200, extra)
    if fault.has_body:
        if streaming:
            items = fault.body if isinstance(fault.body, list) else [fault.body]
            return await _sse(request, [orjson.dumps(i) for i in items], fault, headers=extra)
        return _json_bytes(orjson.dumps(fault.body), 200, extra)

    checked = _body_checks(parsed)
    if isinstance(checked, web.Response):
        return checked
    doc, model = checked
    if not isinstance(doc.get("messages"), list) or not doc["messages"]:
        return _error(400, "messages: required, a non-empty array.", param="messages")
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return _error(400, "stream: must be true or false.", param="stream")

    image = state.image_b64() if is_image_model(model) else None
    reply = r.Reply(model, _gemini_body(doc), image, state.image_tokens)
    shape = fault.chat_images or state.chat_images
    chat = _Chat(model, reply, markdown=shape == "markdown")
    if streaming:
        return await _sse(request, chat.chunks(), fault, headers=extra)
    return _json_bytes(chat.whole(), 200, extra)


# --- images generations -------------------------------------------------------------------


def _aspect(doc: dict[str, Any]) -> str | web.Response | None:
    """The aspect ratio asked for, from `size` ("WxH" or "auto") or `aspect_ratio`."""
    ratio = doc.get("aspect_ratio")
    if ratio is not None:
        if not isinstance(ratio, str) or not re.fullmatch(r"\d{1,2}:\d{1,2}", ratio):
            return _error(400, "aspect_ratio: must be such as '16:9'.", param="aspect_ratio")
        return ratio
    size = doc.get("size")
    if size is None or size == "auto":
        return None
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match is None or not int(match[1]) or not int(match[2]):
        return _error(400, "size: must be WIDTHxHEIGHT or auto.", param="size")
    width, height = int(match[1]), int(match[2])
    common = math.gcd(width, height)
    return f"{width // common}:{height // common}"


async def _images(
    request: web.Request, state: SimState, raw: bytes, parsed: Any
) -> web.StreamResponse:
    denied = _auth_error(state, request)
    if denied is not None:
        return denied
    fault = await wire.take_fault(request, state, raw, _model_of(parsed))
    opening = _opening(request, fault)
    if opening is not None:
        return opening
    extra = wire.retry_after_header(fault)
    if fault.malformed:
        return _json_bytes(b'{"created": 1, "data": [{"b64_json": "iVBORw0', 200, extra)
    if fault.has_body:
        return _json_bytes(orjson.dumps(fault.body), 200, extra)

    checked = _body_checks(parsed)
    if isinstance(checked, web.Response):
        return checked
    doc, model = checked
    prompt = doc.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _error(400, "prompt: required, a non-empty string.", param="prompt")
    if not is_image_model(model):
        return _error(400, f"model: '{model[:80]}' is not an image model.", param="model")
    n = doc.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        return _error(400, f"n: must be an integer from 1 to {MAX_IMAGES}.", param="n")
    response_format = doc.get("response_format") or "b64_json"
    if response_format not in RESPONSE_FORMATS:
        return _error(400, "response_format: must be 'b64_json' or 'url'.", param="response_format")
    fmt = doc.get("output_format") or "png"
    if fmt not in r.IMAGE_FORMATS:
        return _error(400, "output_format: must be png, jpeg or webp.", param="output_format")
    aspect = _aspect(doc)
    if isinstance(aspect, web.Response):
        return aspect

    square_png = fmt == "png" and aspect in (None, "1:1")
    data = state.image_png() if square_png else r.aspect_image(aspect, fmt)
    ext, content_type, _ = r.IMAGE_FORMATS[fmt]
    items: list[dict[str, Any]] = []
    for _ in range(n):
        if response_format == "url":
            file = state.add_file(data, ext, content_type)
            items.append({"url": f"{wire.base_url(request, state)}/_sim/files/{file.name}"})
        else:
            b64 = state.image_b64() if square_png else base64.b64encode(data).decode("ascii")
            items.append({"b64_json": b64})

    text_tokens = r.prompt_tokens({"contents": [{"parts": [{"text": prompt}]}]})
    output = state.image_tokens * n
    body = {
        "created": int(time.time()),
        "data": items,
        "output_format": fmt,
        "usage": {
            "input_tokens": text_tokens,
            "output_tokens": output,
            "total_tokens": text_tokens + output,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
        },
    }
    return _json_bytes(orjson.dumps(body), 200, extra)


async def _edits(
    request: web.Request, state: SimState, raw: bytes, parsed: Any
) -> web.StreamResponse:
    """The multipart edit: its text fields answered like a generation, once an image came."""
    content_type = request.headers.get("Content-Type", "")
    if not content_type.startswith("multipart/form-data"):
        return _error(400, "send multipart/form-data with image and prompt.")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    fields: dict[str, Any] = {}
    images = 0
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            images += name in ("image", "image[]")
        elif isinstance(name, str):
            fields[name] = part.get_content().strip()
    if not images:
        return _error(400, "image: required, one or more image files.", param="image")
    if "n" in fields:
        fields["n"] = int(fields["n"]) if str(fields["n"]).isdigit() else fields["n"]
    return await _images(request, state, raw, fields)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/chat/completions", wire.instrumented(_chat))
    router.add_post("/v1/images/generations", wire.instrumented(_images))
    router.add_post("/v1/images/edits", wire.instrumented(_edits))
