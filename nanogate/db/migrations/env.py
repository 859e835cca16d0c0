"""Alembic environment: runs migrations over the async engine the gateway itself uses.

The URL comes from `config.attributes["url"]` (set by `nanogate.db.run_migrations`) or, for a
hand-written alembic.ini, the `sqlalchemy.url` main option.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from nanogate.db.engine import make_engine
from nanogate.db.tables import metadata

config = context.config
# The advisory lock key that serializes migrations on PostgreSQL (any constant of our own).
_MIGRATION_LOCK = 0x6E616E6F67617465  # "nanogate"


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: set config.attributes['url'] or sqlalchemy.url")
    return str(url)


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds a table by copy, drop and rename, which foreign keys pointing at
        # it would refuse. The pragma only takes effect outside a transaction; the check
        # after the migration puts back what it would have guarded.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()  # end the autobegun transaction, so alembic's own is the real one
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=sqlite,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Nodes of a cluster may start at once: the first migrates, the others wait here,
            # then find the schema at head. Released when this transaction ends.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left dangling foreign keys: {broken[:5]}")
    if sqlite:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        connection.commit()


async def _run_online() -> None:
    engine = make_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    """`alembic upgrade --sql`: print the SQL for a DBA instead of running it."""
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    asyncio.run(_run_online())
