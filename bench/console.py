"""Console: how fast its pages and their admin API calls answer on a big database.

Run `python bench/console.py [--backend sqlite|postgres] [--usage 100000] [--tasks 10000]
[--repeat 20] [--keep] [--explain] [--database-url URL]` (the PostgreSQL server for `--backend
postgres`; default postgresql+asyncpg://postgres@127.0.0.1:5432/postgres).

1. A fresh database (SQLite in a temporary data dir, or a database `nanogate_bench_console`
   created on the PostgreSQL server of `--database-url`, dropped afterwards), brought to the
   app's schema by its own migrations, then seeded directly with SQLAlchemy Core bulk inserts
   (executemany in chunks, not through the HTTP API): 20 client accounts with 40 keys (a few
   revoked or expired) plus an admin account and key; `--usage` usage records over the last 30
   days, denser recently (70% spread evenly, 30% exponential with a 2-day mean), across the
   catalog's models and three upstreams, ~5% errors (4xx/5xx with a message; refusals without
   an upstream), tokens, images, cost and latency shaped like real calls; `--tasks` tasks over
   the same 30 days: mostly succeeded, ~8% failed, and pending/running ones among the newest,
   60% with a callback URL (delivered, failed after retries, or pending a retry an hour from
   now) and their delivery attempts. Every succeeded task's result points at real PNGs in the
   data dir's result storage (stored through LocalStorage, so names are valid): `--repeat` + 4
   distinct 1024x1024 renders with noise (about 1.4 MB each, like a photographic result), one
   per newest succeeded task, shared by all older ones. SQLite is left without ANALYZE, as the
   app leaves it; PostgreSQL gets VACUUM ANALYZE, as autovacuum would after such inserts.
2. `nanogate serve` on that database (task workers off, so nothing changes under the
   measurement), a console login (POST /admin/session) and a warm-up of two calls per probe.
3. Every probe `--repeat` times, one call at a time, with the session cookie as the console's
   own script sends it: the pages and static files; /admin/stats and /admin/stats/chart; the
   overview page's whole load (the stats and its four charts at once, as console.js asks for
   them) per window; /admin/usage with each filter; the CSV export,
   time to the first body byte and in total, for one model over one day, and everything
   (reported, not held to the bound; with /healthz polled meanwhile, which shows how long the
   export holds up the event loop);
   /admin/tasks with each filter, a task's detail and callbacks, its thumbnail made (a task
   whose image has none yet, each call) and cached; the keys, accounts, upstreams and models.
   Median, p95 and max in ms, taken in this process (the HTTP round trip on loopback included);
   PASS when p95 < 300 ms.
4. With `--explain`, the report queries behind the heavy rows, captured from nanogate.reports
   itself against the seeded database: in-process time (no HTTP) and plan (SQLite: EXPLAIN
   QUERY PLAN; PostgreSQL: EXPLAIN (ANALYZE, BUFFERS)).

How to read it: the gateway and this client share the machine's CPUs, and anything else
running there shows up in the figures; the load average before and after the probes is
printed (and in the JSON) to tell a busy box from a slow query. The month's stats and charts
read every record of the window, so they grow with the data; the other calls read a page.

Figures go to bench/results/console-<backend>.json. Ctrl-C, SIGTERM or an error stop the
gateway and drop the PostgreSQL database (`--keep` keeps it and the data dir, and says where).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
import orjson
import yaml
from common import (
    gateway_env,
    interrupt_on_signals,
    loop_factory,
    machine,
    percentile,
    postgres_database,
    run_script,
    spawn_gateway,
    wait_healthy,
    write_json,
)
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.access.keys import hash_key, new_key
from nanogate.console import reports
from nanogate.console.sessions import COOKIE
from nanogate.core.catalog import ModelSpec, load_catalog
from nanogate.db import make_engine, run_migrations
from nanogate.db.tables import accounts, api_keys, callback_deliveries, tasks, usage_records
from nanogate.storage import UrlSigner
from nanogate.storage.local import LocalStorage
from nanogate.upstreams.demo.render import render_image
from tests.simulator.processes import free_port

BOUND_MS = 300.0
RESULTS = Path(__file__).resolve().parent / "results"
PG_DATABASE = "nanogate_bench_console"
DEFAULT_PG_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
WARMUP_CALLS = 2
FULL_CSV_REPEAT = 3  # the full export takes seconds; a few runs show its spread
HEALTH_EVERY_S = 0.025
SPAN = timedelta(days=30)
CHUNK = 5_000  # rows per executemany

# Wide enough for the tables when the output is a file or a pipe (rich assumes 80 columns).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


@dataclass(frozen=True)
class Knobs:
    backend: Literal["sqlite", "postgres"]
    usage: int
    tasks: int
    repeat: int
    keep: bool
    explain: bool
    database_url: str  # the PostgreSQL server (its own database is only connected to)
    seed: int


# --- seeding ------------------------------------------------------------------------------

UPSTREAMS = (("vertex-us", 0.55), ("aistudio", 0.35), ("vertex-eu", 0.10))
DIALECTS = (("gemini", 0.55), ("openai", 0.30), ("tasks", 0.15))
METHODS = {
    "gemini": (("generateContent", 0.7), ("streamGenerateContent", 0.25), ("countTokens", 0.05)),
    "openai": (("generateContent", 0.8), ("streamGenerateContent", 0.2)),
    "tasks": (("generateContent", 1.0),),
}
# (status, weight, "NAME: message", reached an upstream): the gateway writes the status name in
# `error` and the message in `error_message`.
ERRORS = (
    (400, 0.20, "INVALID_ARGUMENT: imageConfig.imageSize must be one of 1K, 2K, 4K", False),
    (401, 0.10, "UNAUTHENTICATED: no valid API key was presented", False),
    (402, 0.08, "INSUFFICIENT_CREDITS: the account's balance does not cover this call", False),
    (429, 0.22, "RESOURCE_EXHAUSTED: upstream quota exceeded; retry after 30 s", True),
    (500, 0.05, "INTERNAL", True),
    (502, 0.10, "UPSTREAM_ERROR: the upstream answered 502 Bad Gateway", True),
    (503, 0.15, "UNAVAILABLE: every upstream is cooling down", True),
    (504, 0.10, "DEADLINE_EXCEEDED", True),
)
ERROR_SHARE = 0.05
TASK_MODELS = (
    ("google/nano-banana", 0.5),
    ("google/nano-banana-v2", 0.25),
    ("google/nano-banana-pro", 0.15),
    ("google/nano-banana-edit", 0.10),
)
PROMPT_WORDS = (
    "a lighthouse at dusk",
    "a red fox in fresh snow",
    "a tiny robot watering a bonsai",
    "an isometric city block at night",
    "a bowl of ramen in watercolour",
    "a paper boat on a rainy street",
    "a cat astronaut floating past Saturn",
    "a misty pine forest at dawn",
    "a cozy reading nook with a window seat",
    "a vintage travel poster of Lisbon",
)
ACCOUNT_NAMES = (
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "tyrell",
    "cyberdyne",
    "soylent",
    "wonka",
    "gringotts",
    "monarch",
    "aperture",
    "blackmesa",
    "oscorp",
    "vandelay",
    "dunder",
    "pied-piper",
    "massive-dynamic",
)


def weighted(rng: random.Random, choices: tuple[tuple[Any, float], ...]) -> Any:
    values = [value for value, _ in choices]
    weights = [weight for _, weight in choices]
    return rng.choices(values, weights)[0]


def ages(rng: random.Random, count: int) -> list[float]:
    """Seconds before now of `count` events over SPAN, denser recently; oldest first (so ids
    follow time, as they do when the gateway writes them)."""
    span = SPAN.total_seconds()
    out = []
    for _ in range(count):
        if rng.random() < 0.7:
            age = rng.uniform(1.0, span)
        else:
            age = min(1.0 + rng.expovariate(1 / (2 * 86_400)), span)
        out.append(age)
    out.sort(reverse=True)
    return out


def chunks(items: Iterator[dict[str, Any]], size: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class SeedKey:
    id: int
    prefix: str
    account_id: int
    weight: float  # share of the traffic (Zipf: a few keys make most calls)


@dataclass
class Seeded:
    """What the probes need to know about the seeded data."""

    admin_key: str
    accounts: list[str]  # client accounts, busiest first
    keys: list[str]  # client key prefixes, busiest first
    models: list[str]  # catalog models, busiest first
    upstreams: list[str]
    usage_middle_id: int  # a `before` cursor half way through the records
    tasks_middle: str  # a `before` moment half way through the tasks
    thumb_tasks: list[str]  # newest succeeded tasks, each with its own first image
    detail_task: str  # a succeeded task whose callback took retries
    day: tuple[str, str]  # a whole UTC day ten days ago, ISO
    images: int  # distinct PNGs stored
    image_bytes: int  # their mean size
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def noisy_png(prompt: str, side: int = 1024) -> bytes:
    """A demo render with noise blended in: smooth renders compress to ~150 KB, real results
    are photographic (~1.5 MB); decoding such a PNG is what a cold thumbnail costs."""
    base = Image.open(io.BytesIO(render_image(prompt, side, side))).convert("RGB")
    noise = Image.effect_noise((side, side), 24).convert("RGB")
    out = io.BytesIO()
    Image.blend(base, noise, 0.12).save(out, "PNG", compress_level=1)
    return out.getvalue()


async def store_images(storage_dir: Path, count: int) -> list[str]:
    """`count` distinct PNGs in result storage, named as the gateway names them."""
    storage = LocalStorage(storage_dir, "http://127.0.0.1", UrlSigner(secrets.token_bytes(32)))
    names = []
    for index in range(count):
        data = await asyncio.to_thread(
            noisy_png, f"bench image {index}: {PROMPT_WORDS[index % 10]}"
        )
        names.append((await storage.put(data, "image/png")).name)
    return names


async def seed_keys(
    engine: AsyncEngine, rng: random.Random, now: datetime
) -> tuple[str, list[SeedKey], list[str]]:
    """The admin key (plain) and the client keys, two per client account."""
    created = now - timedelta(days=45)
    keys: list[SeedKey] = []
    names: list[str] = []
    async with engine.begin() as conn:
        admin_id = await conn.scalar(
            insert(accounts)
            .values(name="admin", balance=0, created_at=created)
            .returning(accounts.c.id)
        )
        admin_key, admin_prefix = new_key(is_admin=True)
        await conn.execute(
            insert(api_keys).values(
                prefix=admin_prefix,
                key_hash=hash_key(admin_key),
                name="admin",
                is_admin=True,
                account_id=admin_id,
                created_at=created,
            )
        )
        rank = 0
        for name in ACCOUNT_NAMES:
            account_id = await conn.scalar(
                insert(accounts)
                .values(name=name, balance=rng.randrange(10**6, 10**10), created_at=created)
                .returning(accounts.c.id)
            )
            names.append(name)
            for label in ("prod", "staging"):
                plain, prefix = new_key()
                # A few keys are no longer usable; their past usage stays.
                revoked = now - timedelta(days=3) if rank in (7, 19, 33) else None
                expires = now - timedelta(days=1) if rank in (11, 27) else None
                key_id = await conn.scalar(
                    insert(api_keys)
                    .values(
                        prefix=prefix,
                        key_hash=hash_key(plain),
                        name=f"{name}-{label}",
                        is_admin=False,
                        account_id=account_id,
                        created_at=created,
                        expires_at=expires,
                        revoked_at=revoked,
                        rpm_limit=rng.choice((None, 60, 600)),
                        daily_cap=rng.choice((None, None, 10**8)),
                    )
                    .returning(api_keys.c.id)
                )
                assert account_id is not None and key_id is not None
                keys.append(SeedKey(key_id, prefix, account_id, 1 / (rank + 1)))
                rank += 1
    # Shuffle which account is busiest, so it is not simply the first one created.
    weights = [k.weight for k in keys]
    rng.shuffle(weights)
    keys = [SeedKey(k.id, k.prefix, k.account_id, w) for k, w in zip(keys, weights, strict=True)]
    return admin_key, keys, names


def usage_row(
    rng: random.Random,
    at: datetime,
    key: SeedKey,
    spec: ModelSpec,
    serial: int,
) -> dict[str, Any]:
    dialect = weighted(rng, DIALECTS)
    method = weighted(rng, METHODS[dialect])
    upstream: str | None = weighted(rng, UPSTREAMS)
    tokens = dict.fromkeys(
        ("input_text", "input_image", "output_text", "output_image", "thoughts"), 0
    )
    images = 0
    error = None
    key_id: int | None = key.id
    account_id: int | None = key.account_id
    prefix = key.prefix
    if rng.random() < ERROR_SHARE:
        status, _, error, reached = weighted(rng, tuple((e, e[1]) for e in ERRORS))
        if not reached:
            upstream = None
        if status == 401:
            key_id, prefix, account_id = None, "", None
        latency = rng.randint(2, 40) if not reached else int(rng.lognormvariate(7.5, 1.0))
    elif method == "countTokens":
        status = 200
        tokens["input_text"] = rng.randint(10, 3000)
        latency = rng.randint(80, 400)
    else:
        status = 200
        tokens["input_text"] = rng.randint(8, 600)
        if spec.is_image:
            if rng.random() < 0.3:  # an edit: input images
                tokens["input_image"] = 258 * rng.randint(1, 3)
            images = 1 if rng.random() < 0.87 else rng.choice((2, 4))
            tokens["output_image"] = spec.image_tokens(None) * images
            tokens["output_text"] = rng.randint(0, 80)
            latency = int(rng.lognormvariate(math.log(9000), 0.35))
        else:
            tokens["input_text"] = rng.randint(20, 6000)
            tokens["output_text"] = rng.randint(10, 1800)
            latency = int(rng.lognormvariate(math.log(2500), 0.6))
        if "pro" in spec.name or spec.name.startswith("gemini-3"):
            tokens["thoughts"] = rng.randint(0, 1500)
    cost = math.ceil(sum(tokens[k] * spec.prices.get(k, 0) for k in tokens) / 1_000_000)
    return {
        "request_id": f"req_{serial:012x}",
        "key_id": key_id,
        "key_prefix": prefix,
        "account_id": account_id,
        "dialect": dialect,
        "method": method,
        "model": spec.name,
        "upstream": upstream,
        "status": status,
        "latency_ms": latency,
        "input_text_tokens": tokens["input_text"],
        "input_image_tokens": tokens["input_image"],
        "output_text_tokens": tokens["output_text"],
        "output_image_tokens": tokens["output_image"],
        "thoughts_tokens": tokens["thoughts"],
        "total_tokens": sum(tokens.values()),
        "images": images,
        "cost": cost,
        "error": error and error.partition(": ")[0],
        "error_message": error and (error.partition(": ")[2] or None),
        "created_at": at,
    }


async def seed_usage(
    engine: AsyncEngine,
    rng: random.Random,
    now: datetime,
    keys: list[SeedKey],
    specs: list[tuple[ModelSpec, float]],
    count: int,
) -> None:
    key_weights = [k.weight for k in keys]
    model_specs = [s for s, _ in specs]
    model_weights = [w for _, w in specs]

    def rows() -> Iterator[dict[str, Any]]:
        for serial, age in enumerate(ages(rng, count)):
            key = rng.choices(keys, key_weights)[0]
            spec = rng.choices(model_specs, model_weights)[0]
            yield usage_row(rng, now - timedelta(seconds=age), key, spec, serial)

    async with engine.begin() as conn:
        for batch in chunks(rows()):
            await conn.execute(insert(usage_records), batch)


@dataclass
class TaskPlan:
    rows: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    thumb_tasks: list[str]
    detail_task: str


def task_rows(
    rng: random.Random,
    now: datetime,
    keys: list[SeedKey],
    images: list[str],
    count: int,
) -> TaskPlan:
    """Tasks oldest first, and their callbacks' delivery attempts."""
    key_weights = [k.weight for k in keys]
    moments = [now - timedelta(seconds=age) for age in ages(rng, count)]
    # Succeeded tasks newest first get images 0, 1, 2, ... round robin: the newest ones each
    # have their own first image (cold thumbnails), older ones share them.
    rows: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    succeeded_rank = 0
    thumb_tasks: list[str] = []
    detail_task = ""
    for newest_rank, created in enumerate(reversed(moments)):
        key = rng.choices(keys, key_weights)[0]
        model = weighted(rng, TASK_MODELS)
        task_id = secrets.token_hex(16)
        if newest_rank < 400:  # the live edge: a backlog still queued or running
            state = weighted(
                rng, (("pending", 0.375), ("running", 0.125), ("succeeded", 0.45), ("failed", 0.05))
            )
        else:
            state = "succeeded" if rng.random() < 0.92 else "failed"
        prompt = f"{rng.choice(PROMPT_WORDS)}, variation {rng.randint(1, 10_000)}"
        param: dict[str, Any] = {"model": model, "input": {"prompt": prompt}}
        if model.endswith("-edit"):
            param["input"]["image_urls"] = ["https://images.example.com/source.png"]
        if rng.random() < 0.3:
            param["input"]["aspect_ratio"] = rng.choice(("1:1", "16:9", "3:4"))
        callback_url = (
            f"https://hooks.example.com/nanogate/{key.prefix}" if rng.random() < 0.6 else None
        )
        row: dict[str, Any] = {
            "id": task_id,
            "request_id": f"tsk_{secrets.token_hex(8)}",
            "form": "msg" if rng.random() < 0.8 else "message",
            "key_id": key.id,
            "account_id": key.account_id,
            "model": model,
            "param": orjson.dumps(param).decode(),
            "state": state,
            "hold_id": None,
            "attempts": 0,
            "run_after": created,
            "deadline_at": created + timedelta(seconds=900),
            "lease_owner": None,
            "lease_token": None,
            "lease_until": None,
            "result": None,
            "error_code": None,
            "error_message": None,
            "cost": 0,
            "created_at": created,
            "started_at": None,
            "completed_at": None,
            "callback_url": callback_url,
            "callback_state": "none",
            "callback_attempts": 0,
            "callback_next_at": None,
            "callback_lease_until": None,
        }
        if state != "pending":
            started = created + timedelta(seconds=rng.uniform(0.02, 3.0))
            row.update(attempts=1, started_at=started)
        if state == "running":
            row.update(
                lease_owner="bench-node:8000",
                lease_token=secrets.token_hex(16),
                lease_until=now + timedelta(seconds=30),
            )
        if state in ("succeeded", "failed"):
            completed = row["started_at"] + timedelta(seconds=rng.lognormvariate(math.log(12), 0.4))
            row["completed_at"] = completed
            if state == "succeeded":
                first = succeeded_rank % len(images)
                files = [images[first]]
                if rng.random() < 0.1:  # n=2
                    files.append(images[(first + 1) % len(images)])
                result = {"files": [{"name": n, "type": "image/png"} for n in files], "text": None}
                row.update(result=orjson.dumps(result).decode(), cost=rng.choice((390, 1200, 780)))
                if succeeded_rank < len(images):
                    thumb_tasks.append(task_id)
                succeeded_rank += 1
            else:
                code, message = rng.choice(
                    (
                        (400, "INVALID_ARGUMENT: the prompt was blocked (SAFETY)"),
                        (429, "RESOURCE_EXHAUSTED: upstream quota exceeded"),
                        (504, "DEADLINE_EXCEEDED"),
                        (500, "INTERNAL"),
                    )
                )
                row.update(error_code=code, error_message=message)
            if callback_url:
                attempts = callback_attempts(rng, row, now)
                deliveries += [{"task_id": task_id, **a} for a in attempts]
                if state == "succeeded" and len(attempts) > 2 and not detail_task:
                    detail_task = task_id
        rows.append(row)
    rows.reverse()  # oldest first, as they were created
    return TaskPlan(rows, deliveries, thumb_tasks, detail_task or thumb_tasks[0])


def callback_attempts(
    rng: random.Random, row: dict[str, Any], now: datetime
) -> list[dict[str, Any]]:
    """Delivery attempts of a finished task's callback; sets its callback columns. A pending
    retry is due an hour from now, so the gateway's sender leaves it alone meanwhile."""
    roll = rng.random()
    if roll < 0.9:
        outcome, tries = "delivered", 1 if rng.random() < 0.9 else rng.randint(2, 3)
    elif roll < 0.95:
        outcome, tries = "failed", 8
    else:
        outcome, tries = "pending", rng.randint(1, 3)
    at = row["completed_at"]
    attempts = []
    for attempt in range(1, tries + 1):
        ok = outcome == "delivered" and attempt == tries
        status = 200 if ok else rng.choice((500, 502, None))
        error = None if ok else ("connect timeout" if status is None else f"answered {status}")
        attempts.append(
            {
                "attempt": attempt,
                "status_code": status,
                "error": error,
                "duration_ms": rng.randint(20, 900),
                "created_at": at,
            }
        )
        at = at + timedelta(seconds=2**attempt * 5)
    row.update(
        callback_state=outcome,
        callback_attempts=tries,
        callback_next_at=now + timedelta(hours=1) if outcome == "pending" else None,
    )
    return attempts


def model_weights(catalog_specs: list[ModelSpec]) -> list[tuple[ModelSpec, float]]:
    """Image models carry most traffic; within each kind, earlier catalog entries more."""
    out = []
    ranks = {True: 0, False: 0}
    for spec in catalog_specs:
        rank = ranks[spec.is_image]
        ranks[spec.is_image] += 1
        out.append((spec, (4.0 if spec.is_image else 1.0) / (rank + 1)))
    return out


async def seed(url: str, storage_dir: Path, knobs: Knobs) -> Seeded:
    rng = random.Random(knobs.seed)
    now = datetime.now(UTC)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    images = await store_images(storage_dir, knobs.repeat + 4)
    seconds["render_and_store_images"] = time.perf_counter() - started
    sizes = [(storage_dir / name).stat().st_size for name in images]
    engine = make_engine(url)
    try:
        admin_key, keys, account_names = await seed_keys(engine, rng, now)
        specs = model_weights(list(load_catalog()))
        started = time.perf_counter()
        await seed_usage(engine, rng, now, keys, specs, knobs.usage)
        seconds["insert_usage"] = time.perf_counter() - started
        started = time.perf_counter()
        plan = task_rows(rng, now, keys, images, knobs.tasks)
        async with engine.begin() as conn:
            for batch in chunks(iter(plan.rows)):
                await conn.execute(insert(tasks), batch)
            for batch in chunks(iter(plan.deliveries)):
                await conn.execute(insert(callback_deliveries), batch)
        seconds["insert_tasks"] = time.perf_counter() - started
        if engine.dialect.name == "postgresql":
            started = time.perf_counter()
            # What autovacuum does soon after inserts like these: statistics and the
            # visibility map. SQLite gets no ANALYZE: the app never runs one.
            async with engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text("VACUUM ANALYZE"))
            seconds["vacuum_analyze"] = time.perf_counter() - started
        async with engine.connect() as conn:
            middle_id = await conn.scalar(
                select(usage_records.c.id)
                .order_by(usage_records.c.id)
                .offset(knobs.usage // 2)
                .limit(1)
            )
            middle_task = await conn.scalar(
                select(tasks.c.created_at)
                .order_by(tasks.c.created_at)
                .offset(knobs.tasks // 2)
                .limit(1)
            )
            counts = {
                table.name: int(await conn.scalar(select(func.count()).select_from(table)) or 0)
                for table in (accounts, api_keys, usage_records, tasks, callback_deliveries)
            }
    finally:
        await engine.dispose()
    day_start = (now - timedelta(days=10)).replace(hour=0, minute=0, second=0, microsecond=0)
    by_weight = sorted(keys, key=lambda k: -k.weight)
    account_of = {k.account_id: name for k, name in zip(keys[::2], account_names, strict=True)}
    busiest_accounts = list(dict.fromkeys(account_of[k.account_id] for k in by_weight))
    return Seeded(
        admin_key=admin_key,
        accounts=busiest_accounts,
        keys=[k.prefix for k in by_weight],
        models=[s.name for s, _ in sorted(specs, key=lambda item: -item[1])],
        upstreams=[name for name, _ in UPSTREAMS],
        usage_middle_id=int(middle_id or 1),
        tasks_middle=(middle_task or now).isoformat(),
        thumb_tasks=plan.thumb_tasks,
        detail_task=plan.detail_task,
        day=(day_start.isoformat(), (day_start + timedelta(days=1)).isoformat()),
        images=len(images),
        image_bytes=sum(sizes) // len(sizes),
        counts=counts,
        seconds=seconds,
    )


# --- the database and the gateway ---------------------------------------------------------


def start_gateway(stack: ExitStack, root: Path, url: str, knobs: Knobs) -> str:
    """`nanogate serve` on the seeded database; its base URL once healthy. It creates no
    first keys (there are keys already), so this waits on /healthz alone."""
    config = root / "nanogate.yaml"
    upstreams = [{"name": name, "kind": "demo"} for name, _ in UPSTREAMS]
    config.write_text(yaml.safe_dump({"upstreams": upstreams}))
    port = free_port()
    # No task workers: the seeded pending and running tasks stay as they are.
    env = gateway_env(root, port, config, NANOGATE_TASK_WORKERS="0")
    if knobs.backend == "postgres":
        env["NANOGATE_DATABASE_URL"] = url
    launch = spawn_gateway(stack, root, port, env)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, launch.proc, launch.log, timeout=120)
    return base


# --- the probes ---------------------------------------------------------------------------


class ProbeFailed(Exception):
    """A call not answered 200; the message says which and how."""


@dataclass(frozen=True)
class Probe:
    group: str
    label: str
    path: str
    kind: Literal["get", "csv", "overview", "thumb-cold"] = "get"
    bound: bool = True  # held to BOUND_MS
    repeat: int | None = None  # instead of --repeat
    # Send the admin key in x-api-key besides the cookie. For `key=` filters: the gateway reads
    # a `key` query parameter as the caller's API key (Gemini's query carrier), so with the
    # cookie alone /admin/usage?key=ng_... is refused 401; a header key takes precedence.
    # Poll /healthz while this probe runs: how long the gateway's event loop is held up.
    watch_loop: bool = False


def q(path: str, **params: Any) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def probes(seeded: Seeded) -> list[Probe]:
    since, until = seeded.day
    top_model, rare_model = seeded.models[0], seeded.models[-1]
    out: list[Probe] = []
    for page in ("overview", "keys", "usage", "tasks", "upstreams", "playground"):
        out.append(Probe("page", f"/console/{page}", f"/console/{page}"))
    for name in ("console.js", "console.css"):
        out.append(Probe("static", name, f"/console/static/{name}"))
    for window in ("hour", "day", "month"):
        for by in ("model", "upstream"):
            out.append(Probe("stats", f"{window} by {by}", q("/admin/stats", window=window, by=by)))
    for metric in ("requests", "images", "credits", "error_rate"):
        path = q("/admin/stats/chart", metric=metric, window="month", by="model")
        out.append(Probe("chart", f"{metric}, month by model", path))
    for window, by in (("hour", "model"), ("day", "model"), ("month", "upstream")):
        path = q("/admin/stats/chart", metric="requests", window=window, by=by)
        out.append(Probe("chart", f"requests, {window} by {by}", path))
    for window in ("hour", "day", "month"):
        path = q("/admin/stats", window=window, by="model")
        out.append(Probe("load", f"overview, {window}: stats + 4 charts at once", path, "overview"))
    usage: list[tuple[str, dict[str, Any]]] = [
        ("first page", {}),
        ("page half way back (before=)", {"before": seeded.usage_middle_id}),
        (f"model={top_model}", {"model": top_model}),
        (f"model={rare_model}", {"model": rare_model}),
        ("model=no-such-model (no match)", {"model": "no-such-model"}),
        (f"upstream={seeded.upstreams[-1]}", {"upstream": seeded.upstreams[-1]}),
        (f"account={seeded.accounts[0]}", {"account": seeded.accounts[0]}),
        (f"account={seeded.accounts[-1]}", {"account": seeded.accounts[-1]}),
        ("key=<busiest>", {"key": seeded.keys[0]}),
        ("key=<quietest>", {"key": seeded.keys[-1]}),
        ("dialect=openai", {"dialect": "openai"}),
        ("outcome=error", {"outcome": "error"}),
        ("status=500", {"status": 500}),
        ("one day (since+until)", {"since": since, "until": until}),
        (
            f"model={rare_model}, errors, one day",
            {"model": rare_model, "outcome": "error", "since": since, "until": until},
        ),
    ]
    for label, params in usage:
        path = q("/admin/usage", limit=50, **params)
        out.append(Probe("usage", label, path))
    one_day = {"model": top_model, "since": since, "until": until}
    out.append(Probe("csv", f"model={top_model}, one day", q("/admin/usage.csv", **one_day), "csv"))
    out.append(Probe("csv", "/healthz, idle (baseline)", "/healthz", bound=False))
    out.append(
        Probe(
            "csv",
            "everything",
            "/admin/usage.csv",
            "csv",
            bound=False,
            repeat=FULL_CSV_REPEAT,
            watch_loop=True,
        )
    )
    task_filters: list[tuple[str, dict[str, Any]]] = [
        ("first page", {}),
        ("page half way back (before=)", {"before": seeded.tasks_middle}),
        ("state=succeeded", {"state": "succeeded"}),
        ("state=failed", {"state": "failed"}),
        ("state=pending", {"state": "pending"}),
        ("state=running", {"state": "running"}),
        (f"account={seeded.accounts[0]}", {"account": seeded.accounts[0]}),
        (
            f"account={seeded.accounts[-1]}, failed",
            {"account": seeded.accounts[-1], "state": "failed"},
        ),
    ]
    for label, params in task_filters:
        out.append(Probe("tasks", label, q("/admin/tasks", limit=48, **params)))
    detail = seeded.detail_task
    out.append(Probe("tasks", "one task (dialog)", f"/admin/tasks/{detail}"))
    out.append(Probe("tasks", "its callbacks (dialog)", q("/admin/callbacks", task_id=detail)))
    thumb = f"/admin/tasks/{seeded.thumb_tasks[0]}/thumbnail?index=0"
    out.append(Probe("thumbnail", "first call (made)", thumb, "thumb-cold"))
    out.append(Probe("thumbnail", "cached", thumb))
    for name in ("keys", "accounts", "upstreams", "models", "session"):
        out.append(Probe("admin", f"/admin/{name}", f"/admin/{name}"))
    return out


async def timed_get(session: aiohttp.ClientSession, path: str) -> tuple[float, float, int]:
    """Seconds to the first body byte and to the last, and the body's size."""
    started = time.perf_counter()
    async with session.get(path, allow_redirects=False) as resp:
        first = await resp.content.readany()
        ttfb = time.perf_counter() - started
        size = len(first)
        while chunk := await resp.content.readany():
            size += len(chunk)
        total = time.perf_counter() - started
        if resp.status != 200:
            raise ProbeFailed(f"GET {path}: HTTP {resp.status}: {first[:300]!r}")
    return ttfb, total, size


async def overview_load(session: aiohttp.ClientSession, stats_path: str) -> tuple[float, int]:
    """The overview page's data, as console.js loads it: the stats and four charts at once."""
    started = time.perf_counter()
    paths = [
        stats_path,
        *(
            stats_path.replace("/admin/stats?", f"/admin/stats/chart?metric={metric}&")
            for metric in ("requests", "images", "credits", "error_rate")
        ),
    ]
    sizes = await asyncio.gather(*(timed_get(session, path) for path in paths))
    return time.perf_counter() - started, sum(s for _, _, s in sizes)


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "median_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "max_ms": max(ms) if ms else float("nan"),
    }


def row_for(probe: Probe, what: str, samples: list[float], size: int) -> dict[str, Any]:
    figures = summary(samples)
    verdict = "-"
    if probe.bound:
        verdict = "PASS" if figures["p95_ms"] < BOUND_MS else "FAIL"
    return {
        "group": probe.group,
        "label": probe.label + (f" ({what})" if what else ""),
        "path": probe.path,
        "n": len(samples),
        **figures,
        "bytes": size,
        "verdict": verdict,
    }


async def run_probe(
    session: aiohttp.ClientSession, probe: Probe, repeat: int, seeded: Seeded
) -> list[dict[str, Any]]:
    count = probe.repeat or repeat
    if probe.kind == "thumb-cold":
        # Each call on a task whose first image has no thumbnail yet; the warm-up uses the
        # last such task, the `cached` probe (after this one) the first.
        fresh = seeded.thumb_tasks
        await timed_get(session, f"/admin/tasks/{fresh[-1]}/thumbnail?index=0")
        samples, size = [], 0
        for task_id in fresh[:-1][:count]:
            _, total, size = await timed_get(session, f"/admin/tasks/{task_id}/thumbnail?index=0")
            samples.append(total)
        return [row_for(probe, "", samples, size)]
    if probe.kind == "overview":
        for _ in range(WARMUP_CALLS):
            await overview_load(session, probe.path)
        samples, size = [], 0
        for _ in range(count):
            took, size = await overview_load(session, probe.path)
            samples.append(took)
        return [row_for(probe, "", samples, size)]
    for _ in range(min(WARMUP_CALLS, count)):
        await timed_get(session, probe.path)
    firsts: list[float] = []
    totals: list[float] = []
    size = 0
    stop = asyncio.Event()
    health: list[float] = []
    watcher = asyncio.create_task(watch_health(session, stop, health)) if probe.watch_loop else None
    try:
        for _ in range(count):
            ttfb, total, size = await timed_get(session, probe.path)
            firsts.append(ttfb)
            totals.append(total)
    finally:
        stop.set()
        if watcher is not None:
            await watcher
    rows = [row_for(probe, "", totals, size)]
    if probe.kind == "csv":
        rows = [row_for(probe, "first byte", firsts, size), row_for(probe, "total", totals, size)]
    if watcher is not None:
        watched = Probe(probe.group, f"/healthz while: {probe.label}", "/healthz", bound=False)
        rows.append(row_for(watched, "", health, 0))
    return rows


async def watch_health(
    session: aiohttp.ClientSession, stop: asyncio.Event, out: list[float]
) -> None:
    """/healthz every HEALTH_EVERY_S until `stop`: its latency is the gateway's event-loop
    delay (plus this client's, which reads the other response at the same time)."""
    while not stop.is_set():
        _, total, _ = await timed_get(session, "/healthz")
        out.append(total)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEALTH_EVERY_S)


async def login(base: str, admin_key: str) -> str:
    """The console's session cookie, from POST /admin/session."""
    async with (
        aiohttp.ClientSession(base) as session,
        session.post("/admin/session", json={"key": admin_key}) as resp,
    ):
        body = await resp.text()
        if resp.status != 200 or COOKIE not in resp.cookies:
            raise ProbeFailed(f"login: HTTP {resp.status}: {body[:300]}")
        return resp.cookies[COOKIE].value


async def measure(base: str, seeded: Seeded, knobs: Knobs) -> list[dict[str, Any]]:
    cookie = await login(base, seeded.admin_key)
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(
        base,
        # Set by hand: aiohttp's cookie jar keeps no cookies for a bare IP address.
        headers={"cookie": f"{COOKIE}={cookie}"},
        connector=aiohttp.TCPConnector(limit=8),
        timeout=aiohttp.ClientTimeout(total=300),
    ) as session:
        for probe in probes(seeded):
            found = await run_probe(session, probe, knobs.repeat, seeded)
            for row in found:
                print(
                    f"  {row['group']:<9} {row['label'][:60]:<60} p50 {row['median_ms']:8.1f}  "
                    f"p95 {row['p95_ms']:8.1f} ms",
                    flush=True,
                )
            rows += found
    return rows


# --- --explain: the report queries themselves ---------------------------------------------


async def explain(url: str, seeded: Seeded) -> list[dict[str, Any]]:
    """The SQL nanogate.reports runs for the heavy probes, captured from the real functions,
    with their in-process time (median of 5) and their plans."""
    engine = make_engine(url)
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        captured.append((statement, parameters))

    since, until = (datetime.fromisoformat(moment) for moment in seeded.day)
    top_model, rare_model = seeded.models[0], seeded.models[-1]
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("series month by model", lambda: reports.series(engine, "month", "model")),
        ("series day by model", lambda: reports.series(engine, "day", "model")),
        ("series hour by upstream", lambda: reports.series(engine, "hour", "upstream")),
        ("usage first page", lambda: reports.usage_page(engine, reports.UsageFilter(), limit=50)),
        (
            "usage model=no-such-model",
            lambda: reports.usage_page(engine, reports.UsageFilter(model="x"), limit=50),
        ),
        (
            "usage key=<quietest>",
            lambda: reports.usage_page(
                engine, reports.UsageFilter(key_prefix=seeded.keys[-1]), limit=50
            ),
        ),
        (
            f"usage model={rare_model}, errors, one day",
            lambda: reports.usage_page(
                engine,
                reports.UsageFilter(model=rare_model, outcome="error", since=since, until=until),
                limit=50,
            ),
        ),
        (
            f"usage csv chunk model={top_model}, one day",
            lambda: reports.usage_page(
                engine, reports.UsageFilter(model=top_model, since=since, until=until), limit=2000
            ),
        ),
        ("tasks first page", lambda: reports.recent_tasks(engine, limit=48)),
        ("tasks state=failed", lambda: reports.recent_tasks(engine, limit=48, state="failed")),
    ]
    out: list[dict[str, Any]] = []
    try:
        for label, call in calls:
            await call()  # warm the pool and the page cache
            timings = []
            for _ in range(5):
                started = time.perf_counter()
                await call()
                timings.append(time.perf_counter() - started)
            event.listen(engine.sync_engine, "before_cursor_execute", capture)
            captured.clear()
            await call()
            event.remove(engine.sync_engine, "before_cursor_execute", capture)
            statement, parameters = captured[-1]
            prefix = (
                "EXPLAIN QUERY PLAN "
                if engine.dialect.name == "sqlite"
                else "EXPLAIN (ANALYZE, BUFFERS) "
            )
            async with engine.connect() as conn:
                result = await conn.exec_driver_sql(prefix + statement, parameters)
                plan = [str(row[-1]) for row in result]
            out.append(
                {
                    "query": label,
                    "in_process_ms": percentile([t * 1000 for t in timings], 50),
                    "sql": " ".join(statement.split()),
                    "plan": plan,
                }
            )
    finally:
        await engine.dispose()
    return out


def print_plans(plans: list[dict[str, Any]]) -> None:
    console.print("\n[bold]Report queries in-process (no HTTP), with their plans[/bold]")
    for entry in plans:
        console.print(f"\n{entry['query']}: {entry['in_process_ms']:.1f} ms")
        for line in entry["plan"]:
            console.print(f"    {line}", markup=False)


# --- output and entry point ---------------------------------------------------------------


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=title, title_justify="left", header_style="bold")
    for name, justify in (
        ("group", "left"),
        ("call", "left"),
        ("n", "right"),
        ("median ms", "right"),
        ("p95 ms", "right"),
        ("max ms", "right"),
        ("KiB", "right"),
        (f"< {BOUND_MS:g} ms", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        verdict = row["verdict"]
        style = {"PASS": "green", "FAIL": "bold red"}.get(verdict, "")
        table.add_row(
            row["group"],
            escape(row["label"]),
            str(row["n"]),
            f"{row['median_ms']:.1f}",
            f"{row['p95_ms']:.1f}",
            f"{row['max_ms']:.1f}",
            f"{row['bytes'] / 1024:,.1f}",
            f"[{style}]{verdict}[/{style}]" if style else verdict,
        )
    console.print()
    console.print(table)


def parse_args(argv: list[str] | None) -> Knobs:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--usage", type=int, default=100_000, help="usage records to seed")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks to seed")
    parser.add_argument("--repeat", type=int, default=20, help="calls per probe, measured")
    parser.add_argument(
        "--keep", action="store_true", help="keep the data dir (and the PostgreSQL database)"
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also time the report queries in-process and print their plans",
    )
    parser.add_argument(
        "--database-url",
        default=DEFAULT_PG_SERVER,
        help=f"the PostgreSQL server for --backend postgres (a database {PG_DATABASE} is "
        "created there and dropped afterwards)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the data")
    args = parser.parse_args(argv)
    if args.usage < 100 or args.tasks < 1000 or args.repeat < 1:
        parser.error("--usage at least 100, --tasks at least 1000, --repeat at least 1")
    if args.backend == "postgres" and not args.database_url.startswith("postgresql"):
        parser.error("--database-url must be a postgresql+asyncpg:// URL")
    return Knobs(
        backend=args.backend,
        usage=args.usage,
        tasks=args.tasks,
        repeat=args.repeat,
        keep=args.keep,
        explain=args.explain,
        database_url=args.database_url,
        seed=args.seed,
    )


def run(runner: asyncio.Runner, root: Path, knobs: Knobs) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    with ExitStack() as stack:
        if knobs.backend == "postgres":
            url = postgres_database(stack, knobs.database_url, PG_DATABASE, knobs.keep)
        else:
            url = f"sqlite+aiosqlite:///{(root / 'data' / 'nanogate.db').resolve()}"
        # The app's own migrations first, so the seeded schema is exactly what it runs on.
        run_migrations(url)
        print(f"seeding {knobs.usage:,} usage records and {knobs.tasks:,} tasks", flush=True)
        started = time.perf_counter()
        seeded = runner.run(seed(url, root / "data" / "storage", knobs))
        seeded.seconds["total"] = time.perf_counter() - started
        print(f"  seeded in {seeded.seconds['total']:.1f} s: {seeded.counts}", flush=True)
        base = start_gateway(stack, root, url, knobs)
        print(f"gateway at {base}; {len(probes(seeded))} probes x {knobs.repeat}", flush=True)
        # The box may be shared: the load average says how much the figures were disturbed.
        load_before = os.getloadavg()
        doc["results"] = runner.run(measure(base, seeded, knobs))
        doc["load_average"] = {"before": load_before, "after": os.getloadavg()}
        if knobs.explain:
            doc["plans"] = runner.run(explain(url, seeded))
        doc["seeding"] = {
            "counts": seeded.counts,
            "seconds": seeded.seconds,
            "distinct_images": seeded.images,
            "mean_image_bytes": seeded.image_bytes,
        }
        if knobs.keep:
            where = make_url(url).render_as_string()
            print(f"\nkept: data dir {root / 'data'}, database {where}")
    return doc


def main(argv: list[str] | None = None) -> int:
    knobs = parse_args(argv)
    factory, loop_name = loop_factory()
    env = machine(
        loop_name,
        knobs={**asdict(knobs), "database_url": make_url(knobs.database_url).render_as_string()},
    )
    print(f"nanogate console benchmark on {knobs.backend}")
    with ExitStack() as stack:
        stack.enter_context(interrupt_on_signals())
        if knobs.keep:
            root = Path(tempfile.mkdtemp(prefix="nanogate-bench-console-"))
        else:
            root = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="nanogate-bench-console-"))
            )
        runner = stack.enter_context(asyncio.Runner(loop_factory=factory))
        doc = run(runner, root, knobs)
    rows = doc["results"]
    seeding = doc["seeding"]
    load = doc["load_average"]
    console.print(
        f"\nenvironment: {env['cpu_count']} CPUs, Python {env['python']}, client loop "
        f"{env['client_loop']}; gateway and client share the CPUs; load average (1 min) "
        f"{load['before'][0]:.2f} before the probes, {load['after'][0]:.2f} after."
    )
    console.print(
        f"data: {seeding['counts']}; {seeding['distinct_images']} distinct PNGs of "
        f"{seeding['mean_image_bytes'] / 1e6:.2f} MB; seeded in {seeding['seconds']['total']:.1f} s"
    )
    print_table(
        f"Console on {knobs.backend}: {knobs.usage:,} usage records, {knobs.tasks:,} tasks; "
        f"{knobs.repeat} sequential calls per row (PASS: p95 < {BOUND_MS:g} ms)",
        rows,
    )
    if "plans" in doc:
        print_plans(doc["plans"])
    failed = [row for row in rows if row["verdict"] == "FAIL"]
    if failed:
        console.print(f"\n{len(failed)} rows over {BOUND_MS:g} ms at p95", style="red")
    write_json(RESULTS / f"console-{knobs.backend}.json", {"environment": env, **doc})
    return 1 if failed else 0


if __name__ == "__main__":
    run_script(main, "the gateway stopped")
