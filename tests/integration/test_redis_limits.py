"""Limits across nodes (redis_url): two `nanogate serve` processes on one PostgreSQL database and
one redis-server of this module's own, which a test kills and starts again mid-load.

A key's requests per minute and its concurrency are the key's, not each node's; a node killed
with calls in flight gives its slots back after the lease; unknown keys are counted per client
address across nodes; and with Redis gone nothing answers 500 or hangs, and money is untouched.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests import postgres
from tests.redis_server import RedisServer, start_redis_server
from tests.simulator.processes import stop

from .conftest import (
    Gateway,
    Simulator,
    join_gateway,
    simulator_upstream,
    start_gateway,
    start_simulator,
)
from .test_credits import ledger_matches_balances, new_key
from .test_tasks import create

TEXT_MODEL = "gemini-2.5-flash"
LEASE_S = 3.0
# Trusted: the tests speak for many client addresses through X-Forwarded-For.
PROXY = "127.0.0.1"


@pytest.fixture(scope="module")
def redis_process() -> Iterator[RedisServer]:
    server = start_redis_server()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    """This module's own: it counts calls in flight, which no other test may add to."""
    simulator = start_simulator()
    yield simulator
    stop(simulator.proc)


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, sim: Simulator, redis_process: RedisServer
) -> Iterator[list[Gateway]]:
    name = f"nanogate_redis_{int(time.time() * 1000)}"
    url = postgres.create_database(name)
    tmp = tmp_path_factory.mktemp("redis-limits")
    (tmp / "node1").mkdir()
    (tmp / "node2").mkdir()
    first = start_gateway(
        tmp / "node1",
        {"upstreams": [simulator_upstream(sim, timeout_s=30, breaker_failures=1000)]},
        NANOGATE_DATABASE_URL=url,
        NANOGATE_REDIS_URL=redis_process.url,
        NANOGATE_CONCURRENCY_LEASE_SECONDS=str(LEASE_S),
        NANOGATE_AUTH_FAILURES_PER_MINUTE="5",
        NANOGATE_TRUSTED_PROXIES=PROXY,
        NANOGATE_STARTER_CREDITS=str(10**12),
    )
    second = join_gateway(first, tmp / "node2")
    try:
        yield [first, second]
    finally:
        stop(first.proc)
        stop(second.proc)
        postgres.drop_database(name)


HTTP = httpx.Client(timeout=60)


def call(
    node: Gateway, key: str, prompt: str = "a kite over the sea", client: str | None = None
) -> httpx.Response:
    headers = {"x-goog-api-key": key}
    if client is not None:
        headers["x-forwarded-for"] = client
    return HTTP.post(
        f"{node.url}/v1beta/models/{TEXT_MODEL}:generateContent",
        headers=headers,
        json={"contents": [{"parts": [{"text": prompt}]}]},
    )


def chat(node: Gateway, key: str, client: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    if client is not None:
        headers["x-forwarded-for"] = client
    return HTTP.post(
        f"{node.url}/v1/chat/completions",
        headers=headers,
        json={"model": TEXT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )


def gemini_429(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == 429 and error["status"] == "RESOURCE_EXHAUSTED"
    for word in words:
        assert word in error["message"], error["message"]
    assert 1 <= int(response.headers["retry-after"]) <= 60


def openai_429(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    for word in words:
        assert word in error["message"], error["message"]
    assert 1 <= int(response.headers["retry-after"]) <= 60


def sim_stats(sim: Simulator) -> dict[str, int]:
    stats: dict[str, int] = HTTP.get(f"{sim.url}/_sim/stats").json()
    return stats


def test_a_60_rpm_key_gets_60_of_120_across_two_nodes(pair: list[Gateway]) -> None:
    key = new_key(pair[0], 10**9, rpm_limit=60)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: (n % 2, call(pair[n % 2], key)), range(120)))
    assert time.monotonic() - started < 10
    assert Counter(a.status_code for _, a in answers) == {200: 60, 429: 60}
    by_node = Counter(node for node, a in answers if a.status_code == 200)
    assert by_node[0] > 0 and by_node[1] > 0  # both nodes admitted some: one count for both
    for _, answer in answers:
        if answer.status_code == 429:
            gemini_429(answer, "60 requests per minute")


def test_a_concurrency_4_key_never_has_more_than_4_calls_in_flight(
    pair: list[Gateway], sim: Simulator
) -> None:
    sim.idle()
    key = new_key(pair[0], 10**9, concurrency_limit=4)

    def client(n: int) -> int:
        done = refused = 0
        while done < 3:
            answer = call(pair[n % 2], key, "[[sim:delay=0.4]] a slow kite")
            if answer.status_code == 200:
                done += 1
            else:
                gemini_429(answer, "4 requests at a time")
                refused += 1
                time.sleep(0.05)
        return refused

    with ThreadPoolExecutor(10) as pool:
        refused = sum(pool.map(client, range(10)))
    stats = sim_stats(sim)
    assert stats["max_in_flight"] == 4, stats  # never 5, and the limit was reached
    assert refused > 0


def test_a_killed_nodes_slots_come_back_after_the_lease(
    pair: list[Gateway], sim: Simulator, tmp_path: Path
) -> None:
    sim.idle()
    doomed = join_gateway(pair[0], tmp_path)
    try:
        key = new_key(pair[0], 10**9, concurrency_limit=2)
        callers = [
            threading.Thread(target=_call_quietly, args=(doomed, key), daemon=True)
            for _ in range(2)
        ]
        for caller in callers:
            caller.start()
        deadline = time.monotonic() + 10
        while sim_stats(sim)["in_flight"] < 2:
            assert time.monotonic() < deadline, "the calls never reached the simulator"
            time.sleep(0.05)
        gemini_429(call(pair[0], key), "2 requests at a time")
        doomed.proc.kill()  # SIGKILL: it releases nothing
        doomed.proc.wait()
        killed = time.monotonic()
        while call(pair[1], key).status_code == 429:
            assert time.monotonic() - killed < LEASE_S + 2, "the dead node's slots never came back"
            time.sleep(0.1)
        # Not at once (the node never said goodbye): when its last renewed lease ran out.
        assert time.monotonic() - killed > LEASE_S / 3
        # Back on its port (its node id), it closes the holds of the calls it died with.
        doomed.proc = restart(doomed)
    finally:
        stop(doomed.proc)


def restart(node: Gateway) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanogate", "serve"],
        stdout=subprocess.DEVNULL,
        stderr=node.stderr_path.open("a"),
        text=True,
        env=node.env,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if HTTP.get(f"{node.url}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, node.logs()[-3000:]
        time.sleep(0.1)


def _call_quietly(node: Gateway, key: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # its node is killed under it
        call(node, key, "[[sim:delay=6]] a kite that outlives its node")


def test_429s_in_every_dialect_with_retry_after(pair: list[Gateway]) -> None:
    first, second = pair
    key = new_key(first, 10**9, rpm_limit=1)
    assert call(first, key).status_code == 200
    gemini_429(call(second, key), "1 requests per minute")
    openai_429(chat(second, key), "1 requests per minute")
    response = create(first, key, "message", "google/nano-banana", {"prompt": "x"})
    assert response.status_code == 429, response.text
    assert response.json()["code"] == 429 and "per minute" in response.json()["message"]
    assert 1 <= int(response.headers["retry-after"]) <= 60


def test_unknown_keys_are_throttled_per_client_address_across_nodes(pair: list[Gateway]) -> None:
    first, second = pair
    key = new_key(first, 10**9)
    guesser, neighbour = "198.51.100.23", "198.51.100.24"
    for n in range(5):
        answer = call(pair[n % 2], f"ng_guess{n:04d}_{'x' * 24}", client=guesser)
        assert answer.status_code == 401, answer.text
    # Five failures across the two nodes: now even a good key waits, on either node and route.
    gemini_429(call(first, key, client=guesser), "unknown API key from this address")
    openai_429(chat(second, key, client=guesser), "unknown API key from this address")
    balance = HTTP.get(
        f"{second.url}/api/v1/client/account/balance",
        headers={"x-api-key": key, "x-forwarded-for": guesser},
    )
    assert balance.status_code == 429 and balance.json()["code"] == 429
    # The header is believed only from the trusted proxy, and another address is not affected.
    assert call(first, key, client=neighbour).status_code == 200
    assert call(second, key).status_code == 200


def logged(node: Gateway, text: str) -> int:
    return node.logs().count(text)


def redis_up(node: Gateway) -> bool:
    metrics = HTTP.get(f"{node.url}/metrics").text
    return re.search(r"^nanogate_redis_up 1\.0$", metrics, re.M) is not None


def test_redis_stopped_mid_load_costs_no_error_and_no_wait(
    pair: list[Gateway], redis_process: RedisServer
) -> None:
    key = new_key(pair[0], 10**9, rpm_limit=100_000, concurrency_limit=64)
    timings: list[tuple[int, float]] = []
    stop_at = time.monotonic() + 7

    def load(n: int) -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            status = call(pair[n % 2], key).status_code
            timings.append((status, time.monotonic() - started))

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(load, n) for n in range(4)]
        time.sleep(2)
        redis_process.kill()
        time.sleep(1)
        # Meanwhile each node applies a key's limits on its own: 3 a minute each.
        alone = new_key(pair[0], 10**9, rpm_limit=3)
        admitted = [call(pair[n % 2], alone).status_code for n in range(10)]
        assert admitted.count(200) == 6 and admitted.count(429) == 4
        time.sleep(1)
        redis_process.start()
        for done in running:
            done.result()
    statuses = Counter(status for status, _ in timings)
    assert set(statuses) == {200}, statuses
    assert max(seconds for _, seconds in timings) < 1.0
    assert len(timings) > 100

    deadline = time.monotonic() + 10
    while not all(redis_up(node) for node in pair):
        assert time.monotonic() < deadline, "the nodes never saw Redis back"
        time.sleep(0.1)
    for node in pair:  # loudly, once per outage
        assert logged(node, "Redis is not answering") == 1
        assert logged(node, "Redis answers again") == 1
        errors = HTTP.get(f"{node.url}/metrics").text
        # The calls that found Redis gone (the auth check, the limits, a lease renewal).
        failed = re.findall(r"^nanogate_redis_errors_total\{[^}]*\} (\S+)$", errors, re.M)
        assert sum(float(count) for count in failed) >= 1
    # Shared again: 4 a minute across both nodes.
    shared = new_key(pair[0], 10**9, rpm_limit=4)
    assert [call(pair[n % 2], shared).status_code for n in range(6)].count(200) == 4
    ledger_matches_balances(pair[0])
