"""Every status code of the task API, in both forms (HTTP status and body `code` agree), the
egress guard on input images and callbacks, and signed result URLs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.simulator.processes import stop

from .conftest import Gateway, Simulator, simulator_upstream, start_gateway
from .receiver import Receiver
from .test_credits import balance, ledger_matches_balances, new_key
from .test_tasks import FORMS, TASK_ENV, create, png, result_urls, task_id, wait_final


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, simulator: Simulator) -> Iterator[Gateway]:
    config = {
        "upstreams": [simulator_upstream(simulator, timeout_s=5, breaker_failures=1000)],
    }
    gateway = start_gateway(
        tmp_path_factory.mktemp("task-errors"),
        config,
        # 7.2 s: result links expire within the test, yet outlive a slow poll on a busy machine.
        NANOGATE_RESULT_TTL_HOURS="0.002",
        NANOGATE_TASK_MAX_ATTEMPTS="2",
        **TASK_ENV,
    )
    yield gateway
    stop(gateway.proc)


def expect(response: httpx.Response, code: int, form: str, *words: str) -> dict[str, Any]:
    """The code is in the HTTP status and in the body, with a human message in the form's
    field (`message` or `msg`) that mentions `words`."""
    assert response.status_code == code, response.text
    doc: dict[str, Any] = response.json()
    assert doc["code"] == code
    text = doc["message" if form == "message" else "msg"]
    for word in words:
        assert word in text, text
    assert "Traceback" not in response.text
    return doc


BOTH = pytest.mark.parametrize("form", ["message", "msg"])


@BOTH
def test_401_without_a_key_or_with_a_wrong_one(gw: Gateway, form: str) -> None:
    response = httpx.post(gw.url + FORMS[form][0], json={"model": "x", "input": {"prompt": "x"}})
    expect(response, 401, form, "API key")
    response = create(gw, "ng_00000000_wrong", form, "google/nano-banana", {"prompt": "x"})
    expect(response, 401, form)
    response = httpx.get(f"{gw.url}{FORMS[form][1]}?{FORMS[form][2]}=abc")
    expect(response, 401, form)


@BOTH
def test_402_when_the_account_cannot_cover_the_task(gw: Gateway, form: str) -> None:
    key = new_key(gw, 1000)
    response = create(gw, key, form, "nano-banana-pro", {"prompt": "x", "resolution": "4K"})
    expect(response, 402, form, "credits", "has 1,000 available")
    assert balance(gw, key) == 1000


@BOTH
def test_404_for_an_unknown_task_or_model(gw: Gateway, form: str) -> None:
    key = new_key(gw, 10_000_000)
    path, param = FORMS[form][1], FORMS[form][2]
    response = httpx.get(f"{gw.url}{path}?{param}=no-such-task", headers={"x-api-key": key})
    expect(response, 404, form, "no-such-task")
    expect(create(gw, key, form, "google/nano-bananas", {"prompt": "x"}), 404, form, "nano-bananas")


@BOTH
def test_another_accounts_task_is_404(gw: Gateway, form: str) -> None:
    owner, stranger = new_key(gw, 10_000_000), new_key(gw, 10_000_000)
    task = task_id(create(gw, owner, form, "google/nano-banana", {"prompt": "x"}), form)
    path, param = FORMS[form][1], FORMS[form][2]
    response = httpx.get(f"{gw.url}{path}?{param}={task}", headers={"x-api-key": stranger})
    expect(response, 404, form)


@pytest.mark.parametrize(
    ("form", "body", "words"),
    [
        ("message", b"{not json", ("JSON",)),
        ("message", {"input": {"prompt": "x"}}, ("model",)),
        ("msg", {"model": "google/nano-banana"}, ("input",)),
        ("message", {"model": "google/nano-banana", "input": {}}, ("input.prompt",)),
        (
            "message",
            {"model": "google/nano-banana-edit", "input": {"prompt": "x"}},
            ("image_urls",),
        ),
        (
            "msg",
            {"model": "google/nano-banana", "input": {"prompt": "x", "image_size": "7:3"}},
            ("input.image_size", "7:3"),
        ),
        (
            "message",
            {"model": "google/nano-banana", "input": {"prompt": "x", "resolution": "4K"}},
            ("input.resolution", "4K"),
        ),
        (
            "msg",
            {"model": "nano-banana-pro", "input": {"prompt": "x", "output_format": "gif"}},
            ("input.output_format",),
        ),
        (
            "message",
            {"model": "google/nano-banana", "input": {"prompt": "x"}, "callback_url": 7},
            ("callback_url",),
        ),
        (
            "msg",
            {
                "model": "google/nano-banana",
                "input": {"prompt": "x"},
                "callBackUrl": "ftp://example.com/cb",
            },
            ("callBackUrl",),
        ),
        (
            "message",
            {
                "model": "google/nano-banana",
                "input": {"prompt": "x", "image_urls": ["a", "b", "c", "d"]},
            },
            ("image_urls",),
        ),
    ],
)
def test_422_names_the_field(gw: Gateway, form: str, body: Any, words: tuple[str, ...]) -> None:
    key = new_key(gw, 10_000_000)
    headers = {"x-api-key": key, "content-type": "application/json"}
    response = httpx.post(
        gw.url + FORMS[form][0],
        content=body if isinstance(body, bytes) else None,
        json=None if isinstance(body, bytes) else body,
        headers=headers,
    )
    expect(response, 422, form, *words)
    assert balance(gw, key) == 10_000_000


@BOTH
def test_429_past_the_keys_rate_limit(gw: Gateway, form: str) -> None:
    key = new_key(gw, 10_000_000, rpm_limit=1)
    task_id(create(gw, key, form, "google/nano-banana", {"prompt": "x"}), form)
    response = create(gw, key, form, "google/nano-banana", {"prompt": "x"})
    expect(response, 429, form, "per minute")
    assert int(response.headers["retry-after"]) >= 1


@BOTH
def test_a_generation_that_gives_no_image_fails_501_and_is_refunded(
    gw: Gateway, simulator: Simulator, form: str
) -> None:
    key = new_key(gw, 10_000_000)
    blocked = {"candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}]}
    simulator.faults({"body": blocked})
    task = task_id(create(gw, key, form, "google/nano-banana", {"prompt": "x"}), form)
    data = wait_final(gw, key, form, task)
    if form == "message":
        assert data["status"] == "failed" and data["result"] is None
        assert data["error"]["code"] == 501 and "IMAGE_SAFETY" in data["error"]["message"]
        assert data["cost"] == 0
    else:
        assert data["state"] == "fail" and data["resultJson"] == ""
        assert data["failCode"] == "501" and "IMAGE_SAFETY" in data["failMsg"]
    assert balance(gw, key) == 10_000_000
    ledger_matches_balances(gw)


def test_a_passing_upstream_failure_is_retried_then_succeeds(
    gw: Gateway, simulator: Simulator
) -> None:
    key = new_key(gw, 10_000_000)
    simulator.faults({"status": 503})
    task = task_id(create(gw, key, "message", "google/nano-banana", {"prompt": "x"}), "message")
    data = wait_final(gw, key, "message", task)
    assert data["status"] == "succeeded"
    assert balance(gw, key) == 10_000_000 - data["cost"]


def test_an_upstream_that_keeps_failing_ends_the_task_refunded(
    gw: Gateway, simulator: Simulator
) -> None:
    key = new_key(gw, 10_000_000)
    simulator.faults(*[{"status": 500}] * 2)
    task = task_id(create(gw, key, "msg", "google/nano-banana", {"prompt": "x"}), "msg")
    data = wait_final(gw, key, "msg", task)
    assert data["state"] == "fail" and data["failCode"] == "501", data
    assert balance(gw, key) == 10_000_000


def test_an_unreadable_upstream_answer_fails_the_task_saying_so(
    gw: Gateway, simulator: Simulator
) -> None:
    key = new_key(gw, 10_000_000)
    simulator.faults(*[{"malformed": True}] * 2)
    task = task_id(create(gw, key, "msg", "google/nano-banana", {"prompt": "x"}), "msg")
    data = wait_final(gw, key, "msg", task)
    # 501 is the task API's own code for a failed generation; the message says why.
    assert data["state"] == "fail" and data["failCode"] == "501", data
    assert "Bad upstream answer" in data["failMsg"], data
    assert balance(gw, key) == 10_000_000


@BOTH
def test_455_in_maintenance_mode(tmp_path: Path, form: str) -> None:
    gw = start_gateway(tmp_path, None, NANOGATE_MAINTENANCE="true")
    try:
        response = create(gw, gw.client_key, form, "google/nano-banana", {"prompt": "x"})
        expect(response, 455, form, "maintenance")
        gemini = httpx.post(
            f"{gw.url}/v1beta/models/gemini-2.5-flash-image:generateContent",
            headers={"x-goog-api-key": gw.client_key},
            json={"contents": [{"parts": [{"text": "x"}]}]},
        )
        assert gemini.status_code == 503 and gemini.json()["error"]["status"] == "UNAVAILABLE"
    finally:
        stop(gw.proc)


def test_505_when_a_feature_is_switched_off(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, None, NANOGATE_DISABLED_FEATURES="callbacks,image_urls")
    try:
        for form in FORMS:
            response = create(
                gw, gw.client_key, form, "google/nano-banana", {"prompt": "x"}, "http://e.com/cb"
            )
            expect(response, 505, form, "allbacks")
            response = create(
                gw,
                gw.client_key,
                form,
                "google/nano-banana",
                {"prompt": "x", "image_urls": ["https://example.com/a.png"]},
            )
            expect(response, 505, form, "URL")
    finally:
        stop(gw.proc)


# -- the egress guard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/a.png",
        "http://192.168.0.1/a.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/a.png",
        "http://[::ffff:10.0.0.1]/a.png",
        "http://224.0.0.1/a.png",
    ],
)
def test_private_addresses_are_refused_at_create(gw: Gateway, url: str) -> None:
    key = new_key(gw, 10_000_000)
    response = create(
        gw, key, "message", "google/nano-banana", {"prompt": "x", "image_urls": [url]}
    )
    expect(response, 422, "message", "input.image_urls[0]", "allow-list")
    response = create(gw, key, "msg", "google/nano-banana", {"prompt": "x"}, url)
    # The refusal says which setting lets the address through, and how.
    expect(response, 422, "msg", "callBackUrl", "egress_allowlist", "NANOGATE_EGRESS_ALLOWLIST=")


@BOTH
def test_a_name_resolving_to_loopback_is_refused_at_create_like_a_literal(
    demo_gateway: Gateway, receiver: Receiver, form: str
) -> None:
    # No allow-list on this gateway: localhost is refused at create, not at delivery.
    port = receiver.url.rsplit(":", 1)[1]
    key = new_key(demo_gateway, 10_000_000)
    callback = "callback_url" if form == "message" else "callBackUrl"
    for host in ("localhost", "LOCALHOST", "127.0.0.1"):
        hook = f"http://{host}:{port}/cb/refused"
        response = create(demo_gateway, key, form, "google/nano-banana", {"prompt": "x"}, hook)
        doc = expect(response, 422, form, callback, "loopback", "egress_allowlist")
        text = doc["message" if form == "message" else "msg"]
        entry = "127.0.0.1" if host == "127.0.0.1" else "localhost"
        assert f"NANOGATE_EGRESS_ALLOWLIST={entry};" in text
        if host != "127.0.0.1":
            assert "127.0.0.1" not in text  # a resolved address is never shown
        image = {"prompt": "x", "image_urls": [f"http://{host}:{port}/in/a.png"]}
        response = create(demo_gateway, key, form, "google/nano-banana", image)
        expect(response, 422, form, "input.image_urls[0]", "loopback", "NANOGATE_EGRESS_ALLOWLIST")
    assert receiver.at("/cb/refused") == []
    assert balance(demo_gateway, key) == 10_000_000  # nothing was queued


@BOTH
def test_a_name_that_does_not_resolve_is_refused_at_create(
    demo_gateway: Gateway, form: str
) -> None:
    key = new_key(demo_gateway, 10_000_000)
    hook = "https://no-such-host.invalid/hook"
    response = create(demo_gateway, key, form, "google/nano-banana", {"prompt": "x"}, hook)
    callback = "callback_url" if form == "message" else "callBackUrl"
    expect(response, 422, form, callback, "no-such-host.invalid does not resolve")
    image = {"prompt": "x", "image_urls": ["https://ok.example.invalid/a.png"]}
    response = create(demo_gateway, key, form, "google/nano-banana", image)
    expect(response, 422, form, "input.image_urls[0]", "does not resolve")


def test_a_redirect_to_loopback_from_an_allowed_host_is_refused(
    tmp_path: Path, receiver: Receiver
) -> None:
    # Only the name "localhost" is allowed: the literal 127.0.0.1 it redirects to is not.
    receiver.files["/in/ok.png"] = (png(64, 64), "image/png")
    port = receiver.url.rsplit(":", 1)[1]
    gw = start_gateway(tmp_path, None, NANOGATE_EGRESS_ALLOWLIST="localhost")
    try:
        key = new_key(gw, 10_000_000)
        # The allowed name passes the create-time check, and its callback is delivered.
        hook = f"/cb/allowed-by-name-{time.monotonic_ns()}"
        create(
            gw, key, "msg", "google/nano-banana", {"prompt": "x"}, f"http://localhost:{port}{hook}"
        )
        receiver.wait_for(hook)
        direct = f"http://localhost:{port}/in/ok.png"
        redirected = f"http://localhost:{port}/redirect?to=http://127.0.0.1:{port}/in/ok.png"
        good = task_id(
            create(
                gw, key, "message", "google/nano-banana", {"prompt": "x", "image_urls": [direct]}
            ),
            "message",
        )
        assert wait_final(gw, key, "message", good)["status"] == "succeeded"
        bad = task_id(
            create(
                gw,
                key,
                "message",
                "google/nano-banana",
                {"prompt": "x", "image_urls": [redirected]},
            ),
            "message",
        )
        data = wait_final(gw, key, "message", bad)
        assert data["status"] == "failed" and data["error"]["code"] == 422
        assert "input.image_urls[0]" in data["error"]["message"]
        assert "127.0.0.1" in data["error"]["message"]
        assert data["cost"] == 0
        ledger_matches_balances(gw)
    finally:
        stop(gw.proc)


def test_an_input_that_is_not_an_image_fails_the_task(gw: Gateway, receiver: Receiver) -> None:
    receiver.files["/in/fake.png"] = (b"<html>not an image</html>", "image/png")
    key = new_key(gw, 10_000_000)
    url = receiver.url + "/in/fake.png"
    task = task_id(
        create(gw, key, "message", "google/nano-banana", {"prompt": "x", "image_urls": [url]}),
        "message",
    )
    data = wait_final(gw, key, "message", task)
    assert data["status"] == "failed" and data["error"]["code"] == 422
    assert balance(gw, key) == 10_000_000


# -- signed result URLs --------------------------------------------------------------------------


def test_result_urls_refuse_tampering_and_expire(gw: Gateway) -> None:
    key = new_key(gw, 10_000_000)
    task = task_id(create(gw, key, "message", "google/nano-banana", {"prompt": "x"}), "message")
    (url,) = result_urls(wait_final(gw, key, "message", task), "message")
    assert httpx.get(url).status_code == 200
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}

    def variant(path: str = parts.path, **changes: str) -> httpx.Response:
        return httpx.get(f"{gw.url}{path}?{urlencode({**query, **changes})}")

    forged_sig = ("0" if query["sig"][0] != "0" else "1") + query["sig"][1:]
    for response in (
        variant(sig=forged_sig),
        variant(expires=str(int(query["expires"]) + 3600)),
        variant(path=parts.path.replace(parts.path[-8:-4], "0000")),
        httpx.get(f"{gw.url}{parts.path}"),
    ):
        assert response.status_code in (403, 404), response.text
        assert response.json()["error"]["status"] in ("PERMISSION_DENIED", "NOT_FOUND")
    time.sleep(max(0.0, int(query["expires"]) - time.time()) + 1.1)
    expired = httpx.get(url)
    assert expired.status_code == 410 and "expired" in expired.json()["error"]["message"]
