"""HTTP plumbing every simulated API shares: bookkeeping and recording, body parsing, taking
the fault a request consumes, and the connection-level faults (reset, a body cut short)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from tests.simulator.faults import Fault, fault_from_body
from tests.simulator.state import STATE_KEY, SimState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Inner = Callable[[web.Request, SimState, bytes, Any], Awaitable[web.StreamResponse]]


class BadJson(Exception):
    """Stands in for a body that isn't JSON (handlers decide whether that is an error)."""


def parse(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return BadJson()


def record(state: SimState, request: web.Request, raw: bytes, parsed: Any) -> None:
    state.requests.append(
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            # CIMultiDict keys are istr, which orjson refuses as dict keys.
            "headers": {str(k): v for k, v in request.headers.items()},
            "body": raw.decode("utf-8", "replace"),
            "json": parsed,
            "time": time.time(),
        }
    )


def instrumented(inner: Inner) -> Handler:
    """Wrap an API handler with the bookkeeping every API request gets: stats and recording."""

    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        state.total += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            raw = await request.read()
            parsed = parse(raw)
            if state.record:
                record(state, request, raw, None if isinstance(parsed, BadJson) else parsed)
            return await inner(request, state, raw, parsed)
        finally:
            state.in_flight -= 1

    return handler


async def take_fault(
    request: web.Request, state: SimState, raw: bytes, model: str | None, *, task: bool = False
) -> Fault:
    """The fault this request consumes (queued, with any prompt directive laid over it), after
    its delay has been slept. `task` marks a task creation, the only consumer of task faults."""
    fault = state.pop_fault(model, request.path, task=task) or Fault()
    directive = fault_from_body(raw)
    if directive is not None:
        fault = fault.merged_with(directive)
    if fault.delay:
        await asyncio.sleep(fault.delay)
    return fault


def retry_after_header(fault: Fault) -> dict[str, str] | None:
    return {"Retry-After": fault.retry_after} if fault.retry_after is not None else None


def abort(request: web.Request) -> web.StreamResponse:
    """Drop the connection with a TCP reset and no HTTP response at all.

    The returned response is never sent: aiohttp finds the transport gone, treats it as the
    client having left (a ConnectionError it swallows), and logs nothing.
    """
    if request.transport is not None:
        request.transport.abort()
    return web.Response()


async def close_after_flush(request: web.Request) -> None:
    """End the connection mid-body. A graceful close (not a reset) makes sure the client gets
    the bytes already written before it sees the body cut short."""
    transport = request.transport
    if transport is None:
        return
    transport.close()
    # Let the loop flush and run connection_lost before aiohttp tries to finish the response.
    await asyncio.sleep(0)


def base_url(request: web.Request, state: SimState) -> str:
    """This simulator's address as a client reaches it, for result URLs (or `public_url`)."""
    if state.public_url:
        return state.public_url.rstrip("/")
    return f"{request.scheme}://{request.host}"


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None
