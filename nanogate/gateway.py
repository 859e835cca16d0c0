"""The layers a request walks through, once and in one direction:

    dialect (parse) -> auth and limits -> router -> upstream adapter -> usage record -> dialect

Dialects call `Gateway` and never touch keys, routing or the database themselves. Credits will
slot in between limits and the router (reserve) and after the upstream (settle).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .catalog import Catalog, ModelSpec
from .errors import GatewayError, PermissionDenied, Unauthenticated, UpstreamError
from .keys import KeyRecord, KeyStore
from .limits import Limiter
from .metrics import observe_request
from .routing import Router
from .streams import GuardedStream
from .types import Call, Chunk, Reply, Usage
from .usage import UsageRecord, UsageRecorder


@dataclass(slots=True)
class Context:
    """What one request has gathered so far; becomes its usage record when it ends."""

    request_id: str
    dialect: str
    method: str = ""
    started: float = field(default_factory=time.perf_counter)
    key: KeyRecord | None = None
    model: str = ""
    upstream: str | None = None
    status: int = 200
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    finished: bool = False

    def fail(self, error: GatewayError) -> None:
        self.status = error.status
        self.error = error.reason


class Gateway:
    def __init__(
        self,
        catalog: Catalog,
        keys: KeyStore,
        router: Router,
        recorder: UsageRecorder,
        limiter: Limiter,
    ) -> None:
        self.catalog = catalog
        self.keys = keys
        self.router = router
        self.recorder = recorder
        self.limiter = limiter

    # -- auth --------------------------------------------------------------------------------

    async def authenticate(self, ctx: Context, presented: str | None) -> KeyRecord:
        if not presented:
            raise Unauthenticated(
                "No API key: send it as the x-goog-api-key header, ?key=, "
                "'Authorization: Bearer <key>' or x-api-key."
            )
        record = await self.keys.authenticate(presented)
        if record is None:
            raise Unauthenticated("API key not valid. Check the key, or ask the operator for one.")
        state = record.status(datetime.now(UTC))
        if state != "active":
            raise PermissionDenied(f"API key {record.prefix} is {state}.")
        ctx.key = record
        return record

    def resolve(self, ctx: Context, key: KeyRecord, model_name: str) -> ModelSpec:
        ctx.model = model_name.removeprefix("models/")
        spec = self.catalog.resolve(model_name)
        ctx.model = spec.name
        if not key.allows(spec.name):
            raise PermissionDenied(f"API key {key.prefix} may not call model '{spec.name}'.")
        return spec

    # -- the call ----------------------------------------------------------------------------

    async def generate(self, ctx: Context, call: Call) -> Reply:
        assert ctx.key is not None
        ctx.method = call.method
        await self.limiter.acquire(ctx.key)
        try:
            reply = await self.router.generate(call)
        finally:
            self.limiter.release(ctx.key)
        ctx.upstream = reply.upstream
        ctx.usage = reply.usage
        return reply

    async def stream(self, ctx: Context, call: Call) -> tuple[Chunk, GuardedStream]:
        """The first chunk (so errors before any byte still get a proper status) and the rest.

        The rest must be closed (aclose) however it ends: that closes the upstream, releases
        the limits and records usage, once.
        """
        key = ctx.key
        assert key is not None
        ctx.method = call.method
        await self.limiter.acquire(key)
        try:
            upstream, first, rest = await self.router.open_stream(call)
        except BaseException:
            self.limiter.release(key)
            raise
        ctx.upstream = upstream
        if first.usage is not None:
            ctx.usage.merge_max(first.usage)

        async def cleanup() -> None:
            try:
                await rest.aclose()
            finally:
                self.limiter.release(key)
                self.finish(ctx)

        return first, GuardedStream(_metered(ctx, rest), cleanup)

    # -- the record --------------------------------------------------------------------------

    def finish(self, ctx: Context) -> None:
        """Write the request's usage record (buffered; no database trip here). Once only."""
        if ctx.finished:
            return
        ctx.finished = True
        latency = time.perf_counter() - ctx.started
        usage = ctx.usage
        # Metrics only label catalog names: a client's typo must not mint a new time series.
        known = ctx.model if self.catalog.get(ctx.model) else "unknown"
        observe_request(ctx.dialect, known, ctx.status, latency, usage)
        record = UsageRecord(
            request_id=ctx.request_id,
            key_id=ctx.key.id if ctx.key else None,
            key_prefix=ctx.key.prefix if ctx.key else "",
            dialect=ctx.dialect,
            method=ctx.method,
            model=ctx.model,
            upstream=ctx.upstream,
            status=ctx.status,
            latency_ms=int(latency * 1000),
            error=ctx.error,
        )
        record.add_usage(usage)
        self.recorder.record(record)


async def _metered(ctx: Context, rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """Pass chunks on, keeping the usage they report and the error that ends them."""
    try:
        async for chunk in rest:
            if chunk.usage is not None:
                ctx.usage.merge_max(chunk.usage)
            yield chunk
    except UpstreamError as exc:
        ctx.fail(exc.to_gateway_error())
        raise
