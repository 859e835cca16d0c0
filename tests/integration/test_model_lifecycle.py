"""Today's models and their lifecycle, through real processes (issue 15): Google's GA ids, the
seeds' shut-down preview ids running on them, the 404 for a model shut down and replaced by a
different one, models an upstream lists but the catalog does not, and `nanogate models check`.

One gateway relays to a simulator of its own as two upstreams: "google" follows Google's
lifecycle (as an upstream at Google's own API does), "reseller" (the same simulator under
/v1/v1beta, so the recorded path tells them apart) still serves gemini-2.5-pro.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from google.genai import errors, types
from PIL import Image

from tests.simulator.processes import stop
from tests.simulator.responses import DEFAULT_MODELS

from .conftest import SIM_KEY, Gateway, Simulator, sdk_client, start_gateway, start_simulator

UNLISTED = "gemini-9-flash-exp"  # listed by the simulator, unknown to the catalog
PRICES = {"input_text": 1_000_000, "output_text": 2_000_000}  # $1 / $2 per 1M tokens
TEXT = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
DRAW = {
    "contents": [{"role": "user", "parts": [{"text": "A lighthouse"}]}],
    "generationConfig": {"imageConfig": {"aspectRatio": "1:1", "imageSize": "1K"}},
}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    proc = start_simulator("--models", ",".join([*DEFAULT_MODELS, UNLISTED]))
    yield proc
    stop(proc.proc)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, sim: Simulator) -> Iterator[Gateway]:
    upstream = {"kind": "gemini", "base_url": sim.url, "api_key": SIM_KEY, "timeout_s": 10}
    config = {
        "upstreams": [
            {"name": "google", **upstream, "google_lifecycle": True},
            {
                "name": "reseller",
                **upstream,
                "path_prefix": "/v1/v1beta",
                "models": ["gemini-2.5-pro"],
            },
        ],
        # Shut down in this gateway only, to show the task API's 404 on an image model.
        "models": {"gemini-2.5-flash-image": {"shutdown_date": "2026-10-02"}},
        "allow_unlisted_models": True,
        "unlisted_model_prices": PRICES,
    }
    gateway = start_gateway(tmp_path_factory.mktemp("lifecycle"), config)
    yield gateway
    stop(gateway.proc)


def post(gw: Gateway, model: str, body: dict[str, Any], prefix: str = "/v1beta") -> httpx.Response:
    return httpx.post(
        f"{gw.url}{prefix}/models/{model}:generateContent",
        json=body,
        headers={"x-goog-api-key": gw.client_key},
        timeout=30,
    )


def generated_paths(sim: Simulator) -> list[str]:
    return [r["path"] for r in sim.requests() if r["path"].endswith(":generateContent")]


def usage(gw: Gateway, **params: str) -> list[dict[str, Any]]:
    """The newest usage records (written in batches: wait for the request's to land)."""
    deadline = time.monotonic() + 10
    while True:
        rows: list[dict[str, Any]] = httpx.get(
            f"{gw.url}/admin/usage",
            headers={"Authorization": f"Bearer {gw.admin_key}"},
            params={"limit": "20", **params},
        ).json()
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def usage_of(gw: Gateway, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for row in usage(gw):
            if row["request_id"] == request_id:
                return row
        time.sleep(0.1)
    raise AssertionError(f"no usage record for {request_id}")


# -- the proofs --------------------------------------------------------------------------------


def test_the_ga_pro_id_renders_4k_through_the_sdk(demo_gateway: Gateway) -> None:
    response = sdk_client(demo_gateway).models.generate_content(
        model="gemini-3-pro-image",
        contents="A lighthouse at dusk",
        config=types.GenerateContentConfig(
            image_config=types.ImageConfig(aspect_ratio="1:1", image_size="4K")
        ),
    )
    parts = response.candidates[0].content.parts if response.candidates else None
    data = next(p.inline_data.data for p in parts or [] if p.inline_data and p.inline_data.data)
    assert Image.open(io.BytesIO(data)).size == (4096, 4096)
    assert response.model_version == "gemini-3-pro-image"


def test_a_shut_down_preview_id_runs_on_its_ga_id(gw: Gateway, sim: Simulator) -> None:
    sim.clear()
    resp = post(gw, "gemini-3-pro-image-preview", DRAW)
    assert resp.status_code == 200, resp.text
    # Upstream, the GA id; modelVersion is what the upstream sent.
    assert generated_paths(sim) == ["/v1beta/models/gemini-3-pro-image:generateContent"]
    assert resp.json()["modelVersion"] == "gemini-3-pro-image"
    warning = resp.headers["warning"]
    assert warning.startswith('299 - "') and "gemini-3-pro-image-preview" in warning
    assert "gemini-3-pro-image," in warning and "2026-06-25" in warning
    row = usage_of(gw, resp.headers["x-request-id"])
    assert (row["model"], row["requested_model"]) == (
        "gemini-3-pro-image",
        "gemini-3-pro-image-preview",
    )
    assert row["cost"] > 0 and row["upstream"] == "google"
    # The stock SDK, written against the seeds, still gets its image.
    answer = sdk_client(gw).models.generate_content(
        model="gemini-3.1-flash-image-preview", contents="A kite"
    )
    assert answer.candidates and answer.model_version == "gemini-3.1-flash-image"
    assert generated_paths(sim)[-1] == "/v1beta/models/gemini-3.1-flash-image:generateContent"


def test_the_task_apis_nano_banana_pro_is_the_ga_model(gw: Gateway, sim: Simulator) -> None:
    sim.clear()
    created = httpx.post(
        f"{gw.url}/api/v1/client/job/CreateTask",
        json={"model": "nano-banana-pro", "input": {"prompt": "A harbour", "resolution": "2K"}},
        headers={"x-api-key": gw.client_key},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    assert "warning" not in created.headers  # an alias of a GA id: nothing to warn about
    task = created.json()["data"]["task_id"]
    deadline = time.monotonic() + 30
    while True:
        data = httpx.get(
            f"{gw.url}/api/v1/client/job/TaskInfo",
            params={"task_id": task},
            headers={"x-api-key": gw.client_key},
        ).json()["data"]
        if data["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert data["status"] == "succeeded", data
    assert data["model"] == "nano-banana-pro"  # the task keeps the client's name
    assert generated_paths(sim) == ["/v1beta/models/gemini-3-pro-image:generateContent"]
    rows = [r for r in usage(gw, dialect="tasks") if r["model"] == "gemini-3-pro-image"]
    assert rows and rows[0]["requested_model"] == "nano-banana-pro"


# -- shut down, and replaced by a different model ----------------------------------------------


def test_404_in_the_gemini_envelope(gw: Gateway, sim: Simulator) -> None:
    sim.clear()
    with pytest.raises(errors.APIError) as info:
        sdk_client(gw).models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert info.value.code == 404 and info.value.status == "NOT_FOUND"
    message = info.value.message or ""
    assert "2026-12-01" in message and "'gemini-3.5-flash-lite'" in message
    raw = post(gw, "gemini-2.5-flash", TEXT)
    assert raw.status_code == 404
    assert raw.json()["error"]["status"] == "NOT_FOUND" and "warning" not in raw.headers
    assert generated_paths(sim) == []  # never switched silently, never sent


def test_404_in_the_openai_envelope(gw: Gateway, sim: Simulator) -> None:
    sim.clear()
    client = openai.OpenAI(api_key=gw.client_key, base_url=f"{gw.url}/v1", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
        )
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"
    assert "2026-12-01" in body["message"] and "gemini-3.5-flash-lite" in body["message"]
    assert generated_paths(sim) == []


@pytest.mark.parametrize(
    ("path", "body", "text"),
    [
        ("/api/v1/client/job/CreateTask", {"model": "google/nano-banana"}, "message"),
        ("/api/v1/jobs/createTask", {"model": "google/nano-banana-edit"}, "msg"),
    ],
)
def test_404_in_the_task_envelope(
    gw: Gateway, sim: Simulator, path: str, body: dict[str, Any], text: str
) -> None:
    sim.clear()
    resp = httpx.post(
        f"{gw.url}{path}",
        json={**body, "input": {"prompt": "A kite", "image_urls": ["https://example.com/a.png"]}},
        headers={"x-api-key": gw.client_key, "Authorization": f"Bearer {gw.client_key}"},
    )
    assert resp.status_code == 404, resp.text
    doc = resp.json()
    assert doc["code"] == 404
    assert "2026-10-02" in doc[text] and "gemini-3.1-flash-image" in doc[text]
    assert generated_paths(sim) == []


def test_an_upstream_that_still_serves_it_keeps_serving_it(gw: Gateway, sim: Simulator) -> None:
    sim.clear()
    resp = post(gw, "gemini-2.5-pro", TEXT)
    assert resp.status_code == 200, resp.text
    # Only the reseller still serves it: the upstream that follows Google is not asked.
    assert generated_paths(sim) == ["/v1/v1beta/models/gemini-2.5-pro:generateContent"]
    assert "still serves it" in resp.headers["warning"]
    assert "gemini-3.8-flash" in resp.headers["warning"]
    ids = {
        m["name"]
        for m in httpx.get(
            f"{gw.url}/v1beta/models", headers={"x-goog-api-key": gw.client_key}
        ).json()["models"]
    }
    assert "models/gemini-2.5-pro" in ids and "models/gemini-2.5-flash" not in ids
    assert "models/gemini-3-pro-image-preview" not in ids and "models/gemini-3-pro-image" in ids


def test_a_deprecated_model_runs_with_a_warning(gw: Gateway, sim: Simulator) -> None:
    sim.clear()
    resp = post(gw, "gemini-3.1-flash-image", DRAW, prefix="/v1/v1beta")
    assert resp.status_code == 200, resp.text
    assert generated_paths(sim) == ["/v1beta/models/gemini-3.1-flash-image:generateContent"]
    warning = resp.headers["warning"]
    assert "gemini-3.1-flash-image is deprecated" in warning and "gemini-nano-banana-2.1" in warning
    streamed = httpx.post(
        f"{gw.url}/v1beta/models/gemini-3.1-flash-image:streamGenerateContent?alt=sse",
        json=DRAW,
        headers={"x-goog-api-key": gw.client_key},
        timeout=30,
    )
    assert streamed.status_code == 200 and "deprecated" in streamed.headers["warning"]


# -- models the catalog does not list ------------------------------------------------------------


def test_an_unlisted_text_model_an_upstream_lists(gw: Gateway, sim: Simulator) -> None:
    sim.clear()
    resp = post(gw, UNLISTED, TEXT)
    assert resp.status_code == 200, resp.text
    assert generated_paths(sim) == [f"/v1beta/models/{UNLISTED}:generateContent"]
    row = usage_of(gw, resp.headers["x-request-id"])
    assert row["model"] == UNLISTED and row["requested_model"] is None
    micro = (
        row["input_text_tokens"] * PRICES["input_text"]
        + (row["output_text_tokens"] + row["thoughts_tokens"]) * PRICES["output_text"]
    )
    assert row["cost"] == -(-micro // 1_000_000) and row["cost"] > 0
    # Text only: no files in, no images out.
    png = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
        "rkJggg=="
    )
    with_image = {
        "contents": [
            {"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": png}}]}
        ]
    }
    refused = post(gw, UNLISTED, with_image)
    assert refused.status_code == 400 and "text only" in refused.json()["error"]["message"]
    # A model no upstream lists is still unknown.
    missing = post(gw, "gemini-10-nothing", TEXT)
    assert missing.status_code == 404
    assert "`models:`" in missing.json()["error"]["message"]


def test_without_the_setting_the_404_says_how_to_add_a_model(demo_gateway: Gateway) -> None:
    with pytest.raises(errors.APIError) as info:
        sdk_client(demo_gateway).models.generate_content(model=UNLISTED, contents="hi")
    assert info.value.code == 404
    assert "`models:` in the gateway's config file" in (info.value.message or "")


def test_readyz_shows_the_model_check(gw: Gateway) -> None:
    deadline = time.monotonic() + 15
    while True:
        models = httpx.get(f"{gw.url}/readyz").json()["models"]
        if set(models) == {"google", "reseller"} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    google = models["google"]
    assert google["error"] is None and google["checked_at"]
    # The simulator lists neither of these, and clients may call both (3.7 is deprecated).
    assert {"gemini-3.6-flash", "gemini-3.7-flash"} <= set(google["missing"])
    assert "gemini-2.5-flash" not in google["missing"]  # shut down: not expected at Google
    assert UNLISTED in google["not_in_catalog"]
    assert models["reseller"]["missing"] == []  # it lists the one model it is configured for


# -- nanogate models check -----------------------------------------------------------------------


def models_check(
    tmp_path: Path, upstreams: list[dict[str, Any]]
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "check.yaml"
    config.write_text(yaml.safe_dump({"upstreams": upstreams}))
    return subprocess.run(
        [sys.executable, "-m", "nanogate", "models", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_models_check_against_the_simulator(tmp_path: Path) -> None:
    sim = start_simulator("--models", f"gemini-3-pro-image,gemini-3.8-flash,{UNLISTED}")
    try:
        upstream = {"name": "sim", "kind": "gemini", "base_url": sim.url, "api_key": SIM_KEY}
        narrow = models_check(
            tmp_path, [{**upstream, "models": ["gemini-3-pro-image", "gemini-3.8-flash"]}]
        )
        assert narrow.returncode == 0, narrow.stdout + narrow.stderr
        assert "listed" in narrow.stdout and "MISSING" not in narrow.stdout
        assert UNLISTED in narrow.stdout  # an upstream model the catalog does not know
        everything = models_check(tmp_path, [upstream])
        assert everything.returncode == 1
        assert "MISSING" in everything.stdout
        assert (
            "does not list:" in everything.stdout and "gemini-3.1-flash-image" in everything.stdout
        )
        assert any(r["path"] == "/v1beta/models" and r["method"] == "GET" for r in sim.requests())
    finally:
        stop(sim.proc)
    gone = models_check(tmp_path, [upstream])  # the simulator has stopped
    assert gone.returncode == 1 and "could not list models" in gone.stdout
    assert "Traceback" not in gone.stdout + gone.stderr


def test_unlisted_models_without_prices_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("allow_unlisted_models: true\n")
    proc = subprocess.run(
        [sys.executable, "-m", "nanogate", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"NANOGATE_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    assert "unlisted_model_prices" in proc.stderr and "Traceback" not in proc.stderr
