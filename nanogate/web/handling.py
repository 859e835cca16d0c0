"""What every dialect's route does around its own part, in one place.

A route is parse → engine → render. `endpoint` wraps that with the rest: a Context for the
request, a failure rendered in the dialect's own envelope, the access log's fields, and the
usage record, written once when the answer is complete. A stream writes its record itself, when
it closes (see Gateway.stream), so a route that answers with one hands it over by returning it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from nanogate.core.errors import GatewayError, Unavailable
from nanogate.db.engine import unreachable
from nanogate.engine.gateway import Context, Gateway
from nanogate.web.common import client_address
from nanogate.web.drain import CONTEXT_STATE
from nanogate.web.streaming import PiecesResponse, RelayStream

Answer = Response | RelayStream | PiecesResponse
Handler = Callable[[Request, Context], Awaitable[Answer]]
Endpoint = Callable[[Request], Awaitable[Answer]]
ErrorRenderer = Callable[[GatewayError], Response]


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def database_down() -> Unavailable:
    return Unavailable(
        "The gateway's database did not answer (busy or unreachable); retry shortly."
    )


def note(request: Request, ctx: Context) -> None:
    """Hand what the request learned to the access log line (and its Warning to the answer)."""
    request.state.key_prefix = ctx.key.prefix if ctx.key else None
    request.state.model = ctx.model or None
    request.state.upstream = ctx.upstream
    request.state.warning = ctx.warning


def endpoint(
    dialect: str, render_error: ErrorRenderer, *, record: bool = True
) -> Callable[[Handler], Endpoint]:
    """Make `handler(request, ctx)` a route of `dialect`. `record=False` for reads that are not
    calls (the model listings), which write no usage record."""

    def wrap(handler: Handler) -> Endpoint:
        async def run(request: Request) -> Answer:
            ctx = Context(request.state.request_id, dialect, client=client_address(request))
            # For the drain, which fails a call it cuts (web/drain.py).
            setattr(request.state, CONTEXT_STATE, ctx)
            answer: Answer | None = None
            try:
                answer = await handler(request, ctx)
                return answer
            except GatewayError as error:
                ctx.fail(error)
                return render_error(error)
            except Exception as exc:
                if not unreachable(exc):
                    ctx.status, ctx.error = 500, "INTERNAL"
                    raise
                # The database did not answer (a key lookup, a hold): a retry may succeed.
                down = database_down()
                ctx.fail(down)
                return render_error(down)
            finally:
                note(request, ctx)
                if record and not isinstance(answer, RelayStream):
                    gateway_of(request).finish(ctx)

        run.__name__ = run.__qualname__ = handler.__name__
        run.__doc__ = handler.__doc__
        return run

    return wrap


def either(gemini: Endpoint, openai: Endpoint, wants_gemini: Callable[[Request], bool]) -> Endpoint:
    """One path served in both dialects (GET /v1/models): each client gets its own."""

    async def run(request: Request) -> Answer:
        return await (gemini if wants_gemini(request) else openai)(request)

    return run
