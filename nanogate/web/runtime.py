"""Everything a gateway process runs, built once from the settings and torn down in order.

`nanogate serve` wraps it in the HTTP app; `nanogate worker` runs it alone (task workers,
callback delivery and the sweepers, no HTTP). No request logic here: only wiring.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.access.cluster import Bus, Cooldowns
from nanogate.access.limits import Limiter, RedisLimiter
from nanogate.access.redisconn import RedisLink
from nanogate.access.shared import LimitsLink, SharedLimiter, SharedThrottle
from nanogate.access.switches import SwitchBoard, Switches
from nanogate.access.throttle import AuthThrottle, RedisAuthThrottle
from nanogate.billing.accounts import AccountStore
from nanogate.billing.keys import KeyStore
from nanogate.billing.ledger import Tx
from nanogate.billing.meter import Meter
from nanogate.billing.runners import Journal, open_runner
from nanogate.core import lifecycle
from nanogate.core.catalog import Catalog
from nanogate.core.config import Settings
from nanogate.core.pace import StreamLimits
from nanogate.core.task_records import TaskRecord
from nanogate.db.engine import make_engine, ping
from nanogate.engine import replay
from nanogate.engine.gateway import Gateway
from nanogate.engine.replay import ResultKeeper
from nanogate.engine.usage import UsageRecorder
from nanogate.routing import Router
from nanogate.storage import Storage, UrlSigner, open_storage
from nanogate.tasks.callbacks import CallbackSender
from nanogate.tasks.service import TaskService
from nanogate.tasks.worker import Worker
from nanogate.transport.egress import EgressGuard, GuardedHttp
from nanogate.transport.fetch import ImageFetcher, Limits
from nanogate.upstreams import Services, build_upstream
from nanogate.upstreams.gemini import GeminiUpstream
from nanogate.upstreams.modelcheck import ModelWatch
from nanogate.web.reload import Reloader

log = logging.getLogger("nanogate")

SWEEP_EVERY_S = 60.0
CALLBACK_SECRET = "callback_secret"  # the generated one's row in the secrets table

# What /readyz reports reachable, each probe raising when it is not ("redis" only with
# `redis_url`).
Probe = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class Runtime:
    settings: Settings
    engine: AsyncEngine
    journal: Journal
    gateway: Gateway
    keys: KeyStore  # the gateway's, which only reads keys, able to issue them too
    accounts: AccountStore
    storage: Storage
    signer: UrlSigner
    callback_secret: bytes
    tasks: TaskService
    results: ResultKeeper
    images: ImageFetcher
    worker: Worker | None
    callbacks: CallbackSender
    switches: SwitchBoard
    reloader: Reloader
    probes: dict[str, Probe]


@asynccontextmanager
async def running(
    settings: Settings,
    catalog: Catalog,
    *,
    workers: int,
    owner: str | None = None,
    shared_limits: str | None = None,
) -> AsyncIterator[Runtime]:
    """Start the process's parts; `workers` tasks run at once here (0: none). `shared_limits`:
    the socket of the supervisor that counts limits for every worker process of one `serve
    --workers N` (access/shared.py)."""
    engine = make_engine(settings.resolved_database_url)
    recorder = UsageRecorder(engine, flush_seconds=settings.usage_flush_seconds)
    journal = Journal(open_runner(settings.resolved_database_url, engine))
    journal.start()
    file_key = await _secret(journal, "url_signing_key", None)
    callback_secret = await _secret(journal, CALLBACK_SECRET, configured_callback_secret(settings))
    signer = UrlSigner(file_key)
    storage = open_storage(settings, signer)
    await storage.start()
    guard = EgressGuard(settings.egress_allowlist)
    http = GuardedHttp(guard)
    services = Services(storage, http, settings.image_url_max_bytes)
    router = Router(
        [(cfg, build_upstream(cfg, services)) for cfg in settings.upstreams],
        max_attempts=settings.max_attempts,
        deadline_s=settings.request_deadline_seconds,
    )
    meter = Meter(
        journal,
        enabled=settings.metering,
        node=settings.resolved_node_id,
        hold_ttl_s=settings.reservation_ttl_seconds,
        policy=settings.hold_policy,
        uncovered_calls=settings.uncovered_calls_per_account,
        wait_s=settings.hold_wait_seconds,
    )
    # Which models the gemini upstreams list, checked when first asked and kept a day (/readyz,
    # the console, allow_unlisted_models).
    watch = ModelWatch(
        catalog,
        [(t.config, t.adapter) for t in router.targets if isinstance(t.adapter, GeminiUpstream)],
        lifecycle.today,
    )
    keys = KeyStore(engine, cache_seconds=settings.key_cache_seconds)
    board = SwitchBoard(
        engine, Switches(settings.maintenance, frozenset(settings.disabled_features))
    )
    # Cluster mode: limits every node shares. The single node counts them in memory, in its
    # supervisor's when it runs several worker processes.
    redis = RedisLink.open(settings) if settings.redis_url else None
    link = LimitsLink(shared_limits) if shared_limits and not redis else None
    limiter: Limiter
    throttle: AuthThrottle
    if redis:
        limiter = RedisLimiter(
            redis, node=settings.resolved_node_id, lease_s=settings.concurrency_lease_seconds
        )
        throttle = RedisAuthThrottle(settings.auth_failures_per_minute, redis)
    elif link:
        await link.start()
        limiter = SharedLimiter(link)
        throttle = SharedThrottle(settings.auth_failures_per_minute, link)
    else:
        limiter = Limiter()
        throttle = AuthThrottle(settings.auth_failures_per_minute)
    # Cluster mode: key changes and failing upstreams reach every node at once.
    bus = Bus(redis, settings.resolved_node_id) if redis else None
    if bus is not None:
        keys.listen(bus)
        router.share(Cooldowns(bus))
    gateway = Gateway(
        catalog,
        keys,
        router,
        recorder,
        limiter,
        meter,
        charge_blocked_prompts=settings.charge_blocked_prompts,
        switches=board.current,
        watch=watch,
        allow_unlisted=settings.allow_unlisted_models,
        unlisted_prices=settings.unlisted_model_prices,
        stream_limits=StreamLimits(
            settings.stream_deadline_seconds,
            settings.stream_min_bytes_per_second,
            settings.stream_rate_grace_seconds,
        ),
        throttle=throttle,
    )
    # Config reloads: SIGHUP here, or asked of every node through the switches row.
    reloader = Reloader(settings, gateway, services, watch)
    board.on_reload(reloader.reload_soon)
    fetcher = ImageFetcher(
        http,
        Limits(
            settings.image_url_max_bytes,
            settings.image_url_timeout_seconds,
            settings.image_max_pixels,
        ),
    )
    result_ttl_s = settings.result_ttl_hours * 3600
    worker: Worker | None = None
    tasks = TaskService(
        journal,
        gateway,
        storage,
        http,
        task_timeout_s=settings.task_timeout_seconds,
        result_ttl_s=result_ttl_s,
        switches=board.current,
        wake=lambda: worker.wake() if worker else None,
    )
    callbacks = CallbackSender(
        journal,
        http,
        callback_secret,
        tasks.answer,
        timeout_s=settings.callback_timeout_seconds,
        retry_s=settings.callback_retry_seconds,
    )

    def finished(record: TaskRecord) -> None:
        if record.callback_url:
            callbacks.wake()

    if workers > 0:
        worker = Worker(
            journal,
            gateway,
            storage,
            fetcher,
            owner=owner or settings.resolved_node_id,
            concurrency=workers,
            lease_s=settings.task_lease_seconds,
            max_attempts=settings.task_max_attempts,
            finished=finished,
        )
    await board.start()
    await recorder.start()
    if isinstance(limiter, RedisLimiter):
        limiter.start()
    if bus is not None:
        bus.start()
    # Reservations a crash left open are closed before the first request is taken.
    await meter.recover(starting=True)
    if worker is not None:
        await worker.start()
    callbacks.start_loop()
    router.start()  # the health prober, and upstream figures in /metrics
    hangup = _on_hangup(reloader.reload_soon)
    sweeper = asyncio.create_task(_sweep(meter, journal, storage, result_ttl_s), name="sweeper")
    results = ResultKeeper(
        journal,
        storage,
        ttl_s=result_ttl_s,
        node=settings.resolved_node_id,
        lease_s=settings.idempotency_lease_seconds,
    )
    results.start()
    try:
        yield Runtime(
            settings=settings,
            engine=engine,
            journal=journal,
            gateway=gateway,
            keys=keys,
            accounts=AccountStore(engine, journal.runner),
            storage=storage,
            signer=signer,
            callback_secret=callback_secret,
            tasks=tasks,
            results=results,
            images=fetcher,
            worker=worker,
            callbacks=callbacks,
            switches=board,
            reloader=reloader,
            probes=_probes(engine, storage, redis),
        )
    finally:
        sweeper.cancel()
        await results.stop()
        if hangup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await board.stop()
        await reloader.close()
        if bus is not None:
            await bus.stop()
        if isinstance(limiter, RedisLimiter):
            await limiter.stop()
        await watch.stop()
        await router.stop()
        if worker is not None:
            await worker.stop()
        await callbacks.stop_loop()
        await meter.stop()
        await journal.stop()
        await journal.runner.close()
        await recorder.stop()
        await router.close()
        await http.close()
        await storage.close()
        if redis is not None:
            await redis.close()
        if link is not None:
            await link.close()
        await engine.dispose()


def _on_hangup(reload: Callable[[], None]) -> bool:
    """SIGHUP reloads the config, as daemons do; False where no handler can be set (not the
    main thread, or no such signal)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError):
        return False
    return True


def _probes(engine: AsyncEngine, storage: Storage, redis: RedisLink | None) -> dict[str, Probe]:
    probes: dict[str, Probe] = {
        "database": functools.partial(ping, engine),
        "storage": storage.check,
    }
    if redis is not None:

        async def redis_ping() -> None:
            # Through the link: while it knows Redis is down, "down" at once, without I/O.
            await redis.run("readyz", lambda client: client.ping())

        probes["redis"] = redis_ping
    return probes


def worker_id(settings: Settings) -> str:
    """A `nanogate worker` process's lease owner: unique per process on a host."""
    return settings.node_id or f"{socket.gethostname()}:worker:{os.getpid()}"


def configured_callback_secret(settings: Settings) -> str | None:
    """The operator's `callback_secret`, or None when the generated one signs (an empty value
    counts as none)."""
    value = settings.callback_secret.get_secret_value() if settings.callback_secret else ""
    return value or None


async def _secret(journal: Journal, name: str, configured: str | None) -> bytes:
    """The operator's value, or the one generated on first start and shared through the
    database by every node. Either way the key is the string's UTF-8 bytes (never decoded)."""
    if configured:
        return configured.encode()
    return (await journal.submit(functools.partial(stored_secret, name=name))).encode()


async def stored_secret(tx: Tx, name: str) -> str:
    """The secret `name` from the database; the first process to ask generates it (64 hex
    characters)."""
    await tx.exec(
        "INSERT INTO secrets (name, value, created_at) VALUES (:name, :value, :now) "
        "ON CONFLICT (name) DO NOTHING",
        {"name": name, "value": secrets.token_hex(32), "now": datetime.now(UTC)},
    )
    row = await tx.one("SELECT value FROM secrets WHERE name = :name", {"name": name})
    assert row is not None
    return str(row[0])


async def _sweep(meter: Meter, journal: Journal, storage: Storage, result_ttl_s: float) -> None:
    """Close expired reservations (those of a node that died and never came back), and remove
    results past their retention."""
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        try:
            await meter.recover(starting=False)
            now = datetime.now(UTC)
            await journal.submit(functools.partial(replay.sweep, now=now))
            removed = await storage.sweep(now - timedelta(seconds=result_ttl_s))
            if removed:
                log.info("retention sweep", extra={"removed": removed})
        except Exception as exc:
            log.warning("sweep failed (%s)", type(exc).__name__)
