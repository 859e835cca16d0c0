"""The usage recorder: buffered, batched, and never losing rows to a passing failure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.core.types import Usage
from nanogate.db import usage_records
from nanogate.engine.usage import UsageRecord, UsageRecorder

# --- tests ---


def _inserts(engine: AsyncEngine) -> list[int]:
    """One entry per INSERT into usage_records from now on: the number of rows it carried."""
    seen: list[int] = []

    def _on_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO USAGE_RECORDS"):
            seen.append(len(parameters) if many else 1)

    event.listen(engine.sync_engine, "before_cursor_execute", _on_execute)
    return seen


def _record(n: int, **overrides: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "request_id": f"req-{n}",
        "key_id": None,
        "key_prefix": "ng_00000000",
        "dialect": "gemini",
        "method": "generateContent",
        "model": "gemini-2.5-flash-image",
        "status": 200,
        "latency_ms": 12,
        "upstream": "demo",
        "cost": 39,
    }
    return UsageRecord(**(fields | overrides))


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(usage_records)) or 0)


async def test_record_never_touches_the_database(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine)
    seen: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    for n in range(10):
        recorder.record(_record(n))
    assert seen == [] and recorder.pending == 10


async def test_one_flush_is_one_insert(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine, max_batch=500)
    inserts = _inserts(engine)
    for n in range(120):
        recorder.record(_record(n))
    assert await recorder.flush() == 120
    assert inserts == [120]
    assert await _count(engine) == 120 and recorder.pending == 0


async def test_a_flush_splits_into_max_batch_inserts(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine, max_batch=50)
    inserts = _inserts(engine)
    for n in range(120):
        recorder.record(_record(n))
    assert await recorder.flush() == 120
    assert inserts == [50, 50, 20]


async def test_usage_and_columns_round_trip(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine)
    usage = Usage(
        input_text=5,
        input_image=258,
        output_text=7,
        output_image=1290,
        thoughts=3,
        total=1563,
        images=1,
    )
    rec = _record(
        1, error="x" * 2000, usage=usage
    )  # too long for the column: cut, not a failed batch
    recorder.record(rec)
    await recorder.flush()
    (row,) = await recorder.recent()
    assert row["request_id"] == "req-1" and row["upstream"] == "demo" and row["cost"] == 39
    assert (row["input_image_tokens"], row["output_image_tokens"], row["images"]) == (258, 1290, 1)
    assert row["total_tokens"] == 1563 and row["thoughts_tokens"] == 3
    assert row["error"] == "x" * 500
    assert row["created_at"] == rec.created_at and row["created_at"].tzinfo is UTC


async def test_error_messages_are_scrubbed_and_cut_to_the_column(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine)
    key = "ng_0123abcd_" + "k" * 43
    blob = "iVBORw0KGgo" * 10  # the start of a PNG, as base64
    message = f"Key {key} refused; image {blob} " + "word " * 100
    recorder.record(_record(1, status=402, error="RESOURCE_EXHAUSTED", error_message=message))
    recorder.record(_record(2))
    await recorder.flush()
    failed, ok = sorted(await recorder.recent(), key=lambda r: r["request_id"])
    assert failed["error"] == "RESOURCE_EXHAUSTED"
    stored = failed["error_message"]
    assert stored.startswith("Key [redacted-key] refused; image [data] word word")
    assert "ng_0123abcd" not in stored and "iVBOR" not in stored
    assert len(stored) == 300 and stored.endswith("…")
    assert ok["error"] is None and ok["error_message"] is None


async def test_background_flusher_writes_on_its_interval(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine, flush_seconds=0.05)
    await recorder.start()
    try:
        for n in range(5):
            recorder.record(_record(n))
        # `pending` drops when a batch is taken, before its insert commits: poll the table.
        for _ in range(500):
            if await _count(engine) == 5:
                break
            await asyncio.sleep(0.01)
        assert await _count(engine) == 5 and recorder.pending == 0
    finally:
        await recorder.stop()


async def test_a_full_batch_flushes_before_the_interval(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine, flush_seconds=3600, max_batch=10)
    await recorder.start()
    try:
        for n in range(10):
            recorder.record(_record(n))
        # Long before the hour-long interval: the full batch woke the flusher. (Not `pending
        # == 0`: the batch leaves the buffer before its insert commits.)
        for _ in range(500):
            if await _count(engine) == 10:
                break
            await asyncio.sleep(0.01)
        assert await _count(engine) == 10
    finally:
        await recorder.stop()


async def test_stop_flushes_what_remains(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine, flush_seconds=3600)
    await recorder.start()
    for n in range(7):
        recorder.record(_record(n))
    await recorder.stop()
    assert await _count(engine) == 7 and recorder.pending == 0


async def test_a_failed_insert_keeps_the_records(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine)
    for n in range(5):
        recorder.record(_record(n))

    def _fail(*args: Any) -> None:
        raise ConnectionError("database went away")

    event.listen(engine.sync_engine, "before_cursor_execute", _fail)
    assert await recorder.flush() == 0
    assert recorder.pending == 5
    event.remove(engine.sync_engine, "before_cursor_execute", _fail)
    recorder.record(_record(5))
    assert await recorder.flush() == 6
    rows = await recorder.recent(limit=10)
    assert sorted(r["request_id"] for r in rows) == [f"req-{n}" for n in range(6)]


async def test_a_down_database_is_not_retried_per_record(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine, flush_seconds=3600, max_batch=5)
    attempts: list[str] = []

    def _fail(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        attempts.append(statement)
        raise ConnectionError("database went away")

    event.listen(engine.sync_engine, "before_cursor_execute", _fail)
    await recorder.start()
    for n in range(5):
        recorder.record(_record(n))
    await _wait_for(lambda: len(attempts) == 1)
    for n in range(5, 25):
        recorder.record(_record(n))
    await asyncio.sleep(0.05)
    assert len(attempts) == 1 and recorder.pending == 25
    event.remove(engine.sync_engine, "before_cursor_execute", _fail)
    await recorder.stop()
    assert await _count(engine) == 25


async def test_a_bad_row_is_dropped_alone(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine)
    recorder.record(_record(1))
    recorder.record(_record(2, key_id=999_999))  # no such key: the foreign key refuses it
    recorder.record(_record(3))
    assert await recorder.flush() == 2
    assert recorder.rejected == 1 and recorder.pending == 0
    assert sorted(r["request_id"] for r in await recorder.recent()) == ["req-1", "req-3"]


async def test_buffer_is_bounded_and_drops_the_oldest(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine, max_buffer=3)
    for n in range(5):
        recorder.record(_record(n))
    assert recorder.pending == 3 and recorder.dropped == 2
    await recorder.flush()
    assert sorted(r["request_id"] for r in await recorder.recent()) == ["req-2", "req-3", "req-4"]


async def test_recent_is_newest_first_and_filters_by_key(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine)
    start = datetime.now(UTC)
    for n in range(6):
        prefix = "ng_aaaaaaaa" if n % 2 else "ng_bbbbbbbb"
        recorder.record(_record(n, key_prefix=prefix, created_at=start + timedelta(seconds=n)))
    await recorder.flush()
    assert [r["request_id"] for r in await recorder.recent(limit=3)] == ["req-5", "req-4", "req-3"]
    mine = await recorder.recent(key_prefix="ng_aaaaaaaa")
    assert [r["request_id"] for r in mine] == ["req-5", "req-3", "req-1"]


async def _wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")
