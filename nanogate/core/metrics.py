"""Prometheus metrics. Labels stay low-cardinality: dialect, model, status class, upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from nanogate.core.types import Usage

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "nanogate_requests_total",
    "Requests answered, by dialect, model and HTTP status.",
    ["dialect", "model", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "nanogate_request_seconds",
    "Time from request start to the last byte handed to the client.",
    ["dialect"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
TOKENS = Counter(
    "nanogate_tokens_total",
    "Tokens reported by upstreams, by model and modality.",
    ["model", "modality"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "nanogate_upstream_errors_total",
    "Failed upstream calls, by upstream and its HTTP status (or 'transport').",
    ["upstream", "status"],
    registry=REGISTRY,
)
IMAGES = Counter(
    "nanogate_images_total", "Images returned, by model.", ["model"], registry=REGISTRY
)
WRITTEN_OFF = Counter(
    "nanogate_credits_written_off_total",
    "Credits of overruns an account's balance could not pay (the fair hold policy).",
    registry=REGISTRY,
)
STORAGE_ERRORS = Counter(
    "nanogate_storage_errors_total",
    "Result storage operations that failed (a full or broken disk, S3 unreachable or "
    "refusing), by operation.",
    ["operation"],
    registry=REGISTRY,
)

REDIS_ERRORS = Counter(
    "nanogate_redis_errors_total",
    "Redis calls that failed or timed out, by what they were for (limits, auth, lease renewal).",
    ["operation"],
    registry=REGISTRY,
)
RESOLUTIONS_PENDING = Gauge(
    "nanogate_hold_resolutions_pending",
    "Holds whose settle or refund the database did not take, queued to be refunded once it "
    "answers again.",
    registry=REGISTRY,
)


def observe_writeoff(credits: int) -> None:
    WRITTEN_OFF.inc(credits)


def observe_resolutions_pending(count: int) -> None:
    RESOLUTIONS_PENDING.set(count)


def observe_storage_error(operation: str) -> None:
    STORAGE_ERRORS.labels(operation).inc()


def observe_redis_error(operation: str) -> None:
    REDIS_ERRORS.labels(operation).inc()


_request_counters: dict[tuple[str, str, int], Counter] = {}
_latencies: dict[str, Histogram] = {}


def observe_request(dialect: str, model: str, status: int, seconds: float, usage: Usage) -> None:
    # labels() hashes and locks on every call; the children are looked up once and kept.
    counter = _request_counters.get((dialect, model, status))
    if counter is None:
        counter = _request_counters[dialect, model, status] = REQUESTS.labels(
            dialect, model, str(status)
        )
    counter.inc()
    latency = _latencies.get(dialect)
    if latency is None:
        latency = _latencies[dialect] = LATENCY.labels(dialect)
    latency.observe(seconds)
    for modality in ("input_text", "input_image", "output_text", "output_image", "thoughts"):
        count = getattr(usage, modality)
        if count:
            TOKENS.labels(model, modality).inc(count)
    if usage.images:
        IMAGES.labels(model).inc(usage.images)


# Upper bounds (seconds) of nanogate_upstream_latency_seconds: text calls to image renders.
UPSTREAM_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


@dataclass(frozen=True, slots=True)
class UpstreamSample:
    """One upstream's figures at scrape time (the router keeps them; see routing.Stats)."""

    name: str
    breaker_open: bool
    in_flight: int
    waiting: int
    error_rate: float
    skip_seconds: float
    p50_seconds: float | None
    p99_seconds: float | None
    # Successful attempts per bucket of UPSTREAM_LATENCY_BUCKETS, then the +Inf bucket (not
    # cumulative), their sum and count, since the process started.
    bucket_counts: Sequence[int]
    latency_sum: float


class _Upstreams(Collector):
    """Per-upstream gauges and latency histogram, read from the router only when scraped.

    The hot path only bumps plain integers on the router's side: no metric child, no lock."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[UpstreamSample]] | None = None

    def describe(self) -> Iterable[Metric]:
        return self._families([])

    def collect(self) -> Iterable[Metric]:
        source = self.source
        return self._families(list(source()) if source is not None else [])

    @staticmethod
    def _families(samples: list[UpstreamSample]) -> list[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["upstream"])

        in_flight = gauge("nanogate_upstream_in_flight", "Calls in flight to each upstream.")
        waiting = gauge(
            "nanogate_upstream_waiting", "Calls waiting for a slot of a capped upstream."
        )
        breaker = gauge(
            "nanogate_upstream_breaker_open",
            "1 while the upstream's breaker is open (cooling down or awaiting its probe).",
        )
        errors = gauge(
            "nanogate_upstream_error_rate",
            "Share of the upstream's recent attempts (last 500) that failed retryably.",
        )
        skip = gauge(
            "nanogate_upstream_retry_after_seconds",
            "Seconds the upstream is still skipped for, after it answered with Retry-After.",
        )
        quantiles = GaugeMetricFamily(
            "nanogate_upstream_recent_latency_seconds",
            "p50 and p99 of the upstream's recent successful attempts (last 500).",
            labels=["upstream", "quantile"],
        )
        latency = HistogramMetricFamily(
            "nanogate_upstream_latency_seconds",
            "Time of successful upstream attempts (streams: to the first chunk).",
            labels=["upstream"],
        )
        for s in samples:
            in_flight.add_metric([s.name], s.in_flight)
            waiting.add_metric([s.name], s.waiting)
            breaker.add_metric([s.name], 1 if s.breaker_open else 0)
            errors.add_metric([s.name], s.error_rate)
            skip.add_metric([s.name], s.skip_seconds)
            if s.p50_seconds is not None and s.p99_seconds is not None:
                quantiles.add_metric([s.name, "0.5"], s.p50_seconds)
                quantiles.add_metric([s.name, "0.99"], s.p99_seconds)
            cumulative, buckets = 0, []
            for bound, count in zip(
                (*(str(float(b)) for b in UPSTREAM_LATENCY_BUCKETS), "+Inf"),
                s.bucket_counts,
                strict=True,
            ):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            latency.add_metric([s.name], buckets, s.latency_sum)
        return [in_flight, waiting, breaker, errors, skip, quantiles, latency]


_UPSTREAMS = _Upstreams()
REGISTRY.register(_UPSTREAMS)


def publish_upstreams(source: Callable[[], Iterable[UpstreamSample]]) -> None:
    """Make `source` (the process's router) what /metrics reports upstreams from."""
    _UPSTREAMS.source = source


def withdraw_upstreams(source: Callable[[], Iterable[UpstreamSample]]) -> None:
    if _UPSTREAMS.source == source:
        _UPSTREAMS.source = None


class _Redis(Collector):
    """nanogate_redis_up, read from the process's Redis link when scraped; absent without
    redis_url, so a single node shows no Redis to alert on."""

    def __init__(self) -> None:
        self.source: Callable[[], bool] | None = None

    def collect(self) -> Iterable[Metric]:
        source = self.source
        if source is None:
            return []
        up = GaugeMetricFamily(
            "nanogate_redis_up",
            "1 while Redis answers; 0 while each node counts limits on its own.",
        )
        up.add_metric([], 1 if source() else 0)
        return [up]


_REDIS = _Redis()
REGISTRY.register(_REDIS)


def publish_redis(source: Callable[[], bool] | None) -> None:
    """Make `source` (whether the process's Redis answers) what nanogate_redis_up reports; None
    withdraws it."""
    _REDIS.source = source


def render() -> bytes:
    return generate_latest(REGISTRY)
