"""The task queue's and the Idempotency-Key store's SQL, on SQLite and PostgreSQL: create and read,
claims and leases, finishing with the credit hold, callbacks, and stored answers."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.access.keys import KeyRecord
from nanogate.billing.keys import KeyStore
from nanogate.billing.ledger import Hold, Refusal, Tx, aware
from nanogate.billing.runners import Runner, open_runner
from nanogate.core.task_records import StoredFile, TaskRecord
from nanogate.db import holds, idempotency_keys, results, tasks
from nanogate.db import ledger as ledger_table
from nanogate.engine import replay as idempotency
from nanogate.tasks import queue

from .conftest import ledger_balance, separate_runners

T = TypeVar("T")

T0 = datetime(2026, 3, 1, 12, 0, 0, 123_456, tzinfo=UTC)
LEASE = timedelta(minutes=5)
DEADLINE = T0 + timedelta(hours=1)


@pytest.fixture
async def runner(db_url: str, engine: AsyncEngine) -> AsyncIterator[Runner]:
    runner = open_runner(db_url, engine)
    yield runner
    await runner.close()


@pytest.fixture
async def key(engine: AsyncEngine) -> KeyRecord:
    _, record = await KeyStore(engine, 0).create("tasks", credits=1000)
    return record


def _run(runner: Runner, work: Callable[[Tx], Awaitable[T]]) -> Awaitable[T]:
    return runner.run(work)


def _task(
    key: KeyRecord,
    *,
    created: datetime = T0,
    callback: str | None = None,
    task_id: str | None = None,
) -> TaskRecord:
    return TaskRecord(
        id=task_id or f"task_{secrets.token_hex(8)}",
        request_id=f"req_{secrets.token_hex(8)}",
        form="recordinfo",
        key_id=key.id,
        account_id=key.account_id,
        model="google/nano-banana",
        param={"model": "google/nano-banana", "input": {"prompt": "a cat"}},
        state="pending",
        created_at=created,
        callback_url=callback,
    )


def _hold(key: KeyRecord, amount: int) -> Hold:
    return Hold(
        id=f"hold_{secrets.token_hex(8)}",
        request_id="req",
        account_id=key.account_id,
        key_id=key.id,
        amount=amount,
        capped=False,
        created_at=T0,
        expires_at=T0 + timedelta(hours=2),
        node="n1",
    )


async def _create(
    runner: Runner, record: TaskRecord, hold: Hold | None = None, **kw: Any
) -> Refusal | None:
    return await _run(runner, lambda tx: queue.create(tx, record, hold, DEADLINE, **kw))


async def _get(runner: Runner, task_id: str) -> TaskRecord | None:
    return await _run(runner, lambda tx: queue.get(tx, task_id))


async def _claim(
    runner: Runner,
    owner: str,
    token: str,
    now: datetime = T0,
    limit: int = 10,
) -> list[tuple[TaskRecord, datetime]]:
    return await _run(runner, lambda tx: queue.claim(tx, owner, token, now, now + LEASE, limit))


async def _finish(
    runner: Runner, task_id: str, token: str, now: datetime = T0, **kw: Any
) -> int | None:
    """What was charged, or None when the task was not ours to finish."""
    resolution = await _run(runner, lambda tx: queue.finish(tx, task_id, token, now, **kw))
    return None if resolution is None else resolution.charged


async def _count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(table))
    return int(count or 0)


async def _lease(engine: AsyncEngine, task_id: str) -> tuple[Any, ...]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(tasks.c.state, tasks.c.lease_owner, tasks.c.lease_token).where(
                    tasks.c.id == task_id
                )
            )
        ).one()
    return tuple(row)


def _ids(claimed: list[tuple[TaskRecord, datetime]]) -> list[str]:
    return [record.id for record, _ in claimed]


# -- create and get ----------------------------------------------------------------------------


async def test_create_then_get_without_a_hold(runner: Runner, key: KeyRecord) -> None:
    record = _task(key, callback="https://example.com/hook")
    assert await _create(runner, record) is None
    found = await _get(runner, record.id)
    assert found is not None
    assert found.id == record.id
    assert found.request_id == record.request_id
    assert found.form == "recordinfo"
    assert (found.key_id, found.account_id) == (key.id, key.account_id)
    assert found.model == "google/nano-banana"
    assert found.param == record.param
    assert found.state == "pending"
    assert found.hold_id is None
    assert found.attempts == 0
    assert found.files == () and found.text is None
    assert found.error_code is None and found.error_message is None
    assert found.cost == 0
    assert found.created_at == T0
    assert found.started_at is None and found.completed_at is None
    assert found.callback_url == "https://example.com/hook"
    assert found.callback_state == "none"
    assert not found.final
    assert await _get(runner, "task_missing") is None


async def test_create_with_a_hold_reserves_the_credits(
    runner: Runner, engine: AsyncEngine, key: KeyRecord
) -> None:
    record = _task(key)
    hold = _hold(key, 600)
    assert await _create(runner, record, hold) is None
    found = await _get(runner, record.id)
    assert found is not None and found.hold_id == hold.id
    assert await ledger_balance(engine, key.account_id) == 400


async def test_a_hold_the_balance_cannot_cover_writes_no_task(
    runner: Runner, engine: AsyncEngine, key: KeyRecord
) -> None:
    record = _task(key)
    refusal = await _create(runner, record, _hold(key, 1001))
    assert refusal == Refusal("balance", 1000)
    assert await _get(runner, record.id) is None
    assert await _count(engine, tasks) == 0
    assert await _count(engine, holds) == 0
    assert await ledger_balance(engine, key.account_id) == 1000


async def test_create_can_remember_an_idempotency_key(runner: Runner, key: KeyRecord) -> None:
    record = _task(key)
    expires = T0 + timedelta(hours=24)
    await _create(runner, record, idempotency=("idem-1", "fp", expires))
    found = await _run(runner, lambda tx: idempotency.remembered(tx, key.id, "idem-1", T0))
    assert found == ("fp", record.id)


# -- claim, renew, release ---------------------------------------------------------------------


async def test_claim_takes_due_pending_tasks(runner: Runner, key: KeyRecord) -> None:
    record = _task(key)
    await _create(runner, record)
    now = T0 + timedelta(seconds=1)
    claimed = await _claim(runner, "w1", "tok1", now)
    assert _ids(claimed) == [record.id]
    found, deadline = claimed[0]
    assert deadline == DEADLINE
    assert found.state == "running"
    assert found.attempts == 1
    assert found.started_at == now
    assert found.created_at == T0


async def test_a_claimed_task_is_not_claimed_again_while_leased(
    runner: Runner, key: KeyRecord
) -> None:
    record = _task(key)
    await _create(runner, record)
    assert len(await _claim(runner, "w1", "tok1", T0)) == 1
    assert await _claim(runner, "w2", "tok2", T0 + timedelta(seconds=1)) == []
    assert await _claim(runner, "w2", "tok2", T0 + LEASE) == []  # lease_until is not past yet


async def test_an_expired_lease_is_taken_over(
    runner: Runner, engine: AsyncEngine, key: KeyRecord
) -> None:
    record = _task(key)
    await _create(runner, record)
    await _claim(runner, "w1", "tok1", T0)
    later = T0 + LEASE + timedelta(microseconds=1)
    claimed = await _claim(runner, "w2", "tok2", later)
    assert _ids(claimed) == [record.id]
    assert claimed[0][0].attempts == 2
    assert claimed[0][0].started_at == T0  # the first start is kept
    assert await _lease(engine, record.id) == ("running", "w2", "tok2")


async def test_future_run_after_is_not_claimed(runner: Runner, key: KeyRecord) -> None:
    record = _task(key, created=T0 + timedelta(minutes=1))  # run_after = created_at
    await _create(runner, record)
    assert await _claim(runner, "w1", "tok1", T0) == []
    assert _ids(await _claim(runner, "w1", "tok1", T0 + timedelta(minutes=1))) == [record.id]


async def test_claim_respects_the_limit_oldest_first(runner: Runner, key: KeyRecord) -> None:
    records = [_task(key, created=T0 - timedelta(seconds=10 - i)) for i in range(5)]
    for record in reversed(records):
        await _create(runner, record)
    first = await _claim(runner, "w1", "tok1", T0, limit=2)
    assert sorted(_ids(first)) == sorted(r.id for r in records[:2])
    second = await _claim(runner, "w1", "tok2", T0, limit=2)
    assert sorted(_ids(second)) == sorted(r.id for r in records[2:4])
    third = await _claim(runner, "w1", "tok3", T0, limit=2)
    assert _ids(third) == [records[4].id]
    assert await _claim(runner, "w1", "tok4", T0, limit=2) == []


async def test_renew_only_for_the_lease_holder(runner: Runner, key: KeyRecord) -> None:
    record = _task(key)
    await _create(runner, record)
    await _claim(runner, "w1", "tok1", T0)
    until = T0 + 2 * LEASE

    async def renew(token: str) -> bool:
        return await _run(runner, lambda tx: queue.renew(tx, record.id, token, until))

    assert await renew("tok1") is True
    # Renewed until T0 + 2 * LEASE: not yet claimable at T0 + LEASE + 1s.
    assert await _claim(runner, "w2", "tok2", T0 + LEASE + timedelta(seconds=1)) == []
    assert len(await _claim(runner, "w2", "tok2", until + timedelta(seconds=1))) == 1
    assert await renew("tok1") is False
    assert await renew("tok2") is True


async def test_release_owner_requeues_only_that_owners_tasks(
    runner: Runner, engine: AsyncEngine, key: KeyRecord
) -> None:
    mine = [_task(key), _task(key)]
    theirs = _task(key)
    for record in mine:
        await _create(runner, record)
    await _claim(runner, "w1", "tok1", T0)
    await _create(runner, theirs)
    await _claim(runner, "w2", "tok2", T0)
    later = T0 + timedelta(seconds=5)
    released = await _run(runner, lambda tx: queue.release_owner(tx, "w1", later))
    assert released == 2
    for record in mine:
        assert await _lease(engine, record.id) == ("pending", None, None)
    assert await _lease(engine, theirs.id) == ("running", "w2", "tok2")
    again = await _claim(runner, "w3", "tok3", later)
    assert sorted(_ids(again)) == sorted(r.id for r in mine)
    assert all(record.attempts == 2 for record, _ in again)


async def test_retry_later_requeues_with_run_after(
    runner: Runner, engine: AsyncEngine, key: KeyRecord
) -> None:
    record = _task(key)
    await _create(runner, record)
    await _claim(runner, "w1", "tok1", T0)
    after = T0 + timedelta(seconds=30)

    async def retry(token: str) -> bool:
        return await _run(runner, lambda tx: queue.retry_later(tx, record.id, token, after))

    assert await retry("wrong") is False
    assert await _lease(engine, record.id) == ("running", "w1", "tok1")
    assert await retry("tok1") is True
    assert await _lease(engine, record.id) == ("pending", None, None)
    assert await retry("tok1") is False  # no longer running
    assert await _claim(runner, "w1", "tok2", after - timedelta(seconds=1)) == []
    claimed = await _claim(runner, "w1", "tok2", after)
    assert _ids(claimed) == [record.id] and claimed[0][0].attempts == 2


async def test_hand_back_requeues_at_once_and_uncounts_the_attempt(
    runner: Runner, engine: AsyncEngine, key: KeyRecord
) -> None:
    record = _task(key)
    await _create(runner, record)
    await _claim(runner, "w1", "tok1", T0)
    later = T0 + timedelta(seconds=5)

    async def hand_back(token: str) -> bool:
        return await _run(runner, lambda tx: queue.hand_back(tx, record.id, token, later))

    assert await hand_back("wrong") is False  # the lease moved on: its holder carries on
    assert await _lease(engine, record.id) == ("running", "w1", "tok1")
    assert await hand_back("tok1") is True
    assert await _lease(engine, record.id) == ("pending", None, None)
    claimed = await _claim(runner, "w2", "tok2", later)
    # Another worker takes it at once, as its first attempt: the stopped run does not count.
    assert _ids(claimed) == [record.id] and claimed[0][0].attempts == 1


# -- finish ------------------------------------------------------------------------------------


async def test_finish_by_a_stale_token_changes_nothing(
    runner: Runner, engine: AsyncEngine, key: KeyRecord
) -> None:
    record = _task(key)
    hold = _hold(key, 600)
    await _create(runner, record, hold)
    await _claim(runner, "w1", "tok1", T0)
    await _claim(runner, "w2", "tok2", T0 + LEASE + timedelta(seconds=1))  # takeover
    stale = await _finish(runner, record.id, "tok1", hold_id=hold.id, cost=100)
    assert stale is None
    found = await _get(runner, record.id)
    assert found is not None and found.state == "running" and found.cost == 0
    assert await _lease(engine, record.id) == ("running", "w2", "tok2")
    async with engine.connect() as conn:
        state = await conn.scalar(select(holds.c.state).where(holds.c.id == hold.id))
    assert state == "pending"
    assert await ledger_balance(engine, key.account_id) == 400


async def test_finish_succeeded_settles_the_hold_at_cost(
    runner: Runner, engine: AsyncEngine, key: KeyRecord
) -> None:
    record = _task(key)
    hold = _hold(key, 600)
    await _create(runner, record, hold)
    await _claim(runner, "w1", "tok1", T0)
    done = T0 + timedelta(seconds=12)
    files = [StoredFile("0.png", "image/png"), StoredFile("1.jpeg", "image/jpeg")]
    charged = await _finish(
        runner, record.id, "tok1", done, hold_id=hold.id, cost=250, files=files, text="meow"
    )
    assert charged == 250
    found = await _get(runner, record.id)
    assert found is not None
    assert found.state == "succeeded" and found.final
    assert found.files == tuple(files)
    assert found.text == "meow"
    assert found.cost == 250
    assert found.completed_at == done
    assert found.error_code is None and found.error_message is None
    assert found.callback_state == "none"  # no callback_url
    # The lease is gone; lease_owner stays, naming the worker that finished the task.
    assert await _lease(engine, record.id) == ("succeeded", "w1", None)
    # ... and a restart of that worker does not requeue a finished task.
    assert await _run(runner, lambda tx: queue.release_owner(tx, "w1", done)) == 0
    assert await ledger_balance(engine, key.account_id) == 750  # 600 reserved, 350 back
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(ledger_table.c.kind, ledger_table.c.amount, ledger_table.c.hold_id)
                .where(ledger_table.c.account_id == key.account_id)
                .order_by(ledger_table.c.id)
            )
        ).all()
        hold_row = (
            await conn.execute(select(holds.c.state, holds.c.cost).where(holds.c.id == hold.id))
        ).one()
    assert [tuple(r) for r in rows] == [
        ("topup", 1000, None),
        ("reserve", -600, hold.id),
        ("settle", 350, hold.id),
    ]
    assert tuple(hold_row) == ("settled", 250)
    # A second finish (even by the same token) does nothing.
    assert await _finish(runner, record.id, "tok1", done, hold_id=hold.id, cost=250) is None
    assert await ledger_balance(engine, key.account_id) == 750


async def test_finish_failed_refunds_the_hold(
    runner: Runner, engine: AsyncEngine, key: KeyRecord
) -> None:
    record = _task(key, callback="https://example.com/hook")
    hold = _hold(key, 600)
    await _create(runner, record, hold)
    await _claim(runner, "w1", "tok1", T0)
    charged = await _finish(
        runner, record.id, "tok1", hold_id=hold.id, cost=None, error=(500, "x" * 600)
    )
    assert charged == 0
    found = await _get(runner, record.id)
    assert found is not None
    assert found.state == "failed"
    assert found.error_code == 500
    assert found.error_message == "x" * 500
    assert found.files == () and found.text is None
    assert found.cost == 0
    assert found.callback_state == "pending"
    assert await ledger_balance(engine, key.account_id) == 1000
    async with engine.connect() as conn:
        kinds = (
            await conn.execute(select(ledger_table.c.kind).order_by(ledger_table.c.id))
        ).scalars()
        assert list(kinds) == ["topup", "reserve", "refund"]
        assert await conn.scalar(select(holds.c.state)) == "refunded"
    assert await _finish(runner, record.id, "tok1", hold_id=hold.id, cost=None) is None


async def test_finish_without_a_hold_records_the_cost(runner: Runner, key: KeyRecord) -> None:
    record = _task(key, callback="https://example.com/hook")
    await _create(runner, record)
    await _claim(runner, "w1", "tok1", T0)
    assert await _finish(runner, record.id, "tok1", hold_id=None, cost=42) == 42
    found = await _get(runner, record.id)
    assert found is not None and found.cost == 42 and found.state == "succeeded"
    assert found.callback_state == "pending"


async def test_finish_of_a_pending_task_does_nothing(runner: Runner, key: KeyRecord) -> None:
    record = _task(key)
    await _create(runner, record)
    assert await _finish(runner, record.id, "tok1", hold_id=None, cost=1) is None
    found = await _get(runner, record.id)
    assert found is not None and found.state == "pending"


# -- concurrency -------------------------------------------------------------------------------


async def test_concurrent_claims_take_every_task_once(
    db_url: str, engine: AsyncEngine, runner: Runner, key: KeyRecord
) -> None:
    records = [_task(key) for _ in range(50)]
    for record in records:
        await _create(runner, record)
    workers = separate_runners(db_url, engine, 8)
    start = asyncio.Event()

    async def work(index: int, worker: Runner) -> list[str]:
        await start.wait()
        mine: list[str] = []
        round_ = 0
        while True:
            round_ += 1
            claimed = await _claim(worker, f"w{index}", f"tok{index}-{round_}", T0, limit=3)
            if not claimed:
                return mine
            mine.extend(_ids(claimed))
            await asyncio.sleep(0)

    jobs = [asyncio.create_task(work(i, w)) for i, w in enumerate(workers)]
    start.set()
    try:
        claimed = await asyncio.gather(*jobs)
    finally:
        for worker in workers:
            await worker.close()
    everything = [task_id for mine in claimed for task_id in mine]
    assert len(everything) == 50, "a task was claimed twice or not at all"
    assert sorted(everything) == sorted(r.id for r in records)
    assert await _claim(runner, "late", "tok-late", T0) == []
    async with engine.connect() as conn:
        attempts = (await conn.execute(select(tasks.c.attempts))).scalars().all()
    assert attempts == [1] * 50


# -- callbacks ---------------------------------------------------------------------------------


async def _finished_with_callback(runner: Runner, key: KeyRecord) -> TaskRecord:
    record = _task(key, callback="https://example.com/hook")
    await _create(runner, record)
    await _claim(runner, "w1", f"tok-{record.id}", T0)
    await _finish(runner, record.id, f"tok-{record.id}", T0, hold_id=None, cost=0)
    return record


async def _claim_callbacks(
    runner: Runner, now: datetime, lease: timedelta = timedelta(seconds=30)
) -> list[tuple[TaskRecord, int]]:
    return await _run(runner, lambda tx: queue.claim_callbacks(tx, now, now + lease, 10))


async def _attempted(
    runner: Runner,
    task_id: str,
    attempt: int,
    *,
    status: int | None,
    error: str | None,
    state: str,
    next_at: datetime | None,
) -> None:
    await _run(
        runner,
        lambda tx: queue.callback_attempted(
            tx,
            task_id,
            attempt,
            status=status,
            error=error,
            duration_ms=attempt * 10,
            state=state,
            next_at=next_at,
        ),
    )


async def test_callbacks_only_for_tasks_with_a_callback_url(runner: Runner, key: KeyRecord) -> None:
    plain = _task(key)
    await _create(runner, plain)
    await _claim(runner, "w1", "tok1", T0)
    await _finish(runner, plain.id, "tok1", hold_id=None, cost=0)
    found = await _get(runner, plain.id)
    assert found is not None and found.callback_event_id is None
    unfinished = _task(key, callback="https://example.com/hook")
    await _create(runner, unfinished)
    assert await _claim_callbacks(runner, T0 + timedelta(seconds=1)) == []


async def test_callback_retry_then_delivered(runner: Runner, key: KeyRecord) -> None:
    record = await _finished_with_callback(runner, key)
    now = T0 + timedelta(seconds=1)
    due = await _claim_callbacks(runner, now)
    assert [(r.id, attempt) for r, attempt in due] == [(record.id, 1)]
    assert due[0][0].state == "succeeded" and due[0][0].callback_state == "pending"
    event_id = due[0][0].callback_event_id
    assert event_id is not None and event_id.startswith("evt_") and "." not in event_id
    # Leased for one attempt: nobody else takes it meanwhile.
    assert await _claim_callbacks(runner, now + timedelta(seconds=1)) == []
    # Recorded as started before anything is sent: in flight, no outcome yet.
    rows = await _run(runner, lambda tx: queue.deliveries(tx, record.id))
    assert [tuple(row[:4]) for row in rows] == [(1, None, None, None)]

    retry_at = now + timedelta(seconds=10)
    await _attempted(
        runner, record.id, 1, status=500, error="boom", state="pending", next_at=retry_at
    )
    found = await _get(runner, record.id)
    assert found is not None and found.callback_state == "pending"
    assert await _claim_callbacks(runner, retry_at - timedelta(seconds=1)) == []
    due = await _claim_callbacks(runner, retry_at)
    assert [(r.id, attempt) for r, attempt in due] == [(record.id, 2)]
    assert due[0][0].callback_event_id == event_id  # one event, however many attempts

    await _attempted(runner, record.id, 2, status=200, error=None, state="delivered", next_at=None)
    found = await _get(runner, record.id)
    assert found is not None and found.callback_state == "delivered"
    assert await _claim_callbacks(runner, retry_at + timedelta(hours=1)) == []

    rows = await _run(runner, lambda tx: queue.deliveries(tx, record.id))
    assert [tuple(row[:4]) for row in rows] == [(1, 500, "boom", 10), (2, 200, None, 20)]
    assert [aware(row[4]) for row in rows] == [now, retry_at]


async def test_callback_given_up(runner: Runner, key: KeyRecord) -> None:
    record = await _finished_with_callback(runner, key)
    now = T0 + timedelta(seconds=1)
    assert len(await _claim_callbacks(runner, now)) == 1
    await _attempted(
        runner, record.id, 1, status=None, error="e" * 400, state="failed", next_at=None
    )
    found = await _get(runner, record.id)
    assert found is not None and found.callback_state == "failed"
    assert await _claim_callbacks(runner, now + timedelta(days=1)) == []
    rows = await _run(runner, lambda tx: queue.deliveries(tx, record.id))
    assert [tuple(row[:4]) for row in rows] == [(1, None, "e" * 300, 10)]


async def test_an_abandoned_attempt_counts_and_its_lease_expires(
    runner: Runner, key: KeyRecord
) -> None:
    record = await _finished_with_callback(runner, key)
    now = T0 + timedelta(seconds=1)
    ((first, _),) = await _claim_callbacks(runner, now, timedelta(seconds=30))
    assert await _claim_callbacks(runner, now + timedelta(seconds=29)) == []
    # Its sender died mid-attempt (no outcome was written): the next attempt is number 2, with
    # the same event id, and the lost one says what became of it.
    due = await _claim_callbacks(runner, now + timedelta(seconds=31))
    assert [(r.id, attempt) for r, attempt in due] == [(record.id, 2)]
    assert due[0][0].callback_event_id == first.callback_event_id
    rows = await _run(runner, lambda tx: queue.deliveries(tx, record.id))
    assert [tuple(row[:4]) for row in rows] == [(1, None, queue.LOST, None), (2, None, None, None)]


async def test_a_superseded_attempt_only_completes_its_own_record(
    runner: Runner, key: KeyRecord
) -> None:
    record = await _finished_with_callback(runner, key)
    now = T0 + timedelta(seconds=1)
    await _claim_callbacks(runner, now)
    await _claim_callbacks(runner, now + timedelta(minutes=5))  # attempt 1 outlived its lease
    # Attempt 1 ends late, refused: attempt 2, in flight, still decides the callback's state.
    await _attempted(runner, record.id, 1, status=500, error=None, state="failed", next_at=None)
    found = await _get(runner, record.id)
    assert found is not None and found.callback_state == "pending"
    await _attempted(runner, record.id, 2, status=204, error=None, state="delivered", next_at=None)
    found = await _get(runner, record.id)
    assert found is not None and found.callback_state == "delivered"
    rows = await _run(runner, lambda tx: queue.deliveries(tx, record.id))
    assert [tuple(row[:2]) for row in rows] == [(1, 500), (2, 204)]


# -- idempotency -------------------------------------------------------------------------------


async def test_remember_and_remembered(runner: Runner, engine: AsyncEngine, key: KeyRecord) -> None:
    expires = T0 + timedelta(hours=24)

    async def remember(tx: Tx) -> None:
        await idempotency.remember(tx, key.id, "idem", "fp1", expires, target="t1", now=T0)

    await _run(runner, remember)

    async def remembered(now: datetime, idem: str = "idem") -> tuple[str, str] | None:
        return await _run(runner, lambda tx: idempotency.remembered(tx, key.id, idem, now))

    assert await remembered(T0) == ("fp1", "t1")
    assert await remembered(expires - timedelta(microseconds=1)) == ("fp1", "t1")
    assert await remembered(T0, "other") is None
    assert await _count(engine, idempotency_keys) == 1
    assert await remembered(expires) is None
    assert await _count(engine, idempotency_keys) == 0  # the expired key was dropped
    # ... so the same key can be remembered again.
    await _run(runner, remember)
    assert await remembered(T0) == ("fp1", "t1")


async def test_idempotency_keys_are_per_api_key(
    runner: Runner, engine: AsyncEngine, key: KeyRecord
) -> None:
    _, other = await KeyStore(engine, 0).create("other")
    expires = T0 + timedelta(hours=1)
    await _run(
        runner,
        lambda tx: idempotency.remember(tx, key.id, "idem", "fp", expires, target="t", now=T0),
    )
    found = await _run(runner, lambda tx: idempotency.remembered(tx, other.id, "idem", T0))
    assert found is None


async def test_forget_only_the_matching_target(
    runner: Runner, engine: AsyncEngine, key: KeyRecord
) -> None:
    expires = T0 + timedelta(hours=1)
    await _run(
        runner,
        lambda tx: idempotency.remember(tx, key.id, "idem", "fp", expires, target="t1", now=T0),
    )
    await _run(runner, lambda tx: idempotency.forget(tx, key.id, "idem", "t2"))
    assert await _count(engine, idempotency_keys) == 1
    await _run(runner, lambda tx: idempotency.forget(tx, key.id, "idem", "t1"))
    assert await _count(engine, idempotency_keys) == 0


async def test_keep_result_upserts_and_expires(runner: Runner, key: KeyRecord) -> None:
    async def keep(status: int, name: str, expires: datetime) -> None:
        await _run(
            runner,
            lambda tx: idempotency.keep_result(
                tx,
                key.id,
                "req-1",
                status=status,
                content_type="application/json",
                object_name=name,
                now=T0,
                expires=expires,
            ),
        )

    async def kept(now: datetime, request_id: str = "req-1") -> tuple[int, str, str] | None:
        return await _run(runner, lambda tx: idempotency.kept_result(tx, key.id, request_id, now))

    await keep(500, "results/first", T0 + timedelta(hours=1))
    assert await kept(T0) == (500, "application/json", "results/first")
    later = T0 + timedelta(hours=3)
    await keep(200, "results/second", later)  # the same request id again: the latest wins
    assert await kept(T0 + timedelta(hours=2)) == (200, "application/json", "results/second")
    assert await kept(later) is None
    assert await kept(T0, "req-other") is None


async def test_sweep_drops_only_expired_rows(
    runner: Runner, engine: AsyncEngine, key: KeyRecord
) -> None:
    now = T0 + timedelta(hours=1)

    async def seed(tx: Tx) -> None:
        for name, expires in (("old", now), ("live", now + timedelta(seconds=1))):
            await idempotency.remember(tx, key.id, name, "fp", expires, target=name, now=T0)
            await idempotency.keep_result(
                tx,
                key.id,
                name,
                status=200,
                content_type="image/png",
                object_name=name,
                now=T0,
                expires=expires,
            )

    await _run(runner, seed)
    assert await _run(runner, lambda tx: idempotency.sweep(tx, now)) == 2
    async with engine.connect() as conn:
        idem_left = (await conn.execute(select(idempotency_keys.c.idem_key))).scalars().all()
        results_left = (await conn.execute(select(results.c.request_id))).scalars().all()
    assert idem_left == ["live"] and results_left == ["live"]
    assert await _run(runner, lambda tx: idempotency.sweep(tx, now)) == 0
