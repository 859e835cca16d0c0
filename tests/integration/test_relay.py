"""The relay to a Gemini upstream (the simulator), end to end over real HTTP."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.genai import errors, types
from PIL import Image

from tests.simulator.processes import stop

from .conftest import (
    SIM_KEY,
    Gateway,
    Simulator,
    sdk_client,
    simulator_upstream,
    start_gateway,
)

GEN = "/v1beta/models/gemini-2.5-flash-image:generateContent"


def png_b64() -> str:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 120, 200)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def post(gw: Gateway, path: str, body: Any, **headers: str) -> httpx.Response:
    headers = headers or {"x-goog-api-key": gw.client_key}
    return httpx.post(f"{gw.url}{path}", json=body, headers=headers, timeout=30)


@pytest.fixture
def sim(simulator: Simulator) -> Iterator[Simulator]:
    simulator.clear()
    yield simulator
    simulator.clear()


def last_forwarded(sim: Simulator) -> dict[str, Any]:
    records = [r for r in sim.requests() if not r["path"].startswith("/_sim")]
    assert records, "the simulator received nothing"
    return records[-1]


# -- forward as it came ---------------------------------------------------------------------


def test_body_forwarded_byte_for_byte_with_upstream_key(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "add a rainbow"},
                    {"inlineData": {"mimeType": "image/png", "data": png_b64()}},
                ],
            }
        ],
        "generationConfig": {
            "imageConfig": {"aspectRatio": "16:9", "imageSize": "1K"},
            "responseModalities": ["TEXT", "IMAGE"],
            "brandNewKnob": {"x": [1, 2]},
        },
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        "unknownTopLevel": True,
    }
    raw = json.dumps(body, indent=1).encode()
    resp = httpx.post(
        f"{sim_gateway.url}{GEN}",
        content=raw,
        headers={"x-goog-api-key": sim_gateway.client_key, "content-type": "application/json"},
    )
    assert resp.status_code == 200, resp.text
    seen = last_forwarded(sim)
    assert seen["body"].encode() == raw  # untouched, whitespace and all
    assert seen["path"] == GEN
    forwarded = {k.lower(): v for k, v in seen["headers"].items()}
    assert forwarded["x-request-id"] == resp.headers["x-request-id"]
    assert {k.lower(): v for k, v in seen["headers"].items()}["x-goog-api-key"] == SIM_KEY
    flat = json.dumps(seen["headers"]).lower()
    assert sim_gateway.client_key.lower() not in flat
    # Unknown response fields come back too.
    assert resp.json()["x_simulator"] == {"version": 1}


def seed_001_request() -> dict[str, Any]:
    """Seed 001's structured-output request (a JSON schema with propertyOrdering)."""
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "seed_001_structured_output.json"
    request = json.loads(fixture.read_text())
    assert request["generationConfig"]["responseSchema"]["items"]["propertyOrdering"]
    return dict(request)


THINKING = {
    "contents": [{"role": "user", "parts": [{"text": "How many r's in strawberry?"}]}],
    "generationConfig": {"thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True}},
}
FUNCTION_CALLING = {
    "contents": [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "c2lnbmF0dXJl",
                }
            ],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}}],
        },
    ],
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}},
                }
            ]
        }
    ],
    "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
}


@pytest.mark.parametrize("name", ["seed-001-structured-output", "thinking", "function-calling"])
def test_requests_pass_through_untouched(sim_gateway: Gateway, sim: Simulator, name: str) -> None:
    request = {
        "seed-001-structured-output": seed_001_request(),
        "thinking": THINKING,
        "function-calling": FUNCTION_CALLING,
    }[name]
    resp = post(sim_gateway, "/v1beta/models/gemini-2.5-flash:generateContent", request)
    assert resp.status_code == 200, resp.text
    assert last_forwarded(sim)["json"] == request
    assert resp.json()["x_simulator"] == {"version": 1}


def test_sdk_request_reaches_upstream_with_image_config(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    sdk_client(sim_gateway).models.generate_content(
        model="nano-banana-pro",
        contents="a fox",
        config=types.GenerateContentConfig(
            image_config=types.ImageConfig(aspect_ratio="21:9", image_size="4K"),
            thinking_config=types.ThinkingConfig(include_thoughts=True),
        ),
    )
    seen = last_forwarded(sim)
    # The alias is mapped to the catalog model, Google's GA id; imageConfig arrives intact.
    assert seen["path"].endswith("/models/gemini-3-pro-image:generateContent")
    assert seen["json"]["generationConfig"]["imageConfig"] == {
        "aspectRatio": "21:9",
        "imageSize": "4K",
    }


@pytest.mark.parametrize(
    "headers, query",
    [
        ({"x-goog-api-key": "{key}"}, ""),
        ({"authorization": "Bearer {key}"}, ""),
        ({"x-api-key": "{key}"}, ""),
        ({}, "?key={key}"),
    ],
)
def test_all_four_key_carriers(sim_gateway: Gateway, headers: dict[str, str], query: str) -> None:
    key = sim_gateway.client_key
    resp = httpx.post(
        f"{sim_gateway.url}/v1/v1beta/models/gemini-2.5-flash:countTokens{query.format(key=key)}",
        json={"contents": [{"parts": [{"text": "hello"}]}]},
        headers={k: v.format(key=key) for k, v in headers.items()},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["totalTokens"] > 0


# -- streaming ------------------------------------------------------------------------------


def test_sse_stream_passes_through(sim_gateway: Gateway, sim: Simulator) -> None:
    body = {"contents": [{"parts": [{"text": "draw"}]}]}
    with httpx.stream(
        "POST",
        f"{sim_gateway.url}/v1beta/models/gemini-2.5-flash-image:streamGenerateContent?alt=sse",
        json=body,
        headers={"x-goog-api-key": sim_gateway.client_key},
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = resp.read().decode()
    events = [json.loads(e[len("data: ") :]) for e in text.split("\r\n\r\n") if e.strip()]
    assert len(events) == 3 and "[DONE]" not in text
    assert events[-1]["usageMetadata"]["totalTokenCount"] > 0
    assert last_forwarded(sim)["query"].get("alt") == "sse"


def test_json_array_stream(sim_gateway: Gateway) -> None:
    resp = post(
        sim_gateway,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        {"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    chunks = resp.json()
    assert isinstance(chunks, list) and len(chunks) == 3
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_sdk_stream_through_relay(sim_gateway: Gateway) -> None:
    chunks = list(
        sdk_client(sim_gateway).models.generate_content_stream(
            model="gemini-2.5-flash", contents="hi"
        )
    )
    assert len(chunks) == 3 and "".join(c.text or "" for c in chunks)


def test_slow_stream_arrives_incrementally(sim_gateway: Gateway, sim: Simulator) -> None:
    sim.faults({"slow_stream": 0.4})
    started = time.perf_counter()
    arrivals = []
    with httpx.stream(
        "POST",
        f"{sim_gateway.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        headers={"x-goog-api-key": sim_gateway.client_key},
    ) as resp:
        for _ in resp.iter_raw():
            arrivals.append(time.perf_counter() - started)
    assert arrivals[0] < 0.35, "the first chunk must not wait for the whole stream"
    assert arrivals[-1] >= 0.75


def test_stream_break_after_first_chunk_ends_with_an_error_event(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    sim.faults({"stream_break": True})
    resp = post(
        sim_gateway,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert resp.status_code == 200  # bytes had gone out: no retry, no status change
    events = [json.loads(e[6:]) for e in resp.text.split("\r\n\r\n") if e.strip()]
    assert "candidates" in events[0]
    assert events[-1]["error"]["status"] in ("UNAVAILABLE", "INTERNAL")


# -- upstream faults become the right Google errors -----------------------------------------


@pytest.mark.parametrize(
    "fault, code, status",
    [
        ({"status": 500}, 500, "INTERNAL"),
        ({"status": 503}, 503, "UNAVAILABLE"),
        ({"status": 429, "retry_after": 7}, 429, "RESOURCE_EXHAUSTED"),
        ({"status": 400, "message": "Invalid value at 'contents'"}, 400, "INVALID_ARGUMENT"),
        ({"reset": True}, 503, "UNAVAILABLE"),
        ({"malformed": True}, 502, "UNAVAILABLE"),
        ({"delay": 7}, 504, "DEADLINE_EXCEEDED"),
    ],
)
def test_upstream_faults_with_the_sdk(
    sim_gateway: Gateway, sim: Simulator, fault: dict[str, Any], code: int, status: str
) -> None:
    sim.faults(fault)
    with pytest.raises(errors.APIError) as info:
        sdk_client(sim_gateway).models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert (info.value.code, info.value.status) == (code, status)
    assert SIM_KEY not in str(info.value)


def test_upstream_429_keeps_retry_after(sim_gateway: Gateway, sim: Simulator) -> None:
    sim.faults({"status": 429, "retry_after": 7})
    resp = post(
        sim_gateway,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        {"contents": [{"parts": [{"text": "x"}]}]},
    )
    assert resp.status_code == 429 and resp.headers["retry-after"] == "7"


def test_prompt_directive_faults_reach_the_simulator(sim_gateway: Gateway) -> None:
    resp = post(
        sim_gateway,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        {"contents": [{"parts": [{"text": "[[sim:status=503]] hello"}]}]},
    )
    assert resp.status_code == 503 and resp.json()["error"]["status"] == "UNAVAILABLE"


# -- failover across upstreams --------------------------------------------------------------


def test_failover_to_the_next_upstream(tmp_path: Path, simulator: Simulator) -> None:
    simulator.clear()
    config = {
        "upstreams": [
            simulator_upstream(
                simulator, name="primary", model_map={"gemini-2.5-flash": "primary-model"}
            ),
            simulator_upstream(simulator, name="backup", priority=1),
        ]
    }
    gw = start_gateway(tmp_path, config)
    try:
        simulator.faults({"status": 503, "model": "primary-model"})
        resp = post(
            gw,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            {"contents": [{"parts": [{"text": "x"}]}]},
        )
        assert resp.status_code == 200, resp.text
        paths = [r["path"] for r in simulator.requests() if not r["path"].startswith("/_sim")]
        assert paths == [
            "/v1beta/models/primary-model:generateContent",
            "/v1beta/models/gemini-2.5-flash:generateContent",
        ]
        # A client fault is not retried elsewhere.
        simulator.clear()
        simulator.faults({"status": 400, "model": "primary-model"})
        resp = post(
            gw,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            {"contents": [{"parts": [{"text": "x"}]}]},
        )
        assert resp.status_code == 400
        assert len([r for r in simulator.requests() if not r["path"].startswith("/_sim")]) == 1
    finally:
        stop(gw.proc)


@pytest.mark.parametrize(
    "style, prefix",
    [("bearer", "/v1/v1beta"), ("query", "/v1beta"), ("x-goog-api-key", "/v1/v1beta")],
)
def test_upstream_auth_styles_and_prefixes(
    tmp_path: Path, simulator: Simulator, style: str, prefix: str
) -> None:
    simulator.clear()
    gw = start_gateway(
        tmp_path,
        {"upstreams": [simulator_upstream(simulator, auth_style=style, path_prefix=prefix)]},
    )
    try:
        resp = post(
            gw,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            {"contents": [{"parts": [{"text": "x"}]}]},
        )
        assert resp.status_code == 200, resp.text
        seen = last_forwarded(simulator)
        headers = {k.lower(): v for k, v in seen["headers"].items()}
        assert seen["path"] == f"{prefix}/models/gemini-2.5-flash:generateContent"
        if style == "bearer":
            assert headers["authorization"] == f"Bearer {SIM_KEY}"
        elif style == "query":
            assert seen["query"]["key"] == SIM_KEY
        else:
            assert headers["x-goog-api-key"] == SIM_KEY
        # The gateway's own log never shows the upstream key, even sent as ?key=.
        assert SIM_KEY not in gw.logs()
    finally:
        stop(gw.proc)


def test_wrong_upstream_key_is_the_operators_problem(tmp_path: Path, simulator: Simulator) -> None:
    gw = start_gateway(tmp_path, {"upstreams": [simulator_upstream(simulator, api_key="wrong")]})
    try:
        resp = post(
            gw,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            {"contents": [{"parts": [{"text": "x"}]}]},
        )
        assert resp.status_code == 503
        assert "credentials" in resp.json()["error"]["message"]
    finally:
        stop(gw.proc)


# -- usage records and logs -----------------------------------------------------------------


def test_usage_records_and_clean_logs(sim_gateway: Gateway) -> None:
    data = png_b64()
    body = {
        "contents": [
            {"parts": [{"text": "edit"}, {"inlineData": {"mimeType": "image/png", "data": data}}]}
        ]
    }
    request_id = f"usage-{time.time_ns()}"
    resp = httpx.post(
        f"{sim_gateway.url}{GEN}",
        json=body,
        headers={"x-goog-api-key": sim_gateway.client_key, "x-request-id": request_id},
    )
    assert resp.status_code == 200 and resp.headers["x-request-id"] == request_id
    bogus = "ng_deadbeef_" + "s3cr3t" * 8
    assert post(sim_gateway, GEN, body, **{"x-goog-api-key": bogus}).status_code == 401
    row = wait_for_usage(sim_gateway, request_id)
    assert row["key_prefix"] == "_".join(sim_gateway.client_key.split("_")[:2])
    assert (row["dialect"], row["method"], row["model"], row["upstream"]) == (
        "gemini",
        "generateContent",
        "gemini-2.5-flash-image",
        "sim",
    )
    assert row["status"] == 200 and row["latency_ms"] >= 0
    assert row["output_image_tokens"] == 1290 and row["images"] == 1
    assert row["input_image_tokens"] == 258 and row["input_text_tokens"] > 0
    out = sim_gateway.cli("usage", "--limit", "50")
    assert out.returncode == 0 and "gemini-2.5-flash-image" in out.stdout
    logs = sim_gateway.logs()
    assert request_id in logs
    for secret in (sim_gateway.client_key, SIM_KEY, bogus, "s3cr3t", data[:40]):
        assert secret not in logs
    assert "Traceback" not in logs


def test_stream_usage_is_recorded_at_the_end(sim_gateway: Gateway) -> None:
    request_id = f"stream-{time.time_ns()}"
    resp = httpx.post(
        f"{sim_gateway.url}/v1beta/models/gemini-2.5-flash-image:streamGenerateContent?alt=sse",
        json={"contents": [{"parts": [{"text": "draw"}]}]},
        headers={"x-goog-api-key": sim_gateway.client_key, "x-request-id": request_id},
    )
    assert resp.status_code == 200
    row = wait_for_usage(sim_gateway, request_id)
    assert row["method"] == "streamGenerateContent" and row["status"] == 200
    assert row["output_image_tokens"] == 1290 and row["images"] == 1


def wait_for_usage(gw: Gateway, request_id: str) -> dict[str, Any]:
    """The usage row for `request_id`, read straight from the gateway's SQLite file."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with sqlite3.connect(gw.data_dir / "nanogate.db") as db:
            db.row_factory = sqlite3.Row
            found = db.execute(
                "SELECT * FROM usage_records WHERE request_id = ?", (request_id,)
            ).fetchone()
        if found is not None:
            return dict(found)
        time.sleep(0.1)
    raise AssertionError(f"no usage record for {request_id}")


def test_client_leaving_mid_stream_is_recorded(sim_gateway: Gateway, sim: Simulator) -> None:
    sim.faults({"slow_stream": 0.5})
    request_id = f"gone-{time.time_ns()}"
    with httpx.stream(
        "POST",
        f"{sim_gateway.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        headers={"x-goog-api-key": sim_gateway.client_key, "x-request-id": request_id},
    ) as resp:
        next(resp.iter_raw())  # the first event, then hang up
    row = wait_for_usage(sim_gateway, request_id)
    assert (row["status"], row["error"]) == (499, "CLIENT_CLOSED")


def test_openapi_readyz_and_metrics(sim_gateway: Gateway) -> None:
    paths = httpx.get(f"{sim_gateway.url}/openapi.json").json()["paths"]
    assert "/v1beta/models/{model}:generateContent" in paths and "/healthz" in paths
    ready = httpx.get(f"{sim_gateway.url}/readyz").json()
    # The gemini upstream's model check (issue 15; its content is tested in
    # test_model_lifecycle.py). The first look starts it: wait for its answer, so its
    # GET …/models reaches the shared simulator now, not in a later test.
    deadline = time.monotonic() + 15
    while not ready["models"] and time.monotonic() < deadline:
        time.sleep(0.05)
        ready = httpx.get(f"{sim_gateway.url}/readyz").json()
    assert set(ready.pop("models")) == {"sim"}
    assert ready == {
        "status": "ready",
        "database": "up",
        "redis": None,  # no redis_url
        "storage": "up",
        "upstreams": {"sim": "up"},
    }
    metrics = httpx.get(f"{sim_gateway.url}/metrics").text
    assert 'nanogate_requests_total{dialect="gemini"' in metrics
    assert "nanogate_upstream_errors_total" in metrics


def test_a_client_timeout_does_not_abort_the_upstream_call(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    sim.faults({"delay": 1.0})
    request_id = f"impatient-{time.time_ns()}"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{sim_gateway.url}{GEN}",
            json={"contents": [{"parts": [{"text": "draw"}]}]},
            headers={"x-goog-api-key": sim_gateway.client_key, "x-request-id": request_id},
            timeout=0.3,
        )
    # The call runs to completion and is recorded once, with its image.
    row = wait_for_usage(sim_gateway, request_id)
    assert row["status"] == 200 and row["images"] == 1
