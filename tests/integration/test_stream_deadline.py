"""A stream that drips bytes is cut (issue 17): real gateway processes relaying to the simulator,
whose `drip` fault sends a stream's first event whole, then one byte at a time, forever. Each
byte comes well inside the upstream's per-read timeout, so only the gateway's own bounds end it:
`stream_deadline_seconds` and `stream_min_bytes_per_second`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors

from nanogate.billing import prices
from nanogate.core.canonical import usage_from_response
from tests.simulator.processes import stop

from .conftest import Gateway, Simulator, simulator_upstream, start_gateway
from .test_credits import CATALOG, PROMPT, balance, ledger_matches_balances, new_key

TEXT_MODEL = "gemini-2.5-flash"
IMAGE_MODEL = "gemini-2.5-flash-image"
# Each client read waits at most this long, so a gateway that never cuts fails the test rather
# than hanging it.
READ_TIMEOUT_S = 15


@pytest.fixture
def sim(simulator: Simulator) -> Iterator[Simulator]:
    simulator.clear()
    yield simulator
    simulator.clear()


@pytest.fixture(scope="module")
def deadline_gw(
    tmp_path_factory: pytest.TempPathFactory, simulator: Simulator
) -> Iterator[Gateway]:
    """A 3 s stream deadline, no minimum rate."""
    gw = start_gateway(
        tmp_path_factory.mktemp("stream-deadline"),
        {
            "upstreams": [simulator_upstream(simulator, timeout_s=5, breaker_failures=1000)],
            "stream_deadline_seconds": 3,
            "stream_min_bytes_per_second": 0,
        },
    )
    yield gw
    stop(gw.proc)


@pytest.fixture(scope="module")
def rate_gw(tmp_path_factory: pytest.TempPathFactory, simulator: Simulator) -> Iterator[Gateway]:
    """The default stream deadline (600 s), and a minimum rate of 200 bytes a second with 1 s
    of grace; a 3 s request deadline, for the call that is not streamed."""
    gw = start_gateway(
        tmp_path_factory.mktemp("stream-rate"),
        {
            "upstreams": [simulator_upstream(simulator, timeout_s=30, breaker_failures=1000)],
            "stream_min_bytes_per_second": 200,
            "stream_rate_grace_seconds": 1,
            "request_deadline_seconds": 3,
        },
    )
    yield gw
    stop(gw.proc)


def sdk(gw: Gateway, key: str) -> genai.Client:
    options = genai.types.HttpOptions(base_url=gw.url, timeout=READ_TIMEOUT_S * 1000)
    return genai.Client(api_key=key, http_options=options)


def usage_record(gw: Gateway, key: str) -> dict[str, Any]:
    """The key's one usage record (written in batches: waited for)."""
    deadline = time.monotonic() + 10
    while True:
        rows: list[dict[str, Any]] = httpx.get(
            f"{gw.url}/admin/usage?key={key[:11]}", headers={"x-api-key": gw.admin_key}
        ).json()
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    [record] = rows
    return record


def upstream_hung_up(sim: Simulator) -> bool:
    """The simulator's dripping handler saw its connection closed and ended."""
    deadline = time.monotonic() + 5
    while httpx.get(f"{sim.url}/_sim/stats").json()["in_flight"]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_dripping_gemini_stream_is_cut_at_the_deadline(
    deadline_gw: Gateway, sim: Simulator
) -> None:
    key = new_key(deadline_gw, 1_000_000, concurrency_limit=1)
    sim.faults({"drip": 0.05, "model": TEXT_MODEL})
    client = sdk(deadline_gw, key)
    started = time.monotonic()
    received = []
    with pytest.raises(genai_errors.APIError) as caught:
        for chunk in client.models.generate_content_stream(model=TEXT_MODEL, contents="hi"):
            received.append(chunk)
    took = time.monotonic() - started
    # The terminal error event, in Google's envelope, after what the upstream produced.
    assert (caught.value.code, caught.value.status) == (504, "DEADLINE_EXCEEDED")
    assert "stream_deadline_seconds" in (caught.value.message or "")
    assert len(received) == 1 and received[0].text
    assert 2.9 <= took < 6, took
    assert upstream_hung_up(sim)
    # Settled before the error event went out: charged the first chunk's usage, no hold left,
    # and the key's one request slot free at once.
    meta = received[0].usage_metadata
    assert meta is not None and meta.prompt_token_count
    record = usage_record(deadline_gw, key)
    assert (record["status"], record["error"]) == (504, "DEADLINE_EXCEEDED")
    assert record["cost"] > 0 and balance(deadline_gw, key) == 1_000_000 - record["cost"]
    ledger_matches_balances(deadline_gw)
    again = client.models.generate_content(model=TEXT_MODEL, contents="hi again")
    assert again.text


def test_a_dripping_openai_stream_is_cut_at_the_deadline(
    deadline_gw: Gateway, sim: Simulator
) -> None:
    key = new_key(deadline_gw, 1_000_000, concurrency_limit=1)
    sdk = openai.OpenAI(
        api_key=key, base_url=f"{deadline_gw.url}/v1", max_retries=0, timeout=READ_TIMEOUT_S
    )
    sim.faults({"drip": 0.05, "model": TEXT_MODEL})
    started = time.monotonic()
    text = ""
    stream = sdk.chat.completions.create(
        model=TEXT_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
    assert 2.9 <= time.monotonic() - started < 6
    assert not isinstance(caught.value, openai.APIStatusError)  # an event, not a status
    assert text and "stream_deadline_seconds" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "upstream_timeout"
    assert upstream_hung_up(sim)
    record = usage_record(deadline_gw, key)
    assert (record["status"], record["error"]) == (504, "DEADLINE_EXCEEDED")
    assert record["cost"] > 0 and balance(deadline_gw, key) == 1_000_000 - record["cost"]
    ledger_matches_balances(deadline_gw)
    again = sdk.chat.completions.create(
        model=TEXT_MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert again.choices[0].message.content


def test_a_drip_is_cut_by_the_minimum_rate_long_before_the_deadline(
    rate_gw: Gateway, sim: Simulator
) -> None:
    key = new_key(rate_gw, 1_000_000, concurrency_limit=1)
    # Two bytes a second, against a minimum of 200.
    sim.faults({"drip": 0.5, "model": TEXT_MODEL})
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{rate_gw.url}/v1beta/models/{TEXT_MODEL}:streamGenerateContent?alt=sse",
        headers={"x-goog-api-key": key},
        json=PROMPT,
        timeout=READ_TIMEOUT_S,
    ) as response:
        assert response.status_code == 200
        events = [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data:")
        ]
    took = time.monotonic() - started
    # The first event's payload buys payload/200 s on top of the 1 s grace: about 3 s here.
    assert took < 8, took
    assert len(events) == 2 and "candidates" in events[0]
    error = events[-1]["error"]
    assert (error["code"], error["status"]) == (504, "DEADLINE_EXCEEDED")
    assert "stream_min_bytes_per_second" in error["message"]
    assert upstream_hung_up(sim)
    expected = prices.price(
        CATALOG.resolve(TEXT_MODEL), usage_from_response(json.dumps(events[0]).encode())
    )
    assert expected > 0 and balance(rate_gw, key) == 1_000_000 - expected
    assert usage_record(rate_gw, key)["error"] == "DEADLINE_EXCEEDED"
    ledger_matches_balances(rate_gw)


def test_a_cut_image_stream_whose_client_left_is_kept_and_charged(
    rate_gw: Gateway, sim: Simulator
) -> None:
    # The rescue path: the client leaves after the first event; the gateway hears of it only
    # when the drip is cut, and keeps (and charges) what the upstream produced.
    key = new_key(rate_gw, 1_000_000)
    request_id = f"stream-cut-{time.time_ns()}"
    sim.faults({"drip": 0.5, "model": IMAGE_MODEL})
    with httpx.stream(
        "POST",
        f"{rate_gw.url}/v1beta/models/{IMAGE_MODEL}:streamGenerateContent?alt=sse",
        headers={"x-goog-api-key": key, "x-request-id": request_id},
        json=PROMPT,
        timeout=READ_TIMEOUT_S,
    ) as response:
        first = next(response.iter_lines())
    assert first.startswith("data: ")
    url = f"{rate_gw.url}/v1/results/{request_id}"
    deadline = time.monotonic() + 15
    while (found := httpx.get(url, headers={"x-goog-api-key": key})).status_code != 200:
        assert found.status_code in (202, 404) and time.monotonic() < deadline, found.text
        time.sleep(0.2)
    kept = found.json()
    assert kept[0] == json.loads(first[6:])
    assert kept[-1]["error"]["status"] == "DEADLINE_EXCEEDED" and len(kept) == 2
    assert upstream_hung_up(sim)
    # Charged what was produced: an image stream cut before its image is not "no image".
    expected = prices.price(
        CATALOG.resolve(IMAGE_MODEL), usage_from_response(json.dumps(kept[0]).encode())
    )
    assert expected > 0 and balance(rate_gw, key) == 1_000_000 - expected
    ledger_matches_balances(rate_gw)


def test_a_dripping_answer_that_is_not_streamed_ends_at_the_request_deadline(
    rate_gw: Gateway, sim: Simulator
) -> None:
    # The upstream's per-read timeout (30 s here) restarts with each byte; the request
    # deadline (3 s) bounds the whole read.
    key = new_key(rate_gw, 1_000_000, concurrency_limit=1)
    sim.faults({"drip": 0.05, "model": TEXT_MODEL})
    client = sdk(rate_gw, key)
    started = time.monotonic()
    with pytest.raises(genai_errors.APIError) as caught:
        client.models.generate_content(model=TEXT_MODEL, contents="hi")
    assert (caught.value.code, caught.value.status) == (504, "DEADLINE_EXCEEDED")
    assert 2.9 <= time.monotonic() - started < 6
    assert upstream_hung_up(sim)
    assert balance(rate_gw, key) == 1_000_000
    ledger_matches_balances(rate_gw)
    assert client.models.generate_content(model=TEXT_MODEL, contents="hi again").text
