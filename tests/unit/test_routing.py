"""Router order, failover, breaker and stream start, with scripted in-process adapters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from nanogate.catalog import load_catalog
from nanogate.config import UpstreamConfig
from nanogate.errors import (
    DeadlineExceeded,
    GatewayError,
    NotFound,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from nanogate.routing import Router
from nanogate.types import Call, Chunk, Reply

FAILURE_THRESHOLD = UpstreamConfig(name="x", kind="demo").breaker_failures

SPEC = load_catalog().resolve("gemini-2.5-flash-image")
CALL = Call("r", "generateContent", SPEC, b"{}", {})


class Scripted:
    """An adapter that answers from a list: an exception to raise, or a body to return."""

    kind = "scripted"

    def __init__(self, name: str, script: list[Exception | bytes]) -> None:
        self.name = name
        self.script = script
        self.calls = 0

    def _next(self) -> bytes:
        self.calls += 1
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return step

    async def generate(self, call: Call) -> Reply:
        return Reply(self._next(), self.name)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        yield Chunk(self._next())
        yield Chunk(b"second")

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def router(*specs: tuple[str, int, Scripted], models: list[str] | None = None) -> Router:
    return Router(
        [
            (UpstreamConfig(name=name, kind="demo", priority=prio, models=models or ["*"]), adapter)
            for name, prio, adapter in specs
        ]
    )


async def test_priority_then_failover_on_retryable() -> None:
    a = Scripted("a", [UpstreamError("a", 503, "busy")])
    b = Scripted("b", [b"ok-b"])
    reply = await router(("a", 0, a), ("b", 1, b)).generate(CALL)
    assert reply.body == b"ok-b" and a.calls == 1 and b.calls == 1


async def test_client_fault_is_not_retried() -> None:
    a = Scripted("a", [UpstreamError("a", 400, "bad field", reason="INVALID_ARGUMENT")])
    b = Scripted("b", [b"ok"])
    with pytest.raises(GatewayError) as info:
        await router(("a", 0, a), ("b", 1, b)).generate(CALL)
    assert info.value.status == 400 and info.value.message == "bad field" and b.calls == 0


@pytest.mark.parametrize(
    "error, expected",
    [
        (UpstreamError("a", 429, "slow down", retry_after=7), RateLimited),
        (UpstreamError("a", 0, "timed out", timeout=True), DeadlineExceeded),
        (UpstreamError("a", 0, "refused"), Unavailable),
        (UpstreamError("a", 401, "bad upstream key"), Unavailable),
    ],
)
async def test_final_error_mapping(error: UpstreamError, expected: type[GatewayError]) -> None:
    with pytest.raises(expected) as info:
        await router(("a", 0, Scripted("a", [error]))).generate(CALL)
    assert "bad upstream key" not in info.value.message


async def test_breaker_opens_after_repeated_failures() -> None:
    a = Scripted("a", [UpstreamError("a", 500, "boom")])
    b = Scripted("b", [b"ok"])
    r = router(("a", 0, a), ("b", 1, b))
    for _ in range(FAILURE_THRESHOLD):
        await r.generate(CALL)
    assert a.calls == FAILURE_THRESHOLD
    await r.generate(CALL)
    assert a.calls == FAILURE_THRESHOLD  # cooled down: skipped


async def test_all_cooled_down_is_503_with_retry_after() -> None:
    a = Scripted("a", [UpstreamError("a", 500, "boom")])
    r = router(("a", 0, a))
    for _ in range(FAILURE_THRESHOLD):
        with pytest.raises(GatewayError):
            await r.generate(CALL)
    with pytest.raises(Unavailable, match="cooling down") as info:
        await r.generate(CALL)
    assert info.value.retry_after and info.value.retry_after >= 1
    assert a.calls == FAILURE_THRESHOLD


async def test_half_open_probe_closes_the_breaker() -> None:
    a = Scripted("a", [UpstreamError("a", 500, "boom")])
    r = Router(
        [(UpstreamConfig(name="a", kind="demo", breaker_failures=1, breaker_cooldown_s=0.05), a)]
    )
    with pytest.raises(GatewayError):
        await r.generate(CALL)
    with pytest.raises(Unavailable):
        await r.generate(CALL)
    import asyncio

    await asyncio.sleep(0.06)
    a.script = [b"ok"]
    assert (await r.generate(CALL)).body == b"ok"
    assert (await r.generate(CALL)).body == b"ok"


async def test_unserved_model() -> None:
    r = router(("a", 0, Scripted("a", [b"x"])), models=["gemini-2.5-pro"])
    with pytest.raises(NotFound):
        await r.generate(CALL)


async def test_stream_fails_over_before_first_chunk_only() -> None:
    a = Scripted("a", [UpstreamError("a", 503, "busy")])
    b = Scripted("b", [b"first-b"])
    name, first, rest = await router(("a", 0, a), ("b", 1, b)).open_stream(CALL)
    assert (name, first.body) == ("b", b"first-b")
    assert [c.body async for c in rest] == [b"second"]


async def test_weights_spread_within_a_group() -> None:
    a, b = Scripted("a", [b"a"]), Scripted("b", [b"b"])
    r = Router(
        [
            (UpstreamConfig(name="a", kind="demo", weight=1), a),
            (UpstreamConfig(name="b", kind="demo", weight=9), b),
        ]
    )
    for _ in range(400):
        await r.generate(CALL)
    assert 200 < b.calls < 400 and a.calls > 10


async def test_untried_upstreams_keep_their_breaker_state() -> None:
    a = Scripted("a", [b"ok-a"])
    b = Scripted("b", [b"ok-b"])
    r = router(("a", 0, a), ("b", 1, b))
    backup = r.targets[1].breaker
    backup.failures, backup.open_until = 5, 1.0  # cooled down long ago: due a probe
    await r.generate(CALL)
    assert backup.open_until == 1.0, "listing candidates must not spend b's probe"
    a.script = [UpstreamError("a", 503, "busy")]
    assert (await r.generate(CALL)).body == b"ok-b"
    assert backup.closed


async def test_a_client_fault_during_a_probe_closes_the_breaker() -> None:
    a = Scripted("a", [UpstreamError("a", 400, "bad request")])
    r = router(("a", 0, a))
    r.targets[0].breaker.failures, r.targets[0].breaker.open_until = 5, 1.0
    with pytest.raises(GatewayError):
        await r.generate(CALL)
    assert r.targets[0].breaker.closed


async def test_an_abandoned_probe_reopens_after_another_cooldown() -> None:
    class Boom(Exception):
        pass

    a = Scripted("a", [Boom()])
    r = Router([(UpstreamConfig(name="a", kind="demo", breaker_cooldown_s=0.05), a)])
    r.targets[0].breaker.failures, r.targets[0].breaker.open_until = 5, 1.0
    with pytest.raises(Boom):
        await r.generate(CALL)
    with pytest.raises(Unavailable):
        await r.generate(CALL)  # the probe was spent; the breaker re-armed
    await asyncio.sleep(0.06)
    a.script = [b"ok"]
    assert (await r.generate(CALL)).body == b"ok"


async def test_a_full_upstream_spills_over() -> None:
    release = asyncio.Event()

    class Slow(Scripted):
        async def generate(self, call: Call) -> Reply:
            await release.wait()
            return await super().generate(call)

    a, b = Slow("a", [b"ok-a"]), Scripted("b", [b"ok-b"])
    r = Router(
        [
            (UpstreamConfig(name="a", kind="demo", max_concurrency=1), a),
            (UpstreamConfig(name="b", kind="demo", priority=1), b),
        ]
    )
    first = asyncio.create_task(r.generate(CALL))
    await asyncio.sleep(0)
    assert (await r.generate(CALL)).body == b"ok-b"
    release.set()
    assert (await first).body == b"ok-a"


async def test_an_abandoned_stream_gives_its_slot_back() -> None:
    a = Scripted("a", [b"first"])
    r = Router([(UpstreamConfig(name="a", kind="demo", max_concurrency=1), a)])
    _, _, rest = await r.open_stream(CALL)
    assert r.targets[0].gate.locked()
    await rest.aclose()  # closed before it was ever iterated
    assert not r.targets[0].gate.locked()
    await rest.aclose()  # and closing twice releases once
    _, _, again = await r.open_stream(CALL)
    assert [c.body async for c in again] == [b"second"]
    assert not r.targets[0].gate.locked()  # read to the end: released without aclose
