"""Issuing API keys: a key draws on an account, so creating one may create its account and top
it up, and a spend cap set late counts what the key already spent, from the ledger. Reading and
authenticating keys is `access.keys.KeyLookup`'s; this store adds what moves money.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, insert, literal, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import ReturningInsert

from nanogate.access.keys import (
    KeyLookup,
    KeyRecord,
    LastAdminKey,
    another_admin,
    hash_key,
    lock_admins,
    new_key,
)
from nanogate.billing import ledger
from nanogate.billing.accounts import AccountError, check_credits
from nanogate.billing.runners import EngineTx
from nanogate.db.tables import IMAGE_OUTPUTS, accounts, api_keys, utcnow
from nanogate.db.tables import ledger as ledger_table

logger = logging.getLogger(__name__)

# The prefix carries 32 random bits: a clash is rare but possible, so creation retries.
_PREFIX_ATTEMPTS = 5
# Per-key request limits are INTEGER columns (32 bits on PostgreSQL).
MAX_LIMIT = 2**31 - 1


@dataclass(frozen=True, slots=True)
class _NewKey:
    name: str
    is_admin: bool = False
    account_id: int | None = None  # None: a new account of its own
    account_name: str | None = None  # the new account's name (default: the key's prefix)
    credits: int = 0
    expires_at: datetime | None = None
    allowed_models: tuple[str, ...] | None = None
    rpm_limit: int | None = None
    concurrency_limit: int | None = None
    daily_cap: int | None = None
    monthly_cap: int | None = None
    image_output: str | None = None


class _Taken(Exception):
    """A bootstrap found keys already there: roll its transaction back."""


class KeyStore(KeyLookup):
    """Keys in the database: looked up and authenticated as `KeyLookup` does, and issued."""

    async def create(
        self,
        name: str,
        *,
        is_admin: bool = False,
        account_id: int | None = None,
        credits: int = 0,
        expires_at: datetime | None = None,
        allowed_models: Sequence[str] | None = None,
        rpm_limit: int | None = None,
        concurrency_limit: int | None = None,
        daily_cap: int | None = None,
        monthly_cap: int | None = None,
        image_output: str | None = None,
    ) -> tuple[str, KeyRecord]:
        """Issue a key on account `account_id`, or on a new account of its own (named after
        its prefix). `credits` top that account up. The plain key is returned here and never
        again."""
        spec = _NewKey(
            name=name,
            is_admin=is_admin,
            account_id=account_id,
            credits=credits,
            expires_at=expires_at,
            allowed_models=tuple(allowed_models) if allowed_models is not None else None,
            rpm_limit=rpm_limit,
            concurrency_limit=concurrency_limit,
            daily_cap=daily_cap,
            monthly_cap=monthly_cap,
            image_output=image_output,
        )
        issued = await self._create([spec], only_if_empty=False)
        assert issued is not None  # only an only_if_empty create can come back empty
        return issued[0]

    async def update(self, prefix: str, **changes: Any) -> KeyRecord | None:
        """Change a key's limits, caps, expiry, allowed models or image output; None for an
        unknown key.

        A cap set where there was none starts counting from the key's spend so far this
        period, read from the ledger, so it cannot be dodged by setting it late.
        """
        allowed = {
            "expires_at",
            "allowed_models",
            "rpm_limit",
            "concurrency_limit",
            "daily_cap",
            "monthly_cap",
            "image_output",
            "name",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)}")
        if "image_output" in changes:
            _check_image_output(changes["image_output"])
        _check_numbers(changes)
        async with self._engine.begin() as conn:
            key_id = await conn.scalar(select(api_keys.c.id).where(api_keys.c.prefix == prefix))
            if key_id is None:
                return None
            ending = changes.get("expires_at")
            if ending is not None and ending <= utcnow():
                await _keep_an_admin(conn, key_id, prefix)
            values = dict(changes)
            if "daily_cap" in changes or "monthly_cap" in changes:
                day, month = ledger.period(utcnow())
                values.update(
                    day_start=day,
                    month_start=month,
                    day_spend=await _spent_since(conn, key_id, f"{day} 00:00:00"),
                    month_spend=await _spent_since(conn, key_id, f"{month}-01 00:00:00"),
                )
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(values))
        await self.changed(prefix)
        return await self.get(prefix)

    async def _create(
        self, specs: Sequence[_NewKey], *, only_if_empty: bool
    ) -> builtins.list[tuple[str, KeyRecord]] | None:
        """Insert keys (and their top-ups) in one transaction.

        With `only_if_empty`, nothing is written unless the table is empty, and two processes
        racing here cannot both succeed: the loser gets None.
        """
        for spec in specs:
            check_credits("credits", spec.credits)
            _check_numbers(
                {
                    "rpm_limit": spec.rpm_limit,
                    "concurrency_limit": spec.concurrency_limit,
                    "daily_cap": spec.daily_cap,
                    "monthly_cap": spec.monthly_cap,
                }
            )
            _check_image_output(spec.image_output)
        for attempt in range(1, _PREFIX_ATTEMPTS + 1):
            try:
                async with self._engine.begin() as conn:
                    if only_if_empty:
                        await _lock_keys(conn)
                    issued: builtins.list[tuple[str, KeyRecord]] = []
                    for index, spec in enumerate(specs):
                        issued.append(await _insert_key(conn, spec, only_if_empty and index == 0))
            except _Taken:
                return None
            except IntegrityError:
                # Only a prefix clash can get here (everything else was validated above).
                if attempt == _PREFIX_ATTEMPTS:
                    raise
                logger.warning("key prefix collision; retrying (attempt %d)", attempt)
                continue
            for _, record in issued:
                await self.changed(record.prefix)  # drop a cached "no such prefix"
            return issued
        raise AssertionError("unreachable")


def _check_numbers(values: dict[str, Any]) -> None:
    """Limits and caps in range before they reach SQL, where a larger one would overflow."""
    for name in ("rpm_limit", "concurrency_limit"):
        value = values.get(name)
        if value is not None and not 1 <= value <= MAX_LIMIT:
            raise AccountError(f"{name} must be from 1 to {MAX_LIMIT:,}; got {value:,}.")
    for name in ("daily_cap", "monthly_cap"):
        if values.get(name) is not None:
            check_credits(name, values[name])


def _check_image_output(value: str | None) -> None:
    # Checked here as well as by the table's CHECK: a failed insert would read as a prefix clash.
    if value is not None and value not in IMAGE_OUTPUTS:
        raise ValueError(f"image_output must be one of {IMAGE_OUTPUTS} or None, not {value!r}")


async def _lock_keys(conn: AsyncConnection) -> None:
    """Serialize empty-table checks. PostgreSQL needs a table lock: under READ COMMITTED two
    transactions would each see the table empty. SQLite needs nothing: the guarded INSERT is
    the transaction's first statement, and a write statement takes the database's single write
    lock before it reads."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text(f"LOCK TABLE {api_keys.name} IN EXCLUSIVE MODE"))


async def _insert_key(
    conn: AsyncConnection, spec: _NewKey, only_if_empty: bool
) -> tuple[str, KeyRecord]:
    plain, prefix = new_key(spec.is_admin)
    now = utcnow()
    account_id = spec.account_id
    account_name = spec.account_name or prefix
    if account_id is None:
        account = {"name": account_name, "balance": 0, "created_at": now}
        if only_if_empty:
            # The guard rides on the transaction's first write, so two processes
            # bootstrapping at once cannot both get past it.
            account_id = await conn.scalar(_insert_if_no_keys(account))
            if account_id is None:
                raise _Taken
        else:
            account_id = await conn.scalar(
                insert(accounts).values(account).returning(accounts.c.id)
            )
    else:
        found = await conn.scalar(select(accounts.c.name).where(accounts.c.id == account_id))
        if found is None:
            raise LookupError(f"no account with id {account_id}")
        account_name = found
    values: dict[str, Any] = {
        "prefix": prefix,
        "key_hash": hash_key(plain),
        "name": spec.name,
        "is_admin": spec.is_admin,
        "account_id": account_id,
        "created_at": now,
        "expires_at": spec.expires_at,
        "allowed_models": list(spec.allowed_models) if spec.allowed_models is not None else None,
        "rpm_limit": spec.rpm_limit,
        "concurrency_limit": spec.concurrency_limit,
        "daily_cap": spec.daily_cap,
        "monthly_cap": spec.monthly_cap,
        "image_output": spec.image_output,
        "day_spend": 0,
        "month_spend": 0,
    }
    key_id = await conn.scalar(insert(api_keys).values(values).returning(api_keys.c.id))
    assert key_id is not None
    balance = int(
        await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account_id)) or 0
    )
    if spec.credits > 0:
        moved = await ledger.move(
            EngineTx(conn),
            account_id,
            spec.credits,
            f"credits for new key {prefix}",
            now,
            key_id=key_id,
        )
        assert moved is not None
        balance = moved
    record = KeyRecord(
        id=key_id,
        prefix=prefix,
        name=spec.name,
        is_admin=spec.is_admin,
        account_id=account_id,
        account_name=account_name,
        balance=balance,
        created_at=now,
        expires_at=spec.expires_at,
        revoked_at=None,
        allowed_models=spec.allowed_models,
        rpm_limit=spec.rpm_limit,
        concurrency_limit=spec.concurrency_limit,
        daily_cap=spec.daily_cap,
        monthly_cap=spec.monthly_cap,
        image_output=spec.image_output,
    )
    return plain, record


def _insert_if_no_keys(values: dict[str, Any]) -> ReturningInsert[int]:
    """INSERT INTO accounts ... SELECT <values> WHERE NOT EXISTS (SELECT id FROM api_keys): one
    statement, so the emptiness check and the write cannot be split by another writer."""
    source = select(
        *(literal(value, accounts.c[name].type) for name, value in values.items())
    ).where(~exists(select(api_keys.c.id)))
    return insert(accounts).from_select(list(values), source).returning(accounts.c.id)


async def _spent_since(conn: AsyncConnection, key_id: int, since: str) -> int:
    """What a key has spent (charged and still held) since a UTC moment, from the ledger."""
    total = await conn.scalar(
        select(func.coalesce(func.sum(ledger_table.c.amount), 0)).where(
            ledger_table.c.key_id == key_id,
            ledger_table.c.kind.in_(("reserve", "settle", "refund")),
            ledger_table.c.created_at >= datetime.fromisoformat(since + "+00:00"),
        )
    )
    return max(0, -int(total or 0))


async def bootstrap(store: KeyStore, starter_credits: int) -> tuple[str, str] | None:
    """On an empty database, issue a client key "default" on an account "default" holding
    `starter_credits`, and an admin key "admin" on an account "admin". Returns (client_key,
    admin_key), or None when keys already exist (including when another process won the race
    to create them)."""
    if await store.count() > 0:
        return None
    issued = await store._create(
        [
            _NewKey(name="default", account_name="default", credits=starter_credits),
            _NewKey(name="admin", is_admin=True, account_name="admin"),
        ],
        only_if_empty=True,
    )
    if issued is None:
        return None
    (client_key, _), (admin_key, _) = issued
    logger.info("bootstrap: created the first client key and admin key")
    return client_key, admin_key


async def _keep_an_admin(conn: AsyncConnection, key_id: int, prefix: str) -> None:
    """Refuse to expire the last active admin key: like revoking it, that locks the admin API
    out."""
    now = utcnow()
    await lock_admins(conn)
    last = await conn.scalar(
        select(api_keys.c.id).where(
            api_keys.c.id == key_id,
            api_keys.c.is_admin,
            api_keys.c.revoked_at.is_(None),
            (api_keys.c.expires_at.is_(None)) | (api_keys.c.expires_at > now),
            ~another_admin(now),
        )
    )
    if last is not None:
        raise LastAdminKey(
            f"{prefix} is the last active admin key: expiring it would lock the admin API out. "
            "Create another admin key first."
        )
