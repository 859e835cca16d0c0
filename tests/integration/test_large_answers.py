"""Image answers of megabytes, which the gateway keeps in the pieces it read them in and sends
without joining (core/payload.py): relayed byte for byte, priced off their tail as a small
answer with the same usage is, converted for chat completions, kept for a replay or a client
that comes back, and refused when they are not a JSON object, in each dialect, at no cost.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from .conftest import Gateway, Simulator
from .test_credits import balance, new_key

MODEL = "gemini-2.5-flash-image"
GEN = f"/v1beta/models/{MODEL}:generateContent"
PROMPT = {"contents": [{"role": "user", "parts": [{"text": "a kite"}]}]}
# Past the size above which an answer is no longer parsed whole (1 MiB), in many socket reads.
BIG = 3 * 1024 * 1024
USAGE = {
    "promptTokenCount": 11,
    "candidatesTokenCount": 1302,
    "totalTokenCount": 1313,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 11}],
    "candidatesTokensDetails": [
        {"modality": "TEXT", "tokenCount": 12},
        {"modality": "IMAGE", "tokenCount": 1290},
    ],
}


def answer(images: int, size: int) -> dict[str, Any]:
    """A GenerateContentResponse with `images` images of `size` random bytes each (none: a
    thought signature that long, which is no image), USAGE after the candidates, and fields
    after that (as Google's answers have)."""
    data = base64.b64encode(os.urandom(size)).decode()
    parts: list[dict[str, Any]] = [{"text": "here it is"}]
    parts += [{"inlineData": {"mimeType": "image/png", "data": data}}] * images
    if not images:
        parts[0]["thoughtSignature"] = data
    return {
        "candidates": [
            {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": USAGE,
        "modelVersion": MODEL,
        "responseId": "large-answers",
    }


@pytest.fixture
def sim(simulator: Simulator) -> Iterator[Simulator]:
    simulator.clear()
    yield simulator
    simulator.clear()


def gemini(gw: Gateway, key: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}{GEN}", headers={"x-goog-api-key": key, **headers}, json=PROMPT, timeout=60
    )


def chat(gw: Gateway, key: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a kite"}]}
    return httpx.post(
        f"{gw.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json=body,
        timeout=60,
    )


@pytest.mark.parametrize("images", [0, 1, 2])
def test_a_large_answer_is_relayed_byte_for_byte_and_priced_as_a_small_one(
    sim_gateway: Gateway, sim: Simulator, images: int
) -> None:
    key = new_key(sim_gateway, 10_000_000)
    small, big = answer(images, 100), answer(images, BIG)
    sim.faults({"body": small, "model": MODEL}, {"body": big, "model": MODEL})
    twin = gemini(sim_gateway, key)
    relayed = gemini(sim_gateway, key)
    assert twin.status_code == relayed.status_code == 200
    sent = orjson.dumps(big)
    assert len(sent) > BIG
    assert relayed.content == sent
    assert relayed.headers["content-length"] == str(len(sent))
    # The usage read off the big answer's tail, and its images counted, as in the small one's.
    cost = int(relayed.headers["x-nanogate-cost"])
    assert cost == int(twin.headers["x-nanogate-cost"])
    assert (cost > 0) == (images > 0)  # no image: nothing charged
    assert balance(sim_gateway, key) == 10_000_000 - 2 * cost


def test_a_large_answer_reaches_chat_completions_whole(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    key = new_key(sim_gateway, 10_000_000)
    big = answer(1, BIG)
    sim.faults({"body": big, "model": MODEL}, {"body": big, "model": MODEL})
    native = gemini(sim_gateway, key)
    converted = chat(sim_gateway, key)
    assert converted.status_code == 200
    assert converted.headers["content-length"] == str(len(converted.content))
    doc = converted.json()
    message = doc["choices"][0]["message"]
    assert message["content"] == "here it is"
    data = big["candidates"][0]["content"]["parts"][1]["inlineData"]["data"]
    assert message["images"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + data}}
    ]
    assert doc["usage"]["prompt_tokens"] == 11 and doc["usage"]["completion_tokens"] == 1302
    assert converted.headers["x-nanogate-cost"] == native.headers["x-nanogate-cost"] != "0"


def test_a_large_answer_is_kept_for_a_replay_and_for_its_named_call(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    key = new_key(sim_gateway, 10_000_000)
    big = answer(1, BIG)
    sim.faults({"body": big, "model": MODEL}, {"body": big, "model": MODEL})
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    first = gemini(sim_gateway, key, **idem)
    again = gemini(sim_gateway, key, **idem)
    assert first.content == again.content == orjson.dumps(big)
    assert again.headers["x-nanogate-idempotent-replay"] == "true"
    cost = int(first.headers["x-nanogate-cost"])
    assert cost > 0 and balance(sim_gateway, key) == 10_000_000 - cost

    request_id = f"large-{uuid.uuid4().hex[:12]}"
    named = gemini(sim_gateway, key, **{"x-request-id": request_id})
    kept = httpx.get(
        f"{sim_gateway.url}/v1/results/{request_id}",
        headers={"x-goog-api-key": key},
        timeout=60,
    )
    assert named.status_code == kept.status_code == 200
    assert kept.content == named.content == orjson.dumps(big)


@pytest.mark.parametrize("dialect", ["gemini", "chat"])
def test_a_large_answer_that_is_not_an_object_is_a_502_at_no_cost(
    sim_gateway: Gateway, sim: Simulator, dialect: str
) -> None:
    key = new_key(sim_gateway, 10_000_000)
    sim.faults({"body": [answer(1, BIG)], "model": MODEL})
    response = gemini(sim_gateway, key) if dialect == "gemini" else chat(sim_gateway, key)
    assert response.status_code == 502
    error = response.json()["error"]
    assert "Bad upstream answer" in error["message"]
    if dialect == "chat":
        assert error["code"] == "bad_upstream_answer"
    else:
        assert error["status"] == "UNAVAILABLE"
    assert balance(sim_gateway, key) == 10_000_000
