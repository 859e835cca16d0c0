"""Drills on the whole cluster (issue 18): three `nanogate serve` nodes and a `nanogate worker`
on one PostgreSQL database, behind nginx (cluster.py), every client call through nginx.

- 50 tasks, and a node running some of them killed with SIGKILL mid-way, then restarted as its
  service manager would: every task ends once (one charge, one usage record, one callback
  event), the ledger sums to the balances with no hold left, and every result URL answers the
  same bytes from every node (S3 storage, on moto's server).
- Redis (a private redis-server) killed under load in two dialects and started again on its
  port: no 500, no call held, each node limits on its own meanwhile (logged once, /readyz and
  nanogate_redis_up say so), money untouched, and one shared count again once it is back.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.genai import errors as genai_errors

from tests.redis_server import SERVER_URL, RedisServer
from tests.s3server import S3Server
from tests.simulator.processes import stop

from .cluster import Cluster, cluster
from .conftest import Gateway, Simulator, sdk_client, within
from .receiver import Receiver
from .test_cluster import TEXT_MODEL
from .test_cluster import call as gemini_call
from .test_credits import balance, ledger_matches_balances, new_key, query
from .test_credits_under_load import restart
from .test_redis_limits import chat, gemini_429, logged, redis_up
from .test_s3_cluster import on, s3_env
from .test_tasks import SECRET, TASK_ENV, create, info, result_urls, task_id

TASKS = 50
CREDITS = 10**10


def node_id(node: Gateway) -> str:
    """A node's lease owner name: its default node id."""
    return f"{socket.gethostname()}:{node.env['NANOGATE_PORT']}"


# -- 50 tasks and a kill -9 --------------------------------------------------------------------


@pytest.fixture
def s3_cluster(
    tmp_path: Path,
    postgres_url: str,
    simulator: Simulator,
    s3_server: S3Server,
    s3_bucket: str,
    redis_prefix: str,
) -> Iterator[Cluster]:
    with cluster(
        tmp_path,
        postgres_url,
        simulator,
        **TASK_ENV,
        **s3_env(s3_server, s3_bucket),
        NANOGATE_REDIS_URL=SERVER_URL,
        NANOGATE_REDIS_KEY_PREFIX=redis_prefix,
        # The default: a usage record a node only buffers waits this long for a kill to lose it.
        NANOGATE_USAGE_FLUSH_SECONDS="1",
    ) as nodes:
        yield nodes


def task_rows(c: Cluster) -> dict[str, tuple[str, str | None, int]]:
    """Each task's state, lease owner and attempts."""
    rows = query(c.front, "SELECT id, state, lease_owner, attempts FROM tasks")
    return {task: (state, owner, attempts) for task, state, owner, attempts in rows}


def test_50_tasks_and_a_kill_9_of_a_node_end_once_and_serve_every_result_from_every_node(
    s3_cluster: Cluster, simulator: Simulator, receiver: Receiver
) -> None:
    c = s3_cluster
    front = c.front
    simulator.clear()
    key = new_key(front, CREDITS)
    run = uuid.uuid4().hex
    # 1 to 3 s upstream: when the first tasks end, the others are still running.
    prompts = [f"drill {run} {n} [[sim:delay={1 + (n % 5) / 2}]]" for n in range(TASKS)]

    def create_one(n: int) -> str:
        answer = create(
            front,
            key,
            "message",
            "google/nano-banana",
            {"prompt": prompts[n]},
            f"{receiver.url}/drill/{run}/{n}",
        )
        return task_id(answer, "message")

    with ThreadPoolExecutor(10) as pool:
        tasks = list(pool.map(create_one, range(TASKS)))

    # The victim: the node running the most tasks, killed once it has finished one of them.
    deadline = time.monotonic() + 30
    while any(state == "pending" for state, _, _ in task_rows(c).values()):
        assert time.monotonic() < deadline, "the tasks were never all claimed"
        time.sleep(0.05)
    running = Counter(owner for state, owner, _ in task_rows(c).values() if state == "running")
    victim = max(c.nodes, key=lambda node: running[node_id(node)])
    assert running[node_id(victim)] > 1, running
    while True:
        rows = task_rows(c)
        mine = {t: state for t, (state, owner, _) in rows.items() if owner == node_id(victim)}
        if "succeeded" in mine.values():
            break
        assert "running" in mine.values(), "the victim finished nothing before its last task"
        time.sleep(0.05)
    cut_short = {t for t, state in mine.items() if state == "running"}
    assert cut_short, "the victim had nothing left running"
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    done = sum(state == "succeeded" for state in mine.values())
    print(f"killed a node with {len(cut_short)} tasks running, {done} done")

    # nginx passes polls to the live nodes meanwhile (a refused connection moves on).
    outage = time.monotonic() + 1
    while time.monotonic() < outage:
        assert info(front, key, "message", tasks[0]).status_code == 200
    # Its service manager starts it again, on its port: it hands its orphans back at once.
    revived = restart(victim)
    try:
        finals = wait_all_final(front, key, tasks, timeout=45)
        assert {data["status"] for data in finals.values()} == {"succeeded"}
        check_ended_once(c, key, tasks, finals, cut_short)
        check_callbacks(receiver, run, tasks)
        check_results_everywhere(c, finals)
    finally:
        stop(revived)


def wait_all_final(
    front: Gateway, key: str, tasks: list[str], timeout: float
) -> dict[str, dict[str, Any]]:
    finals: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(finals) < len(tasks):
        assert time.monotonic() < deadline, f"{len(tasks) - len(finals)} tasks never ended"
        for task in tasks:
            if task in finals:
                continue
            answer = info(front, key, "message", task)
            assert answer.status_code == 200, answer.text
            data: dict[str, Any] = answer.json()["data"]
            if data["status"] in ("succeeded", "failed"):
                finals[task] = data
        time.sleep(0.1)
    return finals


def check_ended_once(
    c: Cluster, key: str, tasks: list[str], finals: dict[str, dict[str, Any]], cut: set[str]
) -> None:
    front = c.front
    rows = query(front, "SELECT id, request_id, attempts, cost FROM tasks")
    assert len(rows) == TASKS
    request_of = {task: request for task, request, _, _ in rows}
    # The runs the kill cut short ran again elsewhere (attempt 2); no other task ran twice.
    again = {task for task, _, attempts, _ in rows if attempts == 2}
    assert again and again <= cut, (again, cut)
    assert all(attempts in (1, 2) for _, _, attempts, _ in rows)
    ledger = query(front, "SELECT request_id, kind FROM ledger WHERE request_id IS NOT NULL")
    kinds: dict[str, list[str]] = {}
    for request, kind in ledger:
        kinds.setdefault(request, []).append(kind)
    usage = query(front, "SELECT request_id, status, cost FROM usage_records")
    records: dict[str, list[tuple[int, int]]] = {}
    for request, status, cost in usage:
        records.setdefault(request, []).append((status, cost))
    for task in tasks:
        request, cost = request_of[task], finals[task]["cost"]
        assert sorted(kinds[request]) == ["reserve", "settle"], (task, kinds[request])
        assert records.get(request) == [(200, cost)], (task, records.get(request))
        assert cost > 0
    assert balance(front, key) == CREDITS - sum(data["cost"] for data in finals.values())
    ledger_matches_balances(front)


def check_callbacks(receiver: Receiver, run: str, tasks: list[str]) -> None:
    """One event per task, saying it succeeded. Delivery is at least once, so an attempt the
    kill cut short may come again, but only as the same event."""
    events = set()
    for n, task in enumerate(tasks):
        deliveries = receiver.wait_for(f"/drill/{run}/{n}")
        (event,) = {d.headers["webhook-id"] for d in deliveries}
        for delivery in deliveries:
            assert delivery.verified(SECRET)
            data = delivery.json()["data"]
            assert (data["task_id"], data["status"]) == (task, "succeeded")
        events.add(event)
    assert len(events) == TASKS


def check_results_everywhere(c: Cluster, finals: dict[str, dict[str, Any]]) -> None:
    """Each signed URL, through nginx and from every node directly: 200, the same image."""
    http = httpx.Client(timeout=30)
    for data in finals.values():
        (url,) = result_urls(data, "message")
        assert url.startswith(c.url + "/files/"), url
        first = http.get(url)
        assert first.status_code == 200 and first.content.startswith(b"\x89PNG")
        for node in c.nodes:
            answer = http.get(on(node, url))
            assert answer.status_code == 200, (node.url, answer.text)
            assert answer.content == first.content


# -- Redis stopped mid-load --------------------------------------------------------------------


@pytest.fixture
def redis_cluster(
    tmp_path: Path, postgres_url: str, simulator: Simulator, redis_server: RedisServer
) -> Iterator[Cluster]:
    with cluster(tmp_path, postgres_url, simulator, NANOGATE_REDIS_URL=redis_server.url) as nodes:
        yield nodes


def readyz(url: str) -> tuple[int, str, str]:
    answer = httpx.get(f"{url}/readyz", timeout=10)
    body = answer.json()
    return answer.status_code, body["status"], body["redis"]


def test_redis_killed_under_load_through_nginx_costs_no_500_no_wait_and_no_money(
    redis_cluster: Cluster, redis_server: RedisServer
) -> None:
    c = redis_cluster
    front = c.front
    key = new_key(front, CREDITS, rpm_limit=100_000, concurrency_limit=64)
    sdk = sdk_client(front, key)

    def by_sdk() -> int:
        try:
            sdk.models.generate_content(model=TEXT_MODEL, contents="a kite over the sea")
        except genai_errors.APIError as exc:
            return exc.code
        return 200

    dialects: dict[str, Callable[[], int]] = {
        "google-genai": by_sdk,
        "gemini": lambda: gemini_call(c.url, key).status_code,
        "openai": lambda: chat(front, key).status_code,
    }
    calls: list[tuple[str, int, float]] = []
    stop_at = time.monotonic() + 9

    def load(dialect: str) -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            status = dialects[dialect]()
            calls.append((dialect, status, time.monotonic() - started))

    with ThreadPoolExecutor(6) as pool:
        running = [pool.submit(load, dialect) for dialect in [*dialects] * 2]
        time.sleep(2)
        redis_server.kill()
        down = time.monotonic()
        within(2.0, lambda: not any(redis_up(node) for node in c.nodes))
        # Ready still (no node taken out for it), saying what is down.
        for url in [c.url, *(node.url for node in c.nodes)]:
            assert readyz(url) == (200, "degraded", "down")
        # Each node limits on its own meanwhile: 3 a minute on each, so 9 in all.
        alone = new_key(front, CREDITS, rpm_limit=3)
        for node in c.nodes:
            assert [gemini_call(node.url, alone).status_code for _ in range(4)] == [200] * 3 + [429]
        for _ in range(3):
            gemini_429(gemini_call(c.url, alone), "3 requests per minute")
        time.sleep(max(0.0, 4 - (time.monotonic() - down)))
        redis_server.start()  # on its port, empty
        for done in running:
            done.result()

    by_dialect = Counter((dialect, status) for dialect, status, _ in calls)
    assert {status for _, status in by_dialect} == {200}, by_dialect
    assert all(by_dialect[dialect, 200] > 20 for dialect in dialects), by_dialect
    slowest = max(seconds for _, _, seconds in calls)
    print(f"{len(calls)} calls, {dict(by_dialect)}, slowest {slowest:.2f} s")
    assert slowest < 1.0  # each Redis call gives up after 0.25 s

    within(10.0, lambda: all(redis_up(node) for node in c.nodes))
    for url in [c.url, *(node.url for node in c.nodes)]:
        assert readyz(url) == (200, "ready", "up")
    for node in c.nodes:  # loudly, once per outage
        assert logged(node, "Redis is not answering") == 1
        assert logged(node, "Redis answers again") == 1
    # One count across the nodes again: two calls on each node, four of them admitted.
    shared = new_key(front, CREDITS, rpm_limit=4)
    statuses = [gemini_call(c.nodes[n % 3].url, shared).status_code for n in range(6)]
    assert Counter(statuses) == {200: 4, 429: 2}, statuses
    gemini_429(gemini_call(c.url, shared), "4 requests per minute")

    # Money never touched Redis: each answer charged once, at its usage record's cost.
    prefix = "_".join(key.split("_")[:2])
    [(records, charged)] = query(
        front,
        "SELECT COUNT(*), SUM(cost) FROM usage_records "
        f"WHERE key_prefix = '{prefix}' AND status = 200",
    )
    assert records == len(calls)
    assert balance(front, key) == CREDITS - charged
    ledger_matches_balances(front)
