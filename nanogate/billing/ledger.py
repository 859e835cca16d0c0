"""The ledger: every movement of credits, as plain SQL that runs the same on SQLite and PostgreSQL.

Money moves in TigerBeetle's two phases. `reserve` takes a hold off the account's balance (a
`holds` row plus a `reserve` ledger row); `resolve` then posts the hold once: a settle gives back
what the call did not use (or takes an overrun, as far as the balance allows), a refund gives
back all of it. The account row is locked first, so a reserve decides on numbers no other
transaction can move, and a hold is closed only if it is still pending once its row is locked,
so a second settle or refund does nothing. The ledger's rows for an account always sum to its
balance.

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
operations into one commit. reserve, resolve and void are each written once (`_Operation`): one
statement on PostgreSQL, a read and its writes on SQLite.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal, Protocol

logger = logging.getLogger(__name__)

Row = tuple[Any, ...]

# The most credits a balance, a top-up or a spend cap may hold: a billion dollars. The BIGINT
# columns hold nine thousand times that, so no sum the ledger makes of them can overflow.
MAX_CREDITS = 10**15


class Tx(Protocol):
    """One open transaction, and how its database spells what differs between the two:
    `lock`, the row-lock suffix for a SELECT that is followed by an UPDATE of the same row
    (" FOR UPDATE" on PostgreSQL; SQLite's write lock already covers it); `chained`, whether
    a WITH clause may write (PostgreSQL), which makes each ledger operation one statement, one
    round trip; `utc_day`, the SQL of a timestamp column's UTC day ("YYYY-MM-DD"), `{}`
    standing for the column."""

    lock: str
    chained: bool
    utc_day: str

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
class Record:
    """A row a settle inserts in its own statement, so that both commit or neither (the call's
    usage record): its `values` by column, and `charged`, the column that gets what was
    charged. Not inserted when the hold was already closed."""

    table: str
    values: dict[str, Any]
    charged: str


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a hold was closed: what was charged, and the account's balance after."""

    charged: int
    balance: int
    shortfall: int = 0  # an overrun the balance could not cover: written off


def period(moment: datetime) -> tuple[str, str]:
    """The UTC day and month a spend counts in: ("2026-11-21", "2026-11")."""
    # isoformat, not strftime: half the time, and this runs twice per metered call.
    day = (moment if moment.tzinfo is UTC else moment.astimezone(UTC)).isoformat()[:10]
    return day, day[:7]


# Spend in the current period is the stored counter if it counts this period, else nothing yet.
_DAY_SPEND = "(CASE WHEN day_start = :day THEN day_spend ELSE 0 END)"
_MONTH_SPEND = "(CASE WHEN month_start = :month THEN month_spend ELSE 0 END)"
_INSERT_LEDGER = (
    "INSERT INTO ledger (account_id, key_id, kind, amount, balance_after, request_id, hold_id, "
    "note, created_at) VALUES (:account, :key, :kind, :amount, :balance, :request, :hold, "
    ":note, :now)"
)


async def _write(tx: Tx, **row: Any) -> None:
    params = {"key": None, "request": None, "hold": None, "note": None, **row}
    await tx.exec(_INSERT_LEDGER, params)


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: hashed as itself, for the cache
class _Operation:
    """A ledger operation as SQL, written once for both databases. `decide` is WITH clauses
    that lock the rows the operation reads and end in `d`: one row of `columns` saying what to
    do, or none (nothing to do). `writes` carry it out, each reading `d` and the operation's
    parameters; one named with a column of `d` does something only when that column is true
    (its own WHERE says so).

    On PostgreSQL the writes are WITH clauses of the same statement, so an operation is one
    round trip; all its clauses see the rows as `decide` locked them. SQLite's WITH cannot
    write: it reads `d`, then runs the writes `d` calls for, with `d` bound from that row.

    A write sets the balance from `d` (the locked row), never as `accounts.balance` plus a
    change: PostgreSQL checks a CHECK constraint on the row its statement's snapshot saw before
    it finds that row updated and moves to the newest, so a balance a concurrent settle had
    raised would fail `balance >= 0` on the stale one."""

    decide: str
    columns: tuple[str, ...]
    writes: tuple[tuple[str | None, str], ...]  # (the column of `d` it waits on, statement)


# On SQLite a write reads `d` from bound parameters: "d.amount" is ":d_amount", "FROM d" goes.
_D_COLUMN = re.compile(r"\bd\.(\w+)")
_FROM_D = re.compile(r" FROM d\b")


@cache
def _statements(
    op: _Operation, lock: str, chained: bool, utc_day: str
) -> tuple[str, tuple[tuple[str | None, str], ...], tuple[str, ...]]:
    """The statement that decides (on PostgreSQL, and writes), the writes that follow it, and
    the names they bind `d`'s columns as."""
    decide = op.decide.replace("{lock}", lock).replace("{day}", utc_day.format("created_at"))
    columns = ", ".join(op.columns)
    if chained:
        writes = ", ".join(f"w{i} AS ({write})" for i, (_, write) in enumerate(op.writes))
        return f"WITH {decide}, {writes} SELECT {columns} FROM d", (), ()
    bound = tuple(
        (when, _D_COLUMN.sub(r":d_\1", _FROM_D.sub("", write))) for when, write in op.writes
    )
    names = tuple(f"d_{column}" for column in op.columns)
    return f"WITH {decide} SELECT {columns} FROM d", bound, names


async def _apply(tx: Tx, op: _Operation, params: dict[str, Any]) -> dict[str, Any] | None:
    """Run `op`; its `d` row, or None when there was nothing to do."""
    first, writes, names = _statements(op, tx.lock, tx.chained, tx.utc_day)
    row = await tx.one(first, params)
    if row is None:
        return None
    decided = dict(zip(op.columns, row, strict=True))
    due = [write for when, write in writes if when is None or decided[when]]
    if due:
        bound = params | dict(zip(names, row, strict=True))
        for write in due:
            await tx.exec(write, bound)
    return decided


_WORST = "CAST(:worst AS BIGINT)"
_WORST_CASE = "COALESCE(hold_policy, :policy) = 'worst_case'"
_RESERVE = _Operation(
    decide=(
        "a AS (SELECT id, balance, exposure, uncovered, "
        f"CASE WHEN {_WORST_CASE} THEN {_WORST} ELSE CAST(:floor AS BIGINT) END AS floor, "
        f"CASE WHEN {_WORST_CASE} THEN {_WORST} ELSE CAST(:want AS BIGINT) END AS want "
        "FROM accounts WHERE id = :account{lock}), "
        # The key's counters are read (and locked) once the account's row is locked: every
        # transaction that moves them holds that lock, so none is missed, and locks are
        # always taken account first.
        f"k AS (SELECT daily_cap, monthly_cap, {_DAY_SPEND} AS day_spent, "
        f"{_MONTH_SPEND} AS month_spent FROM api_keys "
        "WHERE id = (SELECT CAST(:key AS INTEGER) FROM a WHERE :capped){lock}), "
        # What the balance and each cap leave room for; a missing cap leaves the room as is.
        "r AS (SELECT a.*, k.daily_cap, k.day_spent, k.monthly_cap, k.month_spent, "
        "CASE WHEN k.daily_cap - k.day_spent < a.balance THEN k.daily_cap - k.day_spent "
        "ELSE a.balance END AS room FROM a LEFT JOIN k ON 1 = 1), "
        "t AS (SELECT r.*, CASE WHEN monthly_cap - month_spent < room "
        "THEN monthly_cap - month_spent ELSE room END AS top FROM r), "
        # Covered: what the balance keeps after the hold pays the call's exposure (what it
        # could cost beyond the hold) with every other pending hold's.
        "o AS (SELECT id AS account, balance, "
        "CASE WHEN want < top THEN want ELSE top END AS amount, "
        f"CASE WHEN balance >= exposure + {_WORST} THEN 1 ELSE 0 END AS covered, "
        "CASE WHEN balance < floor THEN 'balance' "
        "WHEN day_spent + floor > daily_cap THEN 'daily_cap' "
        "WHEN month_spent + floor > monthly_cap THEN 'monthly_cap' "
        f"WHEN balance < exposure + {_WORST} AND uncovered >= :limit THEN 'busy' "
        "END AS refusal, daily_cap, day_spent, monthly_cap, month_spent FROM t), "
        "d AS (SELECT o.*, refusal IS NULL AS take, refusal IS NULL AND :capped AS spend "
        "FROM o)"
    ),
    columns=(
        "account",
        "balance",
        "amount",
        "covered",
        "refusal",
        "daily_cap",
        "day_spent",
        "monthly_cap",
        "month_spent",
        "take",
        "spend",
    ),
    writes=(
        (
            "take",
            "UPDATE accounts SET balance = d.balance - d.amount, "
            f"exposure = accounts.exposure + {_WORST} - d.amount, "
            "uncovered = accounts.uncovered + 1 - d.covered "
            "FROM d WHERE accounts.id = d.account AND d.take",
        ),
        (
            "spend",
            f"UPDATE api_keys SET day_spend = {_DAY_SPEND} + d.amount, day_start = :day, "
            f"month_spend = {_MONTH_SPEND} + d.amount, month_start = :month "
            "FROM d WHERE api_keys.id = :key AND d.spend",
        ),
        (
            "take",
            "INSERT INTO holds (id, request_id, account_id, key_id, amount, capped, exposure, "
            "uncovered, state, node, created_at, expires_at) SELECT :id, :request, d.account, "
            f":key, d.amount, :capped, {_WORST} - d.amount, d.covered = 0, 'pending', :node, "
            ":created, :expires FROM d WHERE d.take",
        ),
        (
            "take",
            "INSERT INTO ledger (account_id, key_id, kind, amount, balance_after, request_id, "
            "hold_id, created_at) SELECT d.account, :key, 'reserve', -d.amount, "
            "d.balance - d.amount, :request, :id, :created FROM d WHERE d.take",
        ),
    ),
)

# Closing a hold (resolve, void): `d` gives it back `credit` (negative: an overrun taken)
# with the exposure and uncovered count it added, charges `charged` and writes off
# `shortfall`; its ledger row moves `entry`, leaving `balance`. `spends`: the credit moves the
# key's spend counters (the hold counts against its caps).
_CLOSED = (
    "hold",
    "request",
    "account",
    "key",
    "spends",
    "day",
    "credit",
    "exposure",
    "uncovered",
    "charged",
    "shortfall",
    "entry",
    "balance",
)
_CLOSE: tuple[tuple[str | None, str], ...] = (
    (
        None,
        "UPDATE holds SET state = :state, cost = d.charged, resolved_at = :now "
        "FROM d WHERE holds.id = d.hold",
    ),
    (
        None,
        "UPDATE accounts SET balance = d.balance, exposure = "
        "accounts.exposure - d.exposure, uncovered = accounts.uncovered - d.uncovered "
        "FROM d WHERE accounts.id = d.account",
    ),
    # The key's counters move back by the credit, only if they still count the period the
    # hold was made in, and never below zero.
    (
        "spends",
        "UPDATE api_keys SET "
        "day_spend = CASE WHEN day_start = d.day THEN "
        "(CASE WHEN day_spend - d.credit > 0 THEN day_spend - d.credit ELSE 0 END) "
        "ELSE day_spend END, "
        "month_spend = CASE WHEN month_start = substr(d.day, 1, 7) THEN "
        "(CASE WHEN month_spend - d.credit > 0 THEN month_spend - d.credit ELSE 0 END) "
        "ELSE month_spend END FROM d WHERE api_keys.id = d.key AND d.spends",
    ),
    # A write-off first, then the entry takes the whole price: every row's balance_after is
    # one the account really had, and none is below zero.
    (
        None,
        "INSERT INTO ledger (account_id, key_id, kind, amount, balance_after, request_id, "
        "hold_id, note, created_at) SELECT account, key, kind, amount, balance, request, hold, "
        "note, :now FROM (SELECT 1 AS n, d.account AS account, d.key AS key, "
        "'writeoff' AS kind, d.shortfall AS amount, d.balance - d.entry AS balance, "
        "d.request AS request, d.hold AS hold, NULL AS note FROM d WHERE d.shortfall > 0 "
        "UNION ALL SELECT 2, d.account, d.key, :kind, d.entry, d.balance, d.request, d.hold, "
        ":note FROM d) AS x ORDER BY n",
    ),
)
_CHARGE = "CAST(:charge AS BIGINT)"
_RESOLVE = _Operation(
    decide=(
        "h AS (SELECT id, request_id, account_id, key_id, amount, capped, "
        "created_at, exposure, uncovered FROM holds "
        "WHERE id = :id AND state = 'pending'{lock}), "
        "a AS (SELECT balance FROM accounts "
        "WHERE id = (SELECT account_id FROM h){lock}), "
        # An overrun is taken as far as the balance goes; the rest is written off.
        f"c AS (SELECT h.*, a.balance, CASE WHEN {_CHARGE} - h.amount <= a.balance "
        f"THEN {_CHARGE} ELSE h.amount + a.balance END AS charged FROM h JOIN a ON 1 = 1), "
        "d AS (SELECT id AS hold, request_id AS request, account_id AS account, key_id AS key, "
        "capped AND amount <> charged AS spends, {day} AS day, amount - charged AS credit, "
        "exposure, "
        "CASE WHEN uncovered THEN 1 ELSE 0 END AS uncovered, charged, "
        f"{_CHARGE} - charged AS shortfall, amount - {_CHARGE} AS entry, "
        "balance + amount - charged AS balance FROM c)"
    ),
    columns=_CLOSED,
    writes=_CLOSE,
)


@cache
def _resolve_writing(table: str, columns: tuple[str, ...], charged: str) -> _Operation:
    """_RESOLVE, writing a `Record` too (its values bound as :r_<column>). PostgreSQL infers
    each parameter's type from the column it is inserted into."""
    values = ", ".join(f":r_{column}" for column in columns)
    insert = (
        f"INSERT INTO {table} ({', '.join(columns)}, {charged}) SELECT {values}, d.charged FROM d"
    )
    return _Operation(_RESOLVE.decide, _RESOLVE.columns, (*_RESOLVE.writes, (None, insert)))


# A settle that landed although its caller heard it fail, given back whole.
_GIVE_BACK = _Operation(
    decide=(
        "h AS (SELECT id, request_id, account_id, key_id, capped, created_at, "
        "COALESCE(cost, 0) AS cost FROM holds WHERE id = :id AND state = 'settled'{lock}), "
        "a AS (SELECT balance FROM accounts "
        "WHERE id = (SELECT account_id FROM h){lock}), "
        "d AS (SELECT id AS hold, request_id AS request, account_id AS account, key_id AS key, "
        "capped AND cost <> 0 AS spends, {day} AS day, cost AS credit, 0 AS exposure, "
        "0 AS uncovered, 0 AS charged, "
        "0 AS shortfall, cost AS entry, a.balance + cost AS balance FROM h JOIN a ON 1 = 1)"
    ),
    columns=_CLOSED,
    writes=_CLOSE,
)


async def reserve(tx: Tx, hold: Hold) -> Refusal | None:
    """Take the hold off the account (and count it against the key's caps), setting
    `hold.amount` to what was taken. None when done; a Refusal, with nothing changed, when the
    balance or a cap cannot cover the certain cost, or the account is busy (see above)."""
    day, month = period(hold.created_at)
    d = await _apply(
        tx,
        _RESERVE,
        {
            "account": hold.account_id,
            "key": hold.key_id,
            "capped": hold.capped,
            "policy": hold.policy,
            "want": hold.want,
            "floor": hold.floor,
            "worst": hold.worst,
            "limit": hold.uncovered_limit,
            "day": day,
            "month": month,
            "id": hold.id,
            "request": hold.request_id,
            "node": hold.node,
            "created": hold.created_at,
            "expires": hold.expires_at,
        },
    )
    if d is None:
        return Refusal("no_account")
    balance = int(d["balance"])
    match d["refusal"]:
        case None:
            hold.amount = int(d["amount"])
            return None
        case "daily_cap":
            return Refusal("daily_cap", balance, int(d["day_spent"]), int(d["daily_cap"]))
        case "monthly_cap":
            return Refusal("monthly_cap", balance, int(d["month_spent"]), int(d["monthly_cap"]))
        case reason:
            return Refusal(reason, balance)


async def resolve(
    tx: Tx, hold_id: str, cost: int | None, now: datetime, record: Record | None = None
) -> Resolution | None:
    """Settle a hold at `cost` credits, or refund it whole when `cost` is None, inserting
    `record` with it. None when the hold was already closed (or never made): closing twice
    changes nothing, and writes no record."""
    settle = cost is not None
    params = {
        "id": hold_id,
        "charge": cost or 0,
        "state": "settled" if settle else "refunded",
        "kind": "settle" if settle else "refund",
        "note": None,
        "now": now,
    }
    op = _RESOLVE
    if record is not None:
        op = _resolve_writing(record.table, tuple(record.values), record.charged)
        params.update({f"r_{column}": value for column, value in record.values.items()})
    d = await _apply(tx, op, params)
    if d is None:
        return None
    shortfall = int(d["shortfall"])
    if shortfall:
        logger.warning(
            "overrun written off: the account could not cover it",
            extra={"request_id": d["request"], "account": d["account"], "short": shortfall},
        )
    return Resolution(int(d["charged"]), int(d["balance"]), shortfall)


async def void(tx: Tx, hold_id: str, now: datetime) -> Resolution | None:
    """Leave the hold refunded, whatever became of it: refund it if pending, or give back a
    settle that landed although its caller heard it fail (PostgreSQL's connection died after
    COMMIT was sent), since the client was told it was not charged. None when it was already
    refunded."""
    resolution = await resolve(tx, hold_id, None, now)
    if resolution is not None:
        return resolution
    d = await _apply(
        tx,
        _GIVE_BACK,
        {
            "id": hold_id,
            "state": "refunded",
            "kind": "refund",
            "note": "settle given back: the client was told the call failed",
            "now": now,
        },
    )
    if d is None:
        return None
    logger.warning(
        "a settle its client heard fail had landed: given back",
        extra={"request_id": d["request"], "account": d["account"], "credits": d["entry"]},
    )
    return Resolution(0, int(d["balance"]))


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
    its reason. The new balance, or None when the account is missing or would go negative or
    above MAX_CREDITS."""
    row = await tx.one(
        "UPDATE accounts SET balance = balance + :amount "
        "WHERE id = :account AND balance + :amount >= 0 "
        "AND (:amount < 0 OR balance + :amount <= :most) RETURNING balance",
        {"account": account_id, "amount": amount, "most": MAX_CREDITS},
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
