"""Tasks survive crashes and run once: a kill -9 of the server mid-task and a restart (one
charge, one callback), and two `nanogate worker` processes on PostgreSQL sharing a burst."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.simulator.processes import stop

from .conftest import Gateway, Simulator, simulator_upstream, start_gateway
from .receiver import Receiver
from .test_credits import balance, ledger_matches_balances, new_key, query
from .test_credits_under_load import restart
from .test_tasks import SECRET, TASK_ENV, create, info, task_id, wait_final


def test_kill_9_mid_task_then_restart_finishes_it_once(
    tmp_path: Path, database_env: dict[str, str], receiver: Receiver
) -> None:
    config = {"upstreams": [{"name": "demo", "kind": "demo", "latency_ms": 3000}]}
    gw = start_gateway(tmp_path, config, NANOGATE_NODE_ID="node-a", **TASK_ENV, **database_env)
    proc = gw.proc
    try:
        key = new_key(gw, 10_000_000)
        path = f"/cb/{uuid.uuid4().hex}"
        task = task_id(
            create(gw, key, "message", "google/nano-banana", {"prompt": "x"}, receiver.url + path),
            "message",
        )
        deadline = time.monotonic() + 10
        while info(gw, key, "message", task).json()["data"]["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc = restart(gw)
        data = wait_final(gw, key, "message", task, timeout=60)
        assert data["status"] == "succeeded"
        (delivery,) = receiver.wait_for(path)
        assert delivery.verified(SECRET)
        time.sleep(3)
        assert len(receiver.at(path)) == 1
        ((request_id, attempts),) = query(
            gw, f"SELECT request_id, attempts FROM tasks WHERE id = '{task}'"
        )
        assert attempts == 2  # the run the kill cut short, and the one that finished
        kinds = query(gw, f"SELECT kind FROM ledger WHERE request_id = '{request_id}' ORDER BY id")
        assert kinds == [("reserve",), ("settle",)]
        assert balance(gw, key) == 10_000_000 - data["cost"]
        ledger_matches_balances(gw)
    finally:
        stop(proc)


def start_worker(gw: Gateway, name: str, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nanogate", "worker", "--concurrency", "8", "--id", name],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        text=True,
        env=gw.env,
    )


def test_two_workers_on_postgresql_run_each_task_once(
    tmp_path: Path, simulator: Simulator, postgres_url: str
) -> None:
    config = {"upstreams": [simulator_upstream(simulator, timeout_s=10, breaker_failures=1000)]}
    # The server only takes tasks; the two workers run them.
    gw = start_gateway(
        tmp_path, config, NANOGATE_DATABASE_URL=postgres_url, NANOGATE_TASK_WORKERS="0", **TASK_ENV
    )
    workers = [start_worker(gw, f"w{i}", tmp_path / f"worker{i}.log") for i in (1, 2)]
    try:
        simulator.clear()
        key = new_key(gw, 100_000_000)
        prompts = [f"burst-{uuid.uuid4().hex} [[sim:delay=0.1]]" for _ in range(60)]

        async def burst() -> list[str]:
            async with httpx.AsyncClient(timeout=30) as client:
                answers = await asyncio.gather(
                    *(
                        client.post(
                            f"{gw.url}/api/v1/client/job/CreateTask",
                            headers={"x-api-key": key},
                            json={"model": "google/nano-banana", "input": {"prompt": prompt}},
                        )
                        for prompt in prompts
                    )
                )
            return [task_id(answer, "message") for answer in answers]

        tasks = asyncio.run(burst())
        for task in tasks:
            assert wait_final(gw, key, "message", task, timeout=60)["status"] == "succeeded"
        bodies = [r["body"] for r in simulator.requests()]
        for prompt in prompts:
            assert sum(prompt in body for body in bodies) == 1, prompt
        owners = query(gw, "SELECT attempts, COUNT(*) FROM tasks GROUP BY attempts")
        assert owners == [(1, 60)]
        # Both workers took a share; the finishing worker is kept as the lease owner.
        shares = dict(query(gw, "SELECT lease_owner, COUNT(*) FROM tasks GROUP BY lease_owner"))
        assert set(shares) == {"w1", "w2"}, shares
        ledger_matches_balances(gw)
    finally:
        for worker in workers:
            stop(worker)
        stop(gw.proc)
