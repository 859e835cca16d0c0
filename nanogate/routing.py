"""Choosing an upstream for a call, and failing over when it breaks.

Each model's upstreams sit in priority groups (lower `priority` first), weighted at random
within a group. A retryable failure moves on to the next candidate; nothing is retried once a
byte went to the client (for streams: once the first chunk arrived). An upstream that keeps
failing cools down (circuit breaker) and is let back in by a single probe call.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .config import UpstreamConfig
from .errors import GatewayError, NotFound, Unavailable, UpstreamError
from .metrics import UPSTREAM_ERRORS
from .streams import GuardedStream
from .types import Call, Chunk, Reply
from .upstreams.base import Upstream


@dataclass(slots=True)
class Breaker:
    """Closed until `threshold` retryable failures in a row; then open for `cooldown_s`.

    When the cooldown ends, one call is let through as a probe and the breaker re-arms at the
    same moment: a successful probe closes it, a failed (or abandoned) one leaves it open for
    another cooldown. So no state can get stuck half-open.
    """

    threshold: int = 5
    cooldown_s: float = 30.0
    failures: int = 0
    open_until: float = 0.0

    @property
    def closed(self) -> bool:
        return self.open_until == 0.0

    def allow(self, now: float) -> bool:
        """May a call go to this upstream now? Call only right before making the call."""
        if self.open_until == 0.0:
            return True
        if now >= self.open_until:
            self.open_until = now + self.cooldown_s
            return True
        return False

    def success(self) -> None:
        self.failures, self.open_until = 0, 0.0

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = now + self.cooldown_s


@dataclass(slots=True)
class Target:
    config: UpstreamConfig
    adapter: Upstream
    breaker: Breaker = field(default_factory=Breaker)
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))

    @property
    def name(self) -> str:
        return self.config.name


class Router:
    def __init__(self, upstreams: list[tuple[UpstreamConfig, Upstream]]) -> None:
        self.targets = [
            Target(
                cfg,
                adapter,
                Breaker(cfg.breaker_failures, cfg.breaker_cooldown_s),
                asyncio.Semaphore(cfg.max_concurrency),
            )
            for cfg, adapter in upstreams
        ]

    def candidates(self, model: str) -> list[Target]:
        """Upstreams serving `model`, in the order to try them (no state is touched)."""
        serving = [t for t in self.targets if t.config.serves(model)]
        if not serving:
            raise NotFound(f"No upstream is configured for model '{model}'.")
        ordered: list[Target] = []
        for priority in sorted({t.config.priority for t in serving}):
            group = [t for t in serving if t.config.priority == priority]
            ordered.extend(_weighted_order(group))
        return ordered

    def _attempts(self, model: str) -> Iterator[Target]:
        """The upstreams to try, one at a time, as the caller works through them."""
        ordered = self.candidates(model)
        tried = False
        for index, target in enumerate(ordered):
            # A full upstream spills over to a later one that has room, rather than queueing.
            if target.gate.locked() and any(
                t.breaker.closed and not t.gate.locked() for t in ordered[index + 1 :]
            ):
                continue
            if not target.breaker.allow(time.monotonic()):
                continue
            tried = True
            yield target
        if not tried:
            now = time.monotonic()
            wait = max(1, round(min(t.breaker.open_until for t in ordered) - now))
            raise Unavailable(
                f"Every upstream for '{model}' is cooling down after repeated failures; "
                f"retry in {wait} s.",
                retry_after=wait,
            )

    async def generate(self, call: Call) -> Reply:
        last: UpstreamError | None = None
        for target in self._attempts(call.model.name):
            try:
                async with target.gate:
                    reply = await target.adapter.generate(call)
            except UpstreamError as exc:
                last = self._failed(target, exc)
                if not exc.retryable:
                    break
                continue
            target.breaker.success()
            return reply
        raise _final(last)

    async def open_stream(self, call: Call) -> tuple[str, Chunk, GuardedStream]:
        """Start a stream, failing over until an upstream yields its first chunk."""
        last: UpstreamError | None = None
        for target in self._attempts(call.model.name):
            await target.gate.acquire()
            chunks = aiter(target.adapter.stream(call))
            try:
                first = await anext(chunks)
            except UpstreamError as exc:
                target.gate.release()
                last = self._failed(target, exc)
                if not exc.retryable:
                    break
                continue
            except StopAsyncIteration:
                target.gate.release()
                last = self._failed(target, UpstreamError(target.name, 502, "empty stream"))
                continue
            except BaseException:
                target.gate.release()
                raise
            target.breaker.success()
            return target.name, first, GuardedStream(chunks, target.gate.release)
        raise _final(last)

    def _failed(self, target: Target, exc: UpstreamError) -> UpstreamError:
        UPSTREAM_ERRORS.labels(target.name, str(exc.status) if exc.status else "transport").inc()
        if exc.retryable:
            target.breaker.failure(time.monotonic())
        else:
            # It answered, about the request: the upstream itself is healthy.
            target.breaker.success()
        return exc

    def health(self) -> dict[str, str]:
        """Each upstream's breaker state, for /readyz."""
        return {t.name: "up" if t.breaker.closed else "cooling down" for t in self.targets}

    async def close(self) -> None:
        for target in self.targets:
            await target.adapter.close()


def _weighted_order(group: list[Target]) -> list[Target]:
    # Efraimidis–Spirakis: one random key per item gives a weighted shuffle in one sort.
    return sorted(group, key=lambda t: random.random() ** (1.0 / t.config.weight), reverse=True)


def _final(last: UpstreamError | None) -> GatewayError:
    if last is None:
        return Unavailable("No upstream could serve the request.")
    return last.to_gateway_error()
