"""Choosing an upstream for a call, and failing over when it breaks.

Each model's upstreams sit in priority groups (lower `priority` first), weighted at random
within a group. Every call has a budget: at most `max_attempts` upstream attempts and one
deadline (`deadline_s`) across them; an attempt gets at most the time left. A retryable failure
(connect error, timeout, 408, 429, 5xx, our credentials refused) moves the call on to the next
candidate. An upstream that gave a final answer (a success, or a fault in the request itself)
is never asked again, and nothing is retried once a byte went to the client (for streams: once
the first chunk arrived).

An upstream that answered with `Retry-After` is skipped until then while another can take the
call. When it is the only one left it is still asked, and its own answer (usually a fresh 429
with Retry-After) reaches the client: one throttled model must not turn into a blanket refusal
of every call to that upstream.

An upstream that keeps failing cools down (circuit breaker). Once its cooldown has passed, the
background prober (`start()`) asks its adapter's `health()` and lets it back in, so no client
request is spent as the probe. Without the prober (unit tests, tools), the first call after the
cooldown is the probe.

A concurrency cap is optional (`max_concurrency`). A full upstream spills over to a later
candidate with room; when none has room, the call waits up to `queue_timeout_s` for a slot of
the first, then takes any candidate with room, or gets 429 with Retry-After: never a hang.

In cluster mode (`share`) the nodes share what they learn: a node whose breaker opens, or that
gets a Retry-After, tells the others through Redis, and they apply it to their own copy at once,
so they skip the upstream without spending a request to learn it. Only the node holding the
probe lock health-checks a cooled-down upstream; its verdict reaches the others the same way.
With Redis down each node keeps its own breakers, as a single node does.

Per-upstream figures (in flight, recent latency and error rate) are plain counters and fixed
rings, updated without locks or allocation; they are only summarised when read
(`GET /admin/upstreams`, `/metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nanogate.access.cluster import UPSTREAMS, Cooldowns, Message
from nanogate.core import metrics
from nanogate.core.config import UpstreamConfig
from nanogate.core.errors import (
    DeadlineExceeded,
    GatewayError,
    NotFound,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from nanogate.core.metrics import UPSTREAM_ERRORS, UPSTREAM_LATENCY_BUCKETS, UpstreamSample
from nanogate.core.streams import GuardedStream
from nanogate.core.types import Call, Chunk, Reply
from nanogate.upstreams.base import Upstream

log = logging.getLogger("nanogate")

# Recent attempts the per-upstream latency percentiles and error rate are computed over.
WINDOW = 500
# How often the prober looks for upstreams whose cooldown has passed, and how long one
# health() call may take.
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 10.0
# A Retry-After longer than this is taken as this: a wrong header must not bench an upstream
# for days.
MAX_SKIP_S = 3600


@dataclass(slots=True)
class Breaker:
    """Closed until `threshold` retryable failures in a row; then open for `cooldown_s`.

    States: "closed"; "open" while the cooldown runs; "half-open" once it has passed, until a
    probe decides. The prober's successful health check closes it on probation (the next
    failure reopens it). Without the prober, one client call is let through as the probe and
    the breaker re-arms at the same moment: a successful probe closes it, a failed (or
    abandoned) one leaves it open for another cooldown. So no state can get stuck half-open.
    """

    threshold: int = 5
    cooldown_s: float = 30.0
    failures: int = 0
    open_until: float = 0.0

    @property
    def closed(self) -> bool:
        return self.open_until == 0.0

    def state(self, now: float) -> str:
        if self.open_until == 0.0:
            return "closed"
        return "open" if now < self.open_until else "half-open"

    def ready(self, now: float, *, client_probes: bool) -> bool:
        """Could a call go to this upstream now? Touches nothing."""
        return self.open_until == 0.0 or (client_probes and now >= self.open_until)

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

    def rearm(self, now: float) -> None:
        self.open_until = now + self.cooldown_s

    def recovered(self) -> None:
        """A health probe passed: closed, but one more failure opens it again."""
        self.failures, self.open_until = self.threshold - 1, 0.0


class Stats:
    """One upstream's recent behaviour: fixed rings of the last WINDOW attempt outcomes and
    successful latencies, and histogram bucket counts. Updating allocates nothing."""

    __slots__ = (
        "_failed",
        "_lat_count",
        "_lat_next",
        "_latencies",
        "_out_next",
        "attempts",
        "buckets",
        "failures",
        "latency_sum",
    )

    def __init__(self) -> None:
        self._latencies = [0.0] * WINDOW
        self._lat_next = 0
        self._lat_count = 0
        self._failed = bytearray(WINDOW)
        self._out_next = 0
        self.attempts = 0  # outcomes in the ring (at most WINDOW)
        self.failures = 0  # failed ones among them
        self.buckets = [0] * (len(UPSTREAM_LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def succeeded(self, seconds: float) -> None:
        i = self._lat_next
        self._latencies[i] = seconds
        self._lat_next = 0 if i + 1 == WINDOW else i + 1
        if self._lat_count < WINDOW:
            self._lat_count += 1
        self.buckets[bisect_left(UPSTREAM_LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.outcome(False)

    def outcome(self, failed: bool) -> None:
        i = self._out_next
        self.failures += failed - self._failed[i]
        self._failed[i] = failed
        self._out_next = 0 if i + 1 == WINDOW else i + 1
        if self.attempts < WINDOW:
            self.attempts += 1

    @property
    def error_rate(self) -> float:
        return self.failures / self.attempts if self.attempts else 0.0

    def percentiles(self) -> tuple[float | None, float | None]:
        """p50 and p99 of the recent successful attempts, in seconds (None: none yet)."""
        recent = sorted(self._latencies[: self._lat_count])
        if not recent:
            return None, None
        return _percentile(recent, 50), _percentile(recent, 99)


@dataclass(slots=True, eq=False)
class Target:
    config: UpstreamConfig
    adapter: Upstream
    breaker: Breaker = field(default_factory=Breaker)
    # None: no cap. A semaphore only when the operator set max_concurrency.
    gate: asyncio.Semaphore | None = None
    stats: Stats = field(default_factory=Stats)
    in_flight: int = 0
    waiting: int = 0
    skip_until: float = 0.0  # monotonic; the upstream's Retry-After
    reported_by: str | None = None  # the other node whose report set the state above

    @property
    def name(self) -> str:
        return self.config.name

    def usable(self, now: float, client_probes: bool) -> bool:
        return self.breaker.ready(now, client_probes=client_probes)

    def has_room(self) -> bool:
        return self.gate is None or not self.gate.locked()

    async def take(self) -> None:
        """Take a slot; only right after has_room() said yes (no await in between)."""
        if self.gate is not None:
            await self.gate.acquire()  # with room, this returns without suspending
        self.in_flight += 1

    async def wait(self, seconds: float) -> bool:
        """Wait up to `seconds` for a slot; True with the slot taken."""
        assert self.gate is not None
        self.waiting += 1
        try:
            async with asyncio.timeout(seconds):
                await self.gate.acquire()
        except TimeoutError:
            return False
        finally:
            self.waiting -= 1
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1
        if self.gate is not None:
            self.gate.release()


class Router:
    def __init__(
        self,
        upstreams: list[tuple[UpstreamConfig, Upstream]],
        *,
        max_attempts: int = 3,
        deadline_s: float = 600.0,
        probe_every_s: float = PROBE_EVERY_S,
    ) -> None:
        self.targets = [_target(cfg, adapter) for cfg, adapter in upstreams]
        self.max_attempts = max_attempts
        self.deadline_s = deadline_s
        self.probe_every_s = probe_every_s
        self._groups: dict[str, list[list[Target]]] = {}
        self._prober: asyncio.Task[None] | None = None
        self._shared: Cooldowns | None = None
        self._telling: set[asyncio.Task[None]] = set()

    def replace(
        self,
        upstreams: list[UpstreamConfig],
        build: Callable[[UpstreamConfig], Upstream],
        *,
        max_attempts: int,
        deadline_s: float,
    ) -> list[Upstream]:
        """Route to `upstreams` from now on (a config reload). One whose settings did not
        change keeps its adapter (and connections), breaker and figures; the adapters of the
        changed and removed ones are returned, to close once the calls using them are done."""
        current = {t.name: t for t in self.targets}
        targets = []
        for cfg in upstreams:
            same = current.get(cfg.name)
            if same is not None and same.config == cfg:
                targets.append(current.pop(cfg.name))
            else:
                targets.append(_target(cfg, build(cfg)))
        self.targets = targets
        self._groups = {}
        self.max_attempts = max_attempts
        self.deadline_s = deadline_s
        return [t.adapter for t in current.values()]

    def share(self, cooldowns: Cooldowns) -> None:
        """Cluster mode: tell the other nodes which upstreams fail, and heed what they tell."""
        self._shared = cooldowns
        cooldowns.bus.subscribe(UPSTREAMS, self._heard)
        cooldowns.bus.on_connect(self._catch_up)

    def _heard(self, message: Message) -> None:
        target = next((t for t in self.targets if t.name == message.get("upstream")), None)
        if target is None:
            return
        now = time.monotonic()
        if message.get("closed"):
            if not target.breaker.closed:
                target.breaker.recovered()
            target.reported_by = None
            return
        breaker = target.breaker
        open_s = float(message.get("open_s") or 0)
        skip_s = float(message.get("skip_s") or 0)
        if open_s > 0 and now + open_s > breaker.open_until:
            if breaker.closed:
                log.warning(
                    "upstream cooling down (reported by another node)",
                    extra={"upstream": target.name, "node": message.get("node")},
                )
            breaker.open_until = now + open_s
            breaker.failures = max(breaker.failures, breaker.threshold)
            target.reported_by = message.get("node")
        if skip_s > 0 and now + skip_s > target.skip_until:
            target.skip_until = now + min(skip_s, MAX_SKIP_S)
            target.reported_by = message.get("node")

    async def _catch_up(self) -> None:
        assert self._shared is not None
        for message in await self._shared.current([t.name for t in self.targets]):
            self._heard(message)

    def _tell(self, target: Target, *, open_s: float | None, skip_s: float | None) -> None:
        """Report a failing upstream to the other nodes, in the background: the call that saw
        it fail goes on to its next candidate without waiting for Redis."""
        if self._shared is None:
            return
        task = asyncio.create_task(
            self._shared.report(target.name, open_s=open_s, skip_s=skip_s), name="tell-nodes"
        )
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)

    # -- choosing ----------------------------------------------------------------------------

    def candidates(
        self,
        model: str,
        *,
        former: tuple[str, ...] = (),
        only: frozenset[str] | None = None,
    ) -> list[Target]:
        """Upstreams serving `model` (or configured for one of its `former` ids), in the order to
        try them, limited to those named in `only` when given. No state is touched."""
        groups = self._groups.get(model) if only is None else None
        if groups is None:
            names = (model, *former)
            serving = [
                t
                for t in self.targets
                if t.config.serves_any(names) and (only is None or t.name in only)
            ]
            if not serving:
                raise NotFound(f"No upstream is configured for model '{model}'.")
            groups = [
                [t for t in serving if t.config.priority == priority]
                for priority in sorted({t.config.priority for t in serving})
            ]
            if only is None:
                self._groups[model] = groups  # models are catalog names: a bounded set
        if len(groups) == 1 and len(groups[0]) == 1:
            return groups[0]
        ordered: list[Target] = []
        for group in groups:
            ordered.extend(_weighted_order(group) if len(group) > 1 else group)
        return ordered

    async def _pick(
        self,
        model: str,
        order: list[Target],
        tried: list[Target],
        deadline: float,
        last: UpstreamError | None,
    ) -> Target | None:
        """The next upstream to call, its slot taken; None when no candidate is left."""
        client_probes = self._prober is None
        while True:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                raise self._past_deadline(last)
            usable = [t for t in order if t.usable(now, client_probes) and t not in tried]
            if not usable:
                return None
            # Those inside their Retry-After are skipped while another can take the call.
            if any(t.skip_until > now for t in usable):
                usable = [t for t in usable if t.skip_until <= now] or usable
            # A full upstream spills over to a later one that has room, rather than queueing.
            target = next((t for t in usable if t.has_room()), None)
            if target is not None:
                await target.take()
            else:
                target = usable[0]
                if not await target.wait(min(target.config.queue_timeout_s, left)):
                    target = next((t for t in usable[1:] if t.has_room()), None)
                    if target is None:
                        if time.monotonic() >= deadline:
                            raise self._past_deadline(last)
                        wait = _busy_retry(usable)
                        raise RateLimited(
                            f"Every upstream for '{model}' is at its concurrency limit; "
                            f"retry in {wait} s.",
                            retry_after=wait,
                        )
                    await target.take()
                now = time.monotonic()
                if not target.usable(now, client_probes):  # it failed while we waited
                    target.release()
                    continue
            if target.breaker.allow(now):
                return target
            target.release()  # another call took the probe

    # -- calling -----------------------------------------------------------------------------

    async def generate(self, call: Call, *, only: frozenset[str] | None = None) -> Reply:
        model = call.model.name
        order = self.candidates(model, former=call.model.former_names, only=only)
        deadline = time.monotonic() + self.deadline_s
        tried: list[Target] = []
        last: UpstreamError | None = None
        while len(tried) < self.max_attempts:
            target = await self._pick(model, order, tried, deadline, last)
            if target is None:
                break
            tried.append(target)
            started = time.monotonic()
            timer = asyncio.timeout(deadline - started)
            try:
                async with timer:
                    reply = await target.adapter.generate(call)
            except UpstreamError as exc:
                last = self._failed(target, exc)
                if not exc.retryable:
                    break
                continue
            except TimeoutError:
                if not timer.expired():
                    raise
                target.stats.outcome(True)
                raise self._past_deadline(last) from None
            finally:
                target.release()
            target.breaker.success()
            target.stats.succeeded(time.monotonic() - started)
            return reply
        raise self._nothing_left(model, order, last)

    async def open_stream(
        self, call: Call, *, only: frozenset[str] | None = None
    ) -> tuple[str, Chunk, GuardedStream]:
        """Start a stream, failing over until an upstream yields its first chunk."""
        model = call.model.name
        order = self.candidates(model, former=call.model.former_names, only=only)
        deadline = time.monotonic() + self.deadline_s
        tried: list[Target] = []
        last: UpstreamError | None = None
        while len(tried) < self.max_attempts:
            target = await self._pick(model, order, tried, deadline, last)
            if target is None:
                break
            tried.append(target)
            started = time.monotonic()
            timer = asyncio.timeout(deadline - started)
            chunks = aiter(target.adapter.stream(call))
            try:
                async with timer:
                    first = await anext(chunks)
            except UpstreamError as exc:
                target.release()
                last = self._failed(target, exc)
                if not exc.retryable:
                    break
                continue
            except StopAsyncIteration:
                target.release()
                last = self._failed(target, UpstreamError(target.name, 502, "empty stream"))
                continue
            except TimeoutError:
                target.release()
                await _close(chunks)
                if not timer.expired():
                    raise
                target.stats.outcome(True)
                raise self._past_deadline(last) from None
            except BaseException:
                target.release()
                raise
            target.breaker.success()
            target.stats.succeeded(time.monotonic() - started)
            return target.name, first, GuardedStream(chunks, target.release)
        raise self._nothing_left(model, order, last)

    def _failed(self, target: Target, exc: UpstreamError) -> UpstreamError:
        UPSTREAM_ERRORS.labels(target.name, str(exc.status) if exc.status else "transport").inc()
        if exc.retryable:
            now = time.monotonic()
            was_closed = target.breaker.closed
            target.breaker.failure(now)
            target.stats.outcome(True)
            skip_s = min(exc.retry_after, MAX_SKIP_S) if exc.retry_after else 0.0
            if skip_s > 0:
                target.skip_until = max(target.skip_until, now + skip_s)
            opened = was_closed and not target.breaker.closed
            if opened:
                target.reported_by = None
                log.warning(
                    "upstream cooling down",
                    extra={"upstream": target.name, "cooldown_s": target.breaker.cooldown_s},
                )
            if opened or skip_s > 0:
                open_s = target.breaker.cooldown_s if opened else None
                self._tell(target, open_s=open_s, skip_s=skip_s or None)
        else:
            # It answered, about the request: the upstream itself is healthy.
            target.breaker.success()
            target.stats.outcome(False)
        return exc

    def _past_deadline(self, last: UpstreamError | None) -> GatewayError:
        tail = f" (last upstream error: {last.message})" if last is not None else ""
        return DeadlineExceeded(
            f"No upstream answered within the request deadline of {self.deadline_s:g} s{tail}."
        )

    def _nothing_left(
        self, model: str, order: list[Target], last: UpstreamError | None
    ) -> GatewayError:
        if last is not None:
            return last.to_gateway_error()
        # Nothing was tried: every candidate is cooling down.
        wait = max(1, math.ceil(min(t.breaker.open_until for t in order) - time.monotonic()))
        return Unavailable(
            f"Every upstream for '{model}' is cooling down after repeated failures; "
            f"retry in {wait} s.",
            retry_after=wait,
        )

    # -- the prober --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background health prober and report upstream figures in /metrics."""
        if self._prober is None:
            self._prober = asyncio.create_task(self._probe_loop(), name="upstream-prober")
        metrics.publish_upstreams(self.samples)

    async def stop(self) -> None:
        metrics.withdraw_upstreams(self.samples)
        for task in self._telling:
            task.cancel()
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_every_s)
            try:
                await self.probe()
            except Exception as exc:
                log.warning("upstream probe round failed (%s)", type(exc).__name__)

    async def probe(self) -> list[str]:
        """Health-check every upstream whose cooldown has passed; returns those let back in."""
        now = time.monotonic()
        due = [t for t in self.targets if t.breaker.state(now) == "half-open"]
        if not due:
            return []
        results = await asyncio.gather(*(self._probe(t) for t in due))
        return [t.name for t, ok in zip(due, results, strict=True) if ok]

    async def _probe(self, target: Target) -> bool:
        shared = self._shared
        # Another node is probing it: its verdict will arrive; meanwhile it stays half-open.
        if shared is not None and not await shared.take_probe(target.name, PROBE_TIMEOUT_S):
            return False
        target.breaker.rearm(time.monotonic())  # stays open while the probe runs
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                healthy = await target.adapter.health()
        except Exception:
            healthy = False
        if healthy:
            target.breaker.recovered()
            target.reported_by = None
            log.info("upstream back after a health probe", extra={"upstream": target.name})
        else:
            target.breaker.rearm(time.monotonic())
        if shared is not None:
            if healthy:
                await shared.recovered(target.name)
            else:
                await shared.report(target.name, open_s=target.breaker.cooldown_s)
            await shared.release_probe(target.name)
        return healthy

    # -- reporting ---------------------------------------------------------------------------

    def health(self) -> dict[str, str]:
        """Each upstream's state, for /readyz: up, cooling down (breaker), or rate limited
        (skipped until its Retry-After)."""
        now = time.monotonic()
        return {
            t.name: "cooling down"
            if not t.breaker.closed
            else "rate limited"
            if t.skip_until > now
            else "up"
            for t in self.targets
        }

    def status(self) -> list[dict[str, Any]]:
        """Per upstream: breaker, load, recent latency and error rate (GET /admin/upstreams)."""
        now, wall = time.monotonic(), time.time()
        out = []
        for t in self.targets:
            p50, p99 = t.stats.percentiles()
            skip = t.skip_until - now
            out.append(
                {
                    "name": t.name,
                    "kind": t.config.kind,
                    "breaker": t.breaker.state(now),
                    "failures_in_a_row": t.breaker.failures,
                    "in_flight": t.in_flight,
                    "waiting": t.waiting,
                    "max_concurrency": t.config.max_concurrency,
                    "p50_ms": None if p50 is None else round(p50 * 1000, 1),
                    "p99_ms": None if p99 is None else round(p99 * 1000, 1),
                    "error_rate": round(t.stats.error_rate, 4),
                    "recent_attempts": t.stats.attempts,
                    "skip_until": (
                        datetime.fromtimestamp(wall + skip, UTC).isoformat(timespec="seconds")
                        if skip > 0
                        else None
                    ),
                    "retry_after": math.ceil(skip) if skip > 0 else None,
                    "reported_by": t.reported_by if not t.breaker.closed or skip > 0 else None,
                }
            )
        return out

    def samples(self) -> list[UpstreamSample]:
        """The same figures for /metrics."""
        now = time.monotonic()
        out = []
        for t in self.targets:
            p50, p99 = t.stats.percentiles()
            out.append(
                UpstreamSample(
                    name=t.name,
                    breaker_open=not t.breaker.closed,
                    in_flight=t.in_flight,
                    waiting=t.waiting,
                    error_rate=t.stats.error_rate,
                    skip_seconds=max(0.0, t.skip_until - now),
                    p50_seconds=p50,
                    p99_seconds=p99,
                    bucket_counts=list(t.stats.buckets),
                    latency_sum=t.stats.latency_sum,
                )
            )
        return out

    async def close(self) -> None:
        for target in self.targets:
            await target.adapter.close()


def _target(cfg: UpstreamConfig, adapter: Upstream) -> Target:
    return Target(
        cfg,
        adapter,
        Breaker(cfg.breaker_failures, cfg.breaker_cooldown_s),
        asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None,
    )


def _weighted_order(group: list[Target]) -> list[Target]:
    # Efraimidis–Spirakis: one random key per item gives a weighted shuffle in one sort.
    return sorted(group, key=lambda t: random.random() ** (1.0 / t.config.weight), reverse=True)


def _busy_retry(targets: list[Target]) -> int:
    """Seconds until a slot is likely to free: the quickest typical call among the full ones."""
    medians = [p50 for t in targets if (p50 := t.stats.percentiles()[0]) is not None]
    return min(60, max(1, math.ceil(min(medians)))) if medians else 1


def _percentile(ordered: list[float], q: float) -> float:
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def _close(chunks: AsyncIterator[Chunk]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
