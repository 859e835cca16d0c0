"""client_left (web/common.py): whether a client hung up, asked of uvicorn's real `receive` over
a real socket, without waiting and without disturbing what uvicorn sees next."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from nanogate.web.common import client_left


@dataclass
class Probe:
    """The app's handler: reads the body, then answers client_left each time the test asks."""

    ask: asyncio.Queue[None] = field(default_factory=asyncio.Queue)
    answers: asyncio.Queue[bool] = field(default_factory=asyncio.Queue)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        await request.body()
        while True:
            await self.ask.get()
            if scope["path"] == "/starlette":
                left = await request.is_disconnected()
            else:
                left = await client_left(request)
            await self.answers.put(left)
            if left:
                return
            if scope["path"] != "/stay":
                continue
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return

    async def answer(self) -> bool:
        await self.ask.put(None)
        return await asyncio.wait_for(self.answers.get(), 5)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Probe, int]]:
    probe = Probe()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        probe, log_level="error", loop="asyncio", http="httptools", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):  # uvicorn says it started by a flag only
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    yield probe, sock.getsockname()[1]
    server.should_exit = True
    await task


async def _post(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode())
    await writer.drain()
    return reader, writer


async def _hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.1)  # uvicorn sees the close on its next read


async def test_a_client_still_there_has_not_left_and_gets_its_answer(
    served: tuple[Probe, int],
) -> None:
    probe, port = served
    reader, writer = await _post(port, "/stay")
    assert await probe.answer() is False
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_client_that_hung_up_has_left(served: tuple[Probe, int]) -> None:
    probe, port = served
    _, writer = await _post(port, "/ask")
    await _hang_up(writer)
    assert await probe.answer() is True


async def test_asking_while_the_client_stays_leaves_receive_as_it_was(
    served: tuple[Probe, int],
) -> None:
    """A `receive` that would wait is abandoned cleanly: asked again and again, it answers the
    same, and once the client goes the next question sees it."""
    probe, port = served
    _, writer = await _post(port, "/ask")
    for _ in range(50):
        assert await probe.answer() is False
    await _hang_up(writer)
    assert await probe.answer() is True


async def test_it_agrees_with_starlette(served: tuple[Probe, int]) -> None:
    probe, port = served
    _, writer = await _post(port, "/starlette")
    assert await probe.answer() is False
    await _hang_up(writer)
    assert await probe.answer() is True
