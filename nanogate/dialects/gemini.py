"""The Gemini native dialect: request parsing and response/error rendering. Pure functions.

The canonical form *is* Gemini's, so parsing is validation and rendering is framing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from nanogate.core.catalog import ModelSpec
from nanogate.core.errors import GatewayError, InvalidArgument, NotFound
from nanogate.core.types import Call, Method
from nanogate.dialects.gemini_validate import validate_count_tokens, validate_generate

METHODS: dict[str, Method] = {
    "generateContent": "generateContent",
    "streamGenerateContent": "streamGenerateContent",
    "countTokens": "countTokens",
}


def split_model_action(path_tail: str) -> tuple[str, Method]:
    """'gemini-2.5-flash-image:generateContent' -> ('gemini-2.5-flash-image', method)."""
    model, sep, action = path_tail.rpartition(":")
    if not sep or not model:
        raise NotFound(
            f"Unknown route 'models/{path_tail}': expected models/{{model}}:generateContent, "
            ":streamGenerateContent or :countTokens."
        )
    method = METHODS.get(action)
    if method is None:
        raise NotFound(
            f"Method '{action}' is not supported; use generateContent, streamGenerateContent "
            "or countTokens."
        )
    return model, method


def parse_call(request_id: str, method: Method, spec: ModelSpec, body: bytes) -> Call:
    """Validate the raw body for `spec` and wrap it as a Call (the body itself is kept as is)."""
    if not body.strip():
        raise InvalidArgument("The request body is empty; send a JSON GenerateContentRequest.")
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"The request body is not valid JSON ({_json_hint(exc)}).") from exc
    if method == "countTokens":
        images = validate_count_tokens(request, spec)
        return Call(request_id, method, spec, body, request, None, images)
    image, images = validate_generate(request, spec)
    return Call(request_id, method, spec, body, request, image, images)


def _json_hint(exc: orjson.JSONDecodeError) -> str:
    return f"line {exc.lineno}, column {exc.colno}"


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps(
        {"error": {"code": error.status, "message": error.message, "status": error.reason}}
    )


def sse_event(chunk: bytes) -> bytes:
    return b"data: " + chunk + b"\r\n\r\n"


def model_resource(spec: ModelSpec) -> dict[str, Any]:
    """Google's `Model` resource for GET /v1beta/models."""
    resource: dict[str, Any] = {
        "name": f"models/{spec.name}",
        "baseModelId": spec.name,
        "version": "001",
        "displayName": spec.display_name,
        "description": f"{spec.display_name}, served by nanogate.",
        "inputTokenLimit": spec.input_token_limit,
        "outputTokenLimit": spec.output_token_limit,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
    }
    if spec.aliases:
        resource["aliases"] = list(spec.aliases)
    if spec.is_image:
        resource["imageConfig"] = {
            "aspectRatios": list(spec.aspect_ratios),
            "imageSizes": list(spec.image_sizes),
            "maxInputImages": spec.max_input_images,
        }
    return resource


def list_models(specs: Iterable[ModelSpec]) -> bytes:
    """A ListModelsResponse of these models (the ones the key may call)."""
    return orjson.dumps({"models": [model_resource(spec) for spec in specs]})


def model_resource_bytes(spec: ModelSpec) -> bytes:
    return orjson.dumps(model_resource(spec))
