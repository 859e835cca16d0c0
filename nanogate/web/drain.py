"""Graceful shutdown of a serving process: the first SIGTERM (or Ctrl+C) starts a drain.

From the signal:
- at once, /readyz answers 503 "draining", answers carry `Connection: close` (a client's or a
  proxy's kept-alive connection moves to another node), and the task worker hands its running
  tasks back to the queue, where another node claims them at once;
- after `drain_delay_seconds` (at most the grace) the listener closes: new connections are
  refused, which a proxy retries on another node;
- requests in flight run on until `shutdown_grace_seconds`; then the rest are cut. A cut call
  answers 503 in its dialect's envelope if it had not started answering (a cut stream just
  ends), its hold is refunded and its usage record written before the process tears down.

uvicorn alone closes the listener at once on SIGTERM, and at `timeout_graceful_shutdown`
cancels the requests still running and goes on to the lifespan shutdown without waiting for
them: their refunds would race the database's teardown. So `DrainingServer` adds the delay,
the cut happens here at the grace, and the lifespan waits (`settled`) for cut requests to
unwind; uvicorn's own timeout is set past both, as a backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import FrameType
from typing import Any

import uvicorn
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nanogate.core.errors import Unavailable
from nanogate.engine.gateway import Context

log = logging.getLogger("nanogate")

# How long cut requests get to unwind (refund their holds, write their records) before the
# process tears down its database connections anyway.
UNWIND_S = 5.0
# Where a route leaves its call's Context in the request's state, for the cut to mark it.
CONTEXT_STATE = "call"


def shutting_down() -> Unavailable:
    return Unavailable(
        "The gateway shut down before this call finished; it was not charged. Retry it."
    )


class Drain:
    """The process's drain: when it began, and the requests in flight it may have to cut."""

    def __init__(self, grace_s: float = 0.0) -> None:
        self.grace_s = grace_s
        self.since: float | None = None  # time.monotonic() at the signal
        self.cutting = False
        self._started = False
        self._requests: dict[asyncio.Task[Any], dict[str, Any]] = {}
        self._hooks: list[Callable[[], Awaitable[None]]] = []
        self._jobs: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def draining(self) -> bool:
        return self.since is not None

    def elapsed(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since

    def on_begin(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` when the drain begins (the task worker's stop)."""
        self._hooks.append(hook)

    def signalled(self) -> None:
        """Mark the drain begun (/readyz says so from now on); safe in a signal handler."""
        if self.since is None:
            self.since = time.monotonic()

    def begin(self) -> None:
        """Start draining, once: runs the hooks, and the cut when the grace is over."""
        self.signalled()
        if self._started:
            return
        self._started = True
        log.info(
            "draining", extra={"in_flight": len(self._requests), "grace_seconds": self.grace_s}
        )
        for hook in self._hooks:
            self._spawn(self._run_hook(hook))
        self._spawn(self._cut_after_grace())

    def cut(self) -> None:
        """Cancel every request still running, marking its call failed first, so whatever
        cleans up after it refunds the hold and records a 503 rather than a client gone."""
        self.cutting = True
        if self._requests:
            log.warning("grace over; cutting requests", extra={"count": len(self._requests)})
        for task, state in self._requests.items():
            ctx = state.get(CONTEXT_STATE)
            if isinstance(ctx, Context) and ctx.status == 200:
                ctx.fail(shutting_down())
            task.cancel()

    def enter(self, task: asyncio.Task[Any], state: dict[str, Any]) -> None:
        self._requests[task] = state
        self._idle.clear()

    def leave(self, task: asyncio.Task[Any]) -> None:
        del self._requests[task]
        if not self._requests:
            self._idle.set()

    async def settled(self) -> None:
        """Wait, at most UNWIND_S, until no request runs."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(UNWIND_S):
                await self._idle.wait()

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _run_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        try:
            await hook()
        except Exception:
            log.exception("drain step failed")

    async def _cut_after_grace(self) -> None:
        await asyncio.sleep(self.grace_s)
        self.cut()


class Drained:
    """An ASGI layer, under the request id's: keeps the requests in flight for the drain, and
    answers the ones it cuts."""

    def __init__(
        self, app: ASGIApp, drain: Drain, render: Callable[[Scope, Unavailable], Response]
    ) -> None:
        self.app = app
        self.drain = drain
        self.render = render  # the error in the envelope of the route `scope` names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        drain = self.drain
        task = asyncio.current_task()
        assert task is not None
        drain.enter(task, scope.setdefault("state", {}))
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if drain.draining:
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            if not drain.cutting:
                raise
            task.uncancel()
            if not started:
                await self.render(scope, shutting_down())(scope, receive, sending)
            # A started answer (a stream) ends here unfinished: uvicorn closes the connection,
            # so the client sees it cut rather than complete.
        finally:
            drain.leave(task)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the drain before its own shutdown: the first SIGTERM or SIGINT
    begins it, and the listener closes `delay_s` later; a second signal stops at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain, delay_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.delay_s = delay_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler interrupts the loop anywhere: it only raises flags, which the
        # loop's next tick (every 0.1 s) acts on.
        if not self.drain.draining:
            self.drain.signalled()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain.draining:
            self.drain.begin()
            if self.drain.elapsed() >= self.delay_s:
                return True
        return await super().on_tick(counter)


def serve(
    app: ASGIApp,
    drain: Drain,
    *,
    host: str,
    port: int,
    delay_s: float,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Run `app` under uvicorn until a signal, then drain (see the module's docstring); on
    `sockets` when given (a worker process's share of its supervisor's listener)."""
    delay_s = min(delay_s, drain.grace_s)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        # The client address is ours to work out (trusted_proxies): uvicorn would otherwise
        # believe X-Forwarded-For from any local peer.
        proxy_headers=False,
        # A backstop: the drain cuts at the grace, and cut requests unwind within UNWIND_S.
        timeout_graceful_shutdown=math.ceil(drain.grace_s - delay_s + UNWIND_S + 1),
    )
    server = DrainingServer(config, drain, delay_s)
    server.run(sockets=sockets)
    if not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE: it logged why
