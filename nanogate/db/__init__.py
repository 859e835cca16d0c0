"""Persistence: the schema (SQLAlchemy Core), the engine factory and Alembic migrations."""

from .engine import make_engine, run_migrations
from .tables import api_keys, ledger, metadata, usage_records

__all__ = ["api_keys", "ledger", "make_engine", "metadata", "run_migrations", "usage_records"]
