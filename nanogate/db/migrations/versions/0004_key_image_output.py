"""A per-key default for how the OpenAI dialect returns images: "data" (base64 data URLs) or
"url" (signed result URLs). NULL means "data". Frozen like the others: types are spelled out.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IMAGE_OUTPUTS = "image_output IS NULL OR image_output IN ('data', 'url')"


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("image_output", sa.String(8), nullable=True))
        batch.create_check_constraint(op.f("ck_api_keys_image_output"), IMAGE_OUTPUTS)


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("ck_api_keys_image_output"), type_="check")
        batch.drop_column("image_output")
