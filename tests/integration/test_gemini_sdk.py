"""The official google-genai SDK against `nanogate serve` on its embedded default (demo)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.genai import errors, types
from PIL import Image

from .conftest import Gateway, sdk_client

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# The vendor's key and base URL, as the programs in tests/fixtures/ spell them.
VENDOR_KEY = "sk-vendor-issued-key-goes-here"
VENDOR_URL = "https://gateway.theturbo.ai"


client = sdk_client


def run_vendor_program(name: str, gw: Gateway, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Unchanged apart from the key and the base URL, as a user would edit it.
    code = (FIXTURES / name).read_text()
    assert VENDOR_KEY in code and VENDOR_URL in code
    script = cwd / name
    script.write_text(code.replace(VENDOR_KEY, gw.client_key).replace(VENDOR_URL, gw.url))
    return subprocess.run(
        [sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_seed_003_programs_run_with_only_key_and_url_changed(
    demo_gateway: Gateway, tmp_path: Path
) -> None:
    """Seed 003's two calls (text to image, then an edit of that image), as the vendor's
    customers write them with google-genai."""
    first = run_vendor_program("seed_003_text_to_image.py", demo_gateway, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "saved example.png" in first.stdout
    original = Image.open(tmp_path / "example.png")
    assert original.format == "PNG" and original.size == (1184, 864)  # 4:3 on 2.5 Flash Image

    second = run_vendor_program("seed_003_image_to_image.py", demo_gateway, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "saved example2.png" in second.stdout
    edited = Image.open(tmp_path / "example2.png")
    assert edited.size == (1184, 864)
    diff = sum(
        abs(a - b)
        for a, b in zip(
            original.convert("L").resize((64, 48)).tobytes(),
            edited.convert("L").resize((64, 48)).tobytes(),
            strict=True,
        )
    )
    assert diff / (64 * 48) > 8, "the edit should visibly change the image"


def test_readme_curl_returns_a_png(demo_gateway: Gateway, tmp_path: Path) -> None:
    assert shutil.which("curl"), "the README's first example needs curl"
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    command = re.search(r"```sh\n(curl [^`]*?generateContent[^`]*?)```", readme, re.S)
    assert command, "the README should hold the copy-paste curl"
    script = command.group(1).replace("http://127.0.0.1:8000", demo_gateway.url)
    out = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "NANOGATE_KEY": demo_gateway.client_key},
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    image = Image.open(tmp_path / "otter.png")
    # The README's first example is a current GA model (issue 15), and says what size it makes.
    assert image.format == "PNG" and image.size == (1200, 896)
    assert "`otter.png` is a 1200x896 PNG" in readme


@pytest.mark.parametrize(
    "model, config, size",
    [
        ("gemini-2.5-flash-image", {"aspect_ratio": "16:9"}, (1344, 768)),
        ("gemini-3-pro-image-preview", {"aspect_ratio": "1:1", "image_size": "4K"}, (4096, 4096)),
        ("gemini-3-pro-image-preview", {"aspect_ratio": "21:9", "image_size": "2K"}, (3168, 1344)),
        (
            "gemini-3.1-flash-image-preview",
            {"aspect_ratio": "1:8", "image_size": "1K"},
            (384, 3072),
        ),
        ("nano-banana-2", {"aspect_ratio": "9:16"}, (768, 1376)),
    ],
)
def test_exact_pixel_sizes(
    demo_gateway: Gateway, model: str, config: dict[str, str], size: tuple[int, int]
) -> None:
    response = client(demo_gateway).models.generate_content(
        model=model,
        contents="a lighthouse at dusk",
        config=types.GenerateContentConfig(image_config=types.ImageConfig(**config)),
    )
    images = [p for p in response.candidates[0].content.parts if p.inline_data]  # type: ignore[index, union-attr]
    assert len(images) == 1
    assert Image.open(io.BytesIO(images[0].inline_data.data)).size == size  # type: ignore[union-attr, arg-type]
    usage = response.usage_metadata
    assert usage is not None and usage.candidates_tokens_details
    modalities = {d.modality: d.token_count for d in usage.candidates_tokens_details}
    assert modalities[types.MediaModality.IMAGE] > 0


def test_stream_with_the_sdk(demo_gateway: Gateway) -> None:
    chunks = list(
        client(demo_gateway).models.generate_content_stream(
            model="gemini-3-pro-image-preview",
            contents="a red bicycle",
            config=types.GenerateContentConfig(
                image_config=types.ImageConfig(aspect_ratio="3:2", image_size="1K")
            ),
        )
    )
    assert len(chunks) >= 2
    parts = [p for c in chunks for p in c.candidates[0].content.parts]  # type: ignore[index, union-attr]
    images = [p.inline_data.data for p in parts if p.inline_data]
    assert len(images) == 1 and Image.open(io.BytesIO(images[0])).size == (1264, 848)  # type: ignore[arg-type]
    assert any(p.text and "demo" in p.text.lower() for p in parts)
    assert chunks[-1].usage_metadata is not None
    assert chunks[-1].usage_metadata.total_token_count


async def test_async_stream_with_the_sdk(demo_gateway: Gateway) -> None:
    texts = []
    stream = await client(demo_gateway).aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents="say hello"
    )
    async for chunk in stream:
        texts.append(chunk.text or "")
    assert "".join(texts).strip()


RECIPES_SCHEMA: dict[str, Any] = {
    "type": "ARRAY",
    "items": {
        "type": "OBJECT",
        "properties": {
            "recipeName": {"type": "STRING"},
            "ingredients": {"type": "ARRAY", "items": {"type": "STRING"}},
        },
        "propertyOrdering": ["recipeName", "ingredients"],
    },
}


def test_structured_output_seed_001(demo_gateway: Gateway) -> None:
    response = client(demo_gateway).models.generate_content(
        model="gemini-2.5-flash",
        contents="List a few popular cookie recipes, and include the amounts of ingredients.",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=RECIPES_SCHEMA
        ),
    )
    recipes = json.loads(response.text or "")
    assert isinstance(recipes, list) and recipes
    for recipe in recipes:
        assert list(recipe) == ["recipeName", "ingredients"]
        assert isinstance(recipe["recipeName"], str)
        assert all(isinstance(i, str) for i in recipe["ingredients"])


def test_count_tokens_and_models(demo_gateway: Gateway) -> None:
    c = client(demo_gateway)
    counted = c.models.count_tokens(model="gemini-2.5-flash", contents="The quick brown fox")
    assert counted.total_tokens and counted.total_tokens > 0
    names = {m.name for m in c.models.list()}
    assert {
        "models/gemini-2.5-flash-image",
        "models/gemini-3-pro-image",
        "models/gemini-3.1-flash-image",
    } <= names
    # Shut-down ids are not offered (issue 15), but still answer, as the model they run on.
    assert "models/gemini-3-pro-image-preview" not in names
    model = c.models.get(model="gemini-3-pro-image-preview")
    assert model.input_token_limit == 65536 and model.display_name
    assert model.name == "models/gemini-3-pro-image"


# -- every error path, as the SDK reports it ------------------------------------------------


def api_error(call: Any) -> errors.APIError:
    with pytest.raises(errors.APIError) as info:
        call()
    return info.value


def test_unknown_model_is_404(demo_gateway: Gateway) -> None:
    err = api_error(
        lambda: client(demo_gateway).models.generate_content(model="gemini-9-ultra", contents="x")
    )
    assert (err.code, err.status) == (404, "NOT_FOUND")
    assert "gemini-9-ultra" in (err.message or "")


def test_wrong_key_is_401(demo_gateway: Gateway) -> None:
    err = api_error(
        lambda: client(demo_gateway, key="ng_00000000_nope").models.generate_content(
            model="gemini-2.5-flash", contents="x"
        )
    )
    assert (err.code, err.status) == (401, "UNAUTHENTICATED")


def test_bad_aspect_ratio_is_400(demo_gateway: Gateway) -> None:
    err = api_error(
        lambda: client(demo_gateway).models.generate_content(
            model="gemini-2.5-flash-image",
            contents="x",
            config=types.GenerateContentConfig(image_config=types.ImageConfig(aspect_ratio="7:5")),
        )
    )
    assert (err.code, err.status) == (400, "INVALID_ARGUMENT")
    assert "16:9" in (err.message or "")


def test_image_size_not_supported_is_400(demo_gateway: Gateway) -> None:
    err = api_error(
        lambda: client(demo_gateway).models.generate_content(
            model="gemini-2.5-flash-image",
            contents="x",
            config=types.GenerateContentConfig(image_config=types.ImageConfig(image_size="4K")),
        )
    )
    assert (err.code, err.status) == (400, "INVALID_ARGUMENT")


def test_body_too_large_is_413(demo_gateway: Gateway) -> None:
    huge = b"\x89PNG\r\n\x1a\n" + b"\0" * (21 * 1024 * 1024)
    err = api_error(
        lambda: client(demo_gateway).models.generate_content(
            model="gemini-3-pro-image-preview",
            contents=[types.Part.from_bytes(data=huge, mime_type="image/png"), "edit"],
        )
    )
    assert (err.code, err.status) == (413, "INVALID_ARGUMENT")


def test_revoked_key_is_403(demo_gateway: Gateway) -> None:
    created = demo_gateway.cli("keys", "create", "--name", "short-lived")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    c = client(demo_gateway, key=key)
    assert c.models.count_tokens(model="gemini-2.5-flash", contents="hi").total_tokens
    prefix = "_".join(key.split("_")[:2])
    revoked = demo_gateway.cli("keys", "revoke", prefix)
    assert revoked.returncode == 0, revoked.stderr
    import time

    time.sleep(1.2)  # the server caches key lookups for key_cache_seconds (1 s in tests)
    err = api_error(lambda: c.models.count_tokens(model="gemini-2.5-flash", contents="hi"))
    assert (err.code, err.status) == (403, "PERMISSION_DENIED")


def test_rate_limited_key_is_429(demo_gateway: Gateway) -> None:
    created = demo_gateway.cli("keys", "create", "--name", "slow", "--rpm", "2")
    key = created.stdout.strip().splitlines()[-1]
    c = client(demo_gateway, key=key)
    for _ in range(2):
        c.models.count_tokens(model="gemini-2.5-flash", contents="hi")
    err = api_error(lambda: c.models.count_tokens(model="gemini-2.5-flash", contents="hi"))
    assert (err.code, err.status) == (429, "RESOURCE_EXHAUSTED")
    raw = httpx.post(
        f"{demo_gateway.url}/v1beta/models/gemini-2.5-flash:countTokens",
        headers={"x-goog-api-key": key},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert raw.status_code == 429 and int(raw.headers["retry-after"]) >= 1


def test_model_not_allowed_for_key_is_403(demo_gateway: Gateway) -> None:
    created = demo_gateway.cli("keys", "create", "--models", "gemini-2.5-flash")
    key = created.stdout.strip().splitlines()[-1]
    unknown = demo_gateway.cli("keys", "create", "--models", "gemini-9")
    assert unknown.returncode != 0 and "gemini-9" in unknown.stderr
    err = api_error(
        lambda: client(demo_gateway, key=key).models.generate_content(
            model="gemini-2.5-flash-image", contents="x"
        )
    )
    assert (err.code, err.status) == (403, "PERMISSION_DENIED")


def test_missing_key_is_401(demo_gateway: Gateway) -> None:
    resp = httpx.post(
        f"{demo_gateway.url}/v1beta/models/gemini-2.5-flash:generateContent",
        json={"contents": [{"parts": [{"text": "x"}]}]},
    )
    assert resp.status_code == 401
    assert resp.json()["error"]["status"] == "UNAUTHENTICATED"
    assert "x-goog-api-key" in resp.json()["error"]["message"]


def test_wrong_method_and_route_use_googles_envelope(demo_gateway: Gateway) -> None:
    key = {"x-goog-api-key": demo_gateway.client_key}
    wrong_method = httpx.put(f"{demo_gateway.url}/v1beta/models", headers=key)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    unknown = httpx.post(
        f"{demo_gateway.url}/v1beta/models/gemini-2.5-flash:embedContent", headers=key, json={}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"


def test_v1_models_serves_both_sdks(demo_gateway: Gateway) -> None:
    import openai

    names = {m.name for m in client(demo_gateway).models.list()}
    assert "models/gemini-3-pro-image" in names
    oa = openai.OpenAI(api_key=demo_gateway.client_key, base_url=f"{demo_gateway.url}/v1")
    ids = {m.id for m in oa.models.list()}
    assert "gemini-3-pro-image" in ids
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="nope", base_url=f"{demo_gateway.url}/v1").models.list()
