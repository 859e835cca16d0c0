"""Callbacks: POST a finished task's record to its callback URL, signed, retried, logged.

The body is the task's query answer in the form it was created with. It is signed twice, with
one key, the `callback_secret` string's UTF-8 bytes:

- nanogate's own scheme: the hex HMAC-SHA256 of `timestamp + "." + body`, the timestamp (Unix
  seconds) and the digest in `x-nanogate-timestamp` and `x-nanogate-signature`;
- Standard Webhooks (spec/standard-webhooks.md in github.com/standard-webhooks/standard-webhooks,
  "Signature scheme" and "Webhook headers"): `webhook-id` (the event id), `webhook-timestamp`
  (the same seconds) and `webhook-signature: v1,` + the base64 HMAC-SHA256 of
  `id + "." + timestamp + "." + body`, so a receiver can verify with a maintained library. The
  standard hands the key over as `whsec_` + its base64 (`standard_secret`).

A receiver recomputes the digest, compares in constant time, refuses stale timestamps (the
libraries allow 5 minutes either way) and drops an event id it has seen.

The callback is an outbox row set in the transaction that finished the task, so there is exactly
one per task, with one event id (`x-nanogate-event-id`, `webhook-id`) on every attempt; delivery
is at least once: an attempt is leased, a 2xx ends it, anything else is retried with exponential
backoff and jitter until `retry_s` after the task finished. Every attempt is recorded in
`callback_deliveries` before it is sent, so one cut short by a stop or a crash still counts, and
`x-nanogate-attempt` of the next one says so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from nanogate import __version__
from nanogate.billing.runners import Journal
from nanogate.core.task_records import TaskRecord
from nanogate.tasks import queue
from nanogate.tasks.claims import ClaimLoop
from nanogate.transport.egress import EgressRefused, FetchFailed, GuardedHttp

logger = logging.getLogger(__name__)

TIMESTAMP_HEADER = "x-nanogate-timestamp"
SIGNATURE_HEADER = "x-nanogate-signature"
EVENT_HEADER = "x-nanogate-event-id"
MAX_BACKOFF_S = 300.0
INTERRUPTED = "interrupted: the gateway stopped during the attempt; the receiver may have it"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def standard_sign(secret: bytes, event_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks `webhook-signature` value (symmetric, version v1)."""
    content = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_secret(secret: bytes) -> str:
    """The signing key as Standard Webhooks serializes a symmetric one, what a receiver passes
    to `standardwebhooks.Webhook(...)`: the same bytes nanogate's own scheme keys with."""
    return "whsec_" + base64.b64encode(secret).decode()


def backoff(attempt: int, base_s: float = 1.0) -> float:
    """Seconds before attempt `attempt + 1`: doubling from `base_s`, capped, with jitter."""
    delay: float = min(MAX_BACKOFF_S, base_s * 2.0 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)


class CallbackSender(ClaimLoop):
    name = "callback-sender"

    def __init__(
        self,
        journal: Journal,
        http: GuardedHttp,
        secret: bytes,
        render: Callable[[TaskRecord], bytes],
        *,
        timeout_s: float,
        retry_s: float,
        concurrency: int = 32,
        poll_s: float = 1.0,
    ) -> None:
        super().__init__(concurrency, poll_s)
        self.journal = journal
        self.http = http
        self.secret = secret
        self.render = render
        self.timeout_s = timeout_s
        self.retry = timedelta(seconds=retry_s)

    async def claim(self, limit: int) -> None:
        now = datetime.now(UTC)
        # A lease outlasting one attempt: a sender that dies mid-attempt is retried after it.
        until = now + timedelta(seconds=self.timeout_s + 30)
        due = await self.journal.submit(lambda tx: queue.claim_callbacks(tx, now, until, limit))
        for record, attempt in due:
            self.spawn(self._deliver(record, attempt), f"callback-{record.id}")

    async def _deliver(self, record: TaskRecord, attempt: int) -> None:
        assert record.callback_url is not None and record.callback_event_id is not None
        event_id = record.callback_event_id
        body = self.render(record)
        timestamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "user-agent": f"nanogate/{__version__} (callback)",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.secret, timestamp, body),
            "x-nanogate-task-id": record.id,
            EVENT_HEADER: event_id,
            "x-nanogate-attempt": str(attempt),
            "webhook-id": event_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": standard_sign(self.secret, event_id, timestamp, body),
        }
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        permanent = False
        try:
            status = await self.http.post(
                record.callback_url, body, headers, timeout_s=self.timeout_s
            )
        except asyncio.CancelledError:
            # Stopping mid-attempt: say so in its record and make it due at once, so whoever
            # runs next sends it again as the next attempt (the receiver may have this one).
            duration_ms = int((time.perf_counter() - started) * 1000)
            with contextlib.suppress(Exception):
                await self.journal.submit(
                    lambda tx: queue.callback_attempted(
                        tx,
                        record.id,
                        attempt,
                        status=None,
                        error=INTERRUPTED,
                        duration_ms=duration_ms,
                        state="pending",
                        next_at=datetime.now(UTC),
                    )
                )
            raise
        except EgressRefused as exc:
            error, permanent = str(exc), True
        except FetchFailed as exc:
            error = str(exc)
        except Exception as exc:
            error = f"unexpected {type(exc).__name__}"
            logger.exception("callback attempt failed", extra={"task_id": record.id})
        duration_ms = int((time.perf_counter() - started) * 1000)
        now = datetime.now(UTC)
        finished = record.completed_at or now
        next_at: datetime | None = None
        if status is not None and 200 <= status < 300:
            state = "delivered"
        elif permanent or now - finished > self.retry:
            state = "failed"
            logger.warning(
                "callback given up",
                extra={"task_id": record.id, "attempts": attempt, "status": status},
            )
        else:
            state = "pending"
            next_at = now + timedelta(seconds=backoff(attempt))
        if status is not None and error is None and state != "delivered":
            error = f"answered {status}"
        await self.journal.submit(
            lambda tx: queue.callback_attempted(
                tx,
                record.id,
                attempt,
                status=status,
                error=error,
                duration_ms=duration_ms,
                state=state,
                next_at=next_at,
            )
        )
        if next_at is not None:
            # Come back for it at its time even if nothing else wakes the loop.
            asyncio.get_running_loop().call_later((next_at - now).total_seconds(), self.wake)
