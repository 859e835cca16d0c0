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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .config import UpstreamConfig
from .errors import GatewayError, NotFound, Unavailable, UpstreamError
from .types import Call, Chunk, Reply
from .upstreams.base import Upstream


@dataclass(slots=True)
class Breaker:
    threshold: int = 5
    cooldown_s: float = 30.0
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False

    def available(self, now: float) -> bool:
        if self.open_until == 0.0:
            return True
        # Half-open: after the cooldown exactly one call goes through as a probe.
        if now >= self.open_until and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.failures, self.open_until, self.probing = 0, 0.0, False

    def failure(self, now: float) -> None:
        self.failures += 1
        self.probing = False
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
        """Upstreams for `model` in the order to try them; cooled-down ones left out."""
        now = time.monotonic()
        serving = [t for t in self.targets if t.config.serves(model)]
        if not serving:
            raise NotFound(f"No upstream is configured for model '{model}'.")
        ordered: list[Target] = []
        for priority in sorted({t.config.priority for t in serving}):
            group = [t for t in serving if t.config.priority == priority]
            ordered.extend(_weighted_order(group))
        available = [t for t in ordered if t.breaker.available(now)]
        if not available:
            wait = max(1, round(min(t.breaker.open_until for t in ordered) - now))
            raise Unavailable(
                f"Every upstream for '{model}' is cooling down after repeated failures; "
                f"retry in {wait} s.",
                retry_after=wait,
            )
        return available

    async def generate(self, call: Call) -> Reply:
        last: UpstreamError | None = None
        for target in self.candidates(call.model.name):
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

    async def open_stream(self, call: Call) -> tuple[str, Chunk, AsyncIterator[Chunk]]:
        """Start a stream, failing over until an upstream yields its first chunk."""
        last: UpstreamError | None = None
        for target in self.candidates(call.model.name):
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
            return target.name, first, _release_after(chunks, target)
        raise _final(last)

    def _failed(self, target: Target, exc: UpstreamError) -> UpstreamError:
        if exc.retryable:
            target.breaker.failure(time.monotonic())
        return exc

    async def close(self) -> None:
        for target in self.targets:
            await target.adapter.close()


async def _release_after(chunks: AsyncIterator[Chunk], target: Target) -> AsyncIterator[Chunk]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        target.gate.release()
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


def _weighted_order(group: list[Target]) -> list[Target]:
    # Efraimidis–Spirakis: one random key per item gives a weighted shuffle in one sort.
    return sorted(group, key=lambda t: random.random() ** (1.0 / t.config.weight), reverse=True)


def _final(last: UpstreamError | None) -> GatewayError:
    if last is None:
        return Unavailable("No upstream could serve the request.")
    return last.to_gateway_error()
