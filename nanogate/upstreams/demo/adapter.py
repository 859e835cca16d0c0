"""The built-in offline upstream: real PNGs and honest canned text, with no network and no key.

It answers the canonical Gemini calls the way Google does (GenerateContentResponse bodies,
usageMetadata by modality, countTokens), so the whole gateway (billing, streaming, dialects) runs
for real against it. Image models get a render of the exact catalog pixel size; edits restyle the
last input image, following a few plain words of the prompt; text models get a demo reply,
schema-valid JSON or a function call. Every answer says plainly that it comes from a demo, not a
model.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import orjson

from nanogate.core.catalog import ModelSpec
from nanogate.core.config import UpstreamConfig
from nanogate.core.errors import InvalidArgument
from nanogate.core.media import decode_base64
from nanogate.core.types import JSON, Call, Chunk, Reply, Usage
from nanogate.upstreams.demo.render import (
    nearest_aspect_ratio,
    probe_size,
    read_edit,
    render_image,
    transform_image,
)
from nanogate.upstreams.demo.text import estimate_tokens, fake_from_schema, text_reply, thought_text

_PIECES = 3  # a streamed text part arrives in up to this many chunks, as a model's would


class DemoUpstream:
    """Offline upstream kind `demo`; `latency_ms` in its config pretends a render takes time."""

    kind: str = "demo"

    def __init__(self, config: UpstreamConfig) -> None:
        self.name = config.name
        self._latency_s = config.latency_ms / 1000

    async def generate(self, call: Call) -> Reply:
        if call.method == "countTokens":
            return Reply(body=orjson.dumps(count_tokens_body(call)), upstream=self.name)
        answer = await self._answer(call)
        return Reply(body=orjson.dumps(answer.response()), upstream=self.name, usage=answer.usage)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        answer = await self._answer(call)
        chunks = answer.chunks()
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            # Usage rides on the last chunk only: consumers add up `images` across chunks.
            yield Chunk(body=orjson.dumps(chunk), usage=answer.usage if last else None)

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    async def _answer(self, call: Call) -> _Answer:
        if self._latency_s > 0:
            await asyncio.sleep(self._latency_s)
        request = _unwrap(call.request)
        if call.model.is_image:
            return await _image_answer(call, request)
        return _text_answer(call, request)


# --- the answer and its wire forms --------------------------------------------------------------


@dataclass(slots=True)
class _Answer:
    model: str
    response_id: str
    parts: list[JSON]
    usage: Usage = field(default_factory=Usage)

    def response(self) -> JSON:
        """The whole GenerateContentResponse."""
        candidate = {
            "content": {"role": "model", "parts": self.parts},
            "finishReason": "STOP",
            "index": 0,
        }
        return self._envelope(candidate, final=True)

    def chunks(self) -> list[JSON]:
        """Stream chunks: one per text piece or image, the last with finishReason and usage."""
        pieces = [piece for part in self.parts for piece in _stream_pieces(part)] or [{"text": ""}]
        out: list[JSON] = []
        for index, piece in enumerate(pieces):
            final = index == len(pieces) - 1
            candidate: JSON = {"content": {"role": "model", "parts": [piece]}, "index": 0}
            if final:
                candidate["finishReason"] = "STOP"
            out.append(self._envelope(candidate, final=final))
        return out

    def _envelope(self, candidate: JSON, *, final: bool) -> JSON:
        body: JSON = {"candidates": [candidate]}
        if final:
            body["usageMetadata"] = usage_metadata(self.usage)
        body["modelVersion"] = self.model
        body["responseId"] = self.response_id
        return body


def usage_metadata(usage: Usage) -> JSON:
    """Google's usageMetadata shape; modalities with no tokens are left out, as Google does."""
    meta: JSON = {
        "promptTokenCount": usage.input_text + usage.input_image,
        "candidatesTokenCount": usage.output_text + usage.output_image,
        "totalTokenCount": usage.total,
    }
    prompt = _details(("TEXT", usage.input_text), ("IMAGE", usage.input_image))
    candidates = _details(("IMAGE", usage.output_image), ("TEXT", usage.output_text))
    if prompt:
        meta["promptTokensDetails"] = prompt
    if candidates:
        meta["candidatesTokensDetails"] = candidates
    if usage.thoughts:
        meta["thoughtsTokenCount"] = usage.thoughts
    return meta


def count_tokens_body(call: Call) -> JSON:
    """countTokens: what generateContent would bill as prompt tokens."""
    text, image = _prompt_tokens(call.model, _unwrap(call.request))
    body: JSON = {"totalTokens": text + image}
    details = _details(("TEXT", text), ("IMAGE", image))
    if details:
        body["promptTokensDetails"] = details
    return body


def _details(*counts: tuple[str, int]) -> list[JSON]:
    return [{"modality": modality, "tokenCount": count} for modality, count in counts if count]


def _stream_pieces(part: JSON) -> list[JSON]:
    """Split a plain text part at spaces into a few pieces; other parts go whole."""
    text = part.get("text")
    if not isinstance(text, str) or part.get("thought") or len(text) < 40:
        return [part]
    cuts = [0]
    for index in range(1, _PIECES):
        space = text.find(" ", len(text) * index // _PIECES)
        if space > cuts[-1]:
            cuts.append(space)
    cuts.append(len(text))
    return [{"text": text[start:end]} for start, end in pairwise(cuts)]


def _response_id(call: Call) -> str:
    digest = hashlib.sha256(f"{call.request_id}:{call.model.name}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def _usage(
    input_text: int, input_image: int, output_text: int, output_image: int, thoughts: int
) -> Usage:
    total = input_text + input_image + output_text + output_image + thoughts
    images = 1 if output_image else 0
    return Usage(
        input_text=input_text,
        input_image=input_image,
        output_text=output_text,
        output_image=output_image,
        thoughts=thoughts,
        total=total,
        images=images,
    )


# --- image models -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Picture:
    png: bytes
    width: int
    height: int
    size: str | None  # the imageSize tier it was rendered at (None: the model's default)
    edited: bool


async def _image_answer(call: Call, request: JSON) -> _Answer:
    contents = _contents(request)
    prompt = _prompt(contents)
    want_text, want_image = _modalities(request)
    thought = _thought_part(request, prompt)
    parts = [thought] if thought else []
    picture = None
    if want_image:
        source = _last_input_image(contents)
        # Decoding and Pillow work take up to a second at 4K: off the event loop, which keeps
        # serving other requests meanwhile.
        picture = await asyncio.to_thread(_picture, call, request, prompt, source)
    if want_text:
        parts.append({"text": _caption(picture, prompt)})
    if picture is not None:
        data = base64.b64encode(picture.png).decode("ascii")
        parts.append({"inlineData": {"mimeType": "image/png", "data": data}})
    text_in, image_in = _prompt_tokens(call.model, request)
    text_out = sum(_part_tokens(part) for part in parts if not part.get("thought"))
    image_out = call.model.image_tokens(picture.size) if picture else 0
    thoughts = estimate_tokens(thought["text"]) if thought else 0
    usage = _usage(text_in, image_in, text_out, image_out, thoughts)
    return _Answer(call.model.name, _response_id(call), parts, usage)


def _picture(call: Call, request: JSON, prompt: str, encoded: Any) -> _Picture:
    """Render, or edit the base64 image `encoded`, at the catalog size (in a worker thread)."""
    aspect, size = _image_choice(call, request)
    if encoded is None:
        width, height = _pixels(call.model, aspect, size)
        return _Picture(render_image(prompt, width, height), width, height, size, edited=False)
    source = _decode_base64(encoded)
    try:
        if aspect is None:
            # No aspectRatio on an edit: keep the input's shape, on the model's own pixel table.
            ratios = call.model.pixels.get(size or call.model.default_image_size, {})
            aspect = nearest_aspect_ratio(*probe_size(source), ratios)
        width, height = _pixels(call.model, aspect, size)
        png = transform_image(source, prompt, width, height)
    except ValueError as exc:
        raise InvalidArgument(f"The input image cannot be used: {exc}") from exc
    return _Picture(png, width, height, size, edited=True)


def _image_choice(call: Call, request: JSON) -> tuple[str | None, str | None]:
    """(aspectRatio, imageSize): the validator's reading, else the request's imageConfig."""
    if call.image is not None:
        return call.image.aspect_ratio, call.image.image_size
    config = _field(_field(request, "generationConfig"), "imageConfig")
    aspect, size = _field(config, "aspectRatio"), _field(config, "imageSize")
    return (str(aspect) if aspect else None), (str(size) if size else None)


def _pixels(model: ModelSpec, aspect: str | None, size: str | None) -> tuple[int, int]:
    try:
        return model.image_pixels(aspect, size)
    except KeyError:
        raise InvalidArgument(
            f"{model.name} has no output size for aspectRatio {aspect or '1:1'} "
            f"at imageSize {size or model.default_image_size}."
        ) from None


def _caption(picture: _Picture | None, prompt: str) -> str:
    if picture is None:
        return text_reply(prompt)
    if picture.edited:
        what = f"an edit of your last input image ({read_edit(prompt).describe()})"
    else:
        what = "a render of your prompt"
    return (
        f"Demo render from nanogate's offline demo upstream, not a model: {what}, "
        f"{picture.width}x{picture.height} PNG."
    )


def _modalities(request: JSON) -> tuple[bool, bool]:
    """(text, image) as responseModalities asks; both when unset or unreadable."""
    raw = _field(_field(request, "generationConfig"), "responseModalities")
    if not isinstance(raw, list):
        return True, True
    wanted = {str(item).upper() for item in raw}
    text, image = "TEXT" in wanted, "IMAGE" in wanted
    return (text, image) if text or image else (True, True)


def _last_input_image(contents: list[JSON]) -> Any:
    """The newest image's base64 data (in a chat, the model's last picture counts too)."""
    for content in reversed(contents):
        for part in reversed(_parts(content)):
            blob = _field(part, "inlineData")
            if not isinstance(blob, dict):
                continue
            mime = str(_field(blob, "mimeType") or "image/")
            if mime.lower().startswith("image/"):
                return _field(blob, "data") or ""
    return None


def _decode_base64(data: Any) -> bytes:
    raw = decode_base64(data) if isinstance(data, str) and data else None
    if raw is None:
        raise InvalidArgument("inlineData.data is not valid base64.")
    return raw


# --- text models --------------------------------------------------------------------------------


def _text_answer(call: Call, request: JSON) -> _Answer:
    contents = _contents(request)
    prompt = _prompt(contents)
    thought = _thought_part(request, prompt)
    parts = [thought] if thought else []
    function = _function_to_call(request, contents)
    if function is not None:
        parts.append({"functionCall": _function_call(function, prompt)})
    else:
        parts.append({"text": _reply_text(request, prompt)})
    text_in, image_in = _prompt_tokens(call.model, request)
    text_out = sum(_part_tokens(part) for part in parts if not part.get("thought"))
    thoughts = estimate_tokens(thought["text"]) if thought else 0
    usage = _usage(text_in, image_in, text_out, 0, thoughts)
    return _Answer(call.model.name, _response_id(call), parts, usage)


def _reply_text(request: JSON, prompt: str) -> str:
    """Plain demo text, or JSON that validates against the response schema when one is set."""
    config = _field(request, "generationConfig")
    mime = str(_field(config, "responseMimeType") or "").lower()
    schema = _field(config, "responseJsonSchema") or _field(config, "responseSchema")
    if mime == "application/json":
        if isinstance(schema, dict):
            return orjson.dumps(_fake(schema, prompt, "responseSchema")).decode()
        return orjson.dumps({"demo": True, "reply": text_reply(prompt)}).decode()
    if mime == "text/x.enum" and isinstance(schema, dict):
        return str(_fake(schema, prompt, "responseSchema"))
    return text_reply(prompt)


def _fake(schema: JSON, seed: str, where: str) -> Any:
    try:
        return fake_from_schema(schema, seed)
    except ValueError as exc:
        raise InvalidArgument(f"{where}: {exc}") from None


def _function_to_call(request: JSON, contents: list[JSON]) -> JSON | None:
    """The declaration to call, if tools are given and toolConfig allows calling one."""
    declarations = [
        declaration
        for tool in _as_list(_field(request, "tools"))
        for declaration in _as_list(_field(tool, "functionDeclarations"))
        if isinstance(declaration, dict) and declaration.get("name")
    ]
    config = _field(_field(request, "toolConfig"), "functionCallingConfig")
    mode = str(_field(config, "mode") or "AUTO").upper()
    allowed = _field(config, "allowedFunctionNames")
    if isinstance(allowed, list) and allowed:
        declarations = [d for d in declarations if d["name"] in allowed]
    if not declarations or mode == "NONE":
        return None
    # Once the client sends the function's result back, answer in text: calling again would loop
    # an SDK's automatic function calling. Mode ANY means "always call", as with Google.
    if mode != "ANY" and _answers_a_call(contents):
        return None
    return declarations[0]


def _function_call(declaration: JSON, prompt: str) -> JSON:
    schema = _field(declaration, "parametersJsonSchema") or _field(declaration, "parameters")
    seed = f"{declaration['name']}:{prompt}"
    args = _fake(schema, seed, "functionDeclarations.parameters") if schema else {}
    return {"name": declaration["name"], "args": args if isinstance(args, dict) else {}}


def _answers_a_call(contents: list[JSON]) -> bool:
    if not contents:
        return False
    return any(_field(part, "functionResponse") for part in _parts(contents[-1]))


def _thought_part(request: JSON, prompt: str) -> JSON | None:
    thinking = _field(_field(request, "generationConfig"), "thinkingConfig")
    if _field(thinking, "includeThoughts") is True:
        return {"text": thought_text(prompt), "thought": True}
    return None


# --- reading the request leniently (camelCase as Google's REST API, snake_case too) -------------

_CAMEL_HUMP = re.compile(r"(?<!^)(?=[A-Z])")


def _field(obj: Any, camel: str) -> Any:
    if not isinstance(obj, dict):
        return None
    if camel in obj:
        return obj[camel]
    return obj.get(_CAMEL_HUMP.sub("_", camel).lower())


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, dict) else []


def _unwrap(request: JSON) -> JSON:
    """countTokens may wrap a whole generateContentRequest; look inside it when it does."""
    inner = _field(request, "generateContentRequest")
    return inner if isinstance(inner, dict) else request


def _contents(request: JSON) -> list[JSON]:
    """contents as a list of turns; a bare string or a single turn is accepted as the SDKs do."""
    raw = _field(request, "contents")
    items = raw if isinstance(raw, list) else [raw] if raw else []
    turns: list[JSON] = []
    for item in items:
        if isinstance(item, str):
            turns.append({"role": "user", "parts": [{"text": item}]})
        elif isinstance(item, dict):
            turns.append(item)
    return turns


def _parts(content: Any) -> list[JSON]:
    raw = _field(content, "parts")
    items = raw if isinstance(raw, list) else [raw] if raw else []
    return [
        {"text": item} if isinstance(item, str) else item
        for item in items
        if isinstance(item, str | dict)
    ]


def _prompt(contents: list[JSON]) -> str:
    """The text of the last user turn (thought summaries excluded)."""
    for content in reversed(contents):
        if str(content.get("role") or "user") == "user":
            texts = [part.get("text") for part in _parts(content) if not part.get("thought")]
            return "\n".join(text for text in texts if isinstance(text, str))
    return ""


def _prompt_tokens(model: ModelSpec, request: JSON) -> tuple[int, int]:
    """(text, image) prompt tokens: the whole conversation plus the system instruction."""
    turns = [*_contents(request), *_as_list(_field(request, "systemInstruction"))]
    parts = [part for turn in turns for part in _parts(turn)]
    media = sum(1 for part in parts if _field(part, "inlineData") or _field(part, "fileData"))
    return sum(_part_tokens(part) for part in parts), media * model.input_image_tokens


def _part_tokens(part: JSON) -> int:
    """Text tokens of one part: its text, or its function call or response as JSON."""
    text = part.get("text")
    if isinstance(text, str):
        return estimate_tokens(text)
    for key in ("functionCall", "functionResponse"):
        value = _field(part, key)
        if value is not None:
            return estimate_tokens(orjson.dumps(value).decode())
    return 0
