"""`nanogate serve --workers N`: several processes on one port, with the guarantees of one:
limits counted once across them, one charge per Idempotency-Key, the ledger whole, a killed
worker replaced (its slots given back), and SIGTERM draining every worker."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.simulator.processes import stop

from .conftest import Gateway, Simulator, simulator_upstream, start_gateway, within
from .test_credits import balance, ledger_matches_balances, new_key, query

MODEL = "gemini-2.5-flash"
PATH = f"/v1beta/models/{MODEL}:generateContent"
PENDING = "SELECT COUNT(*) FROM holds WHERE state = 'pending'"


@pytest.fixture
def gw(tmp_path: Path, simulator: Simulator) -> Iterator[Gateway]:
    config = {"upstreams": [simulator_upstream(simulator)]}
    gateway = start_gateway(tmp_path, config, NANOGATE_WORKERS="2")
    yield gateway
    stop(gateway.proc)


def call(gw: Gateway, key: str, text: str = "hello", **headers: str) -> httpx.Response:
    # A connection of its own each time, so the kernel spreads calls over the workers.
    return httpx.post(
        f"{gw.url}{PATH}",
        headers={"x-goog-api-key": key, **headers},
        json={"contents": [{"parts": [{"text": text}]}]},
        timeout=30,
    )


def workers(gw: Gateway) -> list[int]:
    """The supervisor's worker processes, by pid."""
    found = subprocess.run(
        ["pgrep", "-P", str(gw.proc.pid)], capture_output=True, text=True, check=False
    )
    pids = [int(pid) for pid in found.stdout.split()]
    # Not multiprocessing's resource tracker, its other child.
    return [pid for pid in pids if b"spawn_main" in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def serving_workers(gw: Gateway, key: str) -> set[str]:
    """The processes that answered: a gateway-made request id starts with its process's own
    prefix."""
    return {call(gw, key).headers["x-request-id"][:16] for _ in range(30)}


def test_calls_spread_over_the_workers_and_limits_count_once(gw: Gateway) -> None:
    assert len(workers(gw)) == 2
    assert len(serving_workers(gw, gw.client_key)) == 2
    key = new_key(gw, 10**9, rpm_limit=10)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: call(gw, key).status_code, range(24)))
    assert codes.count(200) == 10 and codes.count(429) == 14, codes
    ledger_matches_balances(gw)


def test_a_client_opening_its_pool_at_once_is_spread_over_the_workers(gw: Gateway) -> None:
    """A client (or a load balancer) opening its keep-alive connections in one burst: a socket
    shared by the workers gave them all to the worker that woke first; each worker's own
    SO_REUSEPORT socket gets its share. 32 connections: each worker gets at least 4 unless
    the kernel's hash is lopsided against odds of about 1 in 400,000."""
    address = urlsplit(gw.url)
    assert address.hostname is not None and address.port is not None
    pool = [
        http.client.HTTPConnection(address.hostname, address.port, timeout=30) for _ in range(32)
    ]
    for conn in pool:
        conn.connect()
    served: dict[str, int] = {}
    try:
        for _ in range(2):  # the same connections again: each stays with its worker
            for conn in pool:
                conn.request("GET", "/v1beta/models", headers={"x-goog-api-key": gw.client_key})
                answer = conn.getresponse()
                answer.read()
                assert answer.status == 200
                worker = answer.headers["x-request-id"][:16]
                served[worker] = served.get(worker, 0) + 1
    finally:
        for conn in pool:
            conn.close()
    assert len(served) == 2 and min(served.values()) >= 8, served


def test_a_second_gateway_on_the_same_port_is_refused(gw: Gateway, tmp_path: Path) -> None:
    """SO_REUSEPORT would let another gateway's workers bind beside ours: `serve` refuses a
    port something answers on, as a plain bind would."""
    env = {**gw.env, "NANOGATE_DATA_DIR": str(tmp_path / "second"), "NANOGATE_WORKERS": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "nanogate", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr[-2000:]
    port = urlsplit(gw.url).port
    assert "error: cannot listen on " in done.stderr, done.stderr
    assert f":{port}: Address already in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert len(serving_workers(gw, gw.client_key)) == 2  # ours still serves, on both workers


def test_concurrency_counts_across_workers_and_a_killed_workers_slots_come_back(
    gw: Gateway, simulator: Simulator
) -> None:
    key = new_key(gw, 10**9, concurrency_limit=2)
    with ThreadPoolExecutor(8) as pool:
        slow = list(pool.map(lambda _: call(gw, key, "[[sim:delay=1.5]] slow"), range(8)))
    codes = [r.status_code for r in slow]
    assert codes.count(200) == 2 and codes.count(429) == 6, codes
    # A worker killed while it holds both slots: the supervisor starts another, and the slots
    # come back with the dead worker's connection.
    simulator.clear()
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(call, gw, key, "[[sim:delay=20]] held") for _ in range(2)]
        within(10, lambda: len(simulator.requests()) == 2)
        before = workers(gw)
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        within(20, lambda: len(workers(gw)) == 2 and not set(workers(gw)) & set(before))
        for future in held:
            with pytest.raises(httpx.HTTPError):
                future.result()
    within(30, lambda: call(gw, key).status_code == 200)
    # The calls the kill cut were never answered: each restarted worker refunds its
    # predecessor's holds before it serves, and one may be serving while the other still starts.
    within(30, lambda: query(gw, PENDING) == [(0,)])
    ledger_matches_balances(gw)


def test_one_idempotency_key_is_one_charge_across_workers(gw: Gateway) -> None:
    key = new_key(gw, 10**9)
    idem = {"Idempotency-Key": f"workers-{uuid.uuid4()}"}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: call(gw, key, "[[sim:delay=1]] once", **idem), range(6)))
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    assert len({a.content for a in answers}) == 1
    charged = [int(a.headers["x-nanogate-cost"]) for a in answers]
    assert sorted(charged)[-1] > 0 and charged.count(0) == 5
    assert balance(gw, key) == 10**9 - max(charged)
    ledger_matches_balances(gw)


def test_sigterm_drains_every_worker(gw: Gateway) -> None:
    key = new_key(gw, 10**9)
    pids = workers(gw)
    with ThreadPoolExecutor(6) as pool:
        running = [pool.submit(call, gw, key, "[[sim:delay=2]] drained") for _ in range(6)]
        time.sleep(0.8)
        gw.proc.send_signal(signal.SIGTERM)
        assert all(future.result().status_code == 200 for future in running)
    assert gw.proc.wait(30) == 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
    ledger_matches_balances(gw)
