"""The layers a request walks through, once and in one direction:

    dialect (parse) -> auth and limits -> credits (reserve) -> router -> upstream adapter
        -> credits (settle or refund) -> usage record -> dialect (render)

Dialects call `Gateway` and never touch keys, credits, routing or the database themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from nanogate.access.keys import KeyLookup, KeyRecord
from nanogate.access.limits import Lease, Limiter
from nanogate.access.switches import Switches
from nanogate.access.throttle import AuthThrottle
from nanogate.billing import prices
from nanogate.billing.ledger import Hold, Tx
from nanogate.billing.meter import Meter, database_unavailable
from nanogate.billing.runners import Work
from nanogate.core import canonical, lifecycle
from nanogate.core.catalog import Catalog, ModelSpec, parse_prices, unknown_model
from nanogate.core.errors import (
    GatewayError,
    Maintenance,
    NotFound,
    PermissionDenied,
    StreamCut,
    Unauthenticated,
    UpstreamError,
)
from nanogate.core.metrics import observe_request
from nanogate.core.pace import Pace, StreamLimits
from nanogate.core.payload import Payload
from nanogate.core.streams import GuardedStream
from nanogate.core.types import Call, Chunk, Reply, Usage
from nanogate.engine import usage
from nanogate.engine.usage import UsageRecord, UsageRecorder
from nanogate.routing import Router
from nanogate.upstreams.modelcheck import ModelWatch

# Makes the answer a client will get out of the upstream's replies, before the charge; returns
# what to write in the charge's transaction (see Gateway.generate_many).
Seal = Callable[[list[Reply]], Awaitable[Work[None] | None]]
# What a stream's charge keeps with it, made from the chunk bodies seen so far (None: nothing).
StreamSeal = Callable[[list[bytes]], Awaitable[Work[None] | None]]


@dataclass(slots=True)
class Context:
    """What one request has gathered so far; becomes its usage record when it ends."""

    request_id: str
    dialect: str
    # The client's address, for the failed-authentication throttle (None: not a web request).
    client: str | None = None
    method: str = ""
    started: float = field(default_factory=time.perf_counter)
    key: KeyRecord | None = None
    lease: Lease | None = None  # its hold on the key's limits while admitted
    model: str = ""
    # The name the client sent, where it differs from `model` (an alias, a shut-down id).
    requested_model: str | None = None
    # The Warning header the answer carries (a shut-down or deprecated model), if any.
    warning: str | None = None
    # The upstreams that may take the call (None: any that serves the model).
    route_only: frozenset[str] | None = None
    upstream: str | None = None
    status: int = 200
    error: str | None = None  # the status name (RESOURCE_EXHAUSTED, ...)
    error_message: str | None = None  # the message the client got
    usage: Usage = field(default_factory=Usage)
    cost: int = 0  # credits charged (or, with metering off, what would have been)
    quote: int = 0  # the certain cost: what the call needs available to be admitted
    finished: bool = False
    recorded: bool = False  # the usage record was written with the charge

    def fail(self, error: GatewayError) -> None:
        self.status = error.status
        self.error = error.reason
        self.error_message = error.message


class Gateway:
    def __init__(
        self,
        catalog: Catalog,
        keys: KeyLookup,
        router: Router,
        recorder: UsageRecorder,
        limiter: Limiter,
        meter: Meter,
        *,
        charge_blocked_prompts: bool = False,
        switches: Switches | None = None,
        today: Callable[[], date] = lifecycle.today,
        watch: ModelWatch | None = None,
        allow_unlisted: bool = False,
        unlisted_prices: dict[str, int] | None = None,
        stream_limits: StreamLimits | None = None,
        throttle: AuthThrottle | None = None,
    ) -> None:
        """`watch`: the daily check of which models the gemini upstreams list. With
        `allow_unlisted`, text models the catalog does not list go through where an upstream
        lists them, at `unlisted_prices`. `stream_limits`: how long a stream may take.
        `throttle` counts unknown keys per client address."""
        self.stream_limits = stream_limits or StreamLimits()
        self.catalog = catalog
        self.today = today
        self.watch = watch
        self.allow_unlisted = allow_unlisted
        self.unlisted_prices = unlisted_prices
        self.keys = keys
        self.router = router
        self.recorder = recorder
        self.limiter = limiter
        self.throttle = throttle
        self.meter = meter
        self.charge_blocked_prompts = charge_blocked_prompts
        # Shared with the switch board, which changes it in place (access/switches.py).
        self.switches = switches or Switches()

    # -- auth --------------------------------------------------------------------------------

    async def authenticate(
        self, ctx: Context, presented: str | None, *, operator: bool = False
    ) -> KeyRecord:
        """The caller's active key. Maintenance mode refuses every call first, except the
        operator's (`operator`: the admin API and the console, which must stay up to lift it)."""
        if self.switches.maintenance and not operator:
            raise Maintenance("The gateway is in maintenance mode; retry later.", retry_after=60)
        if not presented:
            raise Unauthenticated(
                "No API key: send it as the x-goog-api-key header, ?key=, "
                "'Authorization: Bearer <key>' or x-api-key."
            )
        if self.throttle is not None and ctx.client is not None:
            await self.throttle.check(ctx.client)
        record = await self.keys.authenticate(presented)
        if record is None:
            if self.throttle is not None and ctx.client is not None:
                await self.throttle.failed(ctx.client)
            raise Unauthenticated("API key not valid. Check the key, or ask the operator for one.")
        state = record.status(datetime.now(UTC))
        if state != "active":
            raise PermissionDenied(f"API key {record.prefix} is {state}.")
        ctx.key = record
        return record

    async def resolve(self, ctx: Context, key: KeyRecord, model_name: str) -> ModelSpec:
        """The model a call runs as, for a key that may call it (see `lookup`)."""
        spec = await self.lookup(ctx, model_name)
        named = self.catalog.get(model_name)
        # A key allowed a shut-down id may call it on its replacement, and the other way round.
        if not (key.allows(spec.name) or (named is not None and key.allows(named.name))):
            raise PermissionDenied(f"API key {key.prefix} may not call model '{spec.name}'.")
        return spec

    async def describe(self, ctx: Context, key: KeyRecord, model_name: str) -> ModelSpec:
        """The model GET /models/{model} shows. One the key may not call is a 404, as if
        unknown: the models list leaves it out too, and a 403 would tell that it exists."""
        try:
            return await self.resolve(ctx, key, model_name)
        except PermissionDenied:
            raise unknown_model(model_name) from None

    async def lookup(self, ctx: Context, model_name: str) -> ModelSpec:
        """Map a client's model name to what the call runs as today (lifecycle.py), noting on
        `ctx` the name asked for, the Warning and the upstreams that may take it. Raises 404 for
        a name no upstream can serve."""
        requested = model_name.removeprefix("models/")
        ctx.model = requested
        try:
            found = lifecycle.resolve(self.catalog, requested, self.today())
        except NotFound:
            spec = await self._unlisted(ctx, requested)
            if spec is None:
                raise
            return spec
        spec = found.spec
        ctx.model = spec.name
        ctx.requested_model = requested if requested != spec.name else None
        if found.shut_down:
            keeping = frozenset(
                t.name for t in self.router.targets if t.config.keeps_shut_down(spec.name)
            )
            if not keeping:
                raise lifecycle.not_served(spec)
            ctx.route_only = keeping
        ctx.warning = found.warning_header
        return spec

    async def _unlisted(self, ctx: Context, name: str) -> ModelSpec | None:
        """A text model the catalog does not list, where allow_unlisted_models is on and an
        upstream's models list (the daily model check) has it."""
        if not self.allow_unlisted or self.watch is None or not name or len(name) > 128:
            return None
        reports = await self.watch.current()
        upstreams = frozenset(
            t.name
            for t in self.router.targets
            if t.config.serves(name) and t.name in reports and reports[t.name].lists(name)
        )
        if not upstreams:
            return None
        in_limit, out_limit = next(reports[u].limits[name] for u in sorted(upstreams))
        ctx.route_only = upstreams
        return ModelSpec(
            name=name,
            display_name=name,
            kind="text",
            input_token_limit=in_limit,
            output_token_limit=out_limit,
            max_input_images=0,
            prices=parse_prices(self.unlisted_prices or {}),
            unlisted=True,
        )

    def callable_models(self, key: KeyRecord) -> list[ModelSpec]:
        """The catalog's models this key may call today: a shut-down one only where an upstream
        still serves it (a shut-down name that runs on its replacement is not a model of its
        own)."""
        on = self.today()
        return [
            spec
            for spec in self.catalog
            if key.allows(spec.name)
            and (
                lifecycle.state(spec, on) != "shut_down"
                or (
                    not lifecycle.switches(spec)
                    and any(t.config.keeps_shut_down(spec.name) for t in self.router.targets)
                )
            )
        ]

    def default_image_model(self) -> str:
        spec = lifecycle.default_image_model(self.catalog, self.today())
        if spec is None:
            raise NotFound("This gateway's catalog has no image model; name one in `model`.")
        return spec.name

    # -- the call ----------------------------------------------------------------------------

    async def _admit(self, ctx: Context, call: Call, copies: int = 1) -> Hold | None:
        """The steps before the upstream: the key's limits, then its credits. A refusal leaves
        nothing taken; once admitted, the caller must `_leave`."""
        key = ctx.key
        assert key is not None
        ctx.method = call.method
        ctx.lease = await self.limiter.acquire(key)
        try:
            return await self.meter.reserve(ctx.request_id, key, self.quote(ctx, call, copies))
        except BaseException:
            await self._leave(ctx)
            raise

    async def count_request(self, key: KeyRecord) -> None:
        """The limits of a request that runs later (a task's create): it counts toward the
        key's requests per minute, but holds no concurrency slot while it waits in the queue,
        which the workers bound."""
        await self.limiter.release(await self.limiter.acquire(key))

    async def _leave(self, ctx: Context) -> None:
        lease, ctx.lease = ctx.lease, None
        if lease is not None:
            await self.limiter.release(lease)

    @asynccontextmanager
    async def _admitted(
        self, ctx: Context, call: Call, copies: int = 1
    ) -> AsyncIterator[Hold | None]:
        """Admitted for the body, which settles the hold: refunded if the body raises."""
        hold = await self._admit(ctx, call, copies)
        try:
            try:
                yield hold
            except BaseException:
                await self.meter.refund(hold)
                raise
        finally:
            await self._leave(ctx)

    async def generate(self, ctx: Context, call: Call, seal: Seal | None = None) -> Reply:
        return (await self.generate_many(ctx, call, 1, seal))[0]

    async def generate_many(
        self, ctx: Context, call: Call, copies: int, seal: Seal | None = None
    ) -> list[Reply]:
        """`copies` runs of one call at once (a Gemini image model makes one image a call):
        one reservation for all of them, a charge for those that succeed. Raises only when
        none succeeded; the answers come back in the order they were started.

        `seal` makes the answer the client will get from the replies (renders it, stores its
        images, keeps it for a retry) before anything is charged: if it raises, the call is
        refunded. The work it returns commits with the charge, as does the usage record."""
        async with self._admitted(ctx, call, copies) as hold:
            if copies == 1:
                reply, cost = await self.execute(ctx, call)
                replies = [reply]
            else:
                replies, cost = await self._copies(ctx, call, copies)
            sealed = await seal(replies) if seal is not None else None
            await self._settle(ctx, hold, cost, sealed)
        return replies

    async def _copies(self, ctx: Context, call: Call, copies: int) -> tuple[list[Reply], int]:
        runs = [self._copy(ctx, call) for _ in range(copies)]
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
        answers = [o for o in outcomes if isinstance(o, tuple)]
        if not answers:
            raise next(o for o in outcomes if isinstance(o, BaseException))
        for sub, _ in answers:
            ctx.upstream = ctx.upstream or sub.upstream
            ctx.usage.add(sub.usage)
            ctx.error = ctx.error or sub.error
            ctx.error_message = ctx.error_message or sub.error_message
        failed = [o for o in outcomes if isinstance(o, GatewayError)]
        if failed and ctx.error is None:
            ctx.error = f"{len(failed)} of {copies} failed: {failed[0].reason}"
            ctx.error_message = failed[0].message
        return [reply for _, reply in answers], sum(sub.cost for sub, _ in answers)

    async def _settle(
        self, ctx: Context, hold: Hold | None, cost: int, sealed: Work[None] | None
    ) -> None:
        """Charge the call, durably before the caller sends a byte of the answer. A charge
        commits with the call's usage record and what `sealed` writes, so a crash right after
        it leaves all three or none."""
        if hold is None:
            # Nothing charged, nothing to tie to a charge: the record goes the buffered way.
            ctx.cost = cost
            if sealed is not None:
                try:
                    await self.meter.journal.submit(sealed)
                except Exception as exc:
                    raise database_unavailable("keep the answer") from exc
            return

        if sealed is None:
            # The record in the settle's own statement: one round trip on PostgreSQL.
            charged = await self.meter.settle(hold, cost, record=usage.charged(self._record(ctx)))
            ctx.cost = charged or 0
            ctx.recorded = charged is not None  # or nothing was charged: `finish` writes it
            return

        async def then(tx: Tx, charged: int) -> None:
            await sealed(tx)
            ctx.cost = charged
            await self.write_record(tx, ctx)

        ctx.cost = await self.meter.settle(hold, cost, then) or 0
        ctx.recorded = True

    async def _copy(self, ctx: Context, call: Call) -> tuple[Context, Reply]:
        sub = Context(
            ctx.request_id, ctx.dialect, key=ctx.key, model=ctx.model, route_only=ctx.route_only
        )
        reply, sub.cost = await self.execute(sub, call)
        return sub, reply

    async def execute(self, ctx: Context, call: Call) -> tuple[Reply, int]:
        """The upstream part alone, for a call whose credits are held elsewhere (a task's are
        reserved when it is created, and settled with its end): route it and price the answer."""
        ctx.method = call.method
        reply = await self.router.generate(call, only=ctx.route_only)
        ctx.upstream = reply.upstream
        ctx.usage = reply.usage
        return reply, self.charge(ctx, call, reply.body)

    async def stream(
        self, ctx: Context, call: Call, seal: StreamSeal | None = None
    ) -> tuple[Chunk, GuardedStream]:
        """The first chunk (so errors before any byte still get a proper status) and the rest.

        The rest must be closed (aclose) however it ends: that closes the upstream, releases
        the limits, settles or refunds the credits and records usage, once. It raises
        StreamCut when it runs past `stream_limits` (core/pace.py): what came until then is
        charged, as for a client that left. What `seal` returns when the charge is made
        commits with it.
        """
        hold = await self._admit(ctx, call)
        pace = Pace(self.stream_limits)
        # Until the first chunk the router's deadline runs too, and its error says more (the
        # last upstream's); the stream's own applies only when it is the shorter.
        shorter = self.stream_limits.deadline_s < self.router.deadline_s
        timer = asyncio.timeout(pace.left() if shorter else None)
        try:
            async with timer:
                upstream, first, rest = await self.router.open_stream(call, only=ctx.route_only)
        except BaseException as exc:
            try:
                await self.meter.refund(hold)
            finally:
                await self._leave(ctx)
            if isinstance(exc, TimeoutError) and timer.expired():
                raise pace.exceeded() from None
            raise
        ctx.upstream = upstream
        pace.seen(first)
        bill = _StreamBill(self, ctx, call, hold, seal)
        bill.seen(first)
        if canonical.finishes(first.body):
            # A one-chunk answer (common for images) is the whole answer: paid before it goes.
            try:
                await bill.settle()
            except BaseException:
                # No byte went out: the caller answers with the error and writes the record.
                await rest.aclose()
                await self._leave(ctx)
                raise

        async def cleanup() -> None:
            try:
                await rest.aclose()
            finally:
                await self._leave(ctx)
                try:
                    # A client that hung up (499) or a stream cut for its pace pays for what
                    # the upstream produced; an upstream that failed mid-way costs nothing.
                    if ctx.status in (200, 499) or bill.cut:
                        await bill.settle()
                    else:
                        await bill.refund()
                finally:
                    self.finish(ctx)

        return first, GuardedStream(bill.metered(rest, pace), cleanup)

    @staticmethod
    def quote(ctx: Context, call: Call, copies: int = 1) -> prices.Quote:
        """The call's quote (`copies` runs of it); its certain cost is told to the client."""
        quote = prices.quote(call).times(copies)
        ctx.quote = quote.certain
        return quote

    def charge(
        self, ctx: Context, call: Call, body: bytes | Payload, *, complete: bool = True
    ) -> int:
        """What an answer costs: its usage at the model's rates, or nothing (by default) when
        it is complete, an image was asked for and none came back. An answer cut short (the
        client left mid-stream) costs what the upstream produced up to then."""
        if call.method == "countTokens":
            return 0
        usage = ctx.usage
        if complete and usage.images == 0 and prices.expects_image(call):
            ctx.error = f"NO_IMAGE: {canonical.no_image_reason(body)}"
            return prices.input_price(call.model, usage) if self.charge_blocked_prompts else 0
        return prices.price(call.model, usage, prices.image_size(call))

    # -- the record --------------------------------------------------------------------------

    def finish(self, ctx: Context) -> None:
        """Write the request's usage record (buffered; no database trip here), unless its
        charge wrote it. Once only."""
        if ctx.finished:
            return
        ctx.finished = True
        latency = time.perf_counter() - ctx.started
        # Metrics only label catalog names: a client's typo must not mint a new time series.
        known = ctx.model if self.catalog.get(ctx.model) else "unknown"
        observe_request(ctx.dialect, known, ctx.status, latency, ctx.usage)
        if not ctx.recorded:
            self.recorder.record(self._record(ctx))

    async def write_record(self, tx: Tx, ctx: Context) -> None:
        """Write the request's usage record in `tx`, its charge's transaction, so a crash leaves
        both or neither. Once it commits the caller sets `ctx.recorded` (`finish` writes no
        other)."""
        await usage.write(tx, self._record(ctx))

    def _record(self, ctx: Context) -> UsageRecord:
        return UsageRecord(
            request_id=ctx.request_id,
            key_id=ctx.key.id if ctx.key else None,
            key_prefix=ctx.key.prefix if ctx.key else "",
            account_id=ctx.key.account_id if ctx.key else None,
            dialect=ctx.dialect,
            method=ctx.method,
            model=ctx.model,
            requested_model=ctx.requested_model,
            upstream=ctx.upstream,
            usage=ctx.usage,
            status=ctx.status,
            latency_ms=int((time.perf_counter() - ctx.started) * 1000),
            cost=ctx.cost,
            error=ctx.error,
            error_message=ctx.error_message,
        )


class _StreamBill:
    """The credits of one stream: usage gathered chunk by chunk, settled once.

    The chunk that carries `finishReason` is the last one that counts: the charge is settled
    (and durable) before that chunk goes to the client, so the client's last byte comes after
    it. A stream that ends without one settles when it closes; so does one cut for its pace
    (`cut`), at what was produced.
    """

    def __init__(
        self,
        gateway: Gateway,
        ctx: Context,
        call: Call,
        hold: Hold | None,
        seal: StreamSeal | None,
    ) -> None:
        self.gateway = gateway
        self.ctx = ctx
        self.call = call
        self.hold = hold
        self.seal = seal
        # With a seal, every chunk's body: what it may keep with the charge.
        self.bodies: list[bytes] = []
        self.last = b""
        self.done = False
        self.cut = False

    def seen(self, chunk: Chunk) -> None:
        if chunk.usage is not None:
            self.ctx.usage.merge_max(chunk.usage)
        self.last = chunk.body
        if self.seal is not None:
            self.bodies.append(chunk.body)

    async def metered(self, rest: AsyncIterator[Chunk], pace: Pace) -> AsyncIterator[Chunk]:
        """Pass chunks on at `pace`, keeping their usage and the error that ends them."""
        try:
            while (chunk := await pace.next(rest)) is not None:
                self.seen(chunk)
                if canonical.finishes(chunk.body):
                    await self.settle()
                yield chunk
        except UpstreamError as exc:
            self.ctx.fail(exc.to_gateway_error())
            raise
        except StreamCut as exc:
            if self.done:
                return  # the answer was whole and paid; only the upstream's hang-up was late
            self.cut = True
            self.ctx.fail(exc)
            raise

    async def settle(self) -> None:
        if not self.done:
            self.done = True
            ctx = self.ctx
            complete = ctx.status != 499 and not self.cut
            charge = self.gateway.charge(ctx, self.call, self.last, complete=complete)
            try:
                sealed = await self.seal(self.bodies) if self.seal is not None else None
            except BaseException as exc:
                if isinstance(exc, GatewayError):
                    ctx.fail(exc)
                await self.gateway.meter.refund(self.hold)  # as a one-shot call's seal is
                raise
            # The record (and what was sealed) commits with the charge, as a one-shot call's
            # does: a crash right after leaves all or none.
            await self.gateway._settle(ctx, self.hold, charge, sealed)

    async def refund(self) -> None:
        if not self.done:
            self.done = True
            await self.gateway.meter.refund(self.hold)
