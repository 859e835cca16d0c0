"""Task API routes, in the taskinfo (CreateTask/TaskInfo) and recordinfo (createTask/recordInfo)
forms. Thin: authenticate, parse, call, render.

Errors raised here reach the app's handlers, which render them in the task envelope of the
route's form (see app._render).
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from nanogate.access.keys import KeyRecord
from nanogate.billing.accounts import AccountStore
from nanogate.core.errors import GatewayError, InvalidArgument
from nanogate.core.task_records import Form
from nanogate.dialects import tasks
from nanogate.engine.gateway import Context, Gateway
from nanogate.tasks.service import TaskService
from nanogate.web.common import extract_key, idempotency_key, read_body
from nanogate.web.replay import quoted

router = APIRouter(tags=["Task API"])

JSON_TYPE = "application/json"


def error_response(request: Request, error: GatewayError) -> Response:
    status, body = tasks.error_body(error, tasks.form_for(request.url.path))
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return Response(body, status, headers, JSON_TYPE)


async def _authenticate(request: Request, ctx: Context) -> KeyRecord:
    gateway: Gateway = request.app.state.gateway
    key = await gateway.authenticate(ctx, extract_key(request))
    request.state.key_prefix = key.prefix
    return key


async def _balance(request: Request) -> int:
    key = await _authenticate(request, Context(request.state.request_id, "tasks"))
    store: AccountStore = request.app.state.accounts
    return await store.balance(key.account_id)


@router.get(
    "/api/v1/client/account/balance",
    summary="The account's credits (the taskinfo form)",
    response_description='{"code": 200, "message": "success", "data": {"balance": <credits>}}',
)
async def client_balance(request: Request) -> Response:
    balance = await _balance(request)
    return Response(tasks.envelope({"balance": balance}, "message"), media_type=JSON_TYPE)


@router.get(
    "/api/v1/chat/credit",
    summary="The account's credits (the recordinfo form)",
    response_description='{"code": 200, "msg": "success", "data": <credits>}',
)
async def chat_credit(request: Request) -> Response:
    balance = await _balance(request)
    return Response(tasks.envelope(balance, "msg"), media_type=JSON_TYPE)


async def _create(request: Request, form: Form) -> Response:
    ctx = Context(request.state.request_id, "tasks")
    key = await _authenticate(request, ctx)
    body = await read_body(request, request.app.state.settings.max_request_bytes)
    idem = idempotency_key(request, body)
    task = tasks.parse_create(body, form)
    service: TaskService = request.app.state.tasks
    try:
        task_id = await service.create(ctx, key, task, idem)
    finally:
        request.state.model = ctx.model or None
        request.state.warning = ctx.warning
    data = {"task_id": task_id} if form == "message" else {"taskId": task_id}
    return Response(tasks.envelope(data, form), headers=quoted(ctx), media_type=JSON_TYPE)


async def _info(request: Request, param: str) -> Response:
    task_id = request.query_params.get(param, "").strip()
    key = await _authenticate(request, Context(request.state.request_id, "tasks"))
    if not task_id:
        raise InvalidArgument(f"{param}: required, the id CreateTask answered with.")
    service: TaskService = request.app.state.tasks
    record = await service.get(key, task_id)
    return Response(service.answer(record), media_type=JSON_TYPE)


@router.post(
    "/api/v1/client/job/CreateTask",
    summary="Create an image task (the taskinfo form)",
    description=(
        "Body: `{model, input: {prompt, image_urls?, aspect_ratio?, resolution?, "
        "output_format?}, callback_url?}`. Send `Idempotency-Key` to make retries safe."
    ),
    response_description='{"code": 200, "message": "success", "data": {"task_id": "..."}}',
)
async def create_task_client(request: Request) -> Response:
    return await _create(request, "message")


@router.get(
    "/api/v1/client/job/TaskInfo",
    summary="A task's record (the taskinfo form)",
    response_description="task_id, model, status, param, result, error, create_at, "
    "complete_at, duration_s, cost",
)
async def task_info(request: Request) -> Response:
    return await _info(request, "task_id")


@router.post(
    "/api/v1/jobs/createTask",
    summary="Create an image task (the recordinfo form)",
    description=(
        "Body: `{model, callBackUrl?, input: {prompt, image_urls?, image_size?, aspect_ratio?, "
        "resolution?, output_format?}}`; `image_size` carries an aspect ratio such as '16:9'."
    ),
    response_description='{"code": 200, "msg": "success", "data": {"taskId": "..."}}',
)
async def create_task_jobs(request: Request) -> Response:
    return await _create(request, "msg")


@router.get(
    "/api/v1/jobs/recordInfo",
    summary="A task's record (the recordinfo form)",
    response_description="taskId, model, state, param, resultJson, failCode, failMsg, "
    "costTime, createTime, completeTime",
)
async def record_info(request: Request) -> Response:
    return await _info(request, "taskId")
