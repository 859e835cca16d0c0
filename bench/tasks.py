"""Task API: tasks per second end to end, and how long a finished task's callback takes.

Run `python bench/tasks.py [--tasks N] [--concurrency C] [--workers 16 64] [--quick]
[--upstream demo|simulator] [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]`.
For each `--workers` value the script starts a fresh `nanogate serve` (temporary data dir,
`NANOGATE_TASK_WORKERS`, metering on as by default, the egress allow-list opened to 127.0.0.1,
a known callback secret) whose only upstream is the offline demo with `latency_ms: 0`
(`--upstream simulator`: the upstream simulator instead, see below). In this process it runs an
aiohttp callback receiver on 127.0.0.1, which checks every callback's HMAC signature, and an
aiohttp client (uvloop when installed). It prints tables, writes everything to
bench/results/tasks.json, and exits 1 if any task failed. Ctrl-C, SIGTERM or an error stop every
process it started (and drop the PostgreSQL database it made).

A. Burst. After a warm-up of a few tasks, N tasks (default 500) are created by C concurrent
   client loops (default 32), each with a callback URL. Timed from the first create sent: until
   the last create is answered (creates/s) and until the callback of every created task has
   arrived (tasks completed/s, end to end). Failures: creates not answered 200, tasks that ended
   `failed`, callbacks missing after `--timeout`, callbacks with a bad signature or a body that
   does not match the task. Besides, per task, from the task's own timestamps in the database:
   queue wait (claimed - created), run (completed - claimed) and callback lag (callback received
   - completed), and the gateway's CPU use over the burst (in cores: CPU seconds a wall second).
B. Sequential. M tasks (default 100), one at a time: create, poll TaskInfo every 5 ms until it
   says succeeded, then wait for the callback. Per task: create-to-callback time and the callback
   lag measured two ways (below).

How the callback lag is measured. `complete_at` in the API is whole seconds, too coarse. But the
database keeps `tasks.completed_at` with microseconds: the worker takes it (`datetime.now(UTC)`)
just before the transaction that marks the task succeeded and queues its callback. The receiver
takes `time.time()` when the callback's handler starts. Both are CLOCK_REALTIME of the same
machine (the gateway is a child of this process), so there is no skew between them, and
`received - completed_at` is the lag from the worker's decision to the callback's arrival:
committing the finish, waking the callback sender, its claim transaction, rendering and signing
the body, the POST, and this process's event loop getting to the handler. The script reads the
timestamps after the run, read-only (SQLite WAL allows that beside the gateway; on PostgreSQL an
ordinary SELECT). That method is exact to the microsecond and covers every task, so A reports
the lag under load too. B cross-checks it with the black-box method: the moment a TaskInfo poll
first answered `succeeded` ("poll saw"), reported as callback - poll saw (negative when the
callback came first). A poll can see success only once the finish has committed, which follows
completed_at, so poll saw - completed_at is at least 0 (a task below 0 counts as a clock
violation; there should be none, which checks that the two clocks and the database timestamp
agree), and at most about the "poll bound" (poll saw - previous poll sent: the 5 ms interval
plus two round trips) plus the finish's commit. The polls themselves cost: every TaskInfo is
a transaction in the gateway's journal, so B's numbers include some queueing behind them
(`--poll-ms 0` switches polling off).

How to read it. With the demo upstream, "zero latency" still renders a real 1024x1024 PNG per
task (~60 ms of CPU, in a thread), and the gateway, this client and receiver share the machine's
cores (2 on the reference box): the burst's ceiling is the render, not the task machinery. Run
`--upstream simulator` (a Gemini upstream answering a small cached PNG at once) to see the task
pipeline alone. Timestamps taken in this process (receive time) include this process's own event
loop delay, which is larger in A, where the same loop also creates tasks, than in B.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import yaml
from aiohttp import web
from common import (
    SIM_KEY,
    Server,
    cpu_seconds,
    gateway_env,
    interrupt_on_signals,
    launch_gateway,
    loop_factory,
    machine,
    percentile,
    postgres_database,
    run_script,
    start_simulator,
    write_json,
)
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from nanogate.billing.ledger import aware
from nanogate.tasks.callbacks import SIGNATURE_HEADER, TIMESTAMP_HEADER
from tests.simulator.processes import free_port

MODEL = "google/nano-banana"
CREATE_PATH = "/api/v1/client/job/CreateTask"
INFO_PATH = "/api/v1/client/job/TaskInfo"
CALLBACK_PATH = "/cb"
CALLBACK_SECRET = "bench-callback-secret-0123456789abcdef"
# A callback whose signed timestamp is further than this from now is refused as stale.
CALLBACK_MAX_AGE_S = 300
WARMUP_TASKS = 8
SEQUENTIAL_WAIT_S = 30.0  # for one task's callback in B
WARMUP_WAIT_S = 60.0
RESULTS = Path(__file__).resolve().parent / "results" / "tasks.json"
FINAL = ("succeeded", "failed")

# Wide enough for the tables when the output is a file or a pipe (rich assumes 80 columns).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


@dataclass(frozen=True)
class Knobs:
    tasks: int
    concurrency: int
    workers: tuple[int, ...]
    sequential_tasks: int
    poll_ms: float
    upstream: Literal["demo", "simulator"]
    timeout_s: float
    database_url: str | None  # a PostgreSQL server to make fresh databases on; None: SQLite


# --- the callback receiver ----------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """A callback as it arrived: when (wall clock and perf counter), and what it said."""

    task_id: str
    wall: float  # time.time() when the handler started
    perf: float  # time.perf_counter() at the same moment
    status: str
    attempt: int  # x-nanogate-attempt (0: missing)
    problem: str | None  # why it does not count as a good callback (bad signature, ...)


def verify(secret: bytes, timestamp: str, signature: str, body: bytes, now: float) -> str | None:
    """What is wrong with a callback's signature, or None: HMAC-SHA256 over `timestamp + "." +
    body`, hex, and a timestamp within CALLBACK_MAX_AGE_S of now."""
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return "bad signature"
    try:
        age = abs(now - int(timestamp))
    except ValueError:
        return "timestamp not an integer"
    return "stale timestamp" if age > CALLBACK_MAX_AGE_S else None


class Receiver:
    """Takes callbacks on 127.0.0.1; `arrival(task_id)` resolves with a task's first one."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.arrivals: dict[str, Arrival] = {}
        self.repeats: Counter[str] = Counter()  # callbacks after a task's first
        self._waiting: dict[str, asyncio.Future[Arrival]] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(CALLBACK_PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}{CALLBACK_PATH}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def arrival(self, task_id: str) -> asyncio.Future[Arrival]:
        future = self._waiting.get(task_id)
        if future is None:
            future = self._waiting[task_id] = asyncio.get_running_loop().create_future()
            if task_id in self.arrivals:
                future.set_result(self.arrivals[task_id])
        return future

    async def _handle(self, request: web.Request) -> web.Response:
        wall, perf = time.time(), time.perf_counter()
        body = await request.read()
        headers = request.headers
        task_id = headers.get("x-nanogate-task-id", "")
        problem = verify(
            self.secret,
            headers.get(TIMESTAMP_HEADER, ""),
            headers.get(SIGNATURE_HEADER, ""),
            body,
            wall,
        )
        status = "?"
        try:
            data = json.loads(body)["data"]
            status = str(data["status"])
            if data["task_id"] != task_id:
                problem = problem or "body's task_id differs from the header's"
        except (ValueError, KeyError, TypeError):
            problem = problem or "body is not a TaskInfo answer"
        attempt = headers.get("x-nanogate-attempt", "")
        if task_id in self.arrivals:
            self.repeats[task_id] += 1
        else:
            number = int(attempt) if attempt.isdigit() else 0
            arrival = Arrival(task_id, wall, perf, status, number, problem)
            self.arrivals[task_id] = arrival
            future = self._waiting.get(task_id)
            if future is not None and not future.done():
                future.set_result(arrival)
        # Answer 200 even to a bad one: it is counted as a failure; a retry would only blur it.
        return web.Response(status=200)


# --- the client ---------------------------------------------------------------------------


class ApiFailed(Exception):
    """A create or TaskInfo call not answered with code 200; the message says which and how."""


class TaskClient:
    def __init__(self, session: aiohttp.ClientSession, gateway: Server, callback_url: str) -> None:
        self.session = session
        self.headers = {"x-api-key": gateway.key, "content-type": "application/json"}
        self.create_url = gateway.url + CREATE_PATH
        self.info_url = gateway.url + INFO_PATH
        self.callback_url = callback_url

    async def _call(self, what: str, method: str, url: str, **kwargs: Any) -> Any:
        try:
            async with self.session.request(method, url, headers=self.headers, **kwargs) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiFailed(f"{what}: {type(exc).__name__}") from None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise ApiFailed(f"{what}: HTTP {status}, not JSON") from None
        if not isinstance(doc, dict):
            raise ApiFailed(f"{what}: HTTP {status}, not a JSON object")
        if status != 200 or doc.get("code") != 200:
            raise ApiFailed(f"{what}: HTTP {status}: {str(doc.get('message'))[:80]}")
        return doc.get("data")

    async def create(self, prompt: str) -> str:
        body = {"model": MODEL, "input": {"prompt": prompt}, "callback_url": self.callback_url}
        data = await self._call("create", "POST", self.create_url, data=json.dumps(body).encode())
        return str(data["task_id"])

    async def info(self, task_id: str) -> dict[str, Any]:
        data: dict[str, Any] = await self._call(
            "TaskInfo", "GET", self.info_url, params={"task_id": task_id}
        )
        return data


def session_for(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=60),
    )


# --- what the database says ---------------------------------------------------------------


@dataclass(frozen=True)
class Stamps:
    """A task's row: its state and when it was created, claimed and completed (Unix s)."""

    state: str
    attempts: int
    created: float
    started: float | None
    completed: float | None
    error: str | None


def _unix(value: Any) -> float | None:
    return None if value is None else aware(value).timestamp()


async def read_stamps(database_url: str) -> dict[str, Stamps]:
    """Every task row of the gateway's (fresh) database, read beside the running gateway."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, state, attempts, created_at, started_at, completed_at, "
                    "error_message FROM tasks"
                )
            )
            found = list(rows)
    finally:
        await engine.dispose()
    out: dict[str, Stamps] = {}
    for task_id, state, attempts, created, started, completed, error in found:
        created_s = _unix(created)
        assert created_s is not None
        out[task_id] = Stamps(
            state, int(attempts), created_s, _unix(started), _unix(completed), error
        )
    return out


# --- A. burst -----------------------------------------------------------------------------


@dataclass
class Burst:
    requested: int
    sent: dict[str, float] = field(default_factory=dict)  # task id -> perf when its create left
    failures: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    creates_done: float = 0.0
    arrivals: dict[str, Arrival] = field(default_factory=dict)
    good: int = 0  # callbacks that verified and said succeeded
    gateway_cpu_s: float = 0.0
    client_cpu_s: float = 0.0


async def create_all(
    client: TaskClient, count: int, concurrency: int, prefix: str, out: Burst
) -> None:
    """`count` creates, `concurrency` in flight; ids and failures go to `out`."""
    remaining = iter(range(count))

    async def loop() -> None:
        for index in remaining:
            sent = time.perf_counter()
            try:
                task_id = await client.create(f"{prefix} {index}: a lighthouse at dusk")
            except ApiFailed as exc:
                out.failures[str(exc)] += 1
                continue
            out.sent[task_id] = sent

    await asyncio.gather(*(loop() for _ in range(min(concurrency, count))))


async def wait_callbacks(
    receiver: Receiver, task_ids: Iterable[str], timeout_s: float
) -> tuple[dict[str, Arrival], int]:
    """The first callback of each task, and how many never came within `timeout_s`."""
    futures = {task_id: receiver.arrival(task_id) for task_id in task_ids}
    if futures:
        await asyncio.wait(futures.values(), timeout=timeout_s)
    arrived = {task_id: f.result() for task_id, f in futures.items() if f.done()}
    return arrived, len(futures) - len(arrived)


def judge(arrivals: Iterable[Arrival], failures: Counter[str]) -> int:
    """Count bad callbacks into `failures`; returns how many were good and said succeeded."""
    good = 0
    for arrival in arrivals:
        if arrival.problem:
            failures[f"callback: {arrival.problem}"] += 1
        elif arrival.status != "succeeded":
            failures[f"task {arrival.status}"] += 1
        else:
            good += 1
    return good


async def burst(client: TaskClient, receiver: Receiver, gateway: Server, knobs: Knobs) -> Burst:
    out = Burst(knobs.tasks)
    gw_cpu, client_cpu = cpu_seconds(gateway.pid), time.process_time()
    out.started = time.perf_counter()
    await create_all(client, knobs.tasks, knobs.concurrency, "burst", out)
    out.creates_done = time.perf_counter()
    out.arrivals, missing = await wait_callbacks(receiver, out.sent, knobs.timeout_s)
    out.gateway_cpu_s = cpu_seconds(gateway.pid) - gw_cpu
    out.client_cpu_s = time.process_time() - client_cpu
    if missing:
        out.failures[f"no callback within {knobs.timeout_s:g} s"] += missing
    out.good = judge(out.arrivals.values(), out.failures)
    return out


def ms(values: Iterable[float]) -> list[float]:
    return [v * 1000 for v in values]


def dist(prefix: str, values_ms: list[float], *, q: tuple[int, ...] = (50, 99)) -> dict[str, Any]:
    row: dict[str, Any] = {f"{prefix}_p{n}": percentile(values_ms, n) for n in q}
    row[f"{prefix}_max"] = max(values_ms) if values_ms else float("nan")
    return row


def completed_at(stamps: dict[str, Stamps], task_id: str) -> float | None:
    found = stamps.get(task_id)
    return found.completed if found else None


def task_errors(stamps: dict[str, Stamps], task_ids: Iterable[str]) -> dict[str, int]:
    """Why the database says tasks failed, by message."""
    found = (stamps.get(task_id) for task_id in task_ids)
    return dict(Counter(s.error or "?" for s in found if s and s.state == "failed"))


def burst_row(run: Burst, stamps: dict[str, Stamps]) -> dict[str, Any]:
    create_s = run.creates_done - run.started
    ends = [a.perf for a in run.arrivals.values()]
    e2e_s = max(ends) - run.started if ends else float("nan")
    rows = [stamps[t] for t in run.arrivals if t in stamps]
    queue = [s.started - s.created for s in rows if s.started is not None]
    ran = [s.completed - s.started for s in rows if s.completed and s.started]
    lag = [
        a.wall - done
        for t, a in run.arrivals.items()
        if (done := completed_at(stamps, t)) is not None
    ]
    e2e = [a.perf - run.sent[t] for t, a in run.arrivals.items()]
    good = run.good
    return {
        "phase": "A burst",
        "requested": run.requested,
        "created": len(run.sent),
        "succeeded": good,
        "failures": sum(run.failures.values()),
        "failure_kinds": dict(run.failures),
        "create_s": create_s,
        "creates_per_s": len(run.sent) / create_s if create_s else float("nan"),
        "e2e_s": e2e_s,
        "completed_per_s": good / e2e_s if ends else float("nan"),
        "task_errors": task_errors(stamps, run.sent),
        "tasks_run_again": sum(1 for s in rows if s.attempts > 1),
        "retried_callbacks": sum(1 for a in run.arrivals.values() if a.attempt > 1),
        "gateway_cpu_cores": run.gateway_cpu_s / e2e_s if ends else float("nan"),
        "client_cpu_cores": run.client_cpu_s / e2e_s if ends else float("nan"),
        **dist("e2e_ms", ms(e2e)),
        **dist("queue_ms", ms(queue)),
        **dist("run_ms", ms(ran)),
        **dist("lag_ms", ms(lag)),
    }


# --- B. sequential ------------------------------------------------------------------------


@dataclass
class Sample:
    """One task of B: perf when its create left, the wall times of the first poll that saw it
    final and of the poll before that one, and its callback."""

    task_id: str
    sent: float
    poll_saw: float | None
    poll_before: float | None
    arrival: Arrival | None


async def one_task(client: TaskClient, receiver: Receiver, index: int, poll_s: float) -> Sample:
    sent = time.perf_counter()
    previous_sent = time.time()
    task_id = await client.create(f"sequential {index}: a lighthouse at dusk")
    waiting = receiver.arrival(task_id)
    poll_saw: float | None = None
    poll_before: float | None = None
    if poll_s > 0:
        # The create answered before the task could complete: it bounds the first poll's gap.
        while True:
            asked = time.time()
            data = await client.info(task_id)
            if data["status"] in FINAL:
                poll_saw, poll_before = time.time(), previous_sent
                break
            previous_sent = asked
            await asyncio.sleep(poll_s)
    try:
        arrival: Arrival | None = await asyncio.wait_for(waiting, SEQUENTIAL_WAIT_S)
    except TimeoutError:
        arrival = None
    return Sample(task_id, sent, poll_saw, poll_before, arrival)


@dataclass
class Series:
    requested: int
    samples: list[Sample] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    good: int = 0


async def sequential(client: TaskClient, receiver: Receiver, knobs: Knobs) -> Series:
    out = Series(knobs.sequential_tasks)
    for index in range(knobs.sequential_tasks):
        try:
            out.samples.append(await one_task(client, receiver, index, knobs.poll_ms / 1000))
        except ApiFailed as exc:
            out.failures[str(exc)] += 1
    missing = sum(1 for s in out.samples if s.arrival is None)
    if missing:
        out.failures[f"no callback within {SEQUENTIAL_WAIT_S:g} s"] += missing
    out.good = judge((s.arrival for s in out.samples if s.arrival), out.failures)
    return out


def sequential_row(series: Series, stamps: dict[str, Stamps]) -> dict[str, Any]:
    e2e, lag_db, lag_poll, poll_db, bound = [], [], [], [], []
    violations = 0
    for s in series.samples:
        if s.arrival is None:
            continue
        e2e.append(s.arrival.perf - s.sent)
        completed = completed_at(stamps, s.task_id)
        if completed is not None:
            lag_db.append(s.arrival.wall - completed)
        if s.poll_saw is None or s.poll_before is None:
            continue
        lag_poll.append(s.arrival.wall - s.poll_saw)
        bound.append(s.poll_saw - s.poll_before)
        if completed is not None:
            poll_db.append(s.poll_saw - completed)
            # A poll sees success only after the commit, which follows completed_at.
            violations += s.poll_saw < completed
    return {
        "phase": "B sequential",
        "requested": series.requested,
        "created": len(series.samples),
        "succeeded": series.good,
        "failures": sum(series.failures.values()),
        "failure_kinds": dict(series.failures),
        "task_errors": task_errors(stamps, (s.task_id for s in series.samples)),
        "clock_violations": violations,
        **dist("e2e_ms", ms(e2e)),
        **dist("lag_ms", ms(lag_db)),
        **dist("lag_poll_ms", ms(lag_poll)),
        **dist("poll_db_ms", ms(poll_db)),
        **dist("poll_bound_ms", ms(bound)),
    }


# --- one gateway --------------------------------------------------------------------------


def upstream_config(knobs: Knobs, sim: Server | None) -> dict[str, Any]:
    common: dict[str, Any] = {"max_concurrency": 256, "breaker_failures": 1000}
    if sim is None:
        return {"name": "demo", "kind": "demo", "latency_ms": 0, **common}
    return {"name": "sim", "kind": "gemini", "base_url": sim.url, "api_key": SIM_KEY, **common}


def start_task_gateway(
    stack: ExitStack,
    root: Path,
    workers: int,
    upstream: dict[str, Any],
    database_url: str | None,
) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "nanogate.yaml"
    config.write_text(yaml.safe_dump({"upstreams": [upstream]}))
    port = free_port()
    env = gateway_env(
        root,
        port,
        config,
        NANOGATE_TASK_WORKERS=str(workers),
        NANOGATE_EGRESS_ALLOWLIST="127.0.0.1",
        NANOGATE_CALLBACK_SECRET=CALLBACK_SECRET,
    )
    if database_url is not None:
        env["NANOGATE_DATABASE_URL"] = database_url
    return launch_gateway(stack, root, port, env, f"gateway w={workers}")


async def warm_up(client: TaskClient, receiver: Receiver, gateway: Server) -> None:
    """A few tasks first (connections, key cache, the upstream's first render); a setup that
    cannot run them (egress refused, say) stops the run here."""
    warm = Burst(WARMUP_TASKS)
    await create_all(client, WARMUP_TASKS, WARMUP_TASKS, "warm-up", warm)
    arrived, missing = await wait_callbacks(receiver, warm.sent, WARMUP_WAIT_S)
    judge(arrived.values(), warm.failures)
    if missing:
        warm.failures[f"no callback within {WARMUP_WAIT_S:g} s"] += missing
    if warm.failures:
        raise RuntimeError(
            f"warm-up failed: {dict(warm.failures)}\ngateway log: {gateway.log.read_text()[-3000:]}"
        )


async def measure(gateway: Server, database_url: str, knobs: Knobs) -> list[dict[str, Any]]:
    """Warm-up, A and B against one gateway, then the database's timestamps for both."""
    receiver = Receiver(CALLBACK_SECRET.encode())
    await receiver.start()
    try:
        async with session_for(knobs.concurrency) as session:
            client = TaskClient(session, gateway, receiver.url)
            await warm_up(client, receiver, gateway)
            print("    A burst", flush=True)
            run = await burst(client, receiver, gateway, knobs)
            series = None
            if knobs.sequential_tasks:
                print("    B sequential", flush=True)
                series = await sequential(client, receiver, knobs)
            stamps = await read_stamps(database_url)
            rows = [burst_row(run, stamps)]
            if series is not None:
                rows.append(sequential_row(series, stamps))
            repeats = sum(receiver.repeats.values())
            for row in rows:
                row["repeated_callbacks_whole_run"] = repeats
            return rows
    finally:
        await receiver.stop()


def run_all(runner: asyncio.Runner, tmp: Path, knobs: Knobs) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with ExitStack() as outer:
        sim = start_simulator(outer, tmp, None) if knobs.upstream == "simulator" else None
        upstream = upstream_config(knobs, sim)
        for index, workers in enumerate(knobs.workers):
            print(f"  workers={workers}", flush=True)
            with ExitStack() as stack:
                root = tmp / f"run-{index}-workers-{workers}"
                if knobs.database_url:
                    url = postgres_database(stack, knobs.database_url)
                    database = "postgresql"
                else:
                    url = f"sqlite+aiosqlite:///{(root / 'data' / 'nanogate.db').resolve()}"
                    database = "sqlite"
                pg_url = url if knobs.database_url else None
                gateway = start_task_gateway(stack, root, workers, upstream, pg_url)
                for row in runner.run(measure(gateway, url, knobs)):
                    rows.append({"workers": workers, "database": database, **row})
    return rows


# --- output -------------------------------------------------------------------------------

# One table row per metric, one column per gateway run: (label, row keys, decimals); several
# keys share a cell as "p50 / p99 / max".
Metric = tuple[str, tuple[str, ...], int]


def _spread(prefix: str) -> tuple[str, ...]:
    return (f"{prefix}_p50", f"{prefix}_p99", f"{prefix}_max")


BURST_METRICS: list[Metric] = [
    ("tasks created", ("created",), 0),
    ("failed", ("failures",), 0),
    ("creates/s (first create sent to last answered)", ("creates_per_s",), 0),
    ("tasks done/s end to end (first create to last callback)", ("completed_per_s",), 1),
    ("wall s, first create to last callback", ("e2e_s",), 2),
    ("create sent -> callback ms  p50 / p99 / max", _spread("e2e_ms"), 0),
    ("queue wait ms (claimed - created)", _spread("queue_ms"), 0),
    ("run ms (completed - claimed)", _spread("run_ms"), 0),
    ("callback lag ms (received - completed_at)", _spread("lag_ms"), 1),
    ("tasks run more than once", ("tasks_run_again",), 0),
    ("callbacks retried", ("retried_callbacks",), 0),
    ("gateway CPU, cores", ("gateway_cpu_cores",), 2),
    ("client+receiver CPU, cores", ("client_cpu_cores",), 2),
]
SEQUENTIAL_METRICS: list[Metric] = [
    ("tasks created", ("created",), 0),
    ("failed", ("failures",), 0),
    ("create sent -> callback ms  p50 / p99 / max", _spread("e2e_ms"), 1),
    ("callback lag ms (received - completed_at)", _spread("lag_ms"), 2),
    ("received - poll saw success ms", _spread("lag_poll_ms"), 2),
    ("poll saw success - completed_at ms", _spread("poll_db_ms"), 2),
    ("poll bound ms (poll saw - previous poll sent)", _spread("poll_bound_ms"), 2),
    ("clock violations (poll saw < completed_at)", ("clock_violations",), 0),
]


def _fmt(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:,.{digits}f}"
    return "-" if value is None else str(value)


def print_table(title: str, metrics: list[Metric], rows: list[dict[str, Any]]) -> None:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("")
    for row in rows:
        table.add_column(f"{row['database']} workers={row['workers']}", justify="right")
    for label, keys, digits in metrics:
        cells = [" / ".join(_fmt(row.get(key), digits) for key in keys) for row in rows]
        table.add_row(label, *cells)
    console.print()
    console.print(table)


def report(env: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    console.print(
        f"\nenvironment: {env['cpu_count']} CPUs, Python {env['python']}, aiohttp "
        f"{env['aiohttp']}, client loop {env['client_loop']}; upstream {env['upstream']}; "
        "gateway, client and receiver share the CPUs."
    )
    console.print(f"knobs: {env['knobs']}")
    knobs = env["knobs"]
    burst_rows = [row for row in rows if row["phase"].startswith("A")]
    print_table(
        f"A. burst: {knobs['tasks']} tasks created at concurrency {knobs['concurrency']}, "
        "done when every callback arrived (task timestamps from the database)",
        BURST_METRICS,
        burst_rows,
    )
    sequential_rows = [row for row in rows if row["phase"].startswith("B")]
    if sequential_rows:
        print_table(
            f"B. sequential: {knobs['sequential_tasks']} tasks one at a time, TaskInfo polled "
            f"every {knobs['poll_ms']:g} ms",
            SEQUENTIAL_METRICS,
            sequential_rows,
        )
    for row in rows:
        where = f"{row['database']} workers={row['workers']} {row['phase']}"
        if row["failures"]:
            console.print(f"  ! {where}: failures {row['failure_kinds']}", style="red")
        if row.get("task_errors"):
            console.print(f"  ! {where}: failed tasks say {row['task_errors']}", style="red")
    repeats = {row.get("repeated_callbacks_whole_run", 0) for row in rows}
    if any(repeats):
        console.print(f"  ! callbacks delivered more than once: {sorted(repeats)}")
    return {"environment": env, "results": rows}


# --- entry point --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Knobs:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=None, help="N, tasks in A (default 500)")
    parser.add_argument("--concurrency", type=int, default=32, help="C, creates in flight in A")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        help="NANOGATE_TASK_WORKERS values, a fresh gateway each (default 16 64)",
    )
    parser.add_argument(
        "--sequential-tasks", type=int, default=None, help="M, tasks in B (default 100; 0: no B)"
    )
    parser.add_argument(
        "--poll-ms", type=float, default=5.0, help="TaskInfo poll interval in B (0: no polling)"
    )
    parser.add_argument(
        "--upstream",
        choices=("demo", "simulator"),
        default="demo",
        help="demo: the offline demo at latency_ms 0 (renders real PNGs); simulator: the "
        "upstream simulator as a Gemini upstream (a small cached PNG)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds A waits for its callbacks"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/postgres) "
        "to run on: each gateway gets a fresh database there, dropped afterwards; default SQLite",
    )
    parser.add_argument(
        "--quick", action="store_true", help="N=100, M=20, workers 16 (unless given)"
    )
    args = parser.parse_args(argv)
    tasks = args.tasks or (100 if args.quick else 500)
    sequential_tasks = args.sequential_tasks
    if sequential_tasks is None:
        sequential_tasks = 20 if args.quick else 100
    workers = tuple(args.workers or ((16,) if args.quick else (16, 64)))
    if tasks < 1 or args.concurrency < 1 or sequential_tasks < 0 or args.poll_ms < 0:
        parser.error("--tasks and --concurrency must be positive, the others not negative")
    if any(w < 1 for w in workers):
        parser.error("--workers values must be at least 1 (0 runs no workers in serve)")
    if args.database_url and not args.database_url.startswith("postgresql"):
        parser.error("--database-url must be a postgresql+asyncpg:// URL")
    return Knobs(
        tasks=tasks,
        concurrency=args.concurrency,
        workers=workers,
        sequential_tasks=sequential_tasks,
        poll_ms=args.poll_ms,
        upstream=args.upstream,
        timeout_s=args.timeout,
        database_url=args.database_url,
    )


def main(argv: list[str] | None = None) -> int:
    knobs = parse_args(argv)
    factory, loop_name = loop_factory()
    env = machine(
        loop_name,
        upstream="demo, latency_ms 0" if knobs.upstream == "demo" else "simulator",
        knobs=asdict(knobs),
    )
    database = "PostgreSQL" if knobs.database_url else "SQLite"
    print(f"nanogate task benchmark on {database}, upstream {env['upstream']}")
    with (
        interrupt_on_signals(),
        tempfile.TemporaryDirectory(prefix="nanogate-bench-tasks-") as tmp_name,
        asyncio.Runner(loop_factory=factory) as runner,
    ):
        rows = run_all(runner, Path(tmp_name), knobs)
    doc = report(env, rows)
    write_json(RESULTS, doc)
    return 1 if any(row["failures"] for row in rows) else 0


if __name__ == "__main__":
    run_script(main)
