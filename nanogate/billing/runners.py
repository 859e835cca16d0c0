"""Transactions for the ledger, and group commit.

Each settled charge must be committed before its client gets the last byte of the answer, so
the commit is on every metered request's path. On SQLite it runs synchronously on the event
loop through the stdlib driver: a transaction of a few statements costs less there than
aiosqlite's thread hop costs for one statement (bench/relay.py measures metering). Nothing
in a transaction awaits anything real, so no other coroutine runs inside one. On PostgreSQL a
round trip is the cost: each ledger operation is one statement (ledger.py), and `PgRunner` sends
it through asyncpg itself, on a connection it keeps from SQLAlchemy's pool.

`Journal` queues the operations of concurrent requests and runs each batch in one transaction:
one commit serves many requests, and a commit's cost is paid once per batch. Reads go around
it (`Journal.read`), on a connection of their own: under WAL they never wait for the write lock,
so a status query answers while a batch waits for a lock another process holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from sqlalchemy import TextClause, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from nanogate.billing.ledger import Row, Tx
from nanogate.db.engine import unreachable

# asyncpg is imported by SQLAlchemy's PostgreSQL dialect, never on SQLite (~3 MiB of RSS).
if TYPE_CHECKING:
    import asyncpg

logger = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[Tx], Awaitable[T]]
Statement = Literal["loose", "durable"]

# How long the SQLite runner keeps retrying for the write lock another connection holds (the
# usage recorder, a CLI command) before it gives up on a transaction.
SQLITE_LOCK_WAIT_S = 10.0

# Commits between two WAL checkpoints. SQLite checkpoints inside the commit that crosses its
# threshold (1,000 pages), copying the WAL into the database file and syncing it: milliseconds
# on the event loop, every few dozen requests. The runner switches that off and checkpoints in
# a thread instead, on a connection of its own, once this many commits have gone by.
SQLITE_CHECKPOINT_EVERY = 100


class Runner(Protocol):
    async def run(self, work: Work[T]) -> T:
        """Run `work` in one transaction: committed if it returns, rolled back if it raises."""
        ...

    async def run_statement(self, work: Work[T], *, durable: bool) -> T:
        """Run `work`, one ledger statement (see `Journal.submit`), as cheaply as the database
        allows; unless `durable`, a crash may lose it."""
        ...

    def run_now(self, work: Work[T]) -> tuple[T] | None:
        """Run `work` in one transaction at once, synchronously, if this database can: its
        result (in a 1-tuple), or None with nothing done when it cannot (see `Journal.submit`).
        Raises what the work raised, rolled back."""
        ...

    async def read(self, work: Work[T]) -> T:
        """Run `work`, which only reads, on a connection no writer waits on."""
        ...

    async def close(self) -> None: ...


# A named parameter, as SQLAlchemy's text() finds them: ":name", not a "::" cast.
_PARAM = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


@lru_cache(maxsize=512)
def _numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with asyncpg's $1, $2, ... for its :names, and the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return _PARAM.sub(number, sql), tuple(names)


def _sqlite_param(value: Any) -> Any:
    # SQLAlchemy's SQLite DateTime stores UTC as "YYYY-MM-DD HH:MM:SS.ffffff"; the ledger's
    # rows must sort and read back the same way.
    if isinstance(value, datetime):
        # isoformat: the same text as strftime("%Y-%m-%d %H:%M:%S.%f"), in a third less time;
        # a UTC value (every one the gateway makes) as it is, its "+00:00" cut: half again.
        if value.tzinfo is UTC:
            return value.isoformat(" ", "microseconds")[:26]
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return value


# The stdlib driver binds a datetime through this, on every connection of the process: only
# this module's connections hand it datetime objects (SQLAlchemy's dialect hands it text).
sqlite3.register_adapter(datetime, _sqlite_param)


# The UTC day of a timestamp column (see `Tx.utc_day`): SQLite holds UTC as text (above).
SQLITE_DAY = "substr({}, 1, 10)"
POSTGRES_DAY = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


class _SqliteTx:
    lock = ""
    chained = False
    utc_day = SQLITE_DAY

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _run(self, sql: str, params: dict[str, Any]) -> sqlite3.Cursor:
        # As they are: the driver binds the names the statement has (a ledger operation
        # passes all of its own to each of its statements), datetimes through the adapter.
        return self._conn.execute(sql, params)

    async def one(self, sql: str, params: dict[str, Any]) -> Row | None:
        row: Row | None = self._run(sql, params).fetchone()
        return row

    async def all(self, sql: str, params: dict[str, Any]) -> list[Row]:
        return list(self._run(sql, params).fetchall())

    async def exec(self, sql: str, params: dict[str, Any]) -> int:
        return self._run(sql, params).rowcount


def _locked(exc: sqlite3.OperationalError) -> bool:
    """Another connection holds the write lock."""
    return "locked" in str(exc) or "busy" in str(exc)


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
        # Reads in autocommit: each statement sees the last commit, and under WAL no lock
        # another connection holds makes it wait.
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._reader.execute("PRAGMA query_only=ON")
        self._reader.execute("PRAGMA busy_timeout=0")  # never block the event loop
        self._read_tx = _SqliteTx(self._reader)
        self._path = path
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._commits = 0
        self._checkpoint: asyncio.Future[None] | None = None
        self._checkpointer: sqlite3.Connection | None = None

    async def run(self, work: Work[T]) -> T:
        deadline = time.monotonic() + SQLITE_LOCK_WAIT_S
        delay = 0.0005
        while True:
            try:
                # IMMEDIATE takes the write lock now, so no statement inside can hit a lock.
                self._conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if not _locked(exc):
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
        self._commit()
        return result

    def run_now(self, work: Work[T]) -> tuple[T] | None:
        # A ledger operation awaits nothing but its statements, which never wait here: driven
        # one step, it runs to its end. Work that would wait on the loop has run nothing but
        # statements so far: it is rolled back and left to `run`.
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _locked(exc):
                return None  # another connection writes: `run` waits for it, off this call
            raise
        try:
            step = work(self._tx)
            if isinstance(step, Coroutine):
                step.send(None)
        except StopIteration as done:
            self._commit()
            return (done.value,)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        try:
            if isinstance(step, Coroutine):
                step.close()  # it waited on the loop
        finally:
            self._conn.execute("ROLLBACK")
        return None

    def _commit(self) -> None:
        try:
            self._conn.execute("COMMIT")
        except BaseException:
            # A commit that failed (a full disk) may leave the transaction open: never the
            # next one's to inherit.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        self._commits += 1
        if self._commits >= SQLITE_CHECKPOINT_EVERY and self._checkpoint is None:
            self._commits = 0
            self._checkpoint = asyncio.get_running_loop().run_in_executor(None, self._copy_wal)
            self._checkpoint.add_done_callback(self._checkpointed)

    async def run_statement(self, work: Work[T], *, durable: bool) -> T:
        return await self.run(work)  # several statements here, and no commit waits for the disk

    def _copy_wal(self) -> None:
        # PASSIVE: copies what no reader still needs and never waits; the writer goes on
        # appending meanwhile. One checkpoint runs at a time, on a connection kept for them:
        # opening one parses the schema, about 0.4 ms of CPU a checkpoint.
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self._path, check_same_thread=False)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._checkpoint = None
        if not done.cancelled() and (exc := done.exception()) is not None:
            logger.warning("WAL checkpoint failed (%s)", type(exc).__name__)
            if self._checkpointer is not None:
                self._checkpointer.close()  # the next checkpoint opens a fresh one
                self._checkpointer = None

    async def read(self, work: Work[T]) -> T:
        return await work(self._read_tx)

    async def close(self) -> None:
        if self._checkpoint is not None:
            with contextlib.suppress(Exception):
                await self._checkpoint
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._conn.close()
        self._reader.close()


# The ledger's statements are a fixed set: each is parsed into a text() clause once.
_TEXTS: dict[str, TextClause] = {}


class EngineTx:
    """A `Tx` over a SQLAlchemy connection whose transaction the caller already opened."""

    lock = " FOR UPDATE"
    chained = True
    utc_day = POSTGRES_DAY

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._sqlite = conn.dialect.name == "sqlite"
        if self._sqlite:
            self.lock, self.chained, self.utc_day = "", False, SQLITE_DAY

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

    async def run_statement(self, work: Work[T], *, durable: bool) -> T:
        return await self.run(work)

    def run_now(self, work: Work[T]) -> tuple[T] | None:
        return None  # every statement is a wait on the driver

    async def read(self, work: Work[T]) -> T:
        async with self._engine.connect() as conn:
            return await work(EngineTx(conn))

    async def close(self) -> None:
        pass  # the engine belongs to the caller


class PgTx:
    """A `Tx` straight on an asyncpg connection: a statement costs its round trip and little
    more (SQLAlchemy's execution path costs several times that in CPU)."""

    lock = " FOR UPDATE"
    chained = True
    utc_day = POSTGRES_DAY

    def __init__(self, conn: asyncpg.Connection, *, single: bool = False) -> None:
        self._conn = conn
        # Outside a transaction (`single`), each statement commits on its own: a second one
        # would not be atomic with the first, so it is refused before it is sent.
        self._left = 1 if single else -1

    def _args(self, sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
        if self._left == 0:
            raise RuntimeError("work submitted as a statement must be one statement")
        self._left -= 1
        numbered, names = _numbered(sql)
        return numbered, [params[name] for name in names]

    async def one(self, sql: str, params: dict[str, Any]) -> Row | None:
        numbered, args = self._args(sql, params)
        row = await self._conn.fetchrow(numbered, *args)
        return None if row is None else tuple(row)

    async def all(self, sql: str, params: dict[str, Any]) -> list[Row]:
        numbered, args = self._args(sql, params)
        return [tuple(row) for row in await self._conn.fetch(numbered, *args)]

    async def exec(self, sql: str, params: dict[str, Any]) -> int:
        numbered, args = self._args(sql, params)
        status: str = await self._conn.execute(numbered, *args)  # "UPDATE 2", "INSERT 0 1"
        count = status.rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0


def _database_error(exc: Exception) -> Exception:
    """An asyncpg error as SQLAlchemy would have raised it, which is what `unreachable` and the
    web layer's handlers know; any other error as it is."""
    import asyncpg  # only PgRunner calls this, once SQLAlchemy's dialect has imported it

    if not isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return exc
    wrapped = DBAPIError.instance(None, None, exc, Exception, hide_parameters=True)
    assert isinstance(wrapped, Exception)
    return wrapped


def _described(exc: BaseException) -> str:
    """An error's class, and the driver's under it: names and codes only, never its text,
    which can quote the parameters."""
    cause = getattr(exc, "orig", None) or exc.__cause__
    if cause is None:
        return type(exc).__name__
    code = getattr(cause, "sqlstate", None) or getattr(cause, "sqlite_errorname", None)
    where = getattr(cause, "constraint_name", None)
    return f"{type(exc).__name__}: " + " ".join(
        str(part) for part in (type(cause).__name__, code, where) if part
    )


async def _driver(conn: AsyncConnection) -> asyncpg.Connection:
    return (await conn.get_raw_connection()).driver_connection


async def _transaction(conn: AsyncConnection, driver: asyncpg.Connection, work: Work[T]) -> T:
    """`work` in one transaction on `driver`, the asyncpg connection under `conn`. A connection
    left in doubt (lost, or cancelled mid-statement) is invalidated, never used again."""
    try:
        await driver.execute("BEGIN")
        result = await work(PgTx(driver))
        await driver.execute("COMMIT")
        return result
    except Exception as exc:
        if not await _rolled_back(driver):
            await conn.invalidate()
        raise _database_error(exc) from exc
    except BaseException:
        await conn.invalidate()
        raise


async def _rolled_back(driver: asyncpg.Connection) -> bool:
    if driver.is_closed():
        return False
    try:
        await driver.execute("ROLLBACK")
    except Exception:
        return False
    return True


class PgRunner:
    """Transactions on PostgreSQL through asyncpg itself, on connections of the engine's pool.

    The journal's batches come one at a time, and each runs on a connection this runner keeps
    checked out: a batch pays no pool checkout (SQLAlchemy's pre-ping alone is three round
    trips). A transaction that finds it busy (a top-up while a batch runs) takes one from the
    pool. A kept connection is replaced once lost; asyncpg sees a server close it as soon as it
    happens, so a backend terminated while idle costs no failed batch.

    A statement alone in its batch (`Journal.submit`) runs outside any transaction: one round
    trip instead of three (BEGIN, the statement, COMMIT). A loose one runs on a second kept
    connection whose session has `synchronous_commit` off, so its commit does not wait for the
    WAL to reach the disk either. A crash of the server can lose it, which loose work allows;
    the settle that follows a reservation waits for the WAL up to its own commit, which holds
    the reservation's."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # By looseness: the durable connection (the server's settings), the loose one.
        self._kept: dict[bool, tuple[AsyncConnection, asyncpg.Connection]] = {}
        self._busy = False

    async def run(self, work: Work[T]) -> T:
        if self._busy:
            async with self._engine.connect() as conn:
                return await _transaction(conn, await _driver(conn), work)
        self._busy = True
        try:
            return await _transaction(*await self._connection(loose=False), work)
        finally:
            self._busy = False

    async def run_statement(self, work: Work[T], *, durable: bool) -> T:
        if self._busy:
            return await self.run(work)
        self._busy = True
        try:
            conn, driver = await self._connection(loose=not durable)
            try:
                return await work(PgTx(driver, single=True))
            except Exception as exc:
                if driver.is_closed():
                    await conn.invalidate()
                raise _database_error(exc) from exc
            except BaseException:
                await conn.invalidate()  # cancelled mid-statement: in doubt
                raise
        finally:
            self._busy = False

    def run_now(self, work: Work[T]) -> tuple[T] | None:
        return None  # every statement is a round trip

    async def _connection(self, *, loose: bool) -> tuple[AsyncConnection, asyncpg.Connection]:
        kept = self._kept.get(loose)
        if kept is not None and (kept[0].invalidated or kept[1].is_closed()):
            await self._release(loose)
            kept = None
        if kept is None:
            conn = await self._engine.connect()
            try:
                driver = await _driver(conn)
                if loose:
                    await driver.execute("SET synchronous_commit TO off")
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await conn.invalidate()  # never back to the pool half set up
                    await conn.close()
                raise _database_error(exc) from exc
            kept = self._kept[loose] = conn, driver
        return kept

    async def read(self, work: Work[T]) -> T:
        async with self._engine.connect() as conn:
            try:
                return await work(PgTx(await _driver(conn)))
            except Exception as exc:
                raise _database_error(exc) from exc

    async def _release(self, loose: bool) -> None:
        kept = self._kept.pop(loose, None)
        if kept is None:
            return
        conn, driver = kept
        with contextlib.suppress(Exception):
            try:
                # Back to the pool as the engine would hand it out: waiting for the disk.
                await driver.execute("RESET synchronous_commit")
            except Exception:
                await conn.invalidate()
            await conn.close()

    async def close(self) -> None:
        for loose in list(self._kept):
            await self._release(loose)  # the engine belongs to the caller


def open_runner(url: str, engine: AsyncEngine) -> Runner:
    """The fastest runner for the database at `url`; `engine` serves the others."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return SqliteRunner(str(parsed.database))
    if parsed.get_backend_name() == "postgresql" and engine.dialect.driver == "asyncpg":
        return PgRunner(engine)
    return EngineRunner(engine)


class Journal:
    """Group commit: operations submitted while a transaction runs go together in the next."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._queue: list[tuple[Work[Any], asyncio.Future[Any], Statement | None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batch = False  # a batch is running (or waiting for the lock)

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

    def submit(
        self, work: Work[T], *, statement: Statement | None = None, alone: bool = False
    ) -> asyncio.Future[T]:
        """Queue `work`; the future resolves once its transaction has committed. The work runs
        even if the caller stops waiting (shield the future to keep waiting past a cancel).

        `statement`: `work` is one ledger operation (`reserve`, or `resolve` without other
        work: one statement where the database chains them), which alone in its batch runs
        outside a transaction (`Runner.run_statement`). "loose": a crash may lose it (a
        reservation lost holds nothing; a refund lost leaves a pending hold that recovery
        refunds), so its commit need not wait for the disk; "durable": it must not.

        `alone`: the caller knows of no other work that could share this one's commit (a
        metered call with no other in flight). Then, while no batch is queued or running, work
        the runner can run at once (`Runner.run_now`: a ledger operation on SQLite) runs in
        this call, and the future is already resolved: no trip through the journal's task and
        back (two loop turns a step). Calls in flight together queue, to share commits."""
        if self._task is None:
            raise RuntimeError("the ledger journal is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if alone and not self._queue and not self._batch:
            try:
                done = self.runner.run_now(work)
            except Exception as exc:
                logger.error("ledger transaction failed (%s)", _described(exc))
                future.set_exception(exc)
                return future
            if done is not None:
                future.set_result(done[0])
                return future
        self._queue.append((work, future, statement))
        self._wake.set()
        return future

    async def read(self, work: Work[T]) -> T:
        """Run `work`, which only reads, at once: never queued behind the writes."""
        return await self.runner.read(work)

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._commit()

    async def _commit(self) -> None:
        self._batch = True
        try:
            await self._commit_batch()
        finally:
            self._batch = False

    async def _commit_batch(self) -> None:
        batch, self._queue = self._queue, []

        async def together(tx: Tx) -> list[Any]:
            return [await work(tx) for work, _, _ in batch]

        try:
            if len(batch) == 1 and batch[0][2] is not None:
                work, _, statement = batch[0]
                results = [await self.runner.run_statement(work, durable=statement == "durable")]
            else:
                results = await self.runner.run(together)
        except asyncio.CancelledError:
            self._queue[:0] = batch  # stop() commits them
            raise
        except Exception as exc:
            logger.error("ledger transaction failed (%s)", _described(exc))
            if len(batch) == 1 or (isinstance(exc, sqlite3.OperationalError) and unreachable(exc)):
                # A lock another process held past the wait: each alone would wait for it
                # again, one wait apiece.
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            # One bad operation must not sink the others: each alone, in its own transaction.
            for work, future, _ in batch:
                try:
                    result = await self.runner.run(work)
                except Exception as exc:
                    if not future.done():
                        future.set_exception(exc)
                    continue
                if not future.done():
                    future.set_result(result)
            return
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
