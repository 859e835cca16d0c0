"""Idempotency-Key and stored answers: a client's retry gets the first answer, not a second call.

A key is scoped to the API key that sent it and lives `result_ttl_hours`. It remembers a
fingerprint of the first request (method, path, body) and what that request became: a task id
on the task API, or a request id whose answer is kept in `results` (and in result storage) on
the synchronous dialects. The same key with another body is a conflict.

`results` also serves the rescue path: a synchronous call whose client went away is finished
and billed anyway, and its answer kept for `GET /v1/results/{request_id}`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from nanogate.billing.ledger import Tx

MAX_KEY_CHARS = 255


def fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


async def remembered(tx: Tx, key_id: int, idem_key: str, now: datetime) -> tuple[str, str] | None:
    """(fingerprint, target) of a live Idempotency-Key, or None (an expired one is dropped)."""
    params = {"key": key_id, "idem": idem_key, "now": now}
    await tx.exec(
        "DELETE FROM idempotency_keys WHERE key_id = :key AND idem_key = :idem "
        "AND expires_at <= :now",
        params,
    )
    row = await tx.one(
        "SELECT fingerprint, target FROM idempotency_keys WHERE key_id = :key AND idem_key = :idem",
        params,
    )
    return (str(row[0]), str(row[1])) if row else None


async def remember(
    tx: Tx,
    key_id: int,
    idem_key: str,
    fingerprint: str,
    expires: datetime,
    *,
    target: str,
    now: datetime,
) -> None:
    await tx.exec(
        "INSERT INTO idempotency_keys (key_id, idem_key, fingerprint, target, created_at, "
        "expires_at) VALUES (:key, :idem, :fingerprint, :target, :now, :expires)",
        {
            "key": key_id,
            "idem": idem_key,
            "fingerprint": fingerprint,
            "target": target,
            "now": now,
            "expires": expires,
        },
    )


async def forget(tx: Tx, key_id: int, idem_key: str, target: str) -> None:
    await tx.exec(
        "DELETE FROM idempotency_keys WHERE key_id = :key AND idem_key = :idem "
        "AND target = :target",
        {"key": key_id, "idem": idem_key, "target": target},
    )


async def sweep(tx: Tx, now: datetime) -> int:
    """Drop expired Idempotency-Keys and stored-answer rows (their objects expire with them)."""
    gone = await tx.exec("DELETE FROM idempotency_keys WHERE expires_at <= :now", {"now": now})
    return gone + await tx.exec("DELETE FROM results WHERE expires_at <= :now", {"now": now})


async def keep_result(
    tx: Tx,
    key_id: int,
    request_id: str,
    *,
    status: int,
    content_type: str,
    object_name: str,
    now: datetime,
    expires: datetime,
) -> None:
    """Remember where a synchronous call's answer is stored (a reused request id: the latest)."""
    await tx.exec(
        "INSERT INTO results (key_id, request_id, status, content_type, object_name, "
        "created_at, expires_at) VALUES (:key, :request, :status, :type, :name, :now, :expires) "
        "ON CONFLICT (key_id, request_id) DO UPDATE SET status = :status, content_type = :type, "
        "object_name = :name, created_at = :now, expires_at = :expires",
        {
            "key": key_id,
            "request": request_id,
            "status": status,
            "type": content_type,
            "name": object_name,
            "now": now,
            "expires": expires,
        },
    )


async def kept_result(
    tx: Tx, key_id: int, request_id: str, now: datetime
) -> tuple[int, str, str] | None:
    """(status, content type, object name) of a stored answer still within its retention."""
    row = await tx.one(
        "SELECT status, content_type, object_name FROM results "
        "WHERE key_id = :key AND request_id = :request AND expires_at > :now",
        {"key": key_id, "request": request_id, "now": now},
    )
    return (int(row[0]), str(row[1]), str(row[2])) if row else None
