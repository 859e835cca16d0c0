"""The task API dialect, in both its forms: `CreateTask`/`TaskInfo` (the "taskinfo" form,
whose envelope says `message`) and `createTask`/`recordInfo` (the "recordinfo" form, `msg`).
Pure functions.

Both forms carry the code twice, in the HTTP status and in the body's `code`. The taskinfo form
names the human text `message` and uses snake_case; the other form names it `msg` and uses
camelCase, with JSON strings for `param` and `resultJson` and milliseconds for times.

A create request becomes a `TaskRequest`; the worker turns that into the canonical Gemini
request (`gemini_request`); a `TaskRecord` renders back in the form it was created in.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from nanogate.core.catalog import ModelSpec
from nanogate.core.errors import FeatureDisabled, GatewayError, InvalidArgument, Maintenance
from nanogate.core.task_records import Form, TaskRecord

OutputFormat = Literal["png", "jpeg", "webp"]

# The task API's own codes (taskinfo form): the gateway's statuses folded onto them.
_CODES = {400: 422, 403: 401, 409: 422, 413: 422, 503: 500, 504: 500}
_FORMATS: dict[str, OutputFormat] = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_STATES = {"pending": "waiting", "running": "generating", "succeeded": "success", "failed": "fail"}
MAX_PROMPT_CHARS = 100_000
MAX_URL_CHARS = 2048


# Where each form's envelope puts the human-readable text.
_TEXT_FIELD: dict[Form, str] = {"taskinfo": "message", "recordinfo": "msg"}


def form_for(path: str) -> Form:
    """The taskinfo form's routes live under /api/v1/client/; the recordinfo form's under
    /api/v1/jobs/ and /api/v1/chat/."""
    return "taskinfo" if path.startswith("/api/v1/client/") else "recordinfo"


def code_for(error: GatewayError) -> int:
    """The task API's code for an error: its own 455 and 505, the rest folded (_CODES)."""
    if isinstance(error, Maintenance):
        return 455
    if isinstance(error, FeatureDisabled):
        return 505
    return _CODES.get(error.status, error.status)


def envelope(data: Any, form: Form, *, code: int = 200, message: str = "success") -> bytes:
    return orjson.dumps({"code": code, _TEXT_FIELD[form]: message, "data": data})


def error_body(error: GatewayError, form: Form) -> tuple[int, bytes]:
    """(HTTP status, body) for an error in the task API's envelope."""
    code = code_for(error)
    return code, envelope(None, form, code=code, message=error.message)


# -- create ------------------------------------------------------------------------------------


@dataclass(slots=True)
class TaskRequest:
    """A create request, whichever form it came in."""

    form: Form
    model: str
    prompt: str
    image_urls: tuple[str, ...]
    aspect_ratio: str | None  # None: the model decides ("auto")
    resolution: str | None
    output_format: OutputFormat | None
    callback_url: str | None
    param: dict[str, Any]  # the request as sent, echoed back in `param`

    def field(self, name: str) -> str:
        """The client's name for a field, for messages (`input.image_size` carries the aspect
        ratio in the createTask form when `aspect_ratio` is absent)."""
        if name == "callback_url":
            return "callback_url" if self.form == "taskinfo" else "callBackUrl"
        if name == "aspect_ratio" and "aspect_ratio" not in self.param.get("input", {}):
            return "input.image_size" if self.form == "recordinfo" else "input.aspect_ratio"
        return f"input.{name}"


def parse_create(body: bytes, form: Form) -> TaskRequest:
    """Parse and shape-check a create request; 400 (422 on the wire) naming the field."""
    if not body.strip():
        raise InvalidArgument("The request body is empty; send a JSON object with model and input.")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(
            f"The request body is not valid JSON (line {exc.lineno}, column {exc.colno})."
        ) from exc
    if not isinstance(doc, dict):
        raise InvalidArgument("The request body must be a JSON object with model and input.")
    model = doc.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidArgument("model: required, a model name such as 'google/nano-banana'.")
    raw = doc.get("input")
    if not isinstance(raw, dict):
        raise InvalidArgument("input: required, an object with at least a prompt.")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidArgument("input.prompt: required, a non-empty string.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidArgument(f"input.prompt: longer than {MAX_PROMPT_CHARS} characters.")
    aspect = _aspect_ratio(raw, form)
    callback_name = "callback_url" if form == "taskinfo" else "callBackUrl"
    other_name = "callBackUrl" if form == "taskinfo" else "callback_url"
    callback = doc.get(callback_name, doc.get(other_name))
    if callback is not None and (not isinstance(callback, str) or not callback.strip()):
        raise InvalidArgument(f"{callback_name}: must be an http(s) URL string.")
    return TaskRequest(
        form=form,
        model=model.strip(),
        prompt=prompt,
        image_urls=_image_urls(raw.get("image_urls")),
        aspect_ratio=aspect,
        resolution=_resolution(raw.get("resolution")),
        output_format=_output_format(raw.get("output_format")),
        callback_url=_url(callback, callback_name) if callback else None,
        param=doc,
    )


def _image_urls(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InvalidArgument("input.image_urls: must be a list of http(s) URLs.")
    return tuple(_url(item, f"input.image_urls[{index}]") for index, item in enumerate(value))


def _url(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{name}: must be an http(s) URL string.")
    url = value.strip()
    if len(url) > MAX_URL_CHARS:
        raise InvalidArgument(f"{name}: longer than {MAX_URL_CHARS} characters.")
    if not url.lower().startswith(("http://", "https://")):
        raise InvalidArgument(f"{name}: must start with http:// or https://.")
    return url


def _aspect_ratio(raw: dict[str, Any], form: Form) -> str | None:
    # In the createTask form `image_size` carries the aspect ratio; `aspect_ratio` also works.
    given = {"input.aspect_ratio": raw.get("aspect_ratio")}
    if form == "recordinfo":
        given["input.image_size"] = raw.get("image_size")
    found: dict[str, str | None] = {}
    for name, value in given.items():
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise InvalidArgument(f"{name}: must be an aspect ratio such as '16:9', or 'auto'.")
        text = value.strip().lower()
        found[name] = None if text == "auto" else text
    values = set(found.values())
    if len(values) > 1:
        raise InvalidArgument(
            "input.aspect_ratio and input.image_size disagree; send one aspect ratio."
        )
    return values.pop() if values else None


def _resolution(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument("input.resolution: must be a size tier such as '1K', '2K' or '4K'.")
    text = value.strip().upper()
    return None if text == "AUTO" else text


def _output_format(value: Any) -> OutputFormat | None:
    if value is None:
        return None
    fmt = _FORMATS.get(value.strip().lower()) if isinstance(value, str) else None
    if fmt is None:
        raise InvalidArgument("input.output_format: must be 'png', 'jpeg' or 'webp'.")
    return fmt


def check_model(task: TaskRequest, spec: ModelSpec, *, edit: bool) -> None:
    """What the model accepts: input image count, aspect ratio and size tier, in the task's
    own field names (the Gemini validator would name Gemini's fields)."""
    if not spec.is_image:
        raise InvalidArgument(f"model: '{task.model}' is not an image model.")
    count = len(task.image_urls)
    if edit and count == 0:
        raise InvalidArgument(
            f"input.image_urls: '{task.model}' edits images; send 1 to "
            f"{spec.max_input_images} image URLs."
        )
    if count > spec.max_input_images:
        raise InvalidArgument(
            f"input.image_urls: {count} images, but '{task.model}' takes at most "
            f"{spec.max_input_images}."
        )
    if task.aspect_ratio is not None and task.aspect_ratio not in spec.aspect_ratios:
        raise InvalidArgument(
            f"{task.field('aspect_ratio')}: '{task.aspect_ratio}' is not supported by "
            f"'{task.model}'; use one of {', '.join(spec.aspect_ratios)} or 'auto'."
        )
    if task.resolution is not None and task.resolution not in spec.image_sizes:
        raise InvalidArgument(
            f"input.resolution: '{task.resolution}' is not supported by '{task.model}'; "
            f"use one of {', '.join(spec.image_sizes)}."
        )


def gemini_request(
    task: TaskRequest, spec: ModelSpec, images: Sequence[tuple[str, bytes]]
) -> dict[str, Any]:
    """The canonical GenerateContentRequest for a task: input images, then the prompt."""
    parts: list[dict[str, Any]] = [
        {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode("ascii")}}
        for mime, data in images
    ]
    parts.append({"text": task.prompt})
    image_config: dict[str, str] = {}
    if task.aspect_ratio:
        image_config["aspectRatio"] = task.aspect_ratio
    # A model with a single size tier (2.5 Flash Image) takes no imageSize at all.
    if task.resolution and len(spec.image_sizes) > 1:
        image_config["imageSize"] = task.resolution
    config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
    if image_config:
        config["imageConfig"] = image_config
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}


def task_request(record: TaskRecord) -> TaskRequest:
    """The create request a stored task was made from (it was checked when it was created)."""
    return parse_create(orjson.dumps(record.param), record.form)


# -- the record ----------------------------------------------------------------------------------


def render(record: TaskRecord, urls: Sequence[str]) -> dict[str, Any]:
    """The query answer's `data` (also the callback's), in the form the task was created in."""
    if record.form == "taskinfo":
        return _render_taskinfo(record, urls)
    return _render_recordinfo(record, urls)


def _render_taskinfo(record: TaskRecord, urls: Sequence[str]) -> dict[str, Any]:
    failed = record.state == "failed"
    return {
        "task_id": record.id,
        "model": record.model,
        "status": record.state,
        "param": record.param,
        "result": {"urls": list(urls)} if record.state == "succeeded" else None,
        "error": {"code": record.error_code, "message": record.error_message} if failed else None,
        "create_at": _seconds(record.created_at),
        "complete_at": _seconds(record.completed_at),
        "duration_s": _duration_ms(record) / 1000 if record.completed_at else None,
        "cost": record.cost,
    }


def _render_recordinfo(record: TaskRecord, urls: Sequence[str]) -> dict[str, Any]:
    failed = record.state == "failed"
    succeeded = record.state == "succeeded"
    return {
        "taskId": record.id,
        "model": record.model,
        "state": _STATES[record.state],
        "param": orjson.dumps(record.param).decode(),
        "resultJson": orjson.dumps({"resultUrls": list(urls)}).decode() if succeeded else "",
        "failCode": str(record.error_code) if failed else "",
        "failMsg": (record.error_message or "") if failed else "",
        "costTime": _duration_ms(record) if record.completed_at else None,
        "createTime": _millis(record.created_at),
        "completeTime": _millis(record.completed_at),
        "credits": record.cost,
    }


def _seconds(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


def _millis(moment: datetime | None) -> int | None:
    return int(moment.timestamp() * 1000) if moment else None


def _duration_ms(record: TaskRecord) -> int:
    if record.created_at is None or record.completed_at is None:
        return 0
    return int((record.completed_at - record.created_at).total_seconds() * 1000)
