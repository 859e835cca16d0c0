"""The meter's waiting room: calls an account's balance leaves uncovered run a few at a time;
the next waits its turn (first come, first served), and gives up with a 429 after wait_s."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.billing import meter as meter_module
from nanogate.billing import runners
from nanogate.billing.ledger import Record
from nanogate.billing.meter import Meter
from nanogate.billing.prices import Quote
from nanogate.billing.runners import Journal, open_runner
from nanogate.core.errors import InsufficientCredits, RateLimited, Unavailable
from nanogate.core.metrics import REGISTRY
from nanogate.db import holds, make_engine, run_migrations, usage_records
from nanogate.engine import usage
from nanogate.engine.usage import UsageRecord

from .conftest import ledger_balance, new_key

T = TypeVar("T")


def _meter(journal: Journal, wait_s: float) -> Meter:
    return Meter(journal, enabled=True, node="n", hold_ttl_s=60, uncovered_calls=1, wait_s=wait_s)


# Each call could cost 5,000 on an account of 1,000: none is covered.
BIG = Quote(certain=100, likely=200, worst=5_000)


async def test_an_uncovered_call_waits_for_the_one_before_it(
    engine: AsyncEngine, journal: Journal
) -> None:
    meter = _meter(journal, wait_s=10)
    key = await new_key(engine, 1_000)
    first = await meter.reserve("a", key, BIG)
    second = asyncio.create_task(meter.reserve("b", key, BIG))
    third = asyncio.create_task(meter.reserve("c", key, BIG))
    await asyncio.sleep(0.2)
    assert not second.done() and not third.done()
    await meter.settle(first, 150)
    held = await asyncio.wait_for(second, 2)
    assert held is not None and not third.done()  # one closing wakes one call
    await meter.settle(held, 150)
    assert await asyncio.wait_for(third, 2) is not None


async def test_a_call_that_waits_too_long_gets_429(engine: AsyncEngine, journal: Journal) -> None:
    meter = _meter(journal, wait_s=0.3)
    key = await new_key(engine, 1_000)
    await meter.reserve("a", key, BIG)
    with pytest.raises(RateLimited) as caught:
        await meter.reserve("b", key, BIG)
    assert caught.value.retry_after == 1
    assert "set maxOutputTokens" in caught.value.message


async def test_402_names_the_quote_and_the_balance(engine: AsyncEngine, journal: Journal) -> None:
    meter = _meter(journal, wait_s=0)
    key = await new_key(engine, 99_999)
    with pytest.raises(InsufficientCredits) as caught:
        await meter.reserve("a", key, Quote(certain=100_000, likely=101_000, worst=200_000))
    assert "costs at least 100,000 credits" in caught.value.message
    assert "has 99,999 available" in caught.value.message


# -- the database does not answer ----------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Another connection holds the SQLite write lock."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


async def _pending(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(select(func.count()).where(holds.c.state == "pending"))
    return int(count or 0)


async def test_a_settle_the_database_refuses_is_refunded_once_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runners, "SQLITE_LOCK_WAIT_S", 0.3)
    monkeypatch.setattr(meter_module, "RETRY_EVERY_S", 0.1)
    path = tmp_path / "nanogate.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(run_migrations, url)
    engine = make_engine(url)
    journal = Journal(open_runner(url, engine))
    journal.start()
    try:
        meter = _meter(journal, wait_s=0)
        key = await new_key(engine, 1_000)
        hold = await meter.reserve("a", key, Quote(certain=100, likely=200, worst=200))
        with _locked(path):
            with pytest.raises(Unavailable) as caught:
                await meter.settle(hold, 150)
            assert "You were not charged" in caught.value.message
            assert REGISTRY.get_sample_value("nanogate_hold_resolutions_pending") == 1
            # The caller's refund of the same hold does not wait for the lock again.
            await asyncio.wait_for(meter.refund(hold), 0.1)
            await asyncio.sleep(0.5)  # retries meanwhile fail
            assert await _pending(engine) == 1
        for _ in range(50):
            if await _pending(engine) == 0:
                break
            await asyncio.sleep(0.1)
        assert await _pending(engine) == 0
        assert await ledger_balance(engine, key.account_id) == 1_000
        assert REGISTRY.get_sample_value("nanogate_hold_resolutions_pending") == 0
        await meter.stop()
    finally:
        await journal.stop()
        await journal.runner.close()
        await engine.dispose()


async def test_a_settle_of_a_closed_hold_charges_nothing_and_leaves_the_record_to_its_caller(
    engine: AsyncEngine, journal: Journal
) -> None:
    meter = _meter(journal, wait_s=1)
    key = await new_key(engine, 1_000)
    hold = await meter.reserve("late", key, Quote(certain=100, likely=200, worst=200))
    assert hold is not None
    await meter.refund(hold)  # as recovery does once a hold has expired

    def record() -> Record:
        return usage.charged(
            UsageRecord("late", key.id, key.prefix, "gemini", "generateContent", "m", 200, 5)
        )

    assert await meter.settle(hold, 150, record=record()) is None
    async with engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(usage_records))
    assert count == 0, "the caller writes the record of a call that was not charged"
    assert await ledger_balance(engine, key.account_id) == 1_000
    # the same call with a live hold: charged, and its record written at the charge
    hold = await meter.reserve("live", key, Quote(certain=100, likely=200, worst=200))
    assert await meter.settle(hold, 150, record=record()) == 150
    async with engine.connect() as conn:
        costs = (await conn.execute(select(usage_records.c.cost))).scalars().all()
    assert costs == [150]
    assert await ledger_balance(engine, key.account_id) == 850


# -- a call alone ---------------------------------------------------------------------------


class _Counting:
    """The runner the journal would use, counting how each step ran: at once in its caller, or
    queued through the journal's task."""

    def __init__(self, runner: runners.Runner) -> None:
        self.runner = runner
        self.at_once = 0
        self.queued = 0

    def run_now(self, work: runners.Work[T]) -> tuple[T] | None:
        done = self.runner.run_now(work)
        self.at_once += done is not None
        return done

    async def run(self, work: runners.Work[T]) -> T:
        self.queued += 1
        return await self.runner.run(work)

    async def run_statement(self, work: runners.Work[T], *, durable: bool) -> T:
        self.queued += 1
        return await self.runner.run_statement(work, durable=durable)

    async def read(self, work: runners.Work[T]) -> T:
        return await self.runner.read(work)

    async def close(self) -> None:
        await self.runner.close()


SMALL = Quote(certain=10, likely=20, worst=50)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_a_call_alone_runs_its_steps_at_once_and_calls_together_queue(
    engine: AsyncEngine, db_url: str
) -> None:
    """With no other call in flight, nothing could share a step's commit: it runs in the
    caller. Calls in flight together queue, so that group commit shares their commits."""
    counting = _Counting(open_runner(db_url, engine))
    journal = Journal(counting)
    journal.start()
    meter = _meter(journal, wait_s=1)
    key = await new_key(engine, 1_000)
    try:
        alone = await meter.reserve("a", key, SMALL)
        await meter.settle(alone, 15)
        refunded = await meter.reserve("b", key, SMALL)
        await meter.refund(refunded)
        assert (counting.at_once, counting.queued) == (4, 0)
        first = await meter.reserve("c", key, SMALL)  # alone
        second = await meter.reserve("d", key, SMALL)  # beside the first: queued
        await meter.settle(first, 15)  # beside the second: queued
        await meter.settle(second, 15)  # alone again
        assert (counting.at_once, counting.queued) == (6, 2)
        assert await ledger_balance(engine, key.account_id) == 1_000 - 3 * 15
    finally:
        await journal.stop()
        await counting.close()
