"""The upstream simulator run inside the test's own event loop, with a client session on it:
what the simulator's own tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp

from tests.simulator import SimState, start


class SimClient:
    """A running simulator plus a client session pointed at it."""

    def __init__(self, state: SimState, base: str, session: aiohttp.ClientSession) -> None:
        self.state = state
        self.base = base
        self.session = session

    def url(self, path: str) -> str:
        return self.base + path

    async def faults(self, *faults: dict[str, Any]) -> None:
        async with self.session.post(self.url("/_sim/faults"), json=list(faults)) as resp:
            assert resp.status == 200, await resp.text()


C = TypeVar("C", bound=SimClient)


@asynccontextmanager
async def running(state: SimState, client: type[C]) -> AsyncIterator[C]:
    """The simulator on a free port with `state`, and a `client` on it; both closed on exit."""
    runner, port = await start("127.0.0.1", 0, state=state)
    try:
        async with aiohttp.ClientSession() as session:
            yield client(state, f"http://127.0.0.1:{port}", session)
    finally:
        await runner.cleanup()
