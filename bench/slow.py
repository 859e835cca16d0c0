"""Slow upstreams: 2,000 concurrent requests to a simulator that takes 5 s, direct vs. through the
gateway with its default settings, in one run; and what routing costs on small requests.

Run `python bench/slow.py [--quick] [--requests N] [--delay S] [--rounds N] [--backlog N]`. The
script starts its own processes on free loopback ports: simulators, a gateway per simulator whose
only upstream is that simulator (every setting at its default: no concurrency cap, metering on),
and a gateway with three upstreams configured (two weighted in one priority group, one fallback)
on the same simulator. It raises its open-file limit first (children inherit it), drives the load
with aiohttp from this process (uvloop when installed), prints tables, and writes the figures to
bench/results/slow.json. Ctrl-C, SIGTERM or an error stop every process it started.

S. slow burst: `--requests` (2,000) image requests (`gemini-2.5-flash-image`) sent at once, each
   asking the simulator to take `--delay` (5) seconds (a `[[sim:delay=5]]` prompt directive, so
   the very same body goes direct and through the gateway). Each side gets a fresh client
   session (2,000 new connections); the gateway side runs after the direct one. Reported:
   answers, errors by kind, p50/p99/max latency, wall time, the server's CPU seconds and its
   RSS (before, sampled peak, VmHWM). Goals: every request answered, gateway p99 within 1.1x of
   direct's, gateway RSS under 400 MB. It runs twice: on the stock simulator
   (`python -m tests.simulator`, aiohttp's listen backlog of 128: a burst of 2,000 connects
   overflows its accept queue, and the dropped SYNs come back after the kernel's 1 s and 3 s
   retransmit timeouts, on the direct side as on the gateway's), and on the same simulator app
   listening with `--backlog` (4096), where direct is what a production upstream looks like and
   the gateway's own cost shows undiluted.
R. routing cost: small text `generateContent` in a closed loop at concurrency 1 and 32, on
   direct, the one-upstream gateway ("1 upstream") and the three-upstream gateway ("3
   upstreams"), in alternating rounds: requests/s and p50/p99. "3 upstreams"/"1 upstream" near
   1.00x (req/s) means routing among several upstreams costs nothing measurable.
P. the router alone, in this process: `Router.generate` over adapters that answer at once, with
   1 upstream, 3 upstreams (two weighted, one fallback) and 1 capped upstream, against calling
   the adapter directly: microseconds a call, what routing adds to each request.

The two cores of the reference box are shared by this client, the gateway and the simulator,
so absolute figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from common import (
    SIM_KEY,
    RssPeak,
    Server,
    cpu_seconds,
    gateway_env,
    interrupt_on_signals,
    launch_gateway,
    loop_factory,
    machine,
    percentile,
    raise_fd_limit,
    start_simulator,
    status_kib,
    wait_for_output,
    write_json,
)

from tests.simulator.processes import free_port, pump_stdout, stop

IMAGE_MODEL = "gemini-2.5-flash-image"
TEXT_MODEL = "gemini-2.5-flash"
TEXT_BODY = b'{"contents":[{"parts":[{"text":"hello"}]}]}'
RESULTS = Path(__file__).resolve().parent / "results" / "slow.json"
CLIENT_TIMEOUT_S = 120.0  # what a patient client waits before giving up
P99_GOAL_X = 1.1
RSS_GOAL_MB = 400.0


def serve_simulator(backlog: int) -> None:
    """Child mode (`--serve-simulator`): the simulator's app (`tests.simulator.build_app`) on
    a socket listening with `backlog`, announced like `python -m tests.simulator` does."""
    import signal

    from aiohttp import web

    from tests.simulator import SimState, build_app

    async def main() -> None:
        state = SimState(api_key=SIM_KEY, record=False)
        state.image_b64()  # built now, not on the first timed request
        runner = web.AppRunner(build_app(state), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=backlog).start()
        print(f"SIMULATOR LISTENING http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    make_loop, _ = loop_factory()
    with asyncio.Runner(loop_factory=make_loop) as runner:
        runner.run(main())


def start_deep_simulator(stack: ExitStack, tmp: Path, backlog: int) -> Server:
    log = tmp / "simulator-deep.log"
    cmd = [sys.executable, __file__, "--serve-simulator", "--backlog", str(backlog)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    stack.callback(stop, proc)
    found = wait_for_output(pump_stdout(proc), re.compile(r"SIMULATOR LISTENING (\S+)"), 60, log)
    return Server("simulator", found[-1].split()[-1], SIM_KEY, proc, log)


def slow_body(delay: float) -> bytes:
    prompt = f"draw a lighthouse at dusk [[sim:delay={delay:g}]]"
    return orjson.dumps({"contents": [{"parts": [{"text": prompt}]}]})


@dataclass(frozen=True)
class Side:
    """Where requests go: the simulator itself, or a gateway in front of it."""

    label: str
    url: str
    key: str
    pid: int

    def url_for(self, model: str) -> str:
        return f"{self.url}/v1beta/models/{model}:generateContent"

    @property
    def headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.key, "Content-Type": "application/json"}


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0

    def add(self, other: Samples) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.wall_s += other.wall_s

    def summary(self) -> dict[str, Any]:
        ms = [x * 1000 for x in self.latencies]
        return {
            "ok": len(ms),
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "max_ms": max(ms) if ms else float("nan"),
        }


async def one(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes, out: Samples
) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            data = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.errors[type(exc).__name__] += 1
        return
    if status != 200 or not data:
        out.errors[f"HTTP {status}"] += 1
        return
    out.latencies.append(time.perf_counter() - started)


def session(limit: int) -> aiohttp.ClientSession:
    # limit=0: no cap on connections; every one of the burst's requests gets its own.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S),
    )


# --- S: the slow burst --------------------------------------------------------------------


async def burst(side: Side, requests: int, delay: float, scenario: str) -> dict[str, Any]:
    """`requests` slow requests released at once on fresh connections."""
    body = slow_body(delay)
    url, headers = side.url_for(IMAGE_MODEL), side.headers
    out = Samples()
    async with session(0) as warm:  # the key cache, the route's code: not the connections
        await asyncio.gather(
            *(one(warm, side.url_for(TEXT_MODEL), headers, TEXT_BODY, out) for _ in range(4))
        )
    out = Samples()
    await asyncio.sleep(0.5)
    cpu_before = cpu_seconds(side.pid)
    async with session(0) as client:
        go = asyncio.Event()

        async def sender() -> None:
            await go.wait()
            await one(client, url, headers, body, out)

        tasks = [asyncio.create_task(sender()) for _ in range(requests)]
        await asyncio.sleep(0)
        with RssPeak(side.pid) as rss:
            started = time.perf_counter()
            go.set()
            await asyncio.gather(*tasks)
            wall = time.perf_counter() - started
    return {
        "scenario": scenario,
        "target": side.label,
        "requests": requests,
        **out.summary(),
        "wall_s": wall,
        "server_cpu_s": cpu_seconds(side.pid) - cpu_before,
        "rss_before_mb": rss.baseline_kib / 1024,
        "rss_peak_mb": rss.peak_kib / 1024,
        "rss_hwm_mb": status_kib(side.pid, "VmHWM") / 1024,
    }


# --- R: routing cost on small requests ----------------------------------------------------


async def closed_loop(side: Side, concurrency: int, seconds: float, warmup_s: float) -> Samples:
    url, headers = side.url_for(TEXT_MODEL), side.headers
    async with session(concurrency) as client:
        for measured, span in ((False, warmup_s), (True, seconds)):
            out = Samples()
            deadline = time.perf_counter() + span

            async def worker(out: Samples = out, deadline: float = deadline) -> None:
                while time.perf_counter() < deadline:
                    await one(client, url, headers, TEXT_BODY, out)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            out.wall_s = time.perf_counter() - started
            if measured:
                return out
    raise AssertionError("unreachable")


def routing_cost(
    runner: asyncio.Runner,
    sides: tuple[Side, ...],
    concurrency: int,
    seconds: float,
    rounds: int,
) -> list[dict[str, Any]]:
    """Every side in alternating rounds (in order, then reversed, ...): a slow patch of the
    shared machine hits every side instead of one."""
    totals = {side.label: Samples() for side in sides}
    for index in range(rounds):
        order = sides if index % 2 == 0 else sides[::-1]
        for side in order:
            print(f"  R c={concurrency}: {side.label}, round {index + 1}/{rounds}", flush=True)
            totals[side.label].add(
                runner.run(closed_loop(side, concurrency, seconds / rounds, 1.0))
            )
    rows = []
    for label, total in totals.items():
        summary = total.summary()
        rows.append(
            {
                "scenario": f"R small c={concurrency}",
                "target": label,
                **summary,
                "rps": summary["ok"] / total.wall_s if total.wall_s else 0.0,
            }
        )
    return rows


# --- P: the router alone -------------------------------------------------------------------


class Instant:
    """An adapter that answers at once: what is left to measure is the router."""

    kind = "bench"

    def __init__(self, name: str) -> None:
        self.name = name

    async def generate(self, call: Any) -> Any:
        from nanogate.core.types import Reply

        return Reply(b"{}", self.name)

    async def stream(self, call: Any) -> Any:
        raise NotImplementedError

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        return None


async def router_alone(calls: int) -> list[dict[str, Any]]:
    from nanogate.core.catalog import load_catalog
    from nanogate.core.config import UpstreamConfig
    from nanogate.core.types import Call
    from nanogate.routing import Router

    call = Call("bench", "generateContent", load_catalog().resolve(TEXT_MODEL), TEXT_BODY, {})

    def config(name: str, **fields: Any) -> UpstreamConfig:
        return UpstreamConfig.model_validate({"name": name, "kind": "gemini", **fields})

    adapter = Instant("a")
    setups: dict[str, Any] = {
        "adapter alone": adapter,
        "1 upstream": Router([(config("a"), adapter)]),
        "3 upstreams": Router(
            [
                (config("a", weight=3), adapter),
                (config("b", weight=1), Instant("b")),
                (config("c", priority=1), Instant("c")),
            ]
        ),
        "1 capped upstream": Router([(config("a", max_concurrency=64), adapter)]),
    }
    rows = []
    for label, target in setups.items():
        best = float("inf")
        for _ in range(3):  # the best of three: the least disturbed by the rest of the box
            started = time.perf_counter()
            for _ in range(calls):
                await target.generate(call)
            best = min(best, time.perf_counter() - started)
        rows.append(
            {"scenario": "P router alone", "target": label, "us_per_call": best / calls * 1e6}
        )
    base = rows[0]["us_per_call"]
    for row in rows:
        row["added_us"] = row["us_per_call"] - base
    return rows


# --- processes ----------------------------------------------------------------------------


def upstream(sim: Server, name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "kind": "gemini", "base_url": sim.url, "api_key": SIM_KEY, **fields}


def start_gateway(stack: ExitStack, root: Path, name: str, config: dict[str, Any]) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "nanogate.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    return launch_gateway(stack, root, port, gateway_env(root, port, path), name)


# --- report -------------------------------------------------------------------------------


def _f(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


Column = tuple[str, str, int, int]  # heading, row key, width, decimals


def print_rows(title: str, columns: list[Column], rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print("  " + "  ".join(f"{head:>{width}}" for head, _, width, _ in columns))
    for row in rows:
        cells = []
        for _, key, width, digits in columns:
            value = row.get(key)
            cells.append(f"{value if isinstance(value, str) else _f(value, digits):>{width}}")
        print("  " + "  ".join(cells))


SLOW_COLUMNS: list[Column] = [
    ("target", "target", 10, 0),
    ("ok", "ok", 6, 0),
    ("errors", "errors", 6, 0),
    ("p50 ms", "p50_ms", 8, 0),
    ("p99 ms", "p99_ms", 8, 0),
    ("max ms", "max_ms", 8, 0),
    ("wall s", "wall_s", 7, 2),
    ("cpu s", "server_cpu_s", 7, 2),
    ("RSS MB before", "rss_before_mb", 13, 0),
    ("peak", "rss_peak_mb", 6, 0),
    ("HWM", "rss_hwm_mb", 6, 0),
]
SMALL_COLUMNS: list[Column] = [
    ("scenario", "scenario", 16, 0),
    ("target", "target", 11, 0),
    ("req/s", "rps", 8, 0),
    ("p50 ms", "p50_ms", 8, 2),
    ("p99 ms", "p99_ms", 8, 2),
    ("errors", "errors", 6, 0),
]


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One S scenario's direct and gateway rows against the goals."""
    direct = next(r for r in rows if r["target"] == "direct")
    gateway = next(r for r in rows if r["target"] == "gateway")
    p99_x = gateway["p99_ms"] / direct["p99_ms"] if direct["p99_ms"] else float("nan")
    rss = max(gateway["rss_peak_mb"], gateway["rss_hwm_mb"])
    return {
        "all_answered": gateway["ok"] == gateway["requests"] and direct["ok"] == direct["requests"],
        "p99_x": p99_x,
        "p99_ok": p99_x <= P99_GOAL_X,
        "gateway_rss_mb": rss,
        "rss_ok": rss < RSS_GOAL_MB,
    }


def routing_ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    by = {(r["scenario"], r["target"]): r for r in rows}
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        one_up, three = by.get((scenario, "1 upstream")), by.get((scenario, "3 upstreams"))
        if one_up and three and one_up["rps"]:
            out[scenario] = {
                "rps_x": three["rps"] / one_up["rps"],
                "p50_x": three["p50_ms"] / one_up["p50_ms"],
                "p99_x": three["p99_ms"] / one_up["p99_ms"],
            }
    return out


def report(args: argparse.Namespace, env: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    doc: dict[str, Any] = {"environment": env, "results": rows, "slow": {}}
    slow = [r for r in rows if r["scenario"].startswith("S")]
    if slow:
        print_rows(
            f"S. {args.requests} concurrent image requests, the upstream takes {args.delay:g} s "
            "(gateway: default settings; RSS of the server under test)",
            [("scenario", "scenario", 26, 0), *SLOW_COLUMNS],
            slow,
        )
        print(
            f"\n  goals: all answered, gateway p99 <= {P99_GOAL_X}x direct's, "
            f"RSS < {RSS_GOAL_MB:.0f} MB"
        )
    for scenario in dict.fromkeys(r["scenario"] for r in slow):
        v = doc["slow"][scenario] = verdict([r for r in slow if r["scenario"] == scenario])
        print(
            f"  {scenario:<26} all answered: {'yes' if v['all_answered'] else 'NO'};  "
            f"p99 gateway/direct {v['p99_x']:.3f}x ({'ok' if v['p99_ok'] else 'MISSED'});  "
            f"gateway RSS {v['gateway_rss_mb']:.0f} MB ({'ok' if v['rss_ok'] else 'MISSED'})"
        )
    alone = [r for r in rows if r["scenario"].startswith("P")]
    if alone:
        print("\nP. the router alone (in-process, adapters that answer at once; best of 3)")
        for row in alone:
            print(
                f"  {row['target']:<18} {row['us_per_call']:6.1f} us a call"
                + ("" if row["target"] == "adapter alone" else f"  (+{row['added_us']:.1f} us)")
            )
    small = [r for r in rows if r["scenario"].startswith("R")]
    if small:
        print_rows("R. small text generateContent, closed loop", SMALL_COLUMNS, small)
        doc["routing"] = routing_ratios(small)
        print(
            "\n  3 upstreams / 1 upstream (req/s 1.00x: routing is free; latency: above 1 = cost)"
        )
        for scenario, r in doc["routing"].items():
            print(
                f"  {scenario:<16} req/s {r['rps_x']:.3f}x  p50 {r['p50_x']:.3f}x  "
                f"p99 {r['p99_x']:.3f}x"
            )
    for row in rows:
        if row.get("errors"):
            print(f"  ! {row['scenario']} {row['target']}: errors {row['error_kinds']}")
    write_json(RESULTS, doc)


# --- entry point --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="500 requests, 3 s per small case")
    parser.add_argument("--requests", type=int, default=None, help="slow burst size (2000)")
    parser.add_argument("--delay", type=float, default=5.0, help="simulator delay, seconds")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds in R")
    parser.add_argument("--seconds", type=float, default=None, help="R: seconds per side (10)")
    parser.add_argument(
        "--backlog", type=int, default=4096, help="listen backlog of S's second simulator (0: skip)"
    )
    parser.add_argument("--no-small", action="store_true", help="skip scenario R")
    parser.add_argument("--no-slow", action="store_true", help="skip scenario S")
    parser.add_argument("--serve-simulator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.requests = args.requests or (500 if args.quick else 2000)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_simulator:
        serve_simulator(args.backlog)
        return 0
    fds = raise_fd_limit()
    if fds < 2 * args.requests + 256:
        print(f"open-file limit {fds} is too low for {args.requests} connections", file=sys.stderr)
        return 2
    make_loop, loop_name = loop_factory()
    env = machine(
        loop_name,
        open_file_limit=fds,
        args={k: v for k, v in vars(args).items() if k != "serve_simulator"},
    )
    print(f"nanogate slow-upstream benchmark: {env}")
    rows: list[dict[str, Any]] = []
    with (
        interrupt_on_signals(),
        tempfile.TemporaryDirectory(prefix="nanogate-bench-slow-") as tmp_name,
        ExitStack() as stack,
        asyncio.Runner(loop_factory=make_loop) as runner,
    ):
        tmp = Path(tmp_name)
        sim = start_simulator(stack, tmp, None)
        one_up = start_gateway(
            stack, tmp / "one", "1 upstream", {"upstreams": [upstream(sim, "sim")]}
        )
        direct = Side("direct", sim.url, SIM_KEY, sim.pid)
        if not args.no_small:
            rows += runner.run(router_alone(20_000 if args.quick else 100_000))
            three = start_gateway(
                stack,
                tmp / "three",
                "3 upstreams",
                {
                    "upstreams": [
                        upstream(sim, "primary-a", weight=3),
                        upstream(sim, "primary-b", weight=1),
                        upstream(sim, "fallback", priority=1),
                    ]
                },
            )
            sides = (
                direct,
                Side("1 upstream", one_up.url, one_up.key, one_up.pid),
                Side("3 upstreams", three.url, three.key, three.pid),
            )
            for concurrency in (1, 32):
                rows += routing_cost(runner, sides, concurrency, args.seconds, args.rounds)
        if not args.no_slow:
            stacks = [("S stock simulator", sim, one_up)]
            if args.backlog:
                deep = start_deep_simulator(stack, tmp, args.backlog)
                deep_gw = start_gateway(
                    stack, tmp / "deep", "gateway", {"upstreams": [upstream(deep, "sim")]}
                )
                stacks.append((f"S simulator backlog {args.backlog}", deep, deep_gw))
            for scenario, server, gateway in stacks:
                for side in (
                    Side("direct", server.url, SIM_KEY, server.pid),
                    Side("gateway", gateway.url, gateway.key, gateway.pid),
                ):
                    print(f"  {scenario}: {args.requests} x {args.delay:g} s, {side.label}")
                    rows.append(runner.run(burst(side, args.requests, args.delay, scenario)))
    report(args, env, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
