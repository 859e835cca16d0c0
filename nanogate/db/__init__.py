"""Persistence: the schema (SQLAlchemy Core), the engine factory and Alembic migrations."""

from nanogate.db.engine import make_engine, run_migrations
from nanogate.db.tables import (
    accounts,
    api_keys,
    callback_deliveries,
    holds,
    idempotency_keys,
    ledger,
    metadata,
    results,
    secrets,
    tasks,
    usage_records,
)

__all__ = [
    "accounts",
    "api_keys",
    "callback_deliveries",
    "holds",
    "idempotency_keys",
    "ledger",
    "make_engine",
    "metadata",
    "results",
    "run_migrations",
    "secrets",
    "tasks",
    "usage_records",
]
