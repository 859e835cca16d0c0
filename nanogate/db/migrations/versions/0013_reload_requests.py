"""A config reload asked of every node (`POST /admin/reload`, `nanogate reload`) is a time in the
switches row, which every node already reads twice a second. Frozen like the others.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "switches", sa.Column("reload_requested_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("switches") as batch:
        batch.drop_column("reload_requested_at")
