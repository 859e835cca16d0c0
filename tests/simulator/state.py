"""Shared state of one simulator instance, and the JSON helpers every route answers with."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson
from aiohttp import web

from tests.simulator import responses as r
from tests.simulator.faults import Fault
from tests.simulator.task_forms import Phase, TaskForm

ChatImages = Literal["images", "markdown"]
CHAT_IMAGES: tuple[ChatImages, ...] = ("images", "markdown")

# The task vendor's model names (seed 002, the createTask form's) plus Google's image models, so
# a `model_map` may send either; anything else is a 422 "unknown model".
DEFAULT_TASK_MODELS: tuple[str, ...] = (
    "google/nano-banana",
    "google/nano-banana-edit",
    "google/nano-banana-v2",
    "google/nano-banana-pro",
    "nano-banana-pro",
    "nano-banana-2",
    *(name for name in r.DEFAULT_MODELS if r.is_image_model(name)),
)
# Result files kept for download; the oldest go first (a benchmark makes thousands).
FILE_LIMIT = 10_000


@dataclass(slots=True)
class SimFile:
    """One result image served at /_sim/files/<id>.<ext>."""

    id: str
    ext: str
    content_type: str
    data: bytes
    downloads: int = 0

    @property
    def name(self) -> str:
        return f"{self.id}.{self.ext}"


@dataclass(slots=True)
class SimTask:
    """One task of the task API, in whichever form it was created."""

    id: str
    form: TaskForm
    model: str
    param: dict[str, Any]
    aspect_ratio: str | None
    output_format: str
    callback_url: str | None
    base_url: str  # where its result URL points: this simulator as the client reached it
    created_at: float  # Unix seconds
    phase: Phase = "queued"
    completed_at: float | None = None
    error_code: int | None = None
    error_message: str | None = None
    urls: list[str] = field(default_factory=list)
    cost: int = 0


@dataclass
class SimState:
    """Everything one simulator instance knows; tests may hold it and inspect it directly."""

    api_key: str | None = None
    image_bytes: int | None = None
    image_tokens: int = 1290
    record: bool = True
    record_limit: int = 10_000
    # Task API: seconds from create to final state (half pending, half running), and where
    # result URLs point (None: the scheme and Host the create request came in on).
    task_seconds: float = 0.3
    public_url: str | None = None
    credits: int = 1_000_000
    task_cost: int = 4
    task_models: tuple[str, ...] = DEFAULT_TASK_MODELS
    # What GET /v1beta/models lists.
    models: tuple[str, ...] = r.DEFAULT_MODELS
    # OpenAI chat: the image in message.images[] or as a markdown data URL in content.
    chat_images: ChatImages = "images"
    requests: deque[dict[str, Any]] = field(init=False)
    faults: deque[Fault] = field(default_factory=deque)
    tasks: dict[str, SimTask] = field(default_factory=dict)
    files: dict[str, SimFile] = field(default_factory=dict)
    callbacks: deque[dict[str, Any]] = field(init=False)
    total: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    _image: tuple[int | None, str] | None = field(default=None, init=False, repr=False)
    _background: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _http: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # Bounded so a long benchmark run with recording left on can't grow without limit.
        self.requests = deque(maxlen=self.record_limit)
        self.callbacks = deque(maxlen=self.record_limit)

    def image_b64(self) -> str:
        # Keyed by size so changing image_bytes at runtime (POST /_sim/config) rebuilds it once.
        if self._image is None or self._image[0] != self.image_bytes:
            self._image = (self.image_bytes, r.image_b64(self.image_bytes))
        return self._image[1]

    def image_png(self) -> bytes:
        """The raw bytes of the image Gemini answers carry (small, or image_bytes long)."""
        if self.image_bytes is None:
            return r.small_png()
        return base64.b64decode(self.image_b64())

    def pop_fault(
        self, model: str | None, path: str | None = None, *, task: bool = False
    ) -> Fault | None:
        """The oldest queued fault this request may consume; faults for other models, other
        paths, or (task faults) only for task creation stay queued."""
        for i, fault in enumerate(self.faults):
            if fault.matches(model, path, task=task):
                del self.faults[i]
                return fault
        return None

    def add_file(self, data: bytes, ext: str, content_type: str, file_id: str = "") -> SimFile:
        file = SimFile(file_id or secrets.token_hex(16), ext, content_type, data)
        self.files[file.id] = file
        while len(self.files) > FILE_LIMIT:
            del self.files[next(iter(self.files))]
        return file

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        """Run a background job (a task's life, a callback) that reset and shutdown cancel."""
        job: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(job)
        job.add_done_callback(self._background.discard)
        return job

    def http(self) -> aiohttp.ClientSession:
        """The client callbacks are POSTed with, made on first use inside the loop."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._http

    async def close(self) -> None:
        """Stop background jobs and close the client (the app's cleanup calls this)."""
        jobs = list(self._background)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

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
        for job in list(self._background):
            job.cancel()
        self.tasks.clear()
        self.files.clear()
        self.callbacks.clear()


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
    status = r.STATUS_NAMES.get(code, "UNKNOWN")
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    body = r.error_body(code, message or f"simulated {code}", status, details)
    return json_bytes(body, code, headers)
