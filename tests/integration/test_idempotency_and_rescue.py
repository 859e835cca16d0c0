"""Nobody pays twice, nobody pays for nothing: Idempotency-Key on the task API and on
generateContent (also while the first call still runs), and the rescue path for a synchronous
call whose client gave up: it completes, is billed once, and its answer waits at
GET /v1/results/{request_id}."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest

from nanogate.simulator.processes import stop

from .conftest import Gateway, start_gateway
from .test_credits import balance, ledger_matches_balances, new_key, query
from .test_tasks import TASK_ENV, create, task_id, wait_final

MODEL = "gemini-2.5-flash-image"
BODY = {"contents": [{"role": "user", "parts": [{"text": "a kite"}]}]}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {"upstreams": [{"name": "demo", "kind": "demo", "latency_ms": 1500}]}
    gateway = start_gateway(tmp_path_factory.mktemp("idem"), config, **TASK_ENV)
    yield gateway
    stop(gateway.proc)


def generate(
    gw: Gateway, key: str, headers: dict[str, str] | None = None, body: object = BODY
) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1beta/models/{MODEL}:generateContent",
        headers={"x-goog-api-key": key, **(headers or {})},
        json=body,
        timeout=30,
    )


@pytest.mark.parametrize("form", ["message", "msg"])
def test_a_repeated_create_is_the_same_task_and_one_charge(gw: Gateway, form: str) -> None:
    key = new_key(gw, 10_000_000)
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    first = task_id(
        create(gw, key, form, "google/nano-banana", {"prompt": "x"}, headers=idem), form
    )
    again = task_id(
        create(gw, key, form, "google/nano-banana", {"prompt": "x"}, headers=idem), form
    )
    assert again == first
    data = wait_final(gw, key, form, first)
    third = task_id(
        create(gw, key, form, "google/nano-banana", {"prompt": "x"}, headers=idem), form
    )
    assert third == first
    cost = data["cost"] if form == "message" else data["credits"]
    assert balance(gw, key) == 10_000_000 - cost
    assert query(gw, f"SELECT COUNT(*) FROM tasks WHERE id = '{first}'") == [(1,)]
    # The same key with another body is refused, in the task envelope.
    other = create(gw, key, form, "google/nano-banana", {"prompt": "y"}, headers=idem)
    assert other.status_code == 422 and "Idempotency-Key" in other.text
    # Keys are per API key: another key's identical Idempotency-Key is its own.
    stranger = new_key(gw, 10_000_000)
    theirs = task_id(
        create(gw, stranger, form, "google/nano-banana", {"prompt": "x"}, headers=idem), form
    )
    assert theirs != first


def test_a_malformed_idempotency_key_is_refused(gw: Gateway) -> None:
    key = new_key(gw, 10_000_000)
    response = generate(gw, key, {"Idempotency-Key": "x" * 300})
    assert response.status_code == 400 and "Idempotency-Key" in response.json()["error"]["message"]


def test_generate_replays_while_running_and_after_with_one_charge(gw: Gateway) -> None:
    key = new_key(gw, 10_000_000)
    headers = {"Idempotency-Key": str(uuid.uuid4())}

    async def twice() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{gw.url}/v1beta/models/{MODEL}:generateContent"
            auth = {"x-goog-api-key": key, **headers}
            first = asyncio.create_task(client.post(url, headers=auth, json=BODY))
            await asyncio.sleep(0.3)  # the first is now at the upstream
            second = asyncio.create_task(client.post(url, headers=auth, json=BODY))
            return [await first, await second]

    first, second = asyncio.run(twice())
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["x-nanogate-idempotent-replay"] == "true"
    assert second.headers["x-nanogate-cost"] == "0"
    cost = int(first.headers["x-nanogate-cost"])
    assert cost > 0 and balance(gw, key) == 10_000_000 - cost
    later = generate(gw, key, headers)
    assert later.content == first.content and later.headers["x-nanogate-cost"] == "0"
    conflict = generate(gw, key, headers, {"contents": [{"parts": [{"text": "another"}]}]})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["status"] == "ABORTED"
    ledger_matches_balances(gw)


def test_a_failed_first_call_leaves_the_key_free_for_a_retry(gw: Gateway) -> None:
    key = new_key(gw, 10_000_000)
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    bad = {
        "contents": [{"parts": [{"text": "x"}]}],
        "generationConfig": {"imageConfig": {"aspectRatio": "7:5"}},
    }
    assert generate(gw, key, headers, bad).status_code == 400
    assert generate(gw, key, headers).status_code == 200


def test_a_client_that_gives_up_still_gets_its_paid_answer(gw: Gateway) -> None:
    key = new_key(gw, 10_000_000)
    request_id = f"rescue-{uuid.uuid4().hex[:12]}"
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{gw.url}/v1beta/models/{MODEL}:generateContent",
            headers={"x-goog-api-key": key, "x-request-id": request_id},
            json=BODY,
            timeout=0.5,
        )
    url = f"{gw.url}/v1/results/{request_id}"
    running = httpx.get(url, headers={"x-goog-api-key": key})
    assert running.status_code == 202, running.text
    deadline = time.monotonic() + 20
    while (found := httpx.get(url, headers={"x-goog-api-key": key})).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert found.status_code == 200, found.text
    answer = orjson.loads(found.content)
    parts = answer["candidates"][0]["content"]["parts"]
    assert any("inlineData" in part for part in parts)
    # Billed once, at the answer's price.
    charged = 10_000_000 - balance(gw, key)
    assert charged > 0
    settles = query(
        gw, f"SELECT COUNT(*) FROM ledger WHERE request_id = '{request_id}' AND kind = 'settle'"
    )
    assert settles == [(1,)]
    # The answer is the caller's only: another key, and an unknown id, get Google's 404.
    other = httpx.get(url, headers={"x-goog-api-key": new_key(gw, 1)})
    assert other.status_code == 404 and other.json()["error"]["status"] == "NOT_FOUND"
    missing = httpx.get(f"{gw.url}/v1/results/nope", headers={"x-goog-api-key": key})
    assert missing.status_code == 404
    assert httpx.get(url).status_code == 401
    ledger_matches_balances(gw)


def test_a_call_whose_client_stays_is_not_stored(gw: Gateway) -> None:
    key = new_key(gw, 10_000_000)
    request_id = f"kept-{uuid.uuid4().hex[:12]}"
    assert generate(gw, key, {"x-request-id": request_id}).status_code == 200
    url = f"{gw.url}/v1/results/{request_id}"
    assert httpx.get(url, headers={"x-goog-api-key": key}).status_code == 404
