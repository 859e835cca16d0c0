"""Nobody pays twice, nobody pays for nothing: Idempotency-Key on the task API and on
generateContent (also while the first call still runs), and the rescue path for a synchronous
call whose client gave up: it completes, is billed once, and its answer waits at
GET /v1/results/{request_id}."""

from __future__ import annotations

import asyncio
import http.client
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors

from nanogate.access.keys import parse_prefix
from tests.simulator.processes import stop

from .conftest import Gateway, start_gateway
from .receiver import Receiver
from .test_credits import balance, ledger_matches_balances, new_key, query
from .test_tasks import FORMS, TASK_ENV, create, png, task_id, wait_final

MODEL = "gemini-2.5-flash-image"
BODY = {"contents": [{"role": "user", "parts": [{"text": "a kite"}]}]}
PNG = png(32, 32, (10, 20, 30))


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


def raw_post(gw: Gateway, path: str, headers: dict[str, str], body: object) -> tuple[int, Any]:
    """POST with http.client, which (unlike httpx) sends a header of spaces as it is."""
    host, port = gw.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(
            "POST", path, orjson.dumps(body), {"content-type": "application/json", **headers}
        )
        response = conn.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        conn.close()


CHAT = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_idempotency_key_is_refused_in_each_dialects_envelope(
    gw: Gateway, value: str
) -> None:
    key = new_key(gw, 10_000_000)
    idem = {"Idempotency-Key": value}
    explained = "a valid key is 1 to 255 printable ASCII characters"
    # Google's envelope.
    status, doc = raw_post(
        gw, f"/v1beta/models/{MODEL}:generateContent", {"x-goog-api-key": key, **idem}, BODY
    )
    assert status == 400 and doc["error"]["status"] == "INVALID_ARGUMENT"
    assert "Idempotency-Key header is empty" in doc["error"]["message"]
    assert explained in doc["error"]["message"]
    # OpenAI's, on chat completions and both images endpoints' way in.
    bearer = {"authorization": f"Bearer {key}", **idem}
    for path, body in (
        ("/v1/chat/completions", CHAT),
        ("/v1/images/generations", {"prompt": "a kite"}),
    ):
        status, doc = raw_post(gw, path, bearer, body)
        assert status == 400 and doc["error"]["type"] == "invalid_request_error", doc
        assert explained in doc["error"]["message"]
    # The task API's, in both forms (its code for a bad request is 422).
    for form, text in (("message", "message"), ("msg", "msg")):
        path = FORMS[form][0]
        task = {"model": "google/nano-banana", "input": {"prompt": "x"}}
        status, doc = raw_post(gw, path, {"x-api-key": key, **idem}, task)
        assert status == 422 and doc["code"] == 422 and doc["data"] is None
        assert explained in doc[text]
    assert balance(gw, key) == 10_000_000
    tasks = "SELECT COUNT(*) FROM tasks t JOIN api_keys k ON k.id = t.key_id WHERE k.prefix = "
    assert query(gw, f"{tasks}'{key[:11]}'") == [(0,)]


def test_a_bad_idempotency_key_is_refused_before_any_work(gw: Gateway, receiver: Receiver) -> None:
    # The key is checked before the request's image URL is fetched.
    path = f"/in/{uuid.uuid4().hex}.png"
    receiver.files[path] = (PNG, "image/png")
    image = {"type": "image_url", "image_url": {"url": receiver.url + path}}
    content = [{"type": "text", "text": "edit this"}, image]
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    key = new_key(gw, 10_000_000)
    response = httpx.post(
        f"{gw.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}", "Idempotency-Key": "two words"},
        json=body,
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert "spaces" in response.json()["error"]["message"]
    assert path not in receiver.fetched


def test_a_gemini_stream_with_an_idempotency_key_is_a_400(gw: Gateway) -> None:
    # A stream cannot be replayed: the key is refused, not silently ignored (as on OpenAI).
    key = new_key(gw, 10_000_000)
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    sdk = genai.Client(api_key=key, http_options={"base_url": gw.url, "headers": idem})
    with pytest.raises(genai_errors.ClientError) as caught:
        for _ in sdk.models.generate_content_stream(model=MODEL, contents="a kite"):
            pass
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    assert "stream" in (caught.value.message or "")
    for alt in ("?alt=sse", ""):
        response = httpx.post(
            f"{gw.url}/v1beta/models/{MODEL}:streamGenerateContent{alt}",
            headers={"x-goog-api-key": key, **idem},
            json=BODY,
            timeout=30,
        )
        assert response.status_code == 400
        assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert balance(gw, key) == 10_000_000
    # Without the header the same stream runs.
    plain = genai.Client(api_key=key, http_options={"base_url": gw.url})
    chunks = list(plain.models.generate_content_stream(model=MODEL, contents="a kite"))
    assert chunks and balance(gw, key) < 10_000_000


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


def test_an_unnamed_call_whose_client_stays_is_not_stored(gw: Gateway) -> None:
    """Only the calls a client can name are kept: with no x-request-id of its own, the id
    arrives with the answer itself, so nothing is written to the disk for it."""
    key = new_key(gw, 10_000_000)
    answered = generate(gw, key)
    assert answered.status_code == 200
    url = f"{gw.url}/v1/results/{answered.headers['x-request-id']}"
    assert httpx.get(url, headers={"x-goog-api-key": key}).status_code == 404


def test_an_unnamed_call_whose_client_left_is_kept(gw: Gateway) -> None:
    """A client that hangs up before its answer is ready leaves it paid for and kept, even
    with no name of its own: the gateway's id is in the client's usage and ledger rows."""
    key = new_key(gw, 10_000_000)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{gw.url}/v1beta/models/{MODEL}:generateContent",
            headers={"x-goog-api-key": key},
            json=BODY,
            timeout=0.5,
        )
    prefix = parse_prefix(key)
    deadline = time.monotonic() + 20
    while not (
        settled := query(
            gw,
            "SELECT l.request_id FROM ledger l JOIN api_keys k ON k.id = l.key_id "
            f"WHERE k.prefix = '{prefix}' AND l.kind = 'settle'",
        )
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    [(request_id,)] = settled
    found = httpx.get(f"{gw.url}/v1/results/{request_id}", headers={"x-goog-api-key": key})
    assert found.status_code == 200, found.text
    parts = orjson.loads(found.content)["candidates"][0]["content"]["parts"]
    assert any("inlineData" in part for part in parts)
    ledger_matches_balances(gw)


def test_a_call_named_by_its_client_is_kept_for_after_a_crash(gw: Gateway) -> None:
    key = new_key(gw, 10_000_000)
    request_id = f"kept-{uuid.uuid4().hex[:12]}"
    answered = generate(gw, key, {"x-request-id": request_id})
    assert answered.status_code == 200
    kept = httpx.get(f"{gw.url}/v1/results/{request_id}", headers={"x-goog-api-key": key})
    assert kept.status_code == 200 and kept.content == answered.content
