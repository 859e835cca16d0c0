"""The ledger: every movement of credits, as plain SQL that runs the same on SQLite and PostgreSQL.

Money moves in TigerBeetle's two phases. `reserve` takes a request's whole estimate off the
account's balance (a `holds` row plus a `reserve` ledger row); `resolve` then posts the hold
once: a settle gives back what the call did not use (or takes an overrun, as far as the balance
allows), a refund gives back all of it. The balance is debited only by a conditional UPDATE
(`balance >= amount`), so it cannot go below zero whatever the concurrency, and a hold is
closed only by a conditional UPDATE on its state, so a second settle or refund does nothing.
The ledger's rows for an account always sum to its balance.

The functions here take a `Tx` (one open transaction) and return plain values; `runners.py`
says how a transaction is opened on each database, and `Journal` groups concurrent callers'
operations into one commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

logger = logging.getLogger(__name__)

Row = tuple[Any, ...]


class Tx(Protocol):
    """One open transaction. `lock` is the row-lock suffix for a SELECT that is followed by an
    UPDATE of the same row (" FOR UPDATE" on PostgreSQL; SQLite's write lock already covers it)."""

    lock: str

    async def one(self, sql: str, params: dict[str, Any]) -> Row | None: ...

    async def all(self, sql: str, params: dict[str, Any]) -> list[Row]: ...

    async def exec(self, sql: str, params: dict[str, Any]) -> int: ...


@dataclass(slots=True)
class Hold:
    """A reservation, as the request that made it keeps it."""

    id: str
    request_id: str
    account_id: int
    key_id: int | None
    amount: int
    capped: bool  # counted against the key's daily/monthly spend caps
    created_at: datetime
    expires_at: datetime
    node: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation was refused, with the numbers for the client's message."""

    reason: Literal["balance", "daily_cap", "monthly_cap", "no_account"]
    balance: int = 0
    spent: int = 0
    cap: int = 0


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a hold was closed: what was charged, and the account's balance after."""

    charged: int
    balance: int
    shortfall: int = 0  # an overrun the balance could not cover


def period(moment: datetime) -> tuple[str, str]:
    """The UTC day and month a spend counts in: ("2026-11-21", "2026-11")."""
    day = moment.astimezone(UTC).strftime("%Y-%m-%d")
    return day, day[:7]


_DEBIT = (
    "UPDATE accounts SET balance = balance - :amount "
    "WHERE id = :account AND balance >= :amount RETURNING balance"
)
_CREDIT = "UPDATE accounts SET balance = balance + :amount WHERE id = :account RETURNING balance"
_BALANCE = "SELECT balance FROM accounts WHERE id = :account"
# Spend in the current period is the stored counter if it counts this period, else nothing yet.
_DAY_SPEND = "(CASE WHEN day_start = :day THEN day_spend ELSE 0 END)"
_MONTH_SPEND = "(CASE WHEN month_start = :month THEN month_spend ELSE 0 END)"
_SPEND = (
    f"UPDATE api_keys SET day_spend = {_DAY_SPEND} + :amount, day_start = :day, "
    f"month_spend = {_MONTH_SPEND} + :amount, month_start = :month "
    f"WHERE id = :key AND (daily_cap IS NULL OR {_DAY_SPEND} + :amount <= daily_cap) "
    f"AND (monthly_cap IS NULL OR {_MONTH_SPEND} + :amount <= monthly_cap)"
)
_CAPS = f"SELECT daily_cap, monthly_cap, {_DAY_SPEND}, {_MONTH_SPEND} FROM api_keys WHERE id = :key"
# A settle moves the counters by what the hold did not use; only if they still count the
# period the hold was made in, and never below zero.
_SPEND_BACK = (
    "UPDATE api_keys SET "
    "day_spend = CASE WHEN day_start = :day THEN "
    "(CASE WHEN day_spend + :delta > 0 THEN day_spend + :delta ELSE 0 END) ELSE day_spend END, "
    "month_spend = CASE WHEN month_start = :month THEN "
    "(CASE WHEN month_spend + :delta > 0 THEN month_spend + :delta ELSE 0 END) "
    "ELSE month_spend END WHERE id = :key"
)
_INSERT_HOLD = (
    "INSERT INTO holds (id, request_id, account_id, key_id, amount, capped, state, node, "
    "created_at, expires_at) VALUES (:id, :request, :account, :key, :amount, :capped, "
    "'pending', :node, :created, :expires)"
)
_CLOSE_HOLD = (
    "UPDATE holds SET state = :state, cost = :cost, resolved_at = :now "
    "WHERE id = :id AND state = 'pending' "
    "RETURNING request_id, account_id, key_id, amount, capped, created_at"
)
_HOLD_COST = "UPDATE holds SET cost = :cost WHERE id = :id"
_INSERT_LEDGER = (
    "INSERT INTO ledger (account_id, key_id, kind, amount, balance_after, request_id, hold_id, "
    "note, created_at) VALUES (:account, :key, :kind, :amount, :balance, :request, :hold, "
    ":note, :now)"
)


async def _write(tx: Tx, **row: Any) -> None:
    params = {"key": None, "request": None, "hold": None, "note": None, **row}
    await tx.exec(_INSERT_LEDGER, params)


async def reserve(tx: Tx, hold: Hold) -> Refusal | None:
    """Take `hold.amount` off the account (and count it against the key's caps). None when
    done; a Refusal, with nothing changed, when the balance or a cap cannot cover it."""
    account = {"account": hold.account_id, "amount": hold.amount}
    row = await tx.one(_DEBIT, account)
    if row is None:
        found = await tx.one(_BALANCE, account)
        return Refusal("balance", int(found[0])) if found else Refusal("no_account")
    balance = int(row[0])
    if hold.capped:
        day, month = period(hold.created_at)
        spend = {"key": hold.key_id, "amount": hold.amount, "day": day, "month": month}
        if not await tx.exec(_SPEND, spend):
            await tx.exec(_CREDIT, account)  # undo the debit above, in the same transaction
            caps = await tx.one(_CAPS, spend)
            assert caps is not None
            daily_cap, monthly_cap, day_spent, month_spent = caps
            if daily_cap is not None and day_spent + hold.amount > daily_cap:
                return Refusal("daily_cap", balance + hold.amount, day_spent, daily_cap)
            return Refusal("monthly_cap", balance + hold.amount, month_spent, monthly_cap)
    await tx.exec(
        _INSERT_HOLD,
        {
            "id": hold.id,
            "request": hold.request_id,
            "account": hold.account_id,
            "key": hold.key_id,
            "amount": hold.amount,
            "capped": hold.capped,
            "node": hold.node,
            "created": hold.created_at,
            "expires": hold.expires_at,
        },
    )
    await _write(
        tx,
        account=hold.account_id,
        key=hold.key_id,
        kind="reserve",
        amount=-hold.amount,
        balance=balance,
        request=hold.request_id,
        hold=hold.id,
        now=hold.created_at,
    )
    return None


async def resolve(tx: Tx, hold_id: str, cost: int | None, now: datetime) -> Resolution | None:
    """Settle a hold at `cost` credits, or refund it whole when `cost` is None. None when the
    hold was already closed (or never made): closing twice changes nothing."""
    state = "refunded" if cost is None else "settled"
    charge = cost or 0
    row = await tx.one(_CLOSE_HOLD, {"id": hold_id, "state": state, "cost": charge, "now": now})
    if row is None:
        return None
    request_id, account_id, key_id, amount, capped, created_at = row
    account = {"account": account_id}
    shortfall = 0
    if charge <= amount:
        found = await tx.one(_CREDIT, {**account, "amount": amount - charge})
        charged = charge
    else:
        # The call used more than its estimate: take the overrun as far as the balance goes.
        current = await tx.one(_BALANCE + tx.lock, account)
        assert current is not None
        taken = min(charge - amount, int(current[0]))
        found = await tx.one(_CREDIT, {**account, "amount": -taken})
        charged = amount + taken
        shortfall = charge - charged
        if shortfall:
            await tx.exec(_HOLD_COST, {"id": hold_id, "cost": charged})
            logger.warning(
                "charge short: the account could not cover the overrun",
                extra={"request_id": request_id, "account": account_id, "short": shortfall},
            )
    assert found is not None
    balance = int(found[0])
    if capped and charged != amount:
        day, month = period(aware(created_at))
        delta = {"key": key_id, "delta": charged - amount, "day": day, "month": month}
        await tx.exec(_SPEND_BACK, delta)
    await _write(
        tx,
        account=account_id,
        key=key_id,
        kind="settle" if cost is not None else "refund",
        amount=amount - charged,
        balance=balance,
        request=request_id,
        hold=hold_id,
        now=now,
    )
    return Resolution(charged, balance, shortfall)


async def move(
    tx: Tx,
    account_id: int,
    amount: int,
    note: str,
    now: datetime,
    *,
    key_id: int | None = None,
) -> int | None:
    """A top-up (amount > 0) or an adjustment (amount < 0, never below a zero balance), with
    its reason. The new balance, or None when the account is missing or would go negative."""
    row = await tx.one(
        "UPDATE accounts SET balance = balance + :amount "
        "WHERE id = :account AND balance + :amount >= 0 RETURNING balance",
        {"account": account_id, "amount": amount},
    )
    if row is None:
        return None
    balance = int(row[0])
    await _write(
        tx,
        account=account_id,
        key=key_id,
        kind="topup" if amount > 0 else "adjustment",
        amount=amount,
        balance=balance,
        note=note,
        now=now,
    )
    return balance


async def orphans(tx: Tx, node: str | None, now: datetime) -> list[tuple[str, int | None]]:
    """Holds no live request will close: those `node` left behind when it stopped without
    settling them (pass None once it is serving again), and those of any node past their
    expiry. Each with the cost its request is
    known to have had (a successful usage record), or None."""
    rows = await tx.all(
        "SELECT h.id, (SELECT MAX(u.cost) FROM usage_records u WHERE u.request_id = h.request_id "
        "AND u.status = 200) FROM holds h "
        "WHERE h.state = 'pending' AND (h.node = :node OR h.expires_at < :now)",
        {"node": node, "now": now},
    )
    return [(str(hold_id), None if cost is None else int(cost)) for hold_id, cost in rows]


def aware(value: Any) -> datetime:
    """A timestamp read back through either driver, as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)
