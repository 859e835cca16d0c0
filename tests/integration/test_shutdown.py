"""SIGTERM to a node, with real processes: `nanogate serve` relaying to the simulator, whose
delay faults keep calls in flight when the signal comes.

Within the grace nothing is cut: /readyz turns 503 at once, the listener stays open for the
drain delay and then refuses, and every call in flight (Gemini, OpenAI chat, a Gemini stream)
answers 200, charged and recorded. Past the grace a call is cut: 503 in its envelope, its hold
refunded (not left pending for a restart), and the process is gone soon after. Running tasks go
back to the queue at once, for another node to finish, each once.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.redis_server import start_redis_server
from tests.simulator.processes import stop

from .cluster import cluster
from .conftest import (
    Gateway,
    Simulator,
    join_gateway,
    sdk_client,
    simulator_upstream,
    start_gateway,
)
from .test_credits import ledger_matches_balances, new_key, query
from .test_database_outages import postgres_down
from .test_tasks import TASK_ENV, create, task_id, wait_final

TEXT_MODEL = "gemini-2.5-flash"
GRACE_S = 20.0
DELAY_S = 2.0


def _gateway(tmp: Path, sim: Simulator, **env: str) -> Gateway:
    config = {"upstreams": [simulator_upstream(sim, timeout_s=30, breaker_failures=1000)]}
    return start_gateway(tmp, config, NANOGATE_DRAIN_DELAY_SECONDS=str(DELAY_S), **env)


def _in_flight_at_simulator(sim: Simulator, count: int) -> None:
    deadline = time.monotonic() + 20
    while len(sim.requests()) < count:
        assert time.monotonic() < deadline, f"{len(sim.requests())} of {count} calls arrived"
        time.sleep(0.05)


def _exit_after(gw: Gateway, signalled: float, within: float) -> float:
    """Wait for the process to exit (cleanly); the seconds since the signal."""
    code = gw.proc.wait(timeout=within)
    assert code == 0, f"exit {code}:\n{gw.logs()[-3000:]}"
    return time.monotonic() - signalled


def _each_in_a_thread(calls: list[Callable[[], Any]]) -> tuple[list[Any], list[threading.Thread]]:
    """Run each call on its own thread; the list gets each one's result, or its exception."""
    results: list[Any] = []

    def run(call: Callable[[], Any]) -> None:
        try:
            results.append(call())
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    return results, threads


def test_sigterm_under_load_cuts_no_call(tmp_path: Path, simulator: Simulator) -> None:
    gw = _gateway(tmp_path, simulator, NANOGATE_SHUTDOWN_GRACE_SECONDS=str(GRACE_S))
    try:
        key = new_key(gw, 10**9)
        simulator.clear()
        gemini = sdk_client(gw, key)
        chat = openai.OpenAI(api_key=key, base_url=f"{gw.url}/v1", max_retries=0)

        def native(n: int) -> str:
            answer = gemini.models.generate_content(
                model=TEXT_MODEL, contents=f"[[sim:delay=2]] native {n}"
            )
            return str(answer.text)

        def completion(n: int) -> str:
            answer = chat.chat.completions.create(
                model=TEXT_MODEL, messages=[{"role": "user", "content": f"[[sim:delay=2]] {n}"}]
            )
            return str(answer.choices[0].message.content)

        def stream(n: int) -> str:
            chunks = gemini.models.generate_content_stream(
                model=TEXT_MODEL, contents=f"[[sim:delay=1,slow_stream=0.6]] stream {n}"
            )
            return "".join(chunk.text or "" for chunk in chunks)

        calls = [
            *(lambda n=n: native(n) for n in range(10)),
            *(lambda n=n: completion(n) for n in range(10)),
            *(lambda n=n: stream(n) for n in range(10)),
        ]
        results, threads = _each_in_a_thread(calls)
        _in_flight_at_simulator(simulator, len(calls))
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)

        # Not ready at once, while the listener still takes connections (the drain delay);
        # answers then ask the client to close its connection.
        while (ready := httpx.get(f"{gw.url}/readyz", timeout=5)).status_code == 200:
            assert time.monotonic() - signalled < 1, "/readyz still ready"
        assert ready.status_code == 503 and ready.json()["status"] == "draining", ready.text
        assert ready.headers["connection"] == "close"
        # Then new connections are refused.
        while True:
            try:
                httpx.get(f"{gw.url}/healthz", timeout=1)
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                # A connection the kernel queued just before the listener closed is reset,
                # not refused: either way the listener has gone.
                break
            waited = time.monotonic() - signalled
            assert waited < DELAY_S + 2, f"the listener still open {waited:.1f} s after"
            time.sleep(0.05)
        waited = time.monotonic() - signalled
        assert waited >= DELAY_S - 0.2, f"the listener closed {waited:.1f} s after, too early"

        for thread in threads:
            thread.join(60)
        failures = [r for r in results if isinstance(r, Exception)]
        assert not failures, failures
        assert len(results) == len(calls) and all(results), results
        # The calls took ~2-4 s; the process did not sit out its 20 s grace.
        exited = _exit_after(gw, signalled, GRACE_S)
        assert exited < 12, f"exited {exited:.1f} s after the signal"
    finally:
        stop(gw.proc)
    ledger_matches_balances(gw)
    records = query(
        gw,
        "SELECT u.status, u.cost > 0, COUNT(*) FROM usage_records u "
        "JOIN api_keys k ON k.id = u.key_id WHERE k.name = 'credits-test' "
        "GROUP BY u.status, u.cost > 0",
    )
    assert [tuple(map(int, row)) for row in records] == [(200, 1, len(calls))], records
    settled = query(gw, "SELECT state, COUNT(*) FROM holds GROUP BY state")
    assert [(state, int(n)) for state, n in settled] == [("settled", len(calls))], settled


def test_past_the_grace_a_call_is_cut_and_refunded(tmp_path: Path, simulator: Simulator) -> None:
    grace = 3.0
    gw = _gateway(tmp_path, simulator, NANOGATE_SHUTDOWN_GRACE_SECONDS=str(grace))
    try:
        key = new_key(gw, 10**9)
        simulator.clear()
        gemini = sdk_client(gw, key)

        def slow_call() -> httpx.Response:
            return httpx.post(
                f"{gw.url}/v1beta/models/{TEXT_MODEL}:generateContent",
                json={"contents": [{"parts": [{"text": "[[sim:delay=30]] too slow"}]}]},
                headers={"x-goog-api-key": key},
                timeout=60,
            )

        def slow_stream() -> str:
            chunks = gemini.models.generate_content_stream(
                model=TEXT_MODEL, contents="[[sim:slow_stream=5]] a stream too slow"
            )
            return "".join(chunk.text or "" for chunk in chunks)

        results, threads = _each_in_a_thread([slow_call, slow_stream])
        _in_flight_at_simulator(simulator, 2)
        time.sleep(0.5)  # the stream's first chunk has gone out
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        exited = _exit_after(gw, signalled, grace + 10)
        assert exited < grace + 5, f"exited {exited:.1f} s after the signal"
    finally:
        stop(gw.proc)
    answers = {type(r).__name__: r for r in results}
    # Cut before its answer began: 503 in Google's envelope, saying what to do.
    cut = answers["Response"]
    assert cut.status_code == 503, cut.text
    error = cut.json()["error"]
    assert error["status"] == "UNAVAILABLE" and "shut down" in error["message"]
    assert "not charged" in error["message"]
    # With its request id, which the access log gives the status the client got.
    request_id = cut.headers["x-request-id"]
    (logged,) = [line for line in gw.logs().splitlines() if f'"request_id":"{request_id}"' in line]
    assert '"status":503' in logged, logged
    # The stream was cut mid-way: the client sees it broken, not complete.
    assert "Response" in answers and len(answers) == 2
    assert any(isinstance(r, Exception) for r in results), results
    ledger_matches_balances(gw)  # no hold pending
    holds = query(gw, "SELECT state, COUNT(*) FROM holds GROUP BY state")
    assert [(state, int(n)) for state, n in holds] == [("refunded", 2)], holds
    records = query(
        gw,
        "SELECT u.status, u.cost, u.error FROM usage_records u "
        "JOIN api_keys k ON k.id = u.key_id WHERE k.name = 'credits-test'",
    )
    assert sorted(records) == [(503, 0, "UNAVAILABLE")] * 2, records
    assert "Traceback" not in gw.logs()


def test_a_node_stopped_behind_nginx_fails_no_call(
    tmp_path: Path, simulator: Simulator, postgres_url: str
) -> None:
    """Two nodes behind nginx (docs/nginx.conf), calls flowing through it the whole time; one
    node gets SIGTERM: nginx moves to the other on the refused connection, and no call fails."""
    env = {"NANOGATE_DRAIN_DELAY_SECONDS": str(DELAY_S), "NANOGATE_TASK_WORKERS": "0"}
    with cluster(tmp_path, postgres_url, simulator, nodes=2, worker=False, **env) as two:
        key = new_key(two.nodes[0], 10**9)
        stopping = threading.Event()
        answers: list[int | str] = []

        def load(n: int) -> None:
            body = {"contents": [{"parts": [{"text": f"[[sim:delay=0.3]] caller {n}"}]}]}
            with httpx.Client(timeout=30) as client:
                while not stopping.is_set():
                    try:
                        response = client.post(
                            f"{two.url}/v1beta/models/{TEXT_MODEL}:generateContent",
                            json=body,
                            headers={"x-goog-api-key": key},
                        )
                        answers.append(response.status_code)
                    except httpx.HTTPError as exc:
                        answers.append(type(exc).__name__)

        callers = [threading.Thread(target=load, args=(n,)) for n in range(12)]
        leaving = two.nodes[1]
        try:
            for caller in callers:
                caller.start()
            time.sleep(2)
            before = len(answers)
            leaving.proc.send_signal(signal.SIGTERM)
            leaving.proc.wait(15)
            time.sleep(2)  # and on, on the node left
        finally:
            stopping.set()
            for caller in callers:
                caller.join(30)
        assert len(answers) - before > 24, "too few calls during the stop to prove anything"
        assert set(answers) == {200}, {a: answers.count(a) for a in set(answers)}
        assert leaving.proc.returncode == 0, leaving.logs()[-3000:]
        ledger_matches_balances(two.nodes[0])


def test_running_tasks_go_back_to_the_queue_and_another_node_finishes_them(
    tmp_path: Path, simulator: Simulator, postgres_url: str
) -> None:
    config = {"upstreams": [simulator_upstream(simulator, timeout_s=30, breaker_failures=1000)]}
    (tmp_path / "a").mkdir()
    a = start_gateway(
        tmp_path / "a",
        config,
        NANOGATE_DATABASE_URL=postgres_url,
        NANOGATE_NODE_ID="node-a",
        NANOGATE_TASK_WORKERS="8",
        **TASK_ENV,
    )
    b: Gateway | None = None
    try:
        simulator.clear()
        key = new_key(a, 10**9)
        prompts = [f"task-{uuid.uuid4().hex} [[sim:delay=8]]" for _ in range(6)]
        tasks = [
            task_id(create(a, key, "message", "google/nano-banana", {"prompt": p}), "message")
            for p in prompts
        ]
        _in_flight_at_simulator(simulator, len(tasks))
        assert query(a, "SELECT DISTINCT lease_owner FROM tasks") == [("node-a",)]
        # The second node takes no task until the first is told to stop.
        (tmp_path / "b").mkdir()
        b = join_gateway(
            dataclasses.replace(a, env={**a.env, "NANOGATE_NODE_ID": "node-b"}), tmp_path / "b"
        )
        simulator.clear()
        signalled = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        # Taken over at once (B polls every second), not after the 30 s lease ran out.
        _in_flight_at_simulator(simulator, len(tasks))
        assert time.monotonic() - signalled < 5
        # No request was in flight: it goes as soon as the drain delay is over.
        assert _exit_after(a, signalled, 10) < DELAY_S + 5
        for task in tasks:
            assert wait_final(b, key, "message", task, timeout=60)["status"] == "succeeded"
        rows = query(a, "SELECT lease_owner, attempts, COUNT(*) FROM tasks GROUP BY 1, 2")
        # The run the drain stopped does not count as an attempt.
        assert [(owner, int(n), int(c)) for owner, n, c in rows] == [("node-b", 1, len(tasks))]
        bodies = [r["body"] for r in simulator.requests()]
        for prompt in prompts:
            assert sum(prompt in body for body in bodies) == 1, prompt
        for request_id, kinds in _ledger_kinds(a).items():
            assert kinds == ["reserve", "settle"], (request_id, kinds)
        ledger_matches_balances(a)
    finally:
        stop(a.proc)
        if b is not None:
            stop(b.proc)


def _ledger_kinds(gw: Gateway) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    rows = query(
        gw,
        "SELECT l.request_id, l.kind FROM ledger l JOIN tasks t ON t.request_id = l.request_id "
        "ORDER BY l.id",
    )
    for request_id, kind in rows:
        kinds.setdefault(request_id, []).append(kind)
    return kinds


def test_readyz_reports_each_part_and_a_database_that_refuses(
    tmp_path: Path, simulator: Simulator, postgres_url: str
) -> None:
    gw = _gateway(tmp_path, simulator, NANOGATE_DATABASE_URL=postgres_url)
    try:
        ready = httpx.get(f"{gw.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready"
        assert (body["database"], body["storage"], body["redis"]) == ("up", "up", None)
        assert body["upstreams"] == {"sim": "up"}
        with postgres_down(postgres_url):
            started = time.monotonic()
            down = httpx.get(f"{gw.url}/readyz", timeout=10)
            assert time.monotonic() - started < 3
            assert down.status_code == 503, down.text
            assert down.json()["status"] == "unavailable"
            assert (down.json()["database"], down.json()["storage"]) == ("down", "up")
            # Liveness touches nothing: the process is alive.
            assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200
        deadline = time.monotonic() + 10
        while httpx.get(f"{gw.url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the database came back, /readyz did not"
            time.sleep(0.2)
    finally:
        stop(gw.proc)


def test_readyz_reports_storage_that_cannot_be_written(
    tmp_path: Path, simulator: Simulator
) -> None:
    # The storage directory is a file: nothing can be written under it.
    blocked = tmp_path / "storage"
    blocked.write_text("not a directory")
    gw = _gateway(tmp_path, simulator, NANOGATE_STORAGE_DIR=str(blocked))
    try:
        ready = httpx.get(f"{gw.url}/readyz", timeout=10)
        # Reported, not failing the node: text calls need no storage.
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded"
        assert (ready.json()["database"], ready.json()["storage"]) == ("up", "down")
        blocked.unlink()
        assert httpx.get(f"{gw.url}/readyz", timeout=10).json()["storage"] == "up"
    finally:
        stop(gw.proc)


def test_readyz_reports_redis_up_then_down_without_failing(
    tmp_path: Path, simulator: Simulator
) -> None:
    server = start_redis_server()
    gw = _gateway(tmp_path, simulator, NANOGATE_REDIS_URL=server.url)
    try:
        body = httpx.get(f"{gw.url}/readyz", timeout=10).json()
        assert (body["status"], body["redis"]) == ("ready", "up"), body
        server.kill()
        started = time.monotonic()
        down = httpx.get(f"{gw.url}/readyz", timeout=10)
        assert time.monotonic() - started < 3
        # Reported, not failing the node: limits fall back to each node's own meanwhile.
        assert down.status_code == 200, down.text
        assert (down.json()["status"], down.json()["redis"]) == ("degraded", "down")
        server.start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{gw.url}/readyz", timeout=10).json()["redis"] != "up":
            assert time.monotonic() < deadline, "Redis came back, /readyz did not see it"
            time.sleep(0.2)
    finally:
        stop(gw.proc)
        server.kill()
