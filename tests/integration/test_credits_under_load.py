"""Money under concurrency and crashes, with real processes, on SQLite and on PostgreSQL:
200 concurrent image requests against an account that can afford exactly 50, and a kill -9
during load followed by a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from nanogate.billing import prices
from nanogate.core.catalog import load_catalog
from nanogate.dialects.gemini import parse_call
from tests.simulator.processes import stop

from .conftest import Gateway, start_gateway
from .test_credits import balance, ledger_matches_balances, new_key, query

MODEL = "gemini-2.5-flash-image"
BODY = {
    "contents": [{"role": "user", "parts": [{"text": "a red kite over the sea"}]}],
    "generationConfig": {"maxOutputTokens": 100},
}


def estimate() -> int:
    call = parse_call("x", "generateContent", load_catalog().resolve(MODEL), orjson.dumps(BODY))
    return prices.quote(call).worst


async def burst(url: str, key: str, count: int) -> list[httpx.Response | Exception]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{url}/v1beta/models/{MODEL}:generateContent",
                    headers={"x-goog-api-key": key},
                    content=orjson.dumps(BODY),
                )
                for _ in range(count)
            ),
            return_exceptions=True,
        )


def demo_gateway(tmp: Path, env: dict[str, str], latency_ms: int) -> Gateway:
    config = {"upstreams": [{"name": "demo", "kind": "demo", "latency_ms": latency_ms}]}
    return start_gateway(tmp, config, NANOGATE_NODE_ID="node-a", **env)


def test_200_concurrent_requests_on_an_account_that_affords_50(
    tmp_path: Path, database_env: dict[str, str]
) -> None:
    # The demo takes 3 s, so every reservation is made before the first settle frees anything.
    gw = demo_gateway(tmp_path, database_env, latency_ms=3000)
    try:
        needed = estimate()
        key = new_key(gw, 50 * needed)
        results = asyncio.run(burst(gw.url, key, 200))
        statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in results]
        assert statuses.count(200) == 50, statuses
        assert statuses.count(402) == 150, statuses
        costs = sum(
            int(r.headers["x-nanogate-cost"])
            for r in results
            if isinstance(r, httpx.Response) and r.status_code == 200
        )
        assert balance(gw, key) == 50 * needed - costs
        ledger_matches_balances(gw)
    finally:
        stop(gw.proc)


def restart(gw: Gateway) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanogate", "serve"],
        stdout=subprocess.DEVNULL,
        stderr=gw.stderr_path.open("a"),
        text=True,
        env=gw.env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{gw.url}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"gateway did not come back:\n{gw.logs()[-3000:]}")


def test_kill_9_during_load_loses_no_charge_and_leaves_no_hold(
    tmp_path: Path, database_env: dict[str, str]
) -> None:
    gw = demo_gateway(tmp_path, database_env, latency_ms=400)
    start = 100 * estimate()
    key = new_key(gw, start)
    done: list[httpx.Response | Exception] = []

    async def load() -> None:
        # Waves of requests, so some are answered and some are in flight at the kill.
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def one() -> None:
                try:
                    done.append(
                        await client.post(
                            f"{gw.url}/v1beta/models/{MODEL}:generateContent",
                            headers={"x-goog-api-key": key},
                            content=orjson.dumps(BODY),
                        )
                    )
                except httpx.HTTPError as exc:
                    done.append(exc)

            tasks = []
            for _ in range(12):
                tasks += [asyncio.create_task(one()) for _ in range(6)]
                await asyncio.sleep(0.2)
            await asyncio.gather(*tasks)

    async def kill_during_load() -> None:
        loader = asyncio.create_task(load())
        # Kill once a few answers are in, while later waves are still in flight.
        deadline = time.monotonic() + 30
        while sum(isinstance(r, httpx.Response) for r in done) < 6:
            assert time.monotonic() < deadline, "no answers before the kill"
            await asyncio.sleep(0.02)
        os.kill(gw.proc.pid, signal.SIGKILL)
        await loader

    asyncio.run(kill_during_load())
    gw.proc.wait(timeout=10)
    answered = [r for r in done if isinstance(r, httpx.Response) and r.status_code == 200]
    cut = [r for r in done if not isinstance(r, httpx.Response)]
    assert answered and cut, f"{len(answered)} answered, {len(cut)} cut: the kill missed the load"
    pending = query(gw, "SELECT COUNT(*) FROM holds WHERE state = 'pending'")[0][0]
    assert pending > 0  # the kill left reservations open

    proc = restart(gw)
    try:
        # Every acknowledged charge is in the ledger, at the cost the client was told.
        for response in answered:
            rid = response.headers["x-request-id"]
            rows = query(gw, f"SELECT kind, amount FROM ledger WHERE request_id = '{rid}'")
            assert sorted(kind for kind, _ in rows) == ["reserve", "settle"]
            assert -sum(amount for _, amount in rows) == int(response.headers["x-nanogate-cost"])
        # Nothing stays held, and the balance is the start less every settled charge.
        ledger_matches_balances(gw)
        settled: Any = query(gw, "SELECT COALESCE(SUM(cost), 0) FROM holds WHERE state = 'settled'")
        assert balance(gw, key) == start - int(settled[0][0])
        refunded = query(gw, "SELECT COUNT(*) FROM holds WHERE state = 'refunded'")[0][0]
        assert refunded >= pending
        # And the gateway serves again, charging as before.
        after = httpx.post(
            f"{gw.url}/v1beta/models/{MODEL}:generateContent",
            headers={"x-goog-api-key": key},
            content=orjson.dumps(BODY),
            timeout=30,
        )
        assert after.status_code == 200
    finally:
        stop(proc)
