"""The node's Redis connection (cluster mode, `redis_url`), and what the node knows of its health.

Redis holds what must be shared between nodes but is not money: limits now. It is never on the
money path (that is PostgreSQL), so a Redis outage must cost requests neither an error nor
time. Every call is bounded by `redis_timeout_seconds`; the first failure marks Redis down,
logs once, and from then on callers get RedisDown at once, without I/O, and fall back to what
one node can do alone, while a background probe pings Redis each second until it answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from nanogate.core.config import Settings
from nanogate.core.metrics import observe_redis_error, publish_redis

# redis-py is imported only once a link opens: a single node never loads it (~7 MiB of RSS).
if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("nanogate")

T = TypeVar("T")

PROBE_EVERY_S = 1.0
# Connections per node: each call holds one for a round trip of well under a millisecond.
POOL_SIZE = 32


class RedisDown(Exception):
    """Redis did not answer (now, or recently and the probe has not seen it back)."""


class RedisLink:
    """One pooled asyncio client, shared by every part of the process that uses Redis.

    `prefix` starts every key the node writes, so several gateways can share one Redis."""

    def __init__(self, client: Redis, *, prefix: str, timeout_s: float) -> None:
        from redis.exceptions import RedisError

        self.client = client
        # redis-py's own errors (refused, timed out, a busy or loading server, a script error)
        # and the socket's: all mean "Redis did not do it", and none may reach a client as a 500.
        self.failures: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, settings: Settings) -> RedisLink:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        assert settings.redis_url is not None
        timeout = settings.redis_timeout_seconds
        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=POOL_SIZE,
            timeout=timeout,  # waiting for a free connection counts against the same bound
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Our own probe retries; redis-py's default backoff would hold a request for seconds.
            retry=Retry(NoBackoff(), 0),
        )
        link = cls(Redis.from_pool(pool), prefix=settings.redis_key_prefix, timeout_s=timeout)
        publish_redis(link.is_up)
        return link

    def is_up(self) -> bool:
        return self._down_since is None

    async def run(self, operation: str, call: Callable[[Redis], Awaitable[T]]) -> T:
        """`call(client)` within the timeout; RedisDown if Redis is (or just went) down.
        `operation` names what it was for in nanogate_redis_errors_total."""
        if self._down_since is not None:
            raise RedisDown
        try:
            async with asyncio.timeout(self.timeout_s):
                return await call(self.client)
        except self.failures as exc:
            observe_redis_error(operation)
            self._went_down(exc)
            raise RedisDown from exc

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        # Once per outage, loudly: limits are now each node's own until Redis answers.
        log.error(
            "Redis is not answering (%s): each node enforces limits on its own until it does; "
            "credits are unaffected",
            type(exc).__name__,
        )
        self._probe = asyncio.create_task(self._wait_for_redis(), name="redis-probe")

    async def _wait_for_redis(self) -> None:
        while True:
            await asyncio.sleep(PROBE_EVERY_S)
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.client.ping()
            except self.failures:
                continue
            assert self._down_since is not None
            log.warning(
                "Redis answers again after %.1f s: limits are shared between nodes again",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
            self._probe = None
            return

    async def close(self) -> None:
        publish_redis(None)
        if self._probe is not None:
            self._probe.cancel()
        await self.client.aclose()
