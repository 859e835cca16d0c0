"""Soak: mixed dialects with injected faults for a long while, watching the gateway's memory and
open file descriptors. Not part of the test suite: `python bench/soak.py [--minutes 10]`.

One simulator and one metered `nanogate serve` (SQLite, the default), driven by `--concurrency`
clients in this process. Each request picks a dialect (Gemini generateContent, its SSE stream,
OpenAI chat completions, OpenAI images, the task API) and, one time in four, a fault written
into its prompt for the simulator (`[[sim:...]]`: a 500, a 429, a reset connection, a malformed
body, a broken stream, a delay). Once a minute it prints the gateway's RSS and open descriptors
and the requests answered by status; at the end, the ledger must sum to the balances and no hold
may be pending.

Flat means: RSS in the last minute within 15% of the second minute's (the first warms caches
and pools), and open descriptors within 32 of it. The verdict is printed and the exit status is
1 when either grew. Everything, per minute, goes to bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from common import (
    ROOT,
    SIM_KEY,
    Server,
    gateway_env,
    interrupt_on_signals,
    launch_gateway,
    start_simulator,
    status_kib,
    write_json,
)

from tests.simulator.processes import free_port

FAULTS = (
    "status=500",
    "status=429,retry_after=1",
    "reset=true",
    "malformed=true",
    "stream_break=true",
    "delay=1.5",
)
TEXT_MODEL = "gemini-2.5-flash"
IMAGE_MODEL = "gemini-2.5-flash-image"


def prompt(rng: random.Random) -> str:
    words = "a lighthouse at dusk in watercolour"
    if rng.random() < 0.25:
        return f"{words} [[sim:{rng.choice(FAULTS)}]]"
    return words


async def one(
    session: aiohttp.ClientSession, gw: Server, rng: random.Random, statuses: Counter[str]
) -> None:
    kind = rng.choice(("gemini", "stream", "chat", "images", "task"))
    text = prompt(rng)
    key = {"x-goog-api-key": gw.key}
    bearer = {"Authorization": f"Bearer {gw.key}"}
    try:
        if kind == "gemini":
            url = f"{gw.url}/v1beta/models/{TEXT_MODEL}:generateContent"
            body: dict[str, Any] = {"contents": [{"parts": [{"text": text}]}]}
            async with session.post(url, json=body, headers=key) as resp:
                await resp.read()
        elif kind == "stream":
            url = f"{gw.url}/v1beta/models/{TEXT_MODEL}:streamGenerateContent?alt=sse"
            body = {"contents": [{"parts": [{"text": text}]}]}
            async with session.post(url, json=body, headers=key) as resp:
                async for _ in resp.content.iter_any():
                    pass
        elif kind == "chat":
            body = {"model": TEXT_MODEL, "messages": [{"role": "user", "content": text}]}
            url = f"{gw.url}/v1/chat/completions"
            async with session.post(url, json=body, headers=bearer) as resp:
                await resp.read()
        elif kind == "images":
            body = {"model": IMAGE_MODEL, "prompt": text}
            url = f"{gw.url}/v1/images/generations"
            async with session.post(url, json=body, headers=bearer) as resp:
                await resp.read()
        else:
            body = {"model": "google/nano-banana", "input": {"prompt": text}}
            url = f"{gw.url}/api/v1/jobs/createTask"
            async with session.post(url, json=body, headers=bearer) as resp:
                await resp.read()
        statuses[f"{kind} {resp.status}"] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        statuses[f"{kind} {type(exc).__name__}"] += 1


async def client(
    gw: Server, until: float, seed: int, statuses: Counter[str], session: aiohttp.ClientSession
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        await one(session, gw, rng, statuses)


def sample(pid: int) -> dict[str, int]:
    return {"rss_kib": status_kib(pid, "VmRSS"), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def soak(gw: Server, minutes: float, concurrency: int) -> list[dict[str, Any]]:
    start = time.monotonic()
    until = start + minutes * 60
    statuses: Counter[str] = Counter()
    timeout = aiohttp.ClientTimeout(total=120)
    minutes_seen: list[dict[str, Any]] = [{"minute": 0, **sample(gw.pid), "answers": {}}]
    print(f"minute 0: {minutes_seen[0]}", flush=True)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        clients = [
            asyncio.create_task(client(gw, until, seed, statuses, session))
            for seed in range(concurrency)
        ]
        minute = 1
        while time.monotonic() < until:
            await asyncio.sleep(min(60.0, max(0.0, start + minute * 60 - time.monotonic())))
            row = {"minute": minute, **sample(gw.pid), "answers": dict(statuses)}
            statuses.clear()
            minutes_seen.append(row)
            answered = sum(row["answers"].values())
            print(
                f"minute {minute}: RSS {row['rss_kib'] / 1024:.1f} MiB, {row['fds']} fds, "
                f"{answered} answers",
                flush=True,
            )
            minute += 1
        await asyncio.gather(*clients)
    return minutes_seen


def ledger(db: Path) -> dict[str, Any]:
    with sqlite3.connect(db) as conn:
        mismatched = conn.execute(
            "SELECT COUNT(*) FROM accounts a WHERE a.balance != "
            "(SELECT COALESCE(SUM(amount), 0) FROM ledger l WHERE l.account_id = a.id)"
        ).fetchone()[0]
        pending = conn.execute("SELECT COUNT(*) FROM holds WHERE state = 'pending'").fetchone()[0]
    return {"accounts_not_summing": mismatched, "holds_pending": pending}


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    base = rows[min(2, len(rows) - 1)]
    last = rows[-1]
    rss_growth = last["rss_kib"] / base["rss_kib"] - 1
    fd_growth = last["fds"] - base["fds"]
    return {
        "rss_growth": round(rss_growth, 3),
        "fd_growth": fd_growth,
        "flat": rss_growth <= 0.15 and fd_growth <= 32,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with interrupt_on_signals(), ExitStack() as stack, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sim = start_simulator(stack, tmp, None)
        config = tmp / "nanogate.yaml"
        upstream = {"name": "sim", "kind": "gemini", "base_url": sim.url, "api_key": SIM_KEY}
        config.write_text(yaml.safe_dump({"upstreams": [upstream]}))
        port = free_port()
        gw = launch_gateway(stack, tmp, port, gateway_env(tmp, port, config))
        rows = asyncio.run(soak(gw, args.minutes, args.concurrency))
        # The last tasks run on after their creates were answered: wait for their ends.
        db = tmp / "data" / "nanogate.db"
        deadline = time.monotonic() + 120
        while (money := ledger(db))["holds_pending"] and time.monotonic() < deadline:
            time.sleep(1)
    result = {"minutes": rows, "ledger": money, **verdict(rows)}
    write_json(ROOT / "bench" / "results" / "soak.json", result)
    print(
        f"RSS growth {result['rss_growth']:+.1%}, fds {result['fd_growth']:+d} "
        f"(flat: {result['flat']}); ledger {money}"
    )
    healthy = result["flat"] and money == {"accounts_not_summing": 0, "holds_pending": 0}
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
