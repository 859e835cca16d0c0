"""State shared across nodes (redis_url): two `nanogate serve` processes on one PostgreSQL
database and one Redis, relaying to two simulators ("flaky" first, "spare" second).

A revocation on one node (admin API or CLI) is refused on the other within a second although
keys are cached for a minute; an upstream failing on one node is skipped by the other without
a request spent to learn it, and its upstreams page says so; with Redis gone each node keeps
its own breakers and nothing answers 500.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import postgres
from tests.redis_server import SERVER_URL, RedisServer, drop_prefix, fresh_prefix
from tests.simulator.processes import stop

from .conftest import (
    Gateway,
    Simulator,
    join_gateway,
    simulator_upstream,
    start_gateway,
    start_simulator,
    within,
)
from .test_credits import new_key

TEXT_MODEL = "gemini-2.5-flash"
HTTP = httpx.Client(timeout=60)


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Simulator]]:
    """This module's own: it counts the requests each upstream got."""
    started = {"flaky": start_simulator(), "spare": start_simulator()}
    yield started
    for sim in started.values():
        stop(sim.proc)


def start_pair(tmp: Path, sims: dict[str, Simulator], redis_url: str, prefix: str) -> list[Gateway]:
    name = f"nanogate_cluster_{int(time.time() * 1000)}"
    url = postgres.create_database(name)
    (tmp / "node1").mkdir()
    (tmp / "node2").mkdir()
    upstreams = [
        # Two retryable failures in a row open the breaker, for longer than any test here.
        simulator_upstream(
            sims["flaky"], name="flaky", timeout_s=10, breaker_failures=2, breaker_cooldown_s=120
        ),
        simulator_upstream(sims["spare"], name="spare", timeout_s=10, priority=1),
    ]
    first = start_gateway(
        tmp / "node1",
        {"upstreams": upstreams},
        NANOGATE_DATABASE_URL=url,
        NANOGATE_REDIS_URL=redis_url,
        NANOGATE_REDIS_KEY_PREFIX=prefix,
        # Without the invalidation a revoked key would be honoured for up to a minute.
        NANOGATE_KEY_CACHE_SECONDS="60",
    )
    first.extra["database"] = name
    try:
        second = join_gateway(first, tmp / "node2")
    except BaseException:
        stop(first.proc)
        postgres.drop_database(name)
        raise
    return [first, second]


def stop_pair(pair: list[Gateway]) -> None:
    for node in pair:
        stop(node.proc)
    postgres.drop_database(pair[0].extra["database"])


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, sims: dict[str, Simulator]
) -> Iterator[list[Gateway]]:
    prefix = fresh_prefix()
    nodes = start_pair(tmp_path_factory.mktemp("cluster"), sims, SERVER_URL, prefix)
    yield nodes
    stop_pair(nodes)
    drop_prefix(prefix)


def key_prefix(key: str) -> str:
    return "_".join(key.split("_")[:2])


def balance_status(node: Gateway, key: str) -> int:
    """An authenticated call that costs no upstream request: 200 while the key is honoured."""
    return HTTP.get(
        f"{node.url}/api/v1/client/account/balance", headers={"x-api-key": key}
    ).status_code


def refuses(node: Gateway, key: str) -> bool:
    status = balance_status(node, key)
    assert status in (200, 401, 403), status
    return status != 200


def call(node: Gateway) -> httpx.Response:
    return HTTP.post(
        f"{node.url}/v1beta/models/{TEXT_MODEL}:generateContent",
        headers={"x-goog-api-key": node.client_key},
        json={"contents": [{"parts": [{"text": "a kite over the sea"}]}]},
    )


def upstream_row(node: Gateway, name: str) -> dict[str, Any]:
    rows = HTTP.get(f"{node.url}/admin/upstreams", headers={"x-api-key": node.admin_key}).json()
    row: dict[str, Any] = next(r for r in rows if r["name"] == name)
    return row


def breaker_gauge(node: Gateway, name: str) -> float:
    text = HTTP.get(f"{node.url}/metrics").text
    found = re.search(rf'^nanogate_upstream_breaker_open\{{upstream="{name}"\}} (\S+)$', text, re.M)
    assert found is not None, text
    return float(found[1])


def requests_to(sim: Simulator) -> int:
    return sum(1 for r in sim.requests() if ":generateContent" in r.get("path", ""))


def test_a_key_revoked_through_the_admin_api_is_refused_on_the_other_node_within_a_second(
    pair: list[Gateway],
) -> None:
    first, second = pair
    key = new_key(first, 1000)
    assert balance_status(second, key) == 200  # the second node now caches it for a minute
    revoked = HTTP.post(
        f"{first.url}/admin/keys/{key_prefix(key)}/revoke", headers={"x-api-key": first.admin_key}
    )
    assert revoked.status_code == 200, revoked.text
    took = within(1.0, lambda: refuses(second, key))
    print(f"admin revocation refused on the other node after {took * 1000:.0f} ms")
    assert took < 1.0


def test_a_key_revoked_with_the_cli_is_refused_on_every_node_within_a_second(
    pair: list[Gateway],
) -> None:
    key = new_key(pair[0], 1000)
    assert all(balance_status(node, key) == 200 for node in pair)
    done = pair[1].cli("keys", "revoke", key_prefix(key))
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    took = within(1.0, lambda: all(refuses(node, key) for node in pair))
    print(f"CLI revocation refused on both nodes after {took * 1000:.0f} ms")
    assert took < 1.0


def test_an_upstream_failing_on_one_node_is_skipped_by_the_other_without_a_request(
    pair: list[Gateway], sims: dict[str, Simulator]
) -> None:
    first, second = pair
    for sim in sims.values():
        sim.clear()
    sims["flaky"].faults({"status": 500}, {"status": 500})
    # Each call fails on "flaky" and is answered by "spare"; the second opens the first node's
    # breaker.
    for _ in range(2):
        assert call(first).status_code == 200
    assert requests_to(sims["flaky"]) == 2
    assert upstream_row(first, "flaky")["breaker"] == "open"
    took = within(1.0, lambda: upstream_row(second, "flaky")["breaker"] == "open")
    print(f"the other node showed the breaker open after {took * 1000:.0f} ms")
    row = upstream_row(second, "flaky")
    # Named by its node id (the default: host and port).
    assert row["reported_by"] == f"{socket.gethostname()}:{first.env['NANOGATE_PORT']}"
    assert row["failures_in_a_row"] >= 2
    assert breaker_gauge(second, "flaky") == 1.0
    spare_before = requests_to(sims["spare"])
    for _ in range(5):
        assert call(second).status_code == 200
    # Not one of them went to "flaky" (which would have answered: its faults are used up).
    assert requests_to(sims["flaky"]) == 2
    assert requests_to(sims["spare"]) == spare_before + 5


@pytest.fixture
def lone_pair(
    tmp_path: Path, sims: dict[str, Simulator], redis_server: RedisServer
) -> Iterator[list[Gateway]]:
    nodes = start_pair(tmp_path, sims, redis_server.url, fresh_prefix())
    yield nodes
    stop_pair(nodes)


def test_with_redis_stopped_each_node_keeps_its_own_breakers(
    lone_pair: list[Gateway], sims: dict[str, Simulator], redis_server: RedisServer
) -> None:
    first, second = lone_pair
    for sim in sims.values():
        sim.clear()
    redis_server.kill()
    sims["flaky"].faults({"status": 500}, {"status": 500})
    for _ in range(2):
        assert call(first).status_code == 200
    assert upstream_row(first, "flaky")["breaker"] == "open"
    # The second node was not told: it learns for itself, and nothing fails meanwhile.
    time.sleep(0.3)
    assert upstream_row(second, "flaky")["breaker"] == "closed"
    sims["flaky"].faults({"status": 500}, {"status": 500})
    statuses = [call(second).status_code for _ in range(4)]
    assert statuses == [200] * 4
    assert upstream_row(second, "flaky")["breaker"] == "open"
    assert requests_to(sims["flaky"]) == 4
