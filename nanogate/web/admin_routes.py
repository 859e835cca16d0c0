"""The admin API: accounts, keys, the ledger and usage, for operators' scripts (and the console).

Every route takes the admin key in a header (x-api-key, x-goog-api-key or Bearer), or a console
session cookie. Errors use the same envelope as
the rest of the gateway, `{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from nanogate.access.keys import KeyRecord
from nanogate.billing.accounts import Account, AccountError, AccountStore
from nanogate.billing.keys import KeyStore
from nanogate.console import sessions
from nanogate.core import lifecycle
from nanogate.core.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from nanogate.dialects import tasks as tasks_dialect
from nanogate.engine.gateway import Context, Gateway
from nanogate.tasks.service import TaskService
from nanogate.web.common import extract_key
from nanogate.web.runtime import configured_callback_secret

router = APIRouter(prefix="/admin", tags=["Admin"])


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
        record = await gateway.authenticate(Context(request.state.request_id, "admin"), presented)
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


class KeyCreate(BaseModel):
    name: str = Field(default="client", min_length=1, max_length=100)
    account: str | None = Field(
        default=None,
        description="Id or name of the account the key draws on; none: a new account of its own.",
    )
    credits: int = Field(default=0, ge=0, description="Credits added to the key's account.")
    expires_at: datetime | None = None
    allowed_models: list[str] | None = None
    rpm_limit: int | None = Field(default=None, ge=1)
    concurrency_limit: int | None = Field(default=None, ge=1)
    daily_cap: int | None = Field(default=None, ge=0, description="Credits per UTC day.")
    monthly_cap: int | None = Field(default=None, ge=0, description="Credits per UTC month.")
    image_output: ImageOutput | None = Field(default=None, description=IMAGE_OUTPUT_HELP)
    is_admin: bool = False


class KeyUpdate(BaseModel):
    """Only the fields sent change; send null to clear a limit or cap."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    expires_at: datetime | None = None
    allowed_models: list[str] | None = None
    rpm_limit: int | None = Field(default=None, ge=1)
    concurrency_limit: int | None = Field(default=None, ge=1)
    daily_cap: int | None = Field(default=None, ge=0)
    monthly_cap: int | None = Field(default=None, ge=0)
    image_output: ImageOutput | None = Field(default=None, description=IMAGE_OUTPUT_HELP)


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


class KeyCreated(KeyOut):
    key: str = Field(description="The full key. Shown here once; only its hash is stored.")


def _out(record: KeyRecord) -> dict[str, Any]:
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
    record = await keys.update(prefix, **changes)
    if record is None:
        raise NotFound(f"No key with prefix {prefix}.")
    return KeyOut(**_out(record))


class Topup(BaseModel):
    amount: int = Field(
        description="Credits to add; negative for an adjustment (never below a zero balance)."
    )
    reason: str = Field(min_length=1, max_length=500, description="Why, kept in the ledger.")


class BalanceOut(BaseModel):
    account_id: int
    account: str
    balance: int


async def _topup(store: AccountStore, account: Account, body: Topup, key_id: int | None) -> int:
    try:
        return await store.topup(account.id, body.amount, body.reason, key_id=key_id)
    except AccountError as exc:
        raise Conflict(str(exc)) if body.amount < 0 else InvalidArgument(str(exc)) from None


@router.post("/keys/{prefix}/topup", summary="Top up (or adjust) the account of a key")
async def topup_key(
    prefix: str, body: Topup, gateway: AdminGateway, store: AdminAccounts
) -> BalanceOut:
    record = await gateway.keys.get(prefix)
    if record is None:
        raise NotFound(f"No key with prefix {prefix}.")
    account = await find_account(store, str(record.account_id))
    balance = await _topup(store, account, body, record.id)
    return BalanceOut(account_id=account.id, account=account.name, balance=balance)


_POLICY_HELP = (
    "How much the account's calls hold: 'fair' (their certain cost plus an output allowance) "
    "or 'worst_case' (the most they could cost; nothing is ever written off). null: the "
    "gateway's hold_policy setting."
)


class AccountCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    credits: int = Field(default=0, ge=0)
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
    keys = [KeyOut(**_out(k)) for k in await gateway.keys.list() if k.account_id == found.id]
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
    balance = await _topup(store, found, body, None)
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


@router.get("/callbacks", summary="Callback delivery attempts of a task")
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
        "state": record.callback_state,
        "attempts": attempts,
    }


class CallbackSecretOut(BaseModel):
    secret: str = Field(
        description="Signs every callback: x-nanogate-signature is the hex HMAC-SHA256 of "
        '`x-nanogate-timestamp + "." + body`, keyed with this string\'s UTF-8 bytes, as shown '
        "(not hex-decoded)."
    )
    source: Literal["setting", "database"] = Field(
        description='"setting": the operator\'s callback_secret (NANOGATE_CALLBACK_SECRET); '
        '"database": generated on first start and kept in the database.'
    )


@router.get(
    "/callbacks/secret",
    summary="The secret that signs callbacks",
    description="What a callback receiver verifies x-nanogate-signature with. "
    "`nanogate callbacks secret` prints the same.",
)
async def callback_secret(
    request: Request, response: Response, gateway: AdminGateway
) -> CallbackSecretOut:
    response.headers["cache-control"] = "no-store"  # a secret: no copy in any cache
    secret: bytes = request.app.state.callback_secret
    configured = configured_callback_secret(request.app.state.settings)
    return CallbackSecretOut(secret=secret.decode(), source="setting" if configured else "database")


class ModelCheckOut(BaseModel):
    checked_at: datetime
    error: str | None = Field(description="Why the upstream could not be asked, if it failed.")
    missing: list[str] = Field(description="Catalog models clients may call that it does not list.")
    listed: int = Field(description="Catalog models routed to it that it lists.")
    expected: int = Field(description="Catalog models routed to it that clients may call.")
    not_in_catalog: list[str] = Field(description="Models it lists that the catalog does not know.")


class UpstreamOut(BaseModel):
    name: str
    kind: str
    breaker: Literal["closed", "open", "half-open"] = Field(
        description='"open" while cooling down after repeated failures; "half-open" once the '
        "cooldown has passed, until a health probe lets it back in."
    )
    failures_in_a_row: int
    in_flight: int = Field(description="Calls to it running now.")
    waiting: int = Field(description="Calls waiting for a slot (only with max_concurrency).")
    max_concurrency: int | None = Field(description="Its cap; null: none.")
    p50_ms: float | None = Field(description="Median of its last 500 successful attempts.")
    p99_ms: float | None = Field(description="99th percentile of the same.")
    error_rate: float = Field(description="Share of its last 500 attempts that failed retryably.")
    recent_attempts: int = Field(description="Attempts the error rate is computed over.")
    skip_until: datetime | None = Field(
        description="It answered with Retry-After: skipped until then (UTC)."
    )
    retry_after: int | None = Field(description="Seconds until then.")
    models: ModelCheckOut | None = Field(
        default=None,
        description="gemini upstreams: the daily check of GET …/models against the catalog "
        "(null until the first check, which this call starts, has answered).",
    )


@router.get(
    "/upstreams",
    summary="Upstreams: breaker state, calls in flight, recent latency (p50/p99), error rate "
    "and which catalog models they do not list",
)
async def list_upstreams(gateway: AdminGateway) -> list[UpstreamOut]:
    checks = gateway.watch.kick() if gateway.watch is not None else {}
    return [UpstreamOut(**row, models=checks.get(row["name"])) for row in gateway.router.status()]


class ModelOut(BaseModel):
    name: str
    display_name: str
    kind: Literal["image", "text"]
    max_input_images: int
    image_sizes: list[str]
    default_image_size: str
    aspect_ratios: list[str]
    prices: dict[str, int] = Field(description="Credits per million tokens, by token kind.")
    image_prices: dict[str, int] = Field(description="Flat credits per image, by size tier.")
    status: Literal["preview", "ga", "deprecated", "shut_down"] = Field(
        description="Where the model is in Google's lifecycle today."
    )
    shutdown_date: date | None
    replacement: str | None


@router.get("/models", summary="The model catalog: kinds, input limits, sizes, aspect ratios")
async def list_models(gateway: AdminGateway) -> list[ModelOut]:
    return [
        ModelOut(
            name=spec.name,
            display_name=spec.display_name,
            kind="image" if spec.is_image else "text",
            max_input_images=spec.max_input_images,
            image_sizes=list(spec.image_sizes),
            default_image_size=spec.default_image_size,
            aspect_ratios=list(spec.aspect_ratios),
            prices=spec.prices,
            image_prices=spec.image_prices,
            status=lifecycle.state(spec, gateway.today()),
            shutdown_date=spec.shutdown_date,
            replacement=spec.replacement.model if spec.replacement else None,
        )
        for spec in gateway.catalog
    ]
