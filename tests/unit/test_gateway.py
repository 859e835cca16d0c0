"""The engine's steps (nanogate/engine/gateway.py), in process and without a server: a real
Gateway with the real catalog, key store, meter and journal, usage recorder, limiter and router,
over a canned upstream adapter. Every case ends with the books checked (see `rig`): the ledger's
rows sum to every balance, no hold is left pending, and no key is left holding a request slot."""

from __future__ import annotations

import asyncio
import functools
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.access.keys import KeyRecord
from nanogate.access.limits import Limiter
from nanogate.access.switches import Switches
from nanogate.billing.keys import KeyStore
from nanogate.billing.ledger import Tx
from nanogate.billing.meter import Meter
from nanogate.billing.runners import Journal, Work
from nanogate.core.catalog import load_catalog
from nanogate.core.config import UpstreamConfig
from nanogate.core.errors import (
    GatewayError,
    InsufficientCredits,
    Maintenance,
    NotFound,
    PermissionDenied,
    RateLimited,
    StreamCut,
    Unauthenticated,
    Unavailable,
    UpstreamError,
)
from nanogate.core.pace import StreamLimits
from nanogate.core.types import Call, Chunk, ImageRequest, Method, Reply, Usage
from nanogate.db import accounts, holds, results, usage_records
from nanogate.db import ledger as ledger_table
from nanogate.engine.gateway import Context, Gateway, Seal
from nanogate.engine.replay import keep_result
from nanogate.engine.usage import UsageRecorder
from nanogate.routing import Router

from .conftest import ledger_balance

# A fixed day, so no model's lifecycle state moves with the calendar.
TODAY = date(2026, 12, 10)
CATALOG = load_catalog()
TEXT = CATALOG.resolve("gemini-3.8-flash")
IMAGE = CATALOG.resolve("gemini-3-pro-image")
CREDITS = 10_000_000

# The hand-worked prices below rest on these catalog rates (credits per 1M tokens): per token,
# gemini-3.8-flash is 0.75 in and 3.75 out; gemini-3-pro-image 2 in, 12 out, 120 an image token
# and 1,120 tokens a 1K image (134,400 credits).
assert TEXT.prices["input_text"] == 750_000 and TEXT.prices["output_text"] == 3_750_000
assert IMAGE.prices["input_text"] == 2_000_000 and IMAGE.prices["output_text"] == 12_000_000
assert IMAGE.prices["output_image"] == 120_000_000 and IMAGE.image_tokens("1K") == 1120
assert not IMAGE.image_prices

TEXT_ANSWER = b'{"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}]}'
# 1,000 in and 2,000 out at 0.75 and 3.75: 750 + 7,500.
TEXT_USAGE = Usage(input_text=1000, output_text=2000, total=3000)
TEXT_COST = 8_250


def image_answer(tag: str) -> bytes:
    part = {"inlineData": {"mimeType": "image/png", "data": tag}}
    return orjson.dumps({"candidates": [{"content": {"parts": [part]}, "finishReason": "STOP"}]})


# 10 in, 5 out and one 1K image: 20 + 60 + 134,400.
IMAGE_USAGE = Usage(input_text=10, output_text=5, output_image=1120, total=1135, images=1)
IMAGE_COST = 134_480


class Canned:
    """An upstream adapter that answers from a script: `script` for generate (a Reply, or an
    UpstreamError to raise), one step a call; `chunks` for every stream (a Chunk, or an
    UpstreamError that ends it). With `gate` set, generate waits for it before answering; with
    `drip`, a stream's chunks come that many seconds apart and never end (an empty one after
    the scripted ones)."""

    kind = "canned"

    def __init__(self) -> None:
        self.name = "canned"
        self.script: list[Reply | UpstreamError] = []
        self.chunks: list[Chunk | UpstreamError] = []
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Event()  # set by the first call that waits at the gate
        self.opened: list[AsyncIterator[Chunk]] = []
        self.streams_closed = 0
        self.drip: float | None = None

    async def generate(self, call: Call) -> Reply:
        self.calls += 1
        step = self.script.pop(0)
        if self.gate is not None:
            self.arrived.set()
            await self.gate.wait()
        if isinstance(step, UpstreamError):
            raise step
        return step

    def stream(self, call: Call) -> AsyncIterator[Chunk]:
        self.calls += 1
        chunks = self._stream()
        # Held, as a live connection would be: only an explicit close may end one, never the
        # garbage collector.
        self.opened.append(chunks)
        return chunks

    async def _stream(self) -> AsyncIterator[Chunk]:
        try:
            for step in self.chunks:
                if self.drip is not None:
                    await asyncio.sleep(self.drip)
                if isinstance(step, UpstreamError):
                    raise step
                yield step
            while self.drip is not None:
                await asyncio.sleep(self.drip)
                yield Chunk(b"{}")
        finally:
            self.streams_closed += 1

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def reply(body: bytes, usage: Usage) -> Reply:
    return Reply(body, "canned", replace(usage))  # a copy: the engine may add to it


def overloaded() -> UpstreamError:
    return UpstreamError("canned", 503, "overloaded")


def text_call(method: Method = "generateContent") -> Call:
    request = {"contents": [{"role": "user", "parts": [{"text": "Tell me a story."}]}]}
    return Call(new_id(), method, TEXT, orjson.dumps(request), request)


def image_call(prompt: str = "an otter") -> Call:
    request = {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {"imageConfig": {"imageSize": "1K"}},
    }
    body = orjson.dumps(request)
    return Call(new_id(), "generateContent", IMAGE, body, request, ImageRequest(None, "1K"))


def image_certain(call: Call) -> int:
    """What an image call is sure to cost: its body's text at three characters a token (2
    credits each) and the 1K image."""
    return 2 * -(-len(call.body) // 3) + 134_400


def chunk(text: str, output: int, *, finish: bool = False) -> Chunk:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = "STOP"
    body = orjson.dumps({"candidates": [candidate]})
    return Chunk(body, Usage(input_text=100, output_text=output, total=100 + output))


# Cumulative usage, as Gemini streams it; in all 100 in and 80 out: 75 + 300.
STORY = [chunk("Once", 10), chunk(" upon", 40), chunk(" a time.", 80, finish=True)]
STORY_COST = 375
# Left after the second chunk: 100 in and 40 out, 75 + 150.
CUT_COST = 225


def stream_call(call: Call | None = None) -> Call:
    call = call or text_call()
    call.method = "streamGenerateContent"
    return call


def new_id() -> str:
    return f"req-{secrets.token_hex(6)}"


@dataclass
class Rig:
    gateway: Gateway
    upstream: Canned
    engine: AsyncEngine
    keys: KeyStore
    recorder: UsageRecorder
    issued: list[KeyRecord] = field(default_factory=list)

    async def key(self, credits: int = CREDITS, **options: Any) -> tuple[str, KeyRecord]:
        """A key on an account of its own, allowed one request at a time unless told."""
        options.setdefault("concurrency_limit", 1)
        plain, record = await self.keys.create("test", credits=credits, **options)
        self.issued.append(record)
        return plain, record

    def variant(self, **options: Any) -> Gateway:
        """Another gateway on the same parts, with other settings."""
        g = self.gateway
        return Gateway(
            g.catalog, g.keys, g.router, g.recorder, g.limiter, g.meter, today=g.today, **options
        )

    async def arrive(self, plain: str, call: Call) -> Context:
        """A request's first steps, as a route takes them: its key, then its model."""
        ctx = Context(request_id=call.request_id, dialect="gemini")
        key = await self.gateway.authenticate(ctx, plain)
        await self.gateway.resolve(ctx, key, call.model.name)
        return ctx

    async def records(self) -> list[dict[str, Any]]:
        await self.recorder.flush()
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(usage_records).order_by(usage_records.c.id))
            return [dict(row._mapping) for row in rows]

    async def entries(self, request_id: str) -> list[tuple[str, int]]:
        """The request's ledger rows: (kind, amount), oldest first."""
        t = ledger_table
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(t.c.kind, t.c.amount).where(t.c.request_id == request_id).order_by(t.c.id)
            )
            return [(str(kind), int(amount)) for kind, amount in rows]

    async def holds_of(self, request_id: str) -> list[str]:
        async with self.engine.connect() as conn:
            found = await conn.scalars(
                select(holds.c.state).where(holds.c.request_id == request_id)
            )
            return list(found)

    async def balance(self, key: KeyRecord) -> int:
        return await ledger_balance(self.engine, key.account_id)


@pytest.fixture
async def rig(engine: AsyncEngine, journal: Journal) -> AsyncIterator[Rig]:
    upstream = Canned()
    # Google's lifecycle: a shut-down model is not served here unless named.
    config = UpstreamConfig(name="canned", kind="demo", google_lifecycle=True)
    keys = KeyStore(engine, 0)
    recorder = UsageRecorder(engine)
    meter = Meter(journal, enabled=True, node="test", hold_ttl_s=60, wait_s=0.5)
    gateway = Gateway(
        CATALOG,
        keys,
        Router([(config, upstream)]),
        recorder,
        Limiter(),
        meter,
        today=lambda: TODAY,
    )
    rig = Rig(gateway, upstream, engine, keys, recorder)
    yield rig
    await check_books(rig)


async def check_books(rig: Rig) -> None:
    async with rig.engine.connect() as conn:
        pending = await conn.scalar(
            select(func.count()).select_from(holds).where(holds.c.state == "pending")
        )
        account_ids = list(await conn.scalars(select(accounts.c.id)))
    assert pending == 0, "a hold was left pending"
    for account_id in account_ids:
        await ledger_balance(rig.engine, account_id)
    for key in rig.issued:
        if key.concurrency_limit and not key.rpm_limit:
            # Raises if a request slot leaked.
            await rig.gateway.limiter.release(await rig.gateway.limiter.acquire(key))


def context(key: KeyRecord | None = None) -> Context:
    return Context(request_id=new_id(), dialect="gemini", key=key)


async def answered(
    gateway: Gateway, ctx: Context, call: Call, seal: Seal | None = None
) -> Reply | GatewayError:
    """What a route does around generate (web/handling.py): the failure noted, the record
    written once the answer is complete."""
    try:
        return await gateway.generate(ctx, call, seal)
    except GatewayError as error:
        ctx.fail(error)
        return error
    finally:
        gateway.finish(ctx)


# -- authenticate and resolve -------------------------------------------------------------------


async def test_authenticate(rig: Rig) -> None:
    plain, good = await rig.key()
    ctx = context()
    found = await rig.gateway.authenticate(ctx, plain)
    assert found.id == good.id and ctx.key is found
    revoked, record = await rig.key()
    assert await rig.keys.revoke(record.prefix)
    expired, _ = await rig.key(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    # A well-formed key whose secret part is wrong, and keys of no known shape.
    forged = plain[:-4] + ("AAAA" if not plain.endswith("AAAA") else "BBBB")
    cases: list[tuple[str | None, type[GatewayError], int, str]] = [
        (None, Unauthenticated, 401, "No API key"),
        ("", Unauthenticated, 401, "No API key"),
        (forged, Unauthenticated, 401, "API key not valid"),
        ("not-a-key", Unauthenticated, 401, "API key not valid"),
        (plain + "x", Unauthenticated, 401, "API key not valid"),
        (revoked, PermissionDenied, 403, f"API key {record.prefix} is revoked"),
        (expired, PermissionDenied, 403, "is expired"),
    ]
    for presented, kind, status, message in cases:
        ctx = context()
        with pytest.raises(kind, match=message) as caught:
            await rig.gateway.authenticate(ctx, presented)
        assert caught.value.status == status and ctx.key is None
    # Maintenance turns every key away, a good one too.
    with pytest.raises(Maintenance) as closed:
        await rig.variant(switches=Switches(maintenance=True)).authenticate(context(), plain)
    assert closed.value.status == 503 and closed.value.retry_after == 60


async def test_a_key_may_call_only_its_models(rig: Rig) -> None:
    _, key = await rig.key(allowed_models=[TEXT.name, IMAGE.name])
    ctx = context(key)
    assert await rig.gateway.resolve(ctx, key, f"models/{TEXT.name}") is TEXT
    assert (ctx.model, ctx.requested_model, ctx.warning) == (TEXT.name, None, None)
    # An alias runs as its model, which is what the key must allow.
    ctx = context(key)
    assert await rig.gateway.resolve(ctx, key, "nano-banana-pro") is IMAGE
    assert ctx.model == IMAGE.name and ctx.requested_model == "nano-banana-pro"
    refused = re.escape("may not call model 'gemini-3.1-flash-image'")
    with pytest.raises(PermissionDenied, match=refused) as caught:
        await rig.gateway.resolve(context(key), key, "nano-banana-2")
    assert caught.value.status == 403


async def test_unknown_shut_down_and_deprecated_models(rig: Rig) -> None:
    _, key = await rig.key()
    with pytest.raises(NotFound, match="'gemini-9-ultra' is not served") as caught:
        await rig.gateway.resolve(context(key), key, "gemini-9-ultra")
    assert caught.value.status == 404
    # Shut down on 2026-12-01 and replaced by another model: an upstream that follows
    # Google's lifecycle no longer serves it.
    with pytest.raises(NotFound, match="was shut down on 2026-12-01"):
        await rig.gateway.resolve(context(key), key, "gemini-2.5-flash")
    # Deprecated, still served, with a Warning.
    ctx = context(key)
    await rig.gateway.resolve(ctx, key, "gemini-3.1-flash-image")
    assert ctx.warning is not None and ctx.warning.startswith('299 - "gemini-3.1-flash-image')


# -- generate ------------------------------------------------------------------------------------


async def test_generate_settles_the_exact_price_and_records_it(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.script = [reply(TEXT_ANSWER, TEXT_USAGE)]
    call = text_call()
    ctx = await rig.arrive(plain, call)
    answer = await answered(rig.gateway, ctx, call)
    assert isinstance(answer, Reply) and answer.body == TEXT_ANSWER
    assert ctx.cost == TEXT_COST and ctx.status == 200 and ctx.error is None
    assert await rig.balance(key) == CREDITS - TEXT_COST
    assert await rig.holds_of(ctx.request_id) == ["settled"]
    (reserve, held), (settle, back) = await rig.entries(ctx.request_id)
    assert (reserve, settle) == ("reserve", "settle") and held + back == -TEXT_COST
    rig.gateway.finish(ctx)  # a second finish writes nothing more
    [record] = await rig.records()
    expected = {
        "request_id": ctx.request_id,
        "key_id": key.id,
        "key_prefix": key.prefix,
        "account_id": key.account_id,
        "dialect": "gemini",
        "method": "generateContent",
        "model": TEXT.name,
        "requested_model": None,
        "upstream": "canned",
        "status": 200,
        "cost": TEXT_COST,
        "input_text_tokens": 1000,
        "output_text_tokens": 2000,
        "total_tokens": 3000,
        "images": 0,
        "error": None,
        "error_message": None,
    }
    assert {name: record[name] for name in expected} == expected


async def test_an_upstream_failure_refunds_and_records_the_error(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.script = [overloaded()]
    call = text_call()
    ctx = await rig.arrive(plain, call)
    error = await answered(rig.gateway, ctx, call)
    assert isinstance(error, GatewayError) and error.status == 503
    assert await rig.balance(key) == CREDITS
    assert await rig.holds_of(ctx.request_id) == ["refunded"]
    (_, held), (kind, back) = await rig.entries(ctx.request_id)
    assert kind == "refund" and held + back == 0
    [record] = await rig.records()
    assert record["status"] == 503 and record["error"] == "UNAVAILABLE"
    assert "overloaded" in record["error_message"]
    assert record["cost"] == 0 and record["upstream"] is None


async def test_402_before_the_upstream_when_the_certain_cost_is_not_covered(rig: Rig) -> None:
    call = image_call()
    certain = image_certain(call)
    plain, key = await rig.key(credits=certain - 1)
    ctx = await rig.arrive(plain, call)
    with pytest.raises(InsufficientCredits) as caught:
        await rig.gateway.generate(ctx, call)
    assert caught.value.status == 402
    assert f"costs at least {certain:,} credits" in caught.value.message
    assert rig.upstream.calls == 0 and ctx.quote == certain
    assert await rig.entries(ctx.request_id) == [] and await rig.holds_of(ctx.request_id) == []
    assert await rig.balance(key) == certain - 1


async def test_the_quote_is_the_certain_cost_and_enough_to_be_admitted(rig: Rig) -> None:
    call = image_call("a heron on one leg, at dawn, in the style of a woodcut")
    certain = image_certain(call)
    plain, key = await rig.key(credits=certain)
    # The answer costs exactly what was certain: its input, and the image.
    usage = Usage(input_text=-(-len(call.body) // 3), output_image=1120, images=1)
    rig.upstream.script = [reply(image_answer("A"), usage)]
    ctx = await rig.arrive(plain, call)
    await rig.gateway.generate(ctx, call)
    assert ctx.quote == certain and ctx.cost == certain and await rig.balance(key) == 0


async def test_the_per_key_concurrency_limit(rig: Rig) -> None:
    plain, key = await rig.key(concurrency_limit=1)
    rig.upstream.gate = asyncio.Event()
    rig.upstream.script = [reply(TEXT_ANSWER, TEXT_USAGE), reply(TEXT_ANSWER, TEXT_USAGE)]
    calls = [text_call() for _ in range(3)]
    first, second, third = [await rig.arrive(plain, call) for call in calls]
    running = asyncio.create_task(rig.gateway.generate(first, calls[0]))
    await rig.upstream.arrived.wait()
    with pytest.raises(RateLimited, match="1 requests at a time") as caught:
        await rig.gateway.generate(second, calls[1])
    assert caught.value.status == 429 and caught.value.retry_after == 1
    # Turned away before its credits: nothing held, no upstream call.
    assert await rig.entries(second.request_id) == [] and rig.upstream.calls == 1
    rig.upstream.gate.set()
    await running
    # The slot is free again.
    await rig.gateway.generate(third, calls[2])
    assert third.cost == TEXT_COST
    assert await rig.balance(key) == CREDITS - 2 * TEXT_COST
    # A stream holds its slot until it is closed.
    rig.upstream.chunks = list(STORY)
    calls = [stream_call() for _ in range(2)]
    first, second = [await rig.arrive(plain, call) for call in calls]
    _, rest = await rig.gateway.stream(first, calls[0])
    with pytest.raises(RateLimited):
        await rig.gateway.stream(second, calls[1])
    async for _ in rest:
        pass
    _, rest = await rig.gateway.stream(second, calls[1])
    await rest.aclose()


async def test_count_tokens_is_free(rig: Rig) -> None:
    plain, key = await rig.key(credits=0)
    rig.upstream.script = [reply(b'{"totalTokens": 12}', Usage(input_text=12, total=12))]
    call = text_call("countTokens")
    ctx = await rig.arrive(plain, call)
    answer = await answered(rig.gateway, ctx, call)
    assert isinstance(answer, Reply) and answer.body == b'{"totalTokens": 12}'
    assert ctx.cost == 0 and ctx.quote == 0
    assert await rig.entries(ctx.request_id) == [] and await rig.balance(key) == 0
    [record] = await rig.records()
    assert (record["method"], record["status"], record["cost"]) == ("countTokens", 200, 0)


NO_IMAGE = b'{"candidates":[{"content":{"parts":[{"text":"no"}]},"finishReason":"IMAGE_SAFETY"}]}'
NO_IMAGE_USAGE = Usage(input_text=10, output_text=5, total=15)


async def test_an_image_call_answered_without_one_costs_nothing(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.script = [reply(NO_IMAGE, NO_IMAGE_USAGE), reply(NO_IMAGE, NO_IMAGE_USAGE)]
    call = image_call()
    ctx = await rig.arrive(plain, call)
    answer = await answered(rig.gateway, ctx, call)
    assert isinstance(answer, Reply) and ctx.cost == 0
    assert ctx.error == "NO_IMAGE: IMAGE_SAFETY"
    assert await rig.balance(key) == CREDITS
    [record] = await rig.records()
    assert (record["status"], record["cost"], record["error"]) == (200, 0, ctx.error)
    # Unless the operator charges for a blocked prompt: its input, not its output.
    call = image_call()
    ctx = await rig.arrive(plain, call)
    await rig.variant(charge_blocked_prompts=True).generate(ctx, call)
    assert ctx.cost == 20  # the 10 input tokens at 2
    assert await rig.balance(key) == CREDITS - 20


# -- the answer before the charge (issue 17) ------------------------------------------------------


def kept(key_id: int, request_id: str, object_name: str) -> Work[None]:
    """The work that records an answer kept under `object_name`, as a seal returns it."""
    now = datetime.now(UTC)
    return functools.partial(
        keep_result,
        key_id=key_id,
        request_id=request_id,
        status=200,
        content_type="application/json",
        object_name=object_name,
        now=now,
        expires=now + timedelta(hours=1),
    )


async def stored_rows(rig: Rig, request_id: str) -> list[tuple[int, str]]:
    async with rig.engine.connect() as conn:
        found = await conn.execute(
            select(results.c.status, results.c.object_name).where(
                results.c.request_id == request_id
            )
        )
        return [(int(status), str(name)) for status, name in found]


async def test_the_usage_record_of_a_charge_commits_with_it(rig: Rig) -> None:
    plain, _ = await rig.key()
    rig.upstream.script = [reply(TEXT_ANSWER, TEXT_USAGE)]
    call = text_call()
    ctx = await rig.arrive(plain, call)
    await rig.gateway.generate(ctx, call)
    # Already in the database, before the route finishes and with nothing buffered: a crash
    # after the settle cannot lose it.
    async with rig.engine.connect() as conn:
        rows = await conn.execute(
            select(usage_records.c.status, usage_records.c.cost).where(
                usage_records.c.request_id == ctx.request_id
            )
        )
        assert list(rows) == [(200, TEXT_COST)]
    rig.gateway.finish(ctx)
    assert rig.recorder.pending == 0
    assert len(await rig.records()) == 1  # written once


async def test_the_answer_is_sealed_before_the_charge_and_kept_with_it(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.script = [reply(TEXT_ANSWER, TEXT_USAGE)]
    call = text_call()
    ctx = await rig.arrive(plain, call)
    seen: list[list[str]] = []

    async def seal(replies: list[Reply]) -> Work[None]:
        # Nothing is charged yet while the answer is made.
        seen.append(await rig.holds_of(ctx.request_id))
        return kept(key.id, ctx.request_id, "ab/answer.json")

    await rig.gateway.generate(ctx, call, seal)
    assert seen == [["pending"]]
    assert await rig.holds_of(ctx.request_id) == ["settled"]
    assert await stored_rows(rig, ctx.request_id) == [(200, "ab/answer.json")]


async def test_an_answer_that_cannot_be_made_is_not_charged(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.script = [reply(image_answer("A"), IMAGE_USAGE)]
    call = image_call()
    ctx = await rig.arrive(plain, call)

    async def seal(replies: list[Reply]) -> Work[None]:
        raise Unavailable("The gateway's result storage is failing (No space left on device).")

    error = await answered(rig.gateway, ctx, call, seal)
    assert isinstance(error, Unavailable)
    assert await rig.balance(key) == CREDITS
    assert await rig.holds_of(ctx.request_id) == ["refunded"]
    [record] = await rig.records()
    assert (record["status"], record["cost"]) == (503, 0)
    assert "storage" in record["error_message"]


async def test_a_keep_that_fails_in_the_settle_undoes_the_charge(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.script = [reply(TEXT_ANSWER, TEXT_USAGE)]
    call = text_call()
    ctx = await rig.arrive(plain, call)

    async def broken(tx: Tx) -> None:
        await tx.exec("INSERT INTO no_such_table VALUES (1)", {})

    async def seal(replies: list[Reply]) -> Work[None]:
        return broken

    error = await answered(rig.gateway, ctx, call, seal)
    # The charge and the kept answer commit together or not at all: neither, here. The hold
    # the settle could not close is refunded from the meter's retry queue.
    assert isinstance(error, GatewayError) and error.status == 503
    for _ in range(250):  # the queue retries every second: 5 s at most
        if await rig.holds_of(ctx.request_id) == ["refunded"]:
            break
        await asyncio.sleep(0.02)
    assert await rig.holds_of(ctx.request_id) == ["refunded"]
    assert await rig.balance(key) == CREDITS
    [record] = await rig.records()
    assert (record["status"], record["cost"]) == (503, 0)


# -- generate_many -------------------------------------------------------------------------------


async def test_copies_are_charged_only_for_those_that_succeed(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.script = [
        reply(image_answer("A"), IMAGE_USAGE),
        overloaded(),
        reply(image_answer("C"), IMAGE_USAGE),
    ]
    call = image_call()
    ctx = await rig.arrive(plain, call)
    replies = await rig.gateway.generate_many(ctx, call, 3)
    assert [r.body for r in replies] == [image_answer("A"), image_answer("C")]
    assert ctx.quote == 3 * image_certain(call)
    assert ctx.cost == 2 * IMAGE_COST and ctx.usage.images == 2
    assert ctx.error == "1 of 3 failed: UNAVAILABLE"
    assert await rig.balance(key) == CREDITS - 2 * IMAGE_COST
    # One hold for all the copies.
    assert await rig.holds_of(ctx.request_id) == ["settled"]
    assert [kind for kind, _ in await rig.entries(ctx.request_id)] == ["reserve", "settle"]


async def test_copies_fail_only_when_all_fail_with_one_refund(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.script = [overloaded(), overloaded(), overloaded()]
    call = image_call()
    ctx = await rig.arrive(plain, call)
    with pytest.raises(GatewayError) as caught:
        await rig.gateway.generate_many(ctx, call, 3)
    assert caught.value.status == 503 and rig.upstream.calls == 3
    assert await rig.balance(key) == CREDITS
    assert await rig.holds_of(ctx.request_id) == ["refunded"]
    (_, held), (kind, back) = await rig.entries(ctx.request_id)
    assert kind == "refund" and held + back == 0


# -- stream --------------------------------------------------------------------------------------


async def test_a_stream_settles_at_its_finish_chunk_before_passing_it_on(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.chunks = list(STORY)
    call = stream_call()
    ctx = await rig.arrive(plain, call)
    first, rest = await rig.gateway.stream(ctx, call)
    assert first.body == STORY[0].body and ctx.upstream == "canned"
    assert (await anext(rest)).body == STORY[1].body
    assert await rig.holds_of(ctx.request_id) == ["pending"]
    # The finish chunk reaches the caller only once its charge is durable, and its usage
    # record with it (one commit: a crash leaves both or neither); the stream is not closed yet.
    assert (await anext(rest)).body == STORY[2].body
    assert await rig.holds_of(ctx.request_id) == ["settled"] and ctx.cost == STORY_COST
    assert await rig.balance(key) == CREDITS - STORY_COST
    assert rig.upstream.streams_closed == 0 and len(await rig.records()) == 1
    with pytest.raises(StopAsyncIteration):
        await anext(rest)
    # Read to its end, the stream closed itself: the upstream's closed, no second record.
    assert rig.upstream.streams_closed == 1 and rig.recorder.pending == 0
    await rest.aclose()
    [record] = await rig.records()
    assert (record["method"], record["status"]) == ("streamGenerateContent", 200)
    assert record["cost"] == STORY_COST and record["output_text_tokens"] == 80


async def test_a_one_chunk_stream_is_settled_before_it_is_handed_over(rig: Rig) -> None:
    plain, _ = await rig.key()
    rig.upstream.chunks = [chunk("All at once.", 80, finish=True)]
    call = stream_call()
    ctx = await rig.arrive(plain, call)
    _, rest = await rig.gateway.stream(ctx, call)
    state = await rig.holds_of(ctx.request_id)
    await rest.aclose()
    assert state == ["settled"]


async def test_what_a_stream_seals_commits_with_its_charge(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.chunks = list(STORY)
    call = stream_call()
    ctx = await rig.arrive(plain, call)
    sealed: list[tuple[list[bytes], list[str]]] = []

    async def seal(bodies: list[bytes]) -> Work[None]:
        # Every chunk up to the finish chunk, which has not gone out yet; nothing charged.
        sealed.append((list(bodies), await rig.holds_of(ctx.request_id)))
        return kept(key.id, ctx.request_id, "ab/stream.json")

    _, rest = await rig.gateway.stream(ctx, call, seal)
    assert [c.body async for c in rest] == [STORY[1].body, STORY[2].body]
    assert sealed == [([c.body for c in STORY], ["pending"])]
    assert await rig.holds_of(ctx.request_id) == ["settled"]
    assert await stored_rows(rig, ctx.request_id) == [(200, "ab/stream.json")]


async def test_a_stream_whose_seal_fails_is_refunded(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.chunks = list(STORY)
    call = stream_call()
    ctx = await rig.arrive(plain, call)

    async def seal(bodies: list[bytes]) -> Work[None]:
        raise Unavailable("The gateway's result storage is failing (No space left on device).")

    _, rest = await rig.gateway.stream(ctx, call, seal)
    await anext(rest)
    with pytest.raises(Unavailable):
        await anext(rest)
    await rest.aclose()
    assert await rig.balance(key) == CREDITS
    assert await rig.holds_of(ctx.request_id) == ["refunded"]
    assert await stored_rows(rig, ctx.request_id) == []
    [record] = await rig.records()
    assert (record["status"], record["cost"]) == (503, 0)


async def test_a_stream_that_fails_midway_is_refunded(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.chunks = [STORY[0], STORY[1], UpstreamError("canned", 500, "broke")]
    call = stream_call()
    ctx = await rig.arrive(plain, call)
    _, rest = await rig.gateway.stream(ctx, call)
    await anext(rest)
    with pytest.raises(UpstreamError):
        await anext(rest)
    assert ctx.status == 500 and ctx.error == "INTERNAL"
    await rest.aclose()  # what the route does however the response ends
    assert await rig.balance(key) == CREDITS
    assert await rig.holds_of(ctx.request_id) == ["refunded"]
    [record] = await rig.records()
    assert (record["status"], record["cost"], record["error"]) == (500, 0, "INTERNAL")


async def test_a_stream_that_fails_before_its_first_chunk_is_refunded(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.chunks = [UpstreamError("canned", 400, "bad field", reason="INVALID_ARGUMENT")]
    call = stream_call()
    ctx = await rig.arrive(plain, call)
    with pytest.raises(GatewayError, match="bad field") as caught:
        await rig.gateway.stream(ctx, call)
    assert caught.value.status == 400
    assert await rig.balance(key) == CREDITS
    assert await rig.holds_of(ctx.request_id) == ["refunded"]


async def test_a_stream_past_its_deadline_is_cut_and_pays_for_what_was_produced(
    rig: Rig,
) -> None:
    plain, key = await rig.key()
    gateway = rig.variant(stream_limits=StreamLimits(deadline_s=0.4, min_bytes_per_second=0))
    rig.upstream.chunks, rig.upstream.drip = STORY[:2], 0.02
    call = stream_call()
    ctx = await rig.arrive(plain, call)
    _, rest = await gateway.stream(ctx, call)
    bodies = []
    with pytest.raises(StreamCut, match="stream_deadline_seconds"):
        async for piece in rest:
            bodies.append(piece.body)
    assert bodies[0] == STORY[1].body and len(bodies) > 5  # the drip went on until the cut
    assert (ctx.status, ctx.error) == (504, "DEADLINE_EXCEEDED")
    await rest.aclose()  # what the route does however the response ends
    assert rig.upstream.streams_closed == 1
    # Charged like a client that left: the usage of the last chunk with usage (100 in, 40 out).
    assert ctx.cost == CUT_COST and await rig.balance(key) == CREDITS - CUT_COST
    assert await rig.holds_of(ctx.request_id) == ["settled"]
    [record] = await rig.records()
    assert (record["status"], record["cost"], record["error"]) == (
        504,
        CUT_COST,
        "DEADLINE_EXCEEDED",
    )
    assert "stream_deadline_seconds" in record["error_message"]


async def test_a_dripping_stream_is_cut_by_the_minimum_rate(rig: Rig) -> None:
    plain, key = await rig.key()
    limits = StreamLimits(deadline_s=60, min_bytes_per_second=1000, grace_s=0.2)
    gateway = rig.variant(stream_limits=limits)
    # Two bytes every 20 ms is 100 a second, a tenth of the minimum.
    rig.upstream.chunks, rig.upstream.drip = STORY[:2], 0.02
    call = stream_call()
    ctx = await rig.arrive(plain, call)
    started = asyncio.get_running_loop().time()
    _, rest = await gateway.stream(ctx, call)
    with pytest.raises(StreamCut, match="stream_min_bytes_per_second"):
        async for _ in rest:
            pass
    assert asyncio.get_running_loop().time() - started < 2
    await rest.aclose()
    assert ctx.cost == CUT_COST and await rig.balance(key) == CREDITS - CUT_COST
    assert await rig.holds_of(ctx.request_id) == ["settled"]
    [record] = await rig.records()
    assert (record["status"], record["error"]) == (504, "DEADLINE_EXCEEDED")


async def test_a_stream_that_does_not_start_by_the_deadline_is_refunded(rig: Rig) -> None:
    plain, key = await rig.key()
    gateway = rig.variant(stream_limits=StreamLimits(deadline_s=0.2))
    rig.upstream.chunks, rig.upstream.drip = list(STORY), 30
    call = stream_call()
    ctx = await rig.arrive(plain, call)
    with pytest.raises(StreamCut, match=re.escape("did not start within 0.2 s")):
        await gateway.stream(ctx, call)
    assert rig.upstream.streams_closed == 1
    assert await rig.balance(key) == CREDITS
    assert await rig.holds_of(ctx.request_id) == ["refunded"]


async def test_a_whole_answer_whose_upstream_does_not_hang_up_ends_quietly(rig: Rig) -> None:
    plain, key = await rig.key()
    gateway = rig.variant(stream_limits=StreamLimits(deadline_s=0.3, min_bytes_per_second=0))
    rig.upstream.chunks, rig.upstream.drip = list(STORY), 0.02
    call = stream_call()
    ctx = await rig.arrive(plain, call)
    _, rest = await gateway.stream(ctx, call)
    # Its finish chunk came and was paid for; the empty chunks after it go on, then stop.
    bodies = [piece.body async for piece in rest]
    assert STORY[2].body in bodies and ctx.status == 200
    assert rig.upstream.streams_closed == 1
    assert ctx.cost == STORY_COST and await rig.balance(key) == CREDITS - STORY_COST
    [record] = await rig.records()
    assert (record["status"], record["error"]) == (200, None)


async def test_a_client_that_leaves_early_pays_for_what_was_produced(rig: Rig) -> None:
    plain, key = await rig.key()
    rig.upstream.chunks = list(STORY)
    call = stream_call()
    ctx = await rig.arrive(plain, call)
    _, rest = await rig.gateway.stream(ctx, call)
    await anext(rest)
    # What the route does when its client hangs up mid-stream.
    ctx.status, ctx.error = 499, "CLIENT_CLOSED"
    await rest.aclose()
    await rest.aclose()
    assert rig.upstream.streams_closed == 1
    assert ctx.cost == CUT_COST and await rig.balance(key) == CREDITS - CUT_COST
    assert await rig.holds_of(ctx.request_id) == ["settled"]
    [record] = await rig.records()
    assert (record["status"], record["cost"], record["error"]) == (499, CUT_COST, "CLIENT_CLOSED")
    # An image stream left before its image is charged what was produced, not zeroed as an
    # answer without an image.
    rig.upstream.chunks = [chunk("Drawing", 30)]
    call = stream_call(image_call())
    ctx = await rig.arrive(plain, call)
    _, rest = await rig.gateway.stream(ctx, call)
    ctx.status = 499
    await rest.aclose()
    assert ctx.cost == 200 + 360  # 100 in at 2, 30 out at 12
    assert await rig.balance(key) == CREDITS - CUT_COST - 560
