"""Persistence: the schema (SQLAlchemy Core), the engine factory and Alembic migrations."""

from .engine import make_engine, run_migrations
from .tables import accounts, api_keys, holds, ledger, metadata, usage_records

__all__ = [
    "accounts",
    "api_keys",
    "holds",
    "ledger",
    "make_engine",
    "metadata",
    "run_migrations",
    "usage_records",
]
