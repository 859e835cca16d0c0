"""Per-key request-rate and concurrency limits, in process memory (one node)."""

from __future__ import annotations

import math
import time
from collections import defaultdict

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from nanogate.access.keys import KeyRecord
from nanogate.core.errors import RateLimited


class Limiter:
    def __init__(self) -> None:
        self._rate = MovingWindowRateLimiter(MemoryStorage())
        self._items: dict[int, RateLimitItemPerMinute] = {}
        self._in_flight: defaultdict[int, int] = defaultdict(int)

    async def acquire(self, key: KeyRecord) -> None:
        """Admit one request for `key` or raise 429 with a Retry-After; pair with release().

        The concurrency slot is taken first: a request refused for concurrency does not use up
        one of the minute's requests, and one refused for the rate holds no slot."""
        if key.concurrency_limit and self._in_flight[key.id] >= key.concurrency_limit:
            raise RateLimited(
                f"This key allows {key.concurrency_limit} requests at a time; "
                "wait for one to finish.",
                retry_after=1,
            )
        self._in_flight[key.id] += 1
        if key.rpm_limit:
            item = self._items.get(key.rpm_limit)
            if item is None:
                item = self._items.setdefault(key.rpm_limit, RateLimitItemPerMinute(key.rpm_limit))
            if not await self._rate.hit(item, "key", str(key.id)):
                self.release(key)
                stats = await self._rate.get_window_stats(item, "key", str(key.id))
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(
                    f"This key allows {key.rpm_limit} requests per minute; retry in {wait} s.",
                    retry_after=wait,
                )

    def release(self, key: KeyRecord) -> None:
        left = self._in_flight[key.id] - 1
        if left > 0:
            self._in_flight[key.id] = left
        else:
            self._in_flight.pop(key.id, None)
