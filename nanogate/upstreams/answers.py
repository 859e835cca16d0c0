"""What adapters for non-Gemini vendors share: reading the canonical call as a prompt with
images, and writing the vendor's images back as a Gemini GenerateContentResponse.

Vendors that sell images by the task or through OpenAI's shapes report no Gemini usage, so the
usage written here comes from the catalog (tokens per input image, per output image at the
rendered size), and every client dialect prices and renders the answer as if Google had sent it.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson

from nanogate.billing import prices
from nanogate.core.canonical import Parts, usage_from_response
from nanogate.core.canonical import field as gfield
from nanogate.core.media import decode_base64
from nanogate.core.types import Call, Reply

CHARS_PER_TOKEN = 4


@dataclass(slots=True)
class Prompt:
    """The call as a vendor that takes one prompt and some images sees it."""

    text: str
    images: list[tuple[str, bytes]] = field(default_factory=list)  # inline (mime, bytes)
    urls: list[str] = field(default_factory=list)  # fileData URIs already on the web
    system: str = ""


def prompt_of(call: Call) -> Prompt:
    """The user turns' text parts joined, and their images, in order."""
    request = call.request
    user = Parts()
    for content in request.get("contents") or ():
        if isinstance(content, dict) and content.get("role", "user") == "user":
            user.read(content)
    prompt = Prompt("\n".join(t for t in user.text if t.strip()))
    for image in user.images:
        data = decode_base64(str(image.data))
        if data:
            prompt.images.append((image.mime, data))
    prompt.urls = [uri for uri in user.links if uri.startswith(("http://", "https://"))]
    system = Parts()
    system.read(gfield(request, "systemInstruction", "system_instruction"))
    prompt.system = "\n".join(system.text)
    return prompt


def _tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN) if text else 0


def image_reply(
    call: Call,
    prompt: Prompt,
    upstream: str,
    images: list[tuple[str, bytes]],
    text: str | None = None,
) -> Reply:
    """A GenerateContentResponse holding `images` (and `text`), with catalog usage for
    `prompt` (the call as the adapter already read it: its images are not decoded again).

    With no image (the vendor answered in text only) it finishes NO_IMAGE: the gateway charges
    nothing for it, as it does when Google itself returns no image.
    """
    spec = call.model
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    for mime, data in images:
        parts.append({"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}})
    text_in = _tokens(prompt.text) + _tokens(prompt.system)
    image_in = (len(prompt.images) + len(prompt.urls)) * spec.input_image_tokens
    image_out = len(images) * spec.image_tokens(prices.image_size(call))
    text_out = _tokens(text or "")
    usage = {
        "promptTokenCount": text_in + image_in,
        "candidatesTokenCount": image_out + text_out,
        "totalTokenCount": text_in + image_in + image_out + text_out,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": text_in},
            {"modality": "IMAGE", "tokenCount": image_in},
        ],
        "candidatesTokensDetails": [
            {"modality": "TEXT", "tokenCount": text_out},
            {"modality": "IMAGE", "tokenCount": image_out},
        ],
    }
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": parts or [{"text": ""}]},
        "finishReason": "STOP" if images else "NO_IMAGE",
        "index": 0,
    }
    body = orjson.dumps(
        {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": spec.name,
            "responseId": secrets.token_hex(8),
        }
    )
    return Reply(body, upstream, usage_from_response(body))
