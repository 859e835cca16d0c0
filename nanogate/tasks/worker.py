"""The task worker: claim due tasks with a lease, run each through the gateway, finish it once.

A run fetches the input images (egress guard, size and pixel limits, sniffed types), turns the
task into the canonical Gemini call, sends it through the router, stores the output images
(converted to the asked format) and then, in one transaction, marks the task done, settles or
refunds its credit hold, writes its usage record and queues its callback. Only the current lease
holder can do that last step, so a task that two workers ran (one of them presumed dead) is
finished and charged once.

While a task runs its lease is renewed; a worker that finds its lease taken stops the run.
A failure that may pass (upstream unavailable, throttled, timed out) puts the task back in the
queue with backoff, up to `max_attempts`; any other failure ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from nanogate.billing.ledger import Resolution, Tx
from nanogate.billing.runners import Journal
from nanogate.core import canonical
from nanogate.core.errors import GatewayError, InvalidArgument
from nanogate.core.images import convert_image
from nanogate.core.media import decode_base64
from nanogate.core.payload import joined
from nanogate.core.task_records import StoredFile, TaskRecord
from nanogate.dialects import gemini
from nanogate.dialects import tasks as dialect
from nanogate.engine.gateway import Context, Gateway
from nanogate.storage import Storage
from nanogate.tasks import queue
from nanogate.tasks.claims import ClaimLoop
from nanogate.transport.fetch import ImageFetcher, InputRejected

logger = logging.getLogger(__name__)

# Gateway statuses worth another attempt later: throttled, unavailable, timed out.
_PASSING = frozenset({429, 500, 502, 503, 504})


@dataclass(slots=True)
class Outcome:
    files: list[StoredFile] = field(default_factory=list)
    text: str | None = None
    cost: int | None = None  # None: refund the hold
    error: tuple[int, str] | None = None
    retry: bool = False


class TaskFailed(Exception):
    """A task ends in failure with this task-API code (422 bad input, 501 generation failed)."""

    def __init__(self, code: int, message: str, *, cost: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.cost = cost


class Worker(ClaimLoop):
    name = "task-worker"

    def __init__(
        self,
        journal: Journal,
        gateway: Gateway,
        storage: Storage,
        images: ImageFetcher,
        *,
        owner: str,
        concurrency: int,
        lease_s: float,
        max_attempts: int,
        poll_s: float = 1.0,
        finished: Callable[[TaskRecord], None] = lambda record: None,
    ) -> None:
        super().__init__(concurrency, poll_s)
        self.journal = journal
        self.gateway = gateway
        self.storage = storage
        self.images = images
        self.owner = owner
        self.lease = timedelta(seconds=lease_s)
        self.max_attempts = max_attempts
        self.finished = finished

    async def start(self) -> None:
        # Tasks this owner held before a restart are its own orphans: queue them again now.
        released = await self.journal.submit(
            lambda tx: queue.release_owner(tx, self.owner, datetime.now(UTC))
        )
        if released:
            logger.warning("requeued tasks left before a restart", extra={"count": released})
        self.start_loop()

    async def stop(self) -> None:
        """Stop claiming; runs in flight are cancelled and handed back to the queue."""
        await self.stop_loop()

    async def claim(self, limit: int) -> None:
        token = secrets.token_hex(12)
        now = datetime.now(UTC)
        found = await self.journal.submit(
            lambda tx: queue.claim(tx, self.owner, token, now, now + self.lease, limit)
        )
        for record, deadline in found:
            self.spawn(self._run(record, deadline, token), f"task-{record.id}")

    # -- one task ----------------------------------------------------------------------------

    async def _run(self, record: TaskRecord, deadline: datetime, token: str) -> None:
        work = asyncio.current_task()
        assert work is not None
        renewer = asyncio.create_task(self._renew(record.id, token, work))
        ctx = Context(record.request_id, "tasks")
        try:
            outcome = await self._outcome(ctx, record, deadline)
        except asyncio.CancelledError:
            # Stopping: back to the queue, for whichever worker claims first. (When the lease
            # was lost instead, its new holder runs it and this changes nothing.)
            with contextlib.suppress(Exception):
                await self.journal.submit(
                    lambda tx: queue.hand_back(tx, record.id, token, datetime.now(UTC))
                )
            raise
        finally:
            renewer.cancel()
        await self._commit(ctx, record, token, outcome)

    async def _renew(self, task_id: str, token: str, work: asyncio.Task[None]) -> None:
        every = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            renewal = functools.partial(
                queue.renew, task_id=task_id, token=token, until=datetime.now(UTC) + self.lease
            )
            try:
                ours = await self.journal.submit(renewal)
            except Exception as exc:
                logger.warning("lease renewal failed (%s)", type(exc).__name__)
                continue
            if not ours:
                logger.warning("lease lost; stopping the run", extra={"task_id": task_id})
                work.cancel()
                return

    async def _outcome(self, ctx: Context, record: TaskRecord, deadline: datetime) -> Outcome:
        left = (deadline - datetime.now(UTC)).total_seconds()
        if left <= 0:
            return Outcome(error=(501, "Generation failed: the task did not finish in time."))
        if record.attempts > self.max_attempts:
            return Outcome(
                error=(500, f"Gave up after {self.max_attempts} attempts to run the task.")
            )
        try:
            async with asyncio.timeout(left):
                return await self._execute(ctx, record)
        except TaskFailed as exc:
            _failed(ctx, exc.code, exc.message)
            return Outcome(cost=exc.cost, error=(exc.code, exc.message))
        except GatewayError as exc:
            ctx.fail(exc)
            passing = exc.status in _PASSING and record.attempts < self.max_attempts
            if passing and left > 5:
                return Outcome(retry=True)
            if isinstance(exc, InvalidArgument):
                return Outcome(error=(422, exc.message))
            return Outcome(error=(501, f"Generation failed: {exc.message}"))
        except TimeoutError:
            late = "Generation failed: the task did not finish in time."
            _failed(ctx, 504, late)
            return Outcome(error=(501, late))
        except Exception:
            logger.exception("task run failed", extra={"task_id": record.id})
            message = f"Internal error; quote task id {record.id}."
            _failed(ctx, 500, message)
            return Outcome(error=(500, message))

    async def _execute(self, ctx: Context, record: TaskRecord) -> Outcome:
        key = await self.gateway.keys.by_id(record.key_id)
        ctx.key = key
        task = dialect.task_request(record)
        spec = await self.gateway.lookup(ctx, task.model)
        images = await asyncio.gather(
            *(self._fetch(index, url) for index, url in enumerate(task.image_urls))
        )
        body = orjson.dumps(dialect.gemini_request(task, spec, images))
        call = gemini.parse_call(record.request_id, "generateContent", spec, body)
        reply, cost = await self.gateway.execute(ctx, call)
        outputs, text = _outputs(joined(reply.body))
        if not outputs:
            reason = canonical.no_image_reason(reply.body)
            raise TaskFailed(501, f"Generation failed: no image ({reason}).", cost=cost or None)
        files = []
        for mime, data in outputs:
            if task.output_format is not None:
                data, mime = await asyncio.to_thread(convert_image, data, task.output_format)
            stored = await self.storage.put(data, mime)
            files.append(StoredFile(stored.name, stored.content_type))
        return Outcome(files=files, text=text, cost=cost)

    async def _fetch(self, index: int, url: str) -> tuple[str, bytes]:
        name = f"input.image_urls[{index}]"
        try:
            return await self.images.fetch(url)
        except InputRejected as exc:
            raise TaskFailed(422, f"{name}: {exc}") from exc

    async def _commit(self, ctx: Context, record: TaskRecord, token: str, outcome: Outcome) -> None:
        now = datetime.now(UTC)
        if outcome.retry:
            # Backoff with jitter: 2, 4, 8 ... s, at most a minute.
            delay = min(60.0, 2.0**record.attempts) * random.uniform(0.5, 1.0)
            after = now + timedelta(seconds=delay)
            await self.journal.submit(lambda tx: queue.retry_later(tx, record.id, token, after))
            return
        if outcome.error is not None and ctx.status == 200:
            _failed(ctx, *outcome.error)

        async def end(tx: Tx) -> Resolution | None:
            resolution = await queue.finish(
                tx,
                record.id,
                token,
                now,
                hold_id=record.hold_id,
                cost=outcome.cost,
                files=outcome.files,
                text=outcome.text,
                error=outcome.error,
            )
            if resolution is not None:
                # The usage record commits with the charge: a kill -9 right after the commit
                # must not leave a charged task without its record.
                ctx.cost = resolution.charged
                await self.gateway.write_record(tx, ctx)
            return resolution

        resolution = await self.journal.submit(end)
        if resolution is None:
            logger.warning("task finished elsewhere; result dropped", extra={"task_id": record.id})
            return
        ctx.recorded = True
        self.gateway.meter.resolved(record.account_id, resolution)
        self.gateway.finish(ctx)
        record.state = "failed" if outcome.error else "succeeded"
        self.finished(record)


# The status name a usage record gets for each task-API failure code (the message goes beside
# it, as for every other call).
_TASK_ERRORS = {
    422: "INVALID_ARGUMENT",
    500: "INTERNAL",
    501: "GENERATION_FAILED",
    504: "DEADLINE_EXCEEDED",
}


def _failed(ctx: Context, code: int, message: str) -> None:
    ctx.status, ctx.error_message = code, message
    ctx.error = _TASK_ERRORS.get(code, "FAILED")


def _outputs(body: bytes) -> tuple[list[tuple[str, bytes]], str | None]:
    """The images (mime, bytes) and the text of a GenerateContentResponse's first candidate."""
    found = canonical.candidates(orjson.loads(body))
    if not found:
        return [], None
    first = found[0]
    images = [(image.mime, decode_base64(str(image.data))) for image in first.images]
    return [(mime, data) for mime, data in images if data], "".join(first.text) or None
