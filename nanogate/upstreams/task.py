"""A vendor with a task API as an upstream: submit, poll until the task ends, download its image.

Two forms, chosen by `protocol`: `taskinfo` (`CreateTask` / `TaskInfo`, `x-api-key`)
and `recordinfo` (`createTask` / `recordInfo`, Bearer). The canonical call becomes the vendor's
input (prompt, images, aspect ratio, resolution, the vendor's model name through `model_map`);
images the client sent inline are put in result storage and handed over as signed URLs. The
result comes back as a Gemini response (answers.py), so every client dialect works on top.

Vendor codes: 401/402 are our account at the vendor (a 503 for the client, logged loudly), 422
the request (400), 429 throttling, 455/505 unavailable (fail over), and a failed task (501) a
failed attempt: refunded, and tried on the next upstream (never again on this one).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from nanogate.core.config import UpstreamConfig
from nanogate.core.errors import UpstreamError
from nanogate.core.media import sniff_image
from nanogate.core.metrics import UPSTREAM_ERRORS
from nanogate.core.payload import joined
from nanogate.core.types import Call, Chunk, ChunkStream, Reply
from nanogate.transport import client as http
from nanogate.transport.egress import EgressRefused, FetchFailed
from nanogate.upstreams.answers import Prompt, image_reply, prompt_of
from nanogate.upstreams.base import Services

log = logging.getLogger(__name__)

_DONE = frozenset({"succeeded", "success", "completed", "done"})
_FAILED = frozenset({"failed", "fail", "error"})
# The first poll comes soon; later ones back off to this (with jitter).
_FIRST_POLL_S, _MAX_POLL_S = 1.0, 10.0


@dataclass(frozen=True, slots=True)
class _Form:
    create: str
    query: str
    id_param: str
    id_field: str
    message: str  # the envelope's message field: "message" or "msg"
    callback: str


_FORMS = {
    "taskinfo": _Form(
        "/api/v1/client/job/CreateTask",
        "/api/v1/client/job/TaskInfo",
        "task_id",
        "task_id",
        "message",
        "callback_url",
    ),
    "recordinfo": _Form(
        "/api/v1/jobs/createTask",
        "/api/v1/jobs/recordInfo",
        "taskId",
        "taskId",
        "msg",
        "callBackUrl",
    ),
}
_HEALTH = {"taskinfo": "/api/v1/client/account/balance", "recordinfo": "/api/v1/chat/credit"}


class TaskUpstream:
    kind = "task"

    def __init__(self, config: UpstreamConfig, services: Services) -> None:
        self.name = config.name
        self.config = config
        self.services = services
        self.form = _FORMS[config.protocol]
        self._key = config.api_key.get_secret_value() if config.api_key else ""
        self._client = http.Client(config)

    # -- the interface ---------------------------------------------------------------------

    async def generate(self, call: Call) -> Reply:
        deadline = time.monotonic() + self.config.timeout_s
        prompt = prompt_of(call)
        task_id = await self._create(call, prompt)
        data = await self._wait(task_id, deadline)
        state = str(data.get("status") or data.get("state") or "").lower()
        if state in _FAILED:
            code, message = _failure(data)
            message = http.vendor_message(message, self._key)
            # Refunded, and worth another upstream: that vendor is done with this call.
            raise UpstreamError(self.name, 503, f"the vendor's task failed ({code}): {message}")
        urls = _result_urls(data)
        if not urls:
            raise UpstreamError(self.name, 502, "the vendor's finished task has no result URL")
        images = [await self._download(url, deadline) for url in urls]
        return image_reply(call, prompt, self.name, images)

    async def stream(self, call: Call) -> ChunkStream:
        # A task has nothing to stream: its answer arrives whole, as one chunk.
        reply = await self.generate(call)
        yield Chunk(joined(reply.body), reply.usage)

    async def health(self) -> bool:
        return await self._client.alive(
            self.config.base_url + _HEALTH[self.config.protocol], self._headers()
        )

    async def close(self) -> None:
        await self._client.close()

    # -- the task ----------------------------------------------------------------------------

    async def _create(self, call: Call, prompt: Prompt) -> str:
        body = orjson.dumps(await self._input(call, prompt))
        doc = await self._send("POST", self.form.create, body=body)
        data = doc.get("data")
        task_id = data.get(self.form.id_field) if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise UpstreamError(self.name, 502, "the vendor accepted the task but sent no id")
        return task_id

    async def _input(self, call: Call, prompt: Prompt) -> dict[str, Any]:
        text = "\n".join(t for t in (prompt.system, prompt.text) if t)
        urls = [await self._hand_over(mime, data) for mime, data in prompt.images]
        urls += prompt.urls
        edit = bool(urls) and any(n in self.config.edit_model_map for n in call.model.names)
        names = self.config.edit_model_map if edit else self.config.model_map
        fields: dict[str, Any] = {"prompt": text}
        if urls:
            fields["image_urls"] = urls
        ratio = call.image.aspect_ratio if call.image else None
        size = call.image.image_size if call.image else None
        if ratio:
            # The createTask form names the aspect ratio `image_size`.
            fields["aspect_ratio" if self.config.protocol == "taskinfo" else "image_size"] = ratio
        if size:
            fields["resolution"] = size
        fields["output_format"] = "png"
        return {"model": self.config.mapped(names, call.model.names), "input": fields}

    async def _hand_over(self, mime: str, data: bytes) -> str:
        """An inline input image as a signed URL the vendor can fetch."""
        stored = await self.services.storage.put(data, mime)
        expires = int(time.time()) + max(3600, int(self.config.timeout_s) * 2)
        return self.services.storage.url(stored.name, expires=expires)

    async def _wait(self, task_id: str, deadline: float) -> dict[str, Any]:
        delay = _FIRST_POLL_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UpstreamError(
                    self.name, 0, f"task {task_id} did not finish in time", timeout=True
                )
            await asyncio.sleep(min(left, delay * random.uniform(0.8, 1.2)))
            delay = min(_MAX_POLL_S, delay * 1.5)
            doc = await self._send("GET", self.form.query, params={self.form.id_param: task_id})
            data = doc.get("data")
            if not isinstance(data, dict):
                raise UpstreamError(self.name, 502, "the vendor's task record has no data")
            state = str(data.get("status") or data.get("state") or "").lower()
            if state in _DONE or state in _FAILED:
                return data

    async def _download(self, url: str, deadline: float) -> tuple[str, bytes]:
        try:
            fetched = await self.services.files.fetch(
                url,
                max_bytes=self.services.max_download_bytes,
                timeout_s=max(1.0, deadline - time.monotonic()),
            )
        except (EgressRefused, FetchFailed) as exc:
            raise UpstreamError(self.name, 502, f"the result could not be fetched: {exc}") from None
        mime = sniff_image(fetched.data[:64])
        if mime is None:
            raise UpstreamError(self.name, 502, "the vendor's result is not an image")
        return mime, fetched.data

    # -- HTTP --------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        if self.config.protocol == "taskinfo":
            return {"x-api-key": self._key}
        return {"Authorization": f"Bearer {self._key}"}

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One vendor call; its envelope's `code` (or the HTTP status) decides the outcome."""
        status, raw, headers = await self._client.request(
            method, self.config.base_url + path, self._headers(), body=body, params=params
        )
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(self.name, 502 if status == 200 else status, "not JSON") from None
        if not isinstance(doc, dict):
            raise UpstreamError(self.name, 502, "the vendor's answer is not a JSON object")
        code = doc.get("code")
        code = code if isinstance(code, int) else status
        if status == 200 and code == 200:
            return doc
        message = http.vendor_message(str(doc.get(self.form.message) or f"code {code}"), self._key)
        raise self._error(code, message, http.parse_retry_after(headers.get("Retry-After")))

    def _error(self, code: int, message: str, retry_after: int | None) -> UpstreamError:
        if code in (401, 402, 403):
            self._account_problem(code, message)
            # Our credentials or our balance there: the router fails over, the client sees 503.
            return UpstreamError(self.name, 401, "the vendor refused the gateway's account")
        if code == 422:
            return UpstreamError(self.name, 400, message, reason="INVALID_ARGUMENT")
        if code in (455, 505):
            return UpstreamError(self.name, 503, message, retry_after=retry_after)
        if code == 429:
            return UpstreamError(self.name, 429, message, retry_after=retry_after)
        if code == 404:
            return UpstreamError(self.name, 502, f"the vendor lost the task: {message}")
        return UpstreamError(self.name, code if code >= 500 else 502, message)

    def _account_problem(self, code: int, message: str) -> None:
        UPSTREAM_ERRORS.labels(self.name, f"account_{code}").inc()
        what = "credits ran out" if code == 402 else "key was refused"
        log.error(
            "vendor account problem: the operator's %s at this upstream; fix it there",
            what,
            extra={"upstream": self.name, "code": code, "vendor_message": message},
        )


def _failure(data: dict[str, Any]) -> tuple[int, str]:
    error = data.get("error")
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    else:
        code, message = data.get("failCode"), data.get("failMsg")
    try:
        number = int(code) if code not in (None, "") else 501
    except (TypeError, ValueError):
        number = 501
    return number, str(message or "generation failed")[:300]


def _result_urls(data: dict[str, Any]) -> list[str]:
    result = data.get("result")
    if isinstance(result, dict) and isinstance(result.get("urls"), list):
        return [u for u in result["urls"] if isinstance(u, str)]
    raw = data.get("resultJson")
    try:
        parsed = orjson.loads(raw) if isinstance(raw, str) and raw else None
    except orjson.JSONDecodeError:
        return []
    urls = parsed.get("resultUrls") if isinstance(parsed, dict) else None
    return [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []
