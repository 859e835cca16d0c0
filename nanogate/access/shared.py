"""Limits shared by the worker processes of one `nanogate serve --workers N`, with no Redis.

The supervising process keeps the one in-memory Limiter and AuthThrottle and serves them on a
Unix socket; each worker asks it, so a 60 RPM key gets 60 across the workers, not 60 each. A
line a question, answered in order on the worker's one connection:

    A <key id> <concurrency> <rpm>   ->  "a" admitted | "b" busy | "m <ms>" minute full
    R <key id>                       ->  (none) a slot given back
    C <client>                       ->  "0" allowed | "<ms>" refused for that long
    F <client>                       ->  (none) a failed authentication counted

A worker that dies gives its slots back: the server frees what its connection still held. A
worker that cannot reach the server (it is gone) counts on its own, as a node does while Redis
is down, and says so once in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque

from nanogate.access.keys import KeyRecord
from nanogate.access.limits import ADMITTED, BUSY, Lease, Limiter, busy, minute_full
from nanogate.access.throttle import AuthThrottle, refused
from nanogate.core.errors import RateLimited

log = logging.getLogger("nanogate")

_VERDICTS = {ADMITTED: "a", BUSY: "b"}


class LimitsServer:
    """The supervisor's side: one Limiter and one AuthThrottle for every worker."""

    def __init__(self, auth_failures_per_minute: int) -> None:
        self.limiter = Limiter()
        self.throttle = AuthThrottle(auth_failures_per_minute)

    async def serve(self, path: str) -> asyncio.AbstractServer:
        return await asyncio.start_unix_server(self._connection, path)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held: Counter[int] = Counter()
        try:
            while line := await reader.readline():
                answer = await self._answer(line.decode().split(), held)
                if answer is not None:
                    writer.write(answer.encode() + b"\n")
        except (ConnectionError, ValueError, IndexError) as exc:
            log.warning("shared limits: a worker's connection failed (%s)", type(exc).__name__)
        finally:
            # Its worker is gone: so are its calls.
            for key_id, count in held.items():
                for _ in range(count):
                    self.limiter.free(key_id)
            writer.close()

    async def _answer(self, words: list[str], held: Counter[int]) -> str | None:
        ask = words[0]
        if ask == "A":
            key_id, concurrency, rpm = int(words[1]), int(words[2]), int(words[3])
            verdict, wait_s = await self.limiter.admit(key_id, concurrency, rpm)
            if verdict == ADMITTED:
                held[key_id] += 1
            return _VERDICTS.get(verdict) or f"m {round(wait_s * 1000)}"
        if ask == "R":
            key_id = int(words[1])
            if held[key_id] > 0:
                held[key_id] -= 1
                self.limiter.free(key_id)
            return None
        if ask == "C":
            try:
                await self.throttle.check(words[1])
            except RateLimited as exc:
                return str((exc.retry_after or 1) * 1000)
            return "0"
        if ask == "F":
            await self.throttle.failed(words[1])
            return None
        raise ValueError(f"unknown question {ask!r}")


class LimitsLink:
    """A worker's one connection to the supervisor's LimitsServer."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        # Each question's future, and what undoes an admission its asker stopped waiting for.
        self._waiting: deque[tuple[asyncio.Future[str], str | None]] = deque()
        self._reader_task: asyncio.Task[None] | None = None
        self._lost = False

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self.path)
        self._reader_task = asyncio.create_task(self._read(reader), name="shared-limits")

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()

    def up(self) -> bool:
        return self._writer is not None and not self._lost

    async def ask(self, question: str, undo: str | None = None) -> str:
        """The server's answer; ConnectionError when the server is gone. `undo` is told in
        the caller's place if it is cancelled before an "a" (admitted) answer arrives."""
        if not self.up():
            raise ConnectionError("the shared limits are gone")
        assert self._writer is not None
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append((future, undo))
        self._writer.write(question.encode() + b"\n")
        return await future

    def tell(self, news: str) -> None:
        if self.up():
            assert self._writer is not None
            self._writer.write(news.encode() + b"\n")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                future, undo = self._waiting.popleft()
                answer = line.decode().strip()
                if not future.cancelled():
                    future.set_result(answer)
                elif undo is not None and answer == "a":
                    self.tell(undo)
        except ConnectionError:
            pass
        self._lost = True
        log.error("shared limits lost: this worker process counts its own from now on")
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("the shared limits are gone"))


class SharedLimiter(Limiter):
    """Limits counted by the supervisor; this process's own count when it cannot be asked."""

    def __init__(self, link: LimitsLink) -> None:
        super().__init__()
        self.link = link

    async def acquire(self, key: KeyRecord) -> Lease:
        if not key.rpm_limit and not key.concurrency_limit:
            return Lease(key.id)  # nothing to count
        try:
            answer = await self.link.ask(
                f"A {key.id} {key.concurrency_limit or 0} {key.rpm_limit or 0}", f"R {key.id}"
            )
        except ConnectionError:
            return await super().acquire(key)
        if answer == "b":
            raise busy(key)
        if answer.startswith("m "):
            raise minute_full(key, int(answer[2:]) / 1000)
        return Lease(key.id, slot="shared")

    async def release(self, lease: Lease) -> None:
        if lease.local:
            await super().release(lease)
        elif lease.slot is not None:
            self.link.tell(f"R {lease.key_id}")


class SharedThrottle(AuthThrottle):
    """Failed authentications counted by the supervisor; this process's own without it."""

    def __init__(self, per_minute: int, link: LimitsLink) -> None:
        super().__init__(per_minute)
        self.link = link

    async def check(self, client: str) -> None:
        if not self.per_minute:
            return
        try:
            wait_ms = int(await self.link.ask(f"C {_word(client)}"))
        except ConnectionError:
            await super().check(client)
            return
        if wait_ms:
            raise refused(wait_ms / 1000)

    async def failed(self, client: str) -> None:
        if not self.per_minute:
            return
        if self.link.up():
            self.link.tell(f"F {_word(client)}")
        else:
            await super().failed(client)


def _word(client: str) -> str:
    # An address never holds white space; a made-up one must not split the line.
    return "".join(client.split()) or "-"
