"""State the nodes share through Redis (nanogate/access/cluster.py): upstream cooldowns and the
probe lock, and routers and key caches kept in step over pub/sub, against real Redis under a
prefix of each test's own (or a redis-server of the test's own, which it kills).

Two links, buses and routers stand for two nodes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from nanogate.access.cluster import Bus, Cooldowns
from nanogate.access.keys import KeyLookup
from nanogate.access.redisconn import RedisLink
from nanogate.core.config import Settings
from nanogate.core.errors import GatewayError, UpstreamError
from nanogate.routing import Router
from tests.redis_server import SERVER_URL, RedisServer

from .test_routing import CALL, Scripted, upstream

Node = Callable[..., Awaitable[Bus]]


@pytest.fixture
async def node(redis_prefix: str) -> AsyncIterator[Node]:
    """Opens a node's link and bus (listening) on the machine's Redis, under the test's prefix."""
    opened: list[tuple[RedisLink, Bus]] = []

    async def open_node(
        name: str, url: str = SERVER_URL, *, parts: Callable[[Bus], None] | None = None
    ) -> Bus:
        link = RedisLink.open(Settings(redis_url=url, redis_key_prefix=redis_prefix))
        bus = Bus(link, name)
        if parts is not None:
            parts(bus)
        bus.start()
        await asyncio.wait_for(bus.listening.wait(), 5)
        opened.append((link, bus))
        return bus

    yield open_node
    for link, bus in opened:
        await bus.stop()
        await link.close()


async def eventually(check: Callable[[], bool], within: float = 2.0) -> float:
    """Seconds until `check()` held; fails after `within`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, "never happened"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


# --- the store ------------------------------------------------------------------------------


async def test_a_reported_cooldown_is_there_for_a_node_that_asks_later(node: Node) -> None:
    first, second = Cooldowns(await node("n1")), Cooldowns(await node("n2"))
    assert await second.current(["a", "b"]) == []
    await first.report("a", open_s=30)
    await first.report("b", skip_s=5)
    found = {m["upstream"]: m for m in await second.current(["a", "b", "c"])}
    assert set(found) == {"a", "b"}
    assert 29 < found["a"]["open_s"] <= 30 and found["a"]["node"] == "n1"
    assert found["a"]["skip_s"] == 0 and 4 < found["b"]["skip_s"] <= 5
    await first.recovered("a")
    assert [m["upstream"] for m in await second.current(["a", "b"])] == ["b"]


async def test_a_cooldown_ends_by_itself(node: Node) -> None:
    first, second = Cooldowns(await node("n1")), Cooldowns(await node("n2"))
    await first.report("a", open_s=0.1)
    await asyncio.sleep(0.15)
    assert await second.current(["a"]) == []


async def test_one_node_at_a_time_takes_the_probe(node: Node) -> None:
    first, second = Cooldowns(await node("n1")), Cooldowns(await node("n2"))
    assert await first.take_probe("a", 10)
    assert not await second.take_probe("a", 10)
    assert not await first.take_probe("a", 10)
    assert await second.take_probe("b", 10)  # per upstream
    await first.release_probe("a")
    assert await second.take_probe("a", 10)


async def test_with_redis_down_each_node_probes_and_nothing_raises(
    node: Node, redis_server: RedisServer
) -> None:
    alone = Cooldowns(await node("n1", redis_server.url))
    assert await alone.take_probe("a", 10)
    redis_server.kill()
    await alone.report("a", open_s=30)  # dropped, quietly
    await alone.recovered("a")
    assert await alone.take_probe("a", 10)  # nobody to ask: probe alone
    assert not alone.bus.link.is_up()


# --- routers in step ------------------------------------------------------------------------


def pair_router(breaker_failures: int = 2, cooldown_s: float = 30) -> tuple[Router, Scripted]:
    failing = Scripted("a", [UpstreamError("a", 500, "boom")])
    spare = Scripted("b", [b"ok-b"])
    router = Router(
        [
            (
                upstream("a", breaker_failures=breaker_failures, breaker_cooldown_s=cooldown_s),
                failing,
            ),
            (upstream("b", priority=1), spare),
        ],
        probe_every_s=3600,  # probe() is called by the test
    )
    return router, failing


async def test_an_upstream_failing_on_one_node_is_skipped_by_the_other(node: Node) -> None:
    router_a, failing_a = pair_router()
    router_b, failing_b = pair_router()
    await node("n1", parts=lambda bus: router_a.share(Cooldowns(bus)))
    await node("n2", parts=lambda bus: router_b.share(Cooldowns(bus)))
    for _ in range(2):
        assert (await router_a.generate(CALL)).body == b"ok-b"
    assert failing_a.calls == 2
    took = await eventually(lambda: not router_b.targets[0].breaker.closed)
    assert took < 1.0
    # B never asked "a": it went straight to the spare.
    assert (await router_b.generate(CALL)).body == b"ok-b"
    assert failing_b.calls == 0
    row = router_b.status()[0]
    assert row["breaker"] == "open" and row["reported_by"] == "n1"
    assert router_b.samples()[0].breaker_open


async def test_a_retry_after_on_one_node_is_honoured_by_the_other(node: Node) -> None:
    router_a, failing_a = pair_router(breaker_failures=100)
    router_b, failing_b = pair_router(breaker_failures=100)
    failing_a.script = [UpstreamError("a", 429, "slow down", retry_after=20)]
    await node("n1", parts=lambda bus: router_a.share(Cooldowns(bus)))
    await node("n2", parts=lambda bus: router_b.share(Cooldowns(bus)))
    assert (await router_a.generate(CALL)).body == b"ok-b"
    await eventually(lambda: router_b.targets[0].skip_until > time.monotonic())
    assert (await router_b.generate(CALL)).body == b"ok-b" and failing_b.calls == 0
    assert 15 <= router_b.status()[0]["retry_after"] <= 20


async def test_a_node_started_later_learns_what_is_cooling_down(node: Node) -> None:
    router_a, _ = pair_router()
    await node("n1", parts=lambda bus: router_a.share(Cooldowns(bus)))
    for _ in range(2):
        await router_a.generate(CALL)
    await asyncio.sleep(0.1)  # the report is written in the background
    late, failing_late = pair_router()
    await node("n3", parts=lambda bus: late.share(Cooldowns(bus)))
    assert late.status()[0]["breaker"] == "open"
    assert (await late.generate(CALL)).body == b"ok-b" and failing_late.calls == 0


async def test_only_one_node_probes_and_its_verdict_reaches_the_other(node: Node) -> None:
    class Slow(Scripted):
        async def health(self) -> bool:
            self.health_calls += 1
            await asyncio.sleep(0.2)
            return self.healthy

    routers = []
    adapters = []
    for _ in range(2):
        adapter = Slow("a", [UpstreamError("a", 500, "boom")])
        routers.append(
            Router([(upstream("a", breaker_failures=1, breaker_cooldown_s=30), adapter)])
        )
        adapters.append(adapter)
    await node("n1", parts=lambda bus: routers[0].share(Cooldowns(bus)))
    await node("n2", parts=lambda bus: routers[1].share(Cooldowns(bus)))
    for router in routers:  # both cooled down, both past the cooldown: both due a probe
        breaker = router.targets[0].breaker
        breaker.failures, breaker.open_until = 1, time.monotonic() - 1
    back = await asyncio.gather(routers[0].probe(), routers[1].probe())
    assert sorted(back, key=len) == [[], ["a"]]
    assert adapters[0].health_calls + adapters[1].health_calls == 1
    await eventually(lambda: all(r.targets[0].breaker.closed for r in routers))
    assert all(r.status()[0]["breaker"] == "closed" for r in routers)
    # A failed probe keeps it open on both, for another cooldown.
    for router in routers:
        breaker = router.targets[0].breaker
        breaker.failures, breaker.open_until = 1, time.monotonic() - 1
    for adapter in adapters:
        adapter.healthy = False
    await routers[0].probe()
    await eventually(lambda: routers[1].status()[0]["breaker"] == "open")
    with pytest.raises(GatewayError, match="cooling down"):
        await routers[1].generate(CALL)
    assert adapters[1].calls == 0


async def test_with_redis_down_each_router_keeps_its_own_breaker(
    node: Node, redis_server: RedisServer
) -> None:
    router_a, _ = pair_router()
    router_b, failing_b = pair_router()
    await node("n1", redis_server.url, parts=lambda bus: router_a.share(Cooldowns(bus)))
    await node("n2", redis_server.url, parts=lambda bus: router_b.share(Cooldowns(bus)))
    redis_server.kill()
    for _ in range(2):
        assert (await router_a.generate(CALL)).body == b"ok-b"
    assert router_a.status()[0]["breaker"] == "open"
    await asyncio.sleep(0.2)
    assert router_b.status()[0]["breaker"] == "closed"
    assert (await router_b.generate(CALL)).body == b"ok-b" and failing_b.calls == 1


# --- key caches in step ----------------------------------------------------------------------


async def test_a_key_change_on_one_node_drops_it_from_the_others_cache(node: Node) -> None:
    # No database needed: the cache is what is under test, filled by hand.
    caches = [KeyLookup(None, cache_seconds=60) for _ in range(2)]  # type: ignore[arg-type]
    await node("n1", parts=caches[0].listen)
    await node("n2", parts=caches[1].listen)
    for cache in caches:
        cache._cache["ng_0badcafe"] = (time.monotonic() + 60, None)
        cache._cache["ng_1badcafe"] = (time.monotonic() + 60, None)
    await caches[0].changed("ng_0badcafe")
    assert "ng_0badcafe" not in caches[0]._cache
    took = await eventually(lambda: "ng_0badcafe" not in caches[1]._cache)
    assert took < 1.0
    assert "ng_1badcafe" in caches[1]._cache
