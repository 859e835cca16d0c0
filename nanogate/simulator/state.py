"""Shared state of one simulator instance, and the JSON helpers every route answers with."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ..errors import STATUS_NAMES
from . import responses as r
from .faults import Fault


@dataclass
class SimState:
    """Everything one simulator instance knows; tests may hold it and inspect it directly."""

    api_key: str | None = None
    image_bytes: int | None = None
    image_tokens: int = 1290
    record: bool = True
    record_limit: int = 10_000
    requests: deque[dict[str, Any]] = field(init=False)
    faults: deque[Fault] = field(default_factory=deque)
    total: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    _image: tuple[int | None, str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # Bounded so a long benchmark run with recording left on can't grow without limit.
        self.requests = deque(maxlen=self.record_limit)

    def image_b64(self) -> str:
        # Keyed by size so changing image_bytes at runtime (POST /_sim/config) rebuilds it once.
        if self._image is None or self._image[0] != self.image_bytes:
            self._image = (self.image_bytes, r.image_b64(self.image_bytes))
        return self._image[1]

    def pop_fault(self, model: str | None) -> Fault | None:
        """The oldest queued fault this request may consume; faults for other models stay."""
        for i, fault in enumerate(self.faults):
            if fault.matches(model):
                del self.faults[i]
                return fault
        return None

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.total,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }

    def reset(self) -> None:
        self.requests.clear()
        self.faults.clear()
        self.total = 0
        self.max_in_flight = self.in_flight


STATE_KEY = web.AppKey("nanogate_simulator_state", SimState)


def json_bytes(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    h = {"Content-Type": r.JSON_CONTENT_TYPE}
    if headers:
        h.update(headers)
    return web.Response(body=body, status=status, headers=h)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return json_bytes(orjson.dumps(obj), status)


def error_response(
    code: int,
    message: str | None = None,
    *,
    retry_after: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> web.Response:
    """Google's error envelope with the status name that belongs to `code`."""
    status = STATUS_NAMES.get(code, "UNKNOWN")
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    body = r.error_body(code, message or f"simulated {code}", status, details)
    return json_bytes(body, code, headers)
