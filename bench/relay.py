"""Relay overhead: the simulator called directly vs. the gateway relaying to that same simulator.

Run `python bench/relay.py [--quick] [--no-stream] [--no-chat] [--only-metering] [--redis]
[--postgres] [--rounds N] [--only-images] [--image-requests N] [--before DIR]`
(or `make bench`). The script starts its own processes on free loopback ports (a simulator, and
`nanogate serve` with a temporary data dir and a config whose only upstream is that simulator),
drives them with an aiohttp load generator in this process (uvloop when installed), prints
tables, and writes everything, raw numbers included, to bench/results/latest.json. Ctrl-C,
SIGTERM or an error stop every process it started.

What it measures, against the simulator ("direct"), through the gateway as configured by default,
that is with metering on ("gateway": every call reserves credits before the upstream call and
settles after, through the ledger in its database), and for scenario A also through a second
gateway with `NANOGATE_METERING=false` on the same simulator ("unmetered"). "chat" is the same
call in the OpenAI dialect, POST /v1/chat/completions with the same model and prompt, through a
metered gateway: what converting to and from chat completions costs next to the Gemini route
(`--no-chat` leaves it out):

A. small text `generateContent`, closed loop at concurrency 1 and 32: requests/s, p50/p99
   latency, errors. Each target gets `duration` seconds in total, split into rounds that
   alternate the order of the targets (direct, gateway, unmetered; then the reverse; ...),
   each after a 1 s warm-up. Besides gateway/direct, it reports what metering costs:
   metered/unmetered req/s (1.00x = free), metered minus unmetered p50 and p99 in ms, and
   metered minus unmetered gateway CPU ms per request; and unmetered/direct, the relay alone.
   A ledger check then counts, in each gateway's database, the ledger rows and holds the run
   left: about two ledger rows (reserve, settle) per metered request, none unmetered, and no
   hold still pending. `--only-metering` runs just this scenario (no chat). The chat target
   runs on the metered gateway in the same alternating rounds; chat/gateway compares it with
   the Gemini route.
B. 16 MiB images (about 22 MB of base64 JSON per response), 8 in flight, a burst of a fixed
   number of requests per target and round (the rounds alternate the order of the targets, as
   in A), on a fresh simulator (`--image-bytes`) and fresh gateways: wall time per burst,
   per-request p50/p99, MB/s, and the RSS of the server under test (the simulator for
   direct, the gateway for the relay): the lowest baseline just before a burst, the peak of
   samples taken every 20 ms, and the kernel's high-water mark VmHWM (since the process
   started). The chat target gets a fresh gateway of its own; its answer carries the image as
   a data URL in choices[0].message.images[0].image_url.url, checked by a byte search and its
   length (no JSON parsing in the client). `--image-requests` sets the burst's size (8 quick,
   24 full). With `--before DIR` (which also adds a "before" target to A), two more
   targets, "before" (the Gemini route) and
   "chat-before", on gateways run from the source tree at DIR (say `git worktree add DIR
   main`): a change measured against its base in the same run, each next to direct.
C. `streamGenerateContent?alt=sse` of small text at concurrency 32, like A: requests/s, time to
   first byte and total time, p50/p99.
D. (with chat) peak RSS per in-flight 16 MiB image: K images at once (K = 4, 8), K x waves
   requests, on the Gemini route and on chat completions, each row on a gateway nothing else
   has used. Growth = the larger of the sampled peak and VmHWM (reset through
   /proc/<pid>/clear_refs just before the burst) minus the idle RSS after a small warm-up;
   reported as growth / K / 16 MiB, the multiple of the image's size each in-flight image
   costs (the target for chat: under 3x), with the RSS left after the burst.

`--only-images` runs B and D alone.

With `--redis`, scenario A has one more target, "redis": a metered gateway with
NANOGATE_REDIS_URL (the machine's Redis, under a fresh key prefix), the cluster mode's limiter.
Then the "gateway" and "redis" targets both call with a key that has limits (far above the
load), so one counts them in memory and the other in Redis: redis/gateway is what the shared
limiter costs a request (the unknown-key check and the admission script before the call, the
slot's release after).

With `--postgres`, scenario A has one more target, "postgres": a metered gateway on a fresh
database on the tests' PostgreSQL server (127.0.0.1:5432, or NANOGATE_TEST_PG_URL): postgres/
gateway is what moving the ledger from the SQLite default to PostgreSQL costs a request.

How to read it: the gateway/direct ratios are the point, and chat/gateway for the chat dialect.
For throughput (req/s, MB/s) 1.00x means the relay (or the conversion) costs nothing; for
latency and RSS a ratio above 1 is what it adds. B, C and D run through metered gateways only.
The "cpu ms/req" columns show where CPU time went per answered request: the gateway process
under test (metered or unmetered), the simulator process and this load generator. All three
share the machine's cores (2 on the reference box), so a gateway run has one more busy process
than a direct run (the other gateway idles), and the gateway serves from a single event loop:
when its cpu ms/req times req/s nears 1000 ms/s it is saturating one core, and that, not the
simulator, is the ceiling. Absolute numbers are only comparable within one run; the JSON also
has cpu_cores (CPU seconds per wall second). Gateway cpu ms/req is the steadiest measure of
what the chat conversion costs, req/s and MB/s the noisiest on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from common import (
    GATEWAY_COMMAND,
    SIM_KEY,
    STARTER_CREDITS,
    Launch,
    Server,
    cpu_seconds,
    gateway_env,
    interrupt_on_signals,
    loop_factory,
    machine,
    percentile,
    postgres_database,
    run_script,
    spawn_gateway,
    start_simulator,
    write_json,
)

from tests import postgres, redis_server
from tests.simulator.processes import free_port

TEXT_MODEL = "gemini-2.5-flash"
# The server --postgres makes its database on (the tests' own; NANOGATE_TEST_PG_URL for another).
PG_SERVER = postgres.SERVER_URL
IMAGE_MODEL = "gemini-2.5-flash-image"
TEXT_BODY = b'{"contents":[{"parts":[{"text":"hello"}]}]}'
IMAGE_BYTES = 16 * 1024 * 1024
# A 16 MiB image as base64: what a response carries, in a Gemini inlineData or a data URL.
IMAGE_B64_CHARS = 4 * -(-IMAGE_BYTES // 3)
# The chat dialect's image answer: choices[0].message.images[0].image_url.url, a data URL.
CHAT_IMAGE_MARK = b'"image_url":{"url":"data:image/'
# The target per in-flight image on the chat route: peak RSS growth under 3x the image's size.
RSS_TARGET_X = 3.0
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
RSS_INTERVAL_S = 0.020
SETTLE_S = 0.3  # scenario D: pause before the idle baseline and before the RSS left after
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
    rounds: int
    inflight: tuple[int, ...]  # scenario D: images in flight at once, one fresh gateway each
    inflight_waves: int  # scenario D: requests per in-flight slot

    @property
    def round_s(self) -> float:
        """Each target's measured time per round; `duration_s` in total over the rounds."""
        return self.duration_s / self.rounds


def knobs_for(quick: bool, rounds: int | None = None, image_requests: int | None = None) -> Knobs:
    return Knobs(
        duration_s=3.0 if quick else 10.0,
        warmup_s=1.0,
        text_concurrency=(1, 32),
        stream_concurrency=32,
        image_concurrency=8,
        image_requests=image_requests or (8 if quick else 24),
        image_bytes=IMAGE_BYTES,
        rounds=rounds or (1 if quick else 2),
        inflight=(4, 8),
        inflight_waves=1 if quick else 3,
    )


# --- processes ----------------------------------------------------------------------------


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


# Credits on the bench's client key. Each metered text call reserves its worst case (the model's
# whole output budget, ~0.2 M credits on gemini-2.5-flash) and settles at its real cost, so a run
# needs this far above requests in flight x reservation; 10**15 is about 5e9 calls at worst case.


def gateway_db(data_root: Path) -> Path:
    """The SQLite file of a gateway started with `start_gateway(stack, data_root, ...)`."""
    return data_root / "data" / "nanogate.db"


def metered_env(tmp: Path, port: int, config: Path, *, metering: bool) -> dict[str, str]:
    # Spelled out either way, so "gateway" stays the metered one should the default change.
    return gateway_env(tmp, port, config, NANOGATE_METERING="true" if metering else "false")


def spawn_gateway_on(
    stack: ExitStack,
    tmp: Path,
    sim: Server,
    *,
    metering: bool = True,
    name: str = "gateway",
    source: Path | None = None,
    **settings: str,
) -> Launch:
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "nanogate.yaml"
    config.write_text(yaml.safe_dump(gateway_config(sim.url)))
    port = free_port()
    env = {**metered_env(tmp, port, config, metering=metering), **settings}
    return spawn_gateway(stack, tmp, port, env, name, source)


def start_gateway(
    stack: ExitStack,
    tmp: Path,
    sim: Server,
    *,
    metering: bool = True,
    name: str = "gateway",
    **settings: str,
) -> Server:
    return spawn_gateway_on(stack, tmp, sim, metering=metering, name=name, **settings).ready()


# The --redis comparison's key, on the bench key's account: limits both gateways count, far
# above what the load reaches.
LIMITED_KEY = ("--account", "default", "--rpm", "100000000", "--concurrency", "100000")


def with_limited_key(gateway: Server, data_root: Path) -> Server:
    """`gateway`, with a key of LIMITED_KEY's limits made by `nanogate keys create` in its
    database, as the key its target calls with."""
    config = data_root / "nanogate.yaml"
    env = metered_env(data_root, 0, config, metering=True)
    made = subprocess.run(
        [*GATEWAY_COMMAND[:-1], "keys", "create", "--name", "bench-limited", *LIMITED_KEY],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return replace(gateway, key=made.stdout.strip())


def start_gateways(
    stack: ExitStack,
    tmp: Path,
    sim: Server,
    roots: list[str],
    sources: dict[str, tuple[str, Path]] | None = None,
) -> dict[str, tuple[Server, ExitStack]]:
    """Fresh metered gateways on `sim`, one per data root under `tmp`, booted side by side (a
    start is ~3 s of CPU); each with an ExitStack of its own inside `stack`, to stop it as soon
    as it has been measured. `sources`: the roots whose gateway runs another source tree, with
    its name."""
    launches = {}
    for root in roots:
        own = stack.enter_context(ExitStack())
        name, source = (sources or {}).get(root, ("gateway", None))
        launches[root] = (own, spawn_gateway_on(own, tmp / root, sim, name=name, source=source))
    return {root: (launch.ready(), own) for root, (own, launch) in launches.items()}


# --- /proc probes -------------------------------------------------------------------------


def proc_status_kib(pid: int, field_name: str) -> int:
    """A `kB` field of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/{pid}/status")


def reset_hwm(pid: int) -> bool:
    """Reset the kernel's peak RSS (VmHWM) of a process to its current RSS (Linux 4.0+), so
    VmHWM read later is the peak since now; False where that is not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


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

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None:
            return  # interrupted: the processes may be gone already, and nothing is reported
        end = self._now()
        self.spent = {name: end[name] - self._start[name] for name in end}


# --- load generation ----------------------------------------------------------------------


@dataclass
class Target:
    """Where a scenario sends its requests, and which processes serve them."""

    label: str  # "direct", "gateway" (metering on), "unmetered" (metering off) or "chat"
    url: str
    key: str
    server_pid: int  # the process under test
    pids: dict[str, int]  # every process serving the request, for CPU accounting
    chat: bool = False  # POST /v1/chat/completions (OpenAI dialect) instead of Gemini's route


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    body_bytes: int = 0

    @property
    def ok(self) -> int:
        return len(self.latencies)


Check = Callable[[int, int, bytes], bool]  # (status, length, body; b"" if streamed) -> ok


def text_ok(status: int, size: int, body: bytes) -> bool:
    return status == 200 and size > 0


def image_ok(status: int, size: int, body: bytes) -> bool:
    return status == 200 and size > IMAGE_BYTES


def chat_image_ok(status: int, size: int, body: bytes) -> bool:
    """A chat completion carrying the whole image as a data URL: a byte search near the start
    (where message.images comes) and the length, no JSON parsing of 22 MB per response."""
    return (
        status == 200
        and IMAGE_B64_CHARS <= size <= IMAGE_B64_CHARS + 64 * 1024
        and body.find(CHAT_IMAGE_MARK, 0, 64 * 1024) >= 0
    )


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


def chat_body(model: str) -> bytes:
    """The chat dialect's twin of TEXT_BODY: one user message, the same prompt."""
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}]})


def request_to(target: Target, *, image: bool = False, stream: bool = False) -> Request:
    """The small text call (TEXT_MODEL) or, with `image`, the image call (IMAGE_MODEL), in the
    target's dialect: Gemini's generateContent, or chat completions for a chat target."""
    model = IMAGE_MODEL if image else TEXT_MODEL
    if target.chat:
        if stream:
            raise ValueError("the chat target has no streaming scenario")
        return Request(
            url=f"{target.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {target.key}", "Content-Type": "application/json"},
            body=chat_body(model),
            stream=False,
            check=chat_image_ok if image else text_ok,
        )
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return Request(
        url=f"{target.url}/v1beta/models/{model}:{method}",
        headers={"x-goog-api-key": target.key, "Content-Type": "application/json"},
        body=TEXT_BODY,
        stream=stream,
        check=image_ok if image else text_ok,
    )


async def one_request(session: aiohttp.ClientSession, req: Request, out: Samples) -> None:
    """Send one request, read the whole body, and record its timing or its error."""
    started = time.perf_counter()
    ttfb: float | None = None
    size = 0
    body = b""
    try:
        async with session.post(req.url, data=req.body, headers=req.headers) as resp:
            if req.stream:
                async for piece in resp.content.iter_any():
                    if ttfb is None:
                        ttfb = time.perf_counter() - started
                    size += len(piece)
            else:
                body = await resp.read()
                size = len(body)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.errors[type(exc).__name__] += 1
        return
    elapsed = time.perf_counter() - started
    if not req.check(status, size, body):
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


@dataclass
class Measurement:
    """One target's samples, wall time and per-process CPU seconds, summed over rounds."""

    samples: Samples = field(default_factory=Samples)
    wall_s: float = 0.0
    cpu_s: Counter[str] = field(default_factory=Counter)

    def add(self, samples: Samples, wall_s: float, cpu: CpuMeter) -> None:
        self.samples.latencies += samples.latencies
        self.samples.ttfbs += samples.ttfbs
        self.samples.errors += samples.errors
        self.samples.body_bytes += samples.body_bytes
        self.wall_s += wall_s
        self.cpu_s.update(cpu.spent)

    def summary(self) -> dict[str, Any]:
        samples, wall = self.samples, self.wall_s
        ms = [x * 1000 for x in samples.latencies]
        row: dict[str, Any] = {
            "requests": samples.ok,
            "errors": sum(samples.errors.values()),
            "error_kinds": dict(samples.errors),
            "wall_s": wall,
            "rps": samples.ok / wall if wall else 0.0,
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "cpu_ms_per_req": {
                name: 1000 * spent / max(samples.ok, 1) for name, spent in self.cpu_s.items()
            },
            "cpu_cores": {name: spent / wall for name, spent in self.cpu_s.items()} if wall else {},
        }
        if samples.ttfbs:
            ttfb_ms = [x * 1000 for x in samples.ttfbs]
            row["ttfb_p50_ms"] = percentile(ttfb_ms, 50)
            row["ttfb_p99_ms"] = percentile(ttfb_ms, 99)
        return row


async def closed_loop_round(
    target: Target, req: Request, concurrency: int, knobs: Knobs, into: Measurement
) -> None:
    """Warm up (connections, key cache), then one measured stretch of the closed loop."""
    async with session_for(concurrency) as session:
        await run_for(session, req, concurrency, knobs.warmup_s)
        with CpuMeter(target.pids) as cpu:
            samples, wall = await run_for(session, req, concurrency, knobs.round_s)
    into.add(samples, wall, cpu)


def compare_closed_loop(
    runner: asyncio.Runner,
    name: str,
    targets: tuple[Target, ...],
    concurrency: int,
    knobs: Knobs,
    *,
    stream: bool,
    build: Callable[[Target], Request] | None = None,
) -> list[dict[str, Any]]:
    """Every target in alternating rounds (in the given order, then reversed, ...), so a slow
    patch of the shared machine hits every side instead of one. Each target gets `build`'s
    request (bench/perf.py's peers speak their own paths and headers), by default
    `request_to`'s."""
    totals = {target.label: Measurement() for target in targets}
    for index in range(knobs.rounds):
        order = targets if index % 2 == 0 else targets[::-1]
        for target in order:
            print(f"  {name}: {target.label}, round {index + 1}/{knobs.rounds}", flush=True)
            req = build(target) if build else request_to(target, stream=stream)
            runner.run(closed_loop_round(target, req, concurrency, knobs, totals[target.label]))
    return [
        {"scenario": name, "target": label, "concurrency": concurrency, **total.summary()}
        for label, total in totals.items()
    ]


async def image_burst(
    target: Target,
    concurrency: int,
    requests: int,
    into: Measurement,
    *,
    fresh_hwm: bool = False,
) -> dict[str, Any]:
    """`requests` big responses, `concurrency` in flight, RSS sampled throughout; the samples
    go `into` the target's measurement, the burst's RSS figures are returned. With
    `fresh_hwm`, the baseline waits for the warm-up to settle and VmHWM is reset just before
    the burst, so it reads the kernel's peak during the burst rather than since start."""
    req = request_to(target, image=True)
    warm = request_to(target)
    pid = target.server_pid
    async with session_for(concurrency) as session:
        # Small requests (in the target's dialect) open the pooled connections, fill the key
        # cache and load the route's code without leaving a big body behind in the baseline.
        await run_count(session, warm, concurrency, concurrency)
        if fresh_hwm:
            await asyncio.sleep(SETTLE_S)
        hwm_reset = fresh_hwm and reset_hwm(pid)
        with CpuMeter(target.pids) as cpu, RssSampler(pid) as rss:
            samples, wall = await run_count(session, req, concurrency, requests)
        hwm_kib = proc_status_kib(pid, "VmHWM")
    into.add(samples, wall, cpu)
    return {
        "rss_baseline_mib": rss.baseline_kib / 1024,
        "rss_peak_mib": rss.peak_kib / 1024,
        "rss_growth_mib": (rss.peak_kib - rss.baseline_kib) / 1024,
        "rss_hwm_mib": hwm_kib / 1024,
        "rss_hwm_reset": hwm_reset,
        "rss_samples": rss.samples,
    }


async def warm_image(target: Target) -> None:
    async with session_for(1) as session:
        await run_count(session, request_to(target, image=True), 1, 1)


def image_row(total: Measurement, bursts: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's row over its bursts: throughput and latency over all of them, wall time
    per burst, the lowest RSS baseline and the highest peaks."""
    row = total.summary()
    samples, wall = total.samples, total.wall_s
    row.update(
        bursts=len(bursts),
        burst_s=wall / len(bursts),
        mb_per_s=samples.body_bytes / wall / 1e6 if wall else 0.0,
        body_mb=samples.body_bytes / max(samples.ok, 1) / 1e6,
        rss_baseline_mib=min(b["rss_baseline_mib"] for b in bursts),
        rss_peak_mib=max(b["rss_peak_mib"] for b in bursts),
        rss_growth_mib=max(b["rss_growth_mib"] for b in bursts),
        rss_hwm_mib=max(b["rss_hwm_mib"] for b in bursts),
        rss_hwm_reset=all(b["rss_hwm_reset"] for b in bursts),
        rss_samples=sum(b["rss_samples"] for b in bursts),
    )
    return row


def compare_images(
    runner: asyncio.Runner, name: str, targets: tuple[Target, ...], knobs: Knobs
) -> list[dict[str, Any]]:
    """A burst per target per round, in alternating order (as in `compare_closed_loop`)."""
    concurrency = knobs.image_concurrency
    totals = {target.label: Measurement() for target in targets}
    bursts: dict[str, list[dict[str, Any]]] = {target.label: [] for target in targets}
    for index in range(knobs.rounds):
        order = targets if index % 2 == 0 else targets[::-1]
        for target in order:
            label = target.label
            print(f"  {name}: {label}, round {index + 1}/{knobs.rounds}", flush=True)
            burst = image_burst(target, concurrency, knobs.image_requests, totals[label])
            bursts[label].append(runner.run(burst))
    return [
        {
            "scenario": name,
            "target": target.label,
            "concurrency": concurrency,
            **image_row(totals[target.label], bursts[target.label]),
        }
        for target in targets
    ]


async def inflight_burst(target: Target, inflight: int, knobs: Knobs) -> dict[str, Any]:
    """Scenario D on one fresh gateway: `inflight` images at once, `inflight_waves` times over;
    what each in-flight image costs in peak RSS, in multiples of the image's size."""
    requests = inflight * knobs.inflight_waves
    total = Measurement()
    row = image_row(total, [await image_burst(target, inflight, requests, total, fresh_hwm=True)])
    await asyncio.sleep(SETTLE_S)
    after_kib = proc_status_kib(target.server_pid, "VmRSS")
    # The sampled peak can miss a short spike between samples; VmHWM (reset before) cannot.
    peak = max(row["rss_peak_mib"], row["rss_hwm_mib"] if row["rss_hwm_reset"] else 0.0)
    growth = peak - row["rss_baseline_mib"]
    row.update(
        rss_top_mib=peak,
        inflight_growth_mib=growth,
        x_image_per_inflight=growth * MiB / inflight / knobs.image_bytes,
        rss_after_mib=after_kib / 1024,
    )
    return row


# --- the run ------------------------------------------------------------------------------


def relay_target(sim: Server, gateway: Server) -> Target:
    """A gateway as a target; its label is the server's name ("gateway" or "unmetered")."""
    pids = {"gw": gateway.pid, "sim": sim.pid}
    return Target(gateway.name, gateway.url, gateway.key, gateway.pid, pids)


def chat_target(sim: Server, gateway: Server, label: str = "chat") -> Target:
    """The chat dialect (POST /v1/chat/completions) on a metered gateway, labelled "chat"."""
    pids = {"gw": gateway.pid, "sim": sim.pid}
    return Target(label, gateway.url, gateway.key, gateway.pid, pids, chat=True)


def targets_for(sim: Server, gateway: Server) -> tuple[Target, Target]:
    direct = Target("direct", sim.url, sim.key, sim.pid, {"sim": sim.pid})
    return direct, relay_target(sim, gateway)


def ledger_check(db: Path) -> dict[str, Any]:
    """What metering left in a gateway's database: ledger rows by kind, holds by state, and the
    client account's balance (read-only, beside the running gateway: SQLite WAL allows it)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        kinds = dict(conn.execute("SELECT kind, count(*) FROM ledger GROUP BY kind").fetchall())
        states = dict(conn.execute("SELECT state, count(*) FROM holds GROUP BY state").fetchall())
        found = conn.execute("SELECT balance FROM accounts WHERE name = 'default'").fetchone()
        per_call = conn.execute("SELECT avg(cost) FROM holds WHERE state = 'settled'").fetchone()
    finally:
        conn.close()
    balance = found[0] if found else None
    return {
        "ledger_rows": kinds,
        "holds": states,
        "client_balance": balance,
        "client_spent": STARTER_CREDITS - balance if balance is not None else None,
        "settled_per_call": per_call[0],
    }


def run_small_stack(
    runner: asyncio.Runner,
    tmp: Path,
    knobs: Knobs,
    *,
    stream: bool,
    unmetered: bool,
    chat: bool,
    redis: bool = False,
    postgres: bool = False,
    before: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Scenarios A and C: one simulator with its small default reply, and one gateway on it
    (metering on); with `unmetered`, a second gateway with metering off as a target of A; with
    `chat`, chat completions on the metered gateway as one more target of A; with `redis`, a
    metered gateway with NANOGATE_REDIS_URL as one more target of A, it and the metered one
    calling with a key that has limits; with `postgres`, a metered gateway on a fresh PostgreSQL
    database as one more target of A; with `before`, a metered gateway run from that source
    tree ("before") as one more target of A.
    Returns the rows and, per gateway, what its ledger holds afterwards."""
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        sim = start_simulator(stack, tmp, None)
        gateways = [(start_gateway(stack, tmp / "small", sim), tmp / "small")]
        if unmetered:
            root = tmp / "small-unmetered"
            gateways.append(
                (start_gateway(stack, root, sim, metering=False, name="unmetered"), root)
            )
        if redis:
            prefix = redis_server.fresh_prefix()
            stack.callback(redis_server.drop_prefix, prefix)
            root = tmp / "small-redis"
            shared = start_gateway(
                stack,
                root,
                sim,
                name="redis",
                NANOGATE_REDIS_URL=redis_server.SERVER_URL,
                NANOGATE_REDIS_KEY_PREFIX=prefix,
            )
            gateways[0] = (with_limited_key(*gateways[0]), gateways[0][1])
            gateways.append((with_limited_key(shared, root), root))
        on_postgres = None
        if postgres:
            url = postgres_database(stack, PG_SERVER)
            root = tmp / "small-postgres"
            on_postgres = start_gateway(
                stack, root, sim, name="postgres", NANOGATE_DATABASE_URL=url
            )
        if before is not None:
            root = tmp / "small-before"
            launch = spawn_gateway_on(stack, root, sim, name="before", source=before)
            gateways.append((launch.ready(), root))
        pair = targets_for(sim, gateways[0][0])
        text_targets = (*pair, *(relay_target(sim, gw) for gw, _ in gateways[1:]))
        if on_postgres is not None:
            text_targets += (relay_target(sim, on_postgres),)
        if chat:
            text_targets += (chat_target(sim, gateways[0][0]),)
        for c in knobs.text_concurrency:
            name = f"A text c={c}"
            rows += compare_closed_loop(runner, name, text_targets, c, knobs, stream=False)
        if stream:
            c = knobs.stream_concurrency
            rows += compare_closed_loop(runner, f"C stream c={c}", pair, c, knobs, stream=True)
        # Settles are committed before each answer; give the usage recorder its flush anyway.
        time.sleep(0.2)
        ledgers = {gw.name: ledger_check(gateway_db(root)) for gw, root in gateways}
    return rows, ledgers


def run_image_stack(
    runner: asyncio.Runner, tmp: Path, knobs: Knobs, *, chat: bool, before: Path | None = None
) -> list[dict[str, Any]]:
    """Scenario B (and, with `chat`, D) on fresh processes, so each baseline RSS is a clean
    one: the chat target of B gets a gateway of its own, and so does every row of D. They all
    start side by side before the first measurement, idle until their turn, and each stops
    once measured (B's once all its rounds are done). With `before`, B also runs on gateways
    from that source tree."""
    inflight = [(k, label) for k in knobs.inflight for label in ROUTES] if chat else []
    roots = ["image", *(["image-chat"] if chat else []), *(inflight_root(*x) for x in inflight)]
    sources = {}
    if before is not None:
        sources["image-before"] = ("before", before)
        if chat:
            sources["image-chat-before"] = ("chat-before", before)
        roots += list(sources)
    with ExitStack() as stack:
        sim = start_simulator(stack, tmp, knobs.image_bytes)
        gateways = start_gateways(stack, tmp, sim, roots, sources)
        gateway, _ = gateways["image"]
        targets = targets_for(sim, gateway)
        if chat:
            targets += (chat_target(sim, gateways["image-chat"][0]),)
        for root, (label, _) in sources.items():
            gateway = gateways[root][0]
            if label == "before":
                targets += (relay_target(sim, gateway),)
            else:
                targets += (chat_target(sim, gateway, label),)
        # The simulator makes its image on the first call: not in the first target's burst.
        runner.run(warm_image(targets[0]))
        rows = compare_images(runner, "B 16MiB images", targets, knobs)
        for root in ["image", *(["image-chat"] if chat else []), *sources]:
            gateways[root][1].close()
        if chat:
            rows += compare_inflight(runner, sim, knobs, gateways)
        return rows


ROUTES = ("gateway", "chat")  # scenario D's targets: the Gemini route, and chat completions


def inflight_root(inflight: int, label: str) -> str:
    return f"inflight-{inflight}-{label}"


def compare_inflight(
    runner: asyncio.Runner,
    sim: Server,
    knobs: Knobs,
    gateways: dict[str, tuple[Server, ExitStack]],
) -> list[dict[str, Any]]:
    """Scenario D: for each in-flight count, the Gemini route and then the chat route, each on
    a gateway of its own that nothing else has used, stopped after its row."""
    rows = []
    for inflight in knobs.inflight:
        name = f"D in-flight K={inflight}"
        for label in ROUTES:
            print(f"  {name}: {label}", flush=True)
            gateway, own = gateways[inflight_root(inflight, label)]
            make = chat_target if label == "chat" else relay_target
            row = runner.run(inflight_burst(make(sim, gateway), inflight, knobs))
            own.close()
            rows.append({"scenario": name, "target": label, "concurrency": inflight, **row})
    return rows


# --- output -------------------------------------------------------------------------------

Column = tuple[str, Callable[[dict[str, Any]], Any], int]  # header, value, decimals


def _fmt(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:,.{digits}f}"
    return "-" if value is None else str(value)


def print_table(title: str, columns: list[Column], rows: list[dict[str, Any]]) -> None:
    cells = [[header for header, _, _ in columns]]
    cells += [[_fmt(get(row), digits) for _, get, digits in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    print(f"\n{title}")
    for index, line in enumerate(cells):
        pairs = enumerate(zip(line, widths, strict=True))
        padded = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs]
        print("  " + "  ".join(padded))
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cpu(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row["cpu_ms_per_req"].get(name)


def _get(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(key)


LEAD: list[Column] = [("scenario", _get("scenario"), 0), ("target", _get("target"), 0)]
COUNTS: list[Column] = [("requests", _get("requests"), 0), ("errors", _get("errors"), 0)]
CPU: list[Column] = [
    ("gw cpu ms/req", _cpu("gw"), 3),
    ("sim cpu ms/req", _cpu("sim"), 3),
    ("client cpu ms/req", _cpu("client"), 3),
]
TEXT_COLUMNS: list[Column] = [
    *LEAD,
    *COUNTS,
    ("req/s", _get("rps"), 0),
    ("p50 ms", _get("p50_ms"), 2),
    ("p99 ms", _get("p99_ms"), 2),
    *CPU,
]
STREAM_COLUMNS: list[Column] = [
    *LEAD,
    *COUNTS,
    ("req/s", _get("rps"), 0),
    ("ttfb p50", _get("ttfb_p50_ms"), 2),
    ("ttfb p99", _get("ttfb_p99_ms"), 2),
    ("total p50", _get("p50_ms"), 2),
    ("total p99", _get("p99_ms"), 2),
    *CPU,
]
IMAGE_COLUMNS: list[Column] = [
    *LEAD,
    *COUNTS,
    ("s/burst", _get("burst_s"), 2),
    ("MB/s", _get("mb_per_s"), 0),
    ("p50 ms", _get("p50_ms"), 0),
    ("p99 ms", _get("p99_ms"), 0),
    ("RSS base MiB", _get("rss_baseline_mib"), 0),
    ("RSS peak MiB", _get("rss_peak_mib"), 0),
    ("growth MiB", _get("rss_growth_mib"), 0),
    ("VmHWM MiB", _get("rss_hwm_mib"), 0),
    *CPU,
]
INFLIGHT_COLUMNS: list[Column] = [
    *LEAD,
    ("K", _get("concurrency"), 0),
    *COUNTS,
    ("MB/s", _get("mb_per_s"), 0),
    ("p50 ms", _get("p50_ms"), 0),
    ("RSS idle MiB", _get("rss_baseline_mib"), 0),
    ("sampled peak", _get("rss_peak_mib"), 0),
    ("VmHWM", _get("rss_hwm_mib"), 0),
    ("growth MiB", _get("inflight_growth_mib"), 0),
    ("x image/in-flight", _get("x_image_per_inflight"), 2),
    ("RSS after MiB", _get("rss_after_mib"), 0),
    ("gw cpu ms/req", _cpu("gw"), 1),
]
# Which gateway/direct ratios to show per scenario family (by the scenario's first letter).
RATIO_KEYS = {
    "A": ["rps", "p50_ms", "p99_ms"],
    "B": ["burst_s", "mb_per_s", "p50_ms", "p99_ms", "rss_peak_mib", "rss_growth_mib"],
    "C": ["rps", "ttfb_p50_ms", "ttfb_p99_ms", "p50_ms", "p99_ms"],
    "D": ["x_image_per_inflight", "inflight_growth_mib", "mb_per_s"],
}


def by_scenario(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario -> target label -> row."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["scenario"], {})[row["target"]] = row
    return out


def ratios(
    rows: list[dict[str, Any]], label: str = "gateway", base: str = "direct"
) -> dict[str, dict[str, float | None]]:
    """`label`/`base` for each scenario (that has both) and metric."""
    out: dict[str, dict[str, float | None]] = {}
    for scenario, targets in by_scenario(rows).items():
        under, relay = targets.get(base), targets.get(label)
        if under is None or relay is None:
            continue
        out[scenario] = {
            key: relay[key] / under[key] if under.get(key) else None
            for key in RATIO_KEYS.get(scenario[0], [])
        }
    return out


def _minus(a: Any, b: Any) -> float | None:
    return a - b if isinstance(a, float | int) and isinstance(b, float | int) else None


def metering_cost(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """What metering adds, per scenario run on both gateways: metered/unmetered req/s, and
    metered minus unmetered p50, p99 (ms) and gateway CPU (ms per request)."""
    out: dict[str, dict[str, float | None]] = {}
    for scenario, targets in by_scenario(rows).items():
        metered, unmetered = targets.get("gateway"), targets.get("unmetered")
        if metered is None or unmetered is None:
            continue
        gw_cpu = (metered["cpu_ms_per_req"].get("gw"), unmetered["cpu_ms_per_req"].get("gw"))
        out[scenario] = {
            "rps_ratio": metered["rps"] / unmetered["rps"] if unmetered["rps"] else None,
            "p50_delta_ms": _minus(metered["p50_ms"], unmetered["p50_ms"]),
            "p99_delta_ms": _minus(metered["p99_ms"], unmetered["p99_ms"]),
            "gw_cpu_delta_ms_per_req": _minus(*gw_cpu),
        }
    return out


def cost_against_gateway(
    rows: list[dict[str, Any]], target: str
) -> dict[str, dict[str, float | None]]:
    """What `target` ("redis": limits in Redis, --redis; "postgres": the ledger on PostgreSQL,
    --postgres) adds to a request next to the metered SQLite "gateway", per scenario:
    target/gateway req/s, and target minus gateway p50, p99 (ms) and gateway CPU (ms/req)."""
    out: dict[str, dict[str, float | None]] = {}
    for scenario, targets in by_scenario(rows).items():
        base, other = targets.get("gateway"), targets.get(target)
        if base is None or other is None:
            continue
        out[scenario] = {
            "rps_ratio": other["rps"] / base["rps"] if base["rps"] else None,
            "p50_delta_ms": _minus(other["p50_ms"], base["p50_ms"]),
            "p99_delta_ms": _minus(other["p99_ms"], base["p99_ms"]),
            "gw_cpu_delta_ms_per_req": _minus(
                other["cpu_ms_per_req"].get("gw"), base["cpu_ms_per_req"].get("gw")
            ),
        }
    return out


def print_cost(title: str, cost: dict[str, dict[str, float | None]]) -> None:
    print(f"\n{title}")
    for scenario, values in cost.items():
        print(
            f"  {scenario:<16} req/s={_fmt(values['rps_ratio'], 2)}x  "
            f"p50 {_signed(values['p50_delta_ms'], 3)} ms  "
            f"p99 {_signed(values['p99_delta_ms'], 3)} ms  "
            f"gw cpu {_signed(values['gw_cpu_delta_ms_per_req'], 3)} ms/req"
        )


def _signed(value: float | None, digits: int) -> str:
    return "-" if value is None or value != value else f"{value:+.{digits}f}"


def print_metering(
    cost: dict[str, dict[str, float | None]], alone: dict[str, dict[str, float | None]]
) -> None:
    print(
        "\nmetered vs unmetered gateway (req/s: metered/unmetered, 1.00x = metering is free; "
        "p50, p99, gw cpu: metered minus unmetered) and unmetered/direct (the relay alone)"
    )
    for scenario, values in cost.items():
        relay = alone.get(scenario, {})
        print(
            f"  {scenario:<16} req/s={_fmt(values['rps_ratio'], 2)}x  "
            f"p50 {_signed(values['p50_delta_ms'], 3)} ms  "
            f"p99 {_signed(values['p99_delta_ms'], 3)} ms  "
            f"gw cpu {_signed(values['gw_cpu_delta_ms_per_req'], 3)} ms/req   |  unmetered/direct "
            + "  ".join(f"{k}={_fmt(v, 2)}x" for k, v in relay.items())
        )


def print_chat(
    versus_gemini: dict[str, dict[str, float | None]],
    versus_direct: dict[str, dict[str, float | None]],
) -> None:
    print(
        "\nchat completions vs the Gemini route through the same gateway config (chat/gateway: "
        "req/s, MB/s 1.00x = the conversion is free; latency, RSS above 1 = its cost) "
        "and chat/direct"
    )
    for scenario, values in versus_gemini.items():
        shown = "  ".join(f"{k}={_fmt(v, 2)}x" for k, v in values.items())
        direct = versus_direct.get(scenario)
        if direct:
            shown += "   |  chat/direct " + "  ".join(
                f"{k}={_fmt(v, 2)}x" for k, v in direct.items()
            )
        print(f"  {scenario:<16} {shown}")


def inflight_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Scenario D: route -> in-flight count -> peak RSS growth per in-flight image, in
    multiples of the image's size."""
    out: dict[str, dict[str, float | None]] = {}
    for row in rows:
        if row["scenario"].startswith("D"):
            out.setdefault(row["target"], {})[str(row["concurrency"])] = row.get(
                "x_image_per_inflight"
            )
    return out


def print_inflight(summary: dict[str, dict[str, float | None]]) -> None:
    print(
        f"\npeak RSS growth per in-flight {IMAGE_BYTES // MiB} MiB image, in multiples of its "
        f"size (target: under {RSS_TARGET_X:.0f}x on the chat route)"
    )
    for route, by_k in summary.items():
        worst = max((v for v in by_k.values() if v is not None), default=None)
        verdict = "" if worst is None else ("  ok" if worst < RSS_TARGET_X else "  OVER TARGET")
        shown = "  ".join(f"K={k}: {_fmt(v, 2)}x" for k, v in by_k.items())
        name = "chat" if route == "chat" else "gemini route"
        print(f"  {name:<13} {shown}{verdict if route == 'chat' else ''}")


def print_ledgers(ledgers: dict[str, dict[str, Any]]) -> None:
    print("\nledger check (whole run, warm-ups included; metered: ~2 rows a call, no pending hold)")
    for name, check in ledgers.items():
        print(
            f"  {name:<10} ledger rows {check['ledger_rows']}  holds {check['holds']}  "
            f"client spent {check['client_spent']} credits, "
            f"{_fmt(check['settled_per_call'], 1)} a settled call"
        )


def report(
    env: dict[str, Any], rows: list[dict[str, Any]], ledgers: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    print(
        f"\nenvironment: {env['cpu_count']} CPUs, Python {env['python']}, aiohttp "
        f"{env['aiohttp']}, client loop {env['client_loop']}; {env['note']}."
    )
    print(f"knobs: {env['knobs']}")
    print(f"gateway: {env['gateway_env']}")
    families = [
        (
            "A",
            "A. small text generateContent, closed loop; gateway = metering on, "
            "unmetered = NANOGATE_METERING=false",
            TEXT_COLUMNS,
        ),
        ("C", "C. streamGenerateContent?alt=sse, small text, closed loop", STREAM_COLUMNS),
        (
            "B",
            "B. 16 MiB images (~22 MB JSON each); RSS of the server under test: "
            "simulator for direct, gateway for gateway (chat: a fresh gateway of its own)",
            IMAGE_COLUMNS,
        ),
        (
            "D",
            "D. K 16 MiB images in flight, one fresh gateway per row (gateway = Gemini route, "
            "chat = /v1/chat/completions); growth = max(sampled peak, VmHWM reset before the "
            "burst) - idle RSS; x image/in-flight = growth / K / 16 MiB",
            INFLIGHT_COLUMNS,
        ),
    ]
    for letter, title, columns in families:
        chosen = [row for row in rows if row["scenario"].startswith(letter)]
        if chosen:
            print_table(title, columns, chosen)
    table = ratios(rows)
    print(
        "\ngateway/direct (req/s, MB/s: 1.00x = no loss; latency, RSS: above 1 = the relay's cost)"
    )
    for scenario, values in table.items():
        shown = "  ".join(f"{k}={_fmt(v, 2)}x" for k, v in values.items())
        print(f"  {scenario:<16} {shown}")
    cost = metering_cost(rows)
    alone = ratios(rows, "unmetered")
    if cost:
        print_metering(cost, alone)
    shared_limits = cost_against_gateway(rows, "redis")
    if shared_limits:
        print_cost(
            "limits in Redis vs in memory, both keys limited (req/s: redis/gateway, 1.00x = "
            "free; p50, p99, gw cpu: redis minus gateway)",
            shared_limits,
        )
    on_postgres = cost_against_gateway(rows, "postgres")
    if on_postgres:
        print_cost(
            "metering on PostgreSQL vs the SQLite default (req/s: postgres/gateway; "
            "p50, p99, gw cpu: postgres minus gateway)",
            on_postgres,
        )
    before = {label: ratios(rows, label) for label in ("before", "chat-before")}
    if any(before.values()):
        print("\nthe --before source tree's gateways / direct (same metrics)")
        for label, table_of in before.items():
            for scenario, values in table_of.items():
                shown = "  ".join(f"{k}={_fmt(v, 2)}x" for k, v in values.items())
                print(f"  {label:<11} {scenario:<16} {shown}")
    chat_vs_gemini, chat_vs_direct = ratios(rows, "chat", "gateway"), ratios(rows, "chat")
    per_inflight = inflight_summary(rows)
    if chat_vs_gemini:
        print_chat(chat_vs_gemini, chat_vs_direct)
    if per_inflight:
        print_inflight(per_inflight)
    if ledgers:
        print_ledgers(ledgers)
    for row in rows:
        if row["errors"]:
            print(f"  ! {row['scenario']} {row['target']}: errors {row['error_kinds']}")
    return {
        "environment": env,
        "results": rows,
        "ratios": table,
        "metering": {"metered_vs_unmetered": cost, "unmetered_ratios": alone, "ledger": ledgers},
        "redis_limiter": shared_limits,
        "postgres_metering": on_postgres,
        "before_ratios": before,
        "chat": {
            "vs_gemini_route": chat_vs_gemini,
            "vs_direct": chat_vs_direct,
            "rss_x_image_per_inflight": per_inflight,
            "rss_target_x": RSS_TARGET_X,
        },
    }


# --- entry point --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s per case, 8 image requests")
    parser.add_argument("--no-stream", action="store_true", help="skip scenario C")
    parser.add_argument(
        "--only-metering",
        action="store_true",
        help="only scenario A, on direct, metered and unmetered gateways (skips B and C)",
    )
    parser.add_argument(
        "--no-unmetered", action="store_true", help="no unmetered gateway in scenario A"
    )
    parser.add_argument(
        "--no-chat",
        action="store_true",
        help="no chat completions target (in A and B) and no scenario D",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="one more target in A: a gateway with its limits in the machine's Redis",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="one more target in A: a metered gateway on a fresh PostgreSQL database",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="alternating rounds the duration is split into (default 1 quick, 2 full)",
    )
    parser.add_argument(
        "--only-images", action="store_true", help="only scenarios B and D (the 16 MiB images)"
    )
    parser.add_argument(
        "--image-requests",
        type=int,
        default=None,
        help="16 MiB image requests per target in B (default 8 quick, 24 full)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        metavar="DIR",
        help="B also on gateways run from the source tree at DIR (e.g. a worktree of main)",
    )
    args = parser.parse_args(argv)
    if args.only_metering and args.only_images:
        parser.error("--only-metering and --only-images exclude each other")
    if args.before is not None and not (args.before / "nanogate" / "__init__.py").is_file():
        parser.error(f"--before {args.before}: no nanogate package there")
    if args.image_requests is not None and args.image_requests < 1:
        parser.error("--image-requests must be at least 1")
    if args.only_metering and args.no_unmetered:
        parser.error("--only-metering needs the unmetered gateway")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    knobs = knobs_for(args.quick, args.rounds, args.image_requests)
    factory, loop_name = loop_factory()
    env = machine(
        loop_name,
        quick=args.quick,
        knobs=asdict(knobs),
        gateway_env={
            "NANOGATE_LOG_LEVEL": "warning",
            "NANOGATE_KEY_CACHE_SECONDS": "60",
            "upstream": {"max_concurrency": 256, "breaker_failures": 1000},
        },
        note="client (this process), gateway and simulator share the same CPUs",
    )
    env["only_metering"] = args.only_metering
    env["only_images"] = args.only_images
    env["before"] = str(args.before.resolve()) if args.before else None
    if args.redis:
        env["gateway_env"]["NANOGATE_REDIS_URL"] = {"redis": redis_server.SERVER_URL}
        env["limited_key"] = " ".join(LIMITED_KEY)
    chat = not (args.no_chat or args.only_metering)
    env["chat"] = chat
    env["gateway_env"]["NANOGATE_METERING"] = {"gateway": "true"}
    if not args.no_unmetered:
        env["gateway_env"]["NANOGATE_METERING"]["unmetered"] = "false"
    mode = "quick" if args.quick else "full"
    print(f"nanogate relay benchmark ({mode}); {env['note']}")
    with (
        interrupt_on_signals(),
        tempfile.TemporaryDirectory(prefix="nanogate-bench-") as tmp_name,
        asyncio.Runner(loop_factory=factory) as runner,
    ):
        tmp = Path(tmp_name)
        before = args.before.resolve() if args.before else None
        stream = not (args.no_stream or args.only_metering)
        unmetered = not args.no_unmetered
        rows: list[dict[str, Any]] = []
        ledgers: dict[str, dict[str, Any]] = {}
        if not args.only_images:
            rows, ledgers = run_small_stack(
                runner,
                tmp,
                knobs,
                stream=stream,
                unmetered=unmetered,
                chat=chat,
                redis=args.redis,
                postgres=args.postgres,
                before=before,
            )
        if not args.only_metering:
            rows += run_image_stack(runner, tmp, knobs, chat=chat, before=before)
    doc = report(env, rows, ledgers)
    write_json(RESULTS, doc)
    return 0


if __name__ == "__main__":
    run_script(main)
