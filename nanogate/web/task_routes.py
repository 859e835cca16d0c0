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
from nanogate.web.common import JSON_TYPE, client_address, extract_key, idempotency_key, read_body
from nanogate.web.replay import quoted

router = APIRouter(tags=["Task API"])


def error_response(request: Request, error: GatewayError) -> Response:
    status, body = tasks.error_body(error, tasks.form_for(request.url.path))
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return Response(body, status, headers, JSON_TYPE)


def _context(request: Request) -> Context:
    return Context(request.state.request_id, "tasks", client=client_address(request))


async def _authenticate(request: Request, ctx: Context) -> KeyRecord:
    gateway: Gateway = request.app.state.gateway
    key = await gateway.authenticate(ctx, extract_key(request))
    request.state.key_prefix = key.prefix
    return key


async def _balance(request: Request) -> int:
    key = await _authenticate(request, _context(request))
    store: AccountStore = request.app.state.accounts
    return await store.balance(key.account_id)


@router.get("/api/v1/client/account/balance")
async def client_balance(request: Request) -> Response:
    balance = await _balance(request)
    return Response(tasks.envelope({"balance": balance}, "taskinfo"), media_type=JSON_TYPE)


@router.get("/api/v1/chat/credit")
async def chat_credit(request: Request) -> Response:
    balance = await _balance(request)
    return Response(tasks.envelope(balance, "recordinfo"), media_type=JSON_TYPE)


async def _create(request: Request, form: Form) -> Response:
    ctx = _context(request)
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
    data = {"task_id": task_id} if form == "taskinfo" else {"taskId": task_id}
    return Response(tasks.envelope(data, form), headers=quoted(ctx), media_type=JSON_TYPE)


async def _info(request: Request, param: str) -> Response:
    task_id = request.query_params.get(param, "").strip()
    key = await _authenticate(request, _context(request))
    if not task_id:
        raise InvalidArgument(f"{param}: required, the id CreateTask answered with.")
    service: TaskService = request.app.state.tasks
    record = await service.get(key, task_id)
    return Response(service.answer(record), media_type=JSON_TYPE)


@router.post("/api/v1/client/job/CreateTask")
async def create_task_client(request: Request) -> Response:
    return await _create(request, "taskinfo")


@router.get("/api/v1/client/job/TaskInfo")
async def task_info(request: Request) -> Response:
    return await _info(request, "task_id")


@router.post("/api/v1/jobs/createTask")
async def create_task_jobs(request: Request) -> Response:
    return await _create(request, "recordinfo")


@router.get("/api/v1/jobs/recordInfo")
async def record_info(request: Request) -> Response:
    return await _info(request, "taskId")
