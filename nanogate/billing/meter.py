"""The credit steps a metered call walks through: estimate and reserve before the upstream,
settle (or refund) after it. The price math is in prices.py, the SQL in ledger.py; this file
decides when each runs and keeps it safe against cancellation.

Every step waits for its commit, so a settled charge is durable before the caller answers the
client. A reservation and a refund are loose (`Journal.submit`): a crash that loses one loses
nothing owed. A step whose caller is cancelled still runs to its end in the journal: a reservation
whose request is gone is refunded as soon as it lands.

When the database does not answer a settle, the client gets an error (503, "you were not
charged") rather than the answer: a charge is owed only for an answer delivered after its settle
is durable, so an answer is never given for nothing and never charged without being given. The
hold is then voided (refunded) from an in-memory retry queue, retried every RETRY_EVERY_S until
the database answers; a refund that fails goes there too. Should the process die first, the
restart's `recover(starting=True)` refunds this node's pending holds (their usage records do not
say 200), which is what the queue would have done: the queue needs no table of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from nanogate.access.keys import KeyRecord
from nanogate.billing import ledger
from nanogate.billing.ledger import Hold, Policy, Record, Refusal, Resolution, Tx
from nanogate.billing.prices import Quote
from nanogate.billing.runners import Journal
from nanogate.core.errors import GatewayError, InsufficientCredits, RateLimited, Unavailable
from nanogate.core.metrics import observe_resolutions_pending, observe_writeoff

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Work that commits with a settle, given what was charged.
Then = Callable[[Tx, int], Awaitable[None]]

# How often a call waiting on a busy account tries again when nothing wakes it sooner.
WAIT_POLL_S = 0.5
# How often holds whose settle or refund the database did not take are tried again.
RETRY_EVERY_S = 1.0


def refusal_message(refusal: Refusal, quote: int, key: KeyRecord) -> str:
    if refusal.reason == "daily_cap":
        return (
            f"API key {key.prefix} has a daily spend cap of {refusal.cap:,} credits and has "
            f"spent {refusal.spent:,} today (UTC); this request costs at least {quote:,}. "
            "Wait for tomorrow, or ask the operator to raise the cap."
        )
    if refusal.reason == "monthly_cap":
        return (
            f"API key {key.prefix} has a monthly spend cap of {refusal.cap:,} credits and has "
            f"spent {refusal.spent:,} this month (UTC); this request costs at least {quote:,}. "
            "Ask the operator to raise the cap."
        )
    return (
        f"Insufficient credits: this request costs at least {quote:,} credits (its input and "
        f"the images it asks for) and the account has {refusal.balance:,} available. Top up "
        "the account, or ask for less (a smaller imageSize or candidateCount, or a shorter "
        "prompt)."
    )


def refused(refusal: Refusal, quote: int, key: KeyRecord) -> GatewayError:
    """The error a refused reservation answers with."""
    if refusal.reason == "no_account":
        return Unavailable("This key's account no longer exists; ask the operator.")
    if refusal.reason == "busy":
        return RateLimited(
            "This account's balance does not cover the worst case of any more calls at once; "
            "retry when one of its calls has finished, set maxOutputTokens to hold less, or "
            "top up the account.",
            retry_after=1,
        )
    return InsufficientCredits(refusal_message(refusal, quote, key))


def database_unavailable(doing: str) -> GatewayError:
    return Unavailable(
        f"The gateway could not {doing} (its database did not answer); retry shortly."
    )


class Meter:
    def __init__(
        self,
        journal: Journal,
        *,
        enabled: bool,
        node: str,
        hold_ttl_s: float,
        policy: Policy = "fair",
        uncovered_calls: int = 4,
        wait_s: float = 30.0,
    ) -> None:
        self.journal = journal
        self.enabled = enabled
        self.node = node
        self.hold_ttl = timedelta(seconds=hold_ttl_s)
        self.policy: Policy = policy
        self.uncovered_calls = uncovered_calls
        self.wait_s = wait_s
        # The calls waiting on a busy account, first come first served. A hold of the account
        # closing here wakes the first; one that gets in wakes the next. The first also tries
        # every WAIT_POLL_S, for holds closed on other nodes. One wake a closing: no herd.
        self._waiting: dict[int, deque[asyncio.Future[None]]] = {}
        # Holds to refund once the database answers again, by id (see the module docstring),
        # each with whether a settle of it failed (and so may have landed unseen: `void`).
        self._unresolved: dict[str, tuple[Hold, bool]] = {}
        self._retrying: asyncio.Task[None] | None = None
        # The holds of calls in flight here, from their reservation to their settle or refund:
        # a call with none beside it has no commit to share (`Journal.submit`'s `alone`).
        self._open: set[str] = set()

    def hold_for(
        self,
        request_id: str,
        key: KeyRecord,
        quote: Quote,
        *,
        node: str | None = None,
        ttl: timedelta | None = None,
    ) -> Hold | None:
        """The reservation a call of that `quote` needs, not yet made. None when nothing is
        held: metering is off, or the call is free."""
        if not self.enabled or quote.worst == 0:
            return None
        now = datetime.now(UTC)
        return Hold(
            id=secrets.token_hex(12),
            request_id=request_id,
            account_id=key.account_id,
            key_id=key.id,
            amount=quote.likely,
            capped=key.capped,
            created_at=now,
            expires_at=now + (ttl or self.hold_ttl),
            node=node or self.node,
            floor=quote.certain,
            worst=quote.worst,
            policy=self.policy,
            uncovered_limit=self.uncovered_calls,
        )

    async def reserve(self, request_id: str, key: KeyRecord, quote: Quote) -> Hold | None:
        """Hold what a call of that `quote` needs on the key's account, or 402. While the
        account is busy (see ledger.py) it waits, up to `wait_s`, then answers 429."""
        hold = self.hold_for(request_id, key, quote)
        if hold is None:
            return None
        refusal = await self.admit(hold.account_id, lambda: self._reserve(hold))
        if refusal is not None:
            raise refused(refusal, hold.floor, key)
        return hold

    async def admit(self, account_id: int, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` (a reservation on the account) until it is not refused as busy, or
        `wait_s` has passed; the last outcome."""
        deadline = asyncio.get_running_loop().time() + self.wait_s
        waited = False
        while True:
            outcome = await attempt()
            busy = isinstance(outcome, Refusal) and outcome.reason == "busy"
            if not busy:
                if waited and not isinstance(outcome, Refusal):
                    self.wake(account_id)  # there may be room for the next one too
                return outcome
            if not await self._wait_turn(account_id, deadline):
                return outcome
            waited = True

    async def _wait_turn(self, account_id: int, deadline: float) -> bool:
        """After a "busy" refusal: wait for this call's turn (see `_waiting`). False, at once,
        past `deadline`."""
        loop = asyncio.get_running_loop()
        left = deadline - loop.time()
        if left <= 0:
            return False
        queue = self._waiting.setdefault(account_id, deque())
        turn: asyncio.Future[None] = loop.create_future()
        queue.append(turn)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(turn, min(left, WAIT_POLL_S) if queue[0] is turn else left)
        finally:
            with contextlib.suppress(ValueError):
                queue.remove(turn)
            if not queue:
                self._waiting.pop(account_id, None)
        return True

    def wake(self, account_id: int) -> None:
        """Give the account's first waiting call its turn."""
        for turn in self._waiting.get(account_id, ()):
            if not turn.done():
                turn.set_result(None)
                return

    def _alone(self, hold: Hold) -> bool:
        return not self._open or (len(self._open) == 1 and hold.id in self._open)

    def _closing(self, hold: Hold) -> bool:
        """The hold leaves the calls in flight; whether it was alone among them."""
        alone = self._alone(hold)
        self._open.discard(hold.id)
        return alone

    async def _reserve(self, hold: Hold) -> Refusal | None:
        alone = self._alone(hold)
        self._open.add(hold.id)
        future = self.journal.submit(
            lambda tx: ledger.reserve(tx, hold), statement="loose", alone=alone
        )
        try:
            refusal = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The caller is gone; the reservation may still land, and must not stay held.
            self._open.discard(hold.id)
            future.add_done_callback(lambda _: self._refund_later(hold))
            raise
        except Exception as exc:
            self._open.discard(hold.id)
            raise database_unavailable("check your credits") from exc
        if refusal is not None:
            self._open.discard(hold.id)
        return refusal

    async def settle(
        self,
        hold: Hold | None,
        cost: int,
        then: Then | None = None,
        *,
        record: Record | None = None,
    ) -> int | None:
        """Post the hold at `cost`; what was charged (the cost itself when nothing is held),
        or None when the hold was already closed (nothing charged, `record` not written).
        `record` (one statement with the settle, where the database chains them) or
        `then(tx, charged)` (any work, in the settle's transaction) commits with it: what must
        exist if, and only if, the charge does (the answer's record). Raises Unavailable, with
        the hold queued for refund, when the database does not answer: the caller must not
        give the answer."""
        if hold is None:
            return cost
        alone = self._closing(hold)
        if then is None:
            work = _resolver(hold.id, cost, record=record)
            future = self.journal.submit(work, statement="durable", alone=alone)
        else:
            future = self.journal.submit(_resolver(hold.id, cost, then, record=record))
        try:
            resolution = await asyncio.shield(future)
        except asyncio.CancelledError:
            raise  # the journal still commits it
        except Exception as exc:
            self._queue(hold, exc, void=True)
            raise Unavailable(
                "The gateway could not record this call's charge (its database did not "
                "answer), so it is not returned; retry shortly. You were not charged."
            ) from exc
        self.resolved(hold.account_id, resolution)
        if resolution is None:
            # Already closed: recovery refunded it after its expiry. Nothing was charged.
            logger.error("settle of a closed hold", extra={"request_id": hold.request_id})
            return None
        return resolution.charged

    async def refund(self, hold: Hold | None) -> None:
        """Give the hold back; when the database does not answer, queued (never raises for
        it, so the caller's own error is what the client hears)."""
        if hold is None or hold.id in self._unresolved:
            return  # a failed settle already queued it
        alone = self._closing(hold)
        future = self.journal.submit(_resolver(hold.id, None), statement="loose", alone=alone)
        try:
            resolution = await asyncio.shield(future)
        except asyncio.CancelledError:
            raise  # the journal still commits it
        except Exception as exc:
            self._queue(hold, exc, void=False)
            return
        self.resolved(hold.account_id, resolution)

    def resolved(self, account_id: int, resolution: Resolution | None) -> None:
        """A hold of the account closed (here, or by a task worker): wake its waiting calls,
        and count what was written off."""
        self.wake(account_id)
        if resolution is not None and resolution.shortfall:
            observe_writeoff(resolution.shortfall)

    def _refund_later(self, hold: Hold) -> None:
        self._queue(hold, None, void=False)

    def _queue(self, hold: Hold, exc: Exception | None, *, void: bool) -> None:
        """Refund the hold from the retry queue (at once, and again until it lands)."""
        if exc is not None:
            logger.warning(
                "could not close a hold (%s); its refund is queued until the database answers",
                type(exc).__name__,
                extra={"request_id": hold.request_id, "hold": hold.id},
            )
        self._unresolved[hold.id] = (hold, void)
        observe_resolutions_pending(len(self._unresolved))
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.create_task(self._retry(), name="hold-retry")

    async def _retry(self) -> None:
        closed = 0
        while self._unresolved:
            # Submitted together, so the journal commits them in one transaction.
            queued = list(self._unresolved.values())
            holds = [hold for hold, _ in queued]
            try:
                futures = [
                    self.journal.submit(_voider(hold.id))
                    if void
                    else self.journal.submit(_resolver(hold.id, None), statement="loose")
                    for hold, void in queued
                ]
            except RuntimeError:
                return  # the journal has stopped: the next start's recovery refunds them
            for hold, outcome in zip(
                holds, await asyncio.gather(*futures, return_exceptions=True), strict=True
            ):
                if isinstance(outcome, BaseException):
                    continue
                del self._unresolved[hold.id]
                self.resolved(hold.account_id, outcome)
                closed += 1
            observe_resolutions_pending(len(self._unresolved))
            if self._unresolved:
                await asyncio.sleep(RETRY_EVERY_S)
        logger.info("queued holds refunded", extra={"count": closed})

    async def stop(self) -> None:
        """Stop retrying: the holds still queued are this node's pending ones, which the next
        start's `recover` refunds."""
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying
        if self._unresolved:
            logger.warning(
                "stopping with unrefunded holds; the next start refunds them",
                extra={"count": len(self._unresolved)},
            )

    async def recover(self, *, starting: bool) -> int:
        """Close the holds nobody will close: when `starting`, this node's from before it
        (re)started; always, any node's past their expiry. Those whose usage is known are
        settled at that cost, the rest refunded. Returns how many were closed."""
        now = datetime.now(UTC)
        node = self.node if starting else None
        found = await self.journal.submit(lambda tx: ledger.orphans(tx, node, now))
        for hold_id, cost in found:
            await self.journal.submit(_resolver(hold_id, cost))
        if found:
            logger.warning("resolved orphaned reservations", extra={"count": len(found)})
        return len(found)


def _resolver(
    hold_id: str, cost: int | None, then: Then | None = None, *, record: Record | None = None
) -> Callable[[Tx], Awaitable[Resolution | None]]:
    async def work(tx: Tx) -> Resolution | None:
        resolution = await ledger.resolve(tx, hold_id, cost, datetime.now(UTC), record)
        if then is not None:
            await then(tx, resolution.charged if resolution else 0)
        return resolution

    return work


def _voider(hold_id: str) -> Callable[[Tx], Awaitable[Resolution | None]]:
    async def work(tx: Tx) -> Resolution | None:
        return await ledger.void(tx, hold_id, datetime.now(UTC))

    return work
