"""GuardedStream (nanogate/core/streams.py): its source is closed and then its cleanup run,
once, however the stream ends: read to its end, closed early (even before its first chunk),
failed, or cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from nanogate.core.streams import GuardedStream
from nanogate.core.types import Chunk


class Source:
    """An async generator of chunks that notes what happened to it in `log` (shared with the
    cleanup, so the order shows). After `chunks`, it raises `error` if given, or with `stall`
    sets `stalled` and waits for ever, or ends."""

    def __init__(
        self,
        log: list[str],
        chunks: int = 3,
        *,
        error: Exception | None = None,
        stall: bool = False,
    ) -> None:
        self.log = log
        self.chunks = chunks
        self.error = error
        self.stall = stall
        self.stalled = asyncio.Event()

    async def run(self) -> AsyncIterator[Chunk]:
        self.log.append("started")
        try:
            for n in range(self.chunks):
                yield Chunk(f"chunk {n}".encode())
            if self.error is not None:
                raise self.error
            if self.stall:
                self.log.append("stalled")
                self.stalled.set()
                await asyncio.Event().wait()
        finally:
            self.log.append("source closed")


def guarded(source: Source, *, sync: bool = False) -> GuardedStream:
    async def cleanup() -> None:
        await asyncio.sleep(0)  # a real await: the cleanup is awaited, not just called
        source.log.append("cleanup")

    def cleanup_sync() -> None:
        source.log.append("cleanup")

    return GuardedStream(source.run(), cleanup_sync if sync else cleanup)


@pytest.mark.parametrize("sync", [False, True])
async def test_read_to_its_end_it_cleans_up_once(sync: bool) -> None:
    log: list[str] = []
    stream = guarded(Source(log), sync=sync)
    bodies = [chunk.body async for chunk in stream]
    assert bodies == [b"chunk 0", b"chunk 1", b"chunk 2"]
    # Exhausted, the stream closed itself without being asked.
    assert log == ["started", "source closed", "cleanup"]
    await stream.aclose()
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert log.count("cleanup") == 1


async def test_closed_before_its_first_chunk_it_still_cleans_up() -> None:
    log: list[str] = []
    stream = guarded(Source(log))
    await stream.aclose()
    # The generator never started, so its own finally never runs: the cleanup does.
    assert log == ["cleanup"]
    await stream.aclose()
    assert log == ["cleanup"]


async def test_closed_midway_it_closes_the_source_then_cleans_up() -> None:
    log: list[str] = []
    stream = guarded(Source(log))
    assert (await anext(stream)).body == b"chunk 0"
    assert log == ["started"]
    await stream.aclose()
    assert log == ["started", "source closed", "cleanup"]
    await stream.aclose()
    assert log.count("cleanup") == 1


async def test_a_failing_source_is_cleaned_up_once_when_closed() -> None:
    log: list[str] = []
    stream = guarded(Source(log, chunks=1, error=RuntimeError("upstream broke")))
    await anext(stream)
    with pytest.raises(RuntimeError, match="upstream broke"):
        await anext(stream)
    # The error reaches the reader as it is; the cleanup waits for the close every reader
    # makes however it ends.
    assert log == ["started", "source closed"]
    await stream.aclose()
    await stream.aclose()
    assert log == ["started", "source closed", "cleanup"]


async def test_the_cleanup_runs_even_when_closing_the_source_fails() -> None:
    log: list[str] = []

    class Stubborn:
        def __aiter__(self) -> Stubborn:
            return self

        async def __anext__(self) -> Chunk:
            return Chunk(b"x")

        async def aclose(self) -> None:
            raise OSError("connection reset")

    stream = GuardedStream(Stubborn(), lambda: log.append("cleanup"))
    await anext(stream)
    with pytest.raises(OSError, match="connection reset"):
        await stream.aclose()
    assert log == ["cleanup"]
    await stream.aclose()  # closed is closed: neither the source nor the cleanup again
    assert log == ["cleanup"]


async def test_a_source_without_aclose_is_fine() -> None:
    log: list[str] = []

    class Plain:
        def __init__(self) -> None:
            self.left = 2

        def __aiter__(self) -> Plain:
            return self

        async def __anext__(self) -> Chunk:
            if not self.left:
                raise StopAsyncIteration
            self.left -= 1
            return Chunk(b"x")

    stream = GuardedStream(Plain(), lambda: log.append("cleanup"))
    assert len([chunk async for chunk in stream]) == 2
    assert log == ["cleanup"]


async def test_a_cancelled_reader_cleans_up_once() -> None:
    log: list[str] = []
    source = Source(log, chunks=1, stall=True)
    stream = guarded(source)
    got: list[bytes] = []

    async def reader() -> None:
        # What every reader does: close the stream however the reading ends.
        try:
            async for chunk in stream:
                got.append(chunk.body)
        finally:
            await stream.aclose()

    task = asyncio.create_task(reader())
    await source.stalled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert got == [b"chunk 0"]
    assert log == ["started", "stalled", "source closed", "cleanup"]
    await stream.aclose()
    assert log.count("cleanup") == 1


async def test_a_reader_cancelled_before_its_first_chunk_cleans_up() -> None:
    log: list[str] = []
    source = Source(log, chunks=0, stall=True)
    stream = guarded(source)

    async def reader() -> None:
        try:
            await anext(stream)
        finally:
            await stream.aclose()

    task = asyncio.create_task(reader())
    await source.stalled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["started", "stalled", "source closed", "cleanup"]
