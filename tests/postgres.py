"""Fresh PostgreSQL databases, for the test fixtures (tests/conftest.py) and the benchmarks.

No pytest here, so bench/ imports it too. Each call runs on an event loop of its own, so any
caller that is not itself inside a running loop may use it: a synchronous fixture, a test, or a
benchmark between its `runner.run` calls.
"""

from __future__ import annotations

import asyncio
import os

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

# The server the tests make their databases on (its own database is only connected to).
SERVER_URL = os.environ.get(
    "NANOGATE_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


async def _execute(server_url: str, statement: str) -> None:
    # CREATE and DROP DATABASE cannot run inside a transaction.
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await admin.dispose()


def _run(server_url: str, statement: str) -> None:
    # A loop factory keeps the runner from installing its loop as the thread's current one,
    # which would disturb a caller that has its own (pytest-asyncio's, a benchmark's).
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(_execute(server_url, statement))


def create_database(name: str, server_url: str = SERVER_URL) -> str:
    """Create database `name` on the server; returns its URL."""
    _run(server_url, f'CREATE DATABASE "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(name: str, server_url: str = SERVER_URL) -> None:
    """Drop database `name` if it exists, disconnecting whoever is still on it."""
    _run(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
