"""The admin API for accounts and the ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from nanogate.billing.accounts import AccountError
from nanogate.billing.ledger import MAX_CREDITS
from nanogate.core.errors import (
    Conflict,
    NotFound,
)
from nanogate.web.admin_common import (
    AdminAccounts,
    AdminGateway,
    BalanceOut,
    HoldPolicy,
    KeyOut,
    Topup,
    find_account,
    key_out,
    topup,
)

router = APIRouter(prefix="/admin", tags=["Admin"])


_POLICY_HELP = (
    "How much the account's calls hold: 'fair' (their certain cost plus an output allowance) "
    "or 'worst_case' (the most they could cost; nothing is ever written off). null: the "
    "gateway's hold_policy setting."
)


class AccountCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    credits: int = Field(default=0, ge=0, le=MAX_CREDITS)
    reason: str = Field(default="starting credits", min_length=1, max_length=500)
    hold_policy: HoldPolicy | None = Field(default=None, description=_POLICY_HELP)


class AccountPatch(BaseModel):
    hold_policy: HoldPolicy | None = Field(description=_POLICY_HELP)


class AccountOut(BaseModel):
    id: int
    name: str
    balance: int = Field(description="Credits available now (holds already taken out).")
    held: int = Field(description="Credits reserved by calls in flight.")
    keys: int
    hold_policy: HoldPolicy | None = Field(description=_POLICY_HELP)
    written_off: int = Field(
        description="Credits of overruns the balance could not pay, written off (ledger "
        "rows of kind 'writeoff')."
    )
    created_at: datetime


class AccountDetail(AccountOut):
    api_keys: list[KeyOut]
    ledger: list[dict[str, Any]]


@router.post("/accounts", status_code=201, summary="Create an account")
async def create_account(body: AccountCreate, store: AdminAccounts) -> AccountOut:
    try:
        account = await store.create(body.name, body.credits, body.reason, body.hold_policy)
    except AccountError as exc:
        raise Conflict(str(exc)) from None
    return AccountOut(**account.as_dict())


@router.get("/accounts", summary="List accounts with their balances")
async def list_accounts(store: AdminAccounts) -> list[AccountOut]:
    return [AccountOut(**account.as_dict()) for account in await store.list()]


@router.get("/accounts/{account}", summary="An account (by id or name), its keys and ledger")
async def show_account(
    account: str,
    gateway: AdminGateway,
    store: AdminAccounts,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> AccountDetail:
    found = await find_account(store, account)
    keys = [KeyOut(**key_out(k)) for k in await gateway.keys.list() if k.account_id == found.id]
    entries = await store.entries(found.id, limit=limit)
    return AccountDetail(**found.as_dict(), api_keys=keys, ledger=entries)


@router.patch("/accounts/{account}", summary="Change an account's hold policy")
async def patch_account(account: str, body: AccountPatch, store: AdminAccounts) -> AccountOut:
    found = await find_account(store, account)
    await store.set_hold_policy(found.id, body.hold_policy)
    return AccountOut(**(await find_account(store, str(found.id))).as_dict())


@router.post("/accounts/{account}/topup", summary="Top up (or adjust) an account")
async def topup_account(account: str, body: Topup, store: AdminAccounts) -> BalanceOut:
    found = await find_account(store, account)
    balance = await topup(store, found, body, None)
    return BalanceOut(account_id=found.id, account=found.name, balance=balance)


@router.get("/ledger", summary="Ledger rows, newest first")
async def list_ledger(
    store: AdminAccounts,
    gateway: AdminGateway,
    account: str | None = None,
    key: Annotated[str | None, Query(description="Only this key prefix")] = None,
    request_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    account_id = (await find_account(store, account)).id if account is not None else None
    key_id = None
    if key is not None:
        record = await gateway.keys.get(key)
        if record is None:
            raise NotFound(f"No key with prefix {key}.")
        key_id = record.id
    return await store.entries(account_id, key_id=key_id, request_id=request_id, limit=limit)
