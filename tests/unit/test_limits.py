"""Per-key limits (nanogate/access/limits.py): requests per minute over a moving window, with a
Retry-After that says when the window frees a slot, and requests at a time, given back by
release()."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from nanogate.access.keys import KeyRecord
from nanogate.access.limits import Limiter
from nanogate.core.errors import RateLimited


def key(key_id: int, *, rpm: int | None = None, concurrency: int | None = None) -> KeyRecord:
    return KeyRecord(
        id=key_id,
        prefix=f"ng_{key_id:08x}",
        name="k",
        is_admin=False,
        account_id=key_id,
        account_name="a",
        balance=0,
        created_at=datetime.now(UTC),
        expires_at=None,
        revoked_at=None,
        allowed_models=None,
        rpm_limit=rpm,
        concurrency_limit=concurrency,
    )


class Clock:
    """Wall time the test moves by hand (the rate window reads time.time)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1_800_000_000.0  # whole seconds: the window's edge falls exactly on one
        monkeypatch.setattr(time, "time", lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def test_no_limits_admit_everything() -> None:
    limiter, free = Limiter(), key(1)
    leases = [await limiter.acquire(free) for _ in range(1000)]
    for lease in leases:
        await limiter.release(lease)


async def test_requests_per_minute_and_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    limiter, limited = Limiter(), key(1, rpm=3)
    for _ in range(3):
        # Giving the slot back does not give the minute's hit back.
        await limiter.release(await limiter.acquire(limited))
        clock.advance(10)
    # Hits at 0, 10 and 20 s; now 30 s: the first leaves the window at 60 s.
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire(limited)
    assert caught.value.status == 429 and caught.value.retry_after == 30
    assert caught.value.message == "This key allows 3 requests per minute; retry in 30 s."
    clock.advance(30.5)
    # The hit from 0 s has left the window.
    await limiter.release(await limiter.acquire(limited))
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire(limited)
    assert caught.value.retry_after == 10  # the hit from 10 s leaves at 70 s; now 60.5 s


async def test_retry_after_is_at_least_one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    limiter, limited = Limiter(), key(1, rpm=1)
    await limiter.acquire(limited)
    clock.advance(59.5)
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire(limited)
    assert caught.value.retry_after == 1  # half a second, rounded up
    clock.advance(0.5)
    # On the window's edge the hit still counts, with no time left to wait: still 1 s.
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire(limited)
    assert caught.value.retry_after == 1
    clock.advance(0.001)
    await limiter.acquire(limited)


async def test_each_key_has_its_own_minute() -> None:
    limiter = Limiter()
    first, second = key(1, rpm=2), key(2, rpm=2)
    for _ in range(2):
        await limiter.acquire(first)
    with pytest.raises(RateLimited):
        await limiter.acquire(first)
    for _ in range(2):
        await limiter.acquire(second)
    # Two keys with one rate share a limit item, never a count.
    with pytest.raises(RateLimited):
        await limiter.acquire(second)


async def test_requests_at_a_time_until_released() -> None:
    limiter, limited = Limiter(), key(1, concurrency=2)
    first = await limiter.acquire(limited)
    await limiter.acquire(limited)
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire(limited)
    assert caught.value.status == 429 and caught.value.retry_after == 1
    assert "allows 2 requests at a time" in caught.value.message
    await limiter.release(first)
    await limiter.acquire(limited)  # a released slot is free at once
    with pytest.raises(RateLimited):
        await limiter.acquire(limited)


async def test_each_key_has_its_own_slots() -> None:
    limiter = Limiter()
    first, second = key(1, concurrency=1), key(2, concurrency=1)
    await limiter.acquire(first)
    other = await limiter.acquire(second)
    with pytest.raises(RateLimited):
        await limiter.acquire(first)
    await limiter.release(other)
    with pytest.raises(RateLimited):
        await limiter.acquire(first)  # another key's release frees none of this key's slots


async def test_a_release_too_many_grants_no_extra_slot() -> None:
    limiter, limited = Limiter(), key(1, concurrency=2)
    lease = await limiter.acquire(limited)
    await limiter.release(lease)
    await limiter.release(lease)  # one more than was taken: the count stays at zero
    await limiter.acquire(limited)
    await limiter.acquire(limited)
    with pytest.raises(RateLimited):
        await limiter.acquire(limited)


async def test_a_refused_request_takes_no_slot() -> None:
    limiter, limited = Limiter(), key(1, concurrency=1)
    lease = await limiter.acquire(limited)
    for _ in range(3):
        with pytest.raises(RateLimited):
            await limiter.acquire(limited)
    await limiter.release(lease)  # the one that got in: the refusals held nothing
    await limiter.acquire(limited)


async def test_a_request_refused_for_concurrency_uses_none_of_the_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Clock(monkeypatch)
    limiter, limited = Limiter(), key(1, rpm=2, concurrency=1)
    lease = await limiter.acquire(limited)
    with pytest.raises(RateLimited) as busy:
        await limiter.acquire(limited)
    assert busy.value.retry_after == 1  # "wait for one to finish", not the minute's limit
    await limiter.release(lease)
    await limiter.acquire(limited)  # the second of the minute's two requests


async def test_a_request_refused_for_the_rate_holds_no_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Clock(monkeypatch)
    limiter, limited = Limiter(), key(1, rpm=1, concurrency=1)
    await limiter.release(await limiter.acquire(limited))
    with pytest.raises(RateLimited) as rate:
        await limiter.acquire(limited)
    assert "per minute" in rate.value.message
    unlimited_rate = key(1, concurrency=1)  # the same key id, no rate: its slot must be free
    await limiter.acquire(unlimited_rate)
