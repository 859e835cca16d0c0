"""A vendor that offers Gemini image models through OpenAI's shapes, as an upstream.

`mode: chat` posts chat completions and reads the image from `message.images[]` or, as many
resellers do, from a markdown image in `content` (a data URL or a link). `mode: images` posts
`/v1/images/generations` (or `/v1/images/edits`, multipart, when the call has input images) and
reads `data[]`. Either way the answer is translated back to a Gemini response (answers.py).
"""

from __future__ import annotations

import re
import time
from typing import Any

import aiohttp
import orjson

from nanogate.core.config import UpstreamConfig
from nanogate.core.errors import UpstreamError
from nanogate.core.media import decode_base64, sniff_image
from nanogate.core.payload import joined
from nanogate.core.types import Call, Chunk, ChunkStream, Reply
from nanogate.transport import client as http
from nanogate.transport.egress import EgressRefused, FetchFailed
from nanogate.upstreams.answers import Prompt, image_reply, prompt_of
from nanogate.upstreams.base import Services

# ![alt](data:image/png;base64,...) or ![alt](https://...), as resellers put images in content.
_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*(data:image/[^)\s]+|https?://[^)\s]+)\s*\)")


class OpenAIUpstream:
    kind = "openai"

    def __init__(self, config: UpstreamConfig, services: Services) -> None:
        self.name = config.name
        self.config = config
        self.services = services
        self._key = config.api_key.get_secret_value() if config.api_key else ""
        self._client = http.Client(config)

    # -- the interface ---------------------------------------------------------------------

    async def generate(self, call: Call) -> Reply:
        deadline = time.monotonic() + self.config.timeout_s
        prompt = prompt_of(call)
        model = self.config.mapped(self.config.model_map, call.model.names)
        if self.config.mode == "chat":
            body = orjson.dumps(_chat(call, model, prompt))
            doc = await self._post("/v1/chat/completions", body)
            found = _from_chat(doc)
            if found is None:
                raise UpstreamError(self.name, 502, "the vendor's answer has no message")
            links, text = found
        elif prompt.images:
            doc = await self._post("/v1/images/edits", _edit_form(call, model, prompt))
            links, text = _from_images(doc)
        else:
            body = orjson.dumps(_generation(call, model, prompt))
            doc = await self._post("/v1/images/generations", body)
            links, text = _from_images(doc)
        images = [await self._image(link, deadline) for link in links]
        return image_reply(call, prompt, self.name, images, text)

    async def stream(self, call: Call) -> ChunkStream:
        # Images arrive whole from these endpoints: the answer is one chunk.
        reply = await self.generate(call)
        yield Chunk(joined(reply.body), reply.usage)

    async def health(self) -> bool:
        return await self._client.alive(f"{self.config.base_url}/v1/models", self._headers())

    async def close(self) -> None:
        await self._client.close()

    # -- HTTP --------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    async def _post(self, path: str, body: bytes | aiohttp.FormData) -> dict[str, Any]:
        status, raw, response_headers = await self._client.request(
            "POST", self.config.base_url + path, self._headers(), body=body
        )
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(self.name, 502 if status == 200 else status, "not JSON") from None
        if status == 200 and isinstance(doc, dict) and "error" not in doc:
            return doc
        error = doc.get("error") if isinstance(doc, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        text = http.vendor_message(str(message or f"HTTP {status}"), self._key)
        retry_after = http.parse_retry_after(response_headers.get("Retry-After"))
        if status == 200:
            raise UpstreamError(self.name, 502, f"the vendor answered an error: {text}")
        if status in (401, 402, 403):
            # Our key or our balance at the vendor: the router fails over, the client sees 503.
            raise UpstreamError(self.name, 401, "the vendor refused the gateway's key")
        status = 400 if status in (400, 404, 413, 422) else status
        raise UpstreamError(self.name, status, text, retry_after=retry_after)

    async def _image(self, link: str, deadline: float) -> tuple[str, bytes]:
        if link.startswith("data:"):
            header, _, data = link.partition(",")
            raw = decode_base64(data) if header.endswith(";base64") else None
        elif link.startswith(("http://", "https://")):
            try:
                fetched = await self.services.files.fetch(
                    link,
                    max_bytes=self.services.max_download_bytes,
                    timeout_s=max(1.0, deadline - time.monotonic()),
                )
            except (EgressRefused, FetchFailed) as exc:
                raise UpstreamError(
                    self.name, 502, f"the image could not be fetched: {exc}"
                ) from None
            raw = fetched.data
        else:
            raw = decode_base64(link)  # b64_json
        mime = sniff_image(raw[:64]) if raw else None
        if raw is None or mime is None:
            raise UpstreamError(self.name, 502, "the vendor's image is not a readable image")
        return mime, raw


# -- requests ------------------------------------------------------------------------------------


def _image_config(call: Call) -> dict[str, str]:
    config: dict[str, str] = {}
    if call.image and call.image.aspect_ratio:
        config["aspect_ratio"] = call.image.aspect_ratio
    if call.image and call.image.image_size:
        config["image_size"] = call.image.image_size
    return config


def _chat(call: Call, model: str, prompt: Prompt) -> dict[str, Any]:
    """The conversation as chat messages: turns in order, images as data URLs."""
    messages: list[dict[str, Any]] = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system})
    for content in call.request.get("contents") or ():
        if not isinstance(content, dict):
            continue
        parts: list[dict[str, Any]] = []
        for part in content.get("parts") or ():
            if not isinstance(part, dict):
                continue
            blob = part.get("inlineData") or part.get("inline_data")
            if isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif isinstance(blob, dict) and isinstance(blob.get("data"), str):
                mime = blob.get("mimeType") or blob.get("mime_type") or "image/png"
                url = f"data:{mime};base64,{blob['data']}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
        role = "assistant" if content.get("role") == "model" else "user"
        if parts:
            messages.append({"role": role, "content": parts})
    body: dict[str, Any] = {"model": model, "messages": messages, "modalities": ["image", "text"]}
    image = _image_config(call)
    if image:
        body["image_config"] = image
    return body


def _generation(call: Call, model: str, prompt: Prompt) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt.text,
        "n": 1,
        "response_format": "b64_json",
        **_image_config(call),
    }
    return body


def _edit_form(call: Call, model: str, prompt: Prompt) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("model", model)
    form.add_field("prompt", prompt.text)
    form.add_field("response_format", "b64_json")
    for name, value in _image_config(call).items():
        form.add_field(name, value)
    for index, (mime, data) in enumerate(prompt.images):
        extension = mime.removeprefix("image/")
        form.add_field("image[]", data, filename=f"input{index}.{extension}", content_type=mime)
    return form


# -- answers -------------------------------------------------------------------------------------


def _from_chat(doc: dict[str, Any]) -> tuple[list[str], str | None] | None:
    """Image links (data URLs or http URLs) and the text of the first choice (None: no
    message at all)."""
    choices = doc.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        return None
    links: list[str] = []
    for image in message.get("images") or ():
        value = image.get("image_url") if isinstance(image, dict) else None
        url = value.get("url") if isinstance(value, dict) else value
        if isinstance(url, str):
            links.append(url)
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    links += _MARKDOWN_IMAGE.findall(text)
    text = _MARKDOWN_IMAGE.sub("", text).strip()
    return links, text or None


def _from_images(doc: dict[str, Any]) -> tuple[list[str], str | None]:
    links: list[str] = []
    texts: list[str] = []
    for item in doc.get("data") or ():
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("b64_json"), str):
            links.append(item["b64_json"])
        elif isinstance(item.get("url"), str):
            links.append(item["url"])
        if isinstance(item.get("revised_prompt"), str):
            texts.append(item["revised_prompt"])
    return links, "\n".join(texts) or None
