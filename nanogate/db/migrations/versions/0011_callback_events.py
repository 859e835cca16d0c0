"""Callback events: a task's callback has a stable event id (the same on every attempt and
across restarts, for receivers to drop duplicates), and an attempt is recorded when it starts,
so one cut short by a stop or a crash is still counted (its duration then unknown).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("callback_event_id", sa.String(40), nullable=True))
    # Callbacks queued before this revision: an id derived from the task's own, which is as
    # stable and as free of dots (the Standard Webhooks id must not hold one).
    op.execute("UPDATE tasks SET callback_event_id = 'evt_' || id WHERE callback_state <> 'none'")
    with op.batch_alter_table("callback_deliveries") as batch:
        batch.alter_column("duration_ms", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE callback_deliveries SET duration_ms = 0 WHERE duration_ms IS NULL")
    with op.batch_alter_table("callback_deliveries") as batch:
        batch.alter_column("duration_ms", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("callback_event_id")
