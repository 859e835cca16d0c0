"""Hostile input over real HTTP, with the official google-genai and openai SDKs as clients:
each is refused with a 4xx in its dialect's envelope (never a 500) and costs nothing, or (a long
prompt) is served."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from google.genai import errors, types
from openai import OpenAI

from tests.simulator.processes import stop

from .conftest import Gateway, sdk_client, start_gateway
from .test_credits import balance, new_key

TEXT_MODEL = "gemini-2.5-flash"
IMAGE_MODEL = "gemini-2.5-flash-image"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of this module's own (the demo upstream): it revokes admin keys."""
    gateway = start_gateway(tmp_path_factory.mktemp("hostile"))
    yield gateway
    stop(gateway.proc)


def admin(gw: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, f"{gw.url}{path}", headers={"x-api-key": gw.admin_key}, timeout=30, **kwargs
    )


def google_error(response: httpx.Response, status: int) -> str:
    """Google's envelope with this status; its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "status"} and error["code"] == status, error
    message: str = error["message"]
    return message


@pytest.mark.parametrize(
    "config, field",
    [
        (types.GenerateContentConfig(temperature=5), "generationConfig.temperature"),
        (types.GenerateContentConfig(candidate_count=0), "generationConfig.candidateCount"),
        (types.GenerateContentConfig(max_output_tokens=-5), "generationConfig.maxOutputTokens"),
        (types.GenerateContentConfig(top_p=1.5), "generationConfig.topP"),
    ],
)
def test_gemini_sdk_out_of_range_settings_are_400_and_free(
    gw: Gateway, config: types.GenerateContentConfig, field: str
) -> None:
    key = new_key(gw, 1_000_000)
    with pytest.raises(errors.ClientError) as refused:
        sdk_client(gw, key).models.generate_content(
            model=TEXT_MODEL, contents="hello", config=config
        )
    assert (refused.value.code, refused.value.status) == (400, "INVALID_ARGUMENT")
    assert refused.value.message is not None and refused.value.message.startswith(f"{field}: ")
    assert balance(gw, key) == 1_000_000


@pytest.mark.parametrize(
    "body, field",
    [
        ({"contents": [{"role": {}, "parts": [{"text": "x"}]}]}, "contents[0].role"),
        ({"contents": [{"role": [], "parts": [{"text": "x"}]}]}, "contents[0].role"),
        ({"contents": [{"role": "user", "parts": None}]}, "contents[0].parts"),
        ({"contents": [{}]}, "contents[0].parts"),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"temperature": "hot"}},
            "generationConfig.temperature",
        ),
        (
            {
                "contents": [{"parts": [{"text": "x"}]}],
                "generation_config": {"candidate_count": -1},
            },
            "generationConfig.candidateCount",
        ),
    ],
)
def test_gemini_rest_bad_shapes_are_400_and_free(
    gw: Gateway, body: dict[str, Any], field: str
) -> None:
    key = new_key(gw, 1_000_000)
    methods = ["generateContent", "streamGenerateContent?alt=sse"]
    if field.startswith("contents"):  # countTokens reads no generationConfig
        methods.append("countTokens")
    for method in methods:
        response = httpx.post(
            f"{gw.url}/v1beta/models/{IMAGE_MODEL}:{method}",
            headers={"x-goog-api-key": key},
            json=body,
            timeout=30,
        )
        assert google_error(response, 400).startswith(field)
        assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert balance(gw, key) == 1_000_000


def test_openai_sdk_modalities_of_objects_is_400_naming_the_param(gw: Gateway) -> None:
    key = new_key(gw, 1_000_000)
    sdk = OpenAI(api_key=key, base_url=f"{gw.url}/v1", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(
            model=IMAGE_MODEL,
            messages=[{"role": "user", "content": "a kite"}],
            extra_body={"modalities": [{}]},
        )
    assert refused.value.param == "modalities" and refused.value.code == "invalid_value"
    assert balance(gw, key) == 1_000_000


def test_long_prompts_are_served(gw: Gateway) -> None:
    key = new_key(gw, 10**9)
    # OpenAI images: 300,000 characters with no spaces, in a body over 256 KiB.
    sdk = OpenAI(api_key=key, base_url=f"{gw.url}/v1", max_retries=0, timeout=120)
    made = sdk.images.generate(model=IMAGE_MODEL, prompt="a" * 300_000)
    assert made.data and made.data[0].b64_json
    # Gemini: a prompt over a million characters, drawn into the demo's caption.
    answer = sdk_client(gw, key).models.generate_content(
        model=IMAGE_MODEL, contents="banana " * 150_000
    )
    parts = answer.candidates[0].content.parts  # type: ignore[index, union-attr]
    assert any(part.inline_data for part in parts or ())


def test_admin_numbers_beyond_the_database_are_400_and_leave_nothing_behind(gw: Gateway) -> None:
    refused = admin(gw, "POST", "/admin/accounts", json={"name": "huge", "credits": 2**63})
    assert "credits" in google_error(refused, 400)
    assert admin(gw, "GET", "/admin/accounts/huge").status_code == 404
    # The name is free: the retry is not a 409.
    created = admin(gw, "POST", "/admin/accounts", json={"name": "huge", "credits": 10**15})
    assert created.status_code == 201, created.text
    assert created.json()["balance"] == 10**15
    for path, body in [
        ("/admin/accounts/huge/topup", {"amount": 10**16, "reason": "more"}),
        ("/admin/accounts/huge/topup", {"amount": -(2**63), "reason": "less"}),
        ("/admin/keys", {"credits": 2**64}),
        ("/admin/keys", {"rpm_limit": 2**40}),
        ("/admin/keys", {"daily_cap": 2**63}),
    ]:
        google_error(admin(gw, "POST", path, json=body), 400)
    over = admin(gw, "POST", "/admin/accounts/huge/topup", json={"amount": 1, "reason": "more"})
    assert "above the most an account may hold" in google_error(over, 409)
    assert admin(gw, "GET", "/admin/accounts/huge").json()["balance"] == 10**15
    assert admin(gw, "GET", f"/admin/accounts/{'9' * 30}").status_code == 404


def test_the_last_admin_key_cannot_be_revoked(gw: Gateway) -> None:
    own = gw.admin_key[:12]
    refused = admin(gw, "POST", f"/admin/keys/{own}/revoke")
    assert "last active admin key" in google_error(refused, 409)
    assert admin(gw, "GET", "/admin/keys").status_code == 200
    # A second admin key may revoke itself; then the first is the last again.
    second = admin(gw, "POST", "/admin/keys", json={"name": "ops-2", "is_admin": True}).json()
    gone = httpx.post(
        f"{gw.url}/admin/keys/{second['prefix']}/revoke", headers={"x-api-key": second["key"]}
    )
    assert gone.status_code == 200 and gone.json()["status"] == "revoked", gone.text
    google_error(admin(gw, "POST", f"/admin/keys/{own}/revoke"), 409)


def test_the_last_admin_key_cannot_be_expired(gw: Gateway) -> None:
    own = gw.admin_key[:12]
    past = {"expires_at": "2020-01-01T00:00:00Z"}
    refused = admin(gw, "PATCH", f"/admin/keys/{own}", json=past)
    assert "expiring it would lock the admin API out" in google_error(refused, 409)
    assert admin(gw, "GET", "/admin/keys").status_code == 200


def test_a_model_the_key_may_not_call_is_404_to_look_up(gw: Gateway) -> None:
    key = new_key(gw, 1_000_000, allowed_models=[TEXT_MODEL])
    client = sdk_client(gw, key)
    assert client.models.get(model=TEXT_MODEL).name == f"models/{TEXT_MODEL}"
    with pytest.raises(errors.ClientError) as hidden:
        client.models.get(model=IMAGE_MODEL)
    assert (hidden.value.code, hidden.value.status) == (404, "NOT_FOUND")
    with pytest.raises(errors.ClientError) as unknown:
        client.models.get(model="gemini-9-imaginary")
    # Word for word what a model no one serves gets: nothing tells that it exists.
    assert hidden.value.message == (unknown.value.message or "").replace(
        "gemini-9-imaginary", IMAGE_MODEL
    )
    raw = httpx.get(f"{gw.url}/v1beta/models/{IMAGE_MODEL}", headers={"x-goog-api-key": key})
    google_error(raw, 404)
    sdk = OpenAI(api_key=key, base_url=f"{gw.url}/v1", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(IMAGE_MODEL)


def test_the_cli_will_not_revoke_the_last_admin_key_either(gw: Gateway) -> None:
    done = gw.cli("keys", "revoke", gw.admin_key[:12])
    assert done.returncode == 1 and "last active admin key" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert admin(gw, "GET", "/admin/keys").status_code == 200
