"""The task API end to end, with real processes: `nanogate serve` (demo or simulator upstream),
a callback receiver and file server on 127.0.0.1, over real HTTP, in both task forms."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from nanogate.core.catalog import load_catalog
from nanogate.core.media import sniff_image
from nanogate.tasks.callbacks import sign, standard_sign
from tests.simulator.processes import free_port, pump_stdout, stop, wait_for_line

from .conftest import Gateway, start_gateway
from .receiver import Receiver
from .test_credits import balance, new_key, query

CATALOG = load_catalog()
SECRET = "test-callback-secret-0123456789abcdef"
FORMS = {
    "message": ("/api/v1/client/job/CreateTask", "/api/v1/client/job/TaskInfo", "task_id"),
    "msg": ("/api/v1/jobs/createTask", "/api/v1/jobs/recordInfo", "taskId"),
}
TASK_ENV = {
    "NANOGATE_EGRESS_ALLOWLIST": "127.0.0.1",
    "NANOGATE_CALLBACK_SECRET": SECRET,
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {"upstreams": [{"name": "demo", "kind": "demo", "latency_ms": 50}]}
    gateway = start_gateway(tmp_path_factory.mktemp("tasks"), config, **TASK_ENV)
    yield gateway
    stop(gateway.proc)


def create(
    gw: Gateway,
    key: str,
    form: str,
    model: str,
    input_: dict[str, Any],
    callback: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "input": input_}
    if callback:
        body["callback_url" if form == "message" else "callBackUrl"] = callback
    auth = {"x-api-key": key} if form == "message" else {"Authorization": f"Bearer {key}"}
    return httpx.post(
        gw.url + FORMS[form][0], json=body, headers={**auth, **(headers or {})}, timeout=30
    )


def task_id(response: httpx.Response, form: str) -> str:
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["code"] == 200 and doc["message" if form == "message" else "msg"] == "success"
    found: str = doc["data"][FORMS[form][2]]
    return found


def info(gw: Gateway, key: str, form: str, task: str) -> httpx.Response:
    path, param = FORMS[form][1], FORMS[form][2]
    return httpx.get(f"{gw.url}{path}?{param}={task}", headers={"x-api-key": key}, timeout=10)


def wait_final(gw: Gateway, key: str, form: str, task: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = info(gw, key, form, task)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        state = data["status"] if form == "message" else data["state"]
        if state in ("succeeded", "failed", "success", "fail"):
            return data
        time.sleep(0.05)
    raise AssertionError(f"task {task} not final after {timeout} s")


def result_urls(data: dict[str, Any], form: str) -> list[str]:
    if form == "message":
        urls: list[str] = data["result"]["urls"]
        return urls
    parsed: list[str] = orjson.loads(data["resultJson"])["resultUrls"]
    return parsed


def png(width: int, height: int, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


# -- create, poll, fetch -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "model", "input_", "fmt", "size"),
    [
        ("message", "google/nano-banana", {"aspect_ratio": "16:9"}, "image/png", None),
        ("message", "nano-banana-pro", {"aspect_ratio": "3:4", "resolution": "2K"}, None, "2K"),
        ("msg", "google/nano-banana-v2", {"image_size": "21:9", "resolution": "4K"}, None, "4K"),
        (
            "msg",
            "nano-banana-2",
            {"image_size": "auto", "output_format": "webp"},
            "image/webp",
            None,
        ),
        ("message", "google/nano-banana", {"output_format": "jpeg"}, "image/jpeg", None),
    ],
)
def test_create_poll_and_fetch_the_image_at_its_exact_size(
    gw: Gateway, form: str, model: str, input_: dict[str, Any], fmt: str | None, size: str | None
) -> None:
    key = new_key(gw, 10_000_000)
    response = create(gw, key, form, model, {"prompt": "a lighthouse at dusk", **input_})
    task = task_id(response, form)
    data = wait_final(gw, key, form, task)
    urls = result_urls(data, form)
    assert len(urls) == 1 and urls[0].startswith(gw.url + "/files/")
    image = httpx.get(urls[0], timeout=10)
    assert image.status_code == 200
    mime = sniff_image(image.content)
    assert mime == (fmt or "image/png")
    assert image.headers["content-type"] == mime
    spec = CATALOG.resolve(model)
    ratio = input_.get("aspect_ratio") or input_.get("image_size")
    expected = spec.image_pixels(None if ratio == "auto" else ratio, size)
    assert Image.open(io.BytesIO(image.content)).size == expected
    # The charge is the task's cost, once.
    cost = data["cost"] if form == "message" else data["credits"]
    assert cost > 0
    assert balance(gw, key) == 10_000_000 - cost
    if form == "message":
        assert data["status"] == "succeeded" and data["error"] is None
        assert data["param"]["input"]["prompt"] == "a lighthouse at dusk"
        assert data["complete_at"] >= data["create_at"] and data["duration_s"] >= 0
    else:
        assert data["state"] == "success" and data["failCode"] == "" and data["failMsg"] == ""
        assert orjson.loads(data["param"])["model"] == model
        assert data["completeTime"] >= data["createTime"] and data["costTime"] >= 0


def test_an_edit_uses_the_input_image_fetched_by_url(gw: Gateway, receiver: Receiver) -> None:
    receiver.files["/in/cat.png"] = (png(640, 480), "application/octet-stream")
    key = new_key(gw, 10_000_000)
    response = create(
        gw,
        key,
        "message",
        "google/nano-banana-edit",
        {"prompt": "make it blue", "image_urls": [receiver.url + "/in/cat.png"]},
    )
    data = wait_final(gw, key, "message", task_id(response, "message"))
    assert data["status"] == "succeeded", data
    # The usage record (written in batches) shows the input image reached the upstream.
    sql = (
        "SELECT input_image_tokens, status, cost FROM usage_records "
        f"WHERE dialect = 'tasks' AND key_prefix = '{key[:11]}'"
    )
    deadline = time.monotonic() + 5
    while not (rows := query(gw, sql)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rows and rows[0][0] > 0 and rows[0][1] == 200
    assert rows[0][2] == data["cost"]


# -- callbacks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["message", "msg"])
def test_the_callback_is_the_signed_query_answer(
    gw: Gateway, receiver: Receiver, form: str
) -> None:
    key = new_key(gw, 10_000_000)
    path = f"/cb/{uuid.uuid4().hex}"
    task = task_id(
        create(gw, key, form, "google/nano-banana", {"prompt": "a fox"}, receiver.url + path),
        form,
    )
    (delivery,) = receiver.wait_for(path)
    assert delivery.verified(SECRET)
    assert not delivery.verified("another-secret")
    assert delivery.headers["x-nanogate-task-id"] == task
    answer = info(gw, key, form, task).json()
    assert delivery.json()["data"] == answer["data"]
    assert delivery.json()["code"] == 200
    # A body changed in transit no longer verifies.
    delivery.body = delivery.body.replace(b'"code":200', b'"code":201')
    assert not delivery.verified(SECRET)


def test_a_failing_receiver_is_retried_until_it_answers_2xx_then_never_again(
    gw: Gateway, receiver: Receiver
) -> None:
    key = new_key(gw, 10_000_000)
    path = f"/cb/{uuid.uuid4().hex}"
    receiver.statuses[path].extend([500, 503])
    task = task_id(
        create(gw, key, "message", "google/nano-banana", {"prompt": "x"}, receiver.url + path),
        "message",
    )
    deliveries = receiver.wait_for(path, 3, timeout=30)
    assert all(d.verified(SECRET) for d in deliveries)
    assert [d.headers["x-nanogate-attempt"] for d in deliveries] == ["1", "2", "3"]
    # Backoff between attempts, with jitter: at least half of 1 s, then of 2 s.
    assert deliveries[1].at - deliveries[0].at >= 0.45
    assert deliveries[2].at - deliveries[1].at >= 0.95
    time.sleep(3)
    assert len(receiver.at(path)) == 3
    log = httpx.get(
        f"{gw.url}/admin/callbacks?task_id={task}", headers={"x-api-key": gw.admin_key}
    ).json()
    assert log["state"] == "delivered"
    assert [(a["attempt"], a["status_code"]) for a in log["attempts"]] == [
        (1, 500),
        (2, 503),
        (3, 200),
    ]


def test_a_generated_callback_secret_is_stored_once_and_signs(
    tmp_path: Path, receiver: Receiver
) -> None:
    gw = start_gateway(tmp_path, None, NANOGATE_EGRESS_ALLOWLIST="127.0.0.1")
    try:
        ((secret,),) = query(gw, "SELECT value FROM secrets WHERE name = 'callback_secret'")
        assert len(secret) >= 64
        # Shown without SQL: by the command line and by the admin API.
        assert gw.cli("callbacks", "secret").stdout == secret + "\n"
        shown = httpx.get(f"{gw.url}/admin/callbacks/secret", headers={"x-api-key": gw.admin_key})
        assert shown.json() == {
            "secret": secret,
            "standard_webhooks_secret": "whsec_" + base64.b64encode(secret.encode()).decode(),
            "source": "database",
        }
        path = f"/cb/{uuid.uuid4().hex}"
        key = new_key(gw, 10_000_000)
        create(gw, key, "message", "google/nano-banana", {"prompt": "x"}, receiver.url + path)
        (delivery,) = receiver.wait_for(path)
        assert delivery.verified(secret)
        # As the README says: the key is the hex string's own bytes, never the hex decoded.
        stamp = delivery.headers["x-nanogate-timestamp"]
        decoded = sign(bytes.fromhex(secret), stamp, delivery.body)
        assert decoded != delivery.headers["x-nanogate-signature"]
    finally:
        stop(gw.proc)


def test_the_secret_is_shown_by_the_cli_and_the_admin_api(gw: Gateway) -> None:
    # This gateway's secret is the callback_secret setting (TASK_ENV): both say so.
    shown = gw.cli("callbacks", "secret")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == SECRET + "\n"
    assert "NANOGATE_CALLBACK_SECRET" in shown.stderr and "UTF-8" in shown.stderr
    # The same key in the form a Standard Webhooks library takes: whsec_ + its base64.
    standard = gw.cli("callbacks", "secret", "--standard-webhooks")
    assert standard.returncode == 0, standard.stderr
    assert standard.stdout == "whsec_" + base64.b64encode(SECRET.encode()).decode() + "\n"
    assert "standardwebhooks.Webhook" in standard.stderr
    url = f"{gw.url}/admin/callbacks/secret"
    answer = httpx.get(url, headers={"x-api-key": gw.admin_key})
    assert answer.status_code == 200
    whsec = "whsec_" + base64.b64encode(SECRET.encode()).decode()
    assert answer.json() == {
        "secret": SECRET,
        "standard_webhooks_secret": whsec,
        "source": "setting",
    }
    assert answer.headers["cache-control"] == "no-store"
    refused = httpx.get(url, headers={"x-api-key": new_key(gw, 0)})
    assert refused.status_code == 403 and SECRET not in refused.text


def readme_receiver() -> str:
    """The complete callback receiver the README shows, as written there."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    found = re.findall(r"```python\n(.*?)```", readme, re.S)
    scripts = [code for code in found if "BaseHTTPRequestHandler" in code]
    assert len(scripts) == 1, "the README should show one complete callback receiver"
    return str(scripts[0])


def test_the_readme_receiver_verifies_a_real_callback(gw: Gateway, tmp_path: Path) -> None:
    # The README's own steps: the secret from `nanogate callbacks secret`, a receiver on
    # 127.0.0.1 that the gateway may call because NANOGATE_EGRESS_ALLOWLIST allows it (TASK_ENV).
    assert gw.env["NANOGATE_EGRESS_ALLOWLIST"] == "127.0.0.1"
    secret = gw.cli("callbacks", "secret").stdout.strip()
    script = tmp_path / "receiver.py"
    script.write_text(readme_receiver())
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, "CALLBACK_SECRET": secret, "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = pump_stdout(proc)
        wait_for_line(lines, re.compile(r"^listening on "), 30)
        hook = f"http://127.0.0.1:{port}/hook"
        key = new_key(gw, 10_000_000)
        for form in ("message", "msg"):
            task = task_id(create(gw, key, form, "google/nano-banana", {"prompt": "x"}, hook), form)
            state = "succeeded" if form == "message" else "success"
            wait_for_line(lines, re.compile(f"^verified {task} {state}$"), 30)
            log = httpx.get(
                f"{gw.url}/admin/callbacks?task_id={task}", headers={"x-api-key": gw.admin_key}
            ).json()
            assert log["state"] == "delivered"
            assert [a["status_code"] for a in log["attempts"]] == [204]
        # The same receiver refuses what the gateway did not sign, and a stale timestamp.
        body = b'{"code":200,"message":"success","data":{"task_id":"forged"}}'
        now = str(int(time.time()))
        stale = str(int(time.time()) - 600)

        def signed(event: str, stamp: str, key: bytes = secret.encode()) -> dict[str, str]:
            signature = standard_sign(key, event, stamp, body)
            return {"webhook-id": event, "webhook-timestamp": stamp, "webhook-signature": signature}

        for headers in (
            {},
            {"webhook-id": "evt_1", "webhook-timestamp": now, "webhook-signature": "v1,AAAA"},
            signed("evt_1", now, b"other"),
            signed("evt_1", stale),
            signed("evt_1", now) | {"webhook-id": "evt_2"},  # the id is signed too
            # nanogate's own signature alone: this receiver checks the Standard Webhooks one.
            {"x-nanogate-timestamp": now, "x-nanogate-signature": sign(secret.encode(), now, body)},
        ):
            assert httpx.post(hook, content=body, headers=headers).status_code == 401
        # Good, then the same event again: acknowledged, and dropped as a duplicate.
        for _ in range(2):
            answer = httpx.post(hook, content=body, headers=signed("evt_forged", now))
            assert answer.status_code == 204
        wait_for_line(lines, re.compile("^verified forged succeeded$|^verified forged None$"), 10)
        wait_for_line(lines, re.compile("^duplicate evt_forged$"), 10)
    finally:
        stop(proc)


def test_the_readme_task_example_runs_as_written(gw: Gateway, tmp_path: Path) -> None:
    """A newcomer pastes the README's task example into a shell: it needs nothing but curl and
    python3 (no uuidgen), creates a task and reads it back, finished, with its image URL."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    found = re.search(r"```sh\n(TASK=\$\(curl [^`]*?TaskInfo[^`]*?)```", readme, re.S)
    assert found, "the README should show the task example"
    script = found.group(1).replace("http://127.0.0.1:8000", gw.url)
    key = new_key(gw, 10_000_000)
    out = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "NANOGATE_KEY": key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    data = orjson.loads(out.stdout)["data"]
    assert data["status"] == "succeeded", data
    [url] = data["result"]["urls"]
    image = httpx.get(url, timeout=10)
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
