"""The ledger on SQLite and PostgreSQL: reserve, settle, refund, top-ups, caps, recovery.

Every test ends by checking the invariant: each account's ledger rows sum to its balance.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.access.keys import KeyRecord
from nanogate.billing import ledger, runners
from nanogate.billing.accounts import AccountError, AccountStore
from nanogate.billing.ledger import Hold, Refusal, Row
from nanogate.billing.runners import Journal, SqliteRunner, open_runner
from nanogate.db import accounts, api_keys, holds, run_migrations, usage_records
from nanogate.db import ledger as ledger_table
from nanogate.db.engine import unreachable
from nanogate.engine import usage
from nanogate.engine.usage import UsageRecord, UsageRecorder

from .conftest import ledger_balance, new_key, separate_runners

T = TypeVar("T")


def _hold(key: KeyRecord, amount: int, *, node: str = "n1", ttl: float = 3600) -> Hold:
    now = datetime.now(UTC)
    return Hold(
        id=f"h{id(object())}{now.timestamp()}",
        request_id="req",
        account_id=key.account_id,
        key_id=key.id,
        amount=amount,
        capped=key.capped,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
        node=node,
    )


async def _reserve(journal: Journal, hold: Hold) -> Refusal | None:
    return await journal.submit(lambda tx: ledger.reserve(tx, hold))


async def _resolve(journal: Journal, hold: Hold, cost: int | None) -> ledger.Resolution | None:
    now = datetime.now(UTC)
    return await journal.submit(lambda tx: ledger.resolve(tx, hold.id, cost, now))


async def _void(journal: Journal, hold: Hold) -> ledger.Resolution | None:
    now = datetime.now(UTC)
    return await journal.submit(lambda tx: ledger.void(tx, hold.id, now))


def test_sqlite_files_get_the_in_loop_runner(tmp_path: object) -> None:
    runner = open_runner(f"sqlite+aiosqlite:///{tmp_path}/x.db", None)  # type: ignore[arg-type]
    assert isinstance(runner, SqliteRunner)


async def test_reserve_then_settle_charges_the_cost(engine: AsyncEngine, journal: Journal) -> None:
    key = await new_key(engine, 1000)
    hold = _hold(key, 600)
    assert await _reserve(journal, hold) is None
    assert await ledger_balance(engine, key.account_id) == 400
    resolution = await _resolve(journal, hold, 250)
    assert resolution is not None and (resolution.charged, resolution.balance) == (250, 750)
    assert await ledger_balance(engine, key.account_id) == 750
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(ledger_table.c.kind, ledger_table.c.amount, ledger_table.c.request_id)
                .where(ledger_table.c.account_id == key.account_id)
                .order_by(ledger_table.c.id)
            )
        ).all()
        state = (await conn.execute(select(holds.c.state, holds.c.cost))).one()
    assert [tuple(r) for r in rows] == [
        ("topup", 1000, None),
        ("reserve", -600, "req"),
        ("settle", 350, "req"),
    ]
    assert tuple(state) == ("settled", 250)


async def test_settle_and_refund_happen_once(engine: AsyncEngine, journal: Journal) -> None:
    key = await new_key(engine, 1000)
    hold = _hold(key, 500)
    await _reserve(journal, hold)
    first, second, third = await asyncio.gather(
        _resolve(journal, hold, 100), _resolve(journal, hold, 100), _resolve(journal, hold, None)
    )
    assert first is not None and second is None and third is None
    assert await ledger_balance(engine, key.account_id) == 900
    async with engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(ledger_table))
    assert count == 3  # top-up, reserve, one settle


async def test_refund_gives_everything_back(engine: AsyncEngine, journal: Journal) -> None:
    key = await new_key(engine, 1000)
    hold = _hold(key, 999)
    await _reserve(journal, hold)
    resolution = await _resolve(journal, hold, None)
    assert resolution is not None and resolution.charged == 0
    assert await ledger_balance(engine, key.account_id) == 1000


async def test_short_balance_is_refused_and_changes_nothing(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 100)
    refusal = await _reserve(journal, _hold(key, 101))
    assert refusal == Refusal("balance", 100)
    assert await ledger_balance(engine, key.account_id) == 100


async def test_200_concurrent_reserves_on_50_affordable(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 50 * 7)
    results = await asyncio.gather(*(_reserve(journal, _hold(key, 7)) for _ in range(200)))
    assert sum(r is None for r in results) == 50
    assert sum(isinstance(r, Refusal) for r in results) == 150
    assert await ledger_balance(engine, key.account_id) == 0


async def test_reserves_from_separate_connections_never_overdraw_or_pass_a_cap(
    db_url: str, engine: AsyncEngine
) -> None:
    # Four journals, as four gateways would run them: each batch is a transaction of its own
    # on a connection of its own, so only the rows' locks keep the numbers straight.
    key = await new_key(engine, 50 * 7, daily_cap=30 * 7)
    runners = separate_runners(db_url, engine, 4)
    journals = [Journal(runner) for runner in runners]
    for journal in journals:
        journal.start()
    try:
        made = [_hold(key, 7) for _ in range(120)]
        results = await asyncio.gather(
            *(_reserve(journals[i % 4], hold) for i, hold in enumerate(made))
        )
        assert sum(r is None for r in results) == 30
        assert {r.reason for r in results if r is not None} == {"daily_cap"}
        taken = [hold for hold, r in zip(made, results, strict=True) if r is None]
        settled = await asyncio.gather(
            *(_resolve(journals[i % 4], hold, 5) for i, hold in enumerate(taken))
        )
        assert all(r is not None and r.charged == 5 for r in settled)
        # What the settles gave back is room under the cap again, and only that.
        again = [_hold(key, 7) for _ in range(40)]
        results = await asyncio.gather(
            *(_reserve(journals[i % 4], hold) for i, hold in enumerate(again))
        )
        assert sum(r is None for r in results) == (30 * 2) // 7
    finally:
        for journal in journals:
            await journal.stop()
        for runner in runners:
            await runner.close()
    assert await ledger_balance(engine, key.account_id) == 350 - 30 * 5 - (60 // 7) * 7
    async with engine.connect() as conn:
        spent = await conn.scalar(select(api_keys.c.day_spend).where(api_keys.c.id == key.id))
    assert spent == 30 * 5 + (60 // 7) * 7


async def test_overrun_is_taken_as_far_as_the_balance_goes(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 100)
    hold = _hold(key, 60)
    await _reserve(journal, hold)
    resolution = await _resolve(journal, hold, 130)  # 70 over, 40 left
    assert resolution is not None
    assert (resolution.charged, resolution.balance, resolution.shortfall) == (100, 0, 30)
    assert await ledger_balance(engine, key.account_id) == 0


async def test_daily_and_monthly_caps(engine: AsyncEngine, journal: Journal) -> None:
    key = await new_key(engine, 10_000, daily_cap=500, monthly_cap=800)
    first = _hold(key, 400)
    assert await _reserve(journal, first) is None
    refused = await _reserve(journal, _hold(key, 200))
    assert refused == Refusal("daily_cap", 9_600, 400, 500)
    assert await ledger_balance(engine, key.account_id) == 9_600  # the refused debit was undone
    await _resolve(journal, first, 100)  # unused 300 goes back to today's spend
    second = _hold(key, 400)
    assert await _reserve(journal, second) is None
    await _resolve(journal, second, 400)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(api_keys.c.day_spend, api_keys.c.month_spend).where(api_keys.c.id == key.id)
            )
        ).one()
    assert tuple(row) == (500, 500)
    assert await _reserve(journal, _hold(key, 1)) == Refusal("daily_cap", 9_500, 500, 500)


async def test_monthly_cap_refusal(engine: AsyncEngine, journal: Journal) -> None:
    key = await new_key(engine, 10_000, monthly_cap=300)
    assert await _reserve(journal, _hold(key, 301)) == Refusal("monthly_cap", 10_000, 0, 300)


async def test_recovery_closes_this_nodes_and_expired_holds(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1000)
    mine = _hold(key, 100, node="me")
    live_elsewhere = _hold(key, 100, node="other")
    dead_elsewhere = _hold(key, 100, node="gone", ttl=-1)
    for hold in (mine, live_elsewhere, dead_elsewhere):
        await _reserve(journal, hold)
    now = datetime.now(UTC)
    found = await journal.submit(lambda tx: ledger.orphans(tx, "me", now))
    assert sorted(h for h, _ in found) == sorted([mine.id, dead_elsewhere.id])
    later = await journal.submit(lambda tx: ledger.orphans(tx, None, now))
    assert [h for h, _ in later] == [dead_elsewhere.id]


async def test_recovery_settles_holds_whose_usage_is_known(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1000)
    hold = _hold(key, 300, node="me")
    await _reserve(journal, hold)
    recorder = UsageRecorder(engine)
    recorder.record(UsageRecord("req", key.id, key.prefix, "gemini", "m", "x", 200, 5, cost=120))
    await recorder.flush()
    now = datetime.now(UTC)
    assert await journal.submit(lambda tx: ledger.orphans(tx, "me", now)) == [(hold.id, 120)]


async def test_topups_and_adjustments_carry_reasons(engine: AsyncEngine, journal: Journal) -> None:
    store = AccountStore(engine, journal.runner)
    account = await store.create("acme", 500, "opening")
    assert await store.topup(account.id, 250, "invoice 7") == 750
    assert await store.topup(account.id, -50, "goodwill correction") == 700
    with pytest.raises(AccountError):
        await store.topup(account.id, -701, "too much")
    with pytest.raises(AccountError):
        await store.topup(account.id, 10, "  ")
    with pytest.raises(AccountError):
        await store.create("acme")
    rows = await store.entries(account.id)
    assert [(r["kind"], r["amount"], r["note"]) for r in rows] == [
        ("adjustment", -50, "goodwill correction"),
        ("topup", 250, "invoice 7"),
        ("topup", 500, "opening"),
    ]
    assert await ledger_balance(engine, account.id) == 700
    found = await store.get("acme")
    assert found is not None and found.id == account.id and found.balance == 700


async def test_a_failing_operation_does_not_sink_its_batch(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1000)

    async def broken(tx: ledger.Tx) -> None:
        await tx.exec("INSERT INTO no_such_table VALUES (1)", {})

    good = _hold(key, 10)
    results = await asyncio.gather(
        journal.submit(broken), _reserve(journal, good), return_exceptions=True
    )
    assert isinstance(results[0], Exception) and results[1] is None
    assert await ledger_balance(engine, key.account_id) == 990


_ON_POSTGRES = pytest.mark.parametrize("database", ["postgresql"], indirect=True)


async def _behind_a_topup(
    db_url: str, engine: AsyncEngine, account_id: int, topup: int, then: Awaitable[T]
) -> T:
    """Run `then` while another connection's top-up holds the account's row: its statement
    starts (and takes its snapshot) before the top-up commits."""
    runner = open_runner(db_url, engine)
    locked, release = asyncio.Event(), asyncio.Event()

    async def topup_held(tx: ledger.Tx) -> None:
        await ledger.move(tx, account_id, topup, "raised meanwhile", datetime.now(UTC))
        locked.set()
        await release.wait()

    holding = asyncio.create_task(runner.run(topup_held))
    try:
        await locked.wait()
        waiting = asyncio.ensure_future(then)
        await asyncio.sleep(0.3)  # long enough to reach the row and wait for it
        assert not waiting.done()
        release.set()
        await holding
        return await waiting
    finally:
        await runner.close()


@_ON_POSTGRES
async def test_a_reserve_behind_a_raise_takes_what_the_raised_balance_allows(
    db_url: str, engine: AsyncEngine, journal: Journal
) -> None:
    # The reserve's snapshot saw 1,000: a write computed from it (1,000 - 2,500) used to fail
    # `balance >= 0` although the row it updates holds 3,000 by then.
    key = await new_key(engine, 1_000)
    hold = _hold(key, 2_500)
    reserving = _reserve(journal, hold)
    assert await _behind_a_topup(db_url, engine, key.account_id, 2_000, reserving) is None
    assert hold.amount == 2_500
    assert await ledger_balance(engine, key.account_id) == 500


@_ON_POSTGRES
async def test_an_overrun_behind_a_raise_is_paid_from_the_raised_balance(
    db_url: str, engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1_000)
    hold = _hold(key, 600)
    assert await _reserve(journal, hold) is None  # 400 left
    settling = _resolve(journal, hold, 1_500)
    resolution = await _behind_a_topup(db_url, engine, key.account_id, 1_000, settling)
    assert resolution is not None
    assert (resolution.charged, resolution.balance, resolution.shortfall) == (1_500, 500, 0)
    assert await ledger_balance(engine, key.account_id) == 500


@_ON_POSTGRES
async def test_a_failed_transaction_is_logged_by_its_error_and_constraint_not_its_values(
    engine: AsyncEngine, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    key = await new_key(engine, 1_000)

    async def overdraw(tx: ledger.Tx) -> int:
        return await tx.exec(
            "UPDATE accounts SET balance = -424242 WHERE id = :id", {"id": key.account_id}
        )

    with pytest.raises(DBAPIError):
        await journal.submit(overdraw)
    [logged] = [r.getMessage() for r in caplog.records if "ledger transaction" in r.getMessage()]
    assert "CheckViolationError 23514 ck_accounts_balance_nonnegative" in logged
    assert "424242" not in logged
    assert await ledger_balance(engine, key.account_id) == 1_000


@_ON_POSTGRES
async def test_a_connection_lost_while_idle_costs_no_batch(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1_000)
    assert await _reserve(journal, _hold(key, 10)) is None
    found = await journal.submit(lambda tx: tx.one("SELECT pg_backend_pid()", {}))
    assert found is not None
    async with engine.connect() as conn:  # as a restart or an operator would
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": found[0]})
    await asyncio.sleep(0.2)
    assert await _reserve(journal, _hold(key, 10)) is None
    assert await ledger_balance(engine, key.account_id) == 980


@_ON_POSTGRES
async def test_a_connection_lost_in_a_batch_is_a_database_error_and_the_next_gets_another(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1_000)
    lost = _hold(key, 10)

    async def cut(tx: ledger.Tx) -> None:
        await ledger.reserve(tx, lost)
        await tx.one("SELECT pg_terminate_backend(pg_backend_pid())", {})

    with pytest.raises(DBAPIError) as caught:
        await journal.submit(cut)
    assert unreachable(caught.value), "a lost connection must read as the database not answering"
    assert await _reserve(journal, _hold(key, 10)) is None
    assert await ledger_balance(engine, key.account_id) == 990  # the cut batch left nothing


async def _how_committed(tx: ledger.Tx) -> Row | None:
    """Whether a transaction was open before the work's statement (a BEGIN sent before the work
    started, 50 ms earlier), and whether its commit waits for the disk."""
    await asyncio.sleep(0.05)
    return await tx.one(
        "SELECT statement_timestamp() - transaction_timestamp() > interval '40 milliseconds', "
        "current_setting('synchronous_commit')",
        {},
    )


@_ON_POSTGRES
async def test_a_statement_alone_runs_outside_a_transaction_and_only_a_loose_one_skips_the_disk(
    engine: AsyncEngine, journal: Journal
) -> None:
    loose = await journal.submit(_how_committed, statement="loose")
    durable = await journal.submit(_how_committed, statement="durable")
    transaction = await journal.submit(_how_committed)
    assert loose == (False, "off"), "a loose statement runs alone, not waiting for the disk"
    assert durable == (False, "on"), "a durable statement runs alone, waiting for the disk"
    assert transaction == (True, "on"), "other work runs in a transaction that waits"
    # and a loose reservation, refunded loose, moves the money as a transaction would
    key = await new_key(engine, 1_000)
    hold = _hold(key, 300)
    assert await journal.submit(lambda tx: ledger.reserve(tx, hold), statement="loose") is None
    assert await ledger_balance(engine, key.account_id) == 700
    now = datetime.now(UTC)
    refund = await journal.submit(
        lambda tx: ledger.resolve(tx, hold.id, None, now), statement="loose"
    )
    assert refund is not None and refund.balance == 1_000


async def test_a_settle_writes_its_record_in_its_own_statement_and_none_for_a_closed_hold(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1_000)
    hold = _hold(key, 300)
    assert await _reserve(journal, hold) is None
    record = UsageRecord(
        request_id="req-settled",
        key_id=key.id,
        key_prefix=key.prefix,
        account_id=key.account_id,
        dialect="gemini",
        method="generateContent",
        model="m",
        status=200,
        latency_ms=12,
        cost=999_999,  # what the settle charges is written instead
    )
    now = datetime.now(UTC)
    settled = await journal.submit(
        lambda tx: ledger.resolve(tx, hold.id, 120, now, usage.charged(record)),
        statement="durable",
    )
    assert settled is not None and settled.charged == 120
    again = await journal.submit(
        lambda tx: ledger.resolve(tx, hold.id, 120, now, usage.charged(record)),
        statement="durable",
    )
    assert again is None
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(usage_records.c.cost, usage_records.c.key_prefix).where(
                    usage_records.c.request_id == "req-settled"
                )
            )
        ).all()
    assert [tuple(row) for row in rows] == [(120, key.prefix)], "one record, at the charge"
    assert await ledger_balance(engine, key.account_id) == 880


@_ON_POSTGRES
async def test_work_of_two_statements_submitted_as_one_is_refused_before_the_second(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1_000)

    async def two(tx: ledger.Tx) -> None:
        await tx.exec("UPDATE accounts SET name = 'renamed' WHERE id = :id", {"id": key.account_id})
        await tx.exec("UPDATE accounts SET balance = 0 WHERE id = :id", {"id": key.account_id})

    with pytest.raises(RuntimeError, match="one statement"):
        await journal.submit(two, statement="durable")
    assert await ledger_balance(engine, key.account_id) == 1_000, "the second never ran"


@_ON_POSTGRES
async def test_the_kept_connections_go_back_to_the_pool_waiting_for_the_disk(
    db_url: str, engine: AsyncEngine
) -> None:
    journal = Journal(open_runner(db_url, engine))
    journal.start()
    await journal.submit(lambda tx: tx.one("SELECT 1", {}), statement="loose")
    await journal.submit(lambda tx: tx.one("SELECT 1", {}), statement="durable")
    await journal.stop()
    await journal.runner.close()
    async with engine.connect() as first, engine.connect() as second, engine.connect() as third:
        for conn in (first, second, third):
            assert await conn.scalar(text("SHOW synchronous_commit")) == "on"


# -- fair holds ---------------------------------------------------------------------------------


def _fair(key: KeyRecord, certain: int, likely: int, worst: int, limit: int = 2) -> Hold:
    hold = _hold(key, likely)
    hold.floor, hold.worst, hold.uncovered_limit = certain, worst, limit
    return hold


async def _exposure(engine: AsyncEngine, account_id: int) -> tuple[int, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(accounts.c.exposure, accounts.c.uncovered).where(accounts.c.id == account_id)
            )
        ).one()
    return int(row[0]), int(row[1])


async def test_fair_hold_takes_the_allowance_as_far_as_the_balance_goes(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1_000)
    full = _fair(key, 300, 400, 400)
    assert await _reserve(journal, full) is None and full.amount == 400
    partial = _fair(key, 300, 700, 700)
    assert await _reserve(journal, partial) is None
    assert partial.amount == 600  # the rest of the balance, above its certain 300
    assert await _reserve(journal, _fair(key, 1, 5, 5)) == Refusal("balance", 0)
    await _resolve(journal, partial, 650)  # 50 over its hold; nothing left to take
    assert await ledger_balance(engine, key.account_id) == 0


async def test_below_the_certain_cost_is_refused(engine: AsyncEngine, journal: Journal) -> None:
    key = await new_key(engine, 299)
    assert await _reserve(journal, _fair(key, 300, 400, 9_000)) == Refusal("balance", 299)
    assert await ledger_balance(engine, key.account_id) == 299
    assert await _exposure(engine, key.account_id) == (0, 0)


async def test_uncovered_calls_are_bounded_and_free_up_when_one_ends(
    engine: AsyncEngine, journal: Journal
) -> None:
    # 1,000 credits cannot cover a call that could cost 5,000: each is uncovered.
    key = await new_key(engine, 1_000)
    first, second = _fair(key, 100, 200, 5_000), _fair(key, 100, 200, 5_000)
    assert await _reserve(journal, first) is None
    assert await _reserve(journal, second) is None
    assert await _exposure(engine, key.account_id) == (9_600, 2)
    assert await _reserve(journal, _fair(key, 100, 200, 5_000)) == Refusal("busy", 600)
    await _resolve(journal, first, 150)
    assert await _exposure(engine, key.account_id) == (4_800, 1)
    assert await _reserve(journal, _fair(key, 100, 200, 5_000)) is None


async def test_a_balance_that_covers_every_worst_case_is_never_busy(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 100_000)
    holds_made = [_fair(key, 10, 20, 1_000, limit=1) for _ in range(90)]
    results = await asyncio.gather(*(_reserve(journal, h) for h in holds_made))
    assert results == [None] * 90
    exposure, uncovered = await _exposure(engine, key.account_id)
    assert (exposure, uncovered) == (90 * 980, 0)
    # The 91st leaves 98,180 against 89,180 of exposure: still covered, so not busy.
    assert await _reserve(journal, _fair(key, 10, 20, 1_000, limit=1)) is None
    for hold in holds_made:
        await _resolve(journal, hold, 1_000)  # every one runs to its worst case
    assert await ledger_balance(engine, key.account_id) == 100_000 - 90 * 1_000 - 20


async def test_an_overrun_the_balance_cannot_pay_is_written_off(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 500)
    hold = _fair(key, 100, 200, 5_000)
    await _reserve(journal, hold)
    resolution = await _resolve(journal, hold, 900)  # 700 over; 300 left to take
    assert resolution is not None
    assert (resolution.charged, resolution.balance, resolution.shortfall) == (500, 0, 400)
    assert await ledger_balance(engine, key.account_id) == 0
    assert await _exposure(engine, key.account_id) == (0, 0)
    store = AccountStore(engine, journal.runner)
    rows = await store.entries(key.account_id)
    # Newest first: the settle takes the whole price right after the write-off forgives the
    # part the balance could not pay; no row's balance is below zero.
    assert [(r["kind"], r["amount"], r["balance_after"]) for r in rows[:3]] == [
        ("settle", -700, 0),
        ("writeoff", 400, 700),
        ("reserve", -200, 300),
    ]
    account = await store.get(str(key.account_id))
    assert account is not None and account.written_off == 400


async def test_worst_case_policy_holds_the_worst_case(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1_000)
    store = AccountStore(engine, journal.runner)
    await store.set_hold_policy(key.account_id, "worst_case")
    assert await _reserve(journal, _fair(key, 100, 200, 1_001)) == Refusal("balance", 1_000)
    hold = _fair(key, 100, 200, 600)
    assert await _reserve(journal, hold) is None and hold.amount == 600
    assert await _exposure(engine, key.account_id) == (0, 0)
    with pytest.raises(AccountError):
        await store.set_hold_policy(key.account_id, "generous")


async def test_caps_bound_the_hold_and_refuse_below_the_certain_cost(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 10_000, daily_cap=500)
    hold = _fair(key, 100, 800, 800)
    assert await _reserve(journal, hold) is None and hold.amount == 500
    assert await _reserve(journal, _fair(key, 1, 2, 2)) == Refusal("daily_cap", 9_500, 500, 500)
    await _resolve(journal, hold, 300)
    assert await ledger_balance(engine, key.account_id) == 9_700


async def test_void_refunds_a_pending_hold_or_gives_a_landed_settle_back(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1_000, daily_cap=900)
    pending, settled = _hold(key, 300), _hold(key, 300)
    for hold in (pending, settled):
        assert await _reserve(journal, hold) is None
    await _resolve(journal, settled, 250)
    for hold in (pending, settled):
        found = await _void(journal, hold)
        assert found is not None and found.charged == 0
        assert await _void(journal, hold) is None  # once only
    assert await ledger_balance(engine, key.account_id) == 1_000
    async with engine.connect() as conn:
        states = set((await conn.execute(select(holds.c.state, holds.c.cost))).all())
        spent = await conn.scalar(select(api_keys.c.day_spend).where(api_keys.c.id == key.id))
    assert states == {("refunded", 0)} and spent == 0


async def test_a_read_does_not_wait_for_the_write_lock(tmp_path: object) -> None:
    path = f"{tmp_path}/nanogate.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(run_migrations, url)
    runner = open_runner(url, None)  # type: ignore[arg-type]
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        journal = Journal(runner)
        journal.start()
        count = await asyncio.wait_for(
            journal.read(lambda tx: tx.one("SELECT COUNT(*) FROM accounts", {})), 0.5
        )
        assert count == (0,)
        other.execute("ROLLBACK")
        await journal.stop()
    finally:
        other.close()
        await runner.close()


def _size(path: Path) -> int:
    return path.stat().st_size


async def test_wal_checkpoints_run_off_the_loop_every_so_many_commits(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner's own commits never checkpoint (a checkpoint copies the WAL into the file and
    # syncs it: milliseconds); a thread does, once SQLITE_CHECKPOINT_EVERY commits went by.
    monkeypatch.setattr(runners, "SQLITE_CHECKPOINT_EVERY", 20)
    path = Path(f"{tmp_path}/nanogate.db")
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(run_migrations, url)
    runner = open_runner(url, None)  # type: ignore[arg-type]
    assert isinstance(runner, SqliteRunner)

    async def grow(tx: ledger.Tx) -> None:
        # Enough pages that SQLite's own threshold (1,000) would checkpoint inside a commit.
        for _ in range(200):
            await tx.exec(
                "INSERT INTO accounts (name, balance, created_at) VALUES "
                "(hex(randomblob(400)), 0, '2026-01-01')",
                {},
            )

    try:
        before = _size(path)
        for _ in range(19):
            await runner.run(grow)
        assert _size(path) == before, "a commit checkpointed"
        assert runner._checkpoint is None
        await runner.run(grow)
        assert runner._checkpoint is not None
        await runner._checkpoint
        assert _size(path) > before
        # The next checkpoint copies the next commits, on the connection the first opened.
        kept, grown = runner._checkpointer, _size(path)
        assert kept is not None
        for _ in range(20):
            await runner.run(grow)
        assert runner._checkpoint is not None
        await runner._checkpoint
        assert _size(path) > grown
        assert runner._checkpointer is kept
    finally:
        await runner.close()


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 12, 5, 16, 36, 26, 156124, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),  # no microseconds: still six digits
        datetime(2026, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=3))),  # another zone
    ],
)
def test_the_sqlite_runner_writes_a_timestamp_as_sqlalchemy_does(moment: datetime) -> None:
    """The ledger's raw statements and SQLAlchemy's DateTime columns share the tables: a
    timestamp must read back, and sort, the same whichever wrote it."""
    from sqlalchemy import DateTime
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    column = DateTime().dialect_impl(sqlite_dialect.dialect())
    written = column.bind_processor(sqlite_dialect.dialect())
    assert written is not None
    assert runners._sqlite_param(moment) == written(moment.astimezone(UTC).replace(tzinfo=None))


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        (datetime(2026, 12, 5, 23, 59, 59, 999999, tzinfo=UTC), "2026-12-05"),
        # Another zone counts in the UTC day and month: 01:30 at +03:00 is the day before.
        (datetime(2026, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=3))), "2026-02-28"),
    ],
)
def test_a_spend_counts_in_its_utc_day_and_month(moment: datetime, day: str) -> None:
    assert ledger.period(moment) == (day, day[:7])


# -- a call alone: its step at once, in the caller -------------------------------------------


async def test_a_step_alone_runs_at_once_on_sqlite_and_queues_on_postgresql(
    engine: AsyncEngine, journal: Journal
) -> None:
    """On SQLite a step nothing could share a commit with is committed before `submit`
    returns (no trip through the journal's task); PostgreSQL's statements are waits, so it
    queues there as any other."""
    key = await new_key(engine, 1000)
    hold = _hold(key, 10)
    future = journal.submit(lambda tx: ledger.reserve(tx, hold), statement="loose", alone=True)
    on_sqlite = isinstance(journal.runner, SqliteRunner)
    assert future.done() is on_sqlite
    assert await future is None
    assert await ledger_balance(engine, key.account_id) == 990


async def test_a_step_alone_never_passes_work_queued_before_it(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1000)
    hold = _hold(key, 10)
    queued = journal.submit(lambda tx: ledger.reserve(tx, hold))
    now = datetime.now(UTC)
    after = journal.submit(lambda tx: ledger.resolve(tx, hold.id, 4, now), alone=True)
    assert not after.done()  # behind the reservation it settles
    assert await queued is None
    resolution = await after
    assert resolution is not None and resolution.charged == 4
    assert await ledger_balance(engine, key.account_id) == 996


_ON_SQLITE = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


def _sqlite_file(db_url: str) -> str:
    return db_url.split("///", 1)[1]


@_ON_SQLITE
async def test_work_alone_that_waits_on_the_loop_runs_once_in_the_journal(
    engine: AsyncEngine, journal: Journal
) -> None:
    """What cannot finish at once is rolled back before it leaves the caller and runs in the
    journal: its statements count once."""
    key = await new_key(engine, 1000)
    now = datetime.now(UTC)

    async def two_topups(tx: ledger.Tx) -> int | None:
        await ledger.move(tx, key.account_id, 5, "first", now)
        await asyncio.sleep(0)
        return await ledger.move(tx, key.account_id, 7, "second", now)

    future = journal.submit(two_topups, alone=True)
    assert not future.done()
    assert await future == 1012
    assert await ledger_balance(engine, key.account_id) == 1012
    async with engine.connect() as conn:
        notes = await conn.scalars(
            select(ledger_table.c.note).where(ledger_table.c.note.in_(("first", "second")))
        )
        assert sorted(notes) == ["first", "second"]


@_ON_SQLITE
async def test_a_step_alone_that_fails_is_rolled_back_and_the_next_runs(
    engine: AsyncEngine, journal: Journal
) -> None:
    key = await new_key(engine, 1000)
    now = datetime.now(UTC)

    async def broken(tx: ledger.Tx) -> None:
        await ledger.move(tx, key.account_id, 5, "lost", now)
        await tx.exec("INSERT INTO no_such_table VALUES (1)", {})

    failed = journal.submit(broken, alone=True)
    assert failed.done()
    with pytest.raises(sqlite3.OperationalError):
        await failed
    assert await ledger_balance(engine, key.account_id) == 1000
    hold = _hold(key, 10)
    assert await journal.submit(lambda tx: ledger.reserve(tx, hold), alone=True) is None
    assert await ledger_balance(engine, key.account_id) == 990


@_ON_SQLITE
async def test_a_step_alone_waits_in_the_journal_for_a_lock_another_connection_holds(
    engine: AsyncEngine, journal: Journal, db_url: str
) -> None:
    key = await new_key(engine, 1000)
    other = sqlite3.connect(_sqlite_file(db_url), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        hold = _hold(key, 10)
        future = journal.submit(lambda tx: ledger.reserve(tx, hold), alone=True)
        assert not future.done()
        await asyncio.sleep(0.05)
        assert not future.done()
        other.execute("ROLLBACK")
        assert await asyncio.wait_for(future, 5) is None
    finally:
        other.close()
    assert await ledger_balance(engine, key.account_id) == 990


@_ON_SQLITE
async def test_the_sqlite_runner_binds_timestamps_in_that_text(
    engine: AsyncEngine, journal: Journal, db_url: str
) -> None:
    """The runner hands the driver its datetimes as they are: the driver's adapter must write
    them as SQLAlchemy would (UTC, six digits), whatever their zone."""
    key = await new_key(engine, 1000)
    hold = _hold(key, 10)
    hold.expires_at = datetime(2030, 1, 2, 1, 30, tzinfo=timezone(timedelta(hours=3)))
    assert await _reserve(journal, hold) is None
    raw = sqlite3.connect(_sqlite_file(db_url))
    try:
        created, expires = raw.execute(
            "SELECT created_at, expires_at FROM holds WHERE id = ?", (hold.id,)
        ).fetchone()
    finally:
        raw.close()
    assert created == hold.created_at.replace(tzinfo=None).isoformat(" ", "microseconds")
    assert expires == "2030-01-01 22:30:00.000000"
