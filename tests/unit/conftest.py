"""Shared fixtures for the unit tests: a fresh, migrated database on SQLite and on PostgreSQL,
the credit journal on it, and the helpers the credit tests share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.access.keys import KeyRecord
from nanogate.billing.keys import KeyStore
from nanogate.billing.runners import Journal, Runner, open_runner
from nanogate.db import accounts, make_engine, run_migrations
from nanogate.db import ledger as ledger_table


@pytest.fixture
def db_url(database: str | None, tmp_path: Path) -> str:
    return database or f"sqlite+aiosqlite:///{tmp_path / 'data' / 'nanogate.db'}"


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    await asyncio.to_thread(run_migrations, db_url)
    engine = make_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def journal(db_url: str, engine: AsyncEngine) -> AsyncIterator[Journal]:
    journal = Journal(open_runner(db_url, engine))
    journal.start()
    yield journal
    await journal.stop()
    await journal.runner.close()


def separate_runners(db_url: str, engine: AsyncEngine, count: int) -> list[Runner]:
    """`count` of the runners the gateway itself would open, each on a connection of its own
    (as separate processes would be): the caller closes them."""
    return [open_runner(db_url, engine) for _ in range(count)]


async def new_key(engine: AsyncEngine, credits: int, **caps: int) -> KeyRecord:
    """A key on an account of its own holding `credits`."""
    _, record = await KeyStore(engine, 0).create("k", credits=credits, **caps)  # type: ignore[arg-type]
    return record


async def ledger_balance(engine: AsyncEngine, account_id: int) -> int:
    """The account's balance, once checked against the sum of its ledger rows."""
    async with engine.connect() as conn:
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account_id))
        total = await conn.scalar(
            select(func.coalesce(func.sum(ledger_table.c.amount), 0)).where(
                ledger_table.c.account_id == account_id
            )
        )
    assert balance is not None and balance == total, "the ledger must sum to the balance"
    return int(balance)
