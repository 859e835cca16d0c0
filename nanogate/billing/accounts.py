"""Accounts: create, find, list, top up, and read their ledger. For the admin API and the CLI.

Money moves only through `ledger.move` (in a runner's transaction), so a top-up here and a
settle on the request path take the same locks and write the same kind of rows.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.billing import ledger
from nanogate.billing.ledger import MAX_CREDITS
from nanogate.billing.runners import Runner
from nanogate.db.tables import HOLD_POLICIES, accounts, api_keys, holds
from nanogate.db.tables import ledger as ledger_table


class AccountError(ValueError):
    """A request about accounts that cannot be met; the message says why."""


class BalanceError(AccountError):
    """A top-up or adjustment the balance cannot take: below zero, or above MAX_CREDITS."""


# Account ids are INTEGER columns: a longer number cannot be one (and would overflow the query).
_MAX_ID = 2**31 - 1


def check_credits(what: str, value: int, *, low: int = 0) -> None:
    """Refuse an amount of credits outside low..MAX_CREDITS before it reaches SQL."""
    if not low <= value <= MAX_CREDITS:
        raise AccountError(f"{what} must be from {low:,} to {MAX_CREDITS:,}; got {value:,}.")


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    balance: int
    created_at: datetime
    keys: int = 0
    held: int = 0  # credits reserved by calls in flight (already out of the balance)
    hold_policy: str | None = None  # None: the gateway's setting
    written_off: int = 0  # overruns the balance could not pay, over the account's life

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "balance": self.balance,
            "held": self.held,
            "keys": self.keys,
            "hold_policy": self.hold_policy,
            "written_off": self.written_off,
            "created_at": self.created_at,
        }


_KEY_COUNT = (
    select(func.count())
    .where(api_keys.c.account_id == accounts.c.id)
    .correlate(accounts)
    .scalar_subquery()
)
_HELD = (
    select(func.coalesce(func.sum(holds.c.amount), 0))
    .where(holds.c.account_id == accounts.c.id, holds.c.state == "pending")
    .correlate(accounts)
    .scalar_subquery()
)
_WRITTEN_OFF = (
    select(func.coalesce(func.sum(ledger_table.c.amount), 0))
    .where(ledger_table.c.account_id == accounts.c.id, ledger_table.c.kind == "writeoff")
    .correlate(accounts)
    .scalar_subquery()
)
_ACCOUNTS = select(
    accounts,
    _KEY_COUNT.label("keys"),
    _HELD.label("held"),
    _WRITTEN_OFF.label("written_off"),
)


def _account(row: Any) -> Account:
    return Account(
        row.id,
        row.name,
        int(row.balance),
        row.created_at,
        int(row.keys),
        int(row.held),
        row.hold_policy,
        int(row.written_off),
    )


def _check_policy(policy: str | None) -> None:
    if policy is not None and policy not in HOLD_POLICIES:
        raise AccountError(f"hold_policy must be one of {', '.join(HOLD_POLICIES)} (or unset).")


class AccountStore:
    def __init__(self, engine: AsyncEngine, runner: Runner) -> None:
        self._engine = engine
        self._runner = runner

    async def create(
        self, name: str, credits: int = 0, reason: str = "", hold_policy: str | None = None
    ) -> Account:
        name = name.strip()
        if not name:
            raise AccountError("An account needs a name.")
        # Checked before the account is written: a top-up refused after it would leave it behind.
        check_credits("Starting credits", credits)
        _check_policy(hold_policy)
        try:
            async with self._engine.begin() as conn:
                account_id = await conn.scalar(
                    insert(accounts)
                    .values(
                        name=name,
                        balance=0,
                        hold_policy=hold_policy,
                        created_at=datetime.now(UTC),
                    )
                    .returning(accounts.c.id)
                )
        except IntegrityError:
            raise AccountError(f"An account named '{name}' already exists.") from None
        assert account_id is not None
        if credits:
            await self.topup(account_id, credits, reason or "starting credits")
        found = await self.get(str(account_id))
        assert found is not None
        return found

    async def list(self) -> list[Account]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(_ACCOUNTS.order_by(accounts.c.id))
            return [_account(row) for row in rows]

    async def get(self, ref: str) -> Account | None:
        """An account by id (digits) or by name."""
        ref = ref.strip()
        is_id = ref.isascii() and ref.isdigit() and int(ref) <= _MAX_ID
        where = accounts.c.id == int(ref) if is_id else accounts.c.name == ref
        async with self._engine.connect() as conn:
            row = (await conn.execute(_ACCOUNTS.where(where))).first()
        return _account(row) if row is not None else None

    async def set_hold_policy(self, account_id: int, policy: str | None) -> None:
        """How much the account's calls hold (HOLD_POLICIES); None follows the setting."""
        _check_policy(policy)
        async with self._engine.begin() as conn:
            await conn.execute(
                update(accounts).where(accounts.c.id == account_id).values(hold_policy=policy)
            )

    async def balance(self, account_id: int) -> int:
        async with self._engine.connect() as conn:
            value = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account_id))
        return int(value or 0)

    async def topup(
        self, account_id: int, amount: int, reason: str, *, key_id: int | None = None
    ) -> int:
        """Add credits (amount > 0, a top-up) or take them away (amount < 0, an adjustment,
        never below zero). Both carry a reason into the ledger. The new balance."""
        if amount == 0:
            raise AccountError("The amount must not be zero.")
        check_credits("The amount", amount, low=-MAX_CREDITS)
        reason = reason.strip()
        if not reason:
            raise AccountError("A top-up or adjustment needs a reason.")
        now = datetime.now(UTC)

        async def work(tx: ledger.Tx) -> int | None:
            return await ledger.move(tx, account_id, amount, reason[:500], now, key_id=key_id)

        balance = await self._runner.run(work)
        if balance is None:
            current = await self.balance(account_id)
            if amount < 0:
                raise BalanceError(
                    f"An adjustment of {amount} would take the balance ({current}) below zero."
                )
            raise BalanceError(
                f"A top-up of {amount:,} would take the balance ({current:,}) above the most an "
                f"account may hold ({MAX_CREDITS:,})."
            )
        return balance

    async def entries(
        self,
        account_id: int | None = None,
        *,
        key_id: int | None = None,
        request_id: str | None = None,
        limit: int = 50,
    ) -> builtins.list[dict[str, Any]]:
        """Ledger rows, newest first."""
        stmt = select(ledger_table).order_by(ledger_table.c.id.desc()).limit(limit)
        if account_id is not None:
            stmt = stmt.where(ledger_table.c.account_id == account_id)
        if key_id is not None:
            stmt = stmt.where(ledger_table.c.key_id == key_id)
        if request_id is not None:
            stmt = stmt.where(ledger_table.c.request_id == request_id)
        async with self._engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(stmt)]
