"""The outermost ASGI app: the relay's routes go straight to a lean Starlette router; everything
else (docs, operations, later the admin API) goes through FastAPI.

FastAPI stacks five middleware layers and its own router on every request; on the relay they
cost about as much CPU as the relay itself, and buy nothing there (no dependencies, no models).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

# The Gemini native prefixes, the listing GET /v1/models shared by both dialects, and the
# OpenAI dialect's calls.
RELAY_PREFIXES = ("/v1beta/", "/v1/v1beta/", "/v1/models", "/v1/chat/", "/v1/images/")


class Front:
    def __init__(self, relay: ASGIApp, api: ASGIApp) -> None:
        self.relay = relay
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(RELAY_PREFIXES):
            # Route handlers reach settings and the gateway through request.app.state.
            scope["app"] = self.api
            await self.relay(scope, receive, send)
        else:
            await self.api(scope, receive, send)
