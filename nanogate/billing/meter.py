"""The credit steps a metered call walks through: estimate and reserve before the upstream,
settle (or refund) after it. The price math is in prices.py, the SQL in ledger.py; this file
decides when each runs and keeps it safe against cancellation.

Every step waits for its commit, so a settled charge is durable before the caller answers the
client. A step whose caller is cancelled still runs to its end in the journal: a reservation
whose request is gone is refunded as soon as it lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from ..errors import GatewayError, InsufficientCredits, Unavailable
from ..keys import KeyRecord
from ..types import Call
from . import ledger, prices
from .ledger import Hold, Refusal, Resolution, Tx
from .runners import Journal

logger = logging.getLogger(__name__)


def refusal_message(refusal: Refusal, needed: int, key: KeyRecord) -> str:
    if refusal.reason == "daily_cap":
        return (
            f"API key {key.prefix} has a daily spend cap of {refusal.cap} credits and has spent "
            f"{refusal.spent} today (UTC); this request needs up to {needed}. "
            "Wait for tomorrow, or ask the operator to raise the cap."
        )
    if refusal.reason == "monthly_cap":
        return (
            f"API key {key.prefix} has a monthly spend cap of {refusal.cap} credits and has "
            f"spent {refusal.spent} this month (UTC); this request needs up to {needed}. "
            "Ask the operator to raise the cap."
        )
    return (
        f"Insufficient credits: this request needs up to {needed} credits and the account has "
        f"{refusal.balance}. Top up the account, or ask for less (a smaller maxOutputTokens, "
        "imageSize or candidateCount lowers what is reserved)."
    )


def refused(refusal: Refusal, needed: int, key: KeyRecord) -> GatewayError:
    """The error a refused reservation answers with."""
    if refusal.reason == "no_account":
        return Unavailable("This key's account no longer exists; ask the operator.")
    return InsufficientCredits(refusal_message(refusal, needed, key))


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
    ) -> None:
        self.journal = journal
        self.enabled = enabled
        self.node = node
        self.hold_ttl = timedelta(seconds=hold_ttl_s)

    def hold_for(
        self,
        request_id: str,
        key: KeyRecord,
        call: Call,
        *,
        node: str | None = None,
        ttl: timedelta | None = None,
        copies: int = 1,
    ) -> Hold | None:
        """The reservation `call` needs (its most possible cost, times `copies` runs of it),
        not yet made. None when nothing is held: metering is off, or the call is free."""
        needed = prices.estimate(call) * copies
        if not self.enabled or needed == 0:
            return None
        now = datetime.now(UTC)
        return Hold(
            id=secrets.token_hex(12),
            request_id=request_id,
            account_id=key.account_id,
            key_id=key.id,
            amount=needed,
            capped=key.capped,
            created_at=now,
            expires_at=now + (ttl or self.hold_ttl),
            node=node or self.node,
        )

    async def reserve(
        self, request_id: str, key: KeyRecord, call: Call, *, copies: int = 1
    ) -> Hold | None:
        """Hold the most `call` (run `copies` times) can cost on the key's account, or 402."""
        hold = self.hold_for(request_id, key, call, copies=copies)
        if hold is None:
            return None
        future = self.journal.submit(lambda tx: ledger.reserve(tx, hold))
        try:
            refusal = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The caller is gone; the reservation may still land, and must not stay held.
            future.add_done_callback(lambda _: self._refund_later(hold))
            raise
        except Exception as exc:
            raise database_unavailable("check your credits") from exc
        if refusal is not None:
            raise refused(refusal, hold.amount, key)
        return hold

    async def settle(self, hold: Hold | None, cost: int) -> int:
        """Post the hold at `cost`; what was charged (the cost itself when nothing is held)."""
        if hold is None:
            return cost
        resolution = await self._resolve(hold, cost)
        if resolution is None:
            # Already closed: recovery refunded it after its expiry. Nothing was charged.
            logger.error("settle of a closed hold", extra={"request_id": hold.request_id})
            return 0
        return resolution.charged

    async def refund(self, hold: Hold | None) -> None:
        if hold is not None:
            await self._resolve(hold, None)

    async def _resolve(self, hold: Hold, cost: int | None) -> Resolution | None:
        future = self.journal.submit(_resolver(hold.id, cost))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            raise  # the journal still commits it
        except Exception as exc:
            # The hold stays pending; recovery resolves it (on restart, or at its expiry).
            logger.error(
                "could not record a charge (%s); the hold stays for recovery",
                type(exc).__name__,
                extra={"request_id": hold.request_id},
            )
            raise Unavailable(
                "The gateway could not record this call's charge (its database did not "
                "answer), so it is not returned; retry shortly. You were not charged."
            ) from exc

    def _refund_later(self, hold: Hold) -> None:
        with contextlib.suppress(RuntimeError):  # the journal has stopped: recovery will do it
            self.journal.submit(_resolver(hold.id, None))

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


def _resolver(hold_id: str, cost: int | None) -> Callable[[Tx], Awaitable[Resolution | None]]:
    async def work(tx: Tx) -> Resolution | None:
        return await ledger.resolve(tx, hold_id, cost, datetime.now(UTC))

    return work
