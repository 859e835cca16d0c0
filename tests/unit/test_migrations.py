"""The schema: Alembic migrations versus tables.py, engine settings, UTC datetimes."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, MetaData, Text, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from nanogate.db import accounts, api_keys, make_engine, metadata, run_migrations, usage_records
from nanogate.db.engine import alembic_config

# --- tests ---


async def _account(conn: AsyncConnection) -> int:
    account_id = await conn.scalar(
        insert(accounts).values(name="acme", balance=0).returning(accounts.c.id)
    )
    assert account_id is not None
    return int(account_id)


async def _account_and_key(conn: AsyncConnection, prefix: str) -> tuple[int, int]:
    """An account, and a key on it with that prefix: what task rows refer to."""
    account_id = await _account(conn)
    key_id = await conn.scalar(
        insert(api_keys)
        .values(name="k", prefix=prefix, key_hash="h" * 64, account_id=account_id)
        .returning(api_keys.c.id)
    )
    assert key_id is not None
    return account_id, int(key_id)


def _schema_diff(conn: Connection, target: MetaData = metadata) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, target))


async def test_migrated_schema_matches_tables(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(_schema_diff) == []


async def test_the_comparison_catches_drift(engine: AsyncEngine) -> None:
    drifted = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["usage_records"].append_column(Column("prompt", Text))
    async with engine.connect() as conn:
        diff = await conn.run_sync(_schema_diff, drifted)
    assert [change[0] for change in diff] == ["add_column"]


async def test_upgrade_is_idempotent_and_reaches_head(db_url: str) -> None:
    await asyncio.to_thread(run_migrations, db_url)
    await asyncio.to_thread(run_migrations, db_url)
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        await engine.dispose()
    assert version == "0013"


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_nodes_starting_at_once_migrate_once(db_url: str) -> None:
    """Three `nanogate migrate` processes at the same moment on one PostgreSQL database (as
    the nodes of a cluster starting together): one migrates, the others wait for it and find
    the schema at head. (Processes, not threads: Alembic's context is one per process.)"""
    env = {**os.environ, "NANOGATE_DATABASE_URL": db_url}
    runs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nanogate", "migrate", env=env, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    async with asyncio.timeout(120):
        outcomes = [(await run.communicate())[1].decode()[-2000:] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outcomes
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_schema_diff) == []
    finally:
        await engine.dispose()


async def test_0007_gives_existing_usage_records_an_empty_error_message(db_url: str) -> None:
    config = alembic_config(db_url)
    await asyncio.to_thread(command.upgrade, config, "0006")
    engine = make_engine(db_url)
    old = {
        "request_id": "before-0007",
        "key_prefix": "ng_a",
        "dialect": "gemini",
        "method": "generateContent",
        "model": "m",
        "status": 402,
        "latency_ms": 1,
        "error": "RESOURCE_EXHAUSTED",
    }
    try:
        async with engine.begin() as conn:  # no error_message in the statement: 0006 has none
            await conn.execute(insert(usage_records).values(**old))
        await asyncio.to_thread(command.upgrade, config, "head")
        async with engine.begin() as conn:
            await conn.execute(
                insert(usage_records).values(
                    **(old | {"request_id": "after-0007", "error_message": "The daily cap…"})
                )
            )
            rows = await conn.execute(
                select(usage_records.c.request_id, usage_records.c.error_message).order_by(
                    usage_records.c.id
                )
            )
            assert rows.all() == [("before-0007", None), ("after-0007", "The daily cap…")]
        await asyncio.to_thread(command.downgrade, config, "0006")
        async with engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("usage_records")}
            )
            assert "error_message" not in columns and "error" in columns
            count = await conn.scalar(text("SELECT COUNT(*) FROM usage_records"))
            assert count == 2
    finally:
        await engine.dispose()


async def test_0009_renames_the_task_forms_both_ways(db_url: str) -> None:
    config = alembic_config(db_url)
    await asyncio.to_thread(command.upgrade, config, "0008")
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            account_id, key_id = await _account_and_key(conn, "ng_f")
            for task_id, form in (("t1", "message"), ("t2", "msg")):
                await conn.execute(
                    text(
                        "INSERT INTO tasks (id, request_id, form, key_id, account_id, model, "
                        "param, state, attempts, run_after, deadline_at, cost, created_at, "
                        "callback_state, callback_attempts) VALUES (:id, :id, :form, :key, "
                        ":account, 'm', '{}', 'pending', 0, :now, :now, 0, :now, 'none', 0)"
                    ),
                    {"id": task_id, "form": form, "key": key_id, "account": account_id, "now": now},
                )
        await asyncio.to_thread(command.upgrade, config, "0009")
        await engine.dispose()  # PostgreSQL's cached plans do not survive the column's new type
        forms = "SELECT id, form FROM tasks ORDER BY id"
        async with engine.connect() as conn:
            assert (await conn.execute(text(forms))).all() == [
                ("t1", "taskinfo"),
                ("t2", "recordinfo"),
            ]
        await asyncio.to_thread(command.downgrade, config, "0008")
        await engine.dispose()
        async with engine.connect() as conn:
            assert (await conn.execute(text(forms))).all() == [("t1", "message"), ("t2", "msg")]
    finally:
        await engine.dispose()


async def test_0011_gives_queued_callbacks_an_event_id(db_url: str) -> None:
    config = alembic_config(db_url)
    await asyncio.to_thread(command.upgrade, config, "0010")
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            account_id, key_id = await _account_and_key(conn, "ng_c")
            hook = "https://example.com/hook"
            for task_id, url, state in (("t1", hook, "pending"), ("t2", None, "none")):
                await conn.execute(
                    text(
                        "INSERT INTO tasks (id, request_id, form, key_id, account_id, model, "
                        "param, state, attempts, run_after, deadline_at, cost, created_at, "
                        "callback_url, callback_state, callback_attempts) VALUES (:id, :id, "
                        "'taskinfo', :key, :account, 'm', '{}', 'succeeded', 1, :now, :now, 0, "
                        ":now, :url, :state, 1)"
                    ),
                    {
                        "id": task_id,
                        "key": key_id,
                        "account": account_id,
                        "now": now,
                        "url": url,
                        "state": state,
                    },
                )
            await conn.execute(
                text(
                    "INSERT INTO callback_deliveries (task_id, attempt, duration_ms, created_at) "
                    "VALUES ('t1', 1, 5, :now)"
                ),
                {"now": now},
            )
        await asyncio.to_thread(command.upgrade, config, "0011")
        async with engine.begin() as conn:
            ids = "SELECT id, callback_event_id FROM tasks ORDER BY id"
            assert (await conn.execute(text(ids))).all() == [("t1", "evt_t1"), ("t2", None)]
            # An attempt is recorded before its outcome (and its duration) is known.
            await conn.execute(
                text(
                    "INSERT INTO callback_deliveries (task_id, attempt, created_at) "
                    "VALUES ('t1', 2, :now)"
                ),
                {"now": now},
            )
        await asyncio.to_thread(command.downgrade, config, "0010")
        await engine.dispose()
        async with engine.connect() as conn:
            durations = await conn.execute(text("SELECT duration_ms FROM callback_deliveries"))
            assert sorted(row[0] for row in durations) == [0, 5]
    finally:
        await engine.dispose()


async def test_downgrade_to_base_drops_tables(db_url: str) -> None:
    await asyncio.to_thread(run_migrations, db_url)
    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "base")
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: inspect(c).get_table_names())
    finally:
        await engine.dispose()
    assert set(names) <= {"alembic_version"}


async def test_balance_cannot_go_negative(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(accounts).values(name="acme", balance=5))
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(accounts.update().values(balance=accounts.c.balance - 6))


async def test_image_output_allows_only_data_url_or_null(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        account_id = await _account(conn)
        for n, value in enumerate((None, "data", "url")):
            await conn.execute(
                insert(api_keys).values(
                    prefix=f"ng_3333333{n}",
                    key_hash="3" * 64,
                    name="k",
                    account_id=account_id,
                    image_output=value,
                )
            )
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(api_keys.update().values(image_output="b64_json"))
    async with engine.connect() as conn:
        rows = await conn.execute(select(api_keys.c.image_output).order_by(api_keys.c.prefix))
        assert [row[0] for row in rows] == [None, "data", "url"]


async def test_datetimes_come_back_aware_utc(engine: AsyncEngine) -> None:
    local = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    async with engine.begin() as conn:
        await conn.execute(
            insert(api_keys).values(
                prefix="ng_11111111",
                key_hash="1" * 64,
                name="k",
                account_id=await _account(conn),
                expires_at=local,
            )
        )
        stored = await conn.scalar(select(api_keys.c.expires_at))
    assert stored == local
    assert stored is not None and stored.tzinfo is UTC
    assert stored.hour == 10


async def test_naive_datetimes_are_refused(engine: AsyncEngine) -> None:
    with pytest.raises(StatementError):
        async with engine.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    prefix="ng_22222222",
                    key_hash="2" * 64,
                    name="k",
                    account_id=await _account(conn),
                    expires_at=datetime(2025, 1, 1),
                )
            )


async def test_sqlite_engine_settings(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "nanogate.db"
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as conn:
            pragmas = {
                name: await conn.scalar(text(f"PRAGMA {name}"))
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
    finally:
        await engine.dispose()
    assert path.parent.is_dir()
    # synchronous: 1 is NORMAL.
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 1,
        "busy_timeout": 5000,
        "foreign_keys": 1,
    }


def test_run_migrations_from_plain_sync_code(tmp_path: Path) -> None:
    # What the CLI does before uvicorn starts: no event loop is running.
    path = tmp_path / "cli" / "nanogate.db"
    run_migrations(f"sqlite+aiosqlite:///{path}")
    with sqlite3.connect(path) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    assert {"api_keys", "ledger", "usage_records", "alembic_version"} <= tables
