"""Shared fixtures for the unit tests: a fresh, migrated database on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.db import make_engine, run_migrations


@pytest.fixture
def db_url(database: str | None, tmp_path: Path) -> str:
    return database or f"sqlite+aiosqlite:///{tmp_path / 'data' / 'nanogate.db'}"


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    await asyncio.to_thread(run_migrations, db_url)
    engine = make_engine(db_url)
    yield engine
    await engine.dispose()
