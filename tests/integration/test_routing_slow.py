"""Routing under real processes: two simulators behind `nanogate serve`, one throttling with
Retry-After or failing until its breaker opens; a capped upstream under concurrent load; the
per-upstream figures in GET /admin/upstreams and /metrics; `nanogate upstreams check`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.simulator.processes import free_port, stop

from .conftest import Gateway, Simulator, simulator_upstream, start_gateway, start_simulator

MODEL = "gemini-2.5-flash"
GEN = f"/v1beta/models/{MODEL}:generateContent"


@pytest.fixture(scope="module")
def second_simulator() -> Iterator[Simulator]:
    sim = start_simulator()
    yield sim
    stop(sim.proc)


@pytest.fixture
def sims(
    simulator: Simulator, second_simulator: Simulator
) -> Iterator[tuple[Simulator, Simulator]]:
    for sim in (simulator, second_simulator):
        sim.idle()
        sim.clear()
    yield simulator, second_simulator
    for sim in (simulator, second_simulator):
        sim.clear()


def generate(gw: Gateway, prompt: str = "hello", timeout: float = 30) -> httpx.Response:
    return httpx.post(
        f"{gw.url}{GEN}",
        json={"contents": [{"parts": [{"text": prompt}]}]},
        headers={"x-goog-api-key": gw.client_key},
        timeout=timeout,
    )


def upstreams(gw: Gateway) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{gw.url}/admin/upstreams", headers={"x-goog-api-key": gw.admin_key})
    assert resp.status_code == 200, resp.text
    return {row["name"]: row for row in resp.json()}


def calls_to(sim: Simulator) -> list[str]:
    """The API calls a simulator received, as 'METHOD path': not its control routes, nor the
    gateway's daily model check (GET …/models?pageSize=…, which /readyz and /admin/upstreams
    start), only what routing sends."""
    return [
        f"{r['method']} {r['path']}"
        for r in sim.requests()
        if not r["path"].startswith("/_") and "pageSize" not in r["query"]
    ]


def test_a_throttled_upstream_is_skipped_until_its_retry_after(
    tmp_path: Path, sims: tuple[Simulator, Simulator]
) -> None:
    throttled, spare = sims
    config = {
        "upstreams": [
            simulator_upstream(throttled, name="throttled"),
            simulator_upstream(spare, name="spare", priority=1),
        ]
    }
    gw = start_gateway(tmp_path, config)
    try:
        # Retry-After as an HTTP date, as some vendors send it (whole seconds: 3 to 4 s left).
        until = datetime.now(UTC) + timedelta(seconds=4)
        throttled.faults({"status": 429, "retry_after": format_datetime(until, usegmt=True)})
        for _ in range(4):
            resp = generate(gw)
            assert resp.status_code == 200, resp.text
        assert calls_to(throttled) == [f"POST {GEN}"], "asked once, then skipped"
        assert len(calls_to(spare)) == 4
        row = upstreams(gw)["throttled"]
        assert row["breaker"] == "closed" and row["failures_in_a_row"] == 1
        assert 1 <= row["retry_after"] <= 4 and row["skip_until"] is not None
        assert row["error_rate"] == 1.0 and row["recent_attempts"] == 1
        assert httpx.get(f"{gw.url}/readyz").json()["upstreams"]["throttled"] == "rate limited"
        spare_row = upstreams(gw)["spare"]
        assert spare_row["error_rate"] == 0 and spare_row["p50_ms"] is not None
        assert spare_row["max_concurrency"] is None and spare_row["in_flight"] == 0
        time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.2)
        assert generate(gw).status_code == 200
        assert len(calls_to(throttled)) == 2, "back once its Retry-After passed"
        assert upstreams(gw)["throttled"]["retry_after"] is None
    finally:
        stop(gw.proc)


def test_a_capped_upstream_under_load_answers_429_with_retry_after_not_a_hang(
    tmp_path: Path, sims: tuple[Simulator, Simulator]
) -> None:
    sim, _ = sims
    config = {
        "upstreams": [simulator_upstream(sim, max_concurrency=2, queue_timeout_s=0.5)],
    }
    gw = start_gateway(tmp_path, config)
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=12) as pool:
            gemini = [pool.submit(generate, gw, "[[sim:delay=2]] hi") for _ in range(8)]
            time.sleep(0.25)
            row = upstreams(gw)["sim"]
            assert (row["in_flight"], row["max_concurrency"]) == (2, 2) and row["waiting"] >= 1
            # Sent only once both slots are held, so it cannot win one of them.
            chat = pool.submit(
                httpx.post,
                f"{gw.url}/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {gw.client_key}"},
                timeout=30,
            )
            answers = [f.result() for f in gemini]
            chat_answer = chat.result()
        elapsed = time.monotonic() - started
        assert elapsed < 6, "the queue is bounded"
        ok = [r for r in answers if r.status_code == 200]
        refused = [r for r in answers if r.status_code == 429]
        assert len(ok) == 2 and len(refused) == 6, [r.status_code for r in answers]
        for resp in refused:
            assert int(resp.headers["retry-after"]) >= 1
            assert resp.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
            assert "concurrency limit" in resp.json()["error"]["message"]
        # The OpenAI dialect renders the same refusal in its own envelope.
        assert chat_answer.status_code == 429, chat_answer.text
        assert int(chat_answer.headers["retry-after"]) >= 1
        assert chat_answer.json()["error"]["type"]
        # Nothing queued is left behind, and the upstream only ever saw two calls at once.
        row = upstreams(gw)["sim"]
        assert (row["in_flight"], row["waiting"]) == (0, 0)
        assert httpx.get(f"{sim.url}/_sim/stats").json()["max_in_flight"] <= 2
        assert generate(gw).status_code == 200
    finally:
        stop(gw.proc)


def test_the_prober_brings_a_cooled_down_upstream_back_without_a_client_call(
    tmp_path: Path, sims: tuple[Simulator, Simulator]
) -> None:
    flaky, spare = sims
    config = {
        "upstreams": [
            simulator_upstream(flaky, name="flaky", breaker_failures=2, breaker_cooldown_s=1),
            simulator_upstream(spare, name="spare", priority=1),
        ]
    }
    gw = start_gateway(tmp_path, config)
    try:
        # Faults bound to the model, so the prober's GET /models cannot consume them.
        flaky.faults(*[{"status": 503, "model": MODEL}] * 2)
        for _ in range(2):
            assert generate(gw).status_code == 200  # via the spare
        assert upstreams(gw)["flaky"]["breaker"] == "open"
        assert httpx.get(f"{gw.url}/readyz").json()["upstreams"]["flaky"] == "cooling down"
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert 'nanogate_upstream_breaker_open{upstream="flaky"} 1.0' in metrics
        assert 'nanogate_upstream_in_flight{upstream="spare"} 0.0' in metrics
        assert 'nanogate_upstream_latency_seconds_count{upstream="spare"} 2.0' in metrics
        deadline = time.monotonic() + 8
        while upstreams(gw)["flaky"]["breaker"] != "closed":
            assert time.monotonic() < deadline, upstreams(gw)["flaky"]
            assert generate(gw).status_code == 200
            time.sleep(0.2)
        # Client calls kept going meanwhile; the first one it saw after opening was the probe.
        assert calls_to(flaky)[:3] == [f"POST {GEN}", f"POST {GEN}", "GET /v1beta/models"]
        assert generate(gw).status_code == 200
        assert calls_to(flaky)[-1] == f"POST {GEN}", "back in rotation"

        # `nanogate upstreams check` against the same config, then with one upstream down.
        check = gw.cli("upstreams", "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "flaky" in check.stdout and "spare" in check.stdout
        assert check.stdout.count("healthy") == 2 and flaky.url in check.stdout
        down = tmp_path / "down.yaml"
        dead = {
            **simulator_upstream(spare, name="dead"),
            "base_url": f"http://127.0.0.1:{free_port()}",
        }
        down.write_text(yaml.safe_dump({"upstreams": [simulator_upstream(spare), dead]}))
        check = gw.cli("upstreams", "check", "--config", str(down), "--timeout", "5")
        assert check.returncode == 1, check.stdout + check.stderr
        assert "unhealthy" in check.stdout and "dead" in check.stdout
    finally:
        stop(gw.proc)
