"""The ledger alone: what a metered call's credit steps cost, without HTTP around them.

Run `python bench/ledger.py [--pairs N] [--concurrency C] [--no-postgres]`. On a fresh SQLite
file and a fresh PostgreSQL database (the tests' server, 127.0.0.1:5432, or
NANOGATE_TEST_PG_URL), each migrated and holding one funded key, it runs reserve-then-settle
pairs through the journal one at a time (what a call at 1 connection waits for) and from C
tasks at once (group commit). "statements" submits them as `Meter` does: the reservation a
loose statement, the settle a durable one, each outside a transaction when alone in its batch
on PostgreSQL; one at a time also marked `alone` (no other call in flight), which on SQLite
runs each step at once in its caller. "transactions" submits them as plain transactions, as
every step ran before, for comparison. It prints ms per pair and pairs/s, and writes
bench/results/ledger.json. The usage record a real settle carries is left out: the same insert
on either side.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from common import ROOT, machine, postgres_database, run_script, write_json

from nanogate.access.keys import KeyRecord
from nanogate.billing import ledger
from nanogate.billing.keys import KeyStore
from nanogate.billing.ledger import Hold
from nanogate.billing.runners import Journal, open_runner
from nanogate.db import make_engine, run_migrations
from tests import postgres

_IDS = itertools.count()


def _hold(key: KeyRecord) -> Hold:
    now = datetime.now(UTC)
    return Hold(
        id=secrets.token_hex(12),
        request_id=f"bench-{next(_IDS):08x}",
        account_id=key.account_id,
        key_id=key.id,
        amount=100,
        capped=key.capped,
        created_at=now,
        expires_at=now + timedelta(minutes=10),
        node="bench",
        floor=10,
        worst=1_000,
    )


async def _pairs(
    journal: Journal, key: KeyRecord, count: int, *, meter_way: bool, alone: bool = False
) -> None:
    """`count` pairs one after the other; `meter_way`: submitted as statements, and `alone`
    as the meter marks a call with no other in flight (run at once on SQLite)."""
    for _ in range(count):
        hold = _hold(key)
        reserve = partial(ledger.reserve, hold=hold)
        loose = "loose" if meter_way else None
        refused = await journal.submit(reserve, statement=loose, alone=alone)
        assert refused is None, refused
        settle = partial(ledger.resolve, hold_id=hold.id, cost=19, now=datetime.now(UTC))
        await journal.submit(settle, statement="durable" if meter_way else None, alone=alone)


async def _measure(url: str, pairs: int, concurrency: int) -> list[dict[str, Any]]:
    engine = make_engine(url)
    _, key = await KeyStore(engine, 0).create("bench", credits=10**12)
    journal = Journal(open_runner(url, engine))
    journal.start()
    rows = []
    try:
        await _pairs(journal, key, 200, meter_way=True)  # warm: prepared statements, caches
        for mode in ("statements", "transactions"):
            for tasks in (1, concurrency):
                each = max(1, pairs // tasks)
                meter_way = mode == "statements"
                alone = meter_way and tasks == 1
                started = time.perf_counter()
                await asyncio.gather(
                    *(
                        _pairs(journal, key, each, meter_way=meter_way, alone=alone)
                        for _ in range(tasks)
                    )
                )
                elapsed = time.perf_counter() - started
                done = each * tasks
                rows.append(
                    {
                        "mode": mode,
                        "concurrency": tasks,
                        "pairs": done,
                        "ms_per_pair": 1000 * elapsed / done,
                        "pairs_per_s": done / elapsed,
                    }
                )
    finally:
        await journal.stop()
        await journal.runner.close()
        await engine.dispose()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": f"sqlite+aiosqlite:///{Path(tmp) / 'ledger.db'}"}
        if not args.no_postgres:
            urls["postgresql"] = postgres_database(stack, postgres.SERVER_URL)
        for name, url in urls.items():
            run_migrations(url)
            results[name] = asyncio.run(_measure(url, args.pairs, args.concurrency))
    head = ("database", "mode", "tasks", "pairs", "ms/pair", "pairs/s")
    print("{:<11} {:<12} {:>5} {:>6} {:>8} {:>8}".format(*head))
    for name, rows in results.items():
        for row in rows:
            print(
                f"{name:<11} {row['mode']:<12} {row['concurrency']:>5} {row['pairs']:>6} "
                f"{row['ms_per_pair']:>8.3f} {row['pairs_per_s']:>8,.0f}"
            )
    write_json(
        ROOT / "bench" / "results" / "ledger.json",
        {"machine": machine("asyncio"), "args": vars(args), "results": results},
    )
    return 0


if __name__ == "__main__":
    run_script(main)
