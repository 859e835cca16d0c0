"""Limits shared by the worker processes of one node (nanogate/access/shared.py): the
supervisor's server and two workers' links over a real Unix socket, in one event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nanogate.access.shared import LimitsLink, LimitsServer, SharedLimiter, SharedThrottle
from nanogate.core.errors import RateLimited

from .test_limits import key


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, asyncio.AbstractServer]]:
    path = str(tmp_path / "limits")
    running = await LimitsServer(auth_failures_per_minute=2).serve(path)
    yield path, running
    running.close()


async def linked(path: str) -> LimitsLink:
    link = LimitsLink(path)
    await link.start()
    return link


async def test_two_workers_share_one_minute_and_one_count(
    server: tuple[str, asyncio.AbstractServer],
) -> None:
    path, _ = server
    one, two = SharedLimiter(await linked(path)), SharedLimiter(await linked(path))
    minute = key(1, rpm=3)
    for limiter in (one, two, one):
        await limiter.release(await limiter.acquire(minute))
    with pytest.raises(RateLimited, match="3 requests per minute") as full:
        await two.acquire(minute)
    assert full.value.retry_after is not None and full.value.retry_after >= 1
    slots = key(2, concurrency=2)
    held = [await one.acquire(slots), await two.acquire(slots)]
    with pytest.raises(RateLimited, match="2 requests at a time"):
        await one.acquire(slots)
    await two.release(held[1])
    await asyncio.sleep(0.05)  # a release is told, not asked: let it land
    await one.release(await one.acquire(slots))
    await one.link.close()
    await two.link.close()


async def test_a_dead_workers_slots_come_back_and_a_cancelled_admission_is_undone(
    server: tuple[str, asyncio.AbstractServer],
) -> None:
    path, _ = server
    dying, living = await linked(path), await linked(path)
    slots = key(3, concurrency=1)
    await SharedLimiter(dying).acquire(slots)
    with pytest.raises(RateLimited):
        await SharedLimiter(living).acquire(slots)
    await dying.close()  # the worker died holding its slot
    await asyncio.sleep(0.05)
    limiter = SharedLimiter(living)
    # Asked, then given up on before the answer: the admission is handed back.
    asking = asyncio.create_task(limiter.acquire(slots))
    await asyncio.sleep(0)
    asking.cancel()
    await asyncio.sleep(0.05)
    await limiter.release(await limiter.acquire(slots))
    await living.close()


async def test_failed_authentication_counts_across_workers(
    server: tuple[str, asyncio.AbstractServer],
) -> None:
    path, _ = server
    one, two = SharedThrottle(2, await linked(path)), SharedThrottle(2, await linked(path))
    await one.failed("203.0.113.9")
    await two.failed("203.0.113.9")
    await asyncio.sleep(0.05)
    await one.check("198.51.100.1")  # another address is not counted with it
    with pytest.raises(RateLimited, match="unknown API key"):
        await two.check("203.0.113.9")
    await one.link.close()
    await two.link.close()


async def test_a_worker_whose_supervisor_is_gone_counts_on_its_own(
    server: tuple[str, asyncio.AbstractServer],
) -> None:
    path, running = server
    link = await linked(path)
    limiter = SharedLimiter(link)
    running.close()
    await running.wait_closed()
    # Python's server closes the accepted connections on close() only from 3.12: end ours.
    link._writer.transport.abort()  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    assert not link.up()
    slots = key(4, concurrency=1)
    lease = await limiter.acquire(slots)
    assert lease.local
    with pytest.raises(RateLimited):
        await limiter.acquire(slots)
    await limiter.release(lease)
    await limiter.release(await limiter.acquire(slots))
    await link.close()
