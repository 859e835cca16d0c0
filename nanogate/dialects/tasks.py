"""The task API dialect (seed 002, and the `createTask`/`recordInfo` form): envelopes. Pure.

Both forms carry the code twice, in the HTTP status and in the body's `code`. Seed 002's form
names the human text `message`; the other form names it `msg`.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from ..errors import GatewayError

Form = Literal["message", "msg"]

# The task API's own codes (seed 002): the gateway's statuses folded onto them.
_CODES = {400: 422, 403: 401, 413: 422, 503: 500, 504: 500}


def form_for(path: str) -> Form:
    """Seed 002's routes live under /api/v1/client/; the other form's under /api/v1/jobs/ and
    /api/v1/chat/."""
    return "message" if path.startswith("/api/v1/client/") else "msg"


def code_for(status: int) -> int:
    return _CODES.get(status, status)


def envelope(data: Any, form: Form, *, code: int = 200, message: str = "success") -> bytes:
    return orjson.dumps({"code": code, form: message, "data": data})


def error_body(error: GatewayError, form: Form) -> tuple[int, bytes]:
    """(HTTP status, body) for an error in the task API's envelope."""
    code = code_for(error.status)
    return code, envelope(None, form, code=code, message=error.message)
