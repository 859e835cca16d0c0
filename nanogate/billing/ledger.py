"""The ledger: every movement of credits, as plain SQL that runs the same on SQLite and PostgreSQL.

Money moves in TigerBeetle's two phases. `reserve` takes a hold off the account's balance (a
`holds` row plus a `reserve` ledger row); `resolve` then posts the hold once: a settle gives back
what the call did not use (or takes an overrun, as far as the balance allows), a refund gives
back all of it. The account row is locked first, so a reserve decides on numbers no other
transaction can move, and a hold is closed only by a conditional UPDATE on its state, so a
second settle or refund does nothing. The ledger's rows for an account always sum to its balance.

How much a hold takes (the "fair" policy, the default): a call is admitted when the balance (and
the key's caps) cover its certain cost (`Hold.floor`: its input and the images it asks for); it
holds that plus an output allowance (`Hold.amount`), as far as the balance allows. What it could
still cost beyond its hold (`Hold.worst` minus the hold) is its exposure. A call whose exposure,
with every other pending hold's, the rest of the balance covers is "covered": an overrun is
always paid from the balance. A call the balance does not cover is "uncovered", and an account
runs at most `Hold.uncovered_limit` of those at once; a further one is refused as "busy" (the
meter waits and tries again). An overrun the balance cannot pay is written off, so what can be
written off on an account is at most `uncovered_limit` calls' exposure between two top-ups:
once the balance is zero, nothing new is admitted. "worst_case" holds the worst case and never
writes anything off.

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


Policy = Literal["fair", "worst_case"]
CapReason = Literal["daily_cap", "monthly_cap"]


@dataclass(slots=True)
class Hold:
    """A reservation, as the request that made it keeps it. `amount` is what it asks to hold
    (kept as `want`); `reserve` sets it to what it took, between `floor` and `want`."""

    id: str
    request_id: str
    account_id: int
    key_id: int | None
    amount: int
    capped: bool  # counted against the key's daily/monthly spend caps
    created_at: datetime
    expires_at: datetime
    node: str
    floor: int = -1  # the certain cost: the least to hold (-1: all of `amount`)
    worst: int = -1  # the most the call can cost (-1: `amount`)
    policy: Policy = "fair"  # unless the account says otherwise
    uncovered_limit: int = 0  # calls the balance does not cover an account may run at once
    want: int = -1  # -1: `amount`

    def __post_init__(self) -> None:
        if self.want < 0:
            self.want = self.amount
        if self.floor < 0:
            self.floor = self.amount
        self.worst = max(self.worst, self.amount)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation was refused, with the numbers for the client's message."""

    # busy: the account already runs as many calls as its balance leaves uncovered
    reason: Literal["balance", "no_account", "busy"] | CapReason
    balance: int = 0
    spent: int = 0
    cap: int = 0


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a hold was closed: what was charged, and the account's balance after."""

    charged: int
    balance: int
    shortfall: int = 0  # an overrun the balance could not cover: written off


def period(moment: datetime) -> tuple[str, str]:
    """The UTC day and month a spend counts in: ("2026-11-21", "2026-11")."""
    day = moment.astimezone(UTC).strftime("%Y-%m-%d")
    return day, day[:7]


_ACCOUNT = "SELECT balance, exposure, uncovered, hold_policy FROM accounts WHERE id = :account"
# `balance >= :amount` cannot fail once the row is locked; it stays as the belt to the braces.
_DEBIT = (
    "UPDATE accounts SET balance = balance - :amount, exposure = exposure + :exposure, "
    "uncovered = uncovered + :uncovered "
    "WHERE id = :account AND balance >= :amount RETURNING balance"
)
_CREDIT = (
    "UPDATE accounts SET balance = balance + :amount, exposure = exposure - :exposure, "
    "uncovered = uncovered - :uncovered WHERE id = :account RETURNING balance"
)
_BALANCE = "SELECT balance FROM accounts WHERE id = :account"
# Spend in the current period is the stored counter if it counts this period, else nothing yet.
_DAY_SPEND = "(CASE WHEN day_start = :day THEN day_spend ELSE 0 END)"
_MONTH_SPEND = "(CASE WHEN month_start = :month THEN month_spend ELSE 0 END)"
_SPEND = (
    f"UPDATE api_keys SET day_spend = {_DAY_SPEND} + :amount, day_start = :day, "
    f"month_spend = {_MONTH_SPEND} + :amount, month_start = :month WHERE id = :key"
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
    "INSERT INTO holds (id, request_id, account_id, key_id, amount, capped, exposure, "
    "uncovered, state, node, created_at, expires_at) VALUES (:id, :request, :account, :key, "
    ":amount, :capped, :exposure, :uncovered, 'pending', :node, :created, :expires)"
)
_CLOSE_HOLD = (
    "UPDATE holds SET state = :state, cost = :cost, resolved_at = :now "
    "WHERE id = :id AND state = 'pending' "
    "RETURNING request_id, account_id, key_id, amount, capped, created_at, exposure, uncovered"
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
    """Take the hold off the account (and count it against the key's caps), setting
    `hold.amount` to what was taken. None when done; a Refusal, with nothing changed, when the
    balance or a cap cannot cover the certain cost, or the account is busy (see above)."""
    found = await tx.one(_ACCOUNT + tx.lock, {"account": hold.account_id})
    if found is None:
        return Refusal("no_account")
    balance, exposure, uncovered = int(found[0]), int(found[1]), int(found[2])
    if (found[3] or hold.policy) == "worst_case":
        want = floor = hold.worst
    else:
        want, floor = hold.want, hold.floor
    if balance < floor:
        return Refusal("balance", balance)
    room = balance
    day, month = period(hold.created_at)
    spend = {"key": hold.key_id, "day": day, "month": month}
    if hold.capped:
        caps = await tx.one(_CAPS, spend)
        assert caps is not None
        daily_cap, monthly_cap, day_spent, month_spent = (
            None if v is None else int(v) for v in caps
        )
        checks: tuple[tuple[CapReason, int | None, int | None], ...] = (
            ("daily_cap", daily_cap, day_spent),
            ("monthly_cap", monthly_cap, month_spent),
        )
        for reason, cap, spent in checks:
            if cap is not None and spent is not None:
                if spent + floor > cap:
                    return Refusal(reason, balance, spent, cap)
                room = min(room, cap - spent)
    amount = min(want, room)
    extra = hold.worst - amount
    covered = balance - amount >= exposure + extra
    if not covered and uncovered >= hold.uncovered_limit:
        return Refusal("busy", balance)
    hold.amount = amount
    moved = {
        "account": hold.account_id,
        "amount": amount,
        "exposure": extra,
        "uncovered": 0 if covered else 1,
    }
    row = await tx.one(_DEBIT, moved)
    assert row is not None  # the row is locked and its balance was checked above
    if hold.capped:
        await tx.exec(_SPEND, {**spend, "amount": amount})
    await tx.exec(
        _INSERT_HOLD,
        {
            "id": hold.id,
            "request": hold.request_id,
            "account": hold.account_id,
            "key": hold.key_id,
            "amount": amount,
            "capped": hold.capped,
            "exposure": extra,
            "uncovered": not covered,
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
        amount=-amount,
        balance=int(row[0]),
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
    request_id, account_id, key_id, amount, capped, created_at, exposure, uncovered = row
    released = {"account": account_id, "exposure": int(exposure), "uncovered": int(bool(uncovered))}
    entry = {"account": account_id, "key": key_id, "request": request_id, "hold": hold_id}
    shortfall = 0
    if charge <= amount:
        found = await tx.one(_CREDIT, {**released, "amount": amount - charge})
        charged = charge
    else:
        # The call used more than its hold: take the overrun as far as the balance goes, and
        # write off the rest (the account row is locked by the UPDATE's read).
        current = await tx.one(_BALANCE + tx.lock, {"account": account_id})
        assert current is not None
        taken = min(charge - amount, int(current[0]))
        found = await tx.one(_CREDIT, {**released, "amount": -taken})
        charged = amount + taken
        shortfall = charge - charged
        if shortfall:
            await tx.exec(_HOLD_COST, {"id": hold_id, "cost": charged})
            logger.warning(
                "overrun written off: the account could not cover it",
                extra={"request_id": request_id, "account": account_id, "short": shortfall},
            )
    assert found is not None
    balance = int(found[0])
    if capped and charged != amount:
        day, month = period(aware(created_at))
        delta = {"key": key_id, "delta": charged - amount, "day": day, "month": month}
        await tx.exec(_SPEND_BACK, delta)
    if shortfall:
        # Forgiven first, then the settle takes the whole price: every row's balance_after
        # is one the account really had, and none is below zero.
        await _write(
            tx,
            **entry,
            kind="writeoff",
            amount=shortfall,
            balance=balance + charge - amount,
            now=now,
        )
    await _write(
        tx,
        **entry,
        kind="settle" if cost is not None else "refund",
        amount=amount - charge,
        balance=balance,
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
