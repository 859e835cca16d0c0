"""`nanogate accounts`, `keys create/topup/list` and `usage` run as real processes, on SQLite and
on a fresh PostgreSQL database each."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from nanogate.db import make_engine
from nanogate.db.tables import accounts, api_keys, ledger, usage_records
from nanogate.engine.usage import RECORD_COLUMNS

PREFIX = re.compile(r"^(ng_[0-9a-f]{8})_")


@dataclass
class Cli:
    env: dict[str, str]
    url: str

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "nanogate", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def ok(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc.stdout

    def fails(self, code: int, *args: str) -> str:
        """Runs a command that must fail with `code`; its one-line error message."""
        proc = self.run(*args)
        assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        return lines[0]

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args))

    def sql(self, statement: Any) -> list[Any]:
        async def go() -> list[Any]:
            engine = make_engine(self.url)
            try:
                async with engine.begin() as conn:
                    result = await conn.execute(statement)
                    return list(result.all()) if result.returns_rows else []
            finally:
                await engine.dispose()

        return asyncio.run(go())

    def key(self, *args: str) -> str:
        """`keys create ARGS`; the new key's prefix."""
        match = PREFIX.match(self.ok("keys", "create", *args).strip())
        assert match is not None
        return match[1]

    def key_id(self, prefix: str) -> int:
        return int(self.sql(select(api_keys.c.id).where(api_keys.c.prefix == prefix))[0][0])

    def assert_ledger_matches_balances(self) -> None:
        """Every account's ledger rows sum to its balance."""
        sums = (
            select(ledger.c.account_id, func.sum(ledger.c.amount).label("total"))
            .group_by(ledger.c.account_id)
            .subquery()
        )
        rows = self.sql(
            select(accounts.c.name, accounts.c.balance, func.coalesce(sums.c.total, 0)).outerjoin(
                sums, sums.c.account_id == accounts.c.id
            )
        )
        assert rows
        for name, balance, total in rows:
            assert int(total) == int(balance), name


@pytest.fixture
def cli(database_env: dict[str, str], tmp_path: Path) -> Cli:
    """The command line on a fresh SQLite data dir, or on a fresh PostgreSQL database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOGATE_")}
    env["NANOGATE_DATA_DIR"] = str(tmp_path / "data")
    env.update(database_env)
    default = f"sqlite+aiosqlite:///{(tmp_path / 'data' / 'nanogate.db').resolve()}"
    cli = Cli(env, database_env.get("NANOGATE_DATABASE_URL", default))
    cli.ok("migrate")
    return cli


def _without_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "created_at"} for row in rows]


def test_accounts_create_list_show_topup(cli: Cli) -> None:
    assert cli.ok("accounts", "create", "acme", "--credits", "1000").strip() == (
        "created account 1 acme: balance 1,000"
    )
    assert cli.ok("accounts", "create", "beta").strip() == "created account 2 beta: balance 0"
    assert "already exists" in cli.fails(1, "accounts", "create", "acme")
    assert "all digits" in cli.fails(2, "accounts", "create", "42")

    topup = ("accounts", "topup")
    assert cli.ok(*topup, "acme", "500").strip() == "account 1 acme: balance 1,500 (+500)"
    # Negative amounts: after `--` (options may follow), bare, and as --amount.
    out = cli.ok(*topup, "acme", "--", "-300", "--reason", "refund of a mistake")
    assert out.strip() == "account 1 acme: balance 1,200 (-300)"
    assert cli.ok(*topup, "acme", "-200").strip() == "account 1 acme: balance 1,000 (-200)"
    out = cli.ok(*topup, "acme", "--amount", "-50", "--reason", "fee")
    assert out.strip() == "account 1 acme: balance 950 (-50)"
    assert cli.ok(*topup, "2", "250", "--reason", "by id").strip() == (
        "account 2 beta: balance 250 (+250)"
    )
    # Refused: below zero, zero, no amount, an unknown account, an unknown option.
    message = cli.fails(1, *topup, "acme", "--", "-951", "--reason", "too much")
    assert message == "error: An adjustment of -951 would take the balance (950) below zero."
    assert cli.fails(2, *topup, "acme", "0") == "error: the amount must not be zero"
    assert "missing the amount" in cli.fails(2, *topup, "acme")
    assert "give the amount once" in cli.fails(2, *topup, "acme", "5", "--amount", "6")
    assert cli.fails(1, *topup, "nope", "5").startswith("error: no account 'nope'")
    assert cli.run(*topup, "acme", "5", "--reasn", "x").returncode == 2
    assert cli.fails(1, "accounts", "show", "nope").startswith("error: no account 'nope'")

    listed = cli.json("accounts", "list", "--format", "json")
    assert _without_times(listed) == [
        {"id": 1, "name": "acme", "balance": 950, "held": 0, "keys": 0},
        {"id": 2, "name": "beta", "balance": 250, "held": 0, "keys": 0},
    ]
    rows = list(csv.DictReader(io.StringIO(cli.ok("accounts", "list", "--format", "csv"))))
    assert [(r["id"], r["name"], r["balance"], r["held"], r["keys"]) for r in rows] == [
        ("1", "acme", "950", "0", "0"),
        ("2", "beta", "250", "0", "0"),
    ]
    table = cli.ok("accounts", "list")
    assert re.search(r"│ 1\s+│ acme\s+│ 950\s+│ 0\s+│ 0\s+│", table), table

    shown = cli.json("accounts", "show", "acme", "--format", "json")
    assert shown["account"]["balance"] == 950
    assert shown["keys"] == []
    assert [(r["kind"], r["amount"], r["balance_after"], r["note"]) for r in shown["ledger"]] == [
        ("adjustment", -50, 950, "fee"),
        ("adjustment", -200, 1000, "adjustment from the command line"),
        ("adjustment", -300, 1200, "refund of a mistake"),
        ("topup", 500, 1500, "top-up from the command line"),
        ("topup", 1000, 1000, "starting credits"),
    ]
    table = cli.ok("accounts", "show", "1")
    assert "account 1 acme: balance 950, held 0, 0 keys" in table
    assert re.search(r"│ adjustment\s+│ -200\s+│ 1,000\s+│\s+│ adjustment from the", table)
    assert re.search(r"│ topup\s+│ \+1,000\s+│ 1,000\s+│\s+│ starting credits", table)

    count = cli.sql(select(func.count()).select_from(ledger))[0][0]
    assert count == 6  # the refused adjustment wrote nothing
    cli.assert_ledger_matches_balances()


def test_accounts_hold_policy(cli: Cli) -> None:
    cli.ok("accounts", "create", "careful", "--hold-policy", "worst_case")
    shown = cli.json("accounts", "show", "careful", "--format", "json")
    assert shown["account"]["hold_policy"] == "worst_case"
    assert shown["account"]["written_off"] == 0
    assert "hold policy: worst_case" in cli.ok("accounts", "show", "careful")
    assert cli.ok("accounts", "policy", "careful", "default").strip().endswith("default")
    shown = cli.json("accounts", "show", "careful", "--format", "json")
    assert shown["account"]["hold_policy"] is None
    assert "hold policy: fair (the gateway's setting)" in cli.ok("accounts", "show", "careful")
    cli.ok("accounts", "policy", "careful", "fair")
    assert (
        cli.json("accounts", "show", "careful", "--format", "json")["account"]["hold_policy"]
        == "fair"
    )
    assert "policy must be one of" in cli.fails(2, "accounts", "policy", "careful", "lavish")
    assert cli.run("accounts", "create", "x", "--hold-policy", "lavish").returncode == 2


def test_keys_on_one_account_share_its_balance(cli: Cli) -> None:
    cli.ok("accounts", "create", "acme", "--credits", "100")
    one = cli.key("--account", "acme", "--name", "one", "--daily-cap", "40")
    two = cli.key("--account", "1", "--name", "two", "--credits", "60", "--monthly-cap", "1234567")

    shown = cli.json("accounts", "show", "acme", "--format", "json")
    assert shown["account"]["balance"] == 160
    assert shown["account"]["keys"] == 2
    assert shown["keys"] == [
        {"prefix": one, "name": "one", "status": "active", "daily_cap": 40, "monthly_cap": None},
        {
            "prefix": two,
            "name": "two",
            "status": "active",
            "daily_cap": None,
            "monthly_cap": 1234567,
        },
    ]
    table = cli.ok("accounts", "show", "acme")
    assert re.search(rf"│ {one}\s+│ one\s+│ active\s+│ 40\s+│\s+│", table), table
    assert re.search(rf"│ {two}\s+│ two\s+│ active\s+│\s+│ 1,234,567\s+│", table), table

    # The shortcut tops up the key's account, and the ledger row names the key.
    out = cli.ok("keys", "topup", one, "25", "--reason", "from key one")
    assert out.strip() == f"{one}: account acme (id 1) balance 185 (+25)"
    out = cli.ok("keys", "topup", two, "--", "-10")
    assert out.strip() == f"{two}: account acme (id 1) balance 175 (-10)"
    assert "below zero" in cli.fails(1, "keys", "topup", two, "--amount", "-176")
    assert cli.fails(1, "keys", "topup", "ng_00000000", "5") == (
        "error: no key with prefix 'ng_00000000' (`nanogate keys list` shows them)"
    )

    rows = cli.sql(
        select(ledger.c.key_id, ledger.c.kind, ledger.c.amount, ledger.c.note).order_by(ledger.c.id)
    )
    assert [tuple(r) for r in rows] == [
        (None, "topup", 100, "starting credits"),
        (cli.key_id(two), "topup", 60, f"credits for new key {two}"),
        (cli.key_id(one), "topup", 25, "from key one"),
        (cli.key_id(two), "adjustment", -10, "adjustment from the command line"),
    ]

    listed = cli.ok("keys", "list")
    assert re.search(rf"│ {one}\s+│ one\s+│\s+│ active\s+│ acme\s+│ 175\s+│ 40\s+│\s+│", listed)
    assert re.search(
        rf"│ {two}\s+│ two\s+│\s+│ active\s+│ acme\s+│ 175\s+│\s+│ 1,234,567\s+│", listed
    )

    # Without --account a key gets an account of its own, named after its prefix.
    own = cli.key("--name", "solo", "--credits", "7")
    assert _without_times(cli.json("accounts", "list", "--format", "json")) == [
        {"id": 1, "name": "acme", "balance": 175, "held": 0, "keys": 2},
        {"id": 2, "name": own, "balance": 7, "held": 0, "keys": 1},
    ]

    message = cli.fails(2, "keys", "create", "--account", "nope")
    assert message.startswith("error: no account 'nope'")
    assert cli.sql(select(func.count()).select_from(api_keys))[0][0] == 3
    cli.assert_ledger_matches_balances()


def test_keys_create_with_image_output(cli: Cli) -> None:
    urls = cli.key("--name", "urls", "--image-output", "url", "--rpm", "30")
    data = cli.key("--name", "data", "--image-output", "data")
    plain = cli.key("--name", "plain")
    rows = cli.sql(select(api_keys.c.prefix, api_keys.c.image_output).order_by(api_keys.c.id))
    assert [tuple(r) for r in rows] == [(urls, "url"), (data, "data"), (plain, None)]

    listed = cli.ok("keys", "list")
    assert "image output" in listed.splitlines()[1], listed
    assert re.search(rf"│ {urls}\s+│ urls\s+│.*│ 30\s+│\s+│ url\s+│$", listed, re.M), listed
    assert re.search(rf"│ {data}\s+│ data\s+│.*│ data\s+│$", listed, re.M), listed
    assert re.search(rf"│ {plain}\s+│ plain\s+│.*│\s+│$", listed, re.M), listed

    proc = cli.run("keys", "create", "--image-output", "b64_json")
    assert proc.returncode == 2
    assert "--image-output" in proc.stderr and "'b64_json' is not one of" in proc.stderr
    assert cli.sql(select(func.count()).select_from(api_keys))[0][0] == 3


def _at(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour, 0, 0, 123456), UTC)


def test_usage_summaries(cli: Cli) -> None:
    cli.ok("accounts", "create", "acme")
    cli.ok("accounts", "create", "beta")
    a1 = cli.key("--account", "acme")
    a2 = cli.key("--account", "acme")
    b1 = cli.key("--account", "beta")
    today = datetime.now(UTC).date()
    day = [today - timedelta(days=n) for n in range(41)]
    flash, pro = "gemini-2.5-flash-image", "gemini-3-pro-image-preview"
    # (request, key prefix, account, model, status, images, tokens, cost, when)
    data = [
        ("r1", a1, 1, flash, 200, 1, 1300, 39000, _at(day[0], 10)),
        ("r2", a1, 1, pro, 200, 2, 2600, 268000, _at(day[1], 8)),
        ("r3", a2, 1, flash, 400, 0, 0, 0, _at(day[1], 9)),
        ("r4", b1, 2, flash, 200, 1, 1290, 39000, _at(day[2], 23)),
        ("r5", b1, 2, pro, 500, 0, 12, 0, _at(day[0], 11)),
        ("r6", a1, 1, flash, 200, 1, 1300, 39000, _at(day[40], 12)),  # outside 30 days
        # No key, so no account, and no model: authentication fails before the body is read.
        ("r7", "", None, "", 401, 0, 0, 0, _at(day[0], 9)),
    ]
    ids = {prefix: cli.key_id(prefix) for prefix in (a1, a2, b1)}
    cli.sql(
        insert(usage_records).values(
            [
                {
                    "request_id": rid,
                    "key_id": ids.get(prefix),
                    "key_prefix": prefix,
                    "account_id": account,
                    "dialect": "gemini",
                    "method": "generateContent",
                    "model": model,
                    "upstream": "demo",
                    "status": status,
                    "latency_ms": 5,
                    "total_tokens": tokens,
                    "images": images,
                    "cost": cost,
                    "created_at": when,
                }
                for rid, prefix, account, model, status, images, tokens, cost, when in data
            ]
        )
    )

    def totals(*values: int) -> dict[str, int]:
        return dict(zip(("requests", "errors", "images", "tokens", "credits"), values, strict=True))

    by_account = cli.json("usage", "--by", "account", "--format", "json")
    assert by_account == [
        {"account": "acme", **totals(3, 1, 3, 3900, 307000)},
        {"account": "beta", **totals(2, 1, 1, 1302, 39000)},
        {"account": None, **totals(1, 1, 0, 0, 0)},
    ]
    assert cli.json("usage", "--by", "key", "--format", "json") == [
        {"key": a1, **totals(2, 0, 3, 3900, 307000)},
        {"key": b1, **totals(2, 1, 1, 1302, 39000)},
        *sorted(
            [{"key": "", **totals(1, 1, 0, 0, 0)}, {"key": a2, **totals(1, 1, 0, 0, 0)}],
            key=lambda row: row["key"],
        ),
    ]
    assert cli.json("usage", "--by", "model", "--format", "json") == [
        {"model": pro, **totals(2, 1, 2, 2612, 268000)},
        {"model": flash, **totals(3, 1, 2, 2590, 78000)},
        {"model": "", **totals(1, 1, 0, 0, 0)},
    ]
    by_day = [
        {"day": day[2].isoformat(), **totals(1, 0, 1, 1290, 39000)},
        {"day": day[1].isoformat(), **totals(2, 1, 2, 2600, 268000)},
        {"day": day[0].isoformat(), **totals(3, 2, 1, 1312, 39000)},
    ]
    assert cli.json("usage", "--by", "day", "--format", "json") == by_day
    assert cli.json("usage", "--by", "day", "--days", "2", "--format", "json") == by_day[1:]
    assert cli.json("usage", "--by", "day", "--days", "41", "--format", "json") == [
        {"day": day[40].isoformat(), **totals(1, 0, 1, 1300, 39000)},
        *by_day,
    ]
    assert cli.json("usage", "--by", "model", "--key", a1, "--format", "json") == [
        {"model": pro, **totals(1, 0, 2, 2600, 268000)},
        {"model": flash, **totals(1, 0, 1, 1300, 39000)},
    ]

    assert cli.ok("usage", "--by", "account", "--format", "csv").splitlines() == [
        "account,requests,errors,images,tokens,credits",
        "acme,3,1,3,3900,307000",
        "beta,2,1,1,1302,39000",
        ",1,1,0,0,0",
    ]
    assert cli.ok("usage", "--by", "day", "--format", "csv").splitlines() == [
        "day,requests,errors,images,tokens,credits",
        f"{day[2].isoformat()},1,0,1,1290,39000",
        f"{day[1].isoformat()},2,1,2,2600,268000",
        f"{day[0].isoformat()},3,2,1,1312,39000",
    ]
    # Tables group digits in thousands; a group with no account, key or model says so.
    table = cli.ok("usage", "--by", "account")
    assert re.search(r"│ acme\s+│ 3\s+│ 1\s+│ 3\s+│ 3,900\s+│ 307,000\s+│", table), table
    assert re.search(r"│ beta\s+│ 2\s+│ 1\s+│ 1\s+│ 1,302\s+│ 39,000\s+│", table), table
    assert re.search(r"│ \(none\)\s+│ 1\s+│ 1\s+│ 0\s+│ 0\s+│ 0\s+│", table), table
    table = cli.ok("usage", "--by", "model")
    assert re.search(rf"│ {flash}\s+│ 3\s+│ 1\s+│ 2\s+│ 2,590\s+│ 78,000\s+│", table), table
    assert re.search(r"│ \(none\)\s+│ 1\s+│ 1\s+│ 0\s+│ 0\s+│ 0\s+│", table), table
    assert not re.search(r"^│\s+│", table, re.M), table
    table = cli.ok("usage", "--by", "key")
    assert re.search(r"│ \(none\)\s+│ 1\s+│ 1\s+│ 0\s+│ 0\s+│ 0\s+│", table), table

    # The record listing: newest first, with cost, in every format.
    recent = cli.json("usage", "--limit", "3", "--format", "json")
    assert [(r["request_id"], r["cost"], r["account_id"]) for r in recent] == [
        ("r5", 0, 2),
        ("r1", 39000, 1),
        ("r7", 0, None),
    ]
    assert set(recent[0]) == set(RECORD_COLUMNS)
    assert [r["request_id"] for r in cli.json("usage", "--days", "1", "--format", "json")] == [
        "r5",
        "r1",
        "r7",
    ]
    rows = list(csv.DictReader(io.StringIO(cli.ok("usage", "--key", a1, "--format", "csv"))))
    assert [(r["request_id"], r["cost"], r["model"]) for r in rows] == [
        ("r1", "39000", flash),
        ("r2", "268000", pro),
        ("r6", "39000", flash),
    ]
    table = cli.ok("usage", "--limit", "1")
    assert re.search(
        rf"│ {b1}\s+│ gemini\s+│ {pro}\s+│ demo\s+│ 500\s+│ 5\s+│ 12\s+│ 0\s+│ 0\s+│", table
    )
    table = cli.ok("usage", "--key", a1, "--limit", "1")
    row = rf"│ {a1}\s+│ gemini\s+│ {flash}\s+│ demo\s+│ 200\s+│ 5\s+│ 1,300\s+│ 1\s+│ 39,000\s+│"
    assert re.search(row, table), table
    assert cli.run("usage", "--by", "week").returncode == 2
