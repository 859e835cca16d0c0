"""The task API dialect: create requests in both forms, model checks, the Gemini request a task
becomes, the record as each form renders it, and the task API's error codes."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from PIL import Image

from nanogate.core.catalog import Catalog, ModelSpec, load_catalog
from nanogate.core.errors import (
    Conflict,
    DeadlineExceeded,
    FeatureDisabled,
    GatewayError,
    InsufficientCredits,
    InvalidArgument,
    Maintenance,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    Unavailable,
)
from nanogate.core.task_records import Form, StoredFile, TaskRecord
from nanogate.core.types import Call
from nanogate.dialects import gemini
from nanogate.dialects.tasks import (
    TaskRequest,
    check_model,
    code_for,
    error_body,
    form_for,
    gemini_request,
    parse_create,
    render,
)

CATALOG: Catalog = load_catalog()


def _body(**doc: Any) -> bytes:
    return orjson.dumps(doc)


def _create(form: Form, **input_: Any) -> TaskRequest:
    doc: dict[str, Any] = {"model": "google/nano-banana", "input": {"prompt": "a cat", **input_}}
    return parse_create(orjson.dumps(doc), form)


def _refused(body: bytes, form: Form) -> str:
    with pytest.raises(InvalidArgument) as caught:
        parse_create(body, form)
    return caught.value.message


def _spec(name: str) -> ModelSpec:
    return CATALOG.resolve(name)


def _image(fmt: str, color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(out, fmt)
    return out.getvalue()


PNG = _image("PNG", "red")
JPEG = _image("JPEG", "blue")
WEBP = _image("WEBP", "green")


# -- parse_create ------------------------------------------------------------------------------


def test_message_form_minimal_request() -> None:
    doc = {"model": " google/nano-banana ", "input": {"prompt": "a cat"}}
    task = parse_create(orjson.dumps(doc), "taskinfo")
    assert task.form == "taskinfo"
    assert task.model == "google/nano-banana"
    assert task.prompt == "a cat"
    assert task.image_urls == ()
    assert task.aspect_ratio is None
    assert task.resolution is None
    assert task.output_format is None
    assert task.callback_url is None
    assert task.param == doc  # the request as sent, whitespace and all


def test_message_form_full_request() -> None:
    doc = {
        "model": "google/nano-banana-edit",
        "callback_url": "https://example.com/hook",
        "input": {
            "prompt": "make it blue",
            "image_urls": ["https://example.com/a.png", "http://example.com/b.jpg"],
            "aspect_ratio": "16:9",
            "resolution": "1k",
            "output_format": "JPG",
        },
    }
    task = parse_create(orjson.dumps(doc), "taskinfo")
    assert task.image_urls == ("https://example.com/a.png", "http://example.com/b.jpg")
    assert task.aspect_ratio == "16:9"
    assert task.resolution == "1K"
    assert task.output_format == "jpeg"
    assert task.callback_url == "https://example.com/hook"
    assert task.param == doc


def test_msg_form_image_size_carries_the_aspect_ratio() -> None:
    doc = {
        "model": "google/nano-banana",
        "callBackUrl": "https://example.com/cb",
        "input": {"prompt": "a cat", "image_size": "9:16", "resolution": "2K"},
    }
    task = parse_create(orjson.dumps(doc), "recordinfo")
    assert task.form == "recordinfo"
    assert task.aspect_ratio == "9:16"
    assert task.resolution == "2K"
    assert task.callback_url == "https://example.com/cb"
    assert task.param == doc


def test_message_form_ignores_image_size() -> None:
    # Only the createTask form reads image_size as an aspect ratio.
    assert _create("taskinfo", image_size="9:16").aspect_ratio is None


@pytest.mark.parametrize("form", ["message", "msg"])
def test_aspect_ratio_field_works_in_both_forms(form: Form) -> None:
    assert _create(form, aspect_ratio="4:3").aspect_ratio == "4:3"


@pytest.mark.parametrize("form", ["message", "msg"])
@pytest.mark.parametrize("value", ["auto", "AUTO", " Auto "])
def test_auto_aspect_ratio_means_none(form: Form, value: str) -> None:
    assert _create(form, aspect_ratio=value).aspect_ratio is None


def test_auto_image_size_means_none() -> None:
    assert _create("recordinfo", image_size="auto").aspect_ratio is None


def test_agreeing_aspect_ratio_and_image_size_are_fine() -> None:
    assert _create("recordinfo", aspect_ratio="3:2", image_size="3:2").aspect_ratio == "3:2"


def test_disagreeing_aspect_ratio_and_image_size_are_refused() -> None:
    body = _body(model="m", input={"prompt": "p", "aspect_ratio": "1:1", "image_size": "16:9"})
    message = _refused(body, "recordinfo")
    assert "input.aspect_ratio" in message and "input.image_size" in message


@pytest.mark.parametrize(("given", "expected"), [("1k", "1K"), ("2K", "2K"), (" 4k ", "4K")])
def test_resolution_is_case_insensitive(given: str, expected: str) -> None:
    assert _create("taskinfo", resolution=given).resolution == expected


def test_auto_resolution_means_none() -> None:
    assert _create("recordinfo", resolution="auto").resolution is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [("png", "png"), ("PNG", "png"), ("jpg", "jpeg"), ("jpeg", "jpeg"), ("webp", "webp")],
)
def test_output_format(given: str, expected: str) -> None:
    assert _create("taskinfo", output_format=given).output_format == expected


def test_a_single_image_url_string_is_accepted() -> None:
    task = _create("taskinfo", image_urls="https://example.com/a.png")
    assert task.image_urls == ("https://example.com/a.png",)


@pytest.mark.parametrize("form", ["message", "msg"])
def test_callback_either_spelling_is_accepted(form: Form) -> None:
    for name in ("callback_url", "callBackUrl"):
        body = _body(model="m", input={"prompt": "p"}, **{name: " https://example.com/x "})
        assert parse_create(body, form).callback_url == "https://example.com/x"


@pytest.mark.parametrize("form", ["message", "msg"])
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_body(input={"prompt": "p"}), "model"),
        (_body(model="  ", input={"prompt": "p"}), "model"),
        (_body(model=7, input={"prompt": "p"}), "model"),
        (_body(model="m"), "input"),
        (_body(model="m", input="a cat"), "input"),
        (_body(model="m", input={}), "input.prompt"),
        (_body(model="m", input={"prompt": "   "}), "input.prompt"),
        (_body(model="m", input={"prompt": 3}), "input.prompt"),
        (_body(model="m", input={"prompt": "p" * 100_001}), "input.prompt"),
        (_body(model="m", input={"prompt": "p", "image_urls": 5}), "input.image_urls"),
        (
            _body(model="m", input={"prompt": "p", "image_urls": ["https://a/1", "ftp://a/2"]}),
            "input.image_urls[1]",
        ),
        (
            _body(model="m", input={"prompt": "p", "image_urls": ["https://a/1", 42]}),
            "input.image_urls[1]",
        ),
        (
            _body(model="m", input={"prompt": "p", "image_urls": ["https://a/1", ""]}),
            "input.image_urls[1]",
        ),
        (
            _body(model="m", input={"prompt": "p", "image_urls": ["https://a/" + "x" * 2048]}),
            "input.image_urls[0]",
        ),
        (
            _body(model="m", input={"prompt": "p", "image_urls": "file:///etc/passwd"}),
            "input.image_urls[0]",
        ),
        (_body(model="m", input={"prompt": "p", "aspect_ratio": ""}), "input.aspect_ratio"),
        (_body(model="m", input={"prompt": "p", "aspect_ratio": 1.5}), "input.aspect_ratio"),
        (_body(model="m", input={"prompt": "p", "resolution": 4}), "input.resolution"),
        (_body(model="m", input={"prompt": "p", "resolution": " "}), "input.resolution"),
        (_body(model="m", input={"prompt": "p", "output_format": "gif"}), "input.output_format"),
        (_body(model="m", input={"prompt": "p", "output_format": 1}), "input.output_format"),
    ],
)
def test_refusals_name_the_field(form: Form, body: bytes, field: str) -> None:
    message = _refused(body, form)
    assert message.startswith(f"{field}:"), message


def test_msg_form_image_size_refusal_names_image_size() -> None:
    body = _body(model="m", input={"prompt": "p", "image_size": 16})
    assert _refused(body, "recordinfo").startswith("input.image_size:")


@pytest.mark.parametrize(
    ("form", "name"), [("taskinfo", "callback_url"), ("recordinfo", "callBackUrl")]
)
@pytest.mark.parametrize("value", ["", "  ", 7, "ftp://example.com/x", "example.com/x"])
def test_callback_refusal_names_the_forms_field(form: Form, name: str, value: Any) -> None:
    body = _body(model="m", input={"prompt": "p"}, **{name: value})
    assert _refused(body, form).startswith(f"{name}:")


@pytest.mark.parametrize("body", [b"", b"  \n", b"{not json", b"[1, 2]", b'"text"'])
def test_bodies_that_are_not_a_json_object_are_refused(body: bytes) -> None:
    _refused(body, "taskinfo")


# -- check_model -------------------------------------------------------------------------------


def _checked(model: str, form: Form = "taskinfo", **input_: Any) -> TaskRequest:
    doc = {"model": model, "input": {"prompt": "p", **input_}}
    task = parse_create(orjson.dumps(doc), form)
    check_model(task, CATALOG.resolve(model), edit=CATALOG.is_edit(model))
    return task


def _check_refused(model: str, form: Form = "taskinfo", **input_: Any) -> str:
    with pytest.raises(InvalidArgument) as caught:
        _checked(model, form, **input_)
    return caught.value.message


def test_the_catalog_knows_the_edit_alias() -> None:
    assert CATALOG.is_edit("google/nano-banana-edit")
    assert not CATALOG.is_edit("google/nano-banana")


def test_edit_alias_without_images_is_refused() -> None:
    message = _check_refused("google/nano-banana-edit")
    assert message.startswith("input.image_urls:")


def test_edit_alias_with_an_image_is_fine() -> None:
    _checked("google/nano-banana-edit", image_urls=["https://example.com/a.png"])


def test_the_plain_model_needs_no_images() -> None:
    _checked("google/nano-banana")


def test_too_many_images_for_the_model() -> None:
    assert _spec("google/nano-banana").max_input_images == 3
    urls = [f"https://example.com/{i}.png" for i in range(4)]
    message = _check_refused("google/nano-banana", image_urls=urls)
    assert message.startswith("input.image_urls:") and "at most 3" in message
    _checked("google/nano-banana", image_urls=urls[:3])
    _checked("google/nano-banana-pro", image_urls=urls)  # takes 14


def test_unsupported_aspect_ratio_names_aspect_ratio() -> None:
    message = _check_refused("gemini-2.5-flash-image", aspect_ratio="1:8")
    assert message.startswith("input.aspect_ratio:") and "'1:8'" in message
    _checked("gemini-3.1-flash-image-preview", aspect_ratio="1:8")


def test_unsupported_aspect_ratio_names_image_size_in_the_msg_form() -> None:
    message = _check_refused("gemini-2.5-flash-image", "recordinfo", image_size="1:8")
    assert message.startswith("input.image_size:")
    _checked("gemini-3.1-flash-image-preview", "recordinfo", image_size="1:8")


def test_unsupported_aspect_ratio_names_aspect_ratio_in_the_msg_form_when_sent() -> None:
    message = _check_refused("gemini-2.5-flash-image", "recordinfo", aspect_ratio="1:8")
    assert message.startswith("input.aspect_ratio:")


def test_resolution_per_model() -> None:
    message = _check_refused("gemini-2.5-flash-image", resolution="4K")
    assert message.startswith("input.resolution:") and "'4K'" in message
    _checked("gemini-2.5-flash-image", resolution="1K")
    _checked("google/nano-banana-pro", resolution="4k")
    _checked("gemini-3.1-flash-image-preview", resolution="512")


def test_a_text_model_is_refused() -> None:
    message = _check_refused("gemini-2.5-flash")
    assert message.startswith("model:") and "not an image model" in message


# -- gemini_request ----------------------------------------------------------------------------


def _validated(spec: ModelSpec, body: dict[str, Any]) -> Call:
    return gemini.parse_call("req-1", "generateContent", spec, orjson.dumps(body))


def test_gemini_request_puts_images_first_then_the_prompt() -> None:
    task = _checked(
        "google/nano-banana-pro",
        image_urls=["https://example.com/a.png", "https://example.com/b.jpg"],
        aspect_ratio="16:9",
        resolution="2K",
    )
    spec = _spec("google/nano-banana-pro")
    images = [("image/png", PNG), ("image/jpeg", JPEG)]
    body = gemini_request(task, spec, images)
    assert body == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {
                        "inlineData": {
                            "mimeType": "image/png",
                            "data": base64.b64encode(PNG).decode(),
                        }
                    },
                    {
                        "inlineData": {
                            "mimeType": "image/jpeg",
                            "data": base64.b64encode(JPEG).decode(),
                        }
                    },
                    {"text": "p"},
                ],
            }
        ],
        "generationConfig": {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
        },
    }
    call = _validated(spec, body)
    assert call.input_images == 2


def test_gemini_request_without_options_has_no_image_config() -> None:
    task = _checked("google/nano-banana")
    spec = _spec("google/nano-banana")
    body = gemini_request(task, spec, [])
    assert body == {
        "contents": [{"role": "user", "parts": [{"text": "p"}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]},
    }
    _validated(spec, body)


def test_gemini_request_single_tier_model_gets_no_image_size() -> None:
    task = _checked("gemini-2.5-flash-image", aspect_ratio="3:2", resolution="1K")
    spec = _spec("gemini-2.5-flash-image")
    body = gemini_request(task, spec, [])
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "3:2"}
    _validated(spec, body)


def test_gemini_request_resolution_only() -> None:
    task = _checked(
        "gemini-3.1-flash-image-preview", "recordinfo", resolution="4K", image_size="1:8"
    )
    spec = _spec("gemini-3.1-flash-image-preview")
    body = gemini_request(task, spec, [("image/webp", WEBP)])
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "1:8", "imageSize": "4K"}
    assert [list(part) for part in body["contents"][0]["parts"]] == [["inlineData"], ["text"]]
    _validated(spec, body)


# -- render ------------------------------------------------------------------------------------

CREATED = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
COMPLETED = CREATED + timedelta(seconds=12, milliseconds=500)
PARAM = {"model": "google/nano-banana", "input": {"prompt": "a cat", "aspect_ratio": "1:1"}}


def _record(form: Form, state: str, **fields: Any) -> TaskRecord:
    return TaskRecord(
        id="task_abc",
        request_id="req_abc",
        form=form,
        key_id=1,
        account_id=1,
        model="google/nano-banana",
        param=PARAM,
        state=state,  # type: ignore[arg-type]
        created_at=CREATED,
        **fields,
    )


MESSAGE_KEYS = {
    "task_id",
    "model",
    "status",
    "param",
    "result",
    "error",
    "create_at",
    "complete_at",
    "duration_s",
    "cost",
}
MSG_KEYS = {
    "taskId",
    "model",
    "state",
    "param",
    "resultJson",
    "failCode",
    "failMsg",
    "costTime",
    "createTime",
    "completeTime",
    "credits",
}


@pytest.mark.parametrize("state", ["pending", "running"])
def test_render_message_unfinished(state: str) -> None:
    started = {"started_at": CREATED + timedelta(seconds=1)} if state == "running" else {}
    data = render(_record("taskinfo", state, **started), [])
    assert set(data) == MESSAGE_KEYS
    assert data == {
        "task_id": "task_abc",
        "model": "google/nano-banana",
        "status": state,
        "param": PARAM,
        "result": None,
        "error": None,
        "create_at": int(CREATED.timestamp()),
        "complete_at": None,
        "duration_s": None,
        "cost": 0,
    }
    assert type(data["create_at"]) is int


def test_render_message_succeeded() -> None:
    record = _record(
        "taskinfo",
        "succeeded",
        completed_at=COMPLETED,
        cost=38_700,
        files=(StoredFile("0.png", "image/png"),),
    )
    data = render(record, ["https://gw.example/files/0.png"])
    assert set(data) == MESSAGE_KEYS
    assert data["status"] == "succeeded"
    assert data["param"] == PARAM and isinstance(data["param"], dict)
    assert data["result"] == {"urls": ["https://gw.example/files/0.png"]}
    assert data["error"] is None
    assert data["create_at"] == 1772366400 and type(data["create_at"]) is int
    assert data["complete_at"] == 1772366412 and type(data["complete_at"]) is int
    assert data["duration_s"] == 12.5
    assert data["cost"] == 38_700


def test_render_message_failed() -> None:
    record = _record(
        "taskinfo", "failed", completed_at=COMPLETED, error_code=422, error_message="blocked"
    )
    data = render(record, [])
    assert set(data) == MESSAGE_KEYS
    assert data["status"] == "failed"
    assert data["result"] is None
    assert data["error"] == {"code": 422, "message": "blocked"}
    assert data["complete_at"] == 1772366412
    assert data["duration_s"] == 12.5
    assert data["cost"] == 0


@pytest.mark.parametrize(("state", "shown"), [("pending", "waiting"), ("running", "generating")])
def test_render_msg_unfinished(state: str, shown: str) -> None:
    data = render(_record("recordinfo", state), [])
    assert set(data) == MSG_KEYS
    assert data == {
        "taskId": "task_abc",
        "model": "google/nano-banana",
        "state": shown,
        "param": orjson.dumps(PARAM).decode(),
        "resultJson": "",
        "failCode": "",
        "failMsg": "",
        "costTime": None,
        "createTime": 1772366400250,
        "completeTime": None,
        "credits": 0,
    }


def test_render_msg_succeeded() -> None:
    record = _record("recordinfo", "succeeded", completed_at=COMPLETED, cost=67_200)
    urls = ["https://gw.example/a.png", "https://gw.example/b.png"]
    data = render(record, urls)
    assert set(data) == MSG_KEYS
    assert data["state"] == "success"
    assert isinstance(data["param"], str) and orjson.loads(data["param"]) == PARAM
    assert isinstance(data["resultJson"], str)
    assert orjson.loads(data["resultJson"]) == {"resultUrls": urls}
    assert data["failCode"] == "" and data["failMsg"] == ""
    assert data["costTime"] == 12_500 and type(data["costTime"]) is int
    assert data["createTime"] == 1772366400250 and type(data["createTime"]) is int
    assert data["completeTime"] == 1772366412750 and type(data["completeTime"]) is int
    assert data["credits"] == 67_200


def test_render_msg_failed() -> None:
    record = _record(
        "recordinfo",
        "failed",
        completed_at=COMPLETED,
        error_code=500,
        error_message="upstream down",
    )
    data = render(record, ["https://ignored.example/x.png"])
    assert set(data) == MSG_KEYS
    assert data["state"] == "fail"
    assert data["resultJson"] == ""
    assert data["failCode"] == "500" and isinstance(data["failCode"], str)
    assert data["failMsg"] == "upstream down"
    assert data["costTime"] == 12_500
    assert data["completeTime"] == 1772366412750


def test_render_msg_failed_without_a_message() -> None:
    record = _record("recordinfo", "failed", completed_at=COMPLETED, error_code=500)
    assert render(record, [])["failMsg"] == ""


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("x"), 422),
        (PermissionDenied("x"), 401),
        (Conflict("x"), 422),
        (PayloadTooLarge("x"), 422),
        (Unavailable("x"), 500),
        (DeadlineExceeded("x"), 500),
        (Maintenance("x"), 455),
        (FeatureDisabled("x"), 505),
        (InsufficientCredits("x"), 402),
        (NotFound("x"), 404),
        (RateLimited("x"), 429),
    ],
)
def test_code_for(error: GatewayError, code: int) -> None:
    assert code_for(error) == code


@pytest.mark.parametrize(("form", "text"), [("taskinfo", "message"), ("recordinfo", "msg")])
def test_error_body_envelope(form: Form, text: str) -> None:
    status, body = error_body(Maintenance("down for upgrades"), form)
    assert status == 455
    assert orjson.loads(body) == {"code": 455, text: "down for upgrades", "data": None}


def test_error_body_folds_the_status_too() -> None:
    status, body = error_body(InvalidArgument("input.prompt: required"), "recordinfo")
    assert status == 422
    assert orjson.loads(body) == {"code": 422, "msg": "input.prompt: required", "data": None}


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/api/v1/client/job/CreateTask", "taskinfo"),
        ("/api/v1/client/job/QueryTask", "taskinfo"),
        ("/api/v1/jobs/createTask", "recordinfo"),
        ("/api/v1/jobs/recordInfo", "recordinfo"),
        ("/api/v1/chat/credit", "recordinfo"),
    ],
)
def test_form_for(path: str, form: Form) -> None:
    assert form_for(path) == form
