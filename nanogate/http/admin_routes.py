"""The admin API: keys and usage, for operators' scripts (and later the console).

Every route takes the admin key (any carrier the relay accepts). Errors use the same envelope as
the rest of the gateway, `{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.requests import Request

from ..errors import InvalidArgument, NotFound, PermissionDenied
from ..gateway import Context, Gateway
from ..keys import KeyRecord
from .common import extract_key

router = APIRouter(prefix="/admin", tags=["Admin"])


async def admin_gateway(request: Request) -> Gateway:
    """Dependency: the gateway, once the caller has shown an admin key."""
    gateway: Gateway = request.app.state.gateway
    record = await gateway.authenticate(
        Context(request.state.request_id, "admin"), extract_key(request)
    )
    if not record.is_admin:
        raise PermissionDenied("This route needs an admin key.")
    return gateway


AdminGateway = Annotated[Gateway, Depends(admin_gateway)]


class KeyCreate(BaseModel):
    name: str = Field(default="client", min_length=1, max_length=100)
    credits: int = Field(default=0, ge=0)
    expires_at: datetime | None = None
    allowed_models: list[str] | None = None
    rpm_limit: int | None = Field(default=None, ge=1)
    concurrency_limit: int | None = Field(default=None, ge=1)
    is_admin: bool = False


class KeyOut(BaseModel):
    prefix: str
    name: str
    is_admin: bool
    status: str
    balance: int
    created_at: datetime
    expires_at: datetime | None
    allowed_models: list[str] | None
    rpm_limit: int | None
    concurrency_limit: int | None


class KeyCreated(KeyOut):
    key: str = Field(description="The full key. Shown here once; only its hash is stored.")


def _out(record: KeyRecord) -> dict[str, Any]:
    return {
        "prefix": record.prefix,
        "name": record.name,
        "is_admin": record.is_admin,
        "status": record.status(datetime.now(UTC)),
        "balance": record.balance,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "allowed_models": list(record.allowed_models) if record.allowed_models else None,
        "rpm_limit": record.rpm_limit,
        "concurrency_limit": record.concurrency_limit,
    }


@router.post("/keys", status_code=201, summary="Create a key")
async def create_key(body: KeyCreate, gateway: AdminGateway) -> KeyCreated:
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        raise InvalidArgument("expires_at needs a time zone, e.g. 2027-01-01T00:00:00Z.")
    # Aliases become catalog names (what requests are checked against); an unknown name is a
    # 404 here rather than a key that can never call anything.
    allowed = (
        [gateway.catalog.resolve(m).name for m in body.allowed_models]
        if body.allowed_models is not None
        else None
    )
    plain, record = await gateway.keys.create(
        body.name,
        is_admin=body.is_admin,
        credits=body.credits,
        expires_at=body.expires_at,
        allowed_models=allowed,
        rpm_limit=body.rpm_limit,
        concurrency_limit=body.concurrency_limit,
    )
    return KeyCreated(key=plain, **_out(record))


@router.get("/keys", summary="List keys (prefixes only, never the keys)")
async def list_keys(gateway: AdminGateway) -> list[KeyOut]:
    return [KeyOut(**_out(record)) for record in await gateway.keys.list()]


@router.post("/keys/{prefix}/revoke", summary="Revoke a key")
async def revoke_key(prefix: str, gateway: AdminGateway) -> KeyOut:
    if not await gateway.keys.revoke(prefix):
        raise NotFound(f"No active key with prefix {prefix}.")
    record = await gateway.keys.get(prefix)
    assert record is not None
    return KeyOut(**_out(record))


@router.get("/usage", summary="Recent usage records, newest first")
async def recent_usage(
    gateway: AdminGateway,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    key: Annotated[str | None, Query(description="Only this key prefix")] = None,
) -> list[dict[str, Any]]:
    return await gateway.recorder.recent(limit=limit, key_prefix=key)
