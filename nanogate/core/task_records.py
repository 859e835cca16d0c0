"""A task as the database keeps it: the one shape the queue, the worker and the dialect share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Form = Literal["taskinfo", "recordinfo"]
State = Literal["pending", "running", "succeeded", "failed"]


@dataclass(slots=True)
class StoredFile:
    """One output image in result storage."""

    name: str
    content_type: str


@dataclass(slots=True)
class TaskRecord:
    id: str
    request_id: str
    form: Form
    key_id: int
    account_id: int
    model: str  # as the client named it
    param: dict[str, Any]  # the create request, as sent
    state: State
    hold_id: str | None = None
    attempts: int = 0
    files: tuple[StoredFile, ...] = ()
    text: str | None = None  # any text the model returned beside the image
    error_code: int | None = None
    error_message: str | None = None
    cost: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    callback_url: str | None = None
    callback_state: str = "none"
    callback_event_id: str | None = None  # set with the callback: its webhook-id

    @property
    def final(self) -> bool:
        return self.state in ("succeeded", "failed")
