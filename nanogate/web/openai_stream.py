"""Chat completions as a stream: Gemini's chunks as chat.completion.chunk events, then the usage
(when asked) and [DONE]; n image answers, finished first, sent the same way. A mid-stream
failure is a last event the OpenAI SDK raises from."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from nanogate.core import canonical
from nanogate.core.catalog import ModelSpec
from nanogate.core.errors import StreamCut, UpstreamError
from nanogate.core.streams import GuardedStream
from nanogate.core.types import Chunk
from nanogate.dialects import openai
from nanogate.dialects import openai_chat as chat
from nanogate.engine.gateway import Context
from nanogate.web.openai_common import candidates, sse, store_images
from nanogate.web.replay import quoted
from nanogate.web.streaming import RelayStream

DONE = b"data: [DONE]\n\n"


# One of n finished answers: its candidates, usageMetadata and stored images' URLs (or None).
Copy = tuple[list[canonical.Candidate], dict[str, Any], dict[int, str] | None]


def chat_events(
    ctx: Context, spec: ModelSpec, parsed: chat.ChatRequest, copied: list[Copy]
) -> RelayStream:
    """Finished answers (n image calls), sent as a stream."""
    stream = chat.ChatStream(ctx.request_id, spec.name, int(time.time()))

    async def frames() -> AsyncIterator[bytes]:
        tokens = openai.Tokens()
        for found, meta, urls in copied:
            tokens.add(meta)
            for event in stream.feed(found, urls):
                yield sse(event)
        for event in stream.close(tokens if parsed.include_usage else None):
            yield sse(event)
        yield DONE

    async def cleanup() -> None:
        return None

    return RelayStream(frames(), "text/event-stream", cleanup, quoted(ctx))


def chat_stream(
    request: Request,
    ctx: Context,
    spec: ModelSpec,
    parsed: chat.ChatRequest,
    first: Chunk,
    rest: GuardedStream,
    as_urls: bool,
) -> RelayStream:
    """Gemini's stream as chat.completion.chunk events, then usage (if asked) and [DONE]."""
    stream = chat.ChatStream(ctx.request_id, spec.name, int(time.time()))
    completed = False

    async def chunks() -> AsyncIterator[Chunk]:
        yield first
        async for chunk in rest:
            yield chunk

    async def frames() -> AsyncIterator[bytes]:
        nonlocal completed
        last: dict[str, Any] = {}
        try:
            async for chunk in chunks():
                found, meta = candidates(chunk.body, None)
                last = meta or last  # Gemini repeats running totals; the last one counts
                urls = await store_images(request, found) if as_urls else None
                for event in stream.feed(found, urls):
                    yield sse(event)
        except (UpstreamError, StreamCut) as exc:
            # Bytes already went out: no retry, no new status; the SDK raises this event.
            failure = exc if isinstance(exc, StreamCut) else exc.to_gateway_error()
            await rest.aclose()  # charged (or refunded), released and recorded before it goes
            yield b"data: " + openai.error_body(failure) + b"\n\n"
            completed = True
            return
        tokens = openai.Tokens()
        tokens.add(last)
        for event in stream.close(tokens if parsed.include_usage else None):
            yield sse(event)
        yield DONE
        completed = True

    async def cleanup() -> None:
        if not completed and ctx.status == 200:
            ctx.status, ctx.error = 499, "CLIENT_CLOSED"
        await rest.aclose()

    return RelayStream(frames(), "text/event-stream", cleanup, quoted(ctx))
