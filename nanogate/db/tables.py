"""The schema, as SQLAlchemy Core tables: the hot path reads and writes plain rows, no ORM.

Keep this file and `migrations/versions/` in step; tests/unit/test_migrations.py compares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
)

# Deterministic constraint names, so a migration can name what it creates and later drop it.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Money moves only as ledger rows. A reserve debits the hold; its settle gives back what the call
# did not use (or takes an overrun), its refund gives back all of it. An overrun the balance
# cannot cover is forgiven by a `writeoff` row (+) just before the settle (-) that takes the
# whole price, so the rows still sum to the balance and it never goes below zero.
LEDGER_KINDS = ("topup", "adjustment", "reserve", "settle", "refund", "writeoff")
HOLD_STATES = ("pending", "settled", "refunded")
# How much a call holds: its certain cost plus an output allowance ("fair", the default), or
# the most it could ever cost ("worst_case": never a write-off). See billing/ledger.py.
HOLD_POLICIES = ("fair", "worst_case")
# Per-key image delivery in the OpenAI dialect: base64 data URLs, or signed result URLs.
IMAGE_OUTPUTS = ("data", "url")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend.

    SQLite has no time zone type: it stores the wall-clock digits and hands back naive values.
    Converting to UTC on the way in and tagging UTC on the way out keeps SQLite and PostgreSQL
    rows identical, and keeps string ordering on SQLite equal to time ordering.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware (UTC) datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# High-volume tables get 64-bit ids; SQLite only auto-increments a plain INTEGER PRIMARY KEY
# (its rowid alias), which is already 64-bit there.
BigId = BigInteger().with_variant(Integer(), "sqlite")

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True, index=True),
    # Available credits: reservations are already taken out (see LEDGER_KINDS).
    Column("balance", BigInteger, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    # NULL: the gateway's `hold_policy` setting (see HOLD_POLICIES).
    Column("hold_policy", String(16), nullable=True),
    # Over the pending holds: how much more than held they could still cost, and how many of
    # them the balance did not cover when they were made. Moved with every reserve and resolve.
    Column("exposure", BigInteger, nullable=False, default=0, server_default="0"),
    Column("uncovered", Integer, nullable=False, default=0, server_default="0"),
    # The last line of defence for "the balance never goes negative" under concurrency.
    CheckConstraint("balance >= 0", name="balance_nonnegative"),
    CheckConstraint(
        f"hold_policy IS NULL OR hold_policy IN ({', '.join(map(repr, HOLD_POLICIES))})",
        name="hold_policy",
    ),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    # The public identifier, e.g. "ng_3f9a2c7b": shown in lists and logs, used for lookup.
    Column("prefix", String(32), nullable=False, unique=True, index=True),
    # Hex sha256 of the whole key. Keys carry 256 random bits, so a slow KDF buys nothing.
    Column("key_hash", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    # SQL NULL (not JSON null) means every model.
    Column("allowed_models", JSON(none_as_null=True), nullable=True),
    Column("rpm_limit", Integer, nullable=True),
    Column("concurrency_limit", Integer, nullable=True),
    # Optional spend caps (credits per UTC day / month) on top of the account's balance. The
    # spend counters move with reserve/settle/refund in the same transaction as the balance;
    # `day_start`/`month_start` name the period they count ("2026-11-21", "2026-11").
    Column("daily_cap", BigInteger, nullable=True),
    Column("monthly_cap", BigInteger, nullable=True),
    Column("day_spend", BigInteger, nullable=False, default=0),
    Column("day_start", String(10), nullable=True),
    Column("month_spend", BigInteger, nullable=False, default=0),
    Column("month_start", String(7), nullable=True),
    # How the OpenAI dialect returns this key's images unless a request says otherwise (see
    # IMAGE_OUTPUTS). NULL means never set, served as "data".
    Column("image_output", String(8), nullable=True),
    CheckConstraint(
        f"image_output IS NULL OR image_output IN ({', '.join(map(repr, IMAGE_OUTPUTS))})",
        name="image_output",
    ),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("key_id", Integer, ForeignKey("api_keys.id"), nullable=True, index=True),
    Column("kind", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),  # signed: credits in (+) or out (-)
    Column("balance_after", BigInteger, nullable=False),
    Column("request_id", String(64), nullable=True, index=True),
    Column("hold_id", String(40), nullable=True),
    Column("note", String(500), nullable=True),  # the reason, for top-ups and adjustments
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    CheckConstraint(f"kind IN ({', '.join(map(repr, LEDGER_KINDS))})", name="kind"),
)

# One row per reservation: TigerBeetle's pending transfer. It is posted (settled) or voided
# (refunded) once, by a conditional UPDATE on `state`, so a second settle or refund is a no-op.
holds = Table(
    "holds",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("key_id", Integer, ForeignKey("api_keys.id"), nullable=True),
    Column("amount", BigInteger, nullable=False),
    Column("capped", Boolean, nullable=False, default=False),  # counted in the key's spend
    # The most the call could cost beyond `amount`, and whether the account's balance did not
    # cover that when the hold was made (see accounts.exposure).
    Column("exposure", BigInteger, nullable=False, default=0, server_default="0"),
    Column("uncovered", Boolean, nullable=False, default=False, server_default=false()),
    Column("state", String(16), nullable=False, index=True),
    Column("cost", BigInteger, nullable=True),
    Column("node", String(200), nullable=False),  # the process that holds it (crash recovery)
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("resolved_at", UTCDateTime, nullable=True),
    CheckConstraint(f"state IN ({', '.join(map(repr, HOLD_STATES))})", name="state"),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("key_id", Integer, ForeignKey("api_keys.id"), nullable=True, index=True),
    Column("key_prefix", String(32), nullable=False),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=True, index=True),
    Column("dialect", String(32), nullable=False),
    Column("method", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("upstream", String(64), nullable=True),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("input_text_tokens", Integer, nullable=False, default=0),
    Column("input_image_tokens", Integer, nullable=False, default=0),
    Column("output_text_tokens", Integer, nullable=False, default=0),
    Column("output_image_tokens", Integer, nullable=False, default=0),
    Column("thoughts_tokens", Integer, nullable=False, default=0),
    Column("total_tokens", Integer, nullable=False, default=0),
    Column("images", Integer, nullable=False, default=0),
    Column("cost", BigInteger, nullable=False, default=0),
    # `error` is the status name (RESOURCE_EXHAUSTED, ...); `error_message` the message the
    # client got, scrubbed of keys and base64 and cut short: it tells a spend cap from an empty
    # balance where the status name cannot.
    Column("error", String(500), nullable=True),
    Column("error_message", String(300), nullable=True),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow, index=True),
    # The name the client sent when the call ran under another: a shut-down preview id run on
    # its GA id, or an alias (`model` is always the catalog's id).
    Column("requested_model", String(128), nullable=True),
)

# Tasks of the task API: a durable queue. A worker claims a task with a lease (owner, token,
# expiry) and renews it while it runs; a lease left to expire is taken over. Only the holder of
# the current `lease_token` can finish a task, so it finishes once. The callback is an outbox
# on the same row: set pending in the transaction that finishes the task, so there is one.
TASK_STATES = ("pending", "running", "succeeded", "failed")
CALLBACK_STATES = ("none", "pending", "delivered", "failed")

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("request_id", String(64), nullable=False),  # its hold's and usage record's id
    # "taskinfo" (CreateTask/TaskInfo) or "recordinfo" (createTask/recordInfo)
    Column("form", String(16), nullable=False),
    Column("key_id", Integer, ForeignKey("api_keys.id"), nullable=False),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("model", String(128), nullable=False),  # as the client named it
    Column("param", Text, nullable=False),  # the create request, as JSON
    Column("state", String(16), nullable=False),
    Column("hold_id", String(40), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("run_after", UTCDateTime, nullable=False),
    Column("deadline_at", UTCDateTime, nullable=False),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_token", String(40), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("result", Text, nullable=True),  # JSON: stored files and any text
    Column("error_code", Integer, nullable=True),
    Column("error_message", String(500), nullable=True),
    Column("cost", BigInteger, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow, index=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    Column("callback_url", String(2048), nullable=True),
    Column("callback_state", String(16), nullable=False, default="none"),
    Column("callback_attempts", Integer, nullable=False, default=0),
    Column("callback_next_at", UTCDateTime, nullable=True),
    Column("callback_lease_until", UTCDateTime, nullable=True),
    # The callback's event id, set with it: the same on every attempt (webhook-id).
    Column("callback_event_id", String(40), nullable=True),
    CheckConstraint(f"state IN ({', '.join(map(repr, TASK_STATES))})", name="state"),
    CheckConstraint(
        f"callback_state IN ({', '.join(map(repr, CALLBACK_STATES))})", name="callback_state"
    ),
    Index("ix_tasks_claim", "state", "run_after"),
    Index("ix_tasks_callbacks", "callback_state", "callback_next_at"),
)

# Every delivery attempt of a callback, for the operator (GET /admin/callbacks?task_id=),
# written when the attempt starts and completed when it ends: one whose sender stopped or died
# in between is still counted.
callback_deliveries = Table(
    "callback_deliveries",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("task_id", String(40), ForeignKey("tasks.id"), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("status_code", Integer, nullable=True),  # None: no HTTP answer (see error)
    Column("error", String(300), nullable=True),
    Column("duration_ms", Integer, nullable=True),  # None: in flight, or its sender died
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)

# Idempotency-Key, per API key: what the first request with the key became (a task, or a
# synchronous call whose answer is in `results`), and a fingerprint of its body.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key_id", Integer, ForeignKey("api_keys.id"), primary_key=True),
    Column("idem_key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("target", String(64), nullable=False),  # task id or request id
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
    # The process running a synchronous call, until its answer is kept: a key whose call died
    # with its process is freed when that process starts again (tasks outlive it: None).
    Column("node", String(200), nullable=True),
)

# Stored answers of synchronous calls (the rescue path, and Idempotency-Key replays), by the
# request id the client got in x-request-id. The body itself is in result storage.
results = Table(
    "results",
    metadata,
    Column("key_id", Integer, ForeignKey("api_keys.id"), primary_key=True),
    Column("request_id", String(64), primary_key=True),  # clients may choose their own
    Column("status", Integer, nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("object_name", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
)

# Secrets the gateway generates on first start when the operator sets none (the callback
# signing secret, the file URL signing key): in the database, so every node shares them.
# The runtime switches (access/switches.py): one row, id 1, that every node reads. `seed` holds
# the settings last written, so a node started with other settings writes its own;
# `reload_requested_at` is when a config reload was last asked of every node.
switches = Table(
    "switches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("maintenance", Boolean, nullable=False, default=False),
    Column("disabled_features", String(200), nullable=False, default="[]"),  # a JSON list
    Column("seed", String(400), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False, default=utcnow),
    Column("reload_requested_at", UTCDateTime, nullable=True),
)

secrets = Table(
    "secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)

# Console logins. The cookie carries a random token; only its sha256 is kept, with the CSRF
# token every state-changing console request must echo in X-CSRF-Token. Logout deletes the row.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("key_id", Integer, ForeignKey("api_keys.id"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
)

# The console's thumbnail cache: made once per stored image, then served from storage. A row
# whose thumbnail was swept is simply made again.
thumbnails = Table(
    "thumbnails",
    metadata,
    Column("source", String(200), primary_key=True),
    Column("thumbnail", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)
