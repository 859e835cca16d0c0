"""The OpenAI-compatible dialect: rendering. Pure functions.

Only the models listing lives here so far; chat and images come with their own issue.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..catalog import Catalog, ModelSpec
from ..errors import GatewayError

# OpenAI's `type` for each status, as its SDK and clients expect to read them.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": _TYPES.get(error.status, "api_error"),
                "param": None,
                "code": error.reason.lower(),
            }
        }
    )


def model_object(spec: ModelSpec) -> dict[str, Any]:
    return {"id": spec.name, "object": "model", "created": 0, "owned_by": "google"}


def list_models(catalog: Catalog) -> bytes:
    return orjson.dumps({"object": "list", "data": [model_object(spec) for spec in catalog]})
