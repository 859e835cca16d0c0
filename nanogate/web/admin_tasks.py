"""The admin API for tasks and their callbacks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from nanogate.dialects import tasks as tasks_dialect
from nanogate.tasks.callbacks import standard_secret
from nanogate.tasks.service import TaskService
from nanogate.web.admin_common import (
    AdminGateway,
)
from nanogate.web.runtime import configured_callback_secret

router = APIRouter(prefix="/admin", tags=["Admin"])


@router.get("/tasks/{task_id}", summary="A task's record, whoever created it")
async def get_task(request: Request, task_id: str, gateway: AdminGateway) -> dict[str, Any]:
    service: TaskService = request.app.state.tasks
    record = await service.find(task_id)
    data = tasks_dialect.render(record, service.urls(record))
    return {
        "task": data,
        "state": record.state,
        "attempts": record.attempts,
        "key_id": record.key_id,
        "account_id": record.account_id,
        "callback_url": record.callback_url,
        "callback_state": record.callback_state,
    }


@router.get(
    "/callbacks",
    summary="Callback delivery attempts of a task",
    description="`event_id` is the callback's webhook-id, the same on every attempt. An attempt is "
    "listed from when it starts: one in flight has no status, error or duration yet; one cut "
    "short by a stop or a crash says so in its error.",
)
async def list_callbacks(
    request: Request,
    gateway: AdminGateway,
    task_id: Annotated[str, Query(min_length=1, max_length=40, description="The task's id")],
) -> dict[str, Any]:
    service: TaskService = request.app.state.tasks
    record = await service.find(task_id)
    attempts = await service.deliveries(task_id)
    return {
        "task_id": task_id,
        "callback_url": record.callback_url,
        "event_id": record.callback_event_id,
        "state": record.callback_state,
        "attempts": attempts,
    }


class CallbackSecretOut(BaseModel):
    secret: str = Field(
        description="Signs every callback: x-nanogate-signature is the hex HMAC-SHA256 of "
        '`x-nanogate-timestamp + "." + body`, keyed with this string\'s UTF-8 bytes, as shown '
        "(not hex-decoded)."
    )
    standard_webhooks_secret: str = Field(
        description="The same key as Standard Webhooks serializes it (`whsec_` + base64 of "
        "those bytes): what a receiver passes to a Standard Webhooks library, e.g. "
        "`standardwebhooks.Webhook(...)`, to verify webhook-signature."
    )
    source: Literal["setting", "database"] = Field(
        description='"setting": the operator\'s callback_secret (NANOGATE_CALLBACK_SECRET); '
        '"database": generated on first start and kept in the database.'
    )


@router.get(
    "/callbacks/secret",
    summary="The secret that signs callbacks",
    description="What a callback receiver verifies x-nanogate-signature (or webhook-signature) "
    "with. "
    "`nanogate callbacks secret` prints the same.",
)
async def callback_secret(
    request: Request, response: Response, gateway: AdminGateway
) -> CallbackSecretOut:
    response.headers["cache-control"] = "no-store"  # a secret: no copy in any cache
    secret: bytes = request.app.state.callback_secret
    configured = configured_callback_secret(request.app.state.settings)
    return CallbackSecretOut(
        secret=secret.decode(),
        standard_webhooks_secret=standard_secret(secret),
        source="setting" if configured else "database",
    )
