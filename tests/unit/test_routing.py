"""Router order, failover, breaker, stream start, budgets, caps, Retry-After, the prober and
the per-upstream figures, with scripted in-process adapters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from nanogate.core import metrics
from nanogate.core.catalog import load_catalog
from nanogate.core.config import UpstreamConfig
from nanogate.core.errors import (
    BadUpstreamAnswer,
    DeadlineExceeded,
    GatewayError,
    NotFound,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from nanogate.core.types import Call, Chunk, Reply
from nanogate.routing import Router
from nanogate.transport.client import parse_retry_after

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
        self.healthy = True
        self.health_calls = 0

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
        self.health_calls += 1
        return self.healthy

    async def close(self) -> None:
        return None


class Held(Scripted):
    """Answers only once `release` is set (or after `delay` seconds), to hold slots open."""

    def __init__(self, name: str, script: list[Exception | bytes], delay: float = 0.0) -> None:
        super().__init__(name, script)
        self.release = asyncio.Event()
        self.delay = delay
        self.running = 0

    async def _hold(self) -> None:
        self.running += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            else:
                await self.release.wait()
        finally:
            self.running -= 1

    async def generate(self, call: Call) -> Reply:
        await self._hold()
        return await super().generate(call)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        await self._hold()
        yield Chunk(self._next())


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


async def test_only_the_named_upstreams_and_config_for_former_ids() -> None:
    a, b = Scripted("a", [b"ok-a"]), Scripted("b", [b"ok-b"])
    r = router(("a", 0, a), ("b", 1, b))
    # A shut-down model only some upstreams still serve: the others are never asked.
    assert (await r.generate(CALL, only=frozenset({"b"}))).body == b"ok-b" and a.calls == 0
    assert (await r.generate(CALL)).body == b"ok-a"  # the filter is not cached
    with pytest.raises(NotFound):
        await r.generate(CALL, only=frozenset())
    # An upstream configured for a preview id serves the GA id it now runs on.
    ga = load_catalog().resolve("gemini-3-pro-image")
    vendor = router(("v", 0, Scripted("v", [b"ok-v"])), models=["gemini-3-pro-image-preview"])
    reply = await vendor.generate(Call("r", "generateContent", ga, b"{}", {}))
    assert reply.body == b"ok-v"


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


# --- concurrency caps and the bounded queue -----------------------------------------------------


def upstream(name: str, **fields: object) -> UpstreamConfig:
    return UpstreamConfig.model_validate({"name": name, "kind": "demo", **fields})


async def test_no_cap_by_default() -> None:
    a = Held("a", [b"ok"])
    r = Router([(upstream("a"), a)])
    assert upstream("a").max_concurrency is None and r.targets[0].gate is None
    calls = [asyncio.create_task(r.generate(CALL)) for _ in range(300)]
    await asyncio.sleep(0.01)
    assert a.running == 300 and r.status()[0]["in_flight"] == 300
    a.release.set()
    assert all(reply.body == b"ok" for reply in await asyncio.gather(*calls))
    assert r.status()[0]["in_flight"] == 0


async def test_a_full_upstream_past_its_queue_timeout_is_429_with_retry_after() -> None:
    a = Held("a", [b"ok"])
    r = Router([(upstream("a", max_concurrency=1, queue_timeout_s=0.05), a)])
    first = asyncio.create_task(r.generate(CALL))
    await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(RateLimited, match="concurrency limit") as info:
        await r.generate(CALL)
    assert 0.04 < time.monotonic() - started < 1, "a bounded wait, never a hang"
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    assert a.calls == 0 and r.targets[0].waiting == 0
    a.release.set()
    assert (await first).body == b"ok"
    assert r.status()[0]["in_flight"] == 0


async def test_a_slot_freed_within_the_queue_timeout_is_taken() -> None:
    a = Held("a", [b"ok"])
    r = Router([(upstream("a", max_concurrency=1, queue_timeout_s=5), a)])
    first = asyncio.create_task(r.generate(CALL))
    await asyncio.sleep(0)
    second = asyncio.create_task(r.generate(CALL))
    await asyncio.sleep(0.01)
    assert r.status()[0]["waiting"] == 1 and r.status()[0]["in_flight"] == 1
    a.release.set()
    assert [x.body for x in await asyncio.gather(first, second)] == [b"ok", b"ok"]
    assert r.status()[0]["waiting"] == 0 and r.status()[0]["in_flight"] == 0


async def test_after_the_queue_timeout_a_call_fails_over_to_one_with_room() -> None:
    a = Held("a", [b"ok-a"])
    b = Held("b", [b"ok-b"], delay=0.05)
    r = Router(
        [
            (upstream("a", max_concurrency=1, queue_timeout_s=0.1), a),
            (upstream("b", max_concurrency=1, priority=1), b),
        ]
    )
    holding_a = asyncio.create_task(r.generate(CALL))
    await asyncio.sleep(0)
    holding_b = asyncio.create_task(r.generate(CALL))  # spills over to b, busy for 0.05 s
    await asyncio.sleep(0)
    assert (await r.generate(CALL)).body == b"ok-b"  # waited for a, then b had room
    assert (await holding_b).body == b"ok-b"
    a.release.set()
    assert (await holding_a).body == b"ok-a"


async def test_a_stream_holds_its_slot_until_closed_and_the_queue_is_bounded() -> None:
    a = Scripted("a", [b"first"])
    r = Router([(upstream("a", max_concurrency=1, queue_timeout_s=0.05), a)])
    _, _, rest = await r.open_stream(CALL)
    with pytest.raises(RateLimited):
        await r.open_stream(CALL)
    await rest.aclose()
    _, first, again = await r.open_stream(CALL)
    assert first.body == b"first"
    await again.aclose()


# --- retryable statuses and Retry-After ---------------------------------------------------------


@pytest.mark.parametrize("status", [0, 408, 429, 500, 502, 503, 504])
async def test_retryable_statuses_fail_over(status: int) -> None:
    a = Scripted("a", [UpstreamError("a", status, "failed", timeout=status == 0)])
    b = Scripted("b", [b"ok-b"])
    assert (await router(("a", 0, a), ("b", 1, b)).generate(CALL)).body == b"ok-b"


async def test_retry_after_skips_the_upstream_until_then() -> None:
    a = Scripted("a", [UpstreamError("a", 429, "slow down", retry_after=30), b"ok-a"])
    b = Scripted("b", [b"ok-b"])
    r = router(("a", 0, a), ("b", 1, b))
    assert (await r.generate(CALL)).body == b"ok-b"
    for _ in range(3):
        assert (await r.generate(CALL)).body == b"ok-b"
    assert a.calls == 1, "skipped while its Retry-After runs"
    assert r.targets[0].breaker.failures == 1, "one failure, as any 429, no more"
    row = r.status()[0]
    assert 29 <= row["retry_after"] <= 30 and row["skip_until"] is not None
    assert r.health()["a"] == "rate limited"
    r.targets[0].skip_until = time.monotonic() - 1  # the time has come
    assert (await r.generate(CALL)).body == b"ok-a"


async def test_a_skipped_upstream_is_still_asked_when_it_is_the_only_one_left() -> None:
    a = Scripted("a", [UpstreamError("a", 429, "slow down", retry_after=20)])
    b = Scripted("b", [UpstreamError("b", 503, "busy", retry_after=8)])
    r = router(("a", 0, a), ("b", 1, b))
    with pytest.raises(Unavailable):
        await r.generate(CALL)
    assert (a.calls, b.calls) == (1, 1)
    # Both inside their Retry-After: rather than refusing every call, they are still asked.
    with pytest.raises(Unavailable):
        await r.generate(CALL)
    assert (a.calls, b.calls) == (2, 2)
    b.script = [b"ok-b"]
    assert (await r.generate(CALL)).body == b"ok-b"


def test_retry_after_header_forms() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7
    assert parse_retry_after(" 2.5 ") == 3
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90
    assert parse_retry_after(format_datetime(now - timedelta(seconds=90), usegmt=True), now) == 0
    for junk in (None, "", "soon", "nan", "-inf"):
        assert parse_retry_after(junk) is None


# --- the per-request budget ---------------------------------------------------------------------


async def test_max_attempts_caps_the_upstreams_tried() -> None:
    adapters = [Scripted(n, [UpstreamError(n, 503, "busy")]) for n in "abcd"]
    r = Router([(upstream(a.name), a) for a in adapters], max_attempts=2)
    with pytest.raises(Unavailable):
        await r.generate(CALL)
    assert sorted(a.calls for a in adapters) == [0, 0, 1, 1]


async def test_no_upstream_is_asked_twice_in_one_call() -> None:
    a = Scripted("a", [UpstreamError("a", 503, "busy")])
    b = Scripted("b", [UpstreamError("b", 502, "bad gateway")])
    r = Router([(upstream("a"), a), (upstream("b", priority=1), b)], max_attempts=10)
    with pytest.raises(BadUpstreamAnswer):
        await r.generate(CALL)
    assert (a.calls, b.calls) == (1, 1)


async def test_a_final_answer_is_never_sent_again() -> None:
    a = Scripted("a", [UpstreamError("a", 400, "bad field", reason="INVALID_ARGUMENT")])
    b = Scripted("b", [b"ok"])
    r = router(("a", 0, a), ("b", 1, b))
    with pytest.raises(GatewayError):
        await r.generate(CALL)
    assert (a.calls, b.calls) == (1, 0)
    a.script = [b"ok-a"]
    assert (await r.generate(CALL)).body == b"ok-a"
    assert (a.calls, b.calls) == (2, 0), "one success, one call"


async def test_the_deadline_ends_a_slow_attempt_with_504() -> None:
    a = Held("a", [b"late"], delay=5)
    b = Scripted("b", [b"ok-b"])
    r = Router([(upstream("a"), a), (upstream("b", priority=1), b)], deadline_s=0.1)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="deadline"):
        await r.generate(CALL)
    assert time.monotonic() - started < 1 and b.calls == 0
    assert r.status()[0]["in_flight"] == 0 and r.targets[0].breaker.failures == 0


async def test_a_later_attempt_gets_only_the_time_left() -> None:
    class FailsLate(Scripted):
        async def generate(self, call: Call) -> Reply:
            await asyncio.sleep(0.08)
            return await super().generate(call)

    a = FailsLate("a", [UpstreamError("a", 503, "busy")])
    b = Held("b", [b"late"], delay=5)
    r = Router([(upstream("a"), a), (upstream("b", priority=1), b)], deadline_s=0.15)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="busy"):
        await r.generate(CALL)
    assert 0.14 < time.monotonic() - started < 0.5 and b.calls == 0


async def test_the_deadline_covers_a_stream_until_its_first_chunk() -> None:
    a = Held("a", [b"late"], delay=5)
    r = Router([(upstream("a"), a)], deadline_s=0.05)
    with pytest.raises(DeadlineExceeded):
        await r.open_stream(CALL)
    assert r.status()[0]["in_flight"] == 0


async def test_a_slot_wait_counts_against_the_deadline() -> None:
    a = Held("a", [b"ok"])
    r = Router([(upstream("a", max_concurrency=1, queue_timeout_s=30), a)], deadline_s=0.05)
    first = asyncio.create_task(r.generate(CALL))
    await asyncio.sleep(0)
    with pytest.raises(DeadlineExceeded):
        await r.generate(CALL)
    first.cancel()


async def test_nothing_is_retried_after_the_first_chunk() -> None:
    class BreaksMidway(Scripted):
        async def stream(self, call: Call) -> AsyncIterator[Chunk]:
            self.calls += 1
            yield Chunk(b"first-a")
            raise UpstreamError("a", 503, "connection closed mid-response")

    a = BreaksMidway("a", [b""])
    b = Scripted("b", [b"first-b"])
    name, first, rest = await router(("a", 0, a), ("b", 1, b)).open_stream(CALL)
    assert (name, first.body) == ("a", b"first-a")
    with pytest.raises(UpstreamError):
        async for _ in rest:
            pass
    assert (a.calls, b.calls) == (1, 0)


# --- the prober ---------------------------------------------------------------------------------


async def test_the_prober_closes_a_cooled_down_breaker_without_a_client_call() -> None:
    a = Scripted("a", [UpstreamError("a", 500, "boom")])
    r = Router(
        [(upstream("a", breaker_failures=2, breaker_cooldown_s=0.05), a)], probe_every_s=0.01
    )
    r.start()
    try:
        for _ in range(2):
            with pytest.raises(GatewayError):
                await r.generate(CALL)
        assert r.status()[0]["breaker"] == "open"
        a.healthy = False
        await asyncio.sleep(0.08)
        with pytest.raises(Unavailable):
            await r.generate(CALL)  # past the cooldown, but no client call is the probe
        assert a.calls == 2 and a.health_calls >= 1 and r.status()[0]["breaker"] != "closed"
        a.healthy, a.script = True, [b"ok"]
        for _ in range(50):
            if r.targets[0].breaker.closed:
                break
            await asyncio.sleep(0.01)
        assert r.status()[0]["breaker"] == "closed" and a.calls == 2
        assert (await r.generate(CALL)).body == b"ok"
    finally:
        await r.stop()


async def test_a_probed_upstream_is_on_probation() -> None:
    a = Scripted("a", [UpstreamError("a", 500, "boom")])
    r = Router([(upstream("a", breaker_failures=3, breaker_cooldown_s=60), a)])
    breaker = r.targets[0].breaker
    breaker.failures, breaker.open_until = 3, time.monotonic() - 1
    assert breaker.state(time.monotonic()) == "half-open"
    assert await r.probe() == ["a"] and breaker.closed
    with pytest.raises(GatewayError):
        await r.generate(CALL)
    assert not breaker.closed, "one failure after the probe reopens it"


async def test_a_failed_or_hanging_probe_keeps_it_open() -> None:
    class Hangs(Scripted):
        async def health(self) -> bool:
            await asyncio.sleep(60)
            return True

    a, b = Scripted("a", [b"x"]), Hangs("b", [b"x"])
    a.healthy = False
    r = Router([(upstream("a"), a), (upstream("b"), b)])
    for target in r.targets:
        target.breaker.failures, target.breaker.open_until = 5, time.monotonic() - 1
    import nanogate.routing as routing

    routing.PROBE_TIMEOUT_S, saved = 0.05, routing.PROBE_TIMEOUT_S
    try:
        assert await r.probe() == []
    finally:
        routing.PROBE_TIMEOUT_S = saved
    assert [row["breaker"] for row in r.status()] == ["open", "open"]


# --- figures ------------------------------------------------------------------------------------


async def test_status_and_metrics_report_each_upstream() -> None:
    a = Held("a", [b"ok"], delay=0.01)
    b = Scripted("b", [UpstreamError("b", 503, "busy")])
    r = Router([(upstream("a", max_concurrency=8), a), (upstream("b", priority=-1), b)])
    for _ in range(4):
        assert (await r.generate(CALL)).body == b"ok"
    rows = {row["name"]: row for row in r.status()}
    assert rows["a"]["max_concurrency"] == 8 and rows["a"]["error_rate"] == 0
    assert 5 <= rows["a"]["p50_ms"] <= rows["a"]["p99_ms"] < 500
    assert rows["b"]["error_rate"] == 1 and rows["b"]["p50_ms"] is None
    assert rows["b"]["breaker"] == "closed" and rows["b"]["failures_in_a_row"] == 4
    r.start()
    try:
        text = metrics.render().decode()
    finally:
        await r.stop()
    assert 'nanogate_upstream_in_flight{upstream="a"} 0.0' in text
    assert 'nanogate_upstream_breaker_open{upstream="b"} 0.0' in text
    assert 'nanogate_upstream_error_rate{upstream="b"} 1.0' in text
    assert 'nanogate_upstream_latency_seconds_count{upstream="a"} 4.0' in text
    assert 'nanogate_upstream_latency_seconds_bucket{le="0.05",upstream="a"} 4.0' in text
    assert "nanogate_upstream_in_flight{" not in metrics.render().decode(), "withdrawn on stop"


async def test_the_recent_window_is_bounded() -> None:
    from nanogate.routing import WINDOW, Stats

    stats = Stats()
    for i in range(WINDOW * 3):
        stats.succeeded(i / 1000)
        stats.outcome(i % 2 == 0)
    p50, p99 = stats.percentiles()
    assert p50 is not None and p99 is not None and p50 >= 2 * WINDOW / 1000
    assert stats.attempts == WINDOW and stats.error_rate == 0.25


async def test_replace_keeps_unchanged_upstreams_and_hands_back_the_rest() -> None:
    """A config reload: an upstream whose settings did not change keeps its adapter and its
    breaker; a changed or removed one is handed back to close, and calls go to the new set."""
    a, b, c = Scripted("a", [b"a"]), Scripted("b", [b"b"]), Scripted("c", [b"c"])
    r = Router([(upstream("a", breaker_failures=1), a), (upstream("b"), b)], max_attempts=1)
    r.targets[0].breaker.open_until = time.monotonic() + 60  # a is cooling down
    kept = r.targets[0]
    assert not kept.breaker.closed
    built: list[str] = []

    def build(cfg: UpstreamConfig) -> Scripted:
        built.append(cfg.name)
        return c if cfg.name == "c" else Scripted(cfg.name, [b"new " + cfg.name.encode()])

    retired = r.replace(
        [upstream("a", breaker_failures=1), upstream("b", weight=5), upstream("c")],
        build,
        max_attempts=3,
        deadline_s=30,
    )
    assert built == ["b", "c"]  # a did not change: no new adapter
    assert retired == [b]
    assert r.targets[0] is kept and not kept.breaker.closed
    assert [t.name for t in r.targets] == ["a", "b", "c"]
    assert (r.max_attempts, r.deadline_s) == (3, 30)
    reply = await r.generate(CALL)
    assert reply.body in (b"new b", b"c") and b.calls == 0
    every = [t.adapter for t in r.targets]
    assert r.replace([], build, max_attempts=3, deadline_s=30) == every
    assert r.targets == []
