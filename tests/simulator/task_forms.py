"""The task vendor's two API forms on the wire, as its documentation describes them.

`taskinfo` (seed 002): `CreateTask` / `TaskInfo?task_id=`, the key in `x-api-key`, the envelope
`{code, message, data}`, snake_case, `param` an object, times in Unix seconds.
`recordinfo`: `createTask` / `recordInfo?taskId=`, the key as `Authorization: Bearer`, the
envelope `{code, msg, data}`, camelCase, `param` and `resultJson` JSON strings, times in
milliseconds; the aspect ratio may come in `input.image_size`.

Written apart from nanogate's own task dialect on purpose: the simulator is the other side of
the wire, so a mistake in the gateway's encoding shows up as a disagreement in the tests instead
of being shared by both ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

FormName = Literal["taskinfo", "recordinfo"]
# The simulator's own names for a task's life; each form spells them its own way.
Phase = Literal["queued", "working", "done", "failed"]

PROMPT_LIMIT = 100_000
URL_LIMIT = 2048
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}


class Invalid(Exception):
    """A create request the vendor refuses (code 422); the message names the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class TaskForm:
    name: FormName
    text: str  # the envelope's key for its human-readable text
    id: str  # the task id's key: in the create answer, the query string and the record
    callback: str  # the create body's callback URL key
    ratio_fields: tuple[str, ...]  # the `input` keys that carry an aspect ratio
    states: dict[Phase, str]

    def envelope(self, data: Any, code: int = 200, text: str = "success") -> bytes:
        return orjson.dumps({"code": code, self.text: text, "data": data})

    def truncated(self) -> bytes:
        """An answer cut off mid-body, for the `malformed` fault."""
        return b'{"code": 200, "' + self.text.encode() + b'": "success", "data": {"task'


TASKINFO = TaskForm(
    name="taskinfo",
    text="message",
    id="task_id",
    callback="callback_url",
    ratio_fields=("aspect_ratio",),
    states={"queued": "pending", "working": "running", "done": "succeeded", "failed": "failed"},
)
RECORDINFO = TaskForm(
    name="recordinfo",
    text="msg",
    id="taskId",
    callback="callBackUrl",
    ratio_fields=("aspect_ratio", "image_size"),
    states={"queued": "waiting", "working": "generating", "done": "success", "failed": "fail"},
)


# --- create ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Create:
    """A create request that has the right shape (the vendor's own checks come after)."""

    model: str
    image_urls: tuple[str, ...]
    aspect_ratio: str | None  # None: "auto", or not given
    ratio_field: str  # where the aspect ratio came from, for messages
    resolution: str | None
    output_format: str | None
    callback_url: str | None
    param: dict[str, Any]  # the body as sent, which the record echoes


def read_create(body: bytes, form: TaskForm) -> Create:
    if not body.strip():
        raise Invalid("Empty request body; send a JSON object with `model` and `input`.")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Invalid("The request body is not JSON.") from None
    if not isinstance(doc, dict):
        raise Invalid("The request body must be a JSON object with `model` and `input`.")
    model = doc.get("model")
    if not isinstance(model, str) or not model.strip():
        raise Invalid("model: missing; name a model such as google/nano-banana.")
    fields = doc.get("input")
    if not isinstance(fields, dict):
        raise Invalid("input: missing; send an object holding at least `prompt`.")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Invalid("input.prompt: missing or blank.")
    if len(prompt) > PROMPT_LIMIT:
        raise Invalid(f"input.prompt: over {PROMPT_LIMIT} characters.")
    ratio, ratio_field = _aspect_ratio(fields, form)
    return Create(
        model=model.strip(),
        image_urls=_image_urls(fields.get("image_urls")),
        aspect_ratio=ratio,
        ratio_field=ratio_field,
        resolution=_resolution(fields.get("resolution")),
        output_format=_output_format(fields.get("output_format")),
        callback_url=_callback(doc, form),
        param=doc,
    )


def _aspect_ratio(fields: dict[str, Any], form: TaskForm) -> tuple[str | None, str]:
    """The one aspect ratio the form's fields agree on, and the field that named it."""
    found: dict[str, str | None] = {}
    for key in form.ratio_fields:
        value = fields.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise Invalid(f"input.{key}: an aspect ratio such as '16:9', or 'auto'.")
        text = value.strip().lower()
        found[f"input.{key}"] = None if text == "auto" else text
    if len(set(found.values())) > 1:
        raise Invalid(f"{' and '.join(found)} name different aspect ratios; send one.")
    if not found:
        return None, ""
    first = next(iter(found))
    return found[first], first


def _image_urls(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise Invalid("input.image_urls: a list of http(s) URLs.")
    return tuple(_url(f"input.image_urls[{i}]", item) for i, item in enumerate(items))


def _callback(doc: dict[str, Any], form: TaskForm) -> str | None:
    # Either spelling is taken; messages use the form's own.
    value = doc.get(form.callback)
    if value is None:
        value = doc.get(RECORDINFO.callback if form is TASKINFO else TASKINFO.callback)
    return None if value is None else _url(form.callback, value)


def _url(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{name}: an http(s) URL.")
    url = value.strip()
    if len(url) > URL_LIMIT:
        raise Invalid(f"{name}: over {URL_LIMIT} characters.")
    if not url.lower().startswith(("http://", "https://")):
        raise Invalid(f"{name}: only http:// and https:// URLs.")
    return url


def _resolution(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise Invalid("input.resolution: a size such as '1K', '2K' or '4K'.")
    size = value.strip().upper()
    return None if size == "AUTO" else size


def _output_format(value: Any) -> str | None:
    if value is None:
        return None
    fmt = OUTPUT_FORMATS.get(value.strip().lower()) if isinstance(value, str) else None
    if fmt is None:
        raise Invalid("input.output_format: one of 'png', 'jpeg', 'webp'.")
    return fmt


# --- the record -------------------------------------------------------------------------------


class Task(Protocol):
    """What the record is made of (the simulator's SimTask)."""

    @property
    def id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def phase(self) -> Phase: ...
    @property
    def param(self) -> dict[str, Any]: ...
    @property
    def urls(self) -> Sequence[str]: ...
    @property
    def error_code(self) -> int | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def cost(self) -> int: ...
    @property
    def created_at(self) -> float: ...  # Unix seconds
    @property
    def completed_at(self) -> float | None: ...


def record(form: TaskForm, task: Task) -> dict[str, Any]:
    """The query answer's `data`, which is also what a callback receives."""
    done = task.phase == "done"
    failed = task.phase == "failed"
    finished = task.completed_at
    elapsed_ms = None if finished is None else int((finished - task.created_at) * 1000)
    if form is TASKINFO:
        return {
            "task_id": task.id,
            "model": task.model,
            "status": form.states[task.phase],
            "param": task.param,
            "result": {"urls": list(task.urls)} if done else None,
            "error": {"code": task.error_code, "message": task.error_message} if failed else None,
            "create_at": int(task.created_at),
            "complete_at": None if finished is None else int(finished),
            "duration_s": None if elapsed_ms is None else elapsed_ms / 1000,
            "cost": task.cost,
        }
    return {
        "taskId": task.id,
        "model": task.model,
        "state": form.states[task.phase],
        "param": orjson.dumps(task.param).decode(),
        "resultJson": orjson.dumps({"resultUrls": list(task.urls)}).decode() if done else "",
        "failCode": str(task.error_code) if failed else "",
        "failMsg": (task.error_message or "") if failed else "",
        "costTime": elapsed_ms,
        "createTime": int(task.created_at * 1000),
        "completeTime": None if finished is None else int(finished * 1000),
        "credits": task.cost,
    }
