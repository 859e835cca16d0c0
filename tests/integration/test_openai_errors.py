"""The OpenAI-compatible dialect's errors, end to end: real `nanogate serve` processes over real
HTTP, the official `openai` SDK as the client (with retries off), the upstream simulator's fault
queue for upstream failures.

Every error must raise the SDK's exception class for its status and carry OpenAI's envelope
{"error": {"message", "type", "param", "code"}}; none may carry a key or base64 data.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.simulator.processes import stop

from .conftest import SIM_KEY, Gateway, Simulator, start_gateway
from .test_credits import balance, new_key

IMAGE_MODEL = "gemini-2.5-flash-image"
TEXT_MODEL = "gemini-2.5-flash"
HELLO = [{"role": "user", "content": "say hello"}]
DRAW = [{"role": "user", "content": "draw a lighthouse"}]
PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
# A full client key (ng_<8 hex>_<secret>) or admin key; the bare prefix may be shown.
_FULL_KEY = re.compile(r"\bnga?_[0-9a-f]{8}_[A-Za-z0-9_\-]{20,}")
# Image data or any other blob: a long unbroken run of base64 characters.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{64,}")


def client(gw: Gateway, key: str | None = None) -> OpenAI:
    return OpenAI(api_key=key or gw.client_key, base_url=f"{gw.url}/v1", max_retries=0, timeout=30)


def assert_clean(text: str, *secrets: str) -> None:
    """No key (ours, the client's, the upstream's) and no base64 data in what a client sees."""
    assert not _FULL_KEY.search(text), text[:300]
    assert SIM_KEY not in text, text[:300]
    for secret in secrets:
        assert secret not in text, text[:300]
    assert not _BASE64_RUN.search(text), text[:300]


def check_envelope(
    exc: openai.APIStatusError,
    status: int,
    type_: str,
    code: str | None,
    param: str | None = None,
    *secrets: str,
) -> str:
    """The HTTP status, OpenAI's envelope exactly, and the SDK's reading of it; the message."""
    assert exc.status_code == status, exc.response.text
    doc = exc.response.json()
    assert list(doc) == ["error"], doc
    error = doc["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert (error["type"], error["param"], error["code"]) == (type_, param, code), error
    assert isinstance(error["message"], str) and error["message"]
    # What the SDK read from it.
    assert (exc.type, exc.param, exc.code) == (type_, param, code)
    assert exc.body == error
    assert exc.response.headers["content-type"].startswith("application/json")
    assert_clean(exc.response.text, *secrets)
    message: str = error["message"]
    return message


def raw_envelope(response: httpx.Response, status: int, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    doc = response.json()
    assert list(doc) == ["error"] and set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["param"] == param
    if status == 400:
        assert doc["error"]["type"] == "invalid_request_error"
    assert_clean(response.text)
    message: str = doc["error"]["message"]
    return message


def post(gw: Gateway, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key or gw.client_key}", **kwargs.pop("headers", {})}
    return httpx.post(f"{gw.url}{path}", headers=headers, timeout=30, **kwargs)


@pytest.fixture
def sim(simulator: Simulator) -> Iterator[Simulator]:
    """The session's simulator, with no recorded requests and no faults, before and after."""
    simulator.clear()
    yield simulator
    simulator.clear()


# -- 400: bad values, unreadable bodies -----------------------------------------------------


BAD_VALUES: list[tuple[str, str, dict[str, Any], str]] = [
    ("chat", TEXT_MODEL, {"temperature": 5}, "temperature"),
    ("chat", TEXT_MODEL, {"n": 0}, "n"),
    ("chat", TEXT_MODEL, {"top_p": -1}, "top_p"),
    ("chat", TEXT_MODEL, {"response_format": {"type": "xml"}}, "response_format.type"),
    ("chat", TEXT_MODEL, {"stream": "yes"}, "stream"),
    ("chat", TEXT_MODEL, {"messages": []}, "messages"),
    ("chat", IMAGE_MODEL, {"image_config": {"aspect_ratio": "7:3"}}, "image_config.aspect_ratio"),
    ("chat", IMAGE_MODEL, {"modalities": ["audio"]}, "modalities"),
    ("images", IMAGE_MODEL, {"size": "huge"}, "size"),
    ("images", IMAGE_MODEL, {"n": 0}, "n"),
    ("images", IMAGE_MODEL, {"response_format": "xml"}, "response_format"),
    ("images", IMAGE_MODEL, {"aspect_ratio": "7:3"}, "aspect_ratio"),
    ("images", IMAGE_MODEL, {"prompt": ""}, "prompt"),
    ("images", TEXT_MODEL, {}, "model"),
]


@pytest.mark.parametrize(
    ("endpoint", "model", "body", "param"),
    BAD_VALUES,
    ids=[f"{e}-{p}" for e, _, _, p in BAD_VALUES],
)
def test_a_known_parameter_with_a_wrong_value_is_a_400_naming_it(
    sim_gateway: Gateway,
    sim: Simulator,
    endpoint: str,
    model: str,
    body: dict[str, Any],
    param: str,
) -> None:
    sdk = client(sim_gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        if endpoint == "chat":
            sdk.chat.completions.create(
                model=model, messages=HELLO, extra_body={"messages": HELLO, **body}
            )
        else:
            sdk.images.generate(model=model, prompt="a kite", extra_body=body)
    message = check_envelope(
        caught.value, 400, "invalid_request_error", "invalid_value", param, sim_gateway.client_key
    )
    assert message.startswith(f"{param}:")
    assert sim.requests() == []


def test_unknown_parameters_are_ignored(sim_gateway: Gateway, sim: Simulator) -> None:
    sdk = client(sim_gateway)
    answer = sdk.chat.completions.create(
        model=TEXT_MODEL,
        messages=HELLO,
        user="someone",
        logit_bias={"50256": -100},
        extra_body={"frobnicate": {"level": 11}, "another_new_thing": [1, 2]},
    )
    assert answer.choices[0].message.content
    images = sdk.images.generate(
        model=IMAGE_MODEL,
        prompt="a kite",
        quality="hd",
        style="vivid",
        extra_body={"frobnicate": True},
    )
    assert len(images.data or []) == 1
    assert "frobnicate" not in str([r["body"] for r in sim.requests()])


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/images/generations"])
@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b'{"model": "gemini-2.5-flash", "messages": [', "not valid JSON"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b'"a string"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"", "empty"),
    ],
    ids=["invalid-json", "array", "string", "null", "empty"],
)
def test_an_unreadable_body_is_a_400_in_the_openai_envelope(
    sim_gateway: Gateway, sim: Simulator, path: str, content: bytes, said: str
) -> None:
    response = post(
        sim_gateway, path, content=content, headers={"content-type": "application/json"}
    )
    assert said in raw_envelope(response, 400)
    assert sim.requests() == []


def test_an_edit_sent_as_json_is_a_400(sim_gateway: Gateway, sim: Simulator) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(PNG_1PX).decode()
    response = post(
        sim_gateway,
        "/v1/images/edits",
        json={"model": IMAGE_MODEL, "prompt": "make it blue", "image": data_url},
    )
    assert "multipart/form-data" in raw_envelope(response, 400)
    assert sim.requests() == []


def test_an_edit_with_a_file_that_is_not_an_image_is_a_400_naming_it(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    sdk = client(sim_gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.edit(
            model=IMAGE_MODEL,
            prompt="make it blue",
            image=("notes.txt", b"just some text, no picture here\n" * 20, "text/plain"),
        )
    message = check_envelope(
        caught.value, 400, "invalid_request_error", "invalid_value", "image[0]"
    )
    assert "notes.txt" in message
    # The second of two files, after a good one.
    with pytest.raises(openai.BadRequestError) as second:
        sdk.images.edit(
            model=IMAGE_MODEL,
            prompt="make it blue",
            image=[("dot.png", PNG_1PX, "image/png"), ("notes.txt", b"text", "text/plain")],
        )
    check_envelope(second.value, 400, "invalid_request_error", "invalid_value", "image[1]")
    assert sim.requests() == []


def test_error_messages_never_echo_base64_or_keys(sim_gateway: Gateway, sim: Simulator) -> None:
    sdk = client(sim_gateway)
    blob = base64.b64encode(bytes(range(256)) * 40).decode()
    # A GIF data URL the model does not take: the mime is named, the data is not.
    gif = "data:image/gif;base64," + blob
    content = [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": gif}}]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model=IMAGE_MODEL, messages=[{"role": "user", "content": content}]
        )
    check_envelope(
        caught.value,
        400,
        "invalid_request_error",
        "invalid_value",
        "messages[0].content[1].image_url.url",
    )
    # A blob where a number belongs.
    with pytest.raises(openai.BadRequestError) as number:
        sdk.chat.completions.create(
            model=TEXT_MODEL, messages=HELLO, extra_body={"temperature": blob}
        )
    check_envelope(number.value, 400, "invalid_request_error", "invalid_value", "temperature")
    # A blob where the model name goes is a 404 that does not repeat it.
    with pytest.raises(openai.NotFoundError) as model:
        sdk.chat.completions.create(model=blob, messages=HELLO)
    assert_clean(model.value.response.text)
    assert sim.requests() == []


def test_an_upstream_error_that_echoes_the_upstream_key_does_not_reach_the_client(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    # The gateway's own upstream credential is the secret a client must never see, even when
    # the upstream's error message repeats it (some resellers echo the key they were sent).
    blob = base64.b64encode(bytes(range(256)) * 4).decode()
    sim.faults(
        {
            "status": 500,
            "message": f"key {SIM_KEY} failed while reading {blob}",
            "model": TEXT_MODEL,
        }
    )
    with pytest.raises(openai.InternalServerError) as caught:
        client(sim_gateway).chat.completions.create(model=TEXT_MODEL, messages=HELLO)
    check_envelope(caught.value, 500, "api_error", "internal_error", None, SIM_KEY)


# -- 401, 403, 404 ---------------------------------------------------------------------------


def test_no_key_and_a_wrong_key_are_401(sim_gateway: Gateway, sim: Simulator) -> None:
    sdk = client(sim_gateway)
    no_key = {"Authorization": openai.omit}
    with pytest.raises(openai.AuthenticationError) as missing:
        sdk.chat.completions.create(model=TEXT_MODEL, messages=HELLO, extra_headers=no_key)
    check_envelope(missing.value, 401, "authentication_error", "invalid_api_key")
    with pytest.raises(openai.AuthenticationError) as listing:
        sdk.models.list(extra_headers=no_key)
    check_envelope(listing.value, 401, "authentication_error", "invalid_api_key")
    for wrong in ("ng_00000000_" + "x" * 43, "sk-proj-not-a-nanogate-key"):
        bad = client(sim_gateway, wrong)
        with pytest.raises(openai.AuthenticationError) as chat:
            bad.chat.completions.create(model=TEXT_MODEL, messages=HELLO)
        check_envelope(chat.value, 401, "authentication_error", "invalid_api_key", None, wrong)
        with pytest.raises(openai.AuthenticationError) as images:
            bad.images.generate(model=IMAGE_MODEL, prompt="a kite")
        check_envelope(images.value, 401, "authentication_error", "invalid_api_key", None, wrong)
        with pytest.raises(openai.AuthenticationError) as edit:
            bad.images.edit(model=IMAGE_MODEL, prompt="x", image=("a.png", PNG_1PX, "image/png"))
        check_envelope(edit.value, 401, "authentication_error", "invalid_api_key", None, wrong)
    assert sim.requests() == []


def test_a_revoked_key_is_403(sim_gateway: Gateway, sim: Simulator) -> None:
    key = new_key(sim_gateway, 1_000_000)
    sdk = client(sim_gateway, key)
    assert sdk.chat.completions.create(model=TEXT_MODEL, messages=HELLO).choices
    revoked = httpx.post(
        f"{sim_gateway.url}/admin/keys/{key[:11]}/revoke",
        headers={"x-api-key": sim_gateway.admin_key},
    )
    assert revoked.status_code == 200, revoked.text
    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk.chat.completions.create(model=TEXT_MODEL, messages=HELLO)
    message = check_envelope(caught.value, 403, "permission_error", "permission_denied", None, key)
    assert "revoked" in message and key[:11] in message
    with pytest.raises(openai.PermissionDeniedError):
        sdk.images.generate(model=IMAGE_MODEL, prompt="a kite")
    with pytest.raises(openai.PermissionDeniedError):
        sdk.models.list()
    assert len(sim.requests()) == 1


def test_a_model_outside_the_keys_allowed_models_is_403_and_unlisted(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    key = new_key(sim_gateway, 1_000_000, allowed_models=[TEXT_MODEL])
    sdk = client(sim_gateway, key)
    assert [m.id for m in sdk.models.list()] == [TEXT_MODEL]
    assert sdk.models.retrieve(TEXT_MODEL).id == TEXT_MODEL
    # Looked up, it is as absent as from the list: the same 404 as a model no one serves.
    with pytest.raises(openai.NotFoundError) as retrieve:
        sdk.models.retrieve(IMAGE_MODEL)
    hidden = check_envelope(retrieve.value, 404, "not_found_error", "model_not_found", None, key)
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.models.retrieve("gemini-9-imaginary")
    absent = check_envelope(unknown.value, 404, "not_found_error", "model_not_found")
    assert hidden == absent.replace("gemini-9-imaginary", IMAGE_MODEL)
    with pytest.raises(openai.PermissionDeniedError) as chat:
        sdk.chat.completions.create(model=IMAGE_MODEL, messages=DRAW)
    message = check_envelope(chat.value, 403, "permission_error", "permission_denied", None, key)
    assert IMAGE_MODEL in message
    # By alias too, and on the images endpoints (whose default model is an image model).
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model="google/nano-banana", messages=DRAW)
    with pytest.raises(openai.PermissionDeniedError):
        sdk.images.generate(prompt="a kite")
    with pytest.raises(openai.PermissionDeniedError):
        sdk.images.edit(model=IMAGE_MODEL, prompt="x", image=("a.png", PNG_1PX, "image/png"))
    assert sim.requests() == []
    assert sdk.chat.completions.create(model=TEXT_MODEL, messages=HELLO).choices
    # The unrestricted key sees every model.
    everything = {m.id for m in client(sim_gateway).models.list()}
    assert {TEXT_MODEL, IMAGE_MODEL} <= everything and len(everything) > 2


def test_an_unknown_model_is_404_model_not_found(sim_gateway: Gateway, sim: Simulator) -> None:
    sdk = client(sim_gateway)
    with pytest.raises(openai.NotFoundError) as chat:
        sdk.chat.completions.create(model="gpt-4o", messages=HELLO)
    message = check_envelope(chat.value, 404, "not_found_error", "model_not_found")
    assert "gpt-4o" in message
    with pytest.raises(openai.NotFoundError) as images:
        sdk.images.generate(model="dall-e-3", prompt="a kite")
    check_envelope(images.value, 404, "not_found_error", "model_not_found")
    with pytest.raises(openai.NotFoundError) as edit:
        sdk.images.edit(model="dall-e-2", prompt="x", image=("a.png", PNG_1PX, "image/png"))
    check_envelope(edit.value, 404, "not_found_error", "model_not_found")
    with pytest.raises(openai.NotFoundError) as retrieve:
        sdk.models.retrieve("gpt-4o")
    check_envelope(retrieve.value, 404, "not_found_error", "model_not_found")
    assert sim.requests() == []


# -- 402 ---------------------------------------------------------------------------------------


def _needed(exc: openai.APIStatusError) -> int:
    found = re.search(r"costs at least ([\d,]+) credits", exc.response.json()["error"]["message"])
    assert found, exc.response.text
    return int(found[1].replace(",", ""))


def test_too_few_credits_is_a_402(sim_gateway: Gateway, sim: Simulator) -> None:
    key = new_key(sim_gateway, 10)
    sdk = client(sim_gateway, key)
    for call in (
        lambda: sdk.chat.completions.create(model=IMAGE_MODEL, messages=DRAW),
        lambda: sdk.images.generate(model=IMAGE_MODEL, prompt="a kite"),
        lambda: sdk.images.edit(
            model=IMAGE_MODEL, prompt="x", image=("a.png", PNG_1PX, "image/png")
        ),
    ):
        with pytest.raises(openai.APIStatusError) as caught:
            call()
        assert type(caught.value) is openai.APIStatusError
        message = check_envelope(
            caught.value, 402, "insufficient_quota", "insufficient_credits", None, key
        )
        assert "has 10" in message
    assert sim.requests() == []
    assert balance(sim_gateway, key) == 10


def test_n_images_are_refused_up_front_when_the_balance_covers_fewer(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    # What one image and three images need, read off the refusals of a nearly empty key.
    poor = client(sim_gateway, new_key(sim_gateway, 10))
    with pytest.raises(openai.APIStatusError) as one:
        poor.images.generate(model=IMAGE_MODEL, prompt="a kite")
    with pytest.raises(openai.APIStatusError) as three:
        poor.images.generate(model=IMAGE_MODEL, prompt="a kite", n=3)
    single = _needed(one.value)
    assert _needed(three.value) == 3 * single
    # A balance that covers one image (one and a half) but not three.
    credits = single + single // 2
    key = new_key(sim_gateway, credits)
    sdk = client(sim_gateway, key)
    with pytest.raises(openai.APIStatusError) as images:
        sdk.images.generate(model=IMAGE_MODEL, prompt="a kite", n=3)
    message = check_envelope(
        images.value, 402, "insufficient_quota", "insufficient_credits", None, key
    )
    assert f"costs at least {3 * single:,}" in message and f"has {credits:,}" in message
    with pytest.raises(openai.APIStatusError) as chat:
        sdk.chat.completions.create(model=IMAGE_MODEL, messages=DRAW, n=3)
    check_envelope(chat.value, 402, "insufficient_quota", "insufficient_credits", None, key)
    with pytest.raises(openai.APIStatusError) as edit:
        sdk.images.edit(model=IMAGE_MODEL, prompt="x", image=("a.png", PNG_1PX, "image/png"), n=3)
    check_envelope(edit.value, 402, "insufficient_quota", "insufficient_credits", None, key)
    assert sim.requests() == []  # refused before any upstream call
    assert balance(sim_gateway, key) == credits
    # One image is within the balance.
    assert len(sdk.images.generate(model=IMAGE_MODEL, prompt="a kite").data or []) == 1
    assert len(sim.requests()) == 1


# -- 413 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The demo upstream, with a 64 KiB request limit."""
    gateway = start_gateway(tmp_path_factory.mktemp("small"), NANOGATE_MAX_REQUEST_BYTES="65536")
    yield gateway
    stop(gateway.proc)


def test_a_body_over_max_request_bytes_is_a_413(small_gw: Gateway) -> None:
    sdk = client(small_gw)
    before = balance(small_gw, small_gw.client_key)
    big = "a lighthouse on a cliff " * 5000  # ~120 kB
    with pytest.raises(openai.APIStatusError) as chat:
        sdk.chat.completions.create(model=TEXT_MODEL, messages=[{"role": "user", "content": big}])
    assert type(chat.value) is openai.APIStatusError
    message = check_envelope(chat.value, 413, "invalid_request_error", "request_too_large")
    assert "65536 bytes" in message
    with pytest.raises(openai.APIStatusError) as images:
        sdk.images.generate(model=IMAGE_MODEL, prompt=big)
    check_envelope(images.value, 413, "invalid_request_error", "request_too_large")
    with pytest.raises(openai.APIStatusError) as edit:
        sdk.images.edit(
            model=IMAGE_MODEL, prompt="x", image=("big.png", PNG_1PX + b"\0" * 100_000, "image/png")
        )
    check_envelope(edit.value, 413, "invalid_request_error", "request_too_large")

    # Without a Content-Length (chunked), the limit holds while reading.
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 10_000
        yield b'"}]}'

    chunked = post(small_gw, "/v1/chat/completions", content=chunks())
    assert "content-length" not in chunked.request.headers
    raw_envelope(chunked, 413)
    assert chunked.json()["error"]["code"] == "request_too_large"
    # Just under the limit is served.
    fits = "a lighthouse " * 4000  # ~52 kB
    assert sdk.chat.completions.create(
        model=TEXT_MODEL, messages=[{"role": "user", "content": fits}]
    ).choices
    spent = before - balance(small_gw, small_gw.client_key)
    assert spent > 0  # only the request that fitted was charged


def test_the_413_message_states_the_limit_it_enforces(small_gw: Gateway) -> None:
    response = post(
        small_gw,
        "/v1/chat/completions",
        json={"model": TEXT_MODEL, "messages": [{"role": "user", "content": "x" * 70_000}]},
    )
    message = raw_envelope(response, 413)
    # 65536 bytes is 64 KiB; a limit "of 0 MiB" tells the client nothing true.
    assert "0 MiB" not in message, message


# -- 429 ---------------------------------------------------------------------------------------


def test_a_keys_rpm_limit_is_a_429_with_retry_after(sim_gateway: Gateway, sim: Simulator) -> None:
    key = new_key(sim_gateway, 1_000_000, rpm_limit=1)
    sdk = client(sim_gateway, key)
    assert sdk.chat.completions.create(model=TEXT_MODEL, messages=HELLO).choices
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=TEXT_MODEL, messages=HELLO)
    message = check_envelope(
        caught.value, 429, "rate_limit_error", "rate_limit_exceeded", None, key
    )
    assert "1 requests per minute" in message
    retry_after = caught.value.response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
    with pytest.raises(openai.RateLimitError) as images:
        sdk.images.generate(model=IMAGE_MODEL, prompt="a kite")
    assert images.value.response.headers["retry-after"].isdigit()
    assert len(sim.requests()) == 1


def test_an_upstream_429_is_a_429_with_its_retry_after(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    key = new_key(sim_gateway, 1_000_000)
    sdk = client(sim_gateway, key)
    sim.faults(
        {"status": 429, "retry_after": 7, "model": TEXT_MODEL},
        {"status": 429, "retry_after": 9, "model": IMAGE_MODEL},
    )
    with pytest.raises(openai.RateLimitError) as chat:
        sdk.chat.completions.create(model=TEXT_MODEL, messages=HELLO)
    check_envelope(chat.value, 429, "rate_limit_error", "rate_limit_exceeded", None, key)
    assert chat.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.RateLimitError) as images:
        sdk.images.generate(model=IMAGE_MODEL, prompt="a kite")
    check_envelope(images.value, 429, "rate_limit_error", "rate_limit_exceeded", None, key)
    assert images.value.response.headers["retry-after"] == "9"
    assert balance(sim_gateway, key) == 1_000_000
    assert len(sim.requests()) == 2  # no retry on the gateway's side either


# -- 5xx ---------------------------------------------------------------------------------------


UPSTREAM_FAILURES: list[tuple[dict[str, Any], int, str]] = [
    ({"status": 503}, 503, "service_unavailable"),
    ({"status": 500}, 500, "internal_error"),
    ({"status": 502}, 502, "bad_upstream_answer"),
    ({"status": 504}, 504, "upstream_timeout"),
    ({"reset": True}, 503, "service_unavailable"),
    ({"malformed": True}, 502, "bad_upstream_answer"),
]


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    UPSTREAM_FAILURES,
    ids=["503", "500", "502", "504", "reset", "malformed"],
)
@pytest.mark.parametrize("endpoint", ["chat", "images"])
def test_an_upstream_failure_is_a_5xx_and_costs_nothing(
    sim_gateway: Gateway,
    sim: Simulator,
    endpoint: str,
    fault: dict[str, Any],
    status: int,
    code: str,
) -> None:
    key = new_key(sim_gateway, 1_000_000)
    sdk = client(sim_gateway, key)
    sim.faults({**fault, "model": IMAGE_MODEL})
    with pytest.raises(openai.InternalServerError) as caught:
        if endpoint == "chat":
            sdk.chat.completions.create(model=IMAGE_MODEL, messages=DRAW)
        else:
            sdk.images.generate(model=IMAGE_MODEL, prompt="a kite")
    check_envelope(caught.value, status, "api_error", code, None, key)
    assert len(sim.requests()) == 1
    assert balance(sim_gateway, key) == 1_000_000


# -- n > 1 on image models -------------------------------------------------------------------


def test_n_images_are_n_calls_charged_for_the_successes_only(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    key = new_key(sim_gateway, 10_000_000)
    sdk = client(sim_gateway, key)
    one = sdk.images.with_raw_response.generate(model=IMAGE_MODEL, prompt="a kite")
    single = int(one.headers["x-nanogate-cost"])
    assert single > 0 and len(one.parse().data or []) == 1
    sim.clear()

    # Three calls, one of which fails: two images, two charges.
    sim.faults({"status": 503, "model": IMAGE_MODEL})
    before = balance(sim_gateway, key)
    raw = sdk.images.with_raw_response.generate(model=IMAGE_MODEL, prompt="a kite", n=3)
    assert raw.http_response.status_code == 200
    images = raw.parse()
    assert len(images.data or []) == 2
    assert all(item.b64_json for item in images.data or [])
    assert len(sim.requests()) == 3
    assert int(raw.headers["x-nanogate-cost"]) == 2 * single
    assert before - balance(sim_gateway, key) == 2 * single

    # The same through chat completions: two choices.
    chat_one = sdk.chat.completions.with_raw_response.create(model=IMAGE_MODEL, messages=DRAW)
    chat_single = int(chat_one.headers["x-nanogate-cost"])
    assert chat_single > 0
    sim.clear()
    sim.faults({"status": 500, "model": IMAGE_MODEL})
    before = balance(sim_gateway, key)
    chat = sdk.chat.completions.with_raw_response.create(model=IMAGE_MODEL, messages=DRAW, n=3)
    completion = chat.parse()
    assert len(completion.choices) == 2
    assert sorted(c.index for c in completion.choices) == [0, 1]
    assert len(sim.requests()) == 3
    assert int(chat.headers["x-nanogate-cost"]) == 2 * chat_single
    assert before - balance(sim_gateway, key) == 2 * chat_single


def test_n_above_max_images_per_request_is_a_400_naming_n(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    sdk = client(sim_gateway)
    with pytest.raises(openai.BadRequestError) as images:
        sdk.images.generate(model=IMAGE_MODEL, prompt="a kite", n=5)
    message = check_envelope(images.value, 400, "invalid_request_error", "invalid_value", "n")
    assert "at most 4" in message
    with pytest.raises(openai.BadRequestError) as chat:
        sdk.chat.completions.create(model=IMAGE_MODEL, messages=DRAW, n=5)
    check_envelope(chat.value, 400, "invalid_request_error", "invalid_value", "n")
    with pytest.raises(openai.BadRequestError) as edit:
        sdk.images.edit(model=IMAGE_MODEL, prompt="x", image=("a.png", PNG_1PX, "image/png"), n=5)
    check_envelope(edit.value, 400, "invalid_request_error", "invalid_value", "n")
    with pytest.raises(openai.BadRequestError) as text:
        sdk.chat.completions.create(model=TEXT_MODEL, messages=HELLO, n=9)
    check_envelope(text.value, 400, "invalid_request_error", "invalid_value", "n")
    assert sim.requests() == []
    # At the limit is served: four calls.
    assert len(sdk.images.generate(model=IMAGE_MODEL, prompt="a kite", n=4).data or []) == 4
    assert len(sim.requests()) == 4


def test_n_images_all_failing_is_an_error_and_costs_nothing(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    key = new_key(sim_gateway, 10_000_000)
    sdk = client(sim_gateway, key)
    sim.faults(*[{"status": 503, "model": IMAGE_MODEL}] * 3)
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.images.generate(model=IMAGE_MODEL, prompt="a kite", n=3)
    check_envelope(caught.value, 503, "api_error", "service_unavailable", None, key)
    assert len(sim.requests()) == 3
    assert balance(sim_gateway, key) == 10_000_000
    sim.faults(*[{"status": 500, "model": IMAGE_MODEL}] * 2)
    with pytest.raises(openai.InternalServerError) as chat:
        sdk.chat.completions.create(model=IMAGE_MODEL, messages=DRAW, n=2)
    check_envelope(chat.value, 500, "api_error", "internal_error", None, key)
    assert len(sim.requests()) == 5
    assert balance(sim_gateway, key) == 10_000_000


# -- Idempotency-Key ---------------------------------------------------------------------------


def test_idempotency_key_on_chat_completions(sim_gateway: Gateway, sim: Simulator) -> None:
    key = new_key(sim_gateway, 10_000_000)
    sdk = client(sim_gateway, key)
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    first = sdk.chat.completions.with_raw_response.create(
        model=TEXT_MODEL, messages=HELLO, extra_headers=idem
    )
    cost = int(first.headers["x-nanogate-cost"])
    assert cost > 0 and "x-nanogate-idempotent-replay" not in first.headers
    assert len(sim.requests()) == 1
    again = sdk.chat.completions.with_raw_response.create(
        model=TEXT_MODEL, messages=HELLO, extra_headers=idem
    )
    assert again.http_response.content == first.http_response.content
    assert again.headers["x-nanogate-idempotent-replay"] == "true"
    assert again.headers["x-nanogate-cost"] == "0"
    assert again.parse().id == first.parse().id
    assert len(sim.requests()) == 1
    assert balance(sim_gateway, key) == 10_000_000 - cost

    with pytest.raises(openai.ConflictError) as caught:
        sdk.chat.completions.create(
            model=TEXT_MODEL, messages=[{"role": "user", "content": "other"}], extra_headers=idem
        )
    message = check_envelope(
        caught.value, 409, "invalid_request_error", "idempotency_key_conflict", None, key
    )
    assert "Idempotency-Key" in message

    with pytest.raises(openai.BadRequestError) as stream:
        sdk.chat.completions.create(
            model=TEXT_MODEL,
            messages=HELLO,
            stream=True,
            extra_headers={"Idempotency-Key": str(uuid.uuid4())},
        )
    check_envelope(stream.value, 400, "invalid_request_error", "invalid_value", "stream", key)
    assert len(sim.requests()) == 1
    assert balance(sim_gateway, key) == 10_000_000 - cost


def test_idempotency_key_on_images_generations(sim_gateway: Gateway, sim: Simulator) -> None:
    key = new_key(sim_gateway, 10_000_000)
    sdk = client(sim_gateway, key)
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    first = sdk.images.with_raw_response.generate(
        model=IMAGE_MODEL, prompt="a kite", n=2, extra_headers=idem
    )
    cost = int(first.headers["x-nanogate-cost"])
    assert cost > 0 and len(first.parse().data or []) == 2
    assert len(sim.requests()) == 2
    again = sdk.images.with_raw_response.generate(
        model=IMAGE_MODEL, prompt="a kite", n=2, extra_headers=idem
    )
    assert again.http_response.content == first.http_response.content
    assert again.headers["x-nanogate-idempotent-replay"] == "true"
    assert again.headers["x-nanogate-cost"] == "0"
    assert len(sim.requests()) == 2
    assert balance(sim_gateway, key) == 10_000_000 - cost
    with pytest.raises(openai.ConflictError) as caught:
        sdk.images.generate(model=IMAGE_MODEL, prompt="a boat", n=2, extra_headers=idem)
    check_envelope(
        caught.value, 409, "invalid_request_error", "idempotency_key_conflict", None, key
    )
    assert len(sim.requests()) == 2


# -- streams -----------------------------------------------------------------------------------


def test_a_stream_failing_before_its_first_byte_gets_a_real_status(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    key = new_key(sim_gateway, 1_000_000)
    sdk = client(sim_gateway, key)
    sim.faults({"status": 503, "model": TEXT_MODEL})
    with pytest.raises(openai.InternalServerError) as unavailable:
        sdk.chat.completions.create(model=TEXT_MODEL, messages=HELLO, stream=True)
    check_envelope(unavailable.value, 503, "api_error", "service_unavailable", None, key)
    sim.faults({"status": 429, "retry_after": 5, "model": TEXT_MODEL})
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model=TEXT_MODEL, messages=HELLO, stream=True)
    check_envelope(limited.value, 429, "rate_limit_error", "rate_limit_exceeded", None, key)
    assert limited.value.response.headers["retry-after"] == "5"
    # n images, streamed once all have finished: all failing is a status too.
    sim.faults(*[{"status": 500, "model": IMAGE_MODEL}] * 2)
    with pytest.raises(openai.InternalServerError) as images:
        sdk.chat.completions.create(model=IMAGE_MODEL, messages=DRAW, n=2, stream=True)
    check_envelope(images.value, 500, "api_error", "internal_error", None, key)
    assert len(sim.requests()) == 4
    assert balance(sim_gateway, key) == 1_000_000


def test_a_stream_failing_mid_way_ends_with_an_error_event(
    sim_gateway: Gateway, sim: Simulator
) -> None:
    key = new_key(sim_gateway, 1_000_000)
    sdk = client(sim_gateway, key)
    sim.faults({"stream_break": True, "model": TEXT_MODEL})
    stream = sdk.chat.completions.create(model=TEXT_MODEL, messages=HELLO, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received += [c.delta.content or "" for c in chunk.choices]
    assert not isinstance(caught.value, openai.APIStatusError)
    assert "".join(received)  # the first chunk arrived before the failure
    error = caught.value.body
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == (
        "api_error",
        "service_unavailable",
        None,
    )
    assert caught.value.message == error["message"]

    # On the wire: a 200 whose last event is the error, with no [DONE] after it.
    sim.faults({"stream_break": True, "model": TEXT_MODEL})
    with httpx.stream(
        "POST",
        f"{sim_gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": TEXT_MODEL, "messages": HELLO, "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert len(events) >= 2 and "[DONE]" not in events[-1]
    assert events[-1].startswith('data: {"error":{')
    assert_clean(events[-1], key)
    assert len(sim.requests()) == 2
    # An upstream that failed mid-way costs nothing.
    deadline = time.monotonic() + 5
    while balance(sim_gateway, key) != 1_000_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert balance(sim_gateway, key) == 1_000_000
