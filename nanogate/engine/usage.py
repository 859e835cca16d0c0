"""The usage recorder: one row per request, written in batches off the request path.

`record()` only appends to an in-memory buffer. A background task drains it every
`flush_seconds` (sooner once `max_batch` rows wait) with one multi-row INSERT per batch. A
buffered row is lost in a crash, so the record of a settled charge is not buffered: `write` puts
it in the charge's own transaction (Gateway.generate_many, a stream's settle, and a task's
Worker._commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import String, insert, select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.billing.ledger import Record, Tx
from nanogate.core.redact import scrub
from nanogate.core.types import Usage
from nanogate.db.tables import usage_records, utcnow

logger = logging.getLogger(__name__)

MAX_BUFFER = 100_000

# Every column of a usage record, in table order (for CSV and JSON output).
RECORD_COLUMNS = tuple(column.name for column in usage_records.columns)


@dataclass(slots=True)
class UsageRecord:
    """What one request cost and how it went. Never prompt text or image bytes."""

    request_id: str
    key_id: int | None
    key_prefix: str
    dialect: str
    method: str
    model: str
    status: int
    latency_ms: int
    upstream: str | None = None
    usage: Usage = field(default_factory=Usage)  # the one token-count shape (core.types)
    cost: int = 0
    account_id: int | None = None
    error: str | None = None  # the status name, e.g. RESOURCE_EXHAUSTED
    error_message: str | None = None  # what the client was told (scrubbed when written)
    created_at: datetime = field(default_factory=utcnow)
    requested_model: str | None = None  # the client's name, when the call ran under another


# The columns the record's Usage is stored in (the cached count is not kept).
_USAGE_COLUMNS = {
    "input_text_tokens": "input_text",
    "input_image_tokens": "input_image",
    "output_text_tokens": "output_text",
    "output_image_tokens": "output_image",
    "thoughts_tokens": "thoughts",
    "total_tokens": "total",
    "images": "images",
}
_FIELDS = (*(f.name for f in fields(UsageRecord) if f.name != "usage"), *_USAGE_COLUMNS)
# Column widths, so an oversized value is cut here rather than failing a whole batch on
# PostgreSQL (SQLite would store it whole).
_WIDTHS = {
    column.name: column.type.length
    for column in usage_records.columns
    if isinstance(column.type, String) and column.type.length is not None
}


def _row(rec: UsageRecord) -> dict[str, Any]:
    row = {name: getattr(rec, name) for name in _FIELDS if name not in _USAGE_COLUMNS}
    row.update({column: getattr(rec.usage, name) for column, name in _USAGE_COLUMNS.items()})
    if rec.error_message is not None:
        # Messages may quote what a client or an upstream sent: never a key or an image here.
        row["error_message"] = scrub(rec.error_message, limit=_WIDTHS["error_message"])
    for name, width in _WIDTHS.items():
        value = row[name]
        if isinstance(value, str) and len(value) > width:
            row[name] = value[:width]
    return row


_INSERT = (
    f"INSERT INTO usage_records ({', '.join(_FIELDS)}) "
    f"VALUES ({', '.join(':' + name for name in _FIELDS)})"
)


async def write(tx: Tx, rec: UsageRecord) -> None:
    """Write one record inside `tx`: a settled call's, in the transaction of its charge, so no
    crash can leave a charge without its record."""
    await tx.exec(_INSERT, _row(rec))


def charged(rec: UsageRecord) -> Record:
    """`rec` as the row its settle inserts (ledger.resolve), its cost what the settle charged."""
    row = _row(rec)
    del row["cost"]
    return Record(usage_records.name, row, "cost")


class UsageRecorder:
    def __init__(
        self,
        engine: AsyncEngine,
        flush_seconds: float = 1.0,
        max_batch: int = 500,
        *,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        self._engine = engine
        self._flush_seconds = flush_seconds
        self._max_batch = max_batch
        self._buffer: deque[UsageRecord] = deque(maxlen=max_buffer)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failing = False  # the last flush hit a database error
        self.dropped = 0  # buffer overflow: oldest records discarded while the DB was away
        self.rejected = 0  # rows the database refused for their content
        self._dropped_logged = 0

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record(self, rec: UsageRecord) -> None:
        """Queue one record. O(1), never touches the database."""
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1  # the deque discards the oldest on append
        self._buffer.append(rec)
        # "==", not ">=": wake once per full batch. While the database is down the buffer stays
        # above max_batch, and ">=" would turn every request into an immediate retry.
        if len(self._buffer) == self._max_batch:
            self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="usage-flusher")

    async def stop(self) -> None:
        """Stop the flusher and write what remains."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            await self._task
            self._task = None
        await self.flush()
        if self._buffer:
            logger.error("usage recorder stopped with %d unwritten records", len(self._buffer))

    async def flush(self) -> int:
        """Write everything buffered, one transaction per batch. Returns the rows written; on a
        database failure the records stay buffered for the next try."""
        written = 0
        async with self._lock:
            self._failing = False
            self._report_drops()
            while self._buffer:
                batch = [
                    self._buffer.popleft() for _ in range(min(self._max_batch, len(self._buffer)))
                ]
                try:
                    written += await self._insert(batch)
                except Exception as exc:
                    self._requeue(batch)
                    self._failing = True
                    logger.warning(
                        "usage flush failed (%s); %d records kept for retry",
                        _describe(exc),
                        len(self._buffer),
                    )
                    break
                except BaseException:
                    self._requeue(batch)  # cancelled mid-write: better twice than never
                    raise
        return written

    async def recent(
        self, limit: int = 50, key_prefix: str | None = None, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The newest rows first, for the CLI and the console."""
        stmt = select(usage_records).order_by(
            usage_records.c.created_at.desc(), usage_records.c.id.desc()
        )
        if key_prefix is not None:
            stmt = stmt.where(usage_records.c.key_prefix == key_prefix)
        if since is not None:
            stmt = stmt.where(usage_records.c.created_at >= since)
        async with self._engine.connect() as conn:
            rows = await conn.execute(stmt.limit(limit))
            return [dict(row._mapping) for row in rows]

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._flush_seconds)
            self._wake.clear()
            if not self._stopping:
                await self.flush()
                if self._failing:
                    # A batch that filled during the failed write must not retry at once.
                    self._wake.clear()

    async def _insert(self, batch: list[UsageRecord]) -> int:
        rows = [_row(rec) for rec in batch]
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(usage_records), rows)
            return len(rows)
        except (IntegrityError, DataError):
            # The database refused the data itself, so retrying the batch would fail forever
            # and block every later record. Write row by row and drop only the bad ones.
            return await self._insert_each(rows)

    async def _insert_each(self, rows: list[dict[str, Any]]) -> int:
        written = 0
        for row in rows:
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(insert(usage_records), [row])
                written += 1
            except (IntegrityError, DataError) as exc:
                self.rejected += 1
                logger.error(
                    "usage record %s rejected (%s); dropped", row["request_id"], _describe(exc)
                )
        return written

    def _requeue(self, batch: list[UsageRecord]) -> None:
        # Back at the front, in order. If the buffer filled meanwhile, the oldest are the ones
        # that do not fit: the same "drop oldest" rule record() applies.
        room = (self._buffer.maxlen or 0) - len(self._buffer)
        keep = batch[-room:] if room > 0 else []
        self.dropped += len(batch) - len(keep)
        self._buffer.extendleft(reversed(keep))

    def _report_drops(self) -> None:
        if self.dropped > self._dropped_logged:
            logger.warning("usage buffer full: %d records dropped so far", self.dropped)
            self._dropped_logged = self.dropped


def _describe(exc: BaseException) -> str:
    """Exception class and the driver's message, short. The engine hides bound parameters, so
    no row values (and no key material) reach the log."""
    lines = str(getattr(exc, "orig", None) or exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"
