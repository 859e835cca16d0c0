"""Usage records keep the error message the client got beside its status name, so a spend cap
and an empty balance (both RESOURCE_EXHAUSTED) can be told apart. Frozen like the others: types
are spelled out.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column without a default: an instant change on PostgreSQL and SQLite alike,
    # however many records there are (older records simply have no message).
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("error_message", sa.String(300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("error_message")
