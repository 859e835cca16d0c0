"""Accounts hold the balance; keys draw on an account and may carry spend caps; holds.

Every existing key gets an account of its own, named after the key's prefix, holding the key's
balance; its ledger and usage rows are pointed at that account. Frozen like 0001: types are
spelled out here, not imported.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
OLD_KINDS = "kind IN ('topup', 'reserve', 'settle', 'refund')"
NEW_KINDS = "kind IN ('topup', 'adjustment', 'reserve', 'settle', 'refund')"


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.CheckConstraint("balance >= 0", name=op.f("ck_accounts_balance_nonnegative")),
    )
    op.create_index("ix_accounts_name", "accounts", ["name"], unique=True)
    op.execute(
        "INSERT INTO accounts (name, balance, created_at) "
        "SELECT prefix, balance, created_at FROM api_keys ORDER BY id"
    )

    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("account_id", sa.Integer(), nullable=True))
        for name in ("daily_cap", "monthly_cap"):
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("day_spend", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("day_start", sa.String(10), nullable=True))
        batch.add_column(
            sa.Column("month_spend", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("month_start", sa.String(7), nullable=True))
    op.execute(
        "UPDATE api_keys SET account_id = "
        "(SELECT accounts.id FROM accounts WHERE accounts.name = api_keys.prefix)"
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("ck_api_keys_balance_nonnegative"), type_="check")
        batch.drop_column("balance")
        batch.drop_column("budget")
        batch.alter_column("account_id", existing_type=sa.Integer(), nullable=False)
        # The server defaults only filled existing rows; the application writes these.
        batch.alter_column("day_spend", existing_type=sa.BigInteger(), server_default=None)
        batch.alter_column("month_spend", existing_type=sa.BigInteger(), server_default=None)
        batch.create_foreign_key(
            op.f("fk_api_keys_account_id_accounts"), "accounts", ["account_id"], ["id"]
        )
        batch.create_index("ix_api_keys_account_id", ["account_id"])

    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("account_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("hold_id", sa.String(40), nullable=True))
    op.execute(
        "UPDATE ledger SET account_id = "
        "(SELECT api_keys.account_id FROM api_keys WHERE api_keys.id = ledger.key_id)"
    )
    with op.batch_alter_table("ledger") as batch:
        batch.alter_column("account_id", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("key_id", existing_type=sa.Integer(), nullable=True)
        batch.drop_constraint(op.f("ck_ledger_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_ledger_kind"), NEW_KINDS)
        batch.create_foreign_key(
            op.f("fk_ledger_account_id_accounts"), "accounts", ["account_id"], ["id"]
        )
        batch.create_index("ix_ledger_account_id", ["account_id"])
        batch.create_index("ix_ledger_request_id", ["request_id"])

    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("account_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE usage_records SET account_id = "
        "(SELECT api_keys.account_id FROM api_keys WHERE api_keys.id = usage_records.key_id)"
    )
    with op.batch_alter_table("usage_records") as batch:
        batch.create_foreign_key(
            op.f("fk_usage_records_account_id_accounts"), "accounts", ["account_id"], ["id"]
        )
        batch.create_index("ix_usage_records_account_id", ["account_id"])

    op.create_table(
        "holds",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("capped", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=True),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("resolved_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_holds"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_holds_account_id_accounts"
        ),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name="fk_holds_key_id_api_keys"),
        sa.CheckConstraint(
            "state IN ('pending', 'settled', 'refunded')", name=op.f("ck_holds_state")
        ),
    )
    op.create_index("ix_holds_request_id", "holds", ["request_id"])
    op.create_index("ix_holds_state", "holds", ["state"])


def downgrade() -> None:
    """Back to one balance per key: each account's balance goes to its oldest key. Holds still
    pending are refunded first, so no reserved credit is lost on the way down."""
    op.execute(
        "UPDATE accounts SET balance = balance + COALESCE((SELECT SUM(amount) FROM holds "
        "WHERE holds.account_id = accounts.id AND holds.state = 'pending'), 0)"
    )
    op.drop_table("holds")

    with op.batch_alter_table("usage_records") as batch:
        batch.drop_index("ix_usage_records_account_id")
        batch.drop_constraint(op.f("fk_usage_records_account_id_accounts"), type_="foreignkey")
        batch.drop_column("account_id")

    # Rows with no key (account top-ups) cannot be kept in the old shape.
    op.execute("DELETE FROM ledger WHERE key_id IS NULL OR kind = 'adjustment'")
    with op.batch_alter_table("ledger") as batch:
        batch.drop_index("ix_ledger_request_id")
        batch.drop_index("ix_ledger_account_id")
        batch.drop_constraint(op.f("fk_ledger_account_id_accounts"), type_="foreignkey")
        batch.drop_constraint(op.f("ck_ledger_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_ledger_kind"), OLD_KINDS)
        batch.alter_column("key_id", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("hold_id")
        batch.drop_column("account_id")

    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("balance", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("budget", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE api_keys SET balance = (SELECT accounts.balance FROM accounts "
        "WHERE accounts.id = api_keys.account_id) WHERE api_keys.id = "
        "(SELECT MIN(k.id) FROM api_keys k WHERE k.account_id = api_keys.account_id)"
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("balance", existing_type=sa.BigInteger(), server_default=None)
        batch.create_check_constraint(op.f("ck_api_keys_balance_nonnegative"), "balance >= 0")
        batch.drop_index("ix_api_keys_account_id")
        batch.drop_constraint(op.f("fk_api_keys_account_id_accounts"), type_="foreignkey")
        for name in (
            "account_id",
            "daily_cap",
            "monthly_cap",
            "day_spend",
            "day_start",
            "month_spend",
            "month_start",
        ):
            batch.drop_column(name)
    op.drop_index("ix_accounts_name", table_name="accounts")
    op.drop_table("accounts")
