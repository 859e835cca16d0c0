"""Limits in Redis (nanogate/access/limits.py RedisLimiter, its Lua scripts) and the failed-
authentication throttle (access/throttle.py), against real Redis: the machine's under a prefix of
each test's own, or a redis-server of the test's own that it kills and starts again.

Two limiters on one Redis stand for two nodes: whatever one admits, the other sees."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest

from nanogate.access.limits import Lease, RedisLimiter
from nanogate.access.redisconn import RedisLink
from nanogate.access.throttle import AuthThrottle, RedisAuthThrottle
from nanogate.core import metrics
from nanogate.core.config import Settings
from nanogate.core.errors import RateLimited
from tests.redis_server import SERVER_URL, RedisServer

from .test_limits import key

Opener = Callable[..., RedisLink]


@pytest.fixture
async def opener(redis_prefix: str) -> AsyncIterator[Opener]:
    """Opens links (each a node's) on the machine's Redis, all under the test's prefix."""
    opened: list[RedisLink] = []

    def open_link(url: str = SERVER_URL, **settings: float) -> RedisLink:
        link = RedisLink.open(
            Settings(redis_url=url, redis_key_prefix=redis_prefix, **settings)  # type: ignore[arg-type]
        )
        opened.append(link)
        return link

    yield open_link
    for link in opened:
        await link.close()


def nodes(open_link: Opener, count: int = 2, lease_s: float = 30) -> list[RedisLimiter]:
    return [
        RedisLimiter(open_link(), node=f"node{n}", lease_s=lease_s) for n in range(1, count + 1)
    ]


async def redis_now_ms(link: RedisLink) -> int:
    seconds, micros = await link.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def errors(operation: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "nanogate_redis_errors_total", {"operation": operation}
    )
    return value or 0.0


async def test_two_nodes_share_one_minute(opener: Opener) -> None:
    first, second = nodes(opener)
    limited = key(1, rpm=4)
    for n in range(4):
        node = first if n % 2 else second
        await node.release(await node.acquire(limited))
    for node in (first, second):
        with pytest.raises(RateLimited) as caught:
            await node.acquire(limited)
        assert caught.value.status == 429
        assert caught.value.retry_after in (59, 60)
        assert caught.value.message.startswith("This key allows 4 requests per minute; retry in")
    await second.release(await second.acquire(key(2, rpm=4)))  # another key: its own minute


async def test_retry_after_is_when_the_oldest_hit_leaves_the_minute(
    opener: Opener, redis_prefix: str
) -> None:
    (node,) = nodes(opener, 1)
    now = await redis_now_ms(node.link)
    hits = f"{redis_prefix}key:{{1}}:hits"
    await node.link.client.zadd(hits, {"a": now - 30_000, "b": now - 20_000, "c": now - 10_000})
    with pytest.raises(RateLimited) as caught:
        await node.acquire(key(1, rpm=3))
    assert caught.value.retry_after == 30
    assert caught.value.message == "This key allows 3 requests per minute; retry in 30 s."
    # A hit more than a minute old has left the window: it neither counts nor stays.
    await node.link.client.zadd(f"{redis_prefix}key:{{2}}:hits", {"old": now - 60_001})
    await node.acquire(key(2, rpm=1))
    assert await node.link.client.zcard(f"{redis_prefix}key:{{2}}:hits") == 1
    assert 0 < await node.link.client.pttl(f"{redis_prefix}key:{{2}}:hits") <= 60_001


async def test_two_nodes_share_the_slots(opener: Opener) -> None:
    first, second = nodes(opener)
    limited = key(1, concurrency=2)
    await first.acquire(limited)
    theirs = await second.acquire(limited)
    for node in (first, second):
        with pytest.raises(RateLimited) as caught:
            await node.acquire(limited)
        assert caught.value.retry_after == 1
        assert "allows 2 requests at a time" in caught.value.message
    await second.release(theirs)
    await first.acquire(limited)  # the slot the other node gave back
    with pytest.raises(RateLimited):
        await second.acquire(limited)


async def test_a_refusal_takes_neither_a_slot_nor_a_hit(opener: Opener, redis_prefix: str) -> None:
    first, second = nodes(opener)
    limited = key(1, rpm=2, concurrency=1)
    hits, slots = f"{redis_prefix}key:{{1}}:hits", f"{redis_prefix}key:{{1}}:slots"
    lease = await first.acquire(limited)
    with pytest.raises(RateLimited, match="at a time"):
        await second.acquire(limited)
    assert await first.link.client.zcard(hits) == 1  # refused for the slot: no hit counted
    await first.release(lease)
    await second.release(await second.acquire(limited))
    with pytest.raises(RateLimited, match="per minute"):
        await first.acquire(limited)
    assert await first.link.client.zcard(slots) == 0  # refused for the rate: no slot held


async def test_a_lease_released_twice_frees_one_slot(opener: Opener) -> None:
    (node,) = nodes(opener, 1)
    limited = key(1, concurrency=2)
    lease = await node.acquire(limited)
    await node.acquire(limited)
    await node.release(lease)
    await node.release(lease)
    await node.acquire(limited)
    with pytest.raises(RateLimited):
        await node.acquire(limited)


async def test_a_dead_nodes_slots_come_back_after_the_lease(opener: Opener) -> None:
    # Neither renews (never started): both "die" holding their slot.
    dead, other = nodes(opener, lease_s=1)
    limited = key(1, concurrency=2)
    await dead.acquire(limited)
    await asyncio.sleep(0.6)
    await other.acquire(limited)  # the set itself lives on: the dead lease must go by itself
    with pytest.raises(RateLimited):
        await other.acquire(limited)
    await asyncio.sleep(0.5)
    await other.acquire(limited)


async def test_a_live_node_keeps_its_slots_past_the_lease(opener: Opener) -> None:
    live, other = nodes(opener, lease_s=1)
    live.start()
    try:
        limited = key(1, concurrency=1)
        await live.acquire(limited)
        await asyncio.sleep(2.5)  # two and a half leases: renewed every third of one
        with pytest.raises(RateLimited):
            await other.acquire(limited)
    finally:
        await live.stop()  # it stops renewing, as a dead node would
    await asyncio.sleep(1.1)
    await other.acquire(limited)


async def test_a_key_without_limits_never_asks_redis(opener: Opener, free_port: int) -> None:
    # Redis "at" a port nothing listens on: any call would fail and mark it down.
    node = RedisLimiter(opener(f"redis://127.0.0.1:{free_port}/0"), node="n", lease_s=30)
    leases = [await node.acquire(key(1)) for _ in range(100)]
    for lease in leases:
        await node.release(lease)
    assert node.link.is_up()


@pytest.fixture
def free_port() -> int:
    from tests.simulator.processes import free_port

    return free_port()


async def test_with_redis_down_each_node_applies_the_limits_alone_then_shares_them_again(
    opener: Opener, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    first = RedisLimiter(opener(redis_server.url), node="node1", lease_s=30)
    second = RedisLimiter(opener(redis_server.url), node="node2", lease_s=30)
    limited = key(1, rpm=3)
    await first.acquire(limited)
    before = errors("limits")
    redis_server.kill()
    caplog.set_level(logging.WARNING, "nanogate")
    for node in (first, second):
        admitted = 0
        for _ in range(5):
            started = time.monotonic()
            try:
                lease = await node.acquire(limited)
            except RateLimited:
                pass
            else:
                admitted += 1
                await node.release(lease)
            assert time.monotonic() - started < 0.3
        assert admitted == 3  # the key's limit, on this node alone
        assert not node.link.is_up()
    assert errors("limits") == before + 2  # one failed call per link; then no more tries
    down = [r for r in caplog.records if "Redis is not answering" in r.getMessage()]
    assert len(down) == 2 and all(r.levelno == logging.ERROR for r in down)  # once per node

    redis_server.start()  # empty: it kept nothing
    deadline = time.monotonic() + 5
    while not (first.link.is_up() and second.link.is_up()):
        assert time.monotonic() < deadline, "the probe never saw Redis back"
        await asyncio.sleep(0.05)
    assert sum("Redis answers again" in r.getMessage() for r in caplog.records) == 2
    for n in range(3):
        await (first if n % 2 else second).acquire(limited)
    for node in (first, second):
        with pytest.raises(RateLimited):
            await node.acquire(limited)  # shared again: 3 across both nodes


async def test_a_redis_that_does_not_answer_costs_one_request_the_timeout(
    opener: Opener,
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        node = RedisLimiter(
            opener(f"redis://127.0.0.1:{port}/0", redis_timeout_seconds=0.2),
            node="n",
            lease_s=30,
        )
        limited = key(1, rpm=100, concurrency=10)
        started = time.monotonic()
        lease = await node.acquire(limited)
        assert 0.15 < time.monotonic() - started < 0.5
        assert lease.local
        started = time.monotonic()
        for _ in range(50):
            await node.release(await node.acquire(limited))
        assert time.monotonic() - started < 0.05  # Redis is down: no more waiting on it
    finally:
        server.close()
        for writer in accepted:
            writer.close()


async def test_a_local_lease_is_released_locally_after_redis_came_back(
    opener: Opener, redis_server: RedisServer
) -> None:
    node = RedisLimiter(opener(redis_server.url), node="n", lease_s=30)
    limited = key(1, concurrency=1)
    redis_server.kill()
    local = await node.acquire(limited)
    assert local == Lease(1, local=True)
    redis_server.start()
    deadline = time.monotonic() + 5
    while not node.link.is_up():
        assert time.monotonic() < deadline, "the probe never saw Redis back"
        await asyncio.sleep(0.05)
    shared = await node.acquire(limited)  # Redis' slot: the local one is not Redis' business
    assert shared.slot is not None
    await node.release(local)
    await node.release(shared)
    await node.release(await node.acquire(limited))


# -- failed authentication ---------------------------------------------------------------------


async def test_failed_authentication_counts_every_nodes_failures(opener: Opener) -> None:
    first, second = (RedisAuthThrottle(3, opener()) for _ in range(2))
    await first.failed("203.0.113.7")
    await second.failed("203.0.113.7")
    await first.check("203.0.113.7")  # two failures: still let through
    await second.failed("203.0.113.7")
    for node in (first, second):
        with pytest.raises(RateLimited) as caught:
            await node.check("203.0.113.7")
        assert caught.value.retry_after in (59, 60)
        assert caught.value.message.startswith(
            "Too many requests with an unknown API key from this address; retry in"
        )
    await first.check("203.0.113.8")  # another address


async def test_an_ipv6_host_counts_as_its_64(opener: Opener) -> None:
    throttle = RedisAuthThrottle(2, opener())
    await throttle.failed("2001:db8:0:5::1")
    await throttle.failed("2001:db8:0:5:ffff::2")
    with pytest.raises(RateLimited):
        await throttle.check("2001:db8:0:5::abcd")
    await throttle.check("2001:db8:0:6::1")
    await throttle.failed("::ffff:192.0.2.1")  # an IPv4 client on a dual-stack socket
    await throttle.failed("192.0.2.1")
    with pytest.raises(RateLimited):
        await throttle.check("192.0.2.1")


async def test_the_throttle_in_process_and_while_redis_is_down(
    opener: Opener, redis_server: RedisServer
) -> None:
    alone = AuthThrottle(2)
    down = RedisAuthThrottle(2, opener(redis_server.url))
    redis_server.kill()
    for throttle in (alone, down):
        await throttle.failed("198.51.100.1")
        await throttle.check("198.51.100.1")
        await throttle.failed("198.51.100.1")
        with pytest.raises(RateLimited) as caught:
            await throttle.check("198.51.100.1")
        assert caught.value.retry_after in (59, 60)
    off = AuthThrottle(0)
    for _ in range(100):
        await off.failed("198.51.100.1")
    await off.check("198.51.100.1")
