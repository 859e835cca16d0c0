"""The Gemini stream as it goes out: SSE events (`alt=sse`) or Google's JSON array of chunks, a
mid-stream failure as a last chunk the SDK raises from, and the rescue path that finishes an
image stream whose client left and keeps it for GET /v1/results/{request_id}."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from nanogate.billing.runners import Work
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


class Rescue:
    """The rescue path of one image stream: if its client leaves, or the stream is cut for its
    pace, the answer its charge pays for is kept for GET /v1/results/{request_id}, in the
    commit of that charge (a crash right after leaves both or neither)."""

    def __init__(self, ctx: Context, keeper: ResultKeeper) -> None:
        self.ctx = ctx
        self.keeper = keeper
        self.wanted = False  # the client left, or the stream was cut: keep what is charged
        self.error: bytes | None = None  # the last chunk a client that stayed got instead
        self.bodies: list[bytes] = []
        self.kept = False

    async def seal(self, bodies: list[bytes]) -> Work[None] | None:
        """Gateway.stream's seal: the work that keeps the answer, once it is wanted."""
        self.bodies = bodies
        if not self.wanted:
            return None
        try:
            work = await self.keeper.sealed(self._key(), self.ctx.request_id, self._answer())
        except Exception as exc:
            # The client is gone: it is charged what was produced, as any that leaves is.
            log.error("could not keep a stream's answer (%s)", type(exc).__name__)
            return None
        self.kept = True
        return work

    async def keep_late(self) -> None:
        """Keep an answer charged before its client left (it left during the last chunk)."""
        if self.kept or not self.bodies:
            return
        try:
            await self.keeper.keep(self._key(), self.ctx.request_id, self._answer())
        except Exception as exc:
            log.error("could not keep a stream's answer (%s)", type(exc).__name__)

    def _answer(self) -> bytes:
        """The chunks as Google's JSON array of them."""
        bodies = [*self.bodies, self.error] if self.error is not None else self.bodies
        return b"[" + b",\r\n".join(bodies) + b"]"

    def _key(self) -> int:
        assert self.ctx.key is not None
        return self.ctx.key.id


def relay(
    ctx: Context,
    first: Chunk,
    rest: GuardedStream,
    *,
    sse: bool,
    rescue: Rescue | None,
) -> RelayStream:
    """SSE events, or the JSON array Google sends when `alt` is not `sse`."""
    completed = False

    async def frames() -> AsyncIterator[bytes]:
        nonlocal completed
        yield gemini.sse_event(first.body) if sse else b"[" + first.body
        try:
            async for chunk in rest:
                yield gemini.sse_event(chunk.body) if sse else b",\r\n" + chunk.body
        except (UpstreamError, StreamCut) as exc:
            # Bytes already went out, so no retry and no status change: the error travels as
            # a final chunk the SDK raises from.
            failure = exc if isinstance(exc, StreamCut) else exc.to_gateway_error()
            error = gemini.error_body(failure)
            if isinstance(exc, StreamCut) and rescue is not None:
                # A cut image stream is charged what it produced, and a client that left
                # during the drip is only noticed now: kept, as the rescue path keeps.
                rescue.wanted, rescue.error = True, error
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
            if rescue is not None:
                await _finish_for_later(ctx, rest, rescue)
            else:
                ctx.status, ctx.error = 499, "CLIENT_CLOSED"
        await rest.aclose()

    media_type = "text/event-stream" if sse else JSON_TYPE
    return RelayStream(frames(), media_type, cleanup, quoted(ctx))


async def _finish_for_later(ctx: Context, rest: GuardedStream, rescue: Rescue) -> None:
    """The client left an image stream: read it to its end (billed whole as it passes the
    meter, and kept with that charge) for GET /v1/results/{request_id}. A stream cut for its
    pace is charged what it produced, so that much is kept, ending with the error a client
    that stayed would have got."""
    assert ctx.key is not None
    rescue.wanted = True
    with rescue.keeper.running(ctx.key.id, ctx.request_id):
        try:
            async for _ in rest:
                pass
        except UpstreamError:
            return  # the stream failed: refunded when it closes, nothing to keep
        except StreamCut as exc:
            rescue.error = gemini.error_body(exc)
            await rest.aclose()  # charged for what came, and kept with the charge
        await rescue.keep_late()
