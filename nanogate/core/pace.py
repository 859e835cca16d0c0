"""How long a stream may hold a client: a whole-call deadline and a minimum rate.

An upstream's per-read timeout restarts with every byte, so one that drips a byte every few
seconds would hold the client, its concurrency slot and its credits hold for as long as it
likes. Two rules bound a stream from the gateway's side, whatever the transport does:

- the deadline: the whole call, from admission to the last chunk, takes at most `deadline_s`;
- the minimum rate: from its first chunk on, a stream must deliver `min_bytes_per_second` on
  average, and may fall at most `grace_s` behind that. The grace is slack for the pauses of a
  healthy stream (an image being drawn after a caption); a drip falls further behind with every
  second and is cut soon after it.

Bytes are counted per chunk (each event's payload): bytes of an event still arriving count when
it is complete, which only makes the rule gentler on a large image.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from nanogate.core.errors import StreamCut
from nanogate.core.types import Chunk


@dataclass(frozen=True, slots=True)
class StreamLimits:
    deadline_s: float = 600.0
    min_bytes_per_second: float = 64.0  # 0: no minimum rate
    grace_s: float = 60.0


class Pace:
    """One stream's clock, started at admission."""

    def __init__(self, limits: StreamLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.admitted = clock()
        self.flowing: float | None = None  # when the first chunk arrived
        self.received = 0  # payload bytes since (and with) the first chunk

    def left(self) -> float:
        """Seconds until the whole-call deadline."""
        return self._ends() - self.clock()

    def seen(self, chunk: Chunk) -> None:
        if self.flowing is None:
            self.flowing = self.clock()
        self.received += len(chunk.body)

    def cutoff(self) -> float:
        """When the next chunk must have arrived by (on `clock`)."""
        return min(self._ends(), self._behind())

    def _ends(self) -> float:
        return self.admitted + self.limits.deadline_s

    def _behind(self) -> float:
        """When the stream falls `grace_s` behind the minimum rate, if no more bytes come."""
        rate = self.limits.min_bytes_per_second
        if self.flowing is None or rate <= 0:
            return math.inf
        return self.flowing + self.limits.grace_s + self.received / rate

    async def next(self, source: AsyncIterator[Chunk]) -> Chunk | None:
        """The next chunk of `source` (None at its end), or StreamCut when it would come
        later than `cutoff()`. The caller closes `source` either way."""
        wait = self.cutoff() - self.clock()
        if wait <= 0:  # a chunk already buffered still comes too late
            raise self.exceeded()
        timer = asyncio.timeout(wait)
        try:
            async with timer:
                chunk = await anext(source)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            if not timer.expired():
                raise
            raise self.exceeded() from None
        self.seen(chunk)
        return chunk

    def exceeded(self) -> StreamCut:
        """The error that ends a stream past `cutoff()`, naming the rule and its setting."""
        now = self.clock()
        took = now - self.admitted
        limits = self.limits
        if self.flowing is None:
            return StreamCut(
                f"The stream did not start within {limits.deadline_s:g} s, the most a streamed "
                "call may take (stream_deadline_seconds). Nothing was charged."
            )
        if self._ends() <= self._behind():
            why = (
                f"a streamed call may take at most {limits.deadline_s:g} s "
                "(stream_deadline_seconds)"
            )
        else:
            why = (
                f"the upstream sent {self.received} bytes in {now - self.flowing:.0f} s, slower "
                f"than {limits.min_bytes_per_second:g} bytes a second "
                "(stream_min_bytes_per_second)"
            )
        return StreamCut(
            f"The stream was cut after {math.floor(took)} s: {why}. What the upstream produced "
            "until then is charged."
        )
