"""Fault descriptions for the upstream simulator.

A fault reaches the simulator two ways: queued through `POST /_sim/faults` (JSON objects), or
written into the prompt as `[[sim:status=503,delay=0.2]]`. Both end up as one `Fault`, so the
request handler applies a single, merged description.

Task faults (`stuck`, `fail`, `task_delay`) describe the life of a task, not an HTTP answer: a
queued fault carrying one is consumed only by a task creation (CreateTask / createTask).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

# Directives are searched for in the raw body, so they work whatever JSON shape carries the
# prompt (Gemini contents, a translated OpenAI message, a task-API prompt...). The value set is
# kept narrow ([^\]"\\]) so a directive can never swallow the JSON around it.
_DIRECTIVE_RE = re.compile(rb"\[\[sim:([^\]\"\\]*)\]\]")

_FLAG_FIELDS = ("reset", "malformed", "stream_break", "stuck", "fail")
_NUMBER_FIELDS = ("delay", "slow_stream", "drip", "task_delay")
CHAT_IMAGE_SHAPES = ("images", "markdown")


class FaultError(ValueError):
    """A fault description that cannot be applied; the control API answers 400 with it."""


@dataclass(slots=True)
class Fault:
    delay: float = 0.0
    status: int | None = None
    message: str | None = None
    retry_after: str | None = None
    reset: bool = False
    malformed: bool = False
    slow_stream: float = 0.0
    # Seconds between bytes: a stream's first event whole, then the rest (a generateContent
    # answer: all of it) one byte at a time, then newlines, forever. Each read is quick, so no
    # per-read timeout ever fires.
    drip: float = 0.0
    stream_break: bool = False
    body: Any = None
    has_body: bool = False
    # Only requests for this model consume the fault; None means any request.
    model: str | None = None
    # Only requests whose path is this one or below it (by whole segments) consume the fault.
    path: str | None = None
    # Task faults: the task stays running forever / ends failed (501) / takes this much longer.
    stuck: bool = False
    fail: bool = False
    task_delay: float = 0.0
    # OpenAI chat: the image in message.images[] ("images") or markdown in content ("markdown").
    chat_images: str | None = None

    def is_task_fault(self) -> bool:
        return self.stuck or self.fail or self.task_delay > 0

    def matches(self, model: str | None, path: str | None = None, *, task: bool = False) -> bool:
        if self.is_task_fault() and not task:
            return False
        if self.path is not None and not _under(path, self.path):
            return False
        if self.model is None:
            return True
        return model is not None and _bare_model(self.model) == _bare_model(model)

    def merged_with(self, other: Fault) -> Fault:
        """`other`'s explicitly set fields win; used to lay a prompt directive over a queued one."""
        out = Fault()
        default = Fault()
        for f in fields(Fault):
            if f.name in ("has_body", "body"):
                continue
            mine = getattr(self, f.name)
            theirs = getattr(other, f.name)
            setattr(out, f.name, theirs if theirs != getattr(default, f.name) else mine)
        # A body may legitimately be JSON null, so "was it set" lives in has_body, not the value.
        source = other if other.has_body else self
        out.body, out.has_body = source.body, source.has_body
        return out

    def to_json(self) -> dict[str, Any]:
        """The fault as the control API shows it: only the fields that were set."""
        out: dict[str, Any] = {}
        default = Fault()
        for f in fields(Fault):
            if f.name in ("has_body", "body"):
                continue
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                out[f.name] = value
        if self.has_body:
            out["body"] = self.body
        return out


def _bare_model(name: str) -> str:
    return name.removeprefix("models/")


def _under(path: str | None, prefix: str) -> bool:
    if path is None:
        return False
    prefix = prefix.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _chat_images(value: Any) -> str:
    if value not in CHAT_IMAGE_SHAPES:
        raise FaultError("fault field 'chat_images' must be 'images' or 'markdown'")
    return str(value)


def _number(key: str, value: Any) -> float:
    # bool is an int subclass; `"delay": true` is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FaultError(f"fault field {key!r} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise FaultError(f"fault field {key!r} must be a number") from None
    if number < 0 or number != number:
        raise FaultError(f"fault field {key!r} must be >= 0")
    return number


def _status(value: Any) -> int:
    number = _number("status", value)
    if number != int(number) or not 100 <= number <= 599:
        raise FaultError("fault field 'status' must be an HTTP status code")
    return int(number)


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise FaultError(f"fault field {key!r} must be a boolean")


def _retry_after(value: Any) -> str:
    # Retry-After may be delta-seconds or an HTTP date; keep whatever the test asked for verbatim.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FaultError("fault field 'retry_after' must be a number or a string")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def fault_from_json(obj: Any) -> Fault:
    """Validate one queued fault object. Unknown keys are refused so typos don't pass silently."""
    if not isinstance(obj, dict):
        raise FaultError("each fault must be a JSON object")
    fault = Fault()
    for key, value in obj.items():
        if key in _NUMBER_FIELDS:
            setattr(fault, key, _number(key, value))
        elif key in _FLAG_FIELDS:
            setattr(fault, key, _flag(key, value))
        elif key == "status":
            fault.status = _status(value)
        elif key == "retry_after":
            fault.retry_after = _retry_after(value)
        elif key == "body":
            fault.body = value
            fault.has_body = True
        elif key in ("model", "message"):
            if not isinstance(value, str):
                raise FaultError(f"fault field {key!r} must be a string")
            setattr(fault, key, value)
        elif key == "path":
            if not isinstance(value, str) or not value.startswith("/"):
                raise FaultError("fault field 'path' must be a string starting with '/'")
            fault.path = value
        elif key == "chat_images":
            fault.chat_images = _chat_images(value)
        else:
            raise FaultError(f"unknown fault field {key!r}")
    return fault


def faults_from_json(obj: Any) -> list[Fault]:
    """`POST /_sim/faults` takes a list of faults; a single object is accepted as a list of one."""
    items = obj if isinstance(obj, list) else [obj]
    return [fault_from_json(item) for item in items]


def fault_from_body(raw: bytes) -> Fault | None:
    """Collect every `[[sim:...]]` directive in a request body into one fault.

    Directives are lenient where the queue is strict: a prompt is free text, so an unknown or
    malformed entry is ignored instead of failing the request.
    """
    if b"[[sim:" not in raw:
        return None
    fault = Fault()
    found = False
    for match in _DIRECTIVE_RE.finditer(raw):
        for entry in match.group(1).decode("utf-8", "replace").split(","):
            key, sep, value = entry.strip().partition("=")
            key = key.strip()
            if not key:
                continue
            try:
                if key in _FLAG_FIELDS:
                    setattr(fault, key, _flag(key, value.strip()) if sep else True)
                elif key in _NUMBER_FIELDS and sep:
                    setattr(fault, key, _number(key, value.strip()))
                elif key == "status" and sep:
                    fault.status = _status(value.strip())
                elif key == "retry_after" and sep:
                    fault.retry_after = _retry_after(value.strip())
                elif key == "chat_images" and sep:
                    fault.chat_images = _chat_images(value.strip())
                else:
                    continue
            except FaultError:
                continue
            found = True
    return fault if found else None
