"""Per-key request-rate and concurrency limits: in process memory on one node (Limiter), or in
Redis, shared by every node (RedisLimiter, with redis_url)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from nanogate.access.keys import KeyRecord
from nanogate.access.redisconn import RedisDown, RedisLink
from nanogate.core.errors import RateLimited

if TYPE_CHECKING:
    from redis.asyncio import Redis

# What `Limiter.admit` decides.
Verdict = Literal["admitted", "busy", "minute_full"]
ADMITTED: Verdict = "admitted"
BUSY: Verdict = "busy"
MINUTE_FULL: Verdict = "minute_full"


@dataclass(frozen=True, slots=True)
class Lease:
    """One admitted request's hold on its key's limits, handed back to release()."""

    key_id: int
    # Held in this process's count (the one node, or any node while Redis is down).
    local: bool = False
    # Its member in the key's slot set in Redis, where the key has a concurrency limit.
    slot: str | None = None


def busy(key: KeyRecord) -> RateLimited:
    return RateLimited(
        f"This key allows {key.concurrency_limit} requests at a time; wait for one to finish.",
        retry_after=1,
    )


def minute_full(key: KeyRecord, wait_s: float) -> RateLimited:
    # Never 0: on the window's edge the oldest hit still counts.
    wait = max(1, math.ceil(wait_s))
    return RateLimited(
        f"This key allows {key.rpm_limit} requests per minute; retry in {wait} s.",
        retry_after=wait,
    )


class Limiter:
    """One node's limits: a moving minute of requests, and a count of requests at a time."""

    def __init__(self) -> None:
        self._rate = MovingWindowRateLimiter(MemoryStorage())
        self._items: dict[int, RateLimitItemPerMinute] = {}
        self._in_flight: defaultdict[int, int] = defaultdict(int)

    async def acquire(self, key: KeyRecord) -> Lease:
        """Admit one request for `key` or raise 429 with a Retry-After; pair with release()."""
        verdict, wait_s = await self.admit(key.id, key.concurrency_limit, key.rpm_limit)
        if verdict == BUSY:
            raise busy(key)
        if verdict == MINUTE_FULL:
            raise minute_full(key, wait_s)
        return Lease(key.id, local=True)

    async def admit(
        self, key_id: int, concurrency: int | None, rpm: int | None
    ) -> tuple[Verdict, float]:
        """ADMITTED (a slot taken, to free), BUSY, or MINUTE_FULL with the seconds to wait.

        The concurrency slot is taken first: a request refused for concurrency does not use up
        one of the minute's requests, and one refused for the rate holds no slot."""
        if concurrency and self._in_flight[key_id] >= concurrency:
            return BUSY, 0.0
        self._in_flight[key_id] += 1
        if rpm:
            item = self._items.get(rpm)
            if item is None:
                item = self._items.setdefault(rpm, RateLimitItemPerMinute(rpm))
            if not await self._rate.hit(item, "key", str(key_id)):
                self.free(key_id)
                stats = await self._rate.get_window_stats(item, "key", str(key_id))
                return MINUTE_FULL, stats.reset_time - time.time()
        return ADMITTED, 0.0

    async def release(self, lease: Lease) -> None:
        self.free(lease.key_id)

    def free(self, key_id: int) -> None:
        """Give back a slot `admit` took."""
        left = self._in_flight[key_id] - 1
        if left > 0:
            self._in_flight[key_id] = left
        else:
            self._in_flight.pop(key_id, None)


# One round trip admits or refuses a request. Times are Redis' own clock (TIME), in ms, so
# nodes whose clocks differ still share one minute.
#   KEYS[1]  the key's slot set: member a request's token, score when its lease ends
#   KEYS[2]  the key's hits: member a request's token, score when it came
#   ARGV     concurrency limit (0: none), requests per minute (0: none), token, lease in ms
# Answers {0} admitted, {1} no free slot, {2, ms} the minute is full for ms more.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slots, rpm, token, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
if slots > 0 then
  -- A lease no one renewed (its node died) frees its slot here.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= slots then return {1} end
end
if rpm > 0 then
  -- A hit exactly a minute old still counts, as in the in-process window.
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - 60000))
  if redis.call('ZCARD', KEYS[2]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {2, tonumber(oldest[2]) + 60000 - now}
  end
  redis.call('ZADD', KEYS[2], now, token)
  redis.call('PEXPIRE', KEYS[2], 60001)
end
if slots > 0 then
  redis.call('ZADD', KEYS[1], now + lease, token)
  redis.call('PEXPIRE', KEYS[1], lease)
end
return {0}
"""

# Moves the leases of slots this node still holds to end `lease` ms from now. XX: a slot
# released meanwhile (or already expired) is not brought back.
#   KEYS[1]  a key's slot set;  ARGV  lease in ms, then the tokens
RENEW = """
local t = redis.call('TIME')
local ends = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', ends, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 0
"""


class RedisLimiter(Limiter):
    """Every node's limits in one Redis: a key with 100 requests per minute gets 100 across
    all nodes, and its concurrency limit counts calls on every node.

    A slot is a lease of `lease_s`, renewed by its node every third of that while the call
    runs, so a node that dies gives its slots back within `lease_s`. While Redis is down, each
    node applies the same limits on its own (the parent class): a key gets at most its limit
    per node, never an error."""

    def __init__(self, link: RedisLink, *, node: str, lease_s: float) -> None:
        super().__init__()
        self.link = link
        self.node = node
        self.lease_ms = round(lease_s * 1000)
        self._acquire = link.client.register_script(ACQUIRE)
        self._renew = link.client.register_script(RENEW)
        self._held: dict[str, int] = {}  # token -> key id, of the slots this node holds
        self._renewer: asyncio.Task[None] | None = None

    def _keys(self, key_id: int) -> list[str]:
        # One hash tag per key: both sets live on one shard of a Redis Cluster.
        base = f"{self.link.prefix}key:{{{key_id}}}"
        return [f"{base}:slots", f"{base}:hits"]

    async def acquire(self, key: KeyRecord) -> Lease:
        if not key.rpm_limit and not key.concurrency_limit:
            return await super().acquire(key)  # nothing to share: no round trip
        token = f"{self.node}:{secrets.token_hex(8)}"
        args: list[str | int] = [
            key.concurrency_limit or 0,
            key.rpm_limit or 0,
            token,
            self.lease_ms,
        ]
        try:
            verdict = await self.link.run(
                "limits", lambda _: self._acquire(keys=self._keys(key.id), args=args)
            )
        except RedisDown:
            return await super().acquire(key)
        if verdict[0] == 1:
            raise busy(key)
        if verdict[0] == 2:
            raise minute_full(key, int(verdict[1]) / 1000)
        if not key.concurrency_limit:
            return Lease(key.id)
        self._held[token] = key.id
        return Lease(key.id, slot=token)

    async def release(self, lease: Lease) -> None:
        if lease.local:
            await super().release(lease)
            return
        token = lease.slot
        if token is None:
            return
        self._held.pop(token, None)
        slots = self._keys(lease.key_id)[0]
        # With Redis down the slot stays taken until its lease ends, as if this node had died.
        with contextlib.suppress(RedisDown):
            await self.link.run("limits", lambda client: client.zrem(slots, token))

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_leases(), name="slot-leases")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            by_key: defaultdict[int, list[str]] = defaultdict(list)
            for token, key_id in self._held.items():
                by_key[key_id].append(token)
            if not by_key:
                continue
            with contextlib.suppress(RedisDown):
                await self.link.run("leases", functools.partial(self._renew_all, by_key=by_key))

    async def _renew_all(self, client: Redis, by_key: dict[int, list[str]]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for key_id, tokens in by_key.items():
                await self._renew(
                    keys=self._keys(key_id)[:1], args=[self.lease_ms, *tokens], client=pipe
                )
            await pipe.execute()
