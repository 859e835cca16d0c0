"""Tasks (a durable queue with leases and a callback outbox), callback deliveries, Idempotency-Key
records, stored synchronous answers, and generated secrets. Frozen: types are spelled out here.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("form", sa.String(8), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("param", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("hold_id", sa.String(40), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", TIMESTAMP, nullable=False),
        sa.Column("deadline_at", TIMESTAMP, nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_token", sa.String(40), nullable=True),
        sa.Column("lease_until", TIMESTAMP, nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.String(500), nullable=True),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("completed_at", TIMESTAMP, nullable=True),
        sa.Column("callback_url", sa.String(2048), nullable=True),
        sa.Column("callback_state", sa.String(16), nullable=False),
        sa.Column("callback_attempts", sa.Integer(), nullable=False),
        sa.Column("callback_next_at", TIMESTAMP, nullable=True),
        sa.Column("callback_lease_until", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name="fk_tasks_key_id_api_keys"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_tasks_account_id_accounts"
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'running', 'succeeded', 'failed')", name=op.f("ck_tasks_state")
        ),
        sa.CheckConstraint(
            "callback_state IN ('none', 'pending', 'delivered', 'failed')",
            name=op.f("ck_tasks_callback_state"),
        ),
    )
    op.create_index("ix_tasks_account_id", "tasks", ["account_id"])
    op.create_index("ix_tasks_created_at", "tasks", ["created_at"])
    op.create_index("ix_tasks_claim", "tasks", ["state", "run_after"])
    op.create_index("ix_tasks_callbacks", "tasks", ["callback_state", "callback_next_at"])

    op.create_table(
        "callback_deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.String(40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(300), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_callback_deliveries"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_callback_deliveries_task_id_tasks"
        ),
    )
    op.create_index("ix_callback_deliveries_task_id", "callback_deliveries", ["task_id"])

    op.create_table(
        "idempotency_keys",
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("idem_key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("key_id", "idem_key", name="pk_idempotency_keys"),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name="fk_idempotency_keys_key_id_api_keys"
        ),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])

    op.create_table(
        "results",
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("object_name", sa.String(200), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("key_id", "request_id", name="pk_results"),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name="fk_results_key_id_api_keys"),
    )
    op.create_index("ix_results_expires_at", "results", ["expires_at"])

    op.create_table(
        "secrets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_secrets"),
    )


def downgrade() -> None:
    # Holds of unfinished tasks stay pending in `holds` (0002 keeps that table): the sweeper
    # refunds them, with their ledger rows, once they expire.
    op.drop_table("secrets")
    op.drop_index("ix_results_expires_at", table_name="results")
    op.drop_table("results")
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_callback_deliveries_task_id", table_name="callback_deliveries")
    op.drop_table("callback_deliveries")
    for index in ("ix_tasks_callbacks", "ix_tasks_claim", "ix_tasks_created_at"):
        op.drop_index(index, table_name="tasks")
    op.drop_index("ix_tasks_account_id", table_name="tasks")
    op.drop_table("tasks")
