"""What the nodes of one gateway tell each other through Redis (cluster mode, `redis_url`):
cache invalidations, and which upstreams are cooling down.

A change made on one node (a key revoked or edited) is published on `<prefix>invalidate`; an
upstream one node saw fail is published on `<prefix>upstreams` and kept in Redis for as long as
it cools down, so a node that starts (or reconnects) later learns it too. Every node listens on
one connection of its own and applies what it hears to its in-memory state, so the hot path never
waits on Redis. Redis being down costs nothing but the sharing: publishes are dropped, each node
keeps its own breakers, and cached keys expire after `key_cache_seconds` as on a single node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nanogate.access.redisconn import RedisDown, RedisLink

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("nanogate")

INVALIDATE = "invalidate"
UPSTREAMS = "upstreams"
# How long the listener waits for a message before it looks at the link's health again, and
# how long it waits before reconnecting after losing Redis.
LISTEN_TIMEOUT_S = 1.0
RECONNECT_S = 1.0

Message = dict[str, Any]
Handler = Callable[[Message], None]


class Bus:
    """Publishes this node's news and hands other nodes' news to the handlers of its channel.

    After each (re)subscription the `resync` callbacks run: whatever was published while this
    node was not listening is lost, so each part catches up its own way."""

    def __init__(self, link: RedisLink, node: str) -> None:
        self.link = link
        self.node = node
        # Tells this process's own messages (which Redis echoes back) from another's, even
        # when two processes were given the same node id.
        self._me = secrets.token_hex(8)
        self._handlers: dict[str, list[Handler]] = {}
        self._resync: list[Callable[[], Awaitable[None]]] = []
        self._listener: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers.setdefault(self.link.prefix + channel, []).append(handler)

    def on_connect(self, resync: Callable[[], Awaitable[None]]) -> None:
        self._resync.append(resync)

    async def publish(self, channel: str, message: Message) -> bool:
        """Tell the other nodes; False when Redis is down (they learn it some other way)."""
        payload = json.dumps({**message, "node": self.node, "sender": self._me})
        try:
            await self.link.run(
                "publish", lambda client: client.publish(self.link.prefix + channel, payload)
            )
        except RedisDown:
            return False
        return True

    def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="cluster-listener")

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self) -> None:
        lost: tuple[type[BaseException], ...] = (RedisDown, *self.link.failures)
        while True:
            if self.link.is_up():
                pubsub = self.link.client.pubsub()
                try:
                    await pubsub.subscribe(*self._handlers)
                    for resync in self._resync:
                        await resync()
                    self.listening.set()
                    # The link going down (another call saw Redis fail) ends the subscription
                    # too: messages may have been lost, so reconnect and resync once it is back.
                    while self.link.is_up():
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=LISTEN_TIMEOUT_S
                        )
                        if message is not None:
                            self._dispatch(message)
                except lost as exc:
                    log.warning("cluster listener lost Redis (%s)", type(exc).__name__)
                finally:
                    self.listening.clear()
                    with contextlib.suppress(*self.link.failures):
                        await pubsub.aclose()
            await asyncio.sleep(RECONNECT_S)

    def _dispatch(self, raw: dict[str, Any]) -> None:
        channel = raw["channel"].decode()
        try:
            message = json.loads(raw["data"])
        except ValueError:
            log.warning("ignored a malformed cluster message", extra={"channel": channel})
            return
        if not isinstance(message, dict) or message.get("sender") == self._me:
            return
        for handler in self._handlers.get(channel, ()):
            try:
                handler(message)
            except Exception as exc:  # one bad message must not stop the listener
                log.warning("cluster message not applied (%s)", type(exc).__name__)


class Cooldowns:
    """Upstreams cooling down, as every node sees them.

    `<prefix>upstream:<name>:open` (its breaker) and `:skip` (its Retry-After) exist for exactly
    as long as the cooldown runs, so their remaining TTL is the remaining cooldown on any node's
    clock. `:probe` is the lock the one node probing a cooled-down upstream holds."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def _key(self, upstream: str, what: str) -> str:
        return f"{self.bus.link.prefix}upstream:{upstream}:{what}"

    async def report(
        self, upstream: str, *, open_s: float | None = None, skip_s: float | None = None
    ) -> None:
        """This node saw `upstream` fail: its breaker opened for `open_s`, or it asked to be
        left alone for `skip_s`."""
        message: Message = {"upstream": upstream}
        if open_s:
            message["open_s"] = open_s
        if skip_s:
            message["skip_s"] = skip_s

        async def write(client: Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                if open_s:
                    pipe.set(self._key(upstream, "open"), self.bus.node, px=_ms(open_s))
                if skip_s:
                    pipe.set(self._key(upstream, "skip"), self.bus.node, px=_ms(skip_s))
                await pipe.execute()

        with contextlib.suppress(RedisDown):
            await self.bus.link.run("cooldown", write)
            await self.bus.publish(UPSTREAMS, message)

    async def recovered(self, upstream: str) -> None:
        """A health probe let `upstream` back in."""
        with contextlib.suppress(RedisDown):
            await self.bus.link.run(
                "cooldown", lambda client: client.delete(self._key(upstream, "open"))
            )
            await self.bus.publish(UPSTREAMS, {"upstream": upstream, "closed": True})

    async def current(self, upstreams: list[str]) -> list[Message]:
        """What is cooling down now, as the messages `report` sends (for a node catching up)."""

        async def read(client: Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for name in upstreams:
                    pipe.pttl(self._key(name, "open"))
                    pipe.pttl(self._key(name, "skip"))
                    pipe.get(self._key(name, "open"))
                return list(await pipe.execute())

        found = await self.bus.link.run("cooldown", read)
        out = []
        for index, name in enumerate(upstreams):
            open_ms, skip_ms, node = found[3 * index : 3 * index + 3]
            if open_ms > 0 or skip_ms > 0:
                out.append(
                    {
                        "upstream": name,
                        "open_s": max(0, open_ms) / 1000,
                        "skip_s": max(0, skip_ms) / 1000,
                        "node": node.decode() if node else None,
                    }
                )
        return out

    async def take_probe(self, upstream: str, seconds: float) -> bool:
        """May this node health-check `upstream` now? Only one node at a time may; with Redis
        down, every node probes on its own."""
        try:
            taken = await self.bus.link.run(
                "cooldown",
                lambda client: client.set(
                    self._key(upstream, "probe"), self.bus.node, nx=True, px=_ms(seconds)
                ),
            )
        except RedisDown:
            return True
        return bool(taken)

    async def release_probe(self, upstream: str) -> None:
        # After the outcome was published, so the next node to take the lock already knows it.
        # (A probe outliving the lock's TTL may free another node's lock: at worst two probe.)
        with contextlib.suppress(RedisDown):
            await self.bus.link.run(
                "cooldown", lambda client: client.delete(self._key(upstream, "probe"))
            )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
