"""The task API's engine room, as the routes see it: create a task, read it, render it.

Creating a task walks the same layers as a synchronous call up to the router (auth and limits,
model and input checks, a credit reservation), then stops: the reservation and the queued task
are written in one transaction, and a worker (worker.py) takes it from there.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from nanogate.access.keys import KeyRecord
from nanogate.access.switches import Switches
from nanogate.billing.ledger import Refusal, Tx, aware
from nanogate.billing.meter import database_unavailable, refused
from nanogate.billing.runners import Journal
from nanogate.core.catalog import ModelSpec
from nanogate.core.errors import Conflict, FeatureDisabled, InvalidArgument, NotFound
from nanogate.core.task_records import TaskRecord
from nanogate.core.types import Call
from nanogate.dialects import gemini
from nanogate.dialects import tasks as dialect
from nanogate.engine import replay
from nanogate.engine.gateway import Context, Gateway
from nanogate.storage import Storage
from nanogate.tasks import queue
from nanogate.transport.egress import EgressRefused, GuardedHttp

# A task's hold outlives its deadline by this much, so only a worker (never the sweeper)
# closes it in the normal course; the sweeper refunds it if every worker is gone for good.
HOLD_MARGIN = timedelta(hours=1)
# Task holds belong to no serving node: a restarting node must not refund them.
TASK_HOLD_NODE = "tasks"


class TaskService:
    def __init__(
        self,
        journal: Journal,
        gateway: Gateway,
        storage: Storage,
        http: GuardedHttp,
        *,
        task_timeout_s: float,
        result_ttl_s: float,
        switches: Switches,
        wake: Callable[[], None],
    ) -> None:
        self.journal = journal
        self.gateway = gateway
        self.storage = storage
        self.http = http
        self.task_timeout = timedelta(seconds=task_timeout_s)
        self.result_ttl = timedelta(seconds=result_ttl_s)
        self.switches = switches
        self.wake = wake

    async def create(
        self,
        ctx: Context,
        key: KeyRecord,
        task: dialect.TaskRequest,
        idem: tuple[str, str] | None = None,
    ) -> str:
        """Queue `task` and return its id (the first task's id for a repeated Idempotency-Key).
        Raises 402 when the account cannot cover its most possible cost."""
        if self.switches.disabled("tasks"):
            raise FeatureDisabled("Creating tasks is switched off on this gateway.")
        spec = await self.gateway.resolve(ctx, key, task.model)
        self._check(task, spec)
        await self._vet_urls(task)
        call = self._estimate_call(ctx.request_id, task, spec)
        await self.gateway.count_request(key)
        now = datetime.now(UTC)
        deadline = now + self.task_timeout
        hold = self.gateway.meter.hold_for(
            ctx.request_id,
            key,
            self.gateway.quote(ctx, call),
            node=TASK_HOLD_NODE,
            ttl=self.task_timeout + HOLD_MARGIN,
        )
        record = TaskRecord(
            id=new_task_id(),
            request_id=ctx.request_id,
            form=task.form,
            key_id=key.id,
            account_id=key.account_id,
            model=task.model,
            param=task.param,
            state="pending",
            created_at=now,
            callback_url=task.callback_url,
        )
        remember = (idem[0], idem[1], now + self.result_ttl) if idem else None

        async def work(tx: Tx) -> tuple[str, str] | Refusal | None:
            if idem is not None:
                found = await replay.remembered(tx, key.id, idem[0], now)
                if found is not None:
                    return found
            return await queue.create(tx, record, hold, deadline, remember)

        async def attempt() -> tuple[str, str] | Refusal | None:
            try:
                return await self.journal.submit(work)
            except Exception as exc:
                raise database_unavailable("queue the task") from exc

        outcome = await self.gateway.meter.admit(key.account_id, attempt)
        if isinstance(outcome, tuple):
            fingerprint, task_id = outcome
            if idem is not None and fingerprint != idem[1]:
                raise Conflict(
                    f"Idempotency-Key '{idem[0]}' was already used with a different request; "
                    "use a new key for a new task."
                )
            return task_id
        if outcome is not None:
            raise refused(outcome, hold.floor if hold else 0, key)
        self.wake()
        return record.id

    def _check(self, task: dialect.TaskRequest, spec: ModelSpec) -> None:
        dialect.check_model(task, spec, edit=self.gateway.catalog.is_edit(task.model))
        if task.image_urls and self.switches.disabled("image_urls"):
            raise FeatureDisabled("Input images by URL are switched off on this gateway.")
        if task.callback_url and self.switches.disabled("callbacks"):
            raise FeatureDisabled("Callbacks are switched off on this gateway; poll instead.")

    async def _vet_urls(self, task: dialect.TaskRequest) -> None:
        """Refuse now, not when the worker or the callback sender gets to it, a URL the egress
        guard will refuse: a host name is resolved here, as the connect will."""
        named = [(f"input.image_urls[{i}]", url) for i, url in enumerate(task.image_urls)]
        if task.callback_url:
            named.append((task.field("callback_url"), task.callback_url))

        async def vet(name: str, url: str) -> None:
            try:
                await self.http.vet(url)
            except EgressRefused as exc:
                raise InvalidArgument(f"{name}: {exc}") from exc

        # The first refusal in field order is the one reported.
        outcomes = await asyncio.gather(*(vet(n, u) for n, u in named), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    @staticmethod
    def _estimate_call(request_id: str, task: dialect.TaskRequest, spec: ModelSpec) -> Call:
        """The canonical call without its images (not fetched yet): what the reservation and
        the Gemini validator need. The input images count toward the estimate."""
        body = orjson.dumps(dialect.gemini_request(task, spec, ()))
        call = gemini.parse_call(request_id, "generateContent", spec, body)
        call.input_images = len(task.image_urls)
        return call

    async def get(self, key: KeyRecord, task_id: str) -> TaskRecord:
        """A task of the key's account; 404 for any other (others' tasks are not revealed)."""
        record = await self._read(task_id)
        if record is None or record.account_id != key.account_id:
            raise NotFound(f"No task '{task_id[:40]}' for this API key's account.")
        return record

    async def find(self, task_id: str) -> TaskRecord:
        """Any task (the admin API)."""
        record = await self._read(task_id)
        if record is None:
            raise NotFound(f"No task '{task_id[:40]}'.")
        return record

    async def _read(self, task_id: str) -> TaskRecord | None:
        if not task_id or len(task_id) > 40:
            return None
        try:
            return await self.journal.read(lambda tx: queue.get(tx, task_id))
        except Exception as exc:
            raise database_unavailable("read the task") from exc

    async def deliveries(self, task_id: str) -> list[dict[str, Any]]:
        """The callback's delivery attempts, oldest first."""
        rows = await self.journal.read(lambda tx: queue.deliveries(tx, task_id))
        return [
            {
                "attempt": attempt,
                "status_code": status,
                "error": error,
                "duration_ms": duration,
                "at": aware(at).isoformat(),
            }
            for attempt, status, error, duration, at in rows
        ]

    def urls(self, record: TaskRecord) -> list[str]:
        """Signed result URLs, valid until the results' retention ends."""
        return self.file_urls([f.name for f in record.files], record.completed_at)

    def file_urls(self, names: Sequence[str], completed_at: datetime | None) -> list[str]:
        if not names or completed_at is None:
            return []
        expires = int((completed_at + self.result_ttl).timestamp())
        return [self.storage.url(name, expires=expires) for name in names]

    def answer(self, record: TaskRecord) -> bytes:
        """The query answer (also the callback's body), in the task's own form."""
        return dialect.envelope(dialect.render(record, self.urls(record)), record.form)


def new_task_id() -> str:
    return secrets.token_hex(16)
