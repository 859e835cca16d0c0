"""The simulator's vendor protocols over real HTTP: both task API forms and the OpenAI chat and
images endpoints, with their faults, recording and callbacks."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from PIL import Image

from tests.simulator import Fault, SimState, start
from tests.simulator.__main__ import _parse_args
from tests.simulator.faults import FaultError, fault_from_body, fault_from_json

from .sim_client import SimClient, running

KEY = "vendor-key"
TASK_SECONDS = 0.1
IMAGE_MODEL = "gemini-2.5-flash-image"
TASK_MODEL = "google/nano-banana"

# Per form: create path, query path, id field, state field, its final states, auth header.
FORMS: dict[str, dict[str, Any]] = {
    "message": {
        "create": "/api/v1/client/job/CreateTask",
        "info": "/api/v1/client/job/TaskInfo",
        "id": "task_id",
        "state": "status",
        "running": ("pending", "running"),
        "done": "succeeded",
        "failed": "failed",
        "text": "message",
        "callback": "callback_url",
    },
    "msg": {
        "create": "/api/v1/jobs/createTask",
        "info": "/api/v1/jobs/recordInfo",
        "id": "taskId",
        "state": "state",
        "running": ("waiting", "generating"),
        "done": "success",
        "failed": "fail",
        "text": "msg",
        "callback": "callBackUrl",
    },
}


def auth(form: str, key: str | None = KEY) -> dict[str, str]:
    if key is None:
        return {}
    return {"x-api-key": key} if form == "message" else {"Authorization": f"Bearer {key}"}


def task_body(form: str, prompt: str | None = "a nano banana", **inputs: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": inputs.pop("model", TASK_MODEL), "input": dict(inputs)}
    if prompt is not None:
        body["input"]["prompt"] = prompt
    return body


def chat_body(text: str = "draw a banana", **extra: Any) -> dict[str, Any]:
    return {"model": IMAGE_MODEL, "messages": [{"role": "user", "content": text}], **extra}


class Sim(SimClient):
    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        payload = orjson.dumps(json) if json is not None else data
        async with self.session.request(
            method, self.url(path), data=payload, headers=headers, params=params
        ) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    async def create(
        self, form: str, body: dict[str, Any], key: str | None = KEY
    ) -> tuple[int, Any]:
        status, _, raw = await self.call(
            "POST", FORMS[form]["create"], json=body, headers=auth(form, key)
        )
        return status, orjson.loads(raw)

    async def info(self, form: str, task_id: str) -> tuple[int, Any]:
        spec = FORMS[form]
        status, _, raw = await self.call(
            "GET", spec["info"], params={spec["id"]: task_id}, headers=auth(form)
        )
        return status, orjson.loads(raw)

    async def new_task(self, form: str, body: dict[str, Any] | None = None) -> str:
        status, doc = await self.create(form, body or task_body(form))
        assert status == 200, doc
        task_id: str = doc["data"][FORMS[form]["id"]]
        return task_id

    async def wait_final(self, form: str, task_id: str) -> dict[str, Any]:
        spec = FORMS[form]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status, doc = await self.info(form, task_id)
            assert status == 200, doc
            data: dict[str, Any] = doc["data"]
            if data[spec["state"]] not in spec["running"]:
                return data
            await asyncio.sleep(0.02)
        raise AssertionError("task never finished")

    async def control(self, path: str) -> Any:
        status, _, raw = await self.call("GET", path)
        assert status == 200
        return orjson.loads(raw)

    async def config(self, **fields: Any) -> tuple[int, Any]:
        status, _, raw = await self.call("POST", "/_sim/config", json=fields)
        return status, orjson.loads(raw)

    async def chat(
        self, body: dict[str, Any], key: str | None = KEY
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return await self.call("POST", "/v1/chat/completions", json=body, headers=headers)

    async def images(
        self, body: dict[str, Any], key: str | None = KEY
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return await self.call("POST", "/v1/images/generations", json=body, headers=headers)


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async with running(SimState(api_key=KEY, task_seconds=TASK_SECONDS), Sim) as client:
        yield client


class Receiver:
    """A callback endpoint: records each POST and answers `status`."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        self.url = ""
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(
            {"headers": dict(request.headers), "json": orjson.loads(await request.read())}
        )
        self.arrived.set()
        return web.Response(status=self.status, text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


def decode_image(raw: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(raw))
    img.load()
    return img


def sse_data(raw: bytes) -> list[bytes]:
    events = [e for e in raw.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events), events
    return [e[len(b"data: ") :] for e in events]


def result_urls(form: str, data: dict[str, Any]) -> list[str]:
    if form == "message":
        urls: list[str] = data["result"]["urls"]
        return urls
    urls = orjson.loads(data["resultJson"])["resultUrls"]
    return urls


# --- task API: the happy path -------------------------------------------------------------


@pytest.mark.parametrize("form", ["message", "msg"])
async def test_task_end_to_end(sim: Sim, receiver: Receiver, form: str) -> None:
    spec = FORMS[form]
    ratio_field = "aspect_ratio" if form == "message" else "image_size"
    body = task_body(form, **{ratio_field: "16:9", "resolution": "1K"})
    body[spec["callback"]] = receiver.url
    status, created = await sim.create(form, body)
    assert status == 200
    assert created["code"] == 200 and created[spec["text"]] == "success"
    task_id = created["data"][spec["id"]]
    assert re.fullmatch(r"[0-9a-f]{32}", task_id)

    _, first = await sim.info(form, task_id)
    assert first["data"][spec["state"]] == spec["running"][0]
    seen = {first["data"][spec["state"]]}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _, doc = await sim.info(form, task_id)
        seen.add(doc["data"][spec["state"]])
        if doc["data"][spec["state"]] == spec["done"]:
            break
        await asyncio.sleep(0.01)
    assert seen == {*spec["running"], spec["done"]}
    data = doc["data"]
    assert data[spec["id"]] == task_id
    assert data["model"] == TASK_MODEL

    if form == "message":
        assert data["param"] == body
        assert data["error"] is None
        assert data["create_at"] <= data["complete_at"]
        assert data["duration_s"] >= TASK_SECONDS * 0.9
        assert data["cost"] > 0
    else:
        assert orjson.loads(data["param"]) == body
        assert (data["failCode"], data["failMsg"]) == ("", "")
        assert data["costTime"] >= TASK_SECONDS * 900
        assert data["createTime"] <= data["completeTime"]
        assert data["credits"] > 0
    [url] = result_urls(form, data)
    assert url == f"{sim.base}/_sim/files/{task_id}.png"

    async with sim.session.get(url) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/png"
        img = decode_image(await resp.read())
    assert img.format == "PNG"
    assert img.size == (64, 36)  # 16:9, long side 64
    files = await sim.control("/_sim/files")
    assert [(f["id"], f["downloads"]) for f in files] == [(task_id, 1)]

    await asyncio.wait_for(receiver.arrived.wait(), 5)
    [hook] = receiver.received
    assert hook["headers"]["Content-Type"] == "application/json"
    assert hook["json"] == doc  # the same body as the query answer
    await asyncio.sleep(0.05)
    [attempt] = await sim.control("/_sim/callbacks")
    assert attempt["task_id"] == task_id
    assert attempt["url"] == receiver.url
    assert (attempt["status"], attempt["error"]) == (200, None)
    assert attempt["json"] == doc

    records = await sim.control("/_sim/requests")
    assert records[0]["method"] == "POST"
    assert records[0]["path"] == spec["create"]
    assert records[0]["json"] == body
    header = "x-api-key" if form == "message" else "Authorization"
    assert KEY in records[0]["headers"][header]
    assert records[1]["path"] == spec["info"]
    assert records[1]["query"] == {spec["id"]: task_id}
    assert all(r["path"].startswith("/api/") for r in records)  # the download isn't recorded


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
@pytest.mark.parametrize("form", ["message", "msg"])
async def test_task_output_formats(sim: Sim, form: str, fmt: str, pil: str) -> None:
    task_id = await sim.new_task(form, task_body(form, output_format=fmt, aspect_ratio="9:16"))
    data = await sim.wait_final(form, task_id)
    [url] = result_urls(form, data)
    assert url.endswith(f"/{task_id}.{fmt}")
    async with sim.session.get(url) as resp:
        assert resp.content_type == f"image/{fmt}"
        img = decode_image(await resp.read())
    assert (img.format, img.size) == (pil, (36, 64))


async def test_task_square_png_is_the_gemini_image(sim: Sim) -> None:
    task_id = await sim.new_task("msg")
    [url] = result_urls("msg", await sim.wait_final("msg", task_id))
    async with sim.session.get(url) as resp:
        raw = await resp.read()
    _, _, gemini = await sim.call(
        "POST",
        f"/v1beta/models/{IMAGE_MODEL}:generateContent",
        json={"contents": [{"parts": [{"text": "x"}]}]},
        headers={"x-goog-api-key": KEY},
    )
    parts = orjson.loads(gemini)["candidates"][0]["content"]["parts"]
    assert base64.b64decode(parts[1]["inlineData"]["data"]) == raw


async def test_task_public_url_and_missing_file(sim: Sim) -> None:
    status, view = await sim.config(public_url="https://cdn.example/sim/")
    assert (status, view["public_url"]) == (200, "https://cdn.example/sim/")
    task_id = await sim.new_task("message")
    data = await sim.wait_final("message", task_id)
    assert data["result"]["urls"] == [f"https://cdn.example/sim/_sim/files/{task_id}.png"]
    status, _, _ = await sim.call("GET", f"/_sim/files/{task_id}.jpeg")
    assert status == 404
    status, _, _ = await sim.call("GET", "/_sim/files/nothing.png")
    assert status == 404


async def test_task_seconds_option(sim: Sim) -> None:
    status, view = await sim.config(task_seconds=0.6)
    assert (status, view["task_seconds"]) == (200, 0.6)
    t0 = time.monotonic()
    task_id = await sim.new_task("msg")
    await sim.wait_final("msg", task_id)
    assert time.monotonic() - t0 >= 0.55


async def test_credits_endpoints_and_balance(sim: Sim) -> None:
    status, view = await sim.config(credits=10, task_cost=4)
    assert (status, view["credits"], view["task_cost"]) == (200, 10, 4)
    status, _, raw = await sim.call(
        "GET", "/api/v1/client/account/balance", headers=auth("message")
    )
    assert (status, orjson.loads(raw)) == (
        200,
        {"code": 200, "message": "success", "data": {"balance": 10}},
    )
    await sim.new_task("message")
    await sim.new_task("msg")
    status, _, raw = await sim.call("GET", "/api/v1/chat/credit", headers=auth("msg"))
    assert (status, orjson.loads(raw)) == (200, {"code": 200, "msg": "success", "data": 2})
    # 2 credits left, a task costs 4: the vendor's 402.
    for form in ("message", "msg"):
        status, doc = await sim.create(form, task_body(form))
        assert status == 402
        assert doc["code"] == 402 and doc["data"] is None
        assert "Insufficient Credits" in doc[FORMS[form]["text"]]


# --- task API: auth and validation --------------------------------------------------------


@pytest.mark.parametrize("form", ["message", "msg"])
async def test_task_auth(sim: Sim, form: str) -> None:
    other = "msg" if form == "message" else "message"
    for headers in ({}, auth(form, "wrong"), auth(other)):  # the other form's header won't do
        status, _, raw = await sim.call(
            "POST", FORMS[form]["create"], json=task_body(form), headers=headers
        )
        assert status == 401
        doc = orjson.loads(raw)
        assert doc["code"] == 401 and doc["data"] is None
        assert doc[FORMS[form]["text"]].startswith("Unauthorized")
    status, _, _ = await sim.call(
        "GET", FORMS[form]["info"], params={FORMS[form]["id"]: "x"}, headers={}
    )
    assert status == 401
    assert sim.state.tasks == {}


async def test_task_no_auth_when_no_key() -> None:
    state = SimState(task_seconds=0)
    async with running(state, Sim) as sim:
        status, _ = await sim.create("msg", task_body("msg"), key=None)
        assert status == 200
    assert len(state.tasks) == 1


@pytest.mark.parametrize("form", ["message", "msg"])
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (task_body("x", prompt=None), "input.prompt"),
        (task_body("x", prompt="   "), "input.prompt"),
        (task_body("x", model="google/nano-apple"), "model"),
        (task_body("x", model="google/nano-banana-edit"), "input.image_urls"),
        (task_body("x", aspect_ratio="7:3"), "aspect_ratio"),
        (task_body("x", resolution="8K"), "input.resolution"),
        (task_body("x", output_format="gif"), "input.output_format"),
        (task_body("x", image_urls=["ftp://x"]), "input.image_urls"),
        ({"input": {"prompt": "x"}}, "model"),
        (None, "JSON"),
    ],
)
async def test_task_bad_input_is_422(
    sim: Sim, form: str, body: dict[str, Any] | None, needle: str
) -> None:
    data = b"{nope" if body is None else orjson.dumps(body)
    status, _, raw = await sim.call("POST", FORMS[form]["create"], data=data, headers=auth(form))
    assert status == 422
    doc = orjson.loads(raw)
    assert doc["code"] == 422 and doc["data"] is None
    assert needle in doc[FORMS[form]["text"]]
    assert sim.state.tasks == {}


async def test_task_models_configurable(sim: Sim) -> None:
    status, _ = await sim.config(task_models=["vendor/banana"])
    assert status == 200
    assert (await sim.create("msg", task_body("msg", model="vendor/banana")))[0] == 200
    assert (await sim.create("msg", task_body("msg")))[0] == 422


async def test_task_image_urls_and_edit_model(sim: Sim) -> None:
    body = task_body("message", model="google/nano-banana-edit", image_urls=["https://x/a.png"])
    task_id = await sim.new_task("message", body)
    data = await sim.wait_final("message", task_id)
    assert data["status"] == "succeeded"
    assert data["param"]["input"]["image_urls"] == ["https://x/a.png"]


@pytest.mark.parametrize("form", ["message", "msg"])
async def test_task_unknown_and_missing_id(sim: Sim, form: str) -> None:
    status, doc = await sim.info(form, "f" * 32)
    assert (status, doc["code"], doc["data"]) == (404, 404, None)
    status, _, raw = await sim.call("GET", FORMS[form]["info"], headers=auth(form))
    assert status == 422
    assert FORMS[form]["id"] in orjson.loads(raw)[FORMS[form]["text"]]


# --- task API: faults ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ["message", "msg"])
@pytest.mark.parametrize("code", [401, 402, 422, 429, 455, 500, 505])
async def test_task_vendor_codes(sim: Sim, form: str, code: int) -> None:
    await sim.faults({"status": code, "retry_after": 9, "path": FORMS[form]["create"]})
    status, headers, raw = await sim.call(
        "POST", FORMS[form]["create"], json=task_body(form), headers=auth(form)
    )
    assert status == code
    assert headers["Retry-After"] == "9"
    doc = orjson.loads(raw)
    assert (doc["code"], doc["data"]) == (code, None)
    assert doc[FORMS[form]["text"]]
    assert sim.state.tasks == {}  # a refused create makes no task


async def test_task_status_fault_message_and_directive(sim: Sim) -> None:
    await sim.faults({"status": 455, "message": "back at noon"})
    status, doc = await sim.create("message", task_body("message"))
    assert (status, doc) == (455, {"code": 455, "message": "back at noon", "data": None})
    status, doc = await sim.create("msg", task_body("msg", "x [[sim:status=505]]"))
    assert (status, doc["code"]) == (505, 505)
    assert "Feature Disabled" in doc["msg"]


@pytest.mark.parametrize("form", ["message", "msg"])
async def test_task_stuck(sim: Sim, receiver: Receiver, form: str) -> None:
    await sim.faults({"stuck": True})
    body = task_body(form)
    body[FORMS[form]["callback"]] = receiver.url
    task_id = await sim.new_task(form, body)
    await asyncio.sleep(TASK_SECONDS * 4)
    _, doc = await sim.info(form, task_id)
    assert doc["data"][FORMS[form]["state"]] == FORMS[form]["running"][1]
    assert not receiver.received
    assert await sim.control("/_sim/callbacks") == []
    # Only that task: the next one finishes.
    assert (await sim.wait_final(form, await sim.new_task(form)))[FORMS[form]["state"]] == (
        FORMS[form]["done"]
    )


@pytest.mark.parametrize("how", ["queue", "directive"])
@pytest.mark.parametrize("form", ["message", "msg"])
async def test_task_fail(sim: Sim, receiver: Receiver, form: str, how: str) -> None:
    body = task_body(form, "draw [[sim:fail]]" if how == "directive" else "draw")
    body[FORMS[form]["callback"]] = receiver.url
    if how == "queue":
        await sim.faults({"fail": True, "message": "the model refused"})
    credits = sim.state.credits
    task_id = await sim.new_task(form, body)
    data = await sim.wait_final(form, task_id)
    message = "the model refused" if how == "queue" else "Generation Failed"
    if form == "message":
        assert data["status"] == "failed"
        assert data["error"]["code"] == 501
        assert message in data["error"]["message"]
        assert data["result"] is None
        assert data["cost"] == 0
    else:
        assert data["state"] == "fail"
        assert data["failCode"] == "501"
        assert message in data["failMsg"]
        assert data["resultJson"] == ""
    assert sim.state.credits == credits  # refunded
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    assert receiver.received[0]["json"]["data"] == data


async def test_task_delay_fault(sim: Sim) -> None:
    await sim.faults({"task_delay": 0.5})
    t0 = time.monotonic()
    task_id = await sim.new_task("message")
    assert time.monotonic() - t0 < 0.3  # the create answers at once
    await sim.wait_final("message", task_id)
    assert time.monotonic() - t0 >= 0.5


async def test_task_faults_wait_for_a_create(sim: Sim) -> None:
    """A task fault is never spent on a query, a Gemini call or an OpenAI call."""
    task_id = await sim.new_task("msg")
    await sim.faults({"fail": True}, {"stuck": True, "model": "google/nano-banana-v2"})
    await sim.info("msg", task_id)
    await sim.chat(chat_body())
    await sim.call(
        "POST",
        f"/v1beta/models/{IMAGE_MODEL}:generateContent",
        json={"contents": [{"parts": [{"text": "x"}]}]},
        headers={"x-goog-api-key": KEY},
    )
    assert len(await sim.control("/_sim/faults")) == 2
    failed = await sim.wait_final("msg", await sim.new_task("msg"))
    assert failed["state"] == "fail"
    assert await sim.control("/_sim/faults") == [{"stuck": True, "model": "google/nano-banana-v2"}]


@pytest.mark.parametrize("form", ["message", "msg"])
async def test_task_http_faults(sim: Sim, form: str) -> None:
    spec = FORMS[form]
    # delay: the create is slow, but the task is made.
    await sim.faults({"delay": 0.3, "path": spec["create"]})
    t0 = time.monotonic()
    task_id = await sim.new_task(form)
    assert time.monotonic() - t0 >= 0.3
    # malformed / body on the query (path-restricted, so the create above didn't take them).
    await sim.faults(
        {"malformed": True, "path": spec["info"]},
        {"body": {"code": 200, "data": None}, "path": spec["info"]},
    )
    status, _, raw = await sim.call(
        "GET", spec["info"], params={spec["id"]: task_id}, headers=auth(form)
    )
    assert status == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    status, doc = await sim.info(form, task_id)
    assert (status, doc) == (200, {"code": 200, "data": None})
    # reset: no HTTP answer at all, and no task.
    await sim.faults({"reset": True})
    before = len(sim.state.tasks)
    with pytest.raises(aiohttp.ClientError):
        await sim.create(form, task_body(form))
    assert len(sim.state.tasks) == before
    # A status fault on the query answers in the vendor's envelope.
    await sim.faults({"status": 429, "retry_after": 2, "path": "/api/v1"})
    status, doc = await sim.info(form, task_id)
    assert (status, doc["code"]) == (429, 429)


async def test_task_fault_matched_by_model(sim: Sim) -> None:
    await sim.faults({"status": 455, "model": "google/nano-banana-v2"})
    assert (await sim.create("msg", task_body("msg")))[0] == 200
    assert (await sim.create("msg", task_body("msg", model="google/nano-banana-v2")))[0] == 455


async def test_callback_failure_is_recorded(sim: Sim, receiver: Receiver) -> None:
    receiver.status = 500
    body = task_body("message")
    body["callback_url"] = receiver.url
    await sim.new_task("message", body)
    dead = task_body("msg")
    dead["callBackUrl"] = "http://127.0.0.1:1/nothing-listens"
    await sim.new_task("msg", dead)
    deadline = time.monotonic() + 5
    while len(attempts := await sim.control("/_sim/callbacks")) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    by_url = {a["url"]: a for a in attempts}
    assert (by_url[receiver.url]["status"], by_url[receiver.url]["error"]) == (500, None)
    refused = by_url["http://127.0.0.1:1/nothing-listens"]
    assert refused["status"] is None and refused["error"]
    assert len(receiver.received) == 1  # once, no retry
    status, _, _ = await sim.call("DELETE", "/_sim/callbacks")
    assert status == 200
    assert await sim.control("/_sim/callbacks") == []


async def test_reset_clears_tasks_and_files(sim: Sim) -> None:
    done = await sim.new_task("message")
    await sim.wait_final("message", done)
    await sim.faults({"stuck": True})
    await sim.new_task("message")
    status, _, _ = await sim.call("POST", "/_sim/reset")
    assert status == 200
    assert sim.state.tasks == {} and sim.state.files == {}
    assert (await sim.info("message", done))[0] == 404


async def test_cleanup_with_tasks_in_flight() -> None:
    state = SimState(task_seconds=30)
    runner, port = await start(state=state)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/api/v1/jobs/createTask", json=task_body("msg")
        ) as resp,
    ):
        assert resp.status == 200
    t0 = time.monotonic()
    await runner.cleanup()
    assert time.monotonic() - t0 < 2


# --- OpenAI chat completions --------------------------------------------------------------


async def test_chat_images_shape(sim: Sim) -> None:
    status, _, raw = await sim.chat(chat_body())
    assert status == 200
    doc = orjson.loads(raw)
    assert doc["object"] == "chat.completion"
    assert doc["id"].startswith("chatcmpl-")
    assert doc["model"] == IMAGE_MODEL
    [choice] = doc["choices"]
    assert choice["finish_reason"] == "stop"
    message = choice["message"]
    assert message["role"] == "assistant"
    assert message["content"] == "simulated image for: draw a banana"
    [image] = message["images"]
    assert image["type"] == "image_url"
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert decode_image(base64.b64decode(url.split(",", 1)[1])).format == "PNG"
    usage = doc["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 1290
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens_details"]["image_tokens"] == 1290


def markdown_image(content: str) -> bytes:
    match = re.search(r"!\[image\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", content)
    assert match, content
    return base64.b64decode(match[1])


@pytest.mark.parametrize("how", ["config", "queue", "directive"])
async def test_chat_markdown_shape(sim: Sim, how: str) -> None:
    text = "draw"
    if how == "config":
        status, view = await sim.config(chat_images="markdown")
        assert (status, view["chat_images"]) == (200, "markdown")
    elif how == "queue":
        await sim.faults({"chat_images": "markdown"})
    else:
        text = "draw [[sim:chat_images=markdown]]"
    status, _, raw = await sim.chat(chat_body(text))
    assert status == 200
    message = orjson.loads(raw)["choices"][0]["message"]
    assert "images" not in message
    assert message["content"].startswith("simulated image for: draw")
    assert decode_image(markdown_image(message["content"])).format == "PNG"


async def test_chat_fault_overrides_markdown_option(sim: Sim) -> None:
    await sim.config(chat_images="markdown")
    await sim.faults({"chat_images": "images"})
    _, _, raw = await sim.chat(chat_body())
    assert "images" in orjson.loads(raw)["choices"][0]["message"]


async def test_chat_text_model_and_image_only(sim: Sim) -> None:
    _, _, raw = await sim.chat({**chat_body("hello"), "model": "gemini-2.5-flash"})
    message = orjson.loads(raw)["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "simulated reply to: hello"}
    body = chat_body(modalities=["image"])
    body["messages"] = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "edit this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
    ]
    _, _, raw = await sim.chat(body)
    doc = orjson.loads(raw)
    assert doc["choices"][0]["message"]["content"] is None
    assert doc["choices"][0]["message"]["images"]
    assert doc["usage"]["prompt_tokens_details"]["image_tokens"] == 258


@pytest.mark.parametrize("shape", ["images", "markdown"])
async def test_chat_stream(sim: Sim, shape: str) -> None:
    await sim.config(chat_images=shape)
    status, headers, raw = await sim.chat(chat_body(stream=True))
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = sse_data(raw)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert len(chunks) == 3
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    first, image, last = (c["choices"][0] for c in chunks)
    assert first["delta"] == {"role": "assistant", "content": "simulated image for: draw a banana"}
    if shape == "images":
        [part] = image["delta"]["images"]
        data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
    else:
        data = markdown_image(image["delta"]["content"])
    assert decode_image(data).format == "PNG"
    assert last["finish_reason"] == "stop" and last["delta"] == {}
    assert chunks[-1]["usage"]["completion_tokens_details"]["image_tokens"] == 1290


async def test_chat_stream_faults(sim: Sim) -> None:
    # slow_stream: a pause before each event after the first.
    await sim.faults({"slow_stream": 0.15})
    resp = await sim.session.post(
        sim.url("/v1/chat/completions"),
        json=chat_body(stream=True),
        headers={"Authorization": f"Bearer {KEY}"},
    )
    stamps = []
    async with resp:
        async for line in resp.content:
            if line.startswith(b"data: "):
                stamps.append(time.monotonic())
    assert len(stamps) == 4
    assert stamps[-1] - stamps[0] >= 0.4
    # stream_break: one event, then the body is cut.
    await sim.faults({"stream_break": True})
    resp = await sim.session.post(
        sim.url("/v1/chat/completions"),
        json=chat_body(stream=True),
        headers={"Authorization": f"Bearer {KEY}"},
    )
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with resp:
            async for data in resp.content.iter_any():
                received += data
    assert orjson.loads(sse_data(received)[0])["choices"][0]["delta"]["role"] == "assistant"
    # malformed: an event that is not JSON, and no [DONE].
    await sim.faults({"malformed": True})
    status, _, raw = await sim.chat(chat_body(stream=True))
    assert status == 200
    [event] = sse_data(raw)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(event)
    # body: the given chunks, then [DONE].
    await sim.faults({"body": [{"a": 1}, {"b": 2}]})
    _, _, raw = await sim.chat(chat_body(stream=True))
    assert sse_data(raw) == [b'{"a":1}', b'{"b":2}', b"[DONE]"]


async def test_chat_faults(sim: Sim) -> None:
    await sim.faults({"status": 429, "retry_after": 5, "path": "/v1/chat/completions"})
    status, headers, raw = await sim.chat(chat_body())
    assert (status, headers["Retry-After"]) == (429, "5")
    error = orjson.loads(raw)["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    await sim.faults({"status": 503, "message": "overloaded"})
    status, _, raw = await sim.chat(chat_body())
    assert status == 503
    assert orjson.loads(raw)["error"] == {
        "message": "overloaded",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    await sim.faults({"malformed": True})
    status, _, raw = await sim.chat(chat_body())
    assert status == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    await sim.faults({"reset": True})
    with pytest.raises(aiohttp.ClientError):
        await sim.chat(chat_body())
    await sim.faults({"delay": 0.3})
    t0 = time.monotonic()
    assert (await sim.chat(chat_body()))[0] == 200
    assert time.monotonic() - t0 >= 0.3
    await sim.faults({"status": 500, "model": "other-model"})
    assert (await sim.chat(chat_body()))[0] == 200
    assert (await sim.chat({**chat_body(), "model": "other-model"}))[0] == 500


async def test_chat_auth_and_bad_requests(sim: Sim) -> None:
    status, _, raw = await sim.chat(chat_body(), key=None)
    assert status == 401
    assert orjson.loads(raw)["error"]["type"] == "invalid_request_error"
    status, _, raw = await sim.chat(chat_body(), key="wrong")
    assert (status, orjson.loads(raw)["error"]["code"]) == (401, "invalid_api_key")
    # The Gemini header is not an OpenAI key.
    status, _, _ = await sim.call(
        "POST", "/v1/chat/completions", json=chat_body(), headers={"x-goog-api-key": KEY}
    )
    assert status == 401
    for body, param in (
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": IMAGE_MODEL}, "messages"),
        ({"model": IMAGE_MODEL, "messages": []}, "messages"),
        ({**chat_body(), "stream": "yes"}, "stream"),
    ):
        status, _, raw = await sim.chat(body)
        assert status == 400
        assert orjson.loads(raw)["error"]["param"] == param
    status, _, _ = await sim.call(
        "POST",
        "/v1/chat/completions",
        data=b"{bad",
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert status == 400


async def test_chat_recorded(sim: Sim) -> None:
    body = chat_body(stream=True)
    await sim.chat(body)
    [record] = await sim.control("/_sim/requests")
    assert record["path"] == "/v1/chat/completions"
    assert record["headers"]["Authorization"] == f"Bearer {KEY}"
    assert record["json"] == body


# --- OpenAI images generations ------------------------------------------------------------


async def test_images_b64_json(sim: Sim) -> None:
    status, _, raw = await sim.images({"model": IMAGE_MODEL, "prompt": "a banana", "n": 2})
    assert status == 200
    doc = orjson.loads(raw)
    assert isinstance(doc["created"], int)
    assert len(doc["data"]) == 2
    for item in doc["data"]:
        assert set(item) == {"b64_json"}
        assert decode_image(base64.b64decode(item["b64_json"])).size == (64, 64)
    usage = doc["usage"]
    assert usage["output_tokens"] == 2 * 1290
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_images_url(sim: Sim) -> None:
    body = {
        "model": "google/nano-banana",
        "prompt": "a banana",
        "response_format": "url",
        "size": "1536x1024",
        "output_format": "webp",
    }
    status, _, raw = await sim.images(body)
    assert status == 200
    [item] = orjson.loads(raw)["data"]
    assert set(item) == {"url"}
    assert re.fullmatch(re.escape(sim.base) + r"/_sim/files/[0-9a-f]{32}\.webp", item["url"])
    async with sim.session.get(item["url"]) as resp:
        assert resp.content_type == "image/webp"
        img = decode_image(await resp.read())
    assert (img.format, img.size) == ("WEBP", (64, 43))  # 3:2
    status, _, raw = await sim.images({**body, "size": None, "aspect_ratio": "1:4"})
    [item] = orjson.loads(raw)["data"]
    async with sim.session.get(item["url"]) as resp:
        assert decode_image(await resp.read()).size == (16, 64)


async def test_images_image_bytes_option(sim: Sim) -> None:
    await sim.config(image_bytes=5000)
    _, _, raw = await sim.images({"model": IMAGE_MODEL, "prompt": "x"})
    assert len(base64.b64decode(orjson.loads(raw)["data"][0]["b64_json"])) == 5000
    _, _, raw = await sim.images({"model": IMAGE_MODEL, "prompt": "x", "response_format": "url"})
    async with sim.session.get(orjson.loads(raw)["data"][0]["url"]) as resp:
        assert len(await resp.read()) == 5000


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"model": None}, "model"),
        ({"model": "gemini-2.5-flash"}, "model"),
        ({"n": 0}, "n"),
        ({"n": True}, "n"),
        ({"response_format": "png"}, "response_format"),
        ({"output_format": "gif"}, "output_format"),
        ({"size": "big"}, "size"),
        ({"aspect_ratio": "wide"}, "aspect_ratio"),
    ],
)
async def test_images_bad_requests(sim: Sim, change: dict[str, Any], param: str) -> None:
    body = {"model": IMAGE_MODEL, "prompt": "x", **change}
    status, _, raw = await sim.images({k: v for k, v in body.items() if v is not None})
    assert status == 400
    assert orjson.loads(raw)["error"]["param"] == param


async def test_images_faults_and_auth(sim: Sim) -> None:
    body = {"model": IMAGE_MODEL, "prompt": "x"}
    assert (await sim.images(body, key="wrong"))[0] == 401
    await sim.faults({"status": 429, "retry_after": 3, "path": "/v1/images"})
    status, headers, _ = await sim.images(body)
    assert (status, headers["Retry-After"]) == (429, "3")
    await sim.faults({"malformed": True})
    status, _, raw = await sim.images(body)
    assert status == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    await sim.faults({"reset": True})
    with pytest.raises(aiohttp.ClientError):
        await sim.images(body)
    await sim.faults({"delay": 0.3})
    t0 = time.monotonic()
    assert (await sim.images(body))[0] == 200
    assert (await sim.images({**body, "prompt": "x [[sim:delay=0.3]]"}))[0] == 200
    assert time.monotonic() - t0 >= 0.6
    [record, *_] = await sim.control("/_sim/requests")
    assert record["path"] == "/v1/images/generations"


async def test_openai_sdk_against_simulator(sim: Sim) -> None:
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(api_key=KEY, base_url=sim.base + "/v1")
    try:
        images = await client.images.generate(
            model=IMAGE_MODEL, prompt="a banana", response_format="b64_json"
        )
        assert images.data and images.data[0].b64_json
        completion = await client.chat.completions.create(
            model=IMAGE_MODEL, messages=[{"role": "user", "content": "a banana"}]
        )
        extra = completion.choices[0].message.model_extra or {}
        assert extra["images"][0]["image_url"]["url"].startswith("data:image/png;base64,")
        stream = await client.chat.completions.create(
            model=IMAGE_MODEL, messages=[{"role": "user", "content": "a banana"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].choices[0].finish_reason == "stop"
        await sim.faults({"status": 429})
        with pytest.raises(openai.RateLimitError):
            await client.with_options(max_retries=0).chat.completions.create(
                model=IMAGE_MODEL, messages=[{"role": "user", "content": "x"}]
            )
    finally:
        await client.close()


# --- the fault schema, config and CLI -----------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"path": "v1/chat"},
        {"path": 3},
        {"stuck": "maybe"},
        {"fail": 2},
        {"task_delay": -1},
        {"chat_images": "inline"},
    ],
)
async def test_bad_vendor_fault_rejected(sim: Sim, bad: dict[str, Any]) -> None:
    status, _, _ = await sim.call("POST", "/_sim/faults", json=[bad])
    assert status == 400
    assert await sim.control("/_sim/faults") == []


def test_vendor_fault_parsing() -> None:
    fault = fault_from_json(
        {"path": "/api/v1/jobs", "stuck": True, "task_delay": 1, "chat_images": "markdown"}
    )
    assert fault.to_json() == {
        "path": "/api/v1/jobs",
        "stuck": True,
        "task_delay": 1.0,
        "chat_images": "markdown",
    }
    assert fault.is_task_fault()
    raw = b'{"p": "x [[sim:fail, task_delay=0.5, chat_images=markdown, stuck=0]]"}'
    assert fault_from_body(raw) == Fault(fail=True, task_delay=0.5, chat_images="markdown")
    with pytest.raises(FaultError):
        fault_from_json({"path": ""})


def test_fault_path_matching() -> None:
    fault = Fault(path="/api/v1/jobs")
    assert fault.matches(None, "/api/v1/jobs/createTask")
    assert fault.matches(None, "/api/v1/jobs")
    assert not fault.matches(None, "/api/v1/jobsX")
    assert not fault.matches(None, "/api/v1/client/job/CreateTask")
    assert not fault.matches(None, None)
    assert Fault(path="/").matches(None, "/anything")
    assert Fault().matches(None, "/anything")
    task = Fault(fail=True, path="/api/v1/jobs/createTask")
    assert not task.matches(None, "/api/v1/jobs/createTask")
    assert task.matches(None, "/api/v1/jobs/createTask", task=True)
    assert not task.matches(None, "/api/v1/client/job/CreateTask", task=True)


async def test_gemini_fault_by_path(sim: Sim) -> None:
    await sim.faults({"status": 503, "path": "/v1/v1beta"})
    gemini = {"contents": [{"parts": [{"text": "x"}]}]}
    headers = {"x-goog-api-key": KEY}
    path = f"/models/{IMAGE_MODEL}:generateContent"
    assert (await sim.call("POST", "/v1beta" + path, json=gemini, headers=headers))[0] == 200
    assert (await sim.chat(chat_body()))[0] == 200
    assert (await sim.call("POST", "/v1/v1beta" + path, json=gemini, headers=headers))[0] == 503


@pytest.mark.parametrize(
    "bad",
    [
        {"task_seconds": -1},
        {"task_seconds": "fast"},
        {"chat_images": "inline"},
        {"public_url": "cdn.example"},
        {"credits": -5},
        {"task_models": "google/nano-banana"},
        {"task_models": [""]},
    ],
)
async def test_bad_vendor_config_rejected(sim: Sim, bad: dict[str, Any]) -> None:
    status, _ = await sim.config(**bad)
    assert status == 400


async def test_config_view(sim: Sim) -> None:
    view = await sim.control("/_sim/config")
    assert view["task_seconds"] == TASK_SECONDS
    assert view["chat_images"] == "images"
    assert view["public_url"] is None
    assert "google/nano-banana" in view["task_models"]
    assert "vendor-key" not in orjson.dumps(view).decode()


def test_cli_vendor_options() -> None:
    args = _parse_args(
        [
            "--task-seconds",
            "2",
            "--chat-images",
            "markdown",
            "--public-url",
            "http://sim.test:9",
            "--credits",
            "3",
        ]
    )
    assert (args.task_seconds, args.chat_images, args.public_url, args.credits) == (
        2.0,
        "markdown",
        "http://sim.test:9",
        3,
    )
    assert _parse_args([]).task_seconds == 0.3
    with pytest.raises(SystemExit):
        _parse_args(["--chat-images", "inline"])
