"""The database stops answering while calls are in flight, with real processes: a second
connection holds SQLite's write lock, or PostgreSQL refuses the gateway and its backends are
terminated. A call whose settle the database did not take answers 503 ("not charged") and its
hold is refunded as soon as the database is back; every 200 has its settle; nothing else
waits for the writer (task queries), and nothing is a 500 (admin top-ups)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests import postgres
from tests.simulator.processes import stop

from .conftest import Gateway, Simulator, simulator_upstream, start_gateway
from .test_credits import ledger_matches_balances, new_key, query
from .test_tasks import create, task_id

TEXT_MODEL = "gemini-2.5-flash"
# From the database's return: a hold left pending longer than this is a failure.
SETTLE_WITHIN_S = 30.0


def _gateway(tmp: Path, sim: Simulator, **env: str) -> Gateway:
    config = {"upstreams": [simulator_upstream(sim, timeout_s=30, breaker_failures=1000)]}
    return start_gateway(tmp, config, NANOGATE_EGRESS_ALLOWLIST="127.0.0.1", **env)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, simulator: Simulator) -> Iterator[Gateway]:
    # No task workers: their polls would compete with the settles for the writer's first
    # batch (see the SQLite drill).
    gateway = _gateway(tmp_path_factory.mktemp("outages"), simulator, NANOGATE_TASK_WORKERS="0")
    yield gateway
    stop(gateway.proc)


@contextmanager
def sqlite_locked(gw: Gateway) -> Iterator[None]:
    """Another connection holds the gateway's SQLite write lock (as a CLI command or a backup
    tool might) for the body's length."""
    conn = sqlite3.connect(gw.data_dir / "nanogate.db", isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _admin(statement: str) -> None:
    async def run() -> None:
        engine = create_async_engine(
            postgres.SERVER_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        try:
            async with engine.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run())


@contextmanager
def postgres_down(url: str) -> Iterator[None]:
    """The gateway's PostgreSQL database refuses connections and its backends are terminated,
    for the body's length."""
    name = make_url(url).database
    _admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    try:
        _admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        yield
    finally:
        _admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')


def _call(gw: Gateway, key: str, delay: float, out: list[httpx.Response]) -> None:
    prompt = f"[[sim:delay={delay}]] count to three"
    out.append(
        httpx.post(
            f"{gw.url}/v1beta/models/{TEXT_MODEL}:generateContent",
            json={"contents": [{"parts": [{"text": prompt}]}]},
            headers={"x-goog-api-key": key},
            timeout=90,
        )
    )


def _outage_drill(
    gw: Gateway, sim: Simulator, outage: Any, outage_s: float, delays: list[float]
) -> float:
    """Calls in flight (each held at the simulator for its delay), then the outage; returns
    when the database came back. The calls' answers are checked against the ledger."""
    key = new_key(gw, 10_000_000)
    sim.clear()
    responses: list[httpx.Response] = []
    threads = [threading.Thread(target=_call, args=(gw, key, d, responses)) for d in delays]
    for thread in threads:
        thread.start()
    # Every call has its hold before the database goes away.
    deadline = time.monotonic() + 20
    while len(sim.requests()) < len(delays):
        assert time.monotonic() < deadline, "the calls did not reach the simulator"
        time.sleep(0.05)
    with outage:
        time.sleep(outage_s)
    back = time.monotonic()
    for thread in threads:
        thread.join(90)
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses, f"the outage failed no settle; the drill proves nothing: {statuses}"
    for response in responses:
        if response.status_code == 503:
            assert "not charged" in response.text, response.text
    _wait_no_pending(gw, back)
    ledger_matches_balances(gw)
    for response in responses:
        request_id = response.headers["x-request-id"]
        kinds = query(
            gw, f"SELECT kind, amount FROM ledger WHERE request_id = '{request_id}' ORDER BY id"
        )
        net = sum(amount for _, amount in kinds)
        if response.status_code == 200:
            cost = int(response.headers["x-nanogate-cost"])
            assert [kind for kind, _ in kinds] == ["reserve", "settle"], kinds
            assert net == -cost and cost > 0
        else:
            assert net == 0, f"a 503 ('not charged') was charged: {kinds}"
    return back


def _wait_no_pending(gw: Gateway, since: float) -> None:
    while True:
        pending = query(gw, "SELECT COUNT(*) FROM holds WHERE state = 'pending'")[0][0]
        if pending == 0:
            return
        waited = time.monotonic() - since
        assert waited < SETTLE_WITHIN_S, f"{pending} holds still pending {waited:.0f} s after"
        time.sleep(0.5)


def _pending_gauge(gw: Gateway) -> float:
    metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text
    found = re.search(r"^nanogate_hold_resolutions_pending (\S+)$", metrics, re.MULTILINE)
    assert found, "no nanogate_hold_resolutions_pending gauge"
    return float(found.group(1))


def test_sqlite_locked_for_25_s_leaves_no_hold_pending(gw: Gateway, simulator: Simulator) -> None:
    # The ledger's writer waits up to 10 s for the lock, then fails the batch; what was queued
    # behind it gets the next 10 s. Settles every 50 ms from the lock's start make the first
    # batch a settle (a background poll rarely comes first), and 25 s fail the second too.
    _outage_drill(gw, simulator, sqlite_locked(gw), 25, [0.5 + i * 0.05 for i in range(40)])
    assert _pending_gauge(gw) == 0
    assert "its refund is queued until the database answers" in gw.logs()


def test_a_settle_and_its_refund_both_refused_are_retried(
    gw: Gateway, simulator: Simulator
) -> None:
    # One call alone: its settle fails after one lock wait, its refund after the next (before
    # the retry queue, that hold stayed pending until a restart or its expiry, an hour).
    _outage_drill(gw, simulator, sqlite_locked(gw), 45, [0.3])


def test_postgres_backends_killed_leaves_no_hold_pending(
    tmp_path: Path, simulator: Simulator, postgres_url: str
) -> None:
    gw = _gateway(tmp_path, simulator, NANOGATE_DATABASE_URL=postgres_url)
    try:
        _outage_drill(gw, simulator, postgres_down(postgres_url), 8, [1, 2, 3, 4])
        assert _pending_gauge(gw) == 0
    finally:
        stop(gw.proc)


def test_a_top_up_during_a_lock_is_503(gw: Gateway) -> None:
    with sqlite_locked(gw):
        response = httpx.post(
            f"{gw.url}/admin/accounts/1/topup",
            headers={"x-api-key": gw.admin_key},
            json={"amount": 100, "reason": "during a lock"},
            timeout=30,
        )
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["status"] == "UNAVAILABLE" and "retry" in error["message"]
    assert "Traceback" not in gw.logs()


def test_a_top_up_while_postgresql_refuses_is_503(
    tmp_path: Path, simulator: Simulator, postgres_url: str
) -> None:
    gw = _gateway(tmp_path, simulator, NANOGATE_DATABASE_URL=postgres_url)
    try:
        with postgres_down(postgres_url):
            response = httpx.post(
                f"{gw.url}/admin/accounts/1/topup",
                headers={"x-api-key": gw.admin_key},
                json={"amount": 100, "reason": "during an outage"},
                timeout=30,
            )
        assert response.status_code == 503, response.text
        assert response.json()["error"]["status"] == "UNAVAILABLE"
    finally:
        stop(gw.proc)


def test_calls_while_postgresql_refuses_are_503_in_each_dialect(
    tmp_path: Path, simulator: Simulator, postgres_url: str
) -> None:
    """A key the gateway has not seen yet must be looked up: with the database gone, each
    dialect answers 503 in its own envelope, not 500."""
    gw = _gateway(tmp_path, simulator, NANOGATE_DATABASE_URL=postgres_url)
    try:
        key = new_key(gw, 10_000_000)
        with postgres_down(postgres_url):
            gemini = httpx.post(
                f"{gw.url}/v1beta/models/{TEXT_MODEL}:generateContent",
                headers={"x-goog-api-key": key},
                json={"contents": [{"parts": [{"text": "hi"}]}]},
                timeout=30,
            )
            chat = httpx.post(
                f"{gw.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": TEXT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
            made = create(gw, key, "message", "google/nano-banana", {"prompt": "x"})
        assert gemini.status_code == 503, gemini.text
        assert gemini.json()["error"]["status"] == "UNAVAILABLE"
        assert chat.status_code == 503, chat.text
        assert chat.json()["error"]["type"] == "api_error"
        assert "database" in chat.json()["error"]["message"]
        assert made.json()["code"] == 500 and "database" in made.json()["message"], made.text
        assert "Traceback" not in gw.logs()
    finally:
        stop(gw.proc)


def test_a_task_query_does_not_wait_for_the_write_lock(gw: Gateway) -> None:
    key = new_key(gw, 10_000_000)
    task = task_id(create(gw, key, "message", "google/nano-banana", {"prompt": "x"}), "message")
    with sqlite_locked(gw):
        started = time.monotonic()
        response = httpx.get(
            f"{gw.url}/api/v1/client/job/TaskInfo?task_id={task}",
            headers={"x-api-key": key},
            timeout=30,
        )
        took = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["data"]["task_id"] == task
    assert took < 2, f"the query waited {took:.1f} s for the writer"


def test_an_unreadable_upstream_answer_is_502_in_each_dialect(
    gw: Gateway, simulator: Simulator
) -> None:
    key = new_key(gw, 10_000_000)
    simulator.clear()
    simulator.faults({"malformed": True})
    response = httpx.post(
        f"{gw.url}/v1beta/models/{TEXT_MODEL}:generateContent",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        headers={"x-goog-api-key": key},
        timeout=30,
    )
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (502, "UNAVAILABLE")
    assert error["message"].startswith("Bad upstream answer")

    simulator.faults({"malformed": True})
    sdk = openai.OpenAI(api_key=key, base_url=f"{gw.url}/v1", max_retries=0, timeout=30)
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model=TEXT_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    body = caught.value.response.json()["error"]
    assert (body["type"], body["code"]) == ("api_error", "bad_upstream_answer")
    assert body["message"].startswith("Bad upstream answer")
    simulator.clear()
