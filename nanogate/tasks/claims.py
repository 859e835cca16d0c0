"""The loop a worker and the callback sender share: claim due rows up to a concurrency limit,
run each claimed row as its own asyncio task, and claim again when woken (new work here), when
a slot frees, or every `poll_s` (work queued by other processes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class ClaimLoop:
    name = "claims"

    def __init__(self, concurrency: int, poll_s: float) -> None:
        self.concurrency = concurrency
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    async def claim(self, limit: int) -> None:
        """Claim up to `limit` rows and `spawn` a run for each."""
        raise NotImplementedError

    def wake(self) -> None:
        """Work was queued here: claim now rather than at the next poll."""
        self._wake.set()

    def spawn(self, run: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(run, name=name)
        self._running.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()  # a slot is free

    def start_loop(self) -> None:
        self._loop = asyncio.create_task(self._claim_loop(), name=self.name)

    async def stop_loop(self) -> None:
        """Stop claiming and cancel the runs in flight (their leases let others take over)."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _claim_loop(self) -> None:
        while True:
            free = self.concurrency - len(self._running)
            if free > 0:
                try:
                    await self.claim(free)
                except Exception as exc:
                    logger.warning("%s: claim failed (%s)", self.name, type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            self._wake.clear()
