"""Prometheus metrics. Labels stay low-cardinality: dialect, model, status class, upstream."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from .types import Usage

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


def render() -> bytes:
    return generate_latest(REGISTRY)
