"""API keys: look up, authenticate, revoke. Only a hash of each key is ever stored.

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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Row, and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from nanogate.access.cluster import INVALIDATE, Bus, Message
from nanogate.db.tables import accounts, api_keys, utcnow

logger = logging.getLogger(__name__)

KeyStatus = Literal["active", "revoked", "expired"]

_KEY_RE = re.compile(r"(?P<prefix>nga?_[0-9a-f]{8})_[A-Za-z0-9_-]{43}")
# Negative lookups are cached too, so a flood of made-up keys cannot grow memory without bound.
_CACHE_MAX_ENTRIES = 50_000


class LastAdminKey(Exception):
    """A revocation or expiry refused: it would leave no active admin key."""


def another_admin(now: datetime) -> ColumnElement[bool]:
    """Whether an active, unexpired admin key other than the `api_keys` row in hand exists."""
    other = api_keys.alias("other")
    return exists(
        select(other.c.id).where(
            other.c.is_admin,
            other.c.revoked_at.is_(None),
            or_(other.c.expires_at.is_(None), other.c.expires_at > now),
            other.c.id != api_keys.c.id,
        )
    )


async def lock_admins(conn: AsyncConnection) -> None:
    """Two changes at once must not each count the other's key as the one left: on PostgreSQL,
    with the active admin rows locked, the second waits and then sees the first. (On SQLite
    the write that follows is atomic: it takes the database's write lock.)"""
    if conn.dialect.name == "postgresql":
        await conn.execute(
            select(api_keys.c.id)
            .where(api_keys.c.is_admin, api_keys.c.revoked_at.is_(None))
            .with_for_update()
        )


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
    """One key as the gateway sees it. `balance` is its account's, for display: it may lag by
    the cache window, and billing reads and changes the balance in the database, never here."""

    id: int
    prefix: str
    name: str
    is_admin: bool
    account_id: int
    account_name: str
    balance: int
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    allowed_models: tuple[str, ...] | None
    rpm_limit: int | None
    concurrency_limit: int | None
    daily_cap: int | None = None
    monthly_cap: int | None = None
    # The OpenAI dialect's default for returning images: "data" or "url"; None means "data".
    image_output: str | None = None

    @property
    def capped(self) -> bool:
        return self.daily_cap is not None or self.monthly_cap is not None

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
            account_id=row.account_id,
            account_name=row.account_name,
            balance=row.balance,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            allowed_models=tuple(models) if models is not None else None,
            rpm_limit=row.rpm_limit,
            concurrency_limit=row.concurrency_limit,
            daily_cap=row.daily_cap,
            monthly_cap=row.monthly_cap,
            image_output=row.image_output,
        )


# Keys joined with their account: what every lookup returns.
_KEYS = select(api_keys, accounts.c.name.label("account_name"), accounts.c.balance).join(
    accounts, accounts.c.id == api_keys.c.account_id
)


# A cached lookup: the record and its stored hash, or None for "no such prefix".
_Found = tuple[KeyRecord, str] | None


class KeyLookup:
    """Keys in the database, with a short-lived in-process cache in front of `authenticate`.
    Issuing keys (with their accounts and credits) is billing's: see billing/keys.py.

    The cache means a revocation made by another process takes effect within `cache_seconds`;
    one made through this store takes effect at once. In cluster mode (`listen`) changes are
    also published, so every listening node drops its copy at once; `cache_seconds` remains
    the bound only while Redis is down.
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
        self._bus: Bus | None = None

    def announce(self, bus: Bus) -> None:
        """Cluster mode: publish the changes made here, so other nodes drop their copies."""
        self._bus = bus

    def listen(self, bus: Bus) -> None:
        """Cluster mode: publish the changes made here, and drop what other nodes change."""
        self.announce(bus)
        bus.subscribe(INVALIDATE, self._invalidated)
        bus.on_connect(self._missed)

    def _invalidated(self, message: Message) -> None:
        if message.get("kind") == "key":
            self.forget(str(message.get("prefix")))

    async def _missed(self) -> None:
        # Connected again after an outage: whatever was published meanwhile is lost.
        self._cache.clear()

    async def changed(self, prefix: str) -> None:
        """A key was just created or changed: drop it here and, in cluster mode, everywhere."""
        self.forget(prefix)
        if self._bus is not None:
            await self._bus.publish(INVALIDATE, {"kind": "key", "prefix": prefix})

    async def list(self) -> builtins.list[KeyRecord]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(_KEYS.order_by(api_keys.c.id))
            return [KeyRecord.from_row(row) for row in rows]

    async def get(self, prefix: str) -> KeyRecord | None:
        """The current row, bypassing the cache."""
        found = await self._fetch(prefix)
        return found[0] if found else None

    async def by_id(self, key_id: int) -> KeyRecord | None:
        """The current row by id (a task's worker names the key that created it)."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(_KEYS.where(api_keys.c.id == key_id))).first()
        return KeyRecord.from_row(row) if row is not None else None

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(api_keys)) or 0)

    async def revoke(self, prefix: str) -> bool:
        """Revoke a key; False when it is unknown or already revoked.

        Raises LastAdminKey instead of revoking the last active admin key, which would lock
        everyone out of the admin API. An admin key may revoke itself while another is left:
        that is how a leaked one is rotated out.
        """
        now = utcnow()
        active = api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None)
        expired = and_(api_keys.c.expires_at.is_not(None), api_keys.c.expires_at <= now)
        stmt = (
            update(api_keys)
            .where(*active, or_(~api_keys.c.is_admin, expired, another_admin(now)))
            .values(revoked_at=now)
        )
        async with self._engine.begin() as conn:
            await lock_admins(conn)
            revoked = (await conn.execute(stmt)).rowcount > 0
            still = await conn.scalar(select(api_keys.c.id).where(*active))
            refused = not revoked and still is not None
        await self.changed(prefix)
        if refused:
            raise LastAdminKey(
                f"{prefix} is the last active admin key: revoking it would lock the admin API "
                "out. Create another admin key first."
            )
        return revoked

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
            row = (await conn.execute(_KEYS.where(api_keys.c.prefix == prefix))).first()
        return (KeyRecord.from_row(row), row.key_hash) if row is not None else None

    def forget(self, prefix: str) -> None:
        """Drop a cached lookup (the key just changed, or was just created)."""
        self._cache.pop(prefix, None)
