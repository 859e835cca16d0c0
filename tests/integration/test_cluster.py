"""Cluster mode, proven with real processes: three `nanogate serve` nodes and a `nanogate worker`
on one PostgreSQL database and one Redis, behind nginx with the operators' configuration
(docs/nginx.conf). Every call goes through nginx, as a client's would."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .cluster import Cluster, cluster
from .conftest import Simulator, within
from .test_credits import ledger_matches_balances, new_key, query

IMAGE_MODEL = "gemini-2.5-flash-image"
TEXT_MODEL = "gemini-2.5-flash"


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory, simulator: Simulator) -> Iterator[Cluster]:
    from tests import postgres, redis_server

    name = f"nanogate_cluster_{int(time.time() * 1000)}"
    url = postgres.create_database(name)
    prefix = redis_server.fresh_prefix()
    redis = {"NANOGATE_REDIS_URL": redis_server.SERVER_URL, "NANOGATE_REDIS_KEY_PREFIX": prefix}
    try:
        # A long key cache: a revocation must reach the other nodes by Redis, not by expiry.
        with cluster(
            tmp_path_factory.mktemp("cluster"),
            url,
            simulator,
            NANOGATE_KEY_CACHE_SECONDS="60",
            **redis,
        ) as nodes:
            yield nodes
    finally:
        postgres.drop_database(name)
        redis_server.drop_prefix(prefix)


def call(url: str, key: str, model: str = TEXT_MODEL) -> httpx.Response:
    return httpx.post(
        f"{url}/v1beta/models/{model}:generateContent",
        headers={"x-goog-api-key": key},
        json={"contents": [{"parts": [{"text": "a kite over the sea"}]}]},
        timeout=60,
    )


def served(node_url: str) -> int:
    """Calls a node answered, from its /metrics."""
    text = httpx.get(f"{node_url}/metrics").text
    return int(
        sum(float(v) for v in re.findall(r"^nanogate_requests_total\{[^}]*\} (\S+)$", text, re.M))
    )


def test_calls_through_nginx_reach_every_node(three: Cluster) -> None:
    before = [served(node.url) for node in three.nodes]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: call(three.url, three.client_key), range(90)))
    assert [a.status_code for a in answers] == [200] * 90
    after = [served(node.url) for node in three.nodes]
    gained = [b - a for a, b in zip(before, after, strict=True)]
    assert sum(gained) == 90 and all(g > 0 for g in gained), gained
    ledger_matches_balances(three.nodes[0])


def test_an_account_funded_for_50_images_gets_50_of_200_across_nodes(three: Cluster) -> None:
    probe = new_key(three.nodes[0], 10**9)
    first = call(three.url, probe, IMAGE_MODEL)
    assert first.status_code == 200, first.text
    price = int(first.headers["x-nanogate-cost"])
    key = new_key(three.nodes[0], 50 * price)
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda _: call(three.url, key, IMAGE_MODEL), range(200)))
    odd = {a.status_code: a.text for a in answers if a.status_code not in (200, 402)}
    assert not odd, odd
    assert sum(a.status_code == 200 for a in answers) == 50
    assert sum(int(a.headers.get("x-nanogate-cost", 0)) for a in answers) == 50 * price
    prefix = key.split("_")[0] + "_" + key.split("_")[1]
    [(balance,)] = query(
        three.nodes[0],
        "SELECT a.balance FROM accounts a JOIN api_keys k ON k.account_id = a.id "
        f"WHERE k.prefix = '{prefix}'",
    )
    assert balance == 0
    ledger_matches_balances(three.nodes[0])


def test_maintenance_set_on_one_node_reaches_the_others_within_a_second(three: Cluster) -> None:
    a, b, c = three.nodes
    admin = {"Authorization": f"Bearer {three.admin_key}"}
    try:
        response = httpx.patch(f"{a.url}/admin/switches", headers=admin, json={"maintenance": True})
        assert response.status_code == 200, response.text
        took = within(
            1.0, lambda: all(call(n.url, three.client_key).status_code == 503 for n in (b, c))
        )
        assert took < 1.0
        assert call(three.url, three.client_key).status_code == 503
    finally:
        httpx.patch(f"{c.url}/admin/switches", headers=admin, json={"maintenance": False})
    within(1.0, lambda: all(call(n.url, three.client_key).status_code == 200 for n in three.nodes))


def test_a_60_rpm_key_gets_60_of_120_through_nginx(three: Cluster) -> None:
    key = new_key(three.nodes[0], 10**9, rpm_limit=60)
    started = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: call(three.url, key), range(120)))
    assert time.monotonic() - started < 10
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 60 and statuses.count(429) == 60, statuses
    refused = next(a for a in answers if a.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_a_revocation_on_one_node_is_refused_on_the_others_within_a_second(
    three: Cluster,
) -> None:
    a, b, c = three.nodes
    key = new_key(a, 10**9)
    # Every node has the key cached (key_cache_seconds is 60 here).
    assert all(call(node.url, key).status_code == 200 for node in three.nodes)
    prefix = "_".join(key.split("_")[:2])
    revoked = httpx.post(
        f"{a.url}/admin/keys/{prefix}/revoke", headers={"x-api-key": three.admin_key}
    )
    assert revoked.status_code == 200, revoked.text
    within(1.0, lambda: all(call(node.url, key).status_code == 403 for node in (b, c)))
    assert call(three.url, key).status_code == 403
