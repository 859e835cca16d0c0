"""Failed authentication, throttled per client address: after `auth_failures_per_minute` unknown
keys from one address, it gets 429 for the rest of its minute, before any key it sends is looked
up (an unknown key misses the key cache, so each guess would cost a database query).

IPv6 clients count by /64, the block one host is usually given: a host has every address in it.
"""

from __future__ import annotations

import ipaddress
import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter

from nanogate.access.redisconn import RedisDown, RedisLink
from nanogate.core.errors import RateLimited


def _who(client: str) -> str:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def refused(wait_s: float) -> RateLimited:
    wait = max(1, math.ceil(wait_s))
    return RateLimited(
        f"Too many requests with an unknown API key from this address; retry in {wait} s.",
        retry_after=wait,
    )


class AuthThrottle:
    """One node's count of failures, a minute from each address's first (0 per minute: off)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._item = RateLimitItemPerMinute(max(per_minute, 1))
        self._window = FixedWindowRateLimiter(MemoryStorage())

    async def check(self, client: str) -> None:
        """Raise 429 if `client` failed too often this minute."""
        if self.per_minute and not await self._window.test(self._item, "auth", _who(client)):
            stats = await self._window.get_window_stats(self._item, "auth", _who(client))
            raise refused(stats.reset_time - time.time())

    async def failed(self, client: str) -> None:
        """Count one unknown key from `client`."""
        if self.per_minute:
            await self._window.hit(self._item, "auth", _who(client))


# Answers the ms until the address's minute ends if it used up its failures, else 0.
#   KEYS[1]  the address's failure count;  ARGV[1]  failures allowed per minute
CHECK = """
local failures = tonumber(redis.call('GET', KEYS[1]) or '0')
if failures < tonumber(ARGV[1]) then return 0 end
return math.max(redis.call('PTTL', KEYS[1]), 1)
"""

# Counts a failure; the first of a window starts its minute.
FAIL = """
if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], 60000) end
return 0
"""


class RedisAuthThrottle(AuthThrottle):
    """Every node's failures counted together, in Redis; each node's own while Redis is down."""

    def __init__(self, per_minute: int, link: RedisLink) -> None:
        super().__init__(per_minute)
        self.link = link
        self._check = link.client.register_script(CHECK)
        self._fail = link.client.register_script(FAIL)

    def _key(self, client: str) -> str:
        return f"{self.link.prefix}auth:{_who(client)}"

    async def check(self, client: str) -> None:
        if not self.per_minute:
            return
        try:
            wait_ms = await self.link.run(
                "auth", lambda _: self._check(keys=[self._key(client)], args=[self.per_minute])
            )
        except RedisDown:
            await super().check(client)
            return
        if wait_ms:
            raise refused(int(wait_ms) / 1000)

    async def failed(self, client: str) -> None:
        if not self.per_minute:
            return
        try:
            await self.link.run("auth", lambda _: self._fail(keys=[self._key(client)]))
        except RedisDown:
            await super().failed(client)
