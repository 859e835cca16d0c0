"""Task API routes (seed 002 and the createTask form). Thin: authenticate, call, render.

So far the account balance in both forms; tasks themselves come with their own issue.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..billing.accounts import AccountStore
from ..dialects import tasks
from ..errors import GatewayError
from ..gateway import Context, Gateway
from .common import extract_key

router = APIRouter(tags=["Task API"])

JSON_TYPE = "application/json"


def error_response(request: Request, error: GatewayError) -> Response:
    status, body = tasks.error_body(error, tasks.form_for(request.url.path))
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return Response(body, status, headers, JSON_TYPE)


async def _balance(request: Request) -> int:
    gateway: Gateway = request.app.state.gateway
    key = await gateway.authenticate(
        Context(request.state.request_id, "tasks"), extract_key(request)
    )
    request.state.key_prefix = key.prefix
    store: AccountStore = request.app.state.accounts
    return await store.balance(key.account_id)


@router.get(
    "/api/v1/client/account/balance",
    summary="The account's credits (seed 002's form)",
    response_description='{"code": 200, "message": "success", "data": {"balance": <credits>}}',
)
async def client_balance(request: Request) -> Response:
    balance = await _balance(request)
    return Response(tasks.envelope({"balance": balance}, "message"), media_type=JSON_TYPE)


@router.get(
    "/api/v1/chat/credit",
    summary="The account's credits (the createTask form)",
    response_description='{"code": 200, "msg": "success", "data": <credits>}',
)
async def chat_credit(request: Request) -> Response:
    balance = await _balance(request)
    return Response(tasks.envelope(balance, "msg"), media_type=JSON_TYPE)
