"""The `task` and `openai` upstream kinds against the simulator's vendor endpoints, driven through
every client dialect: google-genai, the task API and the openai SDK, over real HTTP."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from google.genai import types
from PIL import Image

from tests.simulator.processes import stop

from .conftest import SIM_KEY, Gateway, Simulator, sdk_client, start_gateway, start_simulator

IMAGE_MODEL = "gemini-2.5-flash-image"
PRO_MODEL = "gemini-3-pro-image-preview"
EGRESS = {"NANOGATE_EGRESS_ALLOWLIST": "127.0.0.1"}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    simulator = start_simulator("--task-seconds", "0.2")
    yield simulator
    stop(simulator.proc)


def vendor(sim: Simulator, kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": f"{kind}-{extra.get('protocol') or extra.get('mode') or 'native'}",
        "kind": kind,
        "base_url": sim.url,
        "api_key": SIM_KEY,
        "timeout_s": 20,
        "breaker_failures": 1000,
        **extra,
    }


# One gateway per vendor shape: the upstream each fronts.
SHAPES: dict[str, dict[str, Any]] = {
    "taskinfo": {
        "kind": "task",
        "protocol": "taskinfo",
        "model_map": {IMAGE_MODEL: "google/nano-banana", PRO_MODEL: "nano-banana-pro"},
        "edit_model_map": {IMAGE_MODEL: "google/nano-banana-edit"},
    },
    "recordinfo": {
        "kind": "task",
        "protocol": "recordinfo",
        "model_map": {PRO_MODEL: "nano-banana-pro"},
    },
    "chat": {"kind": "openai", "mode": "chat"},
    "images": {"kind": "openai", "mode": "images"},
}


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory, sim: Simulator) -> Iterator[Any]:
    """Each shape's gateway, started when a test first asks for it."""
    started: dict[str, Gateway] = {}

    def get(shape: str) -> Gateway:
        if shape not in started:
            config = {"upstreams": [vendor(sim, **SHAPES[shape])]}
            tmp = tmp_path_factory.mktemp(shape)
            started[shape] = start_gateway(tmp, config, **EGRESS)
        return started[shape]

    yield get
    for gw in started.values():
        stop(gw.proc)


@pytest.fixture
def taskinfo(gateways: Any) -> Gateway:
    gw: Gateway = gateways("taskinfo")
    return gw


@pytest.fixture
def recordinfo(gateways: Any) -> Gateway:
    gw: Gateway = gateways("recordinfo")
    return gw


@pytest.fixture
def chat_vendor(gateways: Any) -> Gateway:
    gw: Gateway = gateways("chat")
    return gw


@pytest.fixture
def images_vendor(gateways: Any) -> Gateway:
    gw: Gateway = gateways("images")
    return gw


def vendor_calls(sim: Simulator, path: str) -> list[dict[str, Any]]:
    found = [r for r in sim.requests() if r["path"] == path]
    for record in found:
        record["headers"] = {k.lower(): v for k, v in record["headers"].items()}
    return found


def png(width: int = 40, height: int = 30) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (220, 120, 20)).save(out, "PNG")
    return out.getvalue()


def gemini_image(gw: Gateway, prompt: str, **config: Any) -> Image.Image:
    response = sdk_client(gw).models.generate_content(
        model=IMAGE_MODEL if "image_size" not in config else PRO_MODEL,
        contents=prompt,
        config=types.GenerateContentConfig(image_config=types.ImageConfig(**config)),
    )
    (image,) = [p.inline_data for p in response.parts or [] if p.inline_data]
    assert image is not None and image.data
    return Image.open(io.BytesIO(image.data))


def openai_client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(api_key=gw.client_key, base_url=f"{gw.url}/v1", max_retries=0)


# -- task vendors ------------------------------------------------------------------------------


def test_gemini_sdk_through_a_taskinfo_vendor(taskinfo: Gateway, sim: Simulator) -> None:
    sim.clear()
    picture = gemini_image(taskinfo, "a fox", aspect_ratio="16:9")
    assert picture.size == (64, 36)  # the simulator renders at the asked aspect ratio
    (create,) = vendor_calls(sim, "/api/v1/client/job/CreateTask")
    assert create["headers"]["x-api-key"] == SIM_KEY
    assert create["json"]["model"] == "google/nano-banana"
    assert create["json"]["input"]["prompt"] == "a fox"
    assert create["json"]["input"]["aspect_ratio"] == "16:9"
    assert vendor_calls(sim, "/api/v1/client/job/TaskInfo"), "the adapter polls for the result"


def test_an_inline_input_image_goes_to_the_vendor_as_a_signed_url(
    taskinfo: Gateway, sim: Simulator
) -> None:
    sim.clear()
    source = png()
    sdk_client(taskinfo).models.generate_content(
        model=IMAGE_MODEL,
        contents=[types.Part.from_bytes(data=source, mime_type="image/png"), "make it blue"],
    )
    (create,) = vendor_calls(sim, "/api/v1/client/job/CreateTask")
    assert create["json"]["model"] == "google/nano-banana-edit"
    (url,) = create["json"]["input"]["image_urls"]
    assert url.startswith(f"{taskinfo.url}/files/") and "&sig=" in url
    assert httpx.get(url).content == source


def test_recordinfo_vendor_with_bearer_and_resolution(recordinfo: Gateway, sim: Simulator) -> None:
    sim.clear()
    picture = gemini_image(recordinfo, "a castle", aspect_ratio="3:2", image_size="2K")
    assert picture.size == (64, 43)
    (create,) = vendor_calls(sim, "/api/v1/jobs/createTask")
    assert create["headers"]["authorization"] == f"Bearer {SIM_KEY}"
    assert create["json"]["model"] == "nano-banana-pro"
    assert create["json"]["input"]["image_size"] == "3:2"
    assert create["json"]["input"]["resolution"] == "2K"


def test_the_task_api_through_a_task_vendor(recordinfo: Gateway) -> None:
    headers = {"Authorization": f"Bearer {recordinfo.client_key}"}
    created = httpx.post(
        f"{recordinfo.url}/api/v1/jobs/createTask",
        json={"model": "nano-banana-pro", "input": {"prompt": "a ship", "image_size": "1:1"}},
        headers=headers,
    )
    assert created.status_code == 200, created.text
    task_id = created.json()["data"]["taskId"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = httpx.get(
            f"{recordinfo.url}/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=headers
        ).json()["data"]
        if data["state"] in ("success", "fail"):
            break
        time.sleep(0.2)
    assert data["state"] == "success", data
    (url,) = httpx.Response(200, content=data["resultJson"]).json()["resultUrls"]
    assert Image.open(io.BytesIO(httpx.get(url).content)).size == (64, 64)


def test_a_failed_vendor_task_fails_over_and_is_refunded_when_nothing_else_serves(
    taskinfo: Gateway, sim: Simulator, tmp_path: Path
) -> None:
    sim.clear()
    sim.faults({"fail": True, "message": "the vendor's model refused"})
    response = httpx.post(
        f"{taskinfo.url}/v1beta/models/{IMAGE_MODEL}:generateContent",
        json={"contents": [{"parts": [{"text": "a fox"}]}]},
        headers={"x-goog-api-key": taskinfo.client_key},
        timeout=30,
    )
    assert response.status_code == 503 and "refused" in response.json()["error"]["message"]
    assert len(vendor_calls(sim, "/api/v1/client/job/CreateTask")) == 1
    # With a second upstream of another kind, the call moves on and succeeds, charged once.
    config = {
        "upstreams": [
            vendor(sim, kind="task", protocol="taskinfo"),
            vendor(sim, kind="openai", mode="chat", priority=1),
        ]
    }
    gw = start_gateway(tmp_path, config, **EGRESS)
    try:
        sim.clear()
        sim.faults({"fail": True})
        response = httpx.post(
            f"{gw.url}/v1beta/models/{IMAGE_MODEL}:generateContent",
            json={"contents": [{"parts": [{"text": "a fox"}]}]},
            headers={"x-goog-api-key": gw.client_key},
            timeout=30,
        )
        assert response.status_code == 200
        parts = response.json()["candidates"][0]["content"]["parts"]
        assert any("inlineData" in part for part in parts)
        assert int(response.headers["x-nanogate-cost"]) > 0
        assert len(vendor_calls(sim, "/api/v1/client/job/CreateTask")) == 1
        assert len(vendor_calls(sim, "/v1/chat/completions")) == 1
    finally:
        stop(gw.proc)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(402, 503), (401, 503), (422, 400), (455, 503), (505, 503), (429, 429)],
)
def test_vendor_codes_become_the_gateway_errors(
    taskinfo: Gateway, sim: Simulator, status: int, expected: int
) -> None:
    sim.clear()
    sim.faults({"status": status, "path": "/api/v1/client/job/CreateTask", "retry_after": 7})
    response = httpx.post(
        f"{taskinfo.url}/v1beta/models/{IMAGE_MODEL}:generateContent",
        json={"contents": [{"parts": [{"text": "a fox"}]}]},
        headers={"x-goog-api-key": taskinfo.client_key},
        timeout=30,
    )
    assert response.status_code == expected, response.text
    assert SIM_KEY not in response.text
    if status in (401, 402):
        assert "vendor account problem" in taskinfo.logs()


def test_a_stuck_vendor_task_times_out(tmp_path: Path, sim: Simulator) -> None:
    config = {"upstreams": [vendor(sim, kind="task", protocol="taskinfo", timeout_s=3)]}
    gw = start_gateway(tmp_path, config, **EGRESS)
    try:
        sim.clear()
        sim.faults({"stuck": True})
        started = time.monotonic()
        response = httpx.post(
            f"{gw.url}/v1beta/models/{IMAGE_MODEL}:generateContent",
            json={"contents": [{"parts": [{"text": "a fox"}]}]},
            headers={"x-goog-api-key": gw.client_key},
            timeout=30,
        )
        assert response.status_code == 504
        assert time.monotonic() - started < 15
        assert response.headers.get("x-nanogate-cost") is None
    finally:
        stop(gw.proc)


# -- openai vendors ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["images", "markdown"])
def test_openai_chat_vendor_both_image_shapes(
    chat_vendor: Gateway, sim: Simulator, shape: str
) -> None:
    sim.clear()
    sim.faults({"chat_images": shape})
    picture = gemini_image(chat_vendor, "a lamp", aspect_ratio="4:3")
    assert picture.size[0] == 64
    (sent,) = vendor_calls(sim, "/v1/chat/completions")
    assert sent["headers"]["authorization"] == f"Bearer {SIM_KEY}"
    assert sent["json"]["image_config"] == {"aspect_ratio": "4:3"}
    assert sent["json"]["messages"][-1]["content"] == [{"type": "text", "text": "a lamp"}]


def test_openai_dialect_through_an_openai_chat_vendor(chat_vendor: Gateway, sim: Simulator) -> None:
    sim.clear()
    sim.faults({"chat_images": "markdown"})
    answer = openai_client(chat_vendor).chat.completions.create(
        model=IMAGE_MODEL, messages=[{"role": "user", "content": "a lamp"}]
    )
    message = answer.choices[0].message
    assert "data:image" not in (message.content or "")
    (image,) = (message.model_extra or {})["images"]
    header, _, data = image["image_url"]["url"].partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64")
    Image.open(io.BytesIO(base64.b64decode(data)))


def test_openai_images_vendor(images_vendor: Gateway, sim: Simulator) -> None:
    sim.clear()
    result = openai_client(images_vendor).images.generate(
        model=IMAGE_MODEL, prompt="a boat", size="1792x1024"
    )
    picture = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert picture.size == (64, 36)
    (sent,) = vendor_calls(sim, "/v1/images/generations")
    assert sent["json"]["aspect_ratio"] == "16:9" and sent["json"]["prompt"] == "a boat"


def test_openai_vendor_errors(chat_vendor: Gateway, sim: Simulator) -> None:
    sim.clear()
    sim.faults({"status": 401, "path": "/v1/chat/completions"})
    response = httpx.post(
        f"{chat_vendor.url}/v1beta/models/{IMAGE_MODEL}:generateContent",
        json={"contents": [{"parts": [{"text": "a fox"}]}]},
        headers={"x-goog-api-key": chat_vendor.client_key},
        timeout=30,
    )
    assert response.status_code == 503
    sim.faults({"malformed": True, "path": "/v1/chat/completions"})
    response = httpx.post(
        f"{chat_vendor.url}/v1beta/models/{IMAGE_MODEL}:generateContent",
        json={"contents": [{"parts": [{"text": "a fox"}]}]},
        headers={"x-goog-api-key": chat_vendor.client_key},
        timeout=30,
    )
    assert response.status_code in (500, 502, 503), response.text


def test_an_edit_through_an_openai_images_vendor_is_multipart(
    images_vendor: Gateway, sim: Simulator
) -> None:
    sim.clear()
    result = openai_client(images_vendor).images.edit(
        model=IMAGE_MODEL,
        image=[("a.png", png(), "image/png"), ("b.png", png(20, 20), "image/png")],
        prompt="merge them",
    )
    assert result.data[0].b64_json
    (sent,) = vendor_calls(sim, "/v1/images/edits")
    assert sent["headers"]["content-type"].startswith("multipart/form-data")
    assert sent["body"].count('name="image[]"') == 2 and "merge them" in sent["body"]


def test_mixed_kinds_with_faults_still_serve_through_the_healthy_one(
    tmp_path: Path, sim: Simulator
) -> None:
    """Four faulty upstreams of three kinds on one simulator (down, slow, garbage, failing its
    tasks) ahead of a healthy one on another: every request succeeds, each is charged once, and
    the faulty ones' breakers open so later requests skip them."""
    healthy = start_simulator()
    faulty = {"priority": 0, "breaker_failures": 2, "breaker_cooldown_s": 120}
    config = {
        "upstreams": [
            vendor(sim, kind="gemini", name="down", **faulty),
            vendor(sim, kind="gemini", name="slow", path_prefix="/v1/v1beta", **faulty),
            vendor(sim, kind="openai", mode="chat", name="garbage", **faulty),
            vendor(sim, kind="task", protocol="taskinfo", name="failing", **faulty),
            {**vendor(healthy, kind="gemini", name="healthy"), "priority": 1},
        ]
    }
    config["upstreams"][1]["timeout_s"] = 1.5
    gw = start_gateway(tmp_path, config, NANOGATE_MAX_ATTEMPTS="5", **EGRESS)
    try:
        sim.clear()
        healthy.clear()
        sim.faults(
            *[{"reset": True, "path": "/v1beta"}] * 4,
            *[{"delay": 4, "path": "/v1/v1beta"}] * 4,
            *[{"malformed": True, "path": "/v1/chat/completions"}] * 4,
            *[{"fail": True}] * 4,
        )
        key_headers = {"x-goog-api-key": gw.client_key}
        before = httpx.get(
            f"{gw.url}/api/v1/client/account/balance", headers={"x-api-key": gw.client_key}
        ).json()["data"]["balance"]
        costs = []
        for _ in range(4):
            response = httpx.post(
                f"{gw.url}/v1beta/models/{IMAGE_MODEL}:generateContent",
                json={"contents": [{"parts": [{"text": "a fox"}]}]},
                headers=key_headers,
                timeout=60,
            )
            assert response.status_code == 200, response.text
            parts = response.json()["candidates"][0]["content"]["parts"]
            assert any("inlineData" in part for part in parts)
            costs.append(int(response.headers["x-nanogate-cost"]))
        after = httpx.get(
            f"{gw.url}/api/v1/client/account/balance", headers={"x-api-key": gw.client_key}
        ).json()["data"]["balance"]
        assert before - after == sum(costs) and all(cost > 0 for cost in costs)
        served = [r for r in healthy.requests() if r["path"].endswith(":generateContent")]
        assert len(served) == 4
        # Two failures each opened the breakers: the last two requests never reached them.
        calls = sim.requests()
        assert len([r for r in calls if r["path"].startswith("/v1beta/")]) == 2
        assert len([r for r in calls if r["path"] == "/v1/chat/completions"]) == 2
        assert len([r for r in calls if r["path"] == "/api/v1/client/job/CreateTask"]) == 2
        rows = httpx.get(f"{gw.url}/admin/upstreams", headers={"x-goog-api-key": gw.admin_key})
        states = {row["name"]: row["breaker"] for row in rows.json()}
        assert states == {
            "down": "open",
            "slow": "open",
            "garbage": "open",
            "failing": "open",
            "healthy": "closed",
        }
    finally:
        stop(gw.proc)
        stop(healthy.proc)


def test_a_stream_that_broke_mid_way_is_not_retried(tmp_path: Path, sim: Simulator) -> None:
    backup = start_simulator()
    config = {
        "upstreams": [
            vendor(sim, kind="gemini", name="breaks"),
            {**vendor(backup, kind="gemini", name="backup"), "priority": 1},
        ]
    }
    gw = start_gateway(tmp_path, config, **EGRESS)
    try:
        sim.clear()
        backup.clear()
        sim.faults({"stream_break": True, "path": "/v1beta"})
        with httpx.stream(
            "POST",
            f"{gw.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            json={"contents": [{"parts": [{"text": "tell me a long story"}]}]},
            headers={"x-goog-api-key": gw.client_key},
            timeout=30,
        ) as response:
            assert response.status_code == 200
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert len(events) >= 2 and '"error"' in events[-1]
        assert not [r for r in backup.requests() if not r["path"].startswith("/_sim")]
    finally:
        stop(gw.proc)
        stop(backup.proc)
