"""Relay overhead: the simulator called directly vs. the gateway relaying to that same simulator.

Run `python bench/relay.py [--quick]` (or `make bench`). The script starts its own processes on
free loopback ports (a simulator, and `nanogate serve` with a temporary data dir and a config
whose only upstream is that simulator), drives both with an aiohttp load generator running in
this process, prints tables, and writes everything to bench/results/latest.json.

What it measures, each first against the simulator ("direct") and then through the gateway:

A. small text `generateContent`, closed loop at concurrency 1 and 32 for a fixed duration after
   a warm-up: requests/s, p50/p99 latency, errors.
B. 16 MiB image responses (about 22 MB of base64 JSON each), 8 in flight, a fixed number of
   requests: wall time, per-request p50/p99, MB/s, and the RSS of the server under test
   (the simulator for direct, the gateway for the relay), sampled every 20 ms: baseline before
   the scenario, sampled peak, and the kernel's high-water mark (VmHWM).
C. streaming `streamGenerateContent?alt=sse` of small text at concurrency 32: requests/s,
   time to first byte and total time, p50/p99.

How to read it: the "gateway/direct" ratios are the point. For throughput (req/s, MB/s) 1.0x
means the gateway costs nothing; for latency a ratio above 1 is the relay's overhead. The
"CPU ms/req" columns split where the CPU time went (gateway process, simulator process, this
load generator), which is what bounds throughput here: the machine's cores are shared by the
client, the gateway and the simulator, so a gateway run also has one more process competing
for them than a direct run. Absolute numbers are only comparable within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import yaml

SIM_KEY = "bench-simulator-key-0123456789abcdef"
TEXT_MODEL = "gemini-2.5-flash"
IMAGE_MODEL = "gemini-2.5-flash-image"
TEXT_BODY = b'{"contents":[{"parts":[{"text":"hello"}]}]}'
IMAGE_BYTES = 16 * 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
RSS_INTERVAL_S = 0.020
CLIENT_READ_BUFSIZE = 1 << 20
MiB = 1024 * 1024


@dataclass(frozen=True)
class Knobs:
    duration_s: float
    warmup_s: float
    text_concurrency: tuple[int, ...]
    stream_concurrency: int
    image_concurrency: int
    image_requests: int
    image_bytes: int


def knobs_for(quick: bool) -> Knobs:
    return Knobs(
        duration_s=3.0 if quick else 10.0,
        warmup_s=1.0 if quick else 2.0,
        text_concurrency=(1, 32),
        stream_concurrency=32,
        image_concurrency=8,
        image_requests=8 if quick else 24,
        image_bytes=IMAGE_BYTES,
    )


# --- processes ----------------------------------------------------------------------------


@dataclass
class Server:
    """A child process serving HTTP, and the key a client presents to it."""

    name: str
    url: str
    key: str
    proc: subprocess.Popen[str]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pump_stdout(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """Drain the child's stdout forever (a full pipe would block it); lines go to a queue."""
    lines: queue.Queue[str | None] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None

    def pump() -> None:
        for line in stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for_line(
    lines: queue.Queue[str | None], pattern: re.Pattern[str], timeout: float, log: Path
) -> list[str]:
    """Lines up to and including the first matching `pattern`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if pattern.search(line):
            return seen
    raise RuntimeError(
        f"no line matching {pattern.pattern!r}; stdout: {seen[-10:]}\n"
        f"stderr: {log.read_text()[-3000:]}"
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_simulator(stack: ExitStack, tmp: Path, image_bytes: int | None) -> Server:
    log = tmp / f"simulator-{image_bytes or 'small'}.log"
    cmd = [sys.executable, "-m", "nanogate.simulator", "--port", "0"]
    cmd += ["--api-key", SIM_KEY, "--no-record"]
    if image_bytes is not None:
        cmd += ["--image-bytes", str(image_bytes)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    stack.callback(stop, proc)
    lines = _pump_stdout(proc)
    found = _wait_for_line(lines, re.compile(r"SIMULATOR LISTENING (\S+)"), 60, log)
    return Server("simulator", found[-1].split()[-1], SIM_KEY, proc, log)


def gateway_config(sim_url: str) -> dict[str, Any]:
    upstream = {
        "name": "sim",
        "kind": "gemini",
        "base_url": sim_url,
        "api_key": SIM_KEY,
        "max_concurrency": 256,
        "breaker_failures": 1000,
    }
    return {"upstreams": [upstream]}


def gateway_env(tmp: Path, port: int, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOGATE_")}
    env.update(
        NANOGATE_DATA_DIR=str(tmp / "data"),
        NANOGATE_PORT=str(port),
        NANOGATE_CONFIG=str(config),
        NANOGATE_LOG_LEVEL="warning",
        NANOGATE_KEY_CACHE_SECONDS="60",
        # Far more than any run spends, should billing ever refuse an empty key.
        NANOGATE_STARTER_CREDITS=str(10**15),
    )
    return env


def start_gateway(stack: ExitStack, tmp: Path, sim: Server) -> Server:
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "nanogate.yaml"
    config.write_text(yaml.safe_dump(gateway_config(sim.url)))
    port = free_port()
    log = tmp / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanogate", "serve"],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=gateway_env(tmp, port, config),
    )
    stack.callback(stop, proc)
    lines = _pump_stdout(proc)
    found = _wait_for_line(lines, re.compile(r"^NANOGATE_CLIENT_KEY="), 120, log)
    key = found[-1].split("=", 1)[1].strip()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log)
    return Server("gateway", url, key, proc, log)


def wait_healthy(url: str, proc: subprocess.Popen[str], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway not healthy at {url}:\n{log.read_text()[-3000:]}")


# --- /proc probes -------------------------------------------------------------------------


def proc_status_kib(pid: int, field_name: str) -> int:
    """A `kB` field of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/{pid}/status")


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces; the fields after its closing paren don't.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class RssSampler:
    """Samples VmRSS of one process on a thread; `peak_kib` is the largest sample seen."""

    def __init__(self, pid: int, interval: float = RSS_INTERVAL_S) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline_kib = proc_status_kib(pid, "VmRSS")
        self.peak_kib = self.baseline_kib
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, proc_status_kib(self.pid, "VmRSS"))
            except (OSError, RuntimeError):
                return  # the process went away
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class CpuMeter:
    """CPU seconds each named process (and this client) spent between enter and exit."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.spent: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["client"] = time.process_time()
        return now

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.spent = {name: end[name] - self._start[name] for name in end}


# --- load generation ----------------------------------------------------------------------


@dataclass
class Target:
    """Where a scenario sends its requests, and which processes serve them."""

    label: str  # "direct" or "gateway"
    url: str
    key: str
    server_pid: int  # the process under test
    pids: dict[str, int]  # every process serving the request, for CPU accounting


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    body_bytes: int = 0

    @property
    def ok(self) -> int:
        return len(self.latencies)


Check = Callable[[int, int], bool]  # (status, body length) -> acceptable


def text_ok(status: int, size: int) -> bool:
    return status == 200 and size > 0


def image_ok(status: int, size: int) -> bool:
    return status == 200 and size > IMAGE_BYTES


def session_for(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    return aiohttp.ClientSession(
        connector=connector,
        read_bufsize=CLIENT_READ_BUFSIZE,
        timeout=aiohttp.ClientTimeout(total=300),
    )


@dataclass(frozen=True)
class Request:
    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool
    check: Check


def request_to(target: Target, model: str, *, stream: bool, check: Check) -> Request:
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return Request(
        url=f"{target.url}/v1beta/models/{model}:{method}",
        headers={"x-goog-api-key": target.key, "Content-Type": "application/json"},
        body=TEXT_BODY,
        stream=stream,
        check=check,
    )


async def one_request(session: aiohttp.ClientSession, req: Request, out: Samples) -> None:
    """Send one request, read the whole body, and record its timing or its error."""
    started = time.perf_counter()
    ttfb: float | None = None
    size = 0
    try:
        async with session.post(req.url, data=req.body, headers=req.headers) as resp:
            if req.stream:
                async for piece in resp.content.iter_any():
                    if ttfb is None:
                        ttfb = time.perf_counter() - started
                    size += len(piece)
            else:
                size = len(await resp.read())
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.errors[type(exc).__name__] += 1
        return
    elapsed = time.perf_counter() - started
    if not req.check(status, size):
        out.errors[f"HTTP {status}, {size} B"] += 1
        return
    out.latencies.append(elapsed)
    out.body_bytes += size
    if ttfb is not None:
        out.ttfbs.append(ttfb)


async def run_for(
    session: aiohttp.ClientSession, req: Request, concurrency: int, seconds: float
) -> tuple[Samples, float]:
    """Closed loop: `concurrency` workers send back to back until `seconds` pass."""
    out = Samples()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await one_request(session, req, out)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out, time.perf_counter() - started


async def run_count(
    session: aiohttp.ClientSession, req: Request, concurrency: int, total: int
) -> tuple[Samples, float]:
    """`total` requests, at most `concurrency` in flight."""
    out = Samples()
    remaining = iter(range(total))

    async def worker() -> None:
        for _ in remaining:
            await one_request(session, req, out)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    return out, time.perf_counter() - started


# --- scenarios ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cpu_per_request(cpu: CpuMeter, requests: int) -> dict[str, float]:
    return {name: 1000 * spent / max(requests, 1) for name, spent in cpu.spent.items()}


def summarize(samples: Samples, wall: float, cpu: CpuMeter) -> dict[str, Any]:
    ms = [x * 1000 for x in samples.latencies]
    row: dict[str, Any] = {
        "requests": samples.ok,
        "errors": sum(samples.errors.values()),
        "error_kinds": dict(samples.errors),
        "wall_s": wall,
        "rps": samples.ok / wall if wall else 0.0,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "cpu_ms_per_req": cpu_per_request(cpu, samples.ok),
    }
    if samples.ttfbs:
        ttfb_ms = [x * 1000 for x in samples.ttfbs]
        row["ttfb_p50_ms"] = percentile(ttfb_ms, 50)
        row["ttfb_p99_ms"] = percentile(ttfb_ms, 99)
    return row


async def timed_closed_loop(
    target: Target, req: Request, concurrency: int, knobs: Knobs
) -> dict[str, Any]:
    async with session_for(concurrency) as session:
        await run_for(session, req, concurrency, knobs.warmup_s)
        with CpuMeter(target.pids) as cpu:
            samples, wall = await run_for(session, req, concurrency, knobs.duration_s)
    return {"target": target.label, "concurrency": concurrency, **summarize(samples, wall, cpu)}


async def scenario_text(target: Target, concurrency: int, knobs: Knobs) -> dict[str, Any]:
    req = request_to(target, TEXT_MODEL, stream=False, check=text_ok)
    return await timed_closed_loop(target, req, concurrency, knobs)


async def scenario_stream(target: Target, knobs: Knobs) -> dict[str, Any]:
    req = request_to(target, TEXT_MODEL, stream=True, check=text_ok)
    return await timed_closed_loop(target, req, knobs.stream_concurrency, knobs)


async def scenario_images(target: Target, knobs: Knobs) -> dict[str, Any]:
    concurrency = knobs.image_concurrency
    req = request_to(target, IMAGE_MODEL, stream=False, check=image_ok)
    warm = request_to(target, TEXT_MODEL, stream=False, check=text_ok)
    async with session_for(concurrency) as session:
        # Small requests open the pooled connections and fill the key cache, without leaving
        # a big body behind in the baseline.
        await run_count(session, warm, concurrency, concurrency)
        pid = target.server_pid
        with CpuMeter(target.pids) as cpu, RssSampler(pid) as rss:
            samples, wall = await run_count(session, req, concurrency, knobs.image_requests)
    row = summarize(samples, wall, cpu)
    row.update(
        target=target.label,
        concurrency=concurrency,
        mb_per_s=samples.body_bytes / wall / 1e6 if wall else 0.0,
        body_mb=samples.body_bytes / max(samples.ok, 1) / 1e6,
        rss_baseline_mib=rss.baseline_kib / 1024,
        rss_peak_mib=rss.peak_kib / 1024,
        rss_growth_mib=(rss.peak_kib - rss.baseline_kib) / 1024,
        rss_hwm_mib=proc_status_kib(pid, "VmHWM") / 1024,
        rss_samples=rss.samples,
    )
    return row


# --- the run ------------------------------------------------------------------------------


def targets_for(sim: Server, gateway: Server) -> tuple[Target, Target]:
    direct = Target("direct", sim.url, sim.key, sim.pid, {"sim": sim.pid})
    relay = Target(
        "gateway", gateway.url, gateway.key, gateway.pid, {"gw": gateway.pid, "sim": sim.pid}
    )
    return direct, relay


Scenario = Callable[[Target], Awaitable[dict[str, Any]]]


def run_pair(
    runner: asyncio.Runner, name: str, pair: tuple[Target, Target], scenario: Scenario
) -> list[dict[str, Any]]:
    rows = []
    for target in pair:
        print(f"  {name}: {target.label} ...", flush=True)
        rows.append({"scenario": name, **runner.run(scenario(target))})
    return rows


def run_small_stack(
    runner: asyncio.Runner, tmp: Path, knobs: Knobs, stream: bool
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        sim = start_simulator(stack, tmp, None)
        gateway = start_gateway(stack, tmp / "small", sim)
        pair = targets_for(sim, gateway)
        for c in knobs.text_concurrency:
            rows += run_pair(
                runner, f"A text c={c}", pair, lambda t, c=c: scenario_text(t, c, knobs)
            )
        if stream:
            rows += run_pair(runner, "C stream", pair, lambda t: scenario_stream(t, knobs))
    return rows


def run_image_stack(runner: asyncio.Runner, tmp: Path, knobs: Knobs) -> list[dict[str, Any]]:
    with ExitStack() as stack:
        sim = start_simulator(stack, tmp, knobs.image_bytes)
        gateway = start_gateway(stack, tmp / "image", sim)
        pair = targets_for(sim, gateway)
        return run_pair(runner, "B 16MiB images", pair, lambda t: scenario_images(t, knobs))


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    try:
        import uvloop
    except ImportError:
        return None, "asyncio"
    return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"


def environment(knobs: Knobs, loop_name: str, quick: bool) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "client_loop": loop_name,
        "quick": quick,
        "knobs": asdict(knobs),
        "note": "client (this process), gateway and simulator share the same CPUs",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --- output -------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def print_table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers, *[[_fmt(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cpu_cells(row: dict[str, Any]) -> list[Any]:
    cpu = row["cpu_ms_per_req"]
    gw = cpu.get("gw")
    return ["-" if gw is None else gw, cpu["sim"], cpu["client"]]


def ratio(gw: float, direct: float) -> str:
    return f"{gw / direct:.2f}x" if direct else "n/a"


def ratios(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, str]]:
    """gateway/direct for each scenario and metric."""
    out: dict[str, dict[str, str]] = {}
    by_scenario: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_scenario.setdefault(row["scenario"], {})[row["target"]] = row
    for scenario, pair in by_scenario.items():
        if "direct" in pair and "gateway" in pair:
            d, g = pair["direct"], pair["gateway"]
            out[scenario] = {k: ratio(g[k], d[k]) for k in keys if k in d and k in g}
    return out


def report(env: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    print(
        f"\nenvironment: {env['cpu_count']} CPUs, Python {env['python']}, aiohttp "
        f"{env['aiohttp']}, client loop {env['client_loop']}; {env['note']}."
    )
    print(f"knobs: {env['knobs']}")
    cpu_headers = ["gw cpu ms/req", "sim cpu ms/req", "client cpu ms/req"]
    text = [r for r in rows if r["scenario"].startswith("A")]
    print_table(
        "A. small text generateContent (closed loop)",
        ["scenario", "target", "requests", "errors", "req/s", "p50 ms", "p99 ms", *cpu_headers],
        [
            [
                r["scenario"],
                r["target"],
                r["requests"],
                r["errors"],
                r["rps"],
                r["p50_ms"],
                r["p99_ms"],
                *_cpu_cells(r),
            ]
            for r in text
        ],
    )
    images = [r for r in rows if r["scenario"].startswith("B")]
    print_table(
        "B. 16 MiB image responses (RSS is the server under test: simulator for direct, "
        "gateway for gateway)",
        [
            "target",
            "requests",
            "errors",
            "wall s",
            "MB/s",
            "p50 ms",
            "p99 ms",
            "RSS base MiB",
            "RSS peak MiB",
            "growth MiB",
            "VmHWM MiB",
            *cpu_headers,
        ],
        [
            [
                r["target"],
                r["requests"],
                r["errors"],
                r["wall_s"],
                r["mb_per_s"],
                r["p50_ms"],
                r["p99_ms"],
                r["rss_baseline_mib"],
                r["rss_peak_mib"],
                r["rss_growth_mib"],
                r["rss_hwm_mib"],
                *_cpu_cells(r),
            ]
            for r in images
        ],
    )
    streams = [r for r in rows if r["scenario"].startswith("C")]
    if streams:
        print_table(
            "C. streaming streamGenerateContent?alt=sse, small text",
            [
                "target",
                "conc",
                "requests",
                "errors",
                "req/s",
                "ttfb p50",
                "ttfb p99",
                "total p50",
                "total p99",
                *cpu_headers,
            ],
            [
                [
                    r["target"],
                    r["concurrency"],
                    r["requests"],
                    r["errors"],
                    r["rps"],
                    r["ttfb_p50_ms"],
                    r["ttfb_p99_ms"],
                    r["p50_ms"],
                    r["p99_ms"],
                    *_cpu_cells(r),
                ]
                for r in streams
            ],
        )
    keys = ["rps", "p50_ms", "p99_ms", "mb_per_s", "rss_growth_mib", "ttfb_p50_ms", "ttfb_p99_ms"]
    table = ratios(rows, keys)
    print("\ngateway/direct (throughput: 1.00x = no loss; latency and RSS: higher = costlier)")
    for scenario, values in table.items():
        print(f"  {scenario:<16} " + "  ".join(f"{k}={v}" for k, v in values.items()))
    for row in rows:
        if row["errors"]:
            print(f"  ! {row['scenario']} {row['target']}: errors {row['error_kinds']}")
    return {"environment": env, "results": rows, "ratios": table}


def _finite(value: Any) -> Any:
    """NaN (a percentile of no samples) becomes null: JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(doc: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(_finite(doc), indent=2, allow_nan=False, default=str) + "\n")
    print(f"\nwrote {RESULTS}")


# --- entry point --------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every child process gets stopped."""
    previous = {
        sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s per case, 8 image requests")
    parser.add_argument("--no-stream", action="store_true", help="skip scenario C")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    knobs = knobs_for(args.quick)
    factory, loop_name = loop_factory()
    env = environment(knobs, loop_name, args.quick)
    print(f"nanogate relay benchmark ({'quick' if args.quick else 'full'}); {env['note']}")
    with (
        interrupt_on_sigterm(),
        tempfile.TemporaryDirectory(prefix="nanogate-bench-") as tmp_name,
        asyncio.Runner(loop_factory=factory) as runner,
    ):
        tmp = Path(tmp_name)
        rows = run_small_stack(runner, tmp, knobs, stream=not args.no_stream)
        rows += run_image_stack(runner, tmp, knobs)
    doc = report(env, rows)
    write_json(doc)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; child processes stopped", file=sys.stderr)
        sys.exit(130)
