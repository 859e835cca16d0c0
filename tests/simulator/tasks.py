"""The task API a reseller offers for Google's image models, in both of its forms.

`taskinfo` (seed 002): `POST /api/v1/client/job/CreateTask` and `GET /api/v1/client/job/TaskInfo?
task_id=`, key in `x-api-key`, envelope `{code, message, data}`. `recordinfo`:
`POST /api/v1/jobs/createTask` and `GET /api/v1/jobs/recordInfo?taskId=`, key as
`Authorization: Bearer`, envelope `{code, msg, data}`. The bodies and the record are the
simulator's own encoding of the vendor's documents (task_forms.py).

A task is pending for the first half of `task_seconds` (plus any `task_delay` fault), running
for the second, then succeeded with one result URL on this simulator (`/_sim/files/<id>.<ext>`)
or, with the `fail` fault, failed with 501. With `stuck` it stays running. A callback URL gets
the final record POSTed once (the query's body), and each attempt is logged for
`GET /_sim/callbacks`. Errors carry the vendor's code in both the HTTP status and the body.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tests.simulator import responses as r
from tests.simulator import wire
from tests.simulator.faults import Fault
from tests.simulator.state import SimState, SimTask
from tests.simulator.state import json_bytes as _json_bytes
from tests.simulator.task_forms import (
    RECORDINFO,
    TASKINFO,
    Create,
    Invalid,
    TaskForm,
    read_create,
    record,
)

# The vendor's codes (seed 002) and the text its envelope carries for them.
VENDOR_MESSAGES = {
    401: "Unauthorized - authentication credentials are missing or invalid",
    402: "Insufficient Credits - account does not have enough credits to perform the operation",
    404: "Not Found - the requested resource or endpoint does not exist",
    422: "Validation Error - the request parameters failed validation checks",
    429: "Rate Limited - request limit has been exceeded for this resource",
    455: "Service Unavailable - system is currently undergoing maintenance",
    500: "Server Error - an unexpected error occurred while processing the request",
    501: "Generation Failed - content generation task failed",
    505: "Feature Disabled - the requested feature is currently disabled",
}
FAILED_MESSAGE = "Generation Failed - simulated generation failure"
ASPECT_RATIOS = frozenset(
    {"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"}
    | {"1:4", "4:1", "1:8", "8:1"}
)
RESOLUTIONS = frozenset({"512", "1K", "2K", "4K"})


def _error(
    form: TaskForm, code: int, message: str | None = None, *, retry_after: str | None = None
) -> web.Response:
    """The vendor's error envelope; its code is the HTTP status too."""
    text = message or VENDOR_MESSAGES.get(code, f"simulated {code}")
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return _json_bytes(form.envelope(None, code, text), code, headers)


def _auth_error(state: SimState, request: web.Request, form: TaskForm) -> web.Response | None:
    """Each form reads its own header only: x-api-key (taskinfo) or Authorization: Bearer."""
    if state.api_key is None:
        return None
    if form is TASKINFO:
        key, where = request.headers.get("x-api-key"), "the x-api-key header"
    else:
        key, where = wire.bearer_token(request), "Authorization: Bearer <key>"
    if not key:
        return _error(form, 401, f"Unauthorized - no API key; send it in {where}.")
    if key != state.api_key:
        return _error(form, 401, "Unauthorized - the API key is invalid.")
    return None


async def _admit(
    form: TaskForm,
    request: web.Request,
    state: SimState,
    raw: bytes,
    model: str | None,
    *,
    task: bool = False,
) -> Fault | web.StreamResponse:
    """The key check, then the fault this request consumes: the fault, or the answer it puts in
    place of the real one (an error, a reset, a cut-off or a canned body)."""
    denied = _auth_error(state, request, form)
    if denied is not None:
        return denied
    fault = await wire.take_fault(request, state, raw, model, task=task)
    if fault.reset:
        return wire.abort(request)
    if fault.status is not None:
        return _error(form, fault.status, fault.message, retry_after=fault.retry_after)
    extra = wire.retry_after_header(fault)
    if fault.malformed:
        return _json_bytes(form.truncated(), 200, extra)
    if fault.has_body:
        return _json_bytes(orjson.dumps(fault.body), 200, extra)
    return fault


# --- create -------------------------------------------------------------------------------


def _check(state: SimState, task: Create) -> None:
    """What the vendor refuses beyond the request's shape: models, ratios and sizes."""
    if task.model not in state.task_models:
        raise Invalid(
            f"model: '{task.model[:80]}' is not supported; use one of "
            f"{', '.join(state.task_models)}."
        )
    if task.model.endswith("-edit") and not task.image_urls:
        raise Invalid(f"input.image_urls: '{task.model}' edits images; send at least 1.")
    if task.aspect_ratio is not None and task.aspect_ratio not in ASPECT_RATIOS:
        raise Invalid(
            f"{task.ratio_field}: '{task.aspect_ratio[:20]}' is not a supported aspect ratio."
        )
    if task.resolution is not None and task.resolution not in RESOLUTIONS:
        raise Invalid(f"input.resolution: '{task.resolution[:20]}' is not one of 512, 1K, 2K, 4K.")


async def _create(
    form: TaskForm, request: web.Request, state: SimState, raw: bytes, parsed: Any
) -> web.StreamResponse:
    model = parsed.get("model") if isinstance(parsed, dict) else None
    fault = await _admit(
        form, request, state, raw, model if isinstance(model, str) else None, task=True
    )
    if not isinstance(fault, Fault):
        return fault
    try:
        spec = read_create(raw, form)
        _check(state, spec)
    except Invalid as exc:
        return _error(form, 422, exc.message)
    if state.credits < state.task_cost:
        return _error(form, 402)
    state.credits -= state.task_cost
    task = SimTask(
        id=secrets.token_hex(16),
        form=form,
        model=spec.model,
        param=spec.param,
        aspect_ratio=spec.aspect_ratio,
        output_format=spec.output_format or "png",
        callback_url=spec.callback_url,
        base_url=wire.base_url(request, state),
        created_at=time.time(),
    )
    state.tasks[task.id] = task
    state.spawn(_run(state, task, fault))
    created = form.envelope({form.id: task.id})
    return _json_bytes(created, 200, wire.retry_after_header(fault))


def _image(state: SimState, task: SimTask) -> bytes:
    # A benchmark's image_bytes applies to PNG results, whatever their aspect ratio.
    if state.image_bytes is not None and task.output_format == "png":
        return state.image_png()
    return r.aspect_image(task.aspect_ratio, task.output_format)


async def _run(state: SimState, task: SimTask, fault: Fault) -> None:
    """The task's life: pending, running, then final (unless stuck), then its callback."""
    seconds = state.task_seconds + fault.task_delay
    await asyncio.sleep(seconds / 2)
    task.phase = "working"
    if fault.stuck:
        return
    await asyncio.sleep(seconds / 2)
    if fault.fail:
        task.error_code = 501
        task.error_message = fault.message or FAILED_MESSAGE
        task.phase = "failed"
        state.credits += state.task_cost  # the vendor refunds a failed generation
    else:
        ext, content_type, _ = r.IMAGE_FORMATS[task.output_format]
        file = state.add_file(_image(state, task), ext, content_type, task.id)
        task.urls = [f"{task.base_url}/_sim/files/{file.name}"]
        task.cost = state.task_cost
        task.phase = "done"
    task.completed_at = time.time()
    if task.callback_url:
        await _deliver(state, task, task.callback_url)


async def _deliver(state: SimState, task: SimTask, url: str) -> None:
    """POST the final record once; the attempt (answer or error) goes to /_sim/callbacks."""
    body = answer(task)
    entry: dict[str, Any] = {
        "task_id": task.id,
        "url": url,
        "time": time.time(),
        "json": orjson.loads(body),
        "status": None,
        "error": None,
    }
    try:
        http = state.http()
        headers = {"Content-Type": "application/json"}
        async with http.post(url, data=body, headers=headers) as resp:
            entry["status"] = resp.status
            await resp.read()
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
    state.callbacks.append(entry)


# --- query --------------------------------------------------------------------------------


def answer(task: SimTask) -> bytes:
    """The query answer (also the callback's body), in the task's own form."""
    return task.form.envelope(record(task.form, task))


async def _info(
    form: TaskForm, request: web.Request, state: SimState, raw: bytes, parsed: Any
) -> web.StreamResponse:
    task_id = request.query.get(form.id, "").strip()
    task = state.tasks.get(task_id)
    fault = await _admit(form, request, state, raw, task.model if task else None)
    if not isinstance(fault, Fault):
        return fault
    if not task_id:
        return _error(form, 422, f"{form.id}: required, the id the create call answered with.")
    if task is None:
        return _error(form, 404, f"No task '{task_id[:40]}'.")
    return _json_bytes(answer(task), 200, wire.retry_after_header(fault))


# --- credits ------------------------------------------------------------------------------


async def _credits(
    form: TaskForm, request: web.Request, state: SimState, raw: bytes, parsed: Any
) -> web.StreamResponse:
    """The account's balance: taskinfo's `{"balance": n}`, recordinfo's bare number."""
    fault = await _admit(form, request, state, raw, None)
    if not isinstance(fault, Fault):
        return fault
    balance: Any = {"balance": state.credits} if form is TASKINFO else state.credits
    return _json_bytes(form.envelope(balance), 200, wire.retry_after_header(fault))


def add_routes(router: web.UrlDispatcher) -> None:
    routes = (
        ("POST", "/api/v1/client/job/CreateTask", _create, TASKINFO),
        ("GET", "/api/v1/client/job/TaskInfo", _info, TASKINFO),
        ("GET", "/api/v1/client/account/balance", _credits, TASKINFO),
        ("POST", "/api/v1/jobs/createTask", _create, RECORDINFO),
        ("GET", "/api/v1/jobs/recordInfo", _info, RECORDINFO),
        ("GET", "/api/v1/chat/credit", _credits, RECORDINFO),
    )
    for method, path, handler, form in routes:
        router.add_route(method, path, wire.instrumented(functools.partial(handler, form)))
