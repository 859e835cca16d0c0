"""Runtime switches: maintenance mode and the features switched off, one row every node reads.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "switches",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("maintenance", sa.Boolean, nullable=False),
        sa.Column("disabled_features", sa.String(200), nullable=False),
        sa.Column("seed", sa.String(400), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("switches")
