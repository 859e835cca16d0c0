"""Credits end to end, with real processes: the gateway relaying to the simulator (or the demo
upstream), driven over HTTP and through the google-genai SDK; the ledger read back from the
gateway's own database."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from nanogate.billing import prices
from nanogate.core.canonical import usage_from_response
from nanogate.core.catalog import load_catalog
from nanogate.db import make_engine
from tests.simulator.processes import stop

from .conftest import (
    Gateway,
    Simulator,
    sdk_client,
    simulator_upstream,
    start_gateway,
)

CATALOG = load_catalog()
IMAGE_MODEL = "gemini-2.5-flash-image"
TEXT_MODEL = "gemini-2.5-flash"
PROMPT = {
    "contents": [{"role": "user", "parts": [{"text": "a lighthouse"}]}],
    "generationConfig": {"maxOutputTokens": 1000},
}


def query(gw: Gateway, sql: str) -> list[tuple[Any, ...]]:
    url = gw.env.get("NANOGATE_DATABASE_URL") or f"sqlite+aiosqlite:///{gw.data_dir}/nanogate.db"

    async def run() -> list[tuple[Any, ...]]:
        from sqlalchemy import text

        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in await conn.execute(text(sql))]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def ledger_matches_balances(gw: Gateway) -> None:
    rows = query(
        gw,
        "SELECT a.id, a.balance, COALESCE((SELECT SUM(l.amount) FROM ledger l "
        "WHERE l.account_id = a.id), 0) FROM accounts a",
    )
    for account_id, balance, total in rows:
        assert balance == total, f"account {account_id}: balance {balance}, ledger {total}"
    assert query(gw, "SELECT COUNT(*) FROM holds WHERE state = 'pending'") == [(0,)]


def new_key(gw: Gateway, credits: int, **extra: Any) -> str:
    response = httpx.post(
        f"{gw.url}/admin/keys",
        headers={"x-api-key": gw.admin_key},
        json={"name": "credits-test", "credits": credits, **extra},
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def balance(gw: Gateway, key: str) -> int:
    response = httpx.get(f"{gw.url}/api/v1/client/account/balance", headers={"x-api-key": key})
    assert response.status_code == 200, response.text
    value: int = response.json()["data"]["balance"]
    return value


def generate(gw: Gateway, key: str, body: Any = PROMPT, model: str = IMAGE_MODEL) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1beta/models/{model}:generateContent",
        headers={"x-goog-api-key": key},
        json=body,
        timeout=60,
    )


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, simulator: Simulator) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("credits"),
        {"upstreams": [simulator_upstream(simulator, timeout_s=5, breaker_failures=1000)]},
    )
    yield gateway
    stop(gateway.proc)


def test_charge_is_the_upstreams_usage_at_each_modalitys_rate(
    gw: Gateway, simulator: Simulator
) -> None:
    simulator.clear()
    key = new_key(gw, 1_000_000)
    response = generate(gw, key)
    assert response.status_code == 200
    usage = usage_from_response(response.content)
    assert usage.output_image > 0 and usage.images == 1
    expected = prices.price(CATALOG.resolve(IMAGE_MODEL), usage)
    assert int(response.headers["x-nanogate-cost"]) == expected > 38_700
    assert balance(gw, key) == 1_000_000 - expected
    request_id = response.headers["x-request-id"]
    entries = httpx.get(
        f"{gw.url}/admin/ledger",
        params={"request_id": request_id},
        headers={"x-api-key": gw.admin_key},
    ).json()
    assert sorted(e["kind"] for e in entries) == ["reserve", "settle"]
    assert sum(e["amount"] for e in entries) == -expected
    ledger_matches_balances(gw)


def test_short_balance_is_a_402_in_googles_envelope_through_the_sdk(gw: Gateway) -> None:
    key = new_key(gw, 10)
    client = sdk_client(gw, key)
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model=IMAGE_MODEL, contents="an otter")
    assert caught.value.code == 402
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    assert "costs at least" in str(caught.value.message)
    assert "has 10 available" in str(caught.value.message)
    raw = generate(gw, key)
    assert raw.status_code == 402
    assert raw.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert balance(gw, key) == 10


def test_a_daily_cap_is_a_402_naming_the_cap(gw: Gateway) -> None:
    key = new_key(gw, 10_000_000, daily_cap=20_000)  # one image costs at least ~38,700
    response = generate(gw, key)
    assert response.status_code == 402
    assert "daily spend cap of 20,000 credits" in response.json()["error"]["message"]


def test_upstream_failure_refunds_everything(gw: Gateway, simulator: Simulator) -> None:
    key = new_key(gw, 1_000_000)
    simulator.faults({"status": 500, "model": IMAGE_MODEL})
    response = generate(gw, key)
    assert response.status_code == 500
    assert balance(gw, key) == 1_000_000
    kinds = query(
        gw,
        f"SELECT kind FROM ledger WHERE request_id = '{response.headers['x-request-id']}' "
        "ORDER BY id",
    )
    assert kinds == [("reserve",), ("refund",)]
    ledger_matches_balances(gw)


def blocked_answer(reason: str) -> dict[str, Any]:
    return {
        "candidates": [{"finishReason": reason, "index": 0}],
        "usageMetadata": {"promptTokenCount": 900, "totalTokenCount": 900},
    }


@pytest.mark.parametrize("reason", ["IMAGE_SAFETY", "PROHIBITED_CONTENT", "NO_IMAGE"])
def test_no_image_costs_nothing(gw: Gateway, simulator: Simulator, reason: str) -> None:
    key = new_key(gw, 1_000_000)
    simulator.faults({"body": blocked_answer(reason), "model": IMAGE_MODEL})
    response = generate(gw, key)
    assert response.status_code == 200 and response.json()["candidates"][0]["finishReason"]
    assert response.headers["x-nanogate-cost"] == "0"
    assert balance(gw, key) == 1_000_000


def test_a_blocked_prompt_costs_nothing(gw: Gateway, simulator: Simulator) -> None:
    key = new_key(gw, 1_000_000)
    body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}}
    simulator.faults({"body": body, "model": IMAGE_MODEL})
    assert generate(gw, key).headers["x-nanogate-cost"] == "0"
    assert balance(gw, key) == 1_000_000


def test_a_text_answer_from_a_text_only_request_is_charged(gw: Gateway) -> None:
    key = new_key(gw, 1_000_000)
    body = {**PROMPT, "generationConfig": {"responseModalities": ["TEXT"]}}
    response = generate(gw, key, body)
    cost = int(response.headers["x-nanogate-cost"])
    assert cost > 0 and balance(gw, key) == 1_000_000 - cost


def test_count_tokens_is_free(gw: Gateway) -> None:
    key = new_key(gw, 1_000)
    response = httpx.post(
        f"{gw.url}/v1beta/models/{IMAGE_MODEL}:countTokens",
        headers={"x-goog-api-key": key},
        json={"contents": PROMPT["contents"]},
    )
    assert response.status_code == 200 and "x-nanogate-cost" not in response.headers
    assert balance(gw, key) == 1_000


def test_a_stream_settles_once_at_its_usage(gw: Gateway) -> None:
    key = new_key(gw, 1_000_000)
    client = sdk_client(gw, key)
    chunks = list(
        client.models.generate_content_stream(
            model=IMAGE_MODEL,
            contents="a lighthouse",
            config=genai_types.GenerateContentConfig(max_output_tokens=1000),
        )
    )
    meta = chunks[-1].usage_metadata
    assert meta is not None
    image_tokens = sum(
        d.token_count or 0
        for d in meta.candidates_tokens_details or []
        if d.modality == genai_types.MediaModality.IMAGE
    )
    assert image_tokens == 1290
    spent = 1_000_000 - balance(gw, key)
    assert spent > 38_700
    rows = query(
        gw,
        "SELECT h.state, h.cost FROM holds h JOIN api_keys k ON k.id = h.key_id "
        f"WHERE k.prefix = '{key[:11]}'",
    )
    assert rows == [("settled", spent)]


def test_a_client_gone_mid_text_stream_pays_for_what_was_produced(
    gw: Gateway, simulator: Simulator
) -> None:
    key = new_key(gw, 1_000_000)
    simulator.faults({"slow_stream": 1.0, "model": TEXT_MODEL})
    with httpx.stream(
        "POST",
        f"{gw.url}/v1beta/models/{TEXT_MODEL}:streamGenerateContent?alt=sse",
        headers={"x-goog-api-key": key},
        json=PROMPT,
        timeout=30,
    ) as response:
        first = next(response.iter_lines())
    assert first.startswith("data: ")
    seen = usage_from_response(first.removeprefix("data: ").encode())
    expected = prices.price(CATALOG.resolve(TEXT_MODEL), seen)
    assert expected > 0  # the prompt tokens Google bills even for a cut stream
    # The gateway sees the client gone at its next write (the next slow chunk), then settles.
    wait_no_hold(gw, key)
    assert balance(gw, key) == 1_000_000 - expected
    ledger_matches_balances(gw)


def test_a_client_gone_mid_image_stream_gets_the_whole_answer_later(
    gw: Gateway, simulator: Simulator
) -> None:
    # The rescue path: an image stream runs to its end, is billed whole, once, and is kept.
    key = new_key(gw, 1_000_000)
    request_id = f"stream-rescue-{time.time_ns()}"
    simulator.faults({"slow_stream": 0.5, "model": IMAGE_MODEL})
    with httpx.stream(
        "POST",
        f"{gw.url}/v1beta/models/{IMAGE_MODEL}:streamGenerateContent?alt=sse",
        headers={"x-goog-api-key": key, "x-request-id": request_id},
        json=PROMPT,
        timeout=30,
    ) as response:
        assert next(response.iter_lines()).startswith("data: ")
    url = f"{gw.url}/v1/results/{request_id}"
    deadline = time.monotonic() + 30
    while (found := httpx.get(url, headers={"x-goog-api-key": key})).status_code != 200:
        assert found.status_code in (202, 404) and time.monotonic() < deadline, found.text
        time.sleep(0.1)
    chunks = found.json()
    assert isinstance(chunks, list) and len(chunks) > 1
    assert any(
        "inlineData" in part
        for chunk in chunks
        for part in chunk["candidates"][0]["content"]["parts"]
    )
    whole = usage_from_response(orjson.dumps(chunks[-1]))
    wait_no_hold(gw, key)
    assert balance(gw, key) == 1_000_000 - prices.price(CATALOG.resolve(IMAGE_MODEL), whole)
    ledger_matches_balances(gw)


def wait_no_hold(gw: Gateway, key: str) -> None:
    held = (
        "SELECT COUNT(*) FROM holds h JOIN api_keys k ON k.id = h.key_id "
        f"WHERE k.prefix = '{key[:11]}' AND h.state = 'pending'"
    )
    for _ in range(100):
        if query(gw, held) == [(0,)]:
            return
        threading.Event().wait(0.1)


def test_balance_in_both_task_forms(gw: Gateway) -> None:
    key = new_key(gw, 4321)
    seed = httpx.get(f"{gw.url}/api/v1/client/account/balance", headers={"x-api-key": key})
    assert seed.json() == {"code": 200, "message": "success", "data": {"balance": 4321}}
    other = httpx.get(f"{gw.url}/api/v1/chat/credit", headers={"authorization": f"Bearer {key}"})
    assert other.json() == {"code": 200, "msg": "success", "data": 4321}
    for path, field in (
        ("/api/v1/client/account/balance", "message"),
        ("/api/v1/chat/credit", "msg"),
    ):
        missing = httpx.get(f"{gw.url}{path}")
        assert missing.status_code == 401
        body = missing.json()
        assert body["code"] == 401 and body["data"] is None and "key" in body[field]
        wrong = httpx.get(f"{gw.url}{path}", headers={"x-api-key": "ng_00000000_" + "x" * 43})
        assert wrong.status_code == 401 and wrong.json()["code"] == 401


def test_keys_on_one_account_share_its_balance(gw: Gateway) -> None:
    admin = {"x-api-key": gw.admin_key}
    created = httpx.post(
        f"{gw.url}/admin/accounts", headers=admin, json={"name": "studio", "credits": 500_000}
    )
    assert created.status_code == 201, created.text
    keys = [
        httpx.post(
            f"{gw.url}/admin/keys", headers=admin, json={"name": name, "account": "studio"}
        ).json()["key"]
        for name in ("web", "batch")
    ]
    cost = int(generate(gw, keys[0]).headers["x-nanogate-cost"])
    assert balance(gw, keys[1]) == 500_000 - cost
    topped = httpx.post(
        f"{gw.url}/admin/keys/{keys[1][:11]}/topup",
        headers=admin,
        json={"amount": 1000, "reason": "bonus"},
    )
    assert topped.json()["balance"] == 501_000 - cost
    assert balance(gw, keys[0]) == 501_000 - cost


def test_metering_off_charges_nothing_but_still_prices(
    tmp_path: Path, simulator: Simulator
) -> None:
    gateway = start_gateway(
        tmp_path,
        {"upstreams": [simulator_upstream(simulator, timeout_s=5)]},
        NANOGATE_METERING="false",
    )
    try:
        before = balance(gateway, gateway.client_key)
        response = generate(gateway, gateway.client_key)
        assert response.status_code == 200 and int(response.headers["x-nanogate-cost"]) > 38_700
        assert balance(gateway, gateway.client_key) == before
        assert query(gateway, "SELECT COUNT(*) FROM holds") == [(0,)]
        threading.Event().wait(0.6)  # the usage flush
        costs = query(gateway, "SELECT cost FROM usage_records WHERE method = 'generateContent'")
        assert costs == [(int(response.headers["x-nanogate-cost"]),)]
    finally:
        stop(gateway.proc)


def test_usage_records_carry_the_cost(gw: Gateway) -> None:
    key = new_key(gw, 1_000_000)
    response = generate(gw, key)
    threading.Event().wait(0.6)
    records = httpx.get(
        f"{gw.url}/admin/usage", params={"key": key[:11]}, headers={"x-api-key": gw.admin_key}
    ).json()
    assert [r["cost"] for r in records] == [int(response.headers["x-nanogate-cost"])]
    assert records[0]["account_id"] is not None
