"""One node against three, behind nginx, in cluster mode: what a request costs.

Run `python bench/cluster.py [--quick]` from the repository. It starts the cluster the tests use
(tests/integration/cluster.py: `nanogate serve` nodes on a fresh PostgreSQL database, with Redis
under a fresh key prefix, and Debian's nginx in front with docs/nginx.conf), once with one node
and once with three, and sends small text `generateContent` calls through nginx in a closed loop
at concurrency 1 and 32, in alternating rounds (relay.py's load generator). It prints, per
target: requests/s, p50/p99 latency, and CPU ms per answered request summed over every gateway
process and nginx, and writes the raw numbers to bench/results/cluster.json.

How to read it: on the 2-core reference box, three nodes cannot serve more than one: client,
nginx, nodes, simulator, PostgreSQL and Redis share two cores. The figure that matters is the
cost per request (CPU ms/req of the gateways and nginx together), which three nodes should not
raise much: each call still makes the same database and Redis round trips, whichever node takes
it.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from common import (
    interrupt_on_signals,
    loop_factory,
    machine,
    postgres_database,
    run_script,
    write_json,
)
from relay import (
    PG_SERVER,
    Knobs,
    Measurement,
    Target,
    closed_loop_round,
    knobs_for,
    print_table,
    request_to,
)

from tests.integration.cluster import cluster
from tests.integration.conftest import start_simulator
from tests.simulator.processes import stop

RESULTS = Path(__file__).resolve().parent / "results" / "cluster.json"
REDIS_URL = "redis://127.0.0.1:6379/0"


def nginx_pids(tmp: Path) -> dict[str, int]:
    """The nginx the cluster started (its pid file, under the cluster's folder) and its
    workers, which do the proxying."""
    master = int(next(tmp.rglob("nginx.pid")).read_text().split()[0])
    found = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
    workers = [int(pid) for pid in found.stdout.split()]
    return {"nginx": master} | {f"nginx-w{i}": pid for i, pid in enumerate(workers)}


def measure(targets: list[Target], knobs: Knobs, runner: asyncio.Runner) -> list[dict[str, Any]]:
    rows = []
    for concurrency in knobs.text_concurrency:
        totals = {target.label: Measurement() for target in targets}
        for index in range(knobs.rounds):
            order = targets if index % 2 == 0 else targets[::-1]
            for target in order:
                print(f"  c={concurrency}: {target.label}, round {index + 1}", flush=True)
                runner.run(
                    closed_loop_round(
                        target, request_to(target), concurrency, knobs, totals[target.label]
                    )
                )
        for target in targets:
            row = totals[target.label].summary()
            cpu = row["cpu_ms_per_req"]
            row["serving_cpu_ms_per_req"] = sum(
                ms for name, ms in cpu.items() if name.startswith(("node", "nginx"))
            )
            rows.append({"target": target.label, "concurrency": concurrency, **row})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter rounds")
    args = parser.parse_args()
    knobs = knobs_for(args.quick)
    factory, loop_name = loop_factory()
    with (
        interrupt_on_signals(),
        ExitStack() as stack,
        asyncio.Runner(loop_factory=factory) as runner,
    ):
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nanogate-cluster-")))
        sim = start_simulator("--no-record")
        stack.callback(stop, sim.proc)
        targets = []
        for count in (1, 3):
            database = postgres_database(stack, PG_SERVER)
            env = {
                "NANOGATE_REDIS_URL": REDIS_URL,
                "NANOGATE_REDIS_KEY_PREFIX": f"bench-{secrets.token_hex(4)}:",
                "NANOGATE_LOG_LEVEL": "warning",
            }
            folder = tmp / f"nodes{count}"
            up = stack.enter_context(
                cluster(folder, database, sim, nodes=count, worker=False, **env)
            )
            pids = {f"node{i + 1}": node.proc.pid for i, node in enumerate(up.nodes)}
            pids |= nginx_pids(folder)
            label = f"{count} node{'s' if count > 1 else ''}"
            targets.append(Target(label, up.url, up.client_key, up.nodes[0].proc.pid, pids))
        rows = measure(targets, knobs, runner)
    print_table(
        "Small text generateContent through nginx (PostgreSQL + Redis, metered)",
        [
            ("target", lambda r: r["target"], 0),
            ("conc", lambda r: r["concurrency"], 0),
            ("req/s", lambda r: r["rps"], 1),
            ("p50 ms", lambda r: r["p50_ms"], 2),
            ("p99 ms", lambda r: r["p99_ms"], 2),
            ("gateways+nginx cpu ms/req", lambda r: r["serving_cpu_ms_per_req"], 3),
            ("errors", lambda r: r["errors"], 0),
        ],
        rows,
    )
    write_json(RESULTS, {"machine": machine(loop_name), "knobs": vars(knobs), "rows": rows})
    return 0


if __name__ == "__main__":
    run_script(main)
