"""API keys: issue, look up, revoke, top up. Only a hash of each key is ever stored.

A key reads `ng_3f9a2c7b_<43 urlsafe chars>` (`nga_` for admin keys). The part before the second
underscore is the public prefix: it finds the row, and it is what lists and logs show.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Row, exists, func, insert, literal, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import ReturningInsert

from .db.tables import api_keys, ledger, utcnow

logger = logging.getLogger(__name__)

KeyStatus = Literal["active", "revoked", "expired"]

_KEY_RE = re.compile(r"(?P<prefix>nga?_[0-9a-f]{8})_[A-Za-z0-9_-]{43}")
# The prefix carries 32 random bits: a clash is rare but possible, so creation retries.
_PREFIX_ATTEMPTS = 5
# Negative lookups are cached too, so a flood of made-up keys cannot grow memory without bound.
_CACHE_MAX_ENTRIES = 50_000


def new_key(is_admin: bool = False) -> tuple[str, str]:
    """A fresh (plain key, prefix) pair."""
    prefix = f"{'nga' if is_admin else 'ng'}_{secrets.token_hex(4)}"
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def parse_prefix(presented: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    match = _KEY_RE.fullmatch(presented)
    return match["prefix"] if match else None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key as the gateway sees it. `balance` may lag by the cache window: billing reads
    and changes the balance in the database, never from here."""

    id: int
    prefix: str
    name: str
    is_admin: bool
    balance: int
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    allowed_models: tuple[str, ...] | None
    rpm_limit: int | None
    concurrency_limit: int | None
    budget: int | None

    def status(self, now: datetime) -> KeyStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def allows(self, model_name: str) -> bool:
        return self.allowed_models is None or model_name in self.allowed_models

    @classmethod
    def from_row(cls, row: Row[Any]) -> KeyRecord:
        models = row.allowed_models
        return cls(
            id=row.id,
            prefix=row.prefix,
            name=row.name,
            is_admin=row.is_admin,
            balance=row.balance,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            allowed_models=tuple(models) if models is not None else None,
            rpm_limit=row.rpm_limit,
            concurrency_limit=row.concurrency_limit,
            budget=row.budget,
        )


@dataclass(frozen=True, slots=True)
class _NewKey:
    name: str
    is_admin: bool = False
    credits: int = 0
    expires_at: datetime | None = None
    allowed_models: tuple[str, ...] | None = None
    rpm_limit: int | None = None
    concurrency_limit: int | None = None


# A cached lookup: the record and its stored hash, or None for "no such prefix".
_Found = tuple[KeyRecord, str] | None


class KeyStore:
    """Keys in the database, with a short-lived in-process cache in front of `authenticate`.

    The cache means a revocation made by another process takes effect within `cache_seconds`;
    one made through this store takes effect at once.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        cache_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, _Found]] = {}

    async def create(
        self,
        name: str,
        *,
        is_admin: bool = False,
        credits: int = 0,
        expires_at: datetime | None = None,
        allowed_models: Sequence[str] | None = None,
        rpm_limit: int | None = None,
        concurrency_limit: int | None = None,
    ) -> tuple[str, KeyRecord]:
        """Issue a key. The plain key is returned here and never again."""
        spec = _NewKey(
            name=name,
            is_admin=is_admin,
            credits=credits,
            expires_at=expires_at,
            allowed_models=tuple(allowed_models) if allowed_models is not None else None,
            rpm_limit=rpm_limit,
            concurrency_limit=concurrency_limit,
        )
        issued = await self._create([spec], only_if_empty=False)
        assert issued is not None  # only an only_if_empty create can come back empty
        return issued[0]

    async def list(self) -> builtins.list[KeyRecord]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(api_keys).order_by(api_keys.c.id))
            return [KeyRecord.from_row(row) for row in rows]

    async def get(self, prefix: str) -> KeyRecord | None:
        """The current row, bypassing the cache."""
        found = await self._fetch(prefix)
        return found[0] if found else None

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(api_keys)) or 0)

    async def revoke(self, prefix: str) -> bool:
        """Revoke a key; False when it is unknown or already revoked."""
        stmt = (
            update(api_keys)
            .where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(stmt)
        self._cache.pop(prefix, None)
        return result.rowcount > 0

    async def topup(self, prefix: str, credits: int) -> int | None:
        """Add credits, with a ledger row, in one transaction. The new balance, or None for an
        unknown key."""
        if credits <= 0:
            raise ValueError("credits must be positive")
        stmt = (
            update(api_keys)
            .where(api_keys.c.prefix == prefix)
            .values(balance=api_keys.c.balance + credits)
            .returning(api_keys.c.id, api_keys.c.balance)
        )
        async with self._engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
            if row is None:
                return None
            await _write_topup(conn, row.id, credits, row.balance)
        self._cache.pop(prefix, None)
        return int(row.balance)

    async def authenticate(self, presented: str) -> KeyRecord | None:
        """The record for a presented key, or None when it is malformed, unknown or wrong.

        Revoked and expired records are returned: the caller tells 401 from 403.
        """
        prefix = parse_prefix(presented)
        if prefix is None:
            return None
        found = await self._lookup(prefix)
        if found is None:
            return None
        record, stored_hash = found
        # Constant time, so response timing does not leak how much of a hash matched.
        if not hmac.compare_digest(hash_key(presented), stored_hash):
            return None
        return record

    async def _lookup(self, prefix: str) -> _Found:
        if self._cache_seconds <= 0:
            return await self._fetch(prefix)
        now = self._clock()
        cached = self._cache.get(prefix)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self._fetch(prefix)
        if len(self._cache) >= _CACHE_MAX_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache.clear()
        self._cache[prefix] = (now + self._cache_seconds, found)
        return found

    async def _fetch(self, prefix: str) -> _Found:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.prefix == prefix))).first()
        return (KeyRecord.from_row(row), row.key_hash) if row is not None else None

    async def _create(
        self, specs: Sequence[_NewKey], *, only_if_empty: bool
    ) -> builtins.list[tuple[str, KeyRecord]] | None:
        """Insert keys (and their top-ups) in one transaction.

        With `only_if_empty`, nothing is written unless the table is empty, and two processes
        racing here cannot both succeed: the loser gets None.
        """
        for spec in specs:
            if spec.credits < 0:
                raise ValueError("credits must not be negative")
        for attempt in range(1, _PREFIX_ATTEMPTS + 1):
            try:
                async with self._engine.begin() as conn:
                    if only_if_empty:
                        await _lock_keys(conn)
                    issued: builtins.list[tuple[str, KeyRecord]] = []
                    for index, spec in enumerate(specs):
                        key = await _insert_key(conn, spec, only_if_empty and index == 0)
                        if key is None:
                            return None
                        issued.append(key)
            except IntegrityError:
                # Only a prefix clash can get here (everything else was validated above).
                if attempt == _PREFIX_ATTEMPTS:
                    raise
                logger.warning("key prefix collision; retrying (attempt %d)", attempt)
                continue
            for _, record in issued:
                self._cache.pop(record.prefix, None)  # drop a cached "no such prefix"
            return issued
        raise AssertionError("unreachable")


async def _lock_keys(conn: AsyncConnection) -> None:
    """Serialize empty-table checks. PostgreSQL needs a table lock: under READ COMMITTED two
    transactions would each see the table empty. SQLite needs nothing: the guarded INSERT is
    the transaction's first statement, and a write statement takes the database's single write
    lock before it reads."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text(f"LOCK TABLE {api_keys.name} IN EXCLUSIVE MODE"))


async def _insert_key(
    conn: AsyncConnection, spec: _NewKey, only_if_empty: bool
) -> tuple[str, KeyRecord] | None:
    plain, prefix = new_key(spec.is_admin)
    values: dict[str, Any] = {
        "prefix": prefix,
        "key_hash": hash_key(plain),
        "name": spec.name,
        "is_admin": spec.is_admin,
        "balance": spec.credits,
        "created_at": utcnow(),
        "expires_at": spec.expires_at,
        "allowed_models": list(spec.allowed_models) if spec.allowed_models is not None else None,
        "rpm_limit": spec.rpm_limit,
        "concurrency_limit": spec.concurrency_limit,
    }
    if only_if_empty:
        stmt = _insert_if_empty(values)
    else:
        stmt = insert(api_keys).values(values).returning(api_keys.c.id)
    key_id = await conn.scalar(stmt)
    if key_id is None:
        return None
    if spec.credits > 0:
        await _write_topup(conn, key_id, spec.credits, spec.credits)
    record = KeyRecord(
        id=key_id,
        prefix=prefix,
        name=spec.name,
        is_admin=spec.is_admin,
        balance=spec.credits,
        created_at=values["created_at"],
        expires_at=spec.expires_at,
        revoked_at=None,
        allowed_models=spec.allowed_models,
        rpm_limit=spec.rpm_limit,
        concurrency_limit=spec.concurrency_limit,
        budget=None,
    )
    return plain, record


def _insert_if_empty(values: dict[str, Any]) -> ReturningInsert[int]:
    """INSERT ... SELECT <values> WHERE NOT EXISTS (SELECT id FROM api_keys): one statement,
    so the emptiness check and the write cannot be split by another writer."""
    source = select(
        *(literal(value, api_keys.c[name].type) for name, value in values.items())
    ).where(~exists(select(api_keys.c.id)))
    return insert(api_keys).from_select(list(values), source).returning(api_keys.c.id)


async def _write_topup(conn: AsyncConnection, key_id: int, credits: int, balance: int) -> None:
    await conn.execute(
        insert(ledger).values(
            key_id=key_id,
            kind="topup",
            amount=credits,
            balance_after=balance,
            created_at=utcnow(),
        )
    )


async def bootstrap(store: KeyStore, starter_credits: int) -> tuple[str, str] | None:
    """On an empty database, issue a client key "default" holding `starter_credits` and an
    admin key "admin". Returns (client_key, admin_key), or None when keys already exist
    (including when another process won the race to create them)."""
    if await store.count() > 0:
        return None
    issued = await store._create(
        [_NewKey(name="default", credits=starter_credits), _NewKey(name="admin", is_admin=True)],
        only_if_empty=True,
    )
    if issued is None:
        return None
    (client_key, _), (admin_key, _) = issued
    logger.info("bootstrap: created the first client key and admin key")
    return client_key, admin_key
