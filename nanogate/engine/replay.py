"""Answers made safe to retry: Idempotency-Keys, and answers kept for a client that left.

An Idempotency-Key is scoped to the API key that sent it and lives `result_ttl_hours`. It
remembers a fingerprint of the first request (method, path, body) and what that request became:
a task id on the task API, or a request id whose answer is kept (in result storage) on the
synchronous dialects. The same key with another body is a conflict. A key whose synchronous call
ended with no answer kept (it failed and was refunded, or its process died) is free again: at
once when that process can say so, else when the call's lease runs out. A running call's lease
(`idempotency_lease_seconds`) is renewed every third of it by its node, as task leases are, so a
node that is gone for good holds its keys no longer than that.

The rescue path: a synchronous call runs to its end even when its client has gone (the server
does not cancel a handler on disconnect), so it is billed once; its answer is then kept for
`GET /v1/results/{request_id}`. Answers are kept only when needed: the call sent an
Idempotency-Key, or its client was gone by the time the answer was ready. Keeping every answer
would write every multi-megabyte image to disk on the hot path. A kept answer is stored before
the call is charged, and its row commits with the charge: no crash leaves one without the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from nanogate.billing.ledger import Tx
from nanogate.billing.meter import database_unavailable
from nanogate.billing.runners import Journal, Work
from nanogate.core.errors import Conflict
from nanogate.storage import Storage

log = logging.getLogger(__name__)

MAX_KEY_CHARS = 255


def fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


async def remembered(tx: Tx, key_id: int, idem_key: str, now: datetime) -> tuple[str, str] | None:
    """(fingerprint, target) of a live Idempotency-Key, or None (an expired one is dropped)."""
    found = await _held(tx, key_id, idem_key, now)
    return found[:2] if found else None


async def _held(
    tx: Tx, key_id: int, idem_key: str, now: datetime
) -> tuple[str, str, str | None] | None:
    """`remembered`, and the node running its call (None once its answer is kept)."""
    params = {"key": key_id, "idem": idem_key, "now": now}
    await tx.exec(
        "DELETE FROM idempotency_keys WHERE key_id = :key AND idem_key = :idem "
        "AND expires_at <= :now",
        params,
    )
    row = await tx.one(
        "SELECT fingerprint, target, node FROM idempotency_keys "
        "WHERE key_id = :key AND idem_key = :idem",
        params,
    )
    return (str(row[0]), str(row[1]), None if row[2] is None else str(row[2])) if row else None


async def remember(
    tx: Tx,
    key_id: int,
    idem_key: str,
    fingerprint: str,
    expires: datetime,
    *,
    target: str,
    now: datetime,
    node: str | None = None,
) -> None:
    await tx.exec(
        "INSERT INTO idempotency_keys (key_id, idem_key, fingerprint, target, created_at, "
        "expires_at, node) VALUES (:key, :idem, :fingerprint, :target, :now, :expires, :node)",
        {
            "key": key_id,
            "idem": idem_key,
            "fingerprint": fingerprint,
            "target": target,
            "now": now,
            "expires": expires,
            "node": node,
        },
    )


async def renew(tx: Tx, claims: list[tuple[int, str, str]], node: str, expires: datetime) -> None:
    """Extend the lease of each (key id, Idempotency-Key, request id) whose call runs on
    `node` (a key whose answer is kept belongs to no node, and lasts as that answer does)."""
    for key_id, idem_key, target in claims:
        await tx.exec(
            "UPDATE idempotency_keys SET expires_at = :expires WHERE key_id = :key "
            "AND idem_key = :idem AND target = :target AND node = :node",
            {"key": key_id, "idem": idem_key, "target": target, "node": node, "expires": expires},
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
    """Remember where a synchronous call's answer is stored (a reused request id: the latest).
    An Idempotency-Key that named the call now lasts as long as its answer, whatever becomes of
    the process that ran it."""
    await tx.exec(
        "UPDATE idempotency_keys SET expires_at = :expires, node = NULL "
        "WHERE key_id = :key AND target = :request AND node IS NOT NULL",
        {"key": key_id, "request": request_id, "expires": expires},
    )
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


# -- kept answers ------------------------------------------------------------------------------
JSON_TYPE = "application/json"
# How often a repeated Idempotency-Key checks whether the first call has finished.
_POLL_S = 0.25


class ResultKeeper:
    """`node` names this process (as its holds do). An Idempotency-Key's call that is running
    holds the key for a lease of `lease_s`, which `start`'s loop renews while the call runs
    here: a call whose process died frees the key when its lease runs out, or at once when
    that process starts again (see `claim`)."""

    def __init__(
        self, journal: Journal, storage: Storage, *, ttl_s: float, node: str, lease_s: float
    ) -> None:
        self.journal = journal
        self.storage = storage
        self.ttl = timedelta(seconds=ttl_s)
        self.node = node
        self.lease = timedelta(seconds=lease_s)
        self._running: set[tuple[int, str]] = set()
        # The Idempotency-Keys claimed by calls running here, by (key id, request id).
        self._claims: dict[tuple[int, str], str] = {}
        self._renewing: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._renewing = asyncio.create_task(self._renew(), name="idempotency-leases")

    async def stop(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing

    async def _renew(self) -> None:
        every = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            if not self._claims:
                continue
            claims = [(key, idem, request) for (key, request), idem in self._claims.items()]
            expires = datetime.now(UTC) + self.lease
            try:
                await self.journal.submit(
                    functools.partial(renew, claims=claims, node=self.node, expires=expires)
                )
            except Exception as exc:
                # Tried again in a third of the lease: two misses in a row still leave one.
                log.warning("could not renew Idempotency-Key leases (%s)", type(exc).__name__)

    @contextmanager
    def running(self, key_id: int, request_id: str) -> Iterator[None]:
        """Mark a call in flight on this node (the results route says so while it runs)."""
        entry = (key_id, request_id)
        self._running.add(entry)
        try:
            yield
        finally:
            self._running.discard(entry)
            self._claims.pop(entry, None)

    def is_running(self, key_id: int, request_id: str) -> bool:
        return (key_id, request_id) in self._running

    async def keep(self, key_id: int, request_id: str, body: bytes, status: int = 200) -> None:
        await self.journal.submit(await self.sealed(key_id, request_id, body, status))

    async def sealed(
        self, key_id: int, request_id: str, body: bytes, status: int = 200
    ) -> Work[None]:
        """Store the answer now (Unavailable if the storage fails); the work that records it,
        to commit with the call's charge."""
        stored = await self.storage.put(body, JSON_TYPE)
        now = datetime.now(UTC)

        async def work(tx: Tx) -> None:
            await keep_result(
                tx,
                key_id,
                request_id,
                status=status,
                content_type=JSON_TYPE,
                object_name=stored.name,
                now=now,
                expires=now + self.ttl,
            )

        return work

    async def fetch(self, key_id: int, request_id: str) -> tuple[int, bytes] | None:
        now = datetime.now(UTC)
        try:
            found = await self.journal.submit(lambda tx: kept_result(tx, key_id, request_id, now))
        except Exception as exc:
            raise database_unavailable("read the stored answer") from exc
        if found is None:
            return None
        status, _, name = found
        got = await self.storage.get(name)
        return (status, got[0]) if got else None

    async def claim(
        self, key_id: int, idem: tuple[str, str], request_id: str, *, wait_s: float
    ) -> tuple[int, bytes] | None:
        """Make this request the owner of its Idempotency-Key (None: go ahead and run it), or
        return the first request's answer, waiting up to `wait_s` for it while it runs."""
        idem_key, fingerprint = idem
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            now = datetime.now(UTC)

            async def work(tx: Tx, now: datetime = now) -> tuple[str, str, str | None] | None:
                found = await _held(tx, key_id, idem_key, now)
                if found and found[2] == self.node and not self.is_running(key_id, found[1]):
                    # Its call ran here and ended with no answer kept (this process restarted
                    # since, or could not release the key): nothing will come, run it again.
                    await forget(tx, key_id, idem_key, found[1])
                    found = None
                if found is None:
                    expires = now + self.lease
                    await remember(
                        tx,
                        key_id,
                        idem_key,
                        fingerprint,
                        expires,
                        target=request_id,
                        now=now,
                        node=self.node,
                    )
                return found

            try:
                found = await self.journal.submit(work)
            except Exception as exc:
                raise database_unavailable("check the Idempotency-Key") from exc
            if found is None:
                if self.is_running(key_id, request_id):
                    self._claims[(key_id, request_id)] = idem_key
                return None
            if found[0] != fingerprint:
                raise Conflict(
                    f"Idempotency-Key '{idem_key}' was already used with a different request; "
                    "use a new key for a new request."
                )
            answer = await self.fetch(key_id, found[1])
            if answer is not None:
                return answer
            if asyncio.get_running_loop().time() > deadline:
                raise Conflict(
                    f"The first request with Idempotency-Key '{idem_key}' is still running; "
                    "retry later to get its answer."
                )
            await asyncio.sleep(_POLL_S)

    async def release(self, key_id: int, idem_key: str, request_id: str) -> None:
        """The owner failed (nothing charged): a retry with the key runs afresh."""
        await self.journal.submit(lambda tx: forget(tx, key_id, idem_key, request_id))
