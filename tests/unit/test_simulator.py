"""The upstream simulator, exercised over real HTTP with a real aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from PIL import Image

from tests.simulator import Fault, SimState
from tests.simulator.faults import FaultError, fault_from_body, fault_from_json

from .sim_client import SimClient, running

REPO = Path(__file__).resolve().parents[2]
KEY = "sim-test-key"
PREFIXES = ["/v1beta", "/v1/v1beta", "/v1"]
IMAGE_MODEL = "gemini-2.5-flash-image"
TEXT_MODEL = "gemini-2.5-flash"


def body(text: str = "draw a nano banana", **extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


class Sim(SimClient):
    async def post(
        self,
        model: str,
        method: str = "generateContent",
        payload: Any = None,
        *,
        prefix: str = "/v1beta",
        query: str = "",
        key: str | None = KEY,
    ) -> aiohttp.ClientResponse:
        headers = {"x-goog-api-key": key} if key is not None else {}
        url = self.url(f"{prefix}/models/{model}:{method}{query}")
        data = orjson.dumps(body() if payload is None else payload)
        return await self.session.post(url, data=data, headers=headers)


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async with running(SimState(api_key=KEY), Sim) as client:
        yield client


async def read_json(resp: aiohttp.ClientResponse) -> Any:
    async with resp:
        return orjson.loads(await resp.read())


def sse_events(raw: bytes) -> list[Any]:
    events = [e for e in raw.split(b"\r\n\r\n") if e]
    assert all(e.startswith(b"data: ") for e in events)
    return [orjson.loads(e[len(b"data: ") :]) for e in events]


# --- normal answers -----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_text_generate(sim: Sim, prefix: str) -> None:
    resp = await sim.post(TEXT_MODEL, payload=body("hello simulator", mystery=1), prefix=prefix)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    data = await read_json(resp)
    cand = data["candidates"][0]
    assert cand["finishReason"] == "STOP"
    assert cand["content"]["role"] == "model"
    assert cand["content"]["parts"] == [{"text": "simulated reply to: hello simulator"}]
    usage = data["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert usage["promptTokensDetails"][0]["modality"] == "TEXT"
    assert usage["candidatesTokensDetails"]
    assert data["modelVersion"] == TEXT_MODEL
    assert data["responseId"]
    assert data["simulatorEcho"] == {"unknownRequestKeys": ["mystery"]}
    assert data["x_simulator"] == {"version": 1}


async def test_prompt_summary_is_first_40_chars(sim: Sim) -> None:
    data = await read_json(await sim.post(TEXT_MODEL, payload=body("x" * 100)))
    assert data["candidates"][0]["content"]["parts"][0]["text"].endswith(": " + "x" * 40)


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_image_generate(sim: Sim, prefix: str) -> None:
    data = await read_json(await sim.post(IMAGE_MODEL, prefix=prefix))
    parts = data["candidates"][0]["content"]["parts"]
    assert "text" in parts[0]
    inline = parts[1]["inlineData"]
    assert inline["mimeType"] == "image/png"
    img = Image.open(io.BytesIO(base64.b64decode(inline["data"])))
    assert img.format == "PNG"
    details = data["usageMetadata"]["candidatesTokensDetails"]
    assert {"modality": "IMAGE", "tokenCount": 1290} in details
    assert data["usageMetadata"]["candidatesTokenCount"] == sum(d["tokenCount"] for d in details)


async def test_image_only_modality_has_no_text(sim: Sim) -> None:
    payload = body(generationConfig={"responseModalities": ["IMAGE"]})
    data = await read_json(await sim.post(IMAGE_MODEL, payload=payload))
    parts = data["candidates"][0]["content"]["parts"]
    assert [list(p) for p in parts] == [["inlineData"]]
    assert data["simulatorEcho"]["unknownRequestKeys"] == []


@pytest.mark.parametrize("size", [10, 100_000])
async def test_image_bytes_exact_size(size: int) -> None:
    async with running(SimState(image_bytes=size), SimClient) as sim:
        url = sim.url(f"/v1beta/models/{IMAGE_MODEL}:generateContent")
        async with sim.session.post(url, json=body()) as resp:
            data = await resp.json()
    raw = base64.b64decode(data["candidates"][0]["content"]["parts"][1]["inlineData"]["data"])
    assert len(raw) == size
    if size > 1000:
        # Big payloads are padded PNGs, so anything that decodes the image still can.
        assert Image.open(io.BytesIO(raw)).size == (64, 64)


async def test_image_payload_is_cached(sim: Sim) -> None:
    a = await read_json(await sim.post(IMAGE_MODEL))
    b = await read_json(await sim.post(IMAGE_MODEL))
    data_a = a["candidates"][0]["content"]["parts"][1]["inlineData"]["data"]
    data_b = b["candidates"][0]["content"]["parts"][1]["inlineData"]["data"]
    assert data_a == data_b
    assert a["responseId"] != b["responseId"]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("model", [IMAGE_MODEL, TEXT_MODEL])
async def test_stream_sse(sim: Sim, prefix: str, model: str) -> None:
    resp = await sim.post(model, "streamGenerateContent", prefix=prefix, query="?alt=sse")
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    async with resp:
        raw = await resp.read()
    assert b"[DONE]" not in raw
    chunks = sse_events(raw)
    assert len(chunks) == 3
    assert all(c["x_simulator"] == {"version": 1} for c in chunks)
    assert len({c["responseId"] for c in chunks}) == 1
    assert "finishReason" not in chunks[0]["candidates"][0]
    final = chunks[-1]
    assert final["candidates"][0]["finishReason"] == "STOP"
    assert "candidatesTokenCount" in final["usageMetadata"]
    parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
    if model == IMAGE_MODEL:
        assert any("inlineData" in p for p in parts)
    else:
        text = "".join(p.get("text", "") for p in parts)
        assert text == "simulated reply to: draw a nano banana"


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_stream_array(sim: Sim, prefix: str) -> None:
    resp = await sim.post(IMAGE_MODEL, "streamGenerateContent", prefix=prefix)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    chunks = await read_json(resp)
    assert isinstance(chunks, list) and len(chunks) == 3
    assert chunks[1]["candidates"][0]["content"]["parts"][0]["inlineData"]["mimeType"] == (
        "image/png"
    )
    assert chunks[2]["usageMetadata"]["totalTokenCount"] > 1290


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_count_tokens(sim: Sim, prefix: str) -> None:
    payload = {
        "contents": [
            {
                "parts": [
                    {"text": "abcdefgh"},
                    {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
                ]
            }
        ]
    }
    data = await read_json(await sim.post(IMAGE_MODEL, "countTokens", payload, prefix=prefix))
    assert data["totalTokens"] == 2 + 258
    wrapped = {"generateContentRequest": {"model": "models/x", **payload}}
    data = await read_json(await sim.post(IMAGE_MODEL, "countTokens", wrapped, prefix=prefix))
    assert data["totalTokens"] == 2 + 258


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_models_routes(sim: Sim, prefix: str) -> None:
    headers = {"x-goog-api-key": KEY}
    async with sim.session.get(sim.url(f"{prefix}/models"), headers=headers) as resp:
        listing = await resp.json()
    names = [m["name"] for m in listing["models"]]
    assert f"models/{IMAGE_MODEL}" in names
    url = sim.url(f"{prefix}/models/{IMAGE_MODEL}")
    async with sim.session.get(url, headers=headers) as resp:
        model = await resp.json()
    assert model["name"] == f"models/{IMAGE_MODEL}"
    assert "generateContent" in model["supportedGenerationMethods"]
    assert model["inputTokenLimit"] > 0
    url = sim.url(f"{prefix}/models/no-such-model")
    async with sim.session.get(url, headers=headers) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["status"] == "NOT_FOUND"


async def test_the_models_list_is_configurable(sim: Sim) -> None:
    headers = {"x-goog-api-key": KEY}
    names = ["gemini-3-pro-image", "my-model"]
    async with sim.session.post(sim.url("/_sim/config"), json={"models": names}) as resp:
        assert (await resp.json())["models"] == names
    async with sim.session.get(sim.url("/v1beta/models"), headers=headers) as resp:
        listing = await resp.json()
    assert [m["name"] for m in listing["models"]] == [f"models/{n}" for n in names]
    async with sim.session.get(sim.url("/v1beta/models/my-model"), headers=headers) as resp:
        assert resp.status == 200 and (await resp.json())["displayName"] == "my-model"
    url = sim.url(f"/v1beta/models/{IMAGE_MODEL}")
    async with sim.session.get(url, headers=headers) as resp:
        assert resp.status == 404  # no longer listed
    async with sim.session.post(sim.url("/_sim/config"), json={"models": "x"}) as resp:
        assert resp.status == 400


async def test_unknown_method_and_path(sim: Sim) -> None:
    resp = await sim.post(TEXT_MODEL, "fooBar")
    assert resp.status == 404
    assert (await read_json(resp))["error"]["status"] == "NOT_FOUND"
    async with sim.session.get(sim.url("/nope")) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == 404


async def test_bad_requests(sim: Sim) -> None:
    headers = {"x-goog-api-key": KEY}
    url = sim.url(f"/v1beta/models/{TEXT_MODEL}:generateContent")
    async with sim.session.post(url, data=b"{not json", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["status"] == "INVALID_ARGUMENT"
    resp = await sim.post(TEXT_MODEL, payload={"generationConfig": {}})
    assert resp.status == 400
    assert "contents" in (await read_json(resp))["error"]["message"]


# --- auth ---------------------------------------------------------------------------------


async def test_auth_missing_key(sim: Sim) -> None:
    resp = await sim.post(TEXT_MODEL, key=None)
    assert resp.status == 403
    error = (await read_json(resp))["error"]
    assert error["status"] == "PERMISSION_DENIED"
    assert error["code"] == 403
    assert "unregistered callers" in error["message"]


async def test_auth_bad_key(sim: Sim) -> None:
    resp = await sim.post(TEXT_MODEL, key="wrong")
    assert resp.status == 400
    error = (await read_json(resp))["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["message"] == "API key not valid. Please pass a valid API key."
    assert "wrong" not in orjson.dumps(error).decode()


@pytest.mark.parametrize("how", ["header", "bearer", "query"])
async def test_auth_ways(sim: Sim, how: str) -> None:
    url = sim.url(f"/v1/v1beta/models/{TEXT_MODEL}:generateContent")
    headers: dict[str, str] = {}
    if how == "header":
        headers["x-goog-api-key"] = KEY
    elif how == "bearer":
        headers["Authorization"] = f"Bearer {KEY}"
    else:
        url += f"?key={KEY}"
    async with sim.session.post(url, json=body(), headers=headers) as resp:
        assert resp.status == 200


async def test_no_auth_when_no_key_configured() -> None:
    async with (
        running(SimState(), SimClient) as sim,
        sim.session.get(sim.url("/v1beta/models")) as resp,
    ):
        assert resp.status == 200


async def test_control_routes_need_no_key(sim: Sim) -> None:
    for path in ("/_sim/requests", "/_sim/faults", "/_sim/stats", "/_sim/config"):
        async with sim.session.get(sim.url(path)) as resp:
            assert resp.status == 200, path


# --- faults -------------------------------------------------------------------------------

STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@pytest.mark.parametrize(("code", "name"), list(STATUSES.items()))
async def test_fault_status_queue(sim: Sim, code: int, name: str) -> None:
    await sim.faults({"status": code})
    resp = await sim.post(TEXT_MODEL)
    assert resp.status == code
    assert (await read_json(resp)) == {
        "error": {"code": code, "message": f"simulated {code}", "status": name}
    }
    # One fault, one request: the next call is normal again.
    assert (await sim.post(TEXT_MODEL)).status == 200


@pytest.mark.parametrize(("code", "name"), [(503, "UNAVAILABLE"), (504, "DEADLINE_EXCEEDED")])
async def test_fault_status_directive(sim: Sim, code: int, name: str) -> None:
    resp = await sim.post(TEXT_MODEL, payload=body(f"hi [[sim:status={code}]]"))
    assert resp.status == code
    assert (await read_json(resp))["error"]["status"] == name


async def test_fault_retry_after(sim: Sim) -> None:
    await sim.faults({"status": 429, "retry_after": 7})
    resp = await sim.post(TEXT_MODEL)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    resp.release()
    resp = await sim.post(TEXT_MODEL, payload=body("[[sim:status=429,retry_after=3]]"))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3"
    assert (await read_json(resp))["error"]["status"] == "RESOURCE_EXHAUSTED"


async def test_fault_delay(sim: Sim) -> None:
    await sim.faults({"delay": 0.3})
    t0 = time.monotonic()
    assert (await sim.post(TEXT_MODEL)).status == 200
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    assert (await sim.post(TEXT_MODEL, payload=body("x [[sim:delay=0.3]]"))).status == 200
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    assert (await sim.post(TEXT_MODEL)).status == 200
    assert time.monotonic() - t0 < 0.3


async def test_fault_reset(sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await sim.faults({"reset": True})
    with pytest.raises(aiohttp.ClientError):
        await read_json(await sim.post(TEXT_MODEL))
    with pytest.raises(aiohttp.ClientError):
        await read_json(await sim.post(TEXT_MODEL, payload=body("[[sim:reset]]")))
    assert (await sim.post(TEXT_MODEL)).status == 200
    await asyncio.sleep(0.05)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING or rec.exc_info]


async def test_fault_malformed(sim: Sim) -> None:
    await sim.faults({"malformed": True})
    for resp in (
        await sim.post(TEXT_MODEL),
        await sim.post(TEXT_MODEL, payload=body("[[sim:malformed]]")),
    ):
        assert resp.status == 200
        assert resp.content_type == "application/json"
        async with resp:
            raw = await resp.read()
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)


async def test_fault_malformed_stream(sim: Sim) -> None:
    await sim.faults({"malformed": True})
    resp = await sim.post(TEXT_MODEL, "streamGenerateContent", query="?alt=sse")
    async with resp:
        raw = await resp.read()
    assert raw.startswith(b"data: ")
    with pytest.raises(orjson.JSONDecodeError):
        sse_events(raw)


async def test_fault_slow_stream(sim: Sim) -> None:
    await sim.faults({"slow_stream": 0.2})
    resp = await sim.post(IMAGE_MODEL, "streamGenerateContent", query="?alt=sse")
    stamps = []
    async with resp:
        async for line in resp.content:
            if line.startswith(b"data: "):
                stamps.append(time.monotonic())
    assert len(stamps) == 3
    assert stamps[2] - stamps[0] >= 0.35
    # Through the prompt, and for the array form too.
    payload = body("[[sim:slow_stream=0.2]]")
    t0 = time.monotonic()
    chunks = await read_json(await sim.post(TEXT_MODEL, "streamGenerateContent", payload))
    assert len(chunks) == 3
    assert time.monotonic() - t0 >= 0.35


async def test_fault_drip(sim: Sim) -> None:
    # The first event whole, then a byte at a time: each read comes quickly, the stream never
    # ends; the handler stops when its client leaves.
    await sim.faults({"drip": 0.01})
    resp = await sim.post(TEXT_MODEL, "streamGenerateContent", query="?alt=sse")
    pieces: list[bytes] = []
    async with resp:
        first = await resp.content.readuntil(b"\r\n\r\n")
        assert sse_events(first)[0]["candidates"]
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            pieces.append(await asyncio.wait_for(resp.content.read(1), 0.2))
    assert 10 < len(pieces) < 60 and pieces[:6] == [b"d", b"a", b"t", b"a", b":", b" "]
    for _ in range(50):
        if sim.state.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert sim.state.in_flight == 0
    # A generateContent answer drips from its first byte, through the prompt too.
    resp = await sim.post(TEXT_MODEL, payload=body("[[sim:drip=0.01]]"))
    async with resp:
        assert resp.status == 200
        assert await asyncio.wait_for(resp.content.read(1), 0.2) == b"{"


async def test_slow_stream_ignored_for_plain_generate(sim: Sim) -> None:
    t0 = time.monotonic()
    assert (await sim.post(TEXT_MODEL, payload=body("[[sim:slow_stream=1]]"))).status == 200
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("how", ["queue", "directive"])
@pytest.mark.parametrize("sse", [True, False])
async def test_fault_stream_break(
    sim: Sim, how: str, sse: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    payload = body("[[sim:stream_break]]") if how == "directive" else body()
    if how == "queue":
        await sim.faults({"stream_break": True})
    query = "?alt=sse" if sse else ""
    resp = await sim.post(IMAGE_MODEL, "streamGenerateContent", payload, query=query)
    assert resp.status == 200
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with resp:
            async for data in resp.content.iter_any():
                received += data
    if sse:
        first = orjson.loads(received.split(b"\r\n\r\n")[0][len(b"data: ") :])
    else:
        first = orjson.loads(received[1:])
    assert first["candidates"][0]["content"]["parts"][0]["text"]
    assert (await sim.post(IMAGE_MODEL)).status == 200
    await asyncio.sleep(0.05)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING or rec.exc_info]


async def test_fault_body(sim: Sim) -> None:
    custom = {"candidates": [], "promptFeedback": {"blockReason": "SAFETY"}}
    await sim.faults({"body": custom}, {"body": [{"a": 1}, {"b": 2}]})
    assert (await read_json(await sim.post(TEXT_MODEL))) == custom
    resp = await sim.post(TEXT_MODEL, "streamGenerateContent", query="?alt=sse")
    async with resp:
        assert sse_events(await resp.read()) == [{"a": 1}, {"b": 2}]


async def test_fault_queue_fifo_and_clear(sim: Sim) -> None:
    await sim.faults({"status": 500}, {"status": 503})
    async with sim.session.get(sim.url("/_sim/faults")) as resp:
        assert await resp.json() == [{"status": 500}, {"status": 503}]
    assert (await sim.post(TEXT_MODEL)).status == 500
    assert (await sim.post(TEXT_MODEL)).status == 503
    assert (await sim.post(TEXT_MODEL)).status == 200
    await sim.faults({"status": 500})
    async with sim.session.delete(sim.url("/_sim/faults")) as resp:
        assert resp.status == 200
    assert (await sim.post(TEXT_MODEL)).status == 200


async def test_fault_single_object_accepted(sim: Sim) -> None:
    async with sim.session.post(sim.url("/_sim/faults"), json={"status": 502}) as resp:
        assert (await resp.json())["queued"] == 1
    resp = await sim.post(TEXT_MODEL)
    assert resp.status == 502
    assert (await read_json(resp))["error"]["code"] == 502


async def test_fault_model_restricted(sim: Sim) -> None:
    await sim.faults({"status": 503, "model": IMAGE_MODEL}, {"status": 500})
    # The text request skips the image-only fault and takes the next unrestricted one.
    assert (await sim.post(TEXT_MODEL)).status == 500
    assert (await sim.post(TEXT_MODEL)).status == 200
    assert (await sim.post(IMAGE_MODEL)).status == 503
    assert (await sim.post(IMAGE_MODEL)).status == 200


async def test_failed_auth_does_not_consume_fault(sim: Sim) -> None:
    await sim.faults({"status": 503})
    assert (await sim.post(TEXT_MODEL, key="bad")).status == 400
    assert (await sim.post(TEXT_MODEL)).status == 503


async def test_queue_and_directive_combine(sim: Sim) -> None:
    await sim.faults({"delay": 0.2, "status": 500})
    t0 = time.monotonic()
    resp = await sim.post(TEXT_MODEL, payload=body("[[sim:status=503]]"))
    assert resp.status == 503  # the prompt wins where both set a field
    assert time.monotonic() - t0 >= 0.2  # the queued delay still applies


async def test_directive_in_other_json_shapes(sim: Sim) -> None:
    # Directives are found anywhere in the raw body, e.g. in a system instruction.
    payload = body(systemInstruction={"parts": [{"text": "[[sim:status=401]]"}]})
    assert (await sim.post(TEXT_MODEL, payload=payload)).status == 401


@pytest.mark.parametrize(
    "bad",
    [{"status": "abc"}, {"delay": -1}, {"nope": 1}, ["not an object"], {"model": 3}],
)
async def test_bad_fault_rejected(sim: Sim, bad: Any) -> None:
    payload = bad if isinstance(bad, list) else [bad]
    async with sim.session.post(sim.url("/_sim/faults"), json=payload) as resp:
        assert resp.status == 400
    async with sim.session.get(sim.url("/_sim/faults")) as resp:
        assert await resp.json() == []


async def test_control_body_must_be_json(sim: Sim) -> None:
    async with sim.session.post(sim.url("/_sim/faults"), data=b"{oops") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["status"] == "INVALID_ARGUMENT"


def test_fault_parsing() -> None:
    raw = b'{"t": "a [[sim:status=429, retry_after=7]] b [[sim:delay=1.5,reset,bogus=1]]"}'
    fault = fault_from_body(raw)
    assert fault == Fault(status=429, retry_after="7", delay=1.5, reset=True)
    assert fault_from_body(b'{"t": "plain"}') is None
    assert fault_from_body(b"[[sim:nothing_known]]") is None
    assert fault_from_json({"retry_after": 7.0}).retry_after == "7"
    assert fault_from_json({"body": None}).has_body
    with pytest.raises(FaultError):
        fault_from_json({"reset": "maybe"})
    merged = Fault(status=500, delay=1).merged_with(Fault(status=503))
    assert (merged.status, merged.delay) == (503, 1)


# --- recording, stats, config -------------------------------------------------------------


async def test_recording(sim: Sim) -> None:
    await sim.post(TEXT_MODEL, payload=body("record me"), query="?alt=sse&x=1")
    url = sim.url(f"/v1/v1beta/models/{IMAGE_MODEL}:generateContent")
    async with sim.session.post(url, data=b"{bad", headers={"x-goog-api-key": KEY}):
        pass
    async with sim.session.get(sim.url("/_sim/requests")) as resp:
        records = await resp.json()
    assert len(records) == 2  # control calls are not recorded
    first, second = records
    assert first["method"] == "POST"
    assert first["path"] == f"/v1beta/models/{TEXT_MODEL}:generateContent"
    assert first["query"] == {"alt": "sse", "x": "1"}
    assert first["headers"]["x-goog-api-key"] == KEY
    assert first["json"] == body("record me")
    assert orjson.loads(first["body"]) == body("record me")
    assert isinstance(first["time"], float)
    assert second["json"] is None
    assert second["body"] == "{bad"
    async with sim.session.delete(sim.url("/_sim/requests")) as resp:
        assert resp.status == 200
    async with sim.session.get(sim.url("/_sim/requests")) as resp:
        assert await resp.json() == []


async def test_recording_can_be_disabled() -> None:
    state = SimState(record=False)
    async with running(state, SimClient) as sim, sim.session.get(sim.url("/v1beta/models")):
        pass
    assert len(state.requests) == 0
    assert state.total == 1


async def test_stats(sim: Sim) -> None:
    await sim.faults({"delay": 0.3}, {"delay": 0.3}, {"delay": 0.3})

    async def call() -> int:
        resp = await sim.post(TEXT_MODEL)
        resp.release()
        return resp.status

    tasks = [asyncio.create_task(call()) for _ in range(3)]
    await asyncio.sleep(0.15)
    async with sim.session.get(sim.url("/_sim/stats")) as resp:
        during = await resp.json()
    assert during["in_flight"] == 3
    assert await asyncio.gather(*tasks) == [200, 200, 200]
    async with sim.session.get(sim.url("/_sim/stats")) as resp:
        after = await resp.json()
    assert after == {"requests": 3, "in_flight": 0, "max_in_flight": 3}
    async with sim.session.post(sim.url("/_sim/reset")) as resp:
        assert resp.status == 200
    async with sim.session.get(sim.url("/_sim/stats")) as resp:
        assert await resp.json() == {"requests": 0, "in_flight": 0, "max_in_flight": 0}


async def test_config(sim: Sim) -> None:
    cfg = {"image_bytes": 5000, "api_key": None}
    async with sim.session.post(sim.url("/_sim/config"), json=cfg) as resp:
        view = await resp.json()
    assert view["image_bytes"] == 5000
    assert view["api_key_required"] is False
    data = await read_json(await sim.post(IMAGE_MODEL, key=None))
    inline = data["candidates"][0]["content"]["parts"][1]["inlineData"]["data"]
    assert len(base64.b64decode(inline)) == 5000
    async with sim.session.post(sim.url("/_sim/config"), json={"record": "yes"}) as resp:
        assert resp.status == 400


# --- clients and the CLI ------------------------------------------------------------------


@pytest.mark.parametrize("api_version", [None, "v1beta"])
async def test_google_genai_sdk_against_simulator(sim: Sim, api_version: str | None) -> None:
    pytest.importorskip("google.genai")
    from google import genai
    from google.genai import errors, types

    # The SDK's default version is v1 (3.x); v1beta is what most docs and gateways use.
    options = types.HttpOptions(base_url=sim.base, api_version=api_version)
    client = genai.Client(api_key=KEY, http_options=options)
    resp = await client.aio.models.generate_content(model=IMAGE_MODEL, contents="a banana")
    assert resp.candidates and resp.candidates[0].content
    parts = resp.candidates[0].content.parts
    assert parts is not None and parts[1].inline_data is not None
    assert parts[1].inline_data.data and parts[1].inline_data.data.startswith(b"\x89PNG")
    assert resp.usage_metadata is not None and resp.usage_metadata.total_token_count
    chunks = [
        c
        async for c in await client.aio.models.generate_content_stream(
            model=TEXT_MODEL, contents="stream it"
        )
    ]
    assert "".join(c.text or "" for c in chunks) == "simulated reply to: stream it"
    await sim.faults({"status": 429})
    with pytest.raises(errors.APIError) as info:
        await client.aio.models.generate_content(model=TEXT_MODEL, contents="x")
    assert info.value.code == 429
    assert info.value.status == "RESOURCE_EXHAUSTED"


async def test_cli_prints_listening_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.simulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--api-key",
        "cli-key",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("SIMULATOR LISTENING http://127.0.0.1:")
        base = line.split()[-1]
        assert int(base.rsplit(":", 1)[1]) > 0
        async with aiohttp.ClientSession() as session:
            url = f"{base}/v1beta/models/{TEXT_MODEL}:generateContent?key=cli-key"
            async with session.post(url, json=body()) as resp:
                assert resp.status == 200
    finally:
        proc.terminate()
        rest = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
    assert rest[0] == b""  # exactly one line on stdout
