"""One-shot answers made safe to retry: Idempotency-Key replays and the rescue path.

With an Idempotency-Key, the first call's answer is kept and a repeat of the same request gets
it back (waiting while the first still runs); the same key on another request is a 409, and a
key whose call failed is free for a retry. Without one, an answer is kept for GET /v1/results
when its client named the call (its own x-request-id) or left before the answer was ready: the
client paid for it. Every dialect's one-shot
route runs its call through `answer_once`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response

from nanogate.billing.runners import Work
from nanogate.core.payload import Piece
from nanogate.core.types import Call, Reply
from nanogate.engine.gateway import Context, Gateway
from nanogate.engine.replay import ResultKeeper
from nanogate.web.common import JSON_TYPE, client_left
from nanogate.web.streaming import PiecesResponse

log = logging.getLogger(__name__)

# What a call cost, in credits (what it would have cost, with metering off).
COST_HEADER = "x-nanogate-cost"
# What the call needed available to be admitted (its input and the images it asked for): what
# the next such call will need. On every metered answer, streams included.
QUOTE_HEADER = "x-nanogate-quote"
# Set on the stored first answer returned for a repeated Idempotency-Key.
REPLAY_HEADER = "x-nanogate-idempotent-replay"

# The answer the client gets, made from the call's replies (the dialect's rendering): bytes, or
# pieces sent as they are (a large answer, never joined on its way out).
Render = Callable[[list[Reply]], Awaitable[bytes | Sequence[Piece]]]


async def answer_once(
    request: Request,
    ctx: Context,
    idem: tuple[str, str] | None,
    call: Call,
    render: Render,
    copies: int = 1,
) -> Response | PiecesResponse:
    """Run `call` (`copies` times) under the request's Idempotency-Key and fingerprint (`idem`,
    from common.idempotency_key), if any, and answer what `render` makes of its replies. The
    answer exists before the call is charged: rendered, and kept for a replay or for a client
    that left, its record committed with the charge."""
    keeper: ResultKeeper = request.app.state.results
    gateway: Gateway = request.app.state.gateway
    assert ctx.key is not None
    key_id = ctx.key.id
    answer: bytes | Sequence[Piece] = b""

    # A client that named its call (its own x-request-id) can ask for the answer later: keep it
    # with the charge, so a crash between the charge and the last byte loses nothing. Calls
    # with a gateway-made id stay off the disk: their client cannot name them anyway.
    named = request.headers.get("x-request-id") == ctx.request_id

    async def seal(replies: list[Reply]) -> Work[None] | None:
        nonlocal answer
        answer = await render(replies)
        if idem is not None or named or await client_left(request):
            whole = answer if isinstance(answer, bytes) else b"".join(answer)
            return await keeper.sealed(key_id, ctx.request_id, whole)
        return None

    # "Running" from before the key is claimed until the answer is kept, so GET /v1/results
    # never sees neither, and a retry never takes the key from a call still running here.
    with keeper.running(key_id, ctx.request_id):
        if idem is not None:
            wait_s = request.app.state.settings.idempotency_wait_seconds
            replay = await keeper.claim(key_id, idem, ctx.request_id, wait_s=wait_s)
            if replay is not None:
                ctx.method = "replay"
                status, stored = replay
                headers = {COST_HEADER: "0", REPLAY_HEADER: "true"}
                return Response(stored, status, headers, JSON_TYPE)
        try:
            await gateway.generate_many(ctx, call, copies, seal)
        except BaseException:
            if idem is not None:
                await _release(keeper, key_id, idem[0], ctx.request_id)
            raise
    headers = {COST_HEADER: str(ctx.cost), **quoted(ctx)}
    if isinstance(answer, bytes):
        return Response(answer, headers=headers, media_type=JSON_TYPE)
    return PiecesResponse(answer, headers, JSON_TYPE)


async def _release(keeper: ResultKeeper, key_id: int, idem_key: str, request_id: str) -> None:
    """The call ended without an answer (refunded): its key is free for a retry at once. If
    that cannot be written now, the next retry here finds the call gone and takes the key."""
    try:
        await keeper.release(key_id, idem_key, request_id)
    except Exception as exc:
        log.warning("could not release an Idempotency-Key (%s)", type(exc).__name__)


def quoted(ctx: Context) -> dict[str, str]:
    """The quote header, for an answer whose call was quoted."""
    return {QUOTE_HEADER: str(ctx.quote)} if ctx.quote else {}
