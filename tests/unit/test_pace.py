"""A stream's deadline and minimum rate (nanogate/core/pace.py), without a server: the cutoff
worked by hand on a hand-moved clock, then `next` against real timers on short sources."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from nanogate.core.errors import StreamCut
from nanogate.core.pace import Pace, StreamLimits
from nanogate.core.types import Chunk


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_cutoff_is_the_deadline_until_the_first_chunk() -> None:
    clock = Clock()
    pace = Pace(StreamLimits(deadline_s=600, min_bytes_per_second=64, grace_s=60), clock)
    assert pace.cutoff() == 1600 and pace.left() == 600
    clock.now += 100  # a long wait for the first chunk is the router's business, not the rate's
    assert pace.cutoff() == 1600 and pace.left() == 500


def test_the_rate_rule_gives_grace_plus_what_was_received_over_the_rate() -> None:
    clock = Clock()
    pace = Pace(StreamLimits(deadline_s=600, min_bytes_per_second=64, grace_s=60), clock)
    clock.now += 10
    pace.seen(Chunk(b"x" * 640))  # 10 s worth at 64 bytes a second
    assert pace.cutoff() == 1010 + 60 + 10
    clock.now += 70
    pace.seen(Chunk(b"x"))  # a drip: each byte buys 1/64 s
    assert pace.cutoff() == 1010 + 60 + 641 / 64
    pace.seen(Chunk(b"x" * 64_000))  # a healthy stream is bounded by the deadline alone
    assert pace.cutoff() == 1600


def test_no_minimum_rate_leaves_the_deadline() -> None:
    clock = Clock()
    pace = Pace(StreamLimits(deadline_s=5, min_bytes_per_second=0, grace_s=0), clock)
    pace.seen(Chunk(b"x"))
    assert pace.cutoff() == 1005


def test_the_error_names_the_rule_that_cut() -> None:
    clock = Clock()
    pace = Pace(StreamLimits(deadline_s=600, min_bytes_per_second=64, grace_s=60), clock)
    assert "did not start" in pace.exceeded().message
    clock.now += 1
    pace.seen(Chunk(b"x" * 100))
    clock.now += 62
    cut = pace.exceeded()
    assert (cut.status, cut.reason) == (504, "DEADLINE_EXCEEDED")
    assert "100 bytes in 62 s" in cut.message and "stream_min_bytes_per_second" in cut.message
    fast = Pace(StreamLimits(deadline_s=3, min_bytes_per_second=64, grace_s=60), clock)
    fast.seen(Chunk(b"x"))
    clock.now += 3
    assert "at most 3 s (stream_deadline_seconds)" in fast.exceeded().message


async def drip(every: float, size: int = 1) -> AsyncIterator[Chunk]:
    """Chunks of `size` bytes, one every `every` seconds, forever."""
    while True:
        await asyncio.sleep(every)
        yield Chunk(b"x" * size)


async def read(pace: Pace, source: AsyncIterator[Chunk]) -> tuple[int, float, StreamCut | None]:
    """Chunks read, seconds taken, and the cut that ended them (None: the source ended)."""
    started = time.monotonic()
    count = 0
    try:
        while await pace.next(source) is not None:
            count += 1
    except StreamCut as cut:
        return count, time.monotonic() - started, cut
    return count, time.monotonic() - started, None


async def test_a_stream_that_keeps_its_pace_is_cut_at_the_deadline() -> None:
    pace = Pace(StreamLimits(deadline_s=0.5, min_bytes_per_second=100, grace_s=0.1))
    pace.seen(Chunk(b"x" * 10))
    # 20 bytes every 10 ms is 2,000 a second: the rate is kept, the deadline is not.
    count, took, cut = await read(pace, drip(0.01, 20))
    assert cut is not None and "stream_deadline_seconds" in cut.message
    assert 0.45 <= took < 0.7 and count > 10


async def test_a_drip_is_cut_by_the_minimum_rate_long_before_the_deadline() -> None:
    pace = Pace(StreamLimits(deadline_s=60, min_bytes_per_second=100, grace_s=0.2))
    pace.seen(Chunk(b"x" * 10))
    # A byte every 20 ms is 50 a second: it falls behind by half a second each second, so
    # 0.2 s behind after about 0.4 s (plus the 0.1 s the first 10 bytes bought).
    count, took, cut = await read(pace, drip(0.02))
    assert cut is not None and "stream_min_bytes_per_second" in cut.message
    assert 0.3 <= took < 0.8 and count > 5


async def test_a_silent_upstream_is_cut_too() -> None:
    pace = Pace(StreamLimits(deadline_s=60, min_bytes_per_second=100, grace_s=0.2))
    pace.seen(Chunk(b"x" * 10))
    count, took, cut = await read(pace, drip(3600))
    assert cut is not None and count == 0 and 0.25 <= took < 0.6


async def test_a_source_that_ends_ends_and_its_own_timeout_is_not_a_cut() -> None:
    async def three() -> AsyncIterator[Chunk]:
        for _ in range(3):
            yield Chunk(b"abc")

    pace = Pace(StreamLimits(deadline_s=5))
    assert await read(pace, three()) == (3, pytest.approx(0, abs=0.1), None)

    async def timing_out() -> AsyncIterator[Chunk]:
        raise TimeoutError
        yield Chunk(b"")  # an async generator

    with pytest.raises(TimeoutError):
        await Pace(StreamLimits(deadline_s=5)).next(timing_out())


async def test_a_chunk_ready_past_the_cutoff_is_still_cut() -> None:
    # A slow client makes the next read start late; what is already buffered does not count.
    clock = Clock()
    pace = Pace(StreamLimits(deadline_s=1), clock)

    async def ready() -> AsyncIterator[Chunk]:
        yield Chunk(b"x")

    clock.now += 2
    with pytest.raises(StreamCut):
        await pace.next(ready())
