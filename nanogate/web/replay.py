"""One-shot answers made safe to retry: Idempotency-Key replays and the rescue path.

With an Idempotency-Key, the first call's answer is kept and a repeat of the same request gets
it back (waiting while the first still runs); the same key on another request is a 409. Without
one, an answer whose client left before it was ready is kept anyway, for GET /v1/results: the
client paid for it. Every dialect's one-shot route runs its call through `answer_once`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from nanogate.engine.gateway import Context
from nanogate.engine.replay import ResultKeeper

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
# What a call cost, in credits (what it would have cost, with metering off).
COST_HEADER = "x-nanogate-cost"
# What the call needed available to be admitted (its input and the images it asked for): what
# the next such call will need. On every metered answer, streams included.
QUOTE_HEADER = "x-nanogate-quote"
# Set on the stored first answer returned for a repeated Idempotency-Key.
REPLAY_HEADER = "x-nanogate-idempotent-replay"


async def answer_once(
    request: Request,
    ctx: Context,
    idem: tuple[str, str] | None,
    produce: Callable[[], Awaitable[bytes]],
) -> Response:
    """Run `produce` (the gateway call and the rendering of its answer) under the request's
    Idempotency-Key and fingerprint (`idem`, from common.idempotency_key), if any, and keep what
    it made for a replay or for a client that left."""
    keeper: ResultKeeper = request.app.state.results
    key = ctx.key
    assert key is not None
    if idem is not None:
        wait_s = request.app.state.settings.idempotency_wait_seconds
        replay = await keeper.claim(key.id, idem, ctx.request_id, wait_s=wait_s)
        if replay is not None:
            ctx.method = "replay"
            status, stored = replay
            headers = {COST_HEADER: "0", REPLAY_HEADER: "true"}
            return Response(stored, status, headers, JSON_TYPE)
    # "Running" until the answer is kept, so GET /v1/results never sees neither.
    with keeper.running(key.id, ctx.request_id):
        try:
            answer = await produce()
        except BaseException:
            if idem is not None:
                await keeper.release(key.id, idem[0], ctx.request_id)
            raise
        if idem is not None or await request.is_disconnected():
            try:
                await keeper.keep(key.id, ctx.request_id, answer)
            except Exception as exc:
                log.error("could not keep an answer (%s)", type(exc).__name__)
    headers = {COST_HEADER: str(ctx.cost), **quoted(ctx)}
    return Response(answer, headers=headers, media_type=JSON_TYPE)


def quoted(ctx: Context) -> dict[str, str]:
    """The quote header, for an answer whose call was quoted."""
    return {QUOTE_HEADER: str(ctx.quote)} if ctx.quote else {}
