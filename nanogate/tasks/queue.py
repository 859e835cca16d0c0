"""The task queue's SQL: plain statements over a ledger `Tx`, the same on SQLite and PostgreSQL.

A claim is one UPDATE over a sub-select of due tasks. On PostgreSQL the sub-select takes its
rows `FOR UPDATE SKIP LOCKED`, so concurrent workers claim different tasks without waiting on
each other; on SQLite the runner's `BEGIN IMMEDIATE` makes every claim a serial, whole-database
critical section, which is just as safe. A claim writes a fresh `lease_token`: only its holder
can renew or finish the task, so a worker that lost its lease (it stalled, or was presumed
dead) cannot finish it a second time. Finishing a task, closing its credit hold and queueing its
callback (with its event id) happen in one transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from nanogate.billing import ledger
from nanogate.billing.ledger import Hold, Refusal, Row, Tx
from nanogate.core.task_records import StoredFile, TaskRecord
from nanogate.engine import replay as idempotency_sql

_COLUMNS = (
    "id, request_id, form, key_id, account_id, model, param, state, hold_id, attempts, "
    "result, error_code, error_message, cost, created_at, started_at, completed_at, "
    "callback_url, callback_state, deadline_at, lease_token, callback_event_id"
)


def _record(row: Row) -> tuple[TaskRecord, datetime, str | None]:
    """A row as a record, with its deadline and lease token (the worker's business only)."""
    result = orjson.loads(row[10]) if row[10] else {}
    record = TaskRecord(
        id=row[0],
        request_id=row[1],
        form=row[2],
        key_id=int(row[3]),
        account_id=int(row[4]),
        model=row[5],
        param=orjson.loads(row[6]),
        state=row[7],
        hold_id=row[8],
        attempts=int(row[9]),
        files=tuple(StoredFile(f["name"], f["type"]) for f in result.get("files", ())),
        text=result.get("text"),
        error_code=row[11],
        error_message=row[12],
        cost=int(row[13]),
        created_at=_moment(row[14]),
        started_at=_moment(row[15]),
        completed_at=_moment(row[16]),
        callback_url=row[17],
        callback_state=row[18],
        callback_event_id=row[21],
    )
    return record, ledger.aware(row[19]), row[20]


def _moment(value: Any) -> datetime | None:
    return None if value is None else ledger.aware(value)


# -- create and read ---------------------------------------------------------------------------


async def create(
    tx: Tx,
    record: TaskRecord,
    hold: Hold | None,
    deadline: datetime,
    idempotency: tuple[str, str, datetime] | None = None,
) -> Refusal | None:
    """Reserve the task's credits and queue it, in one transaction; with `idempotency`
    (key, fingerprint, expiry), also remember the key. A Refusal (nothing written) when the
    account cannot cover it."""
    assert record.created_at is not None
    if hold is not None:
        refusal = await ledger.reserve(tx, hold)
        if refusal is not None:
            return refusal
    await tx.exec(
        "INSERT INTO tasks (id, request_id, form, key_id, account_id, model, param, state, "
        "hold_id, attempts, run_after, deadline_at, cost, created_at, callback_url, "
        "callback_state, callback_attempts) VALUES (:id, :request, :form, :key, :account, "
        ":model, :param, 'pending', :hold, 0, :now, :deadline, 0, :now, :callback, 'none', 0)",
        {
            "id": record.id,
            "request": record.request_id,
            "form": record.form,
            "key": record.key_id,
            "account": record.account_id,
            "model": record.model,
            "param": orjson.dumps(record.param).decode(),
            "hold": hold.id if hold else None,
            "now": record.created_at,
            "deadline": deadline,
            "callback": record.callback_url,
        },
    )
    if idempotency is not None:
        await idempotency_sql.remember(
            tx, record.key_id, *idempotency, target=record.id, now=record.created_at
        )
    return None


async def get(tx: Tx, task_id: str) -> TaskRecord | None:
    row = await tx.one(f"SELECT {_COLUMNS} FROM tasks WHERE id = :id", {"id": task_id})
    return _record(row)[0] if row else None


# -- the worker's side -------------------------------------------------------------------------


async def claim(
    tx: Tx, owner: str, token: str, now: datetime, lease_until: datetime, limit: int
) -> list[tuple[TaskRecord, datetime]]:
    """Take up to `limit` due tasks (pending ones, and running ones whose lease expired), with
    their deadlines. Each claim counts as an attempt."""
    skip = " FOR UPDATE SKIP LOCKED" if tx.lock else ""
    rows = await tx.all(
        "UPDATE tasks SET state = 'running', lease_owner = :owner, lease_token = :token, "
        "lease_until = :until, attempts = attempts + 1, "
        "started_at = COALESCE(started_at, :now) WHERE id IN (SELECT id FROM tasks "
        "WHERE (state = 'pending' AND run_after <= :now) "
        "OR (state = 'running' AND lease_until < :now) "
        f"ORDER BY run_after LIMIT :limit{skip}) RETURNING {_COLUMNS}",
        {"owner": owner, "token": token, "until": lease_until, "now": now, "limit": limit},
    )
    return [(record, deadline) for record, deadline, _ in map(_record, rows)]


async def renew(tx: Tx, task_id: str, token: str, until: datetime) -> bool:
    """Extend a lease; False when it is no longer ours."""
    return bool(
        await tx.exec(
            "UPDATE tasks SET lease_until = :until "
            "WHERE id = :id AND lease_token = :token AND state = 'running'",
            {"id": task_id, "token": token, "until": until},
        )
    )


async def release_owner(tx: Tx, owner: str, now: datetime) -> int:
    """On a restart: this owner's running tasks are from its previous life; queue them again
    at once rather than wait for their leases to run out."""
    return await tx.exec(
        "UPDATE tasks SET state = 'pending', lease_owner = NULL, lease_token = NULL, "
        "lease_until = NULL, run_after = :now WHERE state = 'running' AND lease_owner = :owner",
        {"owner": owner, "now": now},
    )


async def hand_back(tx: Tx, task_id: str, token: str, now: datetime) -> bool:
    """A run its worker stopped (the process is shutting down): queued again at once for any
    worker, and the attempt it began does not count, so rolling restarts do not use a task's
    attempts up. False when the lease is no longer ours (then its holder carries on)."""
    return bool(
        await tx.exec(
            "UPDATE tasks SET state = 'pending', lease_owner = NULL, lease_token = NULL, "
            "lease_until = NULL, run_after = :now, attempts = attempts - 1 "
            "WHERE id = :id AND lease_token = :token AND state = 'running'",
            {"id": task_id, "token": token, "now": now},
        )
    )


async def retry_later(tx: Tx, task_id: str, token: str, run_after: datetime) -> bool:
    """Give a task that failed for a passing reason back to the queue."""
    return bool(
        await tx.exec(
            "UPDATE tasks SET state = 'pending', lease_owner = NULL, lease_token = NULL, "
            "lease_until = NULL, run_after = :after "
            "WHERE id = :id AND lease_token = :token AND state = 'running'",
            {"id": task_id, "token": token, "after": run_after},
        )
    )


async def finish(
    tx: Tx,
    task_id: str,
    token: str,
    now: datetime,
    *,
    hold_id: str | None,
    cost: int | None,
    files: Sequence[StoredFile] = (),
    text: str | None = None,
    error: tuple[int, str] | None = None,
) -> ledger.Resolution | None:
    """End a task: succeeded with `files`, or failed with `error` (code, message). Settles its
    hold at `cost` (None: refund) and queues its callback; `lease_owner` stays, naming the
    worker that finished it. Returns how the hold closed (what was charged), or None
    when the lease is no longer ours (someone else finishes it; nothing changed here)."""
    result = None
    if error is None:
        result = orjson.dumps(
            {"files": [{"name": f.name, "type": f.content_type} for f in files], "text": text}
        ).decode()
    ended = await tx.exec(
        "UPDATE tasks SET state = :state, result = :result, error_code = :code, "
        "error_message = :message, completed_at = :now, "
        "lease_token = NULL, lease_until = NULL, "
        "callback_state = CASE WHEN callback_url IS NULL THEN 'none' ELSE 'pending' END, "
        "callback_event_id = CASE WHEN callback_url IS NULL THEN NULL ELSE :event END, "
        "callback_next_at = :now WHERE id = :id AND lease_token = :token AND state = 'running'",
        {
            # The task ends once, so its callback is one event: one id for every attempt.
            "event": f"evt_{secrets.token_hex(16)}",
            "state": "failed" if error else "succeeded",
            "result": result,
            "code": error[0] if error else None,
            "message": error[1][:500] if error else None,
            "now": now,
            "id": task_id,
            "token": token,
        },
    )
    if not ended:
        return None
    resolution = ledger.Resolution(cost or 0, 0)
    if hold_id is not None:
        # None: the sweeper already refunded an expired hold; nothing was charged.
        resolution = await ledger.resolve(tx, hold_id, cost, now) or ledger.Resolution(0, 0)
    await tx.exec(
        "UPDATE tasks SET cost = :cost WHERE id = :id",
        {"cost": resolution.charged, "id": task_id},
    )
    return resolution


# -- callbacks ---------------------------------------------------------------------------------

# What an attempt left open says once its lease has run out: its sender died mid-attempt.
LOST = "no outcome: the sender stopped during the attempt; the receiver may have it"


async def claim_callbacks(
    tx: Tx, now: datetime, lease_until: datetime, limit: int
) -> list[tuple[TaskRecord, int]]:
    """Due callbacks, each leased for one delivery attempt, with that attempt's number. The
    attempt is counted and recorded as started here, before anything is sent, so one whose
    sender is stopped or killed before it ends still counts: the next one is numbered on."""
    skip = " FOR UPDATE SKIP LOCKED" if tx.lock else ""
    rows = await tx.all(
        "UPDATE tasks SET callback_lease_until = :until, "
        "callback_attempts = callback_attempts + 1 WHERE id IN (SELECT id FROM tasks "
        "WHERE callback_state = 'pending' AND callback_next_at <= :now "
        "AND (callback_lease_until IS NULL OR callback_lease_until < :now) "
        f"ORDER BY callback_next_at LIMIT :limit{skip}) RETURNING {_COLUMNS}, callback_attempts",
        {"until": lease_until, "now": now, "limit": limit},
    )
    due = []
    for row in rows:
        record, attempt = _record(row)[0], int(row[-1])
        await tx.exec(
            "UPDATE callback_deliveries SET error = :lost "
            "WHERE task_id = :id AND duration_ms IS NULL AND error IS NULL",
            {"lost": LOST, "id": record.id},
        )
        await tx.exec(
            "INSERT INTO callback_deliveries (task_id, attempt, created_at) "
            "VALUES (:id, :attempt, :now)",
            {"id": record.id, "attempt": attempt, "now": now},
        )
        due.append((record, attempt))
    return due


async def callback_attempted(
    tx: Tx,
    task_id: str,
    attempt: int,
    *,
    status: int | None,
    error: str | None,
    duration_ms: int,
    state: str,
    next_at: datetime | None,
) -> None:
    """Complete an attempt's record and move the callback on: delivered, failed, or due again.
    An attempt that outlived its lease (a newer one was claimed) only completes its record."""
    await tx.exec(
        "UPDATE callback_deliveries SET status_code = :status, error = :error, "
        "duration_ms = :duration WHERE task_id = :id AND attempt = :attempt",
        {
            "id": task_id,
            "attempt": attempt,
            "status": status,
            "error": error[:300] if error else None,
            "duration": duration_ms,
        },
    )
    await tx.exec(
        "UPDATE tasks SET callback_state = :state, callback_next_at = :next, "
        "callback_lease_until = NULL WHERE id = :id AND callback_attempts = :attempt",
        {"state": state, "attempt": attempt, "next": next_at, "id": task_id},
    )


async def deliveries(tx: Tx, task_id: str) -> list[Row]:
    return await tx.all(
        "SELECT attempt, status_code, error, duration_ms, created_at FROM callback_deliveries "
        "WHERE task_id = :id ORDER BY attempt",
        {"id": task_id},
    )
