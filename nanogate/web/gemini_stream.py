"""The Gemini stream as it goes out: SSE events (`alt=sse`) or Google's JSON array of chunks, a
mid-stream failure as a last chunk the SDK raises from, and the rescue path that finishes an
image stream whose client left and keeps it for GET /v1/results/{request_id}."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from nanogate.core.errors import StreamCut, UpstreamError
from nanogate.core.streams import GuardedStream
from nanogate.core.types import Chunk
from nanogate.dialects import gemini
from nanogate.engine.gateway import Context
from nanogate.engine.replay import ResultKeeper
from nanogate.web.common import JSON_TYPE
from nanogate.web.replay import quoted
from nanogate.web.streaming import RelayStream

log = logging.getLogger(__name__)


def relay(
    ctx: Context,
    first: Chunk,
    rest: GuardedStream,
    *,
    sse: bool,
    keeper: ResultKeeper | None,
) -> RelayStream:
    """SSE events, or the JSON array Google sends when `alt` is not `sse`."""
    completed = False
    # With a keeper, the chunks sent so far, to keep the whole answer if the client leaves.
    bodies: list[bytes] | None = [first.body] if keeper is not None else None

    async def frames() -> AsyncIterator[bytes]:
        nonlocal completed
        yield gemini.sse_event(first.body) if sse else b"[" + first.body
        try:
            async for chunk in rest:
                if bodies is not None:
                    bodies.append(chunk.body)
                yield gemini.sse_event(chunk.body) if sse else b",\r\n" + chunk.body
        except (UpstreamError, StreamCut) as exc:
            # Bytes already went out, so no retry and no status change: the error travels as
            # a final chunk the SDK raises from.
            failure = exc if isinstance(exc, StreamCut) else exc.to_gateway_error()
            error = gemini.error_body(failure)
            if isinstance(exc, StreamCut) and keeper is not None and bodies is not None:
                # A cut image stream is charged what it produced, and a client that left
                # during the drip is only noticed now: kept, as the rescue path keeps.
                await _keep(ctx, keeper, [*bodies, error])
            # Charged (or refunded), released and recorded before the client hears of it.
            await rest.aclose()
            yield gemini.sse_event(error) if sse else b",\r\n" + error
        if not sse:
            yield b"]"
        completed = True

    async def cleanup() -> None:
        # Runs however the response ends, even if not one byte was sent: closing `rest`
        # releases the upstream and the limits and writes the usage record.
        if not completed and ctx.status == 200:
            if keeper is not None and bodies is not None:
                await _finish_for_later(ctx, rest, bodies, keeper)
            else:
                ctx.status, ctx.error = 499, "CLIENT_CLOSED"
        await rest.aclose()

    media_type = "text/event-stream" if sse else JSON_TYPE
    return RelayStream(frames(), media_type, cleanup, quoted(ctx))


async def _finish_for_later(
    ctx: Context, rest: GuardedStream, bodies: list[bytes], keeper: ResultKeeper
) -> None:
    """The client left an image stream: read it to its end (billed whole as it passes the
    meter) and keep it for GET /v1/results/{request_id}. A stream cut for its pace is charged
    what it produced, so that much is kept, ending with the error a client that stayed would
    have got."""
    assert ctx.key is not None
    with keeper.running(ctx.key.id, ctx.request_id):
        try:
            async for chunk in rest:
                bodies.append(chunk.body)
        except UpstreamError:
            return  # the stream failed: refunded when it closes, nothing to keep
        except StreamCut as exc:
            bodies.append(gemini.error_body(exc))
        await _keep(ctx, keeper, bodies)


async def _keep(ctx: Context, keeper: ResultKeeper, bodies: list[bytes]) -> None:
    """Keep a stream's chunks as Google's JSON array of them."""
    assert ctx.key is not None
    try:
        answer = b"[" + b",\r\n".join(bodies) + b"]"
        await keeper.keep(ctx.key.id, ctx.request_id, answer)
    except Exception as exc:
        log.error("could not keep a stream's answer (%s)", type(exc).__name__)
