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
from nanogate.core.canonical import Image, usage_from_metadata
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
    502: "bad_upstream_answer",
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
# The parts, candidates and usage are read by the core's one reader (core/canonical.py); what is
# OpenAI's own is the mapping of finish reasons and the usage shapes.


def finish_reason(gemini: str | None, *, calls: bool) -> str | None:
    """Gemini's finishReason as OpenAI's: content filters for every safety and image block."""
    if gemini is None:
        return None
    if gemini in _FILTERED:
        return "content_filter"
    if gemini == "MAX_TOKENS":
        return "length"
    return "tool_calls" if calls else "stop"


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
