"""A chunk stream whose cleanup always runs.

Closing an async generator that never started skips its `finally`, so a stream abandoned
before its first `anext` (a client gone before the first byte) would leak an upstream
connection, a concurrency slot and its usage record. Each layer that holds something for the
stream's lifetime wraps it in GuardedStream instead.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable

from nanogate.core.types import Chunk


class GuardedStream:
    def __init__(
        self, source: AsyncIterator[Chunk], cleanup: Callable[[], Awaitable[None] | None]
    ) -> None:
        self._source = source
        self._cleanup = cleanup
        self._closed = False

    def __aiter__(self) -> GuardedStream:
        return self

    async def __anext__(self) -> Chunk:
        try:
            return await anext(self._source)
        except StopAsyncIteration:
            await self.aclose()  # a stream read to its end cleans up without being asked
            raise

    async def aclose(self) -> None:
        """Close the source, then run the cleanup; once, whatever happened before."""
        if self._closed:
            return
        self._closed = True
        try:
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            result = self._cleanup()
            if inspect.isawaitable(result):
                await result
