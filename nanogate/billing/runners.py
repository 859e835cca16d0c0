"""Transactions for the ledger, and group commit.

Each settled charge must be committed before its client gets the last byte of the answer, so
the commit is on every metered request's path. On SQLite it runs synchronously on the event
loop through the stdlib driver: a transaction of a few statements costs less there than
aiosqlite's thread hop costs for one statement (bench/relay.py measures metering). Nothing
in a transaction awaits anything real, so no other coroutine runs inside one. PostgreSQL goes
through SQLAlchemy's asyncpg connection pool, where a round trip is the cost.

`Journal` queues the operations of concurrent requests and runs each batch in one transaction:
one commit serves many requests, and a commit's cost is paid once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import TextClause, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from nanogate.billing.ledger import Row, Tx

logger = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[Tx], Awaitable[T]]

# How long the SQLite runner keeps retrying for the write lock another connection holds (the
# usage recorder, a CLI command) before it gives up on a transaction.
SQLITE_LOCK_WAIT_S = 10.0


class Runner(Protocol):
    async def run(self, work: Work[T]) -> T:
        """Run `work` in one transaction: committed if it returns, rolled back if it raises."""
        ...

    async def close(self) -> None: ...


def _sqlite_param(value: Any) -> Any:
    # SQLAlchemy's SQLite DateTime stores UTC as "YYYY-MM-DD HH:MM:SS.ffffff"; the ledger's
    # rows must sort and read back the same way.
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


class _SqliteTx:
    lock = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _run(self, sql: str, params: dict[str, Any]) -> sqlite3.Cursor:
        return self._conn.execute(sql, {k: _sqlite_param(v) for k, v in params.items()})

    async def one(self, sql: str, params: dict[str, Any]) -> Row | None:
        row: Row | None = self._run(sql, params).fetchone()
        return row

    async def all(self, sql: str, params: dict[str, Any]) -> list[Row]:
        return list(self._run(sql, params).fetchall())

    async def exec(self, sql: str, params: dict[str, Any]) -> int:
        return self._run(sql, params).rowcount


class SqliteRunner:
    def __init__(self, path: str) -> None:
        # Autocommit mode: the runner says BEGIN and COMMIT itself.
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        # Never block the event loop waiting for a lock: fail at once, retry after a sleep.
        self._conn.execute("PRAGMA busy_timeout=0")
        self._tx = _SqliteTx(self._conn)

    async def run(self, work: Work[T]) -> T:
        deadline = time.monotonic() + SQLITE_LOCK_WAIT_S
        delay = 0.0005
        while True:
            try:
                # IMMEDIATE takes the write lock now, so no statement inside can hit a lock.
                self._conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.02)
        try:
            result = await work(self._tx)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return result

    async def close(self) -> None:
        self._conn.close()


# The ledger's statements are a fixed set: each is parsed into a text() clause once.
_TEXTS: dict[str, TextClause] = {}


class EngineTx:
    """A `Tx` over a SQLAlchemy connection whose transaction the caller already opened."""

    lock = " FOR UPDATE"

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._sqlite = conn.dialect.name == "sqlite"
        if self._sqlite:
            self.lock = ""

    def _params(self, params: dict[str, Any]) -> dict[str, Any]:
        # Untyped text() parameters reach the driver as they are; SQLite needs our format.
        return {k: _sqlite_param(v) for k, v in params.items()} if self._sqlite else params

    def _text(self, sql: str) -> TextClause:
        clause = _TEXTS.get(sql)
        if clause is None:
            clause = _TEXTS[sql] = text(sql)
        return clause

    async def one(self, sql: str, params: dict[str, Any]) -> Row | None:
        row = (await self._conn.execute(self._text(sql), self._params(params))).first()
        return tuple(row) if row is not None else None

    async def all(self, sql: str, params: dict[str, Any]) -> list[Row]:
        return [
            tuple(row) for row in await self._conn.execute(self._text(sql), self._params(params))
        ]

    async def exec(self, sql: str, params: dict[str, Any]) -> int:
        return (await self._conn.execute(self._text(sql), self._params(params))).rowcount


class EngineRunner:
    """Transactions on a SQLAlchemy async engine (PostgreSQL, or SQLite in tools)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def run(self, work: Work[T]) -> T:
        async with self._engine.begin() as conn:
            return await work(EngineTx(conn))

    async def close(self) -> None:
        pass  # the engine belongs to the caller


def open_runner(url: str, engine: AsyncEngine) -> Runner:
    """The fastest runner for the database at `url`; `engine` serves the others."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return SqliteRunner(str(parsed.database))
    return EngineRunner(engine)


class Journal:
    """Group commit: operations submitted while a transaction runs go together in the next."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._queue: list[tuple[Work[Any], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="ledger-journal")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            await self._commit()

    def submit(self, work: Work[T]) -> asyncio.Future[T]:
        """Queue `work`; the future resolves once its transaction has committed. The work runs
        even if the caller stops waiting (shield the future to keep waiting past a cancel)."""
        if self._task is None:
            raise RuntimeError("the ledger journal is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        self._wake.set()
        return future

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._commit()

    async def _commit(self) -> None:
        batch, self._queue = self._queue, []

        async def together(tx: Tx) -> list[Any]:
            return [await work(tx) for work, _ in batch]

        try:
            results = await self.runner.run(together)
        except asyncio.CancelledError:
            self._queue[:0] = batch  # stop() commits them
            raise
        except Exception as exc:
            logger.error("ledger transaction failed (%s)", type(exc).__name__)
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            # One bad operation must not sink the others: each alone, in its own transaction.
            for work, future in batch:
                try:
                    result = await self.runner.run(work)
                except Exception as exc:
                    if not future.done():
                        future.set_exception(exc)
                    continue
                if not future.done():
                    future.set_result(result)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
