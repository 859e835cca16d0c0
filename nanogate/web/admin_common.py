"""What every admin route shares: the admin key (or console session) dependencies, and finding
an account and moving its credits.

Every admin route takes the admin key in a header (x-api-key, x-goog-api-key or Bearer), or a
console session cookie. Errors use the same envelope as the rest of the gateway,
`{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends
from pydantic import BaseModel, Field
from starlette.requests import Request

from nanogate.access.keys import KeyRecord
from nanogate.billing.accounts import Account, AccountError, AccountStore, BalanceError
from nanogate.billing.keys import KeyStore
from nanogate.billing.ledger import MAX_CREDITS
from nanogate.console import sessions
from nanogate.core.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from nanogate.engine.gateway import Context, Gateway
from nanogate.web.common import client_address, extract_key

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def admin_key(request: Request) -> KeyRecord:
    """The admin key the caller showed: a key in any carrier, or else a console session cookie.

    A session counts only with its CSRF token echoed in X-CSRF-Token on anything that changes
    state: SameSite=Strict already keeps other sites' requests from carrying the cookie, and the
    token also covers browsers that ignore SameSite.
    """
    gateway: Gateway = request.app.state.gateway
    # On /admin, `?key=` is the usage and ledger filter (a key prefix), never a credential.
    presented = extract_key(request, query=False)
    token = request.cookies.get(sessions.COOKIE)
    if presented is None and token:
        record = await _session_key(request, gateway, token)
    else:
        ctx = Context(request.state.request_id, "admin", client=client_address(request))
        record = await gateway.authenticate(ctx, presented, operator=True)
    if not record.is_admin:
        raise PermissionDenied("This route needs an admin key.")
    return record


async def _session_key(request: Request, gateway: Gateway, token: str) -> KeyRecord:
    store: sessions.SessionStore = request.app.state.sessions
    session = await store.get(token)
    if session is None:
        raise Unauthenticated("Your console session has ended (expired or logged out); log in.")
    if request.method not in SAFE_METHODS and not sessions.csrf_matches(
        session, request.headers.get(sessions.CSRF_HEADER)
    ):
        raise PermissionDenied(
            "Missing or wrong X-CSRF-Token header: a console request that changes something "
            "must send the session's CSRF token (GET /admin/session gives it)."
        )
    request.state.console_session = session  # GET /admin/session answers from it
    record = await gateway.keys.by_id(session.key_id)
    if record is None or record.status(datetime.now(UTC)) != "active":
        raise Unauthenticated("The admin key of this session is no longer active; log in again.")
    return record


async def admin_gateway(request: Request, key: Annotated[KeyRecord, Depends(admin_key)]) -> Gateway:
    """Dependency: the gateway, once the caller has shown an admin key."""
    gateway: Gateway = request.app.state.gateway
    return gateway


AdminGateway = Annotated[Gateway, Depends(admin_gateway)]


async def admin_accounts(request: Request, gateway: AdminGateway) -> AccountStore:
    """Dependency: the account store, once the caller has shown an admin key."""
    store: AccountStore = request.app.state.accounts
    return store


AdminAccounts = Annotated[AccountStore, Depends(admin_accounts)]


async def admin_keys(request: Request, gateway: AdminGateway) -> KeyStore:
    """Dependency: the key store that issues and changes keys, once the caller has shown an
    admin key."""
    store: KeyStore = request.app.state.keys
    return store


AdminKeys = Annotated[KeyStore, Depends(admin_keys)]

ImageOutput = Literal["data", "url"]  # nanogate.db.tables.IMAGE_OUTPUTS
HoldPolicy = Literal["fair", "worst_case"]  # nanogate.db.tables.HOLD_POLICIES
IMAGE_OUTPUT_HELP = (
    'How the OpenAI dialect returns the key\'s images: "data" (base64 data URLs, also what null '
    'means) or "url" (signed result URLs).'
)


async def find_account(store: AccountStore, ref: str) -> Account:
    found = await store.get(ref)
    if found is None:
        raise NotFound(f"No account '{ref}' (give its id or its name).")
    return found


class Topup(BaseModel):
    amount: int = Field(
        ge=-MAX_CREDITS,
        le=MAX_CREDITS,
        description="Credits to add; negative for an adjustment (never below a zero balance).",
    )
    reason: str = Field(min_length=1, max_length=500, description="Why, kept in the ledger.")


class BalanceOut(BaseModel):
    account_id: int
    account: str
    balance: int


async def topup(store: AccountStore, account: Account, body: Topup, key_id: int | None) -> int:
    try:
        return await store.topup(account.id, body.amount, body.reason, key_id=key_id)
    except BalanceError as exc:
        raise Conflict(str(exc)) from None
    except AccountError as exc:
        raise InvalidArgument(str(exc)) from None


class KeyOut(BaseModel):
    prefix: str
    name: str
    is_admin: bool
    status: str
    account_id: int
    account: str
    balance: int = Field(description="The account's balance (keys on one account share it).")
    created_at: datetime
    expires_at: datetime | None
    allowed_models: list[str] | None
    rpm_limit: int | None
    concurrency_limit: int | None
    daily_cap: int | None
    monthly_cap: int | None
    image_output: ImageOutput | None


def key_out(record: KeyRecord) -> dict[str, Any]:
    return {
        "prefix": record.prefix,
        "name": record.name,
        "is_admin": record.is_admin,
        "status": record.status(datetime.now(UTC)),
        "account_id": record.account_id,
        "account": record.account_name,
        "balance": record.balance,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "allowed_models": list(record.allowed_models) if record.allowed_models else None,
        "rpm_limit": record.rpm_limit,
        "concurrency_limit": record.concurrency_limit,
        "daily_cap": record.daily_cap,
        "monthly_cap": record.monthly_cap,
        "image_output": record.image_output,
    }
