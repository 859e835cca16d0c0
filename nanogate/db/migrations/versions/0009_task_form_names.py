"""Task forms are stored by their protocol names: "taskinfo" (CreateTask/TaskInfo) for what was
"message", and "recordinfo" (createTask/recordInfo) for what was "msg". The column widens to
hold them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAMES = (("message", "taskinfo"), ("msg", "recordinfo"))


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("form", type_=sa.String(16), existing_nullable=False)
    for old, new in _NAMES:
        op.execute(
            sa.text("UPDATE tasks SET form = :new WHERE form = :old").bindparams(old=old, new=new)
        )


def downgrade() -> None:
    for old, new in _NAMES:
        op.execute(
            sa.text("UPDATE tasks SET form = :old WHERE form = :new").bindparams(old=old, new=new)
        )
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("form", type_=sa.String(8), existing_nullable=False)
