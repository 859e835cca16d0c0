"""Bodies the simulator answers with, shaped like Google's Gemini REST API.

Everything expensive (the PNG, a big benchmark payload and its base64) is built once and cached;
per request only a small dict is assembled and serialized with orjson.
"""

from __future__ import annotations

import base64
import functools
import io
import os
import struct
import zlib
from typing import Any

import orjson

SIM_VERSION = 1

# Google counts every inline image in a prompt as 258 tokens (for images up to 384px a side).
PROMPT_IMAGE_TOKENS = 258

# Top-level fields of GenerateContentRequest. The REST API's proto-JSON parser takes both the
# camelCase and the original snake_case spelling, so both count as known.
KNOWN_GENERATE_KEYS = frozenset(
    {
        "model",
        "contents",
        "tools",
        "toolConfig",
        "tool_config",
        "safetySettings",
        "safety_settings",
        "systemInstruction",
        "system_instruction",
        "generationConfig",
        "generation_config",
        "cachedContent",
        "cached_content",
        "labels",
    }
)
KNOWN_COUNT_KEYS = frozenset({"contents", "generateContentRequest", "generate_content_request"})

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"

# A truncated GenerateContentResponse: what a client sees when an upstream dies mid-body.
MALFORMED_BODY = b'{"candidates": [{"content": {"parts": [{"text": "simulated trunc'

_MODEL_DEFAULTS: dict[str, Any] = {
    "version": "001",
    "temperature": 1.0,
    "topP": 0.95,
    "topK": 64,
    "maxTemperature": 2.0,
}

# What `GET /models` lists by default (`--models` or POST /_sim/config {"models": [...]} change
# it: the model check's tests need an upstream that lacks some). Generation itself accepts any
# model name, so a test can invent models. Google's current ids, and the older ones the seeds use.
_KNOWN: dict[str, tuple[str, int, int, bool]] = {
    "gemini-3-pro-image": ("Nano Banana Pro", 65536, 32768, True),
    "gemini-3.1-flash-image": ("Nano Banana 2", 65536, 32768, True),
    "gemini-nano-banana-2.1": ("Nano Banana 2.1", 65536, 32768, True),
    "gemini-3.1-flash-lite-image": ("Nano Banana 2 Lite", 65536, 4096, True),
    "gemini-2.5-flash-image": ("Nano Banana", 32768, 32768, False),
    "gemini-2.5-flash-image-preview": ("Nano Banana (preview)", 32768, 32768, False),
    "gemini-3-pro-image-preview": ("Nano Banana Pro (preview)", 65536, 32768, True),
    "gemini-3.1-flash-image-preview": ("Nano Banana 2 (preview)", 65536, 32768, True),
    "gemini-3.8-flash": ("Gemini 3.8 Flash", 1048576, 65536, True),
    "gemini-2.5-flash": ("Gemini 2.5 Flash", 1048576, 65536, True),
    "gemini-2.5-pro": ("Gemini 2.5 Pro", 1048576, 65536, True),
}
DEFAULT_MODELS: tuple[str, ...] = tuple(_KNOWN)


def model_info(name: str) -> dict[str, Any]:
    """Google's `Model` resource for `name` (made-up figures for a name we do not know)."""
    display, in_limit, out_limit, thinking = _KNOWN.get(name, (name, 1048576, 65536, True))
    return {
        "name": f"models/{name}",
        "displayName": display,
        "description": f"Simulated {display} (nanogate upstream simulator).",
        "inputTokenLimit": in_limit,
        "outputTokenLimit": out_limit,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
        **_MODEL_DEFAULTS,
        "thinking": thinking,
    }


def models_list_body(names: tuple[str, ...]) -> bytes:
    return orjson.dumps({"models": [model_info(name) for name in names]})


def is_image_model(model: str) -> bool:
    return "image" in model


# The `status` Google's error envelope pairs with each HTTP code (google.rpc.Code's mapping).
STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(
    code: int, message: str, status: str, details: list[dict[str, Any]] | None = None
) -> bytes:
    """Google's error envelope, which the SDK's APIError parses for code and status."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


# --- images -------------------------------------------------------------------------------


# Output formats the vendor APIs take: name -> (file extension, content type, Pillow format).
IMAGE_FORMATS: dict[str, tuple[str, str, str]] = {
    "png": ("png", "image/png", "PNG"),
    "jpeg": ("jpeg", "image/jpeg", "JPEG"),
    "webp": ("webp", "image/webp", "WEBP"),
}
# The long side of a rendered image; 1:1 is the 64x64 PNG Gemini answers carry.
_SIDE = 64


def _render(width: int, height: int, fmt: str) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (width, height))
    img.putdata(
        [(x * 256 // width, y * 256 // height, 160) for y in range(height) for x in range(width)]
    )
    buf = io.BytesIO()
    img.save(buf, format=IMAGE_FORMATS[fmt][2])
    return buf.getvalue()


@functools.cache
def small_png() -> bytes:
    """A real 64x64 PNG; Pillow runs once per process, never per request."""
    return _render(_SIDE, _SIDE, "png")


def aspect_size(aspect_ratio: str | None) -> tuple[int, int]:
    """(width, height) for "W:H", its long side 64 pixels; square when absent or unreadable."""
    w, _, h = (aspect_ratio or "").partition(":")
    try:
        rw, rh = float(w), float(h)
    except ValueError:
        return _SIDE, _SIDE
    if rw <= 0 or rh <= 0:
        return _SIDE, _SIDE
    if rw >= rh:
        return _SIDE, max(1, round(_SIDE * rh / rw))
    return max(1, round(_SIDE * rw / rh)), _SIDE


@functools.cache
def aspect_image(aspect_ratio: str | None, fmt: str = "png") -> bytes:
    """The image a task or an images call answers with, at its aspect ratio and format (made
    once per pair; the square PNG is the very image Gemini answers carry)."""
    width, height = aspect_size(aspect_ratio)
    if (width, height, fmt) == (_SIDE, _SIDE, "png"):
        return small_png()
    return _render(width, height, fmt)


def sized_png(size: int) -> bytes:
    """Exactly `size` bytes that still decode as a PNG, for big-response benchmarks.

    The small PNG gets an ancillary chunk of random filler before IEND: decoders skip unknown
    ancillary chunks, and random bytes don't compress, so gzip on a hop can't fake the size.
    """
    png = small_png()
    pad = size - len(png) - 12  # chunk = length(4) + type(4) + data + crc(4)
    if pad < 0:
        return os.urandom(size)
    iend = png.rindex(b"IEND") - 4
    ctype = b"npAd"  # lowercase first letter = ancillary, safe to ignore
    filler = os.urandom(pad)
    chunk = struct.pack(">I", pad) + ctype + filler + struct.pack(">I", zlib.crc32(ctype + filler))
    return png[:iend] + chunk + png[iend:]


@functools.cache
def small_png_b64() -> str:
    return base64.b64encode(small_png()).decode("ascii")


def image_b64(size: int | None) -> str:
    """Base64 of the image a response carries; callers cache the big one (see SimState)."""
    if size is None:
        return small_png_b64()
    return base64.b64encode(sized_png(size)).decode("ascii")


# --- reading requests ---------------------------------------------------------------------


def contents_of(body: dict[str, Any]) -> list[Any]:
    contents = body.get("contents")
    if isinstance(contents, dict):
        return [contents]
    return contents if isinstance(contents, list) else []


def _parts(content: Any) -> list[Any]:
    if not isinstance(content, dict):
        return []
    parts = content.get("parts")
    return parts if isinstance(parts, list) else []


def prompt_text(body: dict[str, Any]) -> str:
    """The text of the latest user turn: what a reply would be "to"."""
    for content in reversed(contents_of(body)):
        if isinstance(content, dict) and content.get("role", "user") != "user":
            continue
        texts = [p["text"] for p in _parts(content) if isinstance(p, dict) and "text" in p]
        if texts:
            return " ".join(str(t) for t in texts)
    return ""


def _text_tokens(text: str) -> int:
    # Roughly Gemini's ratio of four characters per token; the exact value only has to be stable.
    return max(1, (len(text) + 3) // 4) if text else 0


def prompt_tokens(body: dict[str, Any]) -> int:
    text, image = prompt_tokens_by_modality(body)
    return max(text + image, 1)


def prompt_tokens_by_modality(body: dict[str, Any]) -> tuple[int, int]:
    """(text, image) prompt tokens, as Google splits them in promptTokensDetails."""
    nested = body.get("generateContentRequest") or body.get("generate_content_request")
    if isinstance(nested, dict) and "contents" not in body:
        body = nested
    contents = list(contents_of(body))
    system = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(system, dict):
        contents.append(system)
    text = image = 0
    for content in contents:
        for part in _parts(content):
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                text += _text_tokens(part["text"])
            elif any(k in part for k in ("inlineData", "inline_data", "fileData", "file_data")):
                image += PROMPT_IMAGE_TOKENS
    return text, image


def unknown_keys(body: dict[str, Any], known: frozenset[str]) -> list[str]:
    return [k for k in body if k not in known]


def wants_text(body: dict[str, Any]) -> bool:
    """False when generationConfig.responseModalities asks for images only, as Google honours."""
    config = body.get("generationConfig") or body.get("generation_config")
    if not isinstance(config, dict):
        return True
    modalities = config.get("responseModalities") or config.get("response_modalities")
    if not isinstance(modalities, list) or not modalities:
        return True
    return any(isinstance(m, str) and m.upper() == "TEXT" for m in modalities)


# --- building responses -------------------------------------------------------------------


def response_id() -> str:
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


class Reply:
    """The parts and usage of one simulated answer, shared by the plain and streamed forms."""

    __slots__ = (
        "_image_tokens",
        "echo",
        "image",
        "model",
        "prompt_image_tokens",
        "prompt_text_tokens",
        "prompt_tokens",
        "rid",
        "text",
        "text_tokens",
    )

    def __init__(
        self, model: str, body: dict[str, Any], image: str | None, image_tokens: int
    ) -> None:
        self.model = model
        self.rid = response_id()
        self.prompt_text_tokens, self.prompt_image_tokens = prompt_tokens_by_modality(body)
        self.prompt_tokens = max(self.prompt_text_tokens + self.prompt_image_tokens, 1)
        self.echo = {"unknownRequestKeys": unknown_keys(body, KNOWN_GENERATE_KEYS)}
        summary = prompt_text(body)[:40]
        if image is None:
            self.text: str | None = f"simulated reply to: {summary}"
            self.image: str | None = None
        else:
            want = wants_text(body)
            self.text = f"simulated image for: {summary}" if want else None
            self.image = image
        self.text_tokens = _text_tokens(self.text or "")
        self._image_tokens = image_tokens if image is not None else 0

    def _details(self) -> list[dict[str, Any]]:
        details = []
        if self.text_tokens:
            details.append({"modality": "TEXT", "tokenCount": self.text_tokens})
        if self._image_tokens:
            details.append({"modality": "IMAGE", "tokenCount": self._image_tokens})
        return details

    def usage(self, final: bool = True) -> dict[str, Any]:
        prompt_details = [
            {"modality": "TEXT", "tokenCount": self.prompt_tokens - self.prompt_image_tokens}
        ]
        if self.prompt_image_tokens:
            prompt_details.append({"modality": "IMAGE", "tokenCount": self.prompt_image_tokens})
        if not final:
            # Google repeats a prompt-only usage block on every streamed chunk before the last.
            return {
                "promptTokenCount": self.prompt_tokens,
                "totalTokenCount": self.prompt_tokens,
                "promptTokensDetails": prompt_details,
            }
        candidates = self.text_tokens + self._image_tokens
        return {
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": candidates,
            "totalTokenCount": self.prompt_tokens + candidates,
            "promptTokensDetails": prompt_details,
            "candidatesTokensDetails": self._details(),
        }

    def _envelope(
        self, parts: list[dict[str, Any]], finish: bool, usage: dict[str, Any]
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = "STOP"
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": self.model,
            "responseId": self.rid,
            "simulatorEcho": self.echo,
            # A field no Gemini client knows, so tests can check a relay passes it through.
            "x_simulator": {"version": SIM_VERSION},
        }

    def _image_part(self) -> dict[str, Any]:
        return {"inlineData": {"mimeType": "image/png", "data": self.image}}

    def whole(self) -> bytes:
        parts: list[dict[str, Any]] = []
        if self.text is not None:
            parts.append({"text": self.text})
        if self.image is not None:
            parts.append(self._image_part())
        return orjson.dumps(self._envelope(parts, True, self.usage()))

    def chunks(self) -> list[bytes]:
        """Three chunks: text, then the image (or the rest of the text), then finish + usage."""
        first: list[dict[str, Any]]
        second: list[dict[str, Any]]
        if self.image is not None:
            first = [{"text": self.text}] if self.text is not None else []
            second = [self._image_part()]
            if not first:
                first, second = second, [{"text": ""}]
        else:
            text = self.text or ""
            cut = len(text) // 2
            first, second = [{"text": text[:cut]}], [{"text": text[cut:]}]
        partial = self.usage(final=False)
        return [
            orjson.dumps(self._envelope(first, False, partial)),
            orjson.dumps(self._envelope(second, False, partial)),
            orjson.dumps(self._envelope([{"text": ""}], True, self.usage())),
        ]


def count_tokens_body(body: dict[str, Any]) -> bytes:
    tokens = prompt_tokens(body)
    return orjson.dumps(
        {
            "totalTokens": tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}],
            "simulatorEcho": {"unknownRequestKeys": unknown_keys(body, KNOWN_COUNT_KEYS)},
            "x_simulator": {"version": SIM_VERSION},
        }
    )
