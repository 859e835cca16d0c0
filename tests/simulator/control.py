"""The control API under /_sim/: recording, the fault queue, stats and runtime config, the
task API's callback log, and the result files the task and images APIs link to.

These routes need no API key and are not counted, recorded or subject to faults, so a test can
inspect and steer the simulator without disturbing what it measures.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.simulator import responses as r
from tests.simulator.faults import FaultError, faults_from_json
from tests.simulator.state import CHAT_IMAGES, STATE_KEY, SimState
from tests.simulator.state import error_response as _error
from tests.simulator.state import json_response as _json


async def _requests_get(request: web.Request) -> web.StreamResponse:
    return _json(list(request.app[STATE_KEY].requests))


async def _requests_delete(request: web.Request) -> web.StreamResponse:
    request.app[STATE_KEY].requests.clear()
    return _json({"cleared": True})


async def _read_control_json(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(
            # text=, not body=: aiohttp deprecates bodies on its HTTP exceptions.
            text=r.error_body(400, "control body must be JSON", "INVALID_ARGUMENT").decode(),
            content_type="application/json",
        ) from None


async def _faults_get(request: web.Request) -> web.StreamResponse:
    return _json([f.to_json() for f in request.app[STATE_KEY].faults])


async def _faults_post(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        new = faults_from_json(await _read_control_json(request))
    except FaultError as exc:
        return _error(400, str(exc))
    state.faults.extend(new)
    return _json({"queued": len(new), "pending": len(state.faults)})


async def _faults_delete(request: web.Request) -> web.StreamResponse:
    request.app[STATE_KEY].faults.clear()
    return _json({"cleared": True})


async def _stats_get(request: web.Request) -> web.StreamResponse:
    return _json(request.app[STATE_KEY].stats())


async def _stats_delete(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    state.total = 0
    state.max_in_flight = state.in_flight
    return _json(state.stats())


async def _reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE_KEY].reset()
    return _json({"reset": True})


async def _callbacks_get(request: web.Request) -> web.StreamResponse:
    return _json(list(request.app[STATE_KEY].callbacks))


async def _callbacks_delete(request: web.Request) -> web.StreamResponse:
    request.app[STATE_KEY].callbacks.clear()
    return _json({"cleared": True})


async def _files_get(request: web.Request) -> web.StreamResponse:
    return _json(
        [
            {
                "id": f.id,
                "path": f"/_sim/files/{f.name}",
                "content_type": f.content_type,
                "bytes": len(f.data),
                "downloads": f.downloads,
            }
            for f in request.app[STATE_KEY].files.values()
        ]
    )


async def _file_get(request: web.Request) -> web.StreamResponse:
    """A result image a task or an images call linked to; each download is counted."""
    name = request.match_info["name"]
    file = request.app[STATE_KEY].files.get(name.partition(".")[0])
    if file is None or file.name != name:
        return _error(404, f"No file {name[:60]!r} on the simulator.")
    file.downloads += 1
    return web.Response(body=file.data, headers={"Content-Type": file.content_type})


def _config_view(state: SimState) -> dict[str, Any]:
    # The key itself is never echoed back, only whether one is required.
    return {
        "api_key_required": state.api_key is not None,
        "image_bytes": state.image_bytes,
        "image_tokens": state.image_tokens,
        "record": state.record,
        "task_seconds": state.task_seconds,
        "public_url": state.public_url,
        "credits": state.credits,
        "task_cost": state.task_cost,
        "task_models": list(state.task_models),
        "models": list(state.models),
        "chat_images": state.chat_images,
    }


async def _config_get(request: web.Request) -> web.StreamResponse:
    return _json(_config_view(request.app[STATE_KEY]))


async def _config_post(request: web.Request) -> web.StreamResponse:
    """Change settings at runtime, e.g. the benchmark switching image size without a restart."""
    state = request.app[STATE_KEY]
    body = await _read_control_json(request)
    if not isinstance(body, dict):
        return _error(400, "config must be a JSON object")
    for key, value in body.items():
        if key == "api_key" and (value is None or isinstance(value, str)):
            state.api_key = value
        elif key == "image_bytes" and (value is None or _is_count(value)):
            state.image_bytes = value
        elif key == "image_tokens" and _is_count(value):
            state.image_tokens = value
        elif key == "record" and isinstance(value, bool):
            state.record = value
        elif key == "task_seconds" and _is_seconds(value):
            state.task_seconds = float(value)
        elif key == "public_url" and (value is None or _is_base_url(value)):
            state.public_url = value
        elif key in ("credits", "task_cost") and _is_count(value):
            setattr(state, key, value)
        elif key == "task_models" and _is_names(value):
            state.task_models = tuple(value)
        elif key == "models" and _is_names(value):
            state.models = tuple(value)
        elif key == "chat_images" and value in CHAT_IMAGES:
            state.chat_images = value
        else:
            return _error(400, f"bad config field {key!r}")
    return _json(_config_view(state))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 3600


def _is_base_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def add_control_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/_sim/requests", _requests_get)
    router.add_delete("/_sim/requests", _requests_delete)
    router.add_get("/_sim/faults", _faults_get)
    router.add_post("/_sim/faults", _faults_post)
    router.add_delete("/_sim/faults", _faults_delete)
    router.add_get("/_sim/stats", _stats_get)
    router.add_delete("/_sim/stats", _stats_delete)
    router.add_post("/_sim/reset", _reset)
    router.add_get("/_sim/config", _config_get)
    router.add_post("/_sim/config", _config_post)
    router.add_get("/_sim/callbacks", _callbacks_get)
    router.add_delete("/_sim/callbacks", _callbacks_delete)
    router.add_get("/_sim/files", _files_get)
    router.add_get("/_sim/files/{name}", _file_get)
