"""Runtime switches: maintenance mode and the features switched off, changed while nodes run.

The state is one database row, so every node sees the same switches: a node reads it every
half second (one primary-key read; no Redis needed), and a change made through any node, or the
CLI, reaches every other within a second. Requests read the in-memory copy and never wait on
the database.

The row also carries the time a config reload was last asked of every node: a node that reads
a newer one than it has seen re-reads its own config file (web/reload.py).

The settings `maintenance` and `disabled_features` are the initial value: the first node to start
writes them, and a node that starts with settings other than the ones last written (the operator
changed the configuration) writes its own, so a restart with a new configuration takes effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args

import orjson
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.core.config import Feature
from nanogate.db.tables import switches as table

logger = logging.getLogger(__name__)

FEATURES = frozenset(get_args(Feature))
POLL_SECONDS = 0.5


@dataclass(slots=True)
class Switches:
    """The switches as requests read them (changed in place, so every holder sees a change)."""

    maintenance: bool = False
    disabled_features: frozenset[str] = frozenset()

    def disabled(self, feature: str) -> bool:
        return feature in self.disabled_features

    def as_json(self) -> dict[str, Any]:
        return {
            "maintenance": self.maintenance,
            "disabled_features": sorted(self.disabled_features),
        }


class SwitchBoard:
    """The shared switches of every node on one database."""

    def __init__(self, engine: AsyncEngine, initial: Switches) -> None:
        self.engine = engine
        self.initial = initial
        self.current = Switches(initial.maintenance, initial.disabled_features)
        self._seen: datetime | None = None
        # The last reload request read: the one standing when the node started is not news.
        self._reload_seen: datetime | None = None
        self._reload_read = False
        self._on_reload: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def on_reload(self, listener: Callable[[], None]) -> None:
        """Call `listener` when a reload is asked of every node (not at the first read)."""
        self._on_reload.append(listener)

    async def start(self) -> None:
        """A serving node: write its settings where they are new, read the shared state, and
        keep reading it."""
        await self.load(adopt_settings=True)
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="switches")

    async def load(self, *, adopt_settings: bool = False) -> Switches:
        """Read the shared state; the settings become it where there is none yet (or, with
        `adopt_settings`, where they differ from the ones last written)."""
        seed = _encode(self.initial)
        now = datetime.now(UTC)
        values = {"id": 1, **seed, "seed": orjson.dumps(seed).decode(), "updated_at": now}
        async with self.engine.begin() as conn:
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            await conn.execute(insert(table).values(**values).on_conflict_do_nothing())
            if adopt_settings:
                # Settings other than the last ones written: the operator changed them.
                await conn.execute(
                    update(table)
                    .where(table.c.id == 1, table.c.seed != values["seed"])
                    .values(**seed, seed=values["seed"], updated_at=now)
                )
        return await self.refresh()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> Switches:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        table.c.maintenance,
                        table.c.disabled_features,
                        table.c.updated_at,
                        table.c.reload_requested_at,
                    ).where(table.c.id == 1)
                )
            ).one()
        if row.updated_at != self._seen:
            self._seen = row.updated_at
            self._apply(bool(row.maintenance), _features(row.disabled_features))
        if row.reload_requested_at != self._reload_seen:
            news = self._reload_read
            self._reload_seen = row.reload_requested_at
            if news:
                for listener in self._on_reload:
                    listener()
        self._reload_read = True
        return self.current

    async def request_reload(self) -> None:
        """Ask every other node to re-read its config file (this one has: the request it
        writes is not news here)."""
        now = datetime.now(UTC)
        async with self.engine.begin() as conn:
            await conn.execute(update(table).where(table.c.id == 1).values(reload_requested_at=now))
        self._reload_seen = now

    async def set(
        self, *, maintenance: bool | None = None, disabled_features: Sequence[str] | None = None
    ) -> Switches:
        """Change either switch for every node; returns the state now."""
        changes: dict[str, Any] = {}
        if maintenance is not None:
            changes["maintenance"] = maintenance
        if disabled_features is not None:
            changes["disabled_features"] = _encode_features(disabled_features)
        if changes:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(table)
                    .where(table.c.id == 1)
                    .values(**changes, updated_at=datetime.now(UTC))
                )
        return await self.refresh()

    def _apply(self, maintenance: bool, disabled: frozenset[str]) -> None:
        before = self.current.as_json()
        self.current.maintenance = maintenance
        self.current.disabled_features = disabled
        if self.current.as_json() != before:
            logger.warning("switches changed", extra={"switches": self.current.as_json()})

    async def _follow(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.refresh()
                failing = False
            except Exception as exc:
                # The last state read stays in force until the database answers again.
                if not failing:
                    logger.warning("cannot read the switches (%s)", type(exc).__name__)
                failing = True


def _encode(switches: Switches) -> dict[str, Any]:
    return {
        "maintenance": switches.maintenance,
        "disabled_features": _encode_features(switches.disabled_features),
    }


def _encode_features(features: Any) -> str:
    return orjson.dumps(sorted(set(features))).decode()


def _features(raw: str | None) -> frozenset[str]:
    try:
        value = orjson.loads(raw or "[]")
    except orjson.JSONDecodeError:
        return frozenset()
    return frozenset(f for f in value if f in FEATURES) if isinstance(value, list) else frozenset()
