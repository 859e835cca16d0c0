"""The console's pages: HTML shells and their two static files, served by the gateway itself.

A page holds no data: its script reads and changes everything through the admin API, with the
session cookie and the CSRF token the shell carries. Pages need a live session, so a visitor
without one lands on the login page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from importlib import resources

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from nanogate.console import pages, sessions
from nanogate.console.money import Money
from nanogate.core.errors import NotFound

router = APIRouter(prefix="/console", include_in_schema=False)
# The gateway's bare address, which is what a newcomer opens first, leads to the console.
home = APIRouter(include_in_schema=False)


@home.get("/")
async def root() -> Response:
    return RedirectResponse("/console", status_code=307)


_STATIC = resources.files("nanogate.console") / "static"
_ASSETS = {"console.css": "text/css", "console.js": "text/javascript"}


def _headers(request: Request) -> dict[str, str]:
    # Result images may live behind the public base URL rather than this origin.
    images = request.app.state.settings.resolved_public_base_url.rstrip("/")
    return {
        "content-security-policy": (
            f"default-src 'self'; img-src 'self' data: blob: {images}; script-src 'self'; "
            "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'self'"
        ),
        "x-content-type-options": "nosniff",
        "referrer-policy": "same-origin",
        "x-frame-options": "DENY",
        "cache-control": "no-store",
    }


@router.get("/login")
async def login_page(request: Request) -> Response:
    return HTMLResponse(pages.login(), headers=_headers(request))


@cache
def _asset(name: str) -> bytes:
    return (_STATIC / name).read_bytes()


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    if name not in _ASSETS:
        raise NotFound(f"No console asset '{name[:60]}'.")
    return Response(
        _asset(name),
        media_type=_ASSETS[name],
        headers={"cache-control": "no-cache", "x-content-type-options": "nosniff"},
    )


@router.get("")
@router.get("/")
@router.get("/{page}")
async def console_page(request: Request, page: str = "overview") -> Response:
    if page not in pages.PAGES:
        raise NotFound(f"No console page '{page[:60]}'.")
    store: sessions.SessionStore = request.app.state.sessions
    session = await store.get(request.cookies.get(sessions.COOKIE, ""))
    record = None if session is None else await request.app.state.gateway.keys.by_id(session.key_id)
    if session is None or record is None or record.status(datetime.now(UTC)) != "active":
        return RedirectResponse("/console/login", status_code=303)
    money = Money.of(request.app.state.settings)
    html = pages.render(page, session.csrf_token, record.prefix, money)
    return HTMLResponse(html, headers=_headers(request))
