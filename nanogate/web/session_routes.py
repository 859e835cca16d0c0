"""Console login and logout, as admin API routes: POST, GET and DELETE /admin/session.

The session is an HttpOnly, SameSite=Strict cookie (Secure when the gateway is reached over
TLS); its CSRF token is handed to the page, never kept in a cookie a script could read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from nanogate.access.keys import KeyRecord
from nanogate.console import sessions
from nanogate.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from nanogate.engine.gateway import Context, Gateway
from nanogate.web.admin_common import admin_key
from nanogate.web.common import client_address

router = APIRouter(prefix="/admin", tags=["Admin: console session"])


class Login(BaseModel):
    key: str = Field(min_length=1, max_length=200, description="An admin key.")


class SessionOut(BaseModel):
    key_prefix: str
    csrf_token: str = Field(
        description="Send it back as the X-CSRF-Token header on every POST, PATCH and DELETE."
    )
    expires_at: datetime


def _secure(request: Request) -> bool:
    public = request.app.state.settings.resolved_public_base_url
    return request.url.scheme == "https" or public.startswith("https://")


def _same_origin(request: Request) -> bool:
    """Browsers name the page a request came from: a login posted from another site is refused
    (scripts and curl send no Origin)."""
    origin = request.headers.get("origin")
    return origin is None or origin.partition("://")[2] == request.headers.get("host", "")


@router.post("/session", summary="Log in to the console with an admin key (sets the cookie)")
async def login(request: Request, body: Login, response: Response) -> SessionOut:
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise InvalidArgument('Send the login as JSON: {"key": "nga_..."}.')
    if not _same_origin(request):
        raise PermissionDenied("A login must come from this gateway's own console.")
    gateway: Gateway = request.app.state.gateway
    ctx = Context(request.state.request_id, "admin", client=client_address(request))
    try:
        record = await gateway.authenticate(ctx, body.key.strip(), operator=True)
    except Unauthenticated:
        raise Unauthenticated("That key is not valid. Log in with an admin key.") from None
    if not record.is_admin:
        raise PermissionDenied(
            "A client key cannot log in to the console: use an admin key (nga_...)."
        )
    store: sessions.SessionStore = request.app.state.sessions
    token, session = await store.open(record.id)
    response.set_cookie(
        sessions.COOKIE,
        token,
        max_age=int(store.lifetime.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return SessionOut(
        key_prefix=record.prefix, csrf_token=session.csrf_token, expires_at=session.expires_at
    )


@router.get("/session", summary="The console session of this cookie, with its CSRF token")
async def current(request: Request, key: Annotated[KeyRecord, Depends(admin_key)]) -> SessionOut:
    session: sessions.Session | None = getattr(request.state, "console_session", None)
    if session is None:
        raise Unauthenticated("No console session: log in with POST /admin/session.")
    return SessionOut(
        key_prefix=key.prefix, csrf_token=session.csrf_token, expires_at=session.expires_at
    )


@router.delete("/session", status_code=204, summary="Log out: end the session, clear the cookie")
async def logout(request: Request, key: Annotated[KeyRecord, Depends(admin_key)]) -> Response:
    token = request.cookies.get(sessions.COOKIE)
    if token:
        store: sessions.SessionStore = request.app.state.sessions
        await store.close(token)
    response = Response(status_code=204)
    response.delete_cookie(
        sessions.COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request)
    )
    return response
