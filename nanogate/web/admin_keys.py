"""The admin API for keys: create, list, revoke, change, top up."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from nanogate.access.keys import LastAdminKey
from nanogate.billing.keys import MAX_LIMIT
from nanogate.billing.ledger import MAX_CREDITS
from nanogate.core.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
)
from nanogate.engine.gateway import Gateway
from nanogate.web.admin_common import (
    IMAGE_OUTPUT_HELP,
    AdminAccounts,
    AdminGateway,
    AdminKeys,
    BalanceOut,
    ImageOutput,
    KeyOut,
    Topup,
    find_account,
    key_out,
    topup,
)

router = APIRouter(prefix="/admin", tags=["Admin"])


class KeyCreate(BaseModel):
    name: str = Field(default="client", min_length=1, max_length=100)
    account: str | None = Field(
        default=None,
        description="Id or name of the account the key draws on; none: a new account of its own.",
    )
    credits: int = Field(
        default=0, ge=0, le=MAX_CREDITS, description="Credits added to the key's account."
    )
    expires_at: datetime | None = None
    allowed_models: list[str] | None = None
    rpm_limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    concurrency_limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    daily_cap: int | None = Field(
        default=None, ge=0, le=MAX_CREDITS, description="Credits per UTC day."
    )
    monthly_cap: int | None = Field(
        default=None, ge=0, le=MAX_CREDITS, description="Credits per UTC month."
    )
    image_output: ImageOutput | None = Field(default=None, description=IMAGE_OUTPUT_HELP)
    is_admin: bool = False


class KeyUpdate(BaseModel):
    """Only the fields sent change; send null to clear a limit or cap."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    expires_at: datetime | None = None
    allowed_models: list[str] | None = None
    rpm_limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    concurrency_limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    daily_cap: int | None = Field(default=None, ge=0, le=MAX_CREDITS)
    monthly_cap: int | None = Field(default=None, ge=0, le=MAX_CREDITS)
    image_output: ImageOutput | None = Field(default=None, description=IMAGE_OUTPUT_HELP)


class KeyCreated(KeyOut):
    key: str = Field(description="The full key. Shown here once; only its hash is stored.")


def _allowed(gateway: Gateway, models: list[str] | None) -> list[str] | None:
    # Aliases become catalog names (what requests are checked against); an unknown name is a
    # 404 here rather than a key that can never call anything.
    return [gateway.catalog.resolve(m).name for m in models] if models is not None else None


def _aware(moment: datetime | None) -> None:
    if moment is not None and moment.tzinfo is None:
        raise InvalidArgument("expires_at needs a time zone, e.g. 2027-01-01T00:00:00Z.")


@router.post("/keys", status_code=201, summary="Create a key")
async def create_key(
    body: KeyCreate, gateway: AdminGateway, store: AdminAccounts, keys: AdminKeys
) -> KeyCreated:
    _aware(body.expires_at)
    allowed = _allowed(gateway, body.allowed_models)
    account_id = (await find_account(store, body.account)).id if body.account is not None else None
    plain, record = await keys.create(
        body.name,
        is_admin=body.is_admin,
        account_id=account_id,
        credits=body.credits,
        expires_at=body.expires_at,
        allowed_models=allowed,
        rpm_limit=body.rpm_limit,
        concurrency_limit=body.concurrency_limit,
        daily_cap=body.daily_cap,
        monthly_cap=body.monthly_cap,
        image_output=body.image_output,
    )
    return KeyCreated(key=plain, **key_out(record))


@router.get("/keys", summary="List keys (prefixes only, never the keys)")
async def list_keys(gateway: AdminGateway) -> list[KeyOut]:
    return [KeyOut(**key_out(record)) for record in await gateway.keys.list()]


@router.post("/keys/{prefix}/revoke", summary="Revoke a key")
async def revoke_key(prefix: str, gateway: AdminGateway) -> KeyOut:
    try:
        revoked = await gateway.keys.revoke(prefix)
    except LastAdminKey as exc:
        raise Conflict(str(exc)) from None
    if not revoked:
        raise NotFound(f"No active key with prefix {prefix}.")
    record = await gateway.keys.get(prefix)
    assert record is not None
    return KeyOut(**key_out(record))


@router.patch(
    "/keys/{prefix}", summary="Change a key's limits, caps, expiry, models or image output"
)
async def update_key(
    prefix: str, body: KeyUpdate, gateway: AdminGateway, keys: AdminKeys
) -> KeyOut:
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise InvalidArgument("Send at least one field to change.")
    _aware(changes.get("expires_at"))
    if "allowed_models" in changes:
        changes["allowed_models"] = _allowed(gateway, changes["allowed_models"])
    if changes.get("name", "") is None:
        raise InvalidArgument("name cannot be null.")
    try:
        record = await keys.update(prefix, **changes)
    except LastAdminKey as exc:
        raise Conflict(str(exc)) from None
    if record is None:
        raise NotFound(f"No key with prefix {prefix}.")
    return KeyOut(**key_out(record))


@router.post("/keys/{prefix}/topup", summary="Top up (or adjust) the account of a key")
async def topup_key(
    prefix: str, body: Topup, gateway: AdminGateway, store: AdminAccounts
) -> BalanceOut:
    record = await gateway.keys.get(prefix)
    if record is None:
        raise NotFound(f"No key with prefix {prefix}.")
    account = await find_account(store, str(record.account_id))
    balance = await topup(store, account, body, record.id)
    return BalanceOut(account_id=account.id, account=account.name, balance=balance)
