"""Fair holds: what an account's pending holds could still overrun (`exposure`), how many of
them the balance does not cover (`uncovered`), a per-account `hold_policy`, and `writeoff`
ledger rows. Frozen like the others: types are spelled out.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "kind IN ('topup', 'adjustment', 'reserve', 'settle', 'refund')"
NEW_KINDS = "kind IN ('topup', 'adjustment', 'reserve', 'settle', 'refund', 'writeoff')"
POLICIES = "hold_policy IS NULL OR hold_policy IN ('fair', 'worst_case')"


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("hold_policy", sa.String(16), nullable=True))
        batch.add_column(sa.Column("exposure", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("uncovered", sa.Integer(), nullable=False, server_default="0"))
        batch.create_check_constraint(op.f("ck_accounts_hold_policy"), POLICIES)
    with op.batch_alter_table("holds") as batch:
        batch.add_column(sa.Column("exposure", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("uncovered", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("ledger") as batch:
        batch.drop_constraint(op.f("ck_ledger_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_ledger_kind"), NEW_KINDS)


def downgrade() -> None:
    # A write-off is a credit the account kept; it stays in the balance as an adjustment.
    op.execute("UPDATE ledger SET kind = 'adjustment' WHERE kind = 'writeoff'")
    with op.batch_alter_table("ledger") as batch:
        batch.drop_constraint(op.f("ck_ledger_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_ledger_kind"), OLD_KINDS)
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("uncovered")
        batch.drop_column("exposure")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint(op.f("ck_accounts_hold_policy"), type_="check")
        batch.drop_column("uncovered")
        batch.drop_column("exposure")
        batch.drop_column("hold_policy")
