"""The OpenAI-compatible dialect: what its chat and images halves share. Pure functions.

The error envelope, the models listing, reading request parameters with errors that name them,
and reading a canonical (Gemini) answer: its parts, finish reason and usage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from nanogate.core import inline
from nanogate.core.canonical import field as gfield
from nanogate.core.canonical import usage_from_metadata
from nanogate.core.catalog import ModelSpec
from nanogate.core.errors import GatewayError, InvalidArgument
from nanogate.core.inline import Blob, Text
from nanogate.core.types import Usage

# OpenAI's `type` and `code` for each status, as its SDK and clients read them.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_CODES = {
    401: "invalid_api_key",
    402: "insufficient_credits",
    403: "permission_denied",
    404: "not_found",
    409: "idempotency_key_conflict",
    413: "request_too_large",
    429: "rate_limit_exceeded",
    500: "internal_error",
    501: "feature_disabled",
    503: "service_unavailable",
    504: "upstream_timeout",
}
_FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "IMAGE_OTHER",
        "NO_IMAGE",
    }
)


def error_body(error: GatewayError) -> bytes:
    code = _CODES.get(error.status, error.reason.lower())
    if error.status == 404 and "Model" in error.message:
        code = "model_not_found"
    elif error.status == 400 and error.param is not None:
        code = "invalid_value"
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": _TYPES.get(error.status, "api_error"),
                "param": error.param,
                "code": code,
            }
        }
    )


def model_object(spec: ModelSpec) -> dict[str, Any]:
    return {"id": spec.name, "object": "model", "created": 0, "owned_by": "google"}


def list_models(specs: Iterable[ModelSpec]) -> bytes:
    """OpenAI's model list of these models (the ones the key may call)."""
    return orjson.dumps({"object": "list", "data": [model_object(spec) for spec in specs]})


# -- reading parameters ------------------------------------------------------------------------


def bad(param: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{param}: {message}", param=param)


def show(value: Any) -> str:
    # default=repr: a Blob (a long base64 string) shows as <Blob N chars>, not a TypeError.
    text = orjson.dumps(value, default=repr).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def number(
    body: dict[str, Any], name: str, low: float, high: float, *, integer: bool = False
) -> float | int | None:
    value: Any = body.get(name)
    if value is None:
        return None
    wrong_kind = isinstance(value, bool) or not isinstance(value, int | float)
    if wrong_kind or (integer and not isinstance(value, int)) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise bad(name, f"must be {kind} from {low:g} to {high:g}, not {show(value)}.")
    number: float | int = value
    return number


def choice(body: dict[str, Any], name: str, allowed: Iterable[str]) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    options = tuple(allowed)
    if value not in options:
        raise bad(name, f"must be one of {', '.join(options)}; got {show(value)}.")
    return str(value)


def count(body: dict[str, Any], limit: int) -> int:
    """`n`, the number of images or choices asked for (1 to `limit`)."""
    value = body.get("n")
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad("n", f"must be a positive integer, not {show(value)}.")
    if value > limit:
        raise bad("n", f"at most {limit} per request on this gateway; got {value}.")
    return value


def json_object(body: bytes, what: str) -> dict[str, Any]:
    if not body.strip():
        raise InvalidArgument(f"The request body is empty; send a JSON {what} request.")
    try:
        doc = inline.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(
            f"The request body is not valid JSON (line {exc.lineno}, column {exc.colno})."
        ) from exc
    if not isinstance(doc, dict):
        raise InvalidArgument(f"The request body must be a JSON object ({what}).")
    return doc


def model_name(body: dict[str, Any], default: str | None = None) -> str:
    value = body.get("model", default)
    if not isinstance(value, str) or not value:
        raise bad("model", "is required: the name of a model from GET /v1/models.")
    return value


# -- reading a canonical answer ----------------------------------------------------------------


@dataclass(slots=True)
class Image:
    mime: str
    data: Text  # base64


@dataclass(slots=True)
class Candidate:
    """One Gemini candidate, read into what the OpenAI shapes need."""

    index: int = 0
    text: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # functionCall (+ signature)
    finish: str | None = None  # Gemini's finishReason


def candidates(doc: Any) -> list[Candidate]:
    """The candidates of a GenerateContentResponse (or of one stream chunk)."""
    found: list[Candidate] = []
    raw = doc.get("candidates") if isinstance(doc, dict) else None
    for position, item in enumerate(raw if isinstance(raw, list) else ()):
        if not isinstance(item, dict):
            continue
        index = item.get("index")
        out = Candidate(index=index if isinstance(index, int) else position)
        finish = gfield(item, "finishReason", "finish_reason")
        out.finish = finish if isinstance(finish, str) else None
        content = item.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict):
                _read_part(part, out)
        found.append(out)
    return found


def _read_part(part: dict[str, Any], out: Candidate) -> None:
    blob = gfield(part, "inlineData", "inline_data")
    call = gfield(part, "functionCall", "function_call")
    text = part.get("text")
    if isinstance(blob, dict) and blob.get("data"):
        mime = gfield(blob, "mimeType", "mime_type")
        out.images.append(Image(mime if isinstance(mime, str) else "image/png", blob["data"]))
    elif isinstance(call, dict) and isinstance(call.get("name"), str):
        signature = gfield(part, "thoughtSignature", "thought_signature")
        out.calls.append({**call, "signature": signature if isinstance(signature, str) else None})
    elif isinstance(text, str):
        (out.thoughts if part.get("thought") else out.text).append(text)


def block_reason(doc: Any) -> str | None:
    feedback = gfield(doc, "promptFeedback", "prompt_feedback") if isinstance(doc, dict) else None
    reason = gfield(feedback, "blockReason", "block_reason") if isinstance(feedback, dict) else None
    return reason if isinstance(reason, str) else None


def finish_reason(gemini: str | None, *, calls: bool) -> str | None:
    """Gemini's finishReason as OpenAI's: content filters for every safety and image block."""
    if gemini is None:
        return None
    if gemini in _FILTERED:
        return "content_filter"
    if gemini == "MAX_TOKENS":
        return "length"
    return "tool_calls" if calls else "stop"


def usage_metadata(doc: Any) -> dict[str, Any]:
    meta = gfield(doc, "usageMetadata", "usage_metadata") if isinstance(doc, dict) else None
    return meta if isinstance(meta, dict) else {}


@dataclass(slots=True)
class Tokens:
    """OpenAI's usage figures, summed over one or more answers (n image calls make n answers),
    read through the core's one reader of usageMetadata."""

    usage: Usage = field(default_factory=Usage)

    def add(self, meta: dict[str, Any]) -> None:
        self.usage.add(usage_from_metadata(meta))

    @property
    def prompt(self) -> int:
        return self.usage.input_text + self.usage.input_image

    @property
    def completion(self) -> int:
        """Thinking counts as completion, as OpenAI's reasoning does."""
        return self.usage.output_text + self.usage.output_image + self.usage.thoughts

    def chat(self) -> dict[str, Any]:
        """Chat completions' `usage`: thinking counts as completion, as OpenAI's reasoning."""
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {
                "cached_tokens": self.usage.cached,
                "image_tokens": self.usage.input_image,
            },
            "completion_tokens_details": {
                "reasoning_tokens": self.usage.thoughts,
                "image_tokens": self.usage.output_image,
            },
        }

    def images(self) -> dict[str, Any]:
        """The images endpoints' `usage`, in gpt-image-1's shape."""
        return {
            "input_tokens": self.prompt,
            "output_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "input_tokens_details": {
                "text_tokens": self.usage.input_text,
                "image_tokens": self.usage.input_image,
            },
        }


def data_url(image: Image) -> Text:
    prefix = f"data:{image.mime};base64,"
    if isinstance(image.data, Blob):
        return image.data.with_prefix(prefix.encode())
    return prefix + image.data
