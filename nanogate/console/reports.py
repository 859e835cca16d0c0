"""Read-only queries for the admin API, the console and the CLI: usage over time, filtered usage
pages, the CSV export, the recent-task gallery and usage totals by group.

Every figure is aggregated by the database (GROUP BY over indexed columns), never by a Python
loop over rows, so the console stays fast with hundreds of thousands of usage records.
"""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from sqlalchemy import Integer, Select, String, and_, case, cast, func, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from nanogate.db.tables import accounts, tasks, usage_records

WindowName = Literal["hour", "day", "month"]
GroupBy = Literal["model", "upstream"]
METRICS = ("requests", "images", "credits", "errors")
# What `summarize` (the CLI's `nanogate usage`) can group by, and the totals of each group.
SUMMARY_GROUPS = ("account", "key", "model", "day")
SUMMARY_TOTALS = ("requests", "errors", "images", "tokens", "credits")


@dataclass(frozen=True, slots=True)
class Window:
    span: timedelta
    bucket_s: int


# An hour by the minute, a day by the quarter hour, 30 days by the day.
WINDOWS: dict[str, Window] = {
    "hour": Window(timedelta(hours=1), 60),
    "day": Window(timedelta(days=1), 900),
    "month": Window(timedelta(days=30), 86_400),
}
MAX_SERIES = 8  # more groups than this are summed into "other", so a chart stays readable
# The name of a series with none: calls refused before an upstream was tried (by upstream), or
# before the model was read (by model), so no chart legend reads ": 1".
NO_NAME = "(none)"


@asynccontextmanager
async def _reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for one report query, planned for its own values.

    asyncpg prepares every statement, and from its sixth run on a connection PostgreSQL may
    keep a generic plan, made without the values: it guesses a time range covers a third of
    the table and scans the created_at index, where the month's chart reads every row and a
    sequential scan takes about half the time (bench/console.py measures it). A rare model and a
    common one likewise want different plans. Planning anew costs well under a millisecond.
    """
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # LOCAL: only this transaction (the pooled connection goes back as it was).
            await conn.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        yield conn


# unixepoch() (SQLite 3.38+) gives the same whole seconds as strftime('%s') cast back to an
# integer, at about four fifths of the cost per row; the month's chart reads every record.
_SQLITE_UNIXEPOCH = sqlite3.sqlite_version_info >= (3, 38, 0)


def _bucket(engine: AsyncEngine, width: int) -> ColumnElement[int]:
    """The created_at of a usage record as a bucket number (unix seconds // width)."""
    column = usage_records.c.created_at
    if engine.dialect.name == "sqlite":
        # SQLite keeps UTC wall-clock text; both functions read it back as unix seconds.
        seconds: ColumnElement[int] = (
            func.unixepoch(column, type_=Integer)
            if _SQLITE_UNIXEPOCH
            else cast(func.strftime("%s", column), Integer)
        )
        return seconds // width
    # date_part is double precision; EXTRACT is numeric since PostgreSQL 14, and dividing and
    # flooring numerics costs about a quarter more over a month of records. A double still
    # resolves microseconds at today's epoch, so every moment floors into its own bucket.
    return cast(func.floor(func.date_part("epoch", column) / width), Integer)


# Series being computed, per engine and (window, by). The overview page asks for the same
# figures several times at once (a chart per metric, each its own request): those share one
# query instead of each scanning the window (100k rows a month) side by side on the same CPUs.
_InFlight = dict[tuple[str, str], asyncio.Future[dict[str, Any]]]
_IN_FLIGHT: weakref.WeakKeyDictionary[AsyncEngine, _InFlight] = weakref.WeakKeyDictionary()


async def series(
    engine: AsyncEngine, window: WindowName, by: GroupBy, now: datetime | None = None
) -> dict[str, Any]:
    """Requests, images, credits and errors per bucket of `window`, one series per model (or
    upstream), plus the window's totals.

    Without `now`, a call made while the same figures are being computed waits for that query
    and gets the same dict (treat it as read-only): at most one query's time older than the
    call, and nothing is kept once the query is done, so the next call reads afresh.
    """
    if now is not None:
        return await _series(engine, window, by, now)
    running = _IN_FLIGHT.setdefault(engine, {})
    key = (window, by)
    shared = running.get(key)
    if shared is None or shared.get_loop() is not asyncio.get_running_loop():
        shared = asyncio.ensure_future(_series(engine, window, by, datetime.now(UTC)))
        running[key] = shared

        def forget(done: asyncio.Future[dict[str, Any]]) -> None:
            if running.get(key) is done:
                del running[key]
            if not done.cancelled():
                done.exception()  # retrieved: a failure is raised to the callers, not logged

        shared.add_done_callback(forget)
    # Shielded: one caller giving up (a closed tab) must not cancel the query for the others.
    return await asyncio.shield(shared)


async def _series(
    engine: AsyncEngine, window: WindowName, by: GroupBy, now: datetime
) -> dict[str, Any]:
    spec = WINDOWS[window]
    count = int(spec.span.total_seconds()) // spec.bucket_s
    last = int(now.timestamp()) // spec.bucket_s
    first = last - count + 1
    start = datetime.fromtimestamp(first * spec.bucket_s, UTC)
    bucket = _bucket(engine, spec.bucket_s).label("bucket")
    group = (
        usage_records.c.model if by == "model" else func.coalesce(usage_records.c.upstream, NO_NAME)
    ).label("name")
    stmt = (
        select(
            bucket,
            group,
            func.count().label("requests"),
            func.coalesce(func.sum(usage_records.c.images), 0).label("images"),
            func.coalesce(func.sum(usage_records.c.cost), 0).label("credits"),
            func.coalesce(func.sum(case((usage_records.c.status >= 400, 1), else_=0)), 0).label(
                "errors"
            ),
        )
        .where(usage_records.c.created_at >= start)
        .group_by(literal_column("bucket"), literal_column("name"))
    )
    async with _reading(engine) as conn:
        rows = (await conn.execute(stmt)).all()

    groups: dict[str, dict[str, list[int]]] = {}
    for row in rows:
        index = int(row.bucket) - first
        if not 0 <= index < count:
            continue  # a record stamped in the future (clock skew between nodes)
        values = groups.setdefault(row.name or NO_NAME, {m: [0] * count for m in METRICS})
        for metric in METRICS:
            values[metric][index] += int(getattr(row, metric))
    ranked = sorted(groups.items(), key=lambda item: -sum(item[1]["requests"]))
    if len(ranked) > MAX_SERIES:
        kept, rest = ranked[: MAX_SERIES - 1], ranked[MAX_SERIES - 1 :]
        other = {m: [sum(g[m][i] for _, g in rest) for i in range(count)] for m in METRICS}
        ranked = [*kept, ("other", other)]
    totals = {m: sum(sum(g[m]) for _, g in ranked) for m in METRICS}
    totals_rate = totals["errors"] / totals["requests"] if totals["requests"] else 0.0
    return {
        "window": window,
        "by": by,
        "bucket_seconds": spec.bucket_s,
        "start": start.isoformat(),
        "end": datetime.fromtimestamp((last + 1) * spec.bucket_s, UTC).isoformat(),
        "buckets": count,
        "series": [{"name": name, **values} for name, values in ranked],
        "totals": {**totals, "error_rate": round(totals_rate, 4)},
    }


@dataclass(frozen=True, slots=True)
class UsageFilter:
    key_prefix: str | None = None
    account_id: int | None = None
    model: str | None = None
    upstream: str | None = None
    dialect: str | None = None
    outcome: Literal["ok", "error"] | None = None
    status: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, stmt: Select[Any]) -> Select[Any]:
        c = usage_records.c
        conditions: list[ColumnElement[bool]] = []
        if self.key_prefix is not None:
            conditions.append(c.key_prefix == self.key_prefix)
        if self.account_id is not None:
            conditions.append(c.account_id == self.account_id)
        if self.model is not None:
            conditions.append(c.model == self.model)
        if self.upstream is not None:
            conditions.append(c.upstream == self.upstream)
        if self.dialect is not None:
            conditions.append(c.dialect == self.dialect)
        if self.outcome == "ok":
            conditions.append(c.status < 400)
        elif self.outcome == "error":
            conditions.append(c.status >= 400)
        if self.status is not None:
            conditions.append(c.status == self.status)
        if self.since is not None:
            conditions.append(c.created_at >= self.since)
        if self.until is not None:
            conditions.append(c.created_at < self.until)
        return stmt.where(and_(*conditions)) if conditions else stmt


async def usage_page(
    engine: AsyncEngine, where: UsageFilter, *, limit: int, before: int | None = None
) -> list[dict[str, Any]]:
    """Up to `limit` records matching `where`, newest first; `before` (a record id) pages on.

    Paging by id rather than by offset keeps page 1,000 as cheap as page 1.
    """
    stmt = where.apply(select(usage_records)).order_by(usage_records.c.id.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(usage_records.c.id < before)
    async with _reading(engine) as conn:
        return [dict(row._mapping) for row in await conn.execute(stmt)]


CSV_COLUMNS = [c.name for c in usage_records.columns]
_CSV_CHUNK = 2_000
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    # A spreadsheet would run "=..." in an error message as a formula: quote it.
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


async def usage_csv(engine: AsyncEngine, where: UsageFilter) -> AsyncIterator[bytes]:
    """Every record matching `where` as CSV, newest first, read in chunks (bounded memory)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    before: int | None = None
    while True:
        rows = await usage_page(engine, where, limit=_CSV_CHUNK, before=before)
        for row in rows:
            writer.writerow([_cell(row[name]) for name in CSV_COLUMNS])
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < _CSV_CHUNK:
            return
        before = rows[-1]["id"]


TaskState = Literal["pending", "running", "succeeded", "failed"]


async def recent_tasks(
    engine: AsyncEngine,
    *,
    limit: int,
    before: datetime | None = None,
    state: TaskState | None = None,
    account_id: int | None = None,
) -> list[dict[str, Any]]:
    """The newest tasks first (the console's gallery): `before` a created_at pages on. Each
    with its prompt (from the create request) and its stored files, parsed from their JSON."""
    c = tasks.c
    stmt = select(
        c.id,
        c.model,
        c.state,
        c.param,
        c.account_id,
        c.key_id,
        c.result,
        c.cost,
        c.error_code,
        c.error_message,
        c.created_at,
        c.started_at,
        c.completed_at,
        c.callback_url,
        c.callback_state,
        c.callback_attempts,
    ).order_by(c.created_at.desc(), c.id.desc())
    if before is not None:
        stmt = stmt.where(c.created_at < before)
    if state is not None:
        stmt = stmt.where(c.state == state)
    if account_id is not None:
        stmt = stmt.where(c.account_id == account_id)
    async with _reading(engine) as conn:
        rows = (await conn.execute(stmt.limit(limit))).all()
    summaries = []
    for row in rows:
        task = dict(row._mapping)
        result = orjson.loads(task.pop("result") or b"{}")
        param = orjson.loads(task.pop("param"))
        raw_input = param.get("input") if isinstance(param, dict) else None
        prompt = raw_input.get("prompt") if isinstance(raw_input, dict) else None
        task["prompt"] = prompt[:300] if isinstance(prompt, str) else ""
        task["files"] = [{"name": f["name"], "type": f["type"]} for f in result.get("files", ())]
        summaries.append(task)
    return summaries


async def summarize(
    engine: AsyncEngine, by: str, since: datetime, *, key_prefix: str | None = None
) -> list[dict[str, Any]]:
    """Usage totals per account (its name), key (its prefix), model or UTC day ("YYYY-MM-DD")
    since `since`, in one GROUP BY query: requests, errors (status >= 400), images, tokens (total)
    and credits (the sum of cost). Each dict holds `by` (the group) and SUMMARY_TOTALS. Days come
    oldest first; other groups by credits spent, most first."""
    if by not in SUMMARY_GROUPS:
        raise ValueError(f"cannot group usage by {by!r}; choose one of {', '.join(SUMMARY_GROUPS)}")
    u = usage_records
    async with engine.connect() as conn:
        group = _group(by, conn.dialect.name)
        totals = (
            func.count().label("requests"),
            func.sum(case((u.c.status >= 400, 1), else_=0)).label("errors"),
            func.sum(u.c.images).label("images"),
            func.sum(u.c.total_tokens).label("tokens"),
            func.sum(u.c.cost).label("credits"),
        )
        stmt = select(group.label("grp"), *totals).where(u.c.created_at >= since)
        if key_prefix is not None:
            stmt = stmt.where(u.c.key_prefix == key_prefix)
        if by == "account":
            stmt = stmt.select_from(u.outerjoin(accounts, accounts.c.id == u.c.account_id))
            stmt = stmt.group_by(u.c.account_id, group)
        else:
            stmt = stmt.group_by(group)
        if by == "day":
            stmt = stmt.order_by(group)
        else:
            stmt = stmt.order_by(totals[4].desc(), totals[0].desc(), group)
        rows = (await conn.execute(stmt)).all()
    return [
        {by: row.grp, **{name: int(getattr(row, name) or 0) for name in SUMMARY_TOTALS}}
        for row in rows
    ]


def _group(by: str, dialect: str) -> ColumnElement[Any]:
    u = usage_records
    if by == "account":
        return accounts.c.name
    if by == "key":
        return u.c.key_prefix
    if by == "model":
        return u.c.model
    # The UTC date of created_at, as text. SQLite keeps datetimes as UTC text
    # ("YYYY-MM-DD HH:MM:SS.ffffff"); PostgreSQL keeps a timestamptz, read in UTC here whatever the
    # session's time zone. Literal constants, not bound parameters: PostgreSQL would not see
    # `to_char(.., $1)` in the SELECT and `to_char(.., $3)` in the GROUP BY as one expression.
    if dialect == "sqlite":
        return func.substr(u.c.created_at, literal_column("1"), literal_column("10"), type_=String)
    return func.to_char(
        func.timezone(literal_column("'UTC'"), u.c.created_at),
        literal_column("'YYYY-MM-DD'"),
        type_=String,
    )
