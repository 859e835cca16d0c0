"""AccountStore: every number is range-checked before it reaches SQL, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.billing.accounts import AccountError, AccountStore, BalanceError
from nanogate.billing.keys import MAX_LIMIT, KeyStore
from nanogate.billing.ledger import MAX_CREDITS
from nanogate.billing.runners import Journal
from nanogate.db import accounts

from .conftest import ledger_balance


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(accounts)) or 0)


@pytest.mark.parametrize("credits", [2**63, 2**63 - 1, MAX_CREDITS + 1, -1])
async def test_starting_credits_out_of_range_leave_no_account_behind(
    engine: AsyncEngine, journal: Journal, credits: int
) -> None:
    store = AccountStore(engine, journal.runner)
    before = await _count(engine)
    with pytest.raises(AccountError, match="Starting credits must be from 0 to"):
        await store.create("acme", credits, "start")
    assert await _count(engine) == before
    # The name is still free: a retry with a sane amount is not a conflict.
    account = await store.create("acme", MAX_CREDITS, "start")
    assert account.balance == MAX_CREDITS == await ledger_balance(engine, account.id)


@pytest.mark.parametrize("amount", [2**63, MAX_CREDITS + 1, -(2**63), -MAX_CREDITS - 1])
async def test_a_top_up_out_of_range_is_refused_before_sql(
    engine: AsyncEngine, journal: Journal, amount: int
) -> None:
    store = AccountStore(engine, journal.runner)
    account = await store.create("acme", 100, "start")
    with pytest.raises(AccountError, match="The amount must be from"):
        await store.topup(account.id, amount, "oops")
    assert await ledger_balance(engine, account.id) == 100


async def test_a_balance_never_goes_above_the_most_an_account_may_hold(
    engine: AsyncEngine, journal: Journal
) -> None:
    store = AccountStore(engine, journal.runner)
    account = await store.create("acme", MAX_CREDITS - 5, "start")
    with pytest.raises(BalanceError, match="above the most an account may hold"):
        await store.topup(account.id, 6, "one too many")
    assert await store.topup(account.id, 5, "just enough") == MAX_CREDITS
    # Taking credits away still works at the ceiling, and below zero is refused as before.
    assert await store.topup(account.id, -MAX_CREDITS, "all of it") == 0
    with pytest.raises(BalanceError, match="below zero"):
        await store.topup(account.id, -1, "too much")
    assert await ledger_balance(engine, account.id) == 0


@pytest.mark.parametrize("ref", ["99999999999999999999999", str(2**31), "²"])
async def test_an_id_too_large_for_the_column_is_no_account(
    engine: AsyncEngine, journal: Journal, ref: str
) -> None:
    assert await AccountStore(engine, journal.runner).get(ref) is None


@pytest.mark.parametrize(
    "limits",
    [
        {"credits": 2**63},
        {"daily_cap": 2**63},
        {"monthly_cap": MAX_CREDITS + 1},
        {"rpm_limit": 2**31},
        {"concurrency_limit": MAX_LIMIT + 1},
        {"rpm_limit": 0},
    ],
)
async def test_key_numbers_out_of_range_are_refused_before_sql(
    engine: AsyncEngine, limits: dict[str, int]
) -> None:
    keys = KeyStore(engine, 0)
    with pytest.raises(AccountError, match=f"{next(iter(limits))} must be from"):
        await keys.create("k", **limits)  # type: ignore[arg-type]
    assert await keys.count() == 0
    _, record = await keys.create("k")
    changes = {name: value for name, value in limits.items() if name != "credits"}
    if changes:
        with pytest.raises(AccountError):
            await keys.update(record.prefix, **changes)
