"""The engine factory and the programmatic `alembic upgrade head`."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# Alembic is imported only to migrate (~11 MiB of RSS a serving process need not keep).
if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# A CLI process and the server share one SQLite file: a writer waits this long for the other's
# lock instead of failing at once with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 5000


def make_engine(url: str) -> AsyncEngine:
    """An async engine for `sqlite+aiosqlite:///file` or `postgresql+asyncpg://...`."""
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    # Bound parameters never reach logs or error messages: they may hold key hashes or prompts.
    return create_async_engine(
        url,
        hide_parameters=True,
        pool_size=10,
        max_overflow=20,
        pool_pre_ping=True,  # a restarted or failed-over server leaves dead pooled connections
        pool_recycle=1800,
        connect_args={"server_settings": {"application_name": "nanogate"}},
    )


async def ping(engine: AsyncEngine) -> None:
    """A round trip to the database (`SELECT 1`); raises when it does not answer."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database did not answer (another connection held SQLite's write
    lock too long; PostgreSQL's connection was lost or refused) rather than that it refused a
    statement: the same work may succeed as it is, later."""
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, InterfaceError):
            return True
        if isinstance(exc.orig, sqlite3.Error):
            return unreachable(exc.orig)
        # PostgreSQL's classes for it: connection exceptions, insufficient resources, operator
        # intervention (a shutdown, a terminated backend), and 55000, with which a database
        # that does not allow connections refuses one.
        state = str(getattr(exc.orig, "sqlstate", None) or "")
        return isinstance(exc, OperationalError) or state[:2] in _DOWN_CLASSES or state == "55000"
    return isinstance(exc, OSError | TimeoutError)


_DOWN_CLASSES = frozenset({"08", "53", "57"})


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite+aiosqlite:///file` URL; None for PostgreSQL, an
    in-memory database or a `file:` URI."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return None if database.startswith("file:") else Path(database).expanduser()


def _sqlite_engine(url: str) -> AsyncEngine:
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, hide_parameters=True)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers (the CLI, the console) run while the server writes; NORMAL is
        # crash-safe under WAL and skips an fsync per commit.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # SQLite ignores foreign keys unless asked, per connection.
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def alembic_config(url: str) -> Config:
    """An Alembic config built in code: the package ships no alembic.ini."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not a main option: ConfigParser would read "%" in an encoded
    # password as interpolation.
    config.attributes["url"] = url
    return config


def run_migrations(url: str, revision: str = "head") -> None:
    """`alembic upgrade <revision>`. Synchronous: it runs its own event loop, so call it where
    no loop is running (the CLI, before uvicorn starts), or via `asyncio.to_thread`."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
