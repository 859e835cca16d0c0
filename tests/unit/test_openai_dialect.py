"""The OpenAI dialect's converters, both ways: chat completions and images requests to the
canonical Gemini request, Gemini answers to OpenAI objects, and the error envelope. Pure."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from PIL import Image as PILImage

from nanogate.core import canonical, inline
from nanogate.core.canonical import Candidate, Image
from nanogate.core.catalog import ModelSpec, load_catalog
from nanogate.core.errors import (
    GatewayError,
    InsufficientCredits,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from nanogate.core.inline import Blob
from nanogate.dialects import openai, openai_chat, openai_images
from nanogate.dialects.openai import Tokens
from nanogate.dialects.openai_chat import ChatStream, RemoteImage
from nanogate.dialects.openai_images import MASK_INSTRUCTION

CATALOG = load_catalog()
FLASH_IMAGE = CATALOG.resolve("gemini-2.5-flash-image")
PRO_IMAGE = CATALOG.resolve("gemini-3-pro-image-preview")
FLASH_31 = CATALOG.resolve("gemini-3.1-flash-image-preview")
TEXT = CATALOG.resolve("gemini-2.5-flash")
TEXT_3 = CATALOG.resolve("gemini-3-pro-preview")
SKIP = "skip_thought_signature_validator"


def png(color: tuple[int, int, int] = (255, 0, 0), size: tuple[int, int] = (4, 4)) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


RED, GREEN, BLUE, MASK = png((255, 0, 0)), png((0, 255, 0)), png((0, 0, 255)), png((0, 0, 0))
RED_B64 = base64.b64encode(RED).decode()
RED_URL = "data:image/png;base64," + RED_B64


@contextmanager
def invalid(param: str) -> Iterator[None]:
    """Expect an InvalidArgument whose `.param` is `param` and whose message starts with it."""
    with pytest.raises(InvalidArgument) as info:
        yield
    assert info.value.param == param
    assert info.value.status == 400
    assert info.value.message.startswith(f"{param}: ")


def chat(doc: dict[str, Any], spec: ModelSpec = TEXT, max_images: int = 4) -> dict[str, Any]:
    """The canonical request for a chat body."""
    return openai_chat.parse(doc, spec, max_images=max_images).gemini


def ask(spec: ModelSpec = TEXT, max_images: int = 4, **params: Any) -> dict[str, Any]:
    """The generationConfig for one user message and `params`."""
    doc = {"model": spec.name, "messages": [{"role": "user", "content": "hi"}], **params}
    config: dict[str, Any] = chat(doc, spec, max_images).get("generationConfig", {})
    return config


def user(*parts: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(parts)}]}


def image_part(url: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


# -- error envelope ----------------------------------------------------------------------------


def envelope(error: GatewayError) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(openai.error_body(error))
    assert list(body) == ["error"]
    assert list(body["error"]) == ["message", "type", "param", "code"]
    return body["error"]


def test_error_400_echoes_param_with_invalid_value() -> None:
    error = openai.bad("temperature", "must be a number from 0 to 2, not 5.")
    assert envelope(error) == {
        "message": "temperature: must be a number from 0 to 2, not 5.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_value",
    }


def test_error_400_without_param() -> None:
    assert envelope(InvalidArgument("The request body is empty.")) == {
        "message": "The request body is empty.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_argument",
    }


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (Unauthenticated("No API key."), "authentication_error", "invalid_api_key"),
        (InsufficientCredits("Out of credits."), "insufficient_quota", "insufficient_credits"),
        (PermissionDenied("Key revoked."), "permission_error", "permission_denied"),
        (NotFound("No such route."), "not_found_error", "not_found"),
        (RateLimited("Slow down.", retry_after=3), "rate_limit_error", "rate_limit_exceeded"),
        (Internal("Oops."), "api_error", "internal_error"),
    ],
)
def test_error_types_and_codes(error: GatewayError, kind: str, code: str) -> None:
    assert envelope(error) == {"message": error.message, "type": kind, "param": None, "code": code}


def test_error_404_unknown_model_is_model_not_found() -> None:
    with pytest.raises(NotFound) as info:
        CATALOG.resolve("gpt-4o")
    body = envelope(info.value)
    assert body["type"] == "not_found_error"
    assert body["code"] == "model_not_found"
    assert "gpt-4o" in body["message"]


def test_model_object() -> None:
    assert openai.model_object(PRO_IMAGE) == {
        "id": "gemini-3-pro-image-preview",
        "object": "model",
        "created": 0,
        "owned_by": "google",
    }


# -- reading parameters ------------------------------------------------------------------------


def test_number_bounds_and_kinds() -> None:
    assert openai.number({"x": 0}, "x", 0, 1) == 0
    assert openai.number({"x": 1.0}, "x", 0, 1) == 1.0
    assert openai.number({}, "x", 0, 1) is None
    assert openai.number({"x": None}, "x", 0, 1) is None
    for wrong in (1.01, -0.1, True, "0.5", [0.5]):
        with invalid("x"):
            openai.number({"x": wrong}, "x", 0, 1)
    with invalid("x"):
        openai.number({"x": 2.0}, "x", 0, 10, integer=True)
    assert openai.number({"x": 2}, "x", 0, 10, integer=True) == 2


def test_choice_and_show() -> None:
    assert openai.choice({"a": "url"}, "a", ("b64_json", "url")) == "url"
    assert openai.choice({}, "a", ("x",)) is None
    with invalid("a"):
        openai.choice({"a": "nope"}, "a", ("x", "y"))
    assert openai.show("abc") == "'abc'"
    assert openai.show([1, 2]) == "[1,2]"
    assert openai.show("x" * 100).endswith("...")
    assert len(openai.show("x" * 100)) == 40


def test_show_and_choice_of_a_blob_do_not_crash() -> None:
    blob = Blob(b"A" * 10000, 0, 10000)
    assert openai.show(blob) == '"<Blob 10000 chars>"'
    with invalid("response_format"):
        openai.choice({"response_format": blob}, "response_format", ("url",))


def test_json_object() -> None:
    assert openai.json_object(b'{"a": 1}', "chat") == {"a": 1}
    with pytest.raises(InvalidArgument, match="empty"):
        openai.json_object(b"  \n", "chat")
    with pytest.raises(InvalidArgument, match=r"not valid JSON \(line 1, column"):
        openai.json_object(b'{"a": ', "chat")
    with pytest.raises(InvalidArgument, match="must be a JSON object"):
        openai.json_object(b"[1, 2]", "chat")


def test_json_object_cuts_large_images_out() -> None:
    data = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(300_000)).decode()
    doc = openai.json_object(orjson.dumps({"url": "data:image/png;base64," + data}), "chat")
    assert isinstance(doc["url"], Blob)


def test_model_name() -> None:
    assert openai.model_name({"model": "gemini-2.5-flash"}) == "gemini-2.5-flash"
    assert openai.model_name({}, "fallback") == "fallback"
    for body in ({}, {"model": ""}, {"model": 3}):
        with invalid("model"):
            openai.model_name(body)


def test_count() -> None:
    assert openai.count({}, 4) == 1
    assert openai.count({"n": 4}, 4) == 4
    for wrong in (0, -1, True, "2", 1.5):
        with invalid("n"):
            openai.count({"n": wrong}, 4)
    with pytest.raises(InvalidArgument, match="at most 4"):
        openai.count({"n": 5}, 4)


# -- chat requests: messages -------------------------------------------------------------------


def test_plain_user_message() -> None:
    request = openai_chat.parse(
        {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "Hello"}]},
        TEXT,
        max_images=4,
    )
    assert request.model == "gemini-2.5-flash"
    assert request.gemini == {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]}
    assert request.remote == []
    assert (request.stream, request.n, request.include_usage) == (False, 1, False)
    assert request.image_output is None


TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "developer", "content": [{"type": "text", "text": "Use the tools."}]},
    {"role": "user", "content": "Weather in Paris, time in Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"city": "Rome", "utc": true}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21, "sky": "clear"}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    {"role": "user", "content": "Thanks"},
]


def test_multi_turn_conversation_with_tool_calls() -> None:
    gemini = chat({"messages": TOOL_CONVERSATION}, TEXT)
    assert gemini == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use the tools."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris, time in Rome?"}]},
            {
                "role": "model",
                "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "get_time", "args": {"city": "Rome", "utc": True}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {
                        "functionResponse": {
                            "name": "get_weather",
                            "response": {"temp": 21, "sky": "clear"},
                        }
                    },
                    {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}},
                ],
            },
            {"role": "user", "parts": [{"text": "Thanks"}]},
        ],
    }


def test_gemini_3_calls_without_signature_get_the_skip_value() -> None:
    for spec in (TEXT_3, PRO_IMAGE, FLASH_31):
        model_turn = chat({"messages": TOOL_CONVERSATION}, spec)["contents"][1]
        assert [part["thoughtSignature"] for part in model_turn["parts"]] == [SKIP, SKIP]


def test_signature_in_the_tool_call_id_goes_back_as_thought_signature() -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_ab12__ts__c2lnbmF0dXJl+/=",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                },
                {"id": "call_cd34", "function": {"name": "get_time", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_ab12__ts__c2lnbmF0dXJl+/=", "content": "sun"},
        {"role": "tool", "tool_call_id": "call_cd34", "content": ""},
    ]
    contents = chat({"messages": messages}, TEXT_3)["contents"]
    assert contents[1]["parts"] == [
        {
            "functionCall": {"name": "get_weather", "args": {}},
            "thoughtSignature": "c2lnbmF0dXJl+/=",
        },
        {"functionCall": {"name": "get_time", "args": {}}, "thoughtSignature": SKIP},
    ]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"content": "sun"}}},
        {"functionResponse": {"name": "get_time", "response": {}}},
    ]
    # A Gemini 2.5 model keeps a signature it is given and adds none.
    parts = chat({"messages": messages}, TEXT)["contents"][1]["parts"]
    assert parts[0]["thoughtSignature"] == "c2lnbmF0dXJl+/="
    assert "thoughtSignature" not in parts[1]


def test_tool_call_signature_round_trips_through_an_answer() -> None:
    answer = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {"name": "lookup", "args": {"q": "x"}},
                            "thoughtSignature": "U0lHTkFUVVJF",
                        }
                    ],
                },
                "finishReason": "STOP",
            }
        ]
    }
    done = openai_chat.completion("r", TEXT_3.name, 0, canonical.candidates(answer), Tokens())
    message = done["choices"][0]["message"]
    call = message["tool_calls"][0]
    messages = [
        {"role": "user", "content": "look it up"},
        message,
        {"role": "tool", "tool_call_id": call["id"], "content": '{"found": true}'},
    ]
    contents = chat({"messages": messages}, TEXT_3)["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "lookup", "args": {"q": "x"}},
                "thoughtSignature": "U0lHTkFUVVJF",
            }
        ],
    }
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "lookup", "response": {"found": True}}}
    ]


def test_unknown_tool_call_id_names_the_message() -> None:
    messages = [*TOOL_CONVERSATION[2:5], {"role": "tool", "tool_call_id": "call_9", "content": "x"}]
    with invalid("messages[3].tool_call_id"):
        chat({"messages": messages})


def test_tool_message_needs_a_tool_call_id() -> None:
    messages = [*TOOL_CONVERSATION[2:4], {"role": "tool", "content": "x"}]
    with invalid("messages[2].tool_call_id"):
        chat({"messages": messages})


def test_tool_result_after_a_user_text_starts_a_new_turn() -> None:
    messages = [
        *TOOL_CONVERSATION[2:4],
        {"role": "user", "content": "hurry"},
        {"role": "tool", "tool_call_id": "call_1", "content": "[1, 2]"},
    ]
    contents = chat({"messages": messages})["contents"]
    assert [turn["role"] for turn in contents] == ["user", "model", "user", "user"]
    assert contents[2]["parts"] == [{"text": "hurry"}]
    assert contents[3]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"content": "[1, 2]"}}}
    ]


def test_legacy_function_role() -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "function", "name": "get_weather", "content": "sunny"},
    ]
    assert chat({"messages": messages})["contents"][1] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}}],
    }
    with invalid("messages[1].name"):
        chat({"messages": [messages[0], {"role": "function", "content": "sunny"}]})


@pytest.mark.parametrize(
    ("call", "param"),
    [
        ({"function": {"name": "f", "arguments": "{not json"}}, "function.arguments"),
        ({"function": {"name": "f", "arguments": "[1]"}}, "function.arguments"),
        ({"function": {"arguments": "{}"}}, "function.name"),
        ({"function": {"name": "", "arguments": "{}"}}, "function.name"),
        ("call_1", "function.name"),
    ],
)
def test_bad_tool_calls(call: Any, param: str) -> None:
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]
    with invalid(f"messages[1].tool_calls[0].{param}"):
        chat({"messages": messages})


def test_tool_calls_must_be_an_array() -> None:
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": {}}]
    with invalid("messages[1].tool_calls"):
        chat({"messages": messages})


def test_assistant_turns() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": ""},  # nothing to say: no turn
        {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
        {"role": "user", "content": "c"},
    ]
    assert chat({"messages": messages})["contents"] == [
        {"role": "user", "parts": [{"text": "a"}]},
        {"role": "model", "parts": [{"text": "b"}]},
        {"role": "user", "parts": [{"text": "c"}]},
    ]


def test_assistant_images_go_back_as_history() -> None:
    messages = [
        {"role": "user", "content": "draw"},
        {
            "role": "assistant",
            "content": "here",
            "images": [
                {"type": "image_url", "image_url": {"url": RED_URL}},
                {"type": "image_url", "image_url": {"url": "https://gw.example/r/1.png"}},
            ],
        },
        {"role": "user", "content": "bluer"},
    ]
    request = openai_chat.parse({"messages": messages}, FLASH_IMAGE, max_images=4)
    model_turn = request.gemini["contents"][1]
    assert model_turn["parts"][:2] == [
        {"text": "here"},
        {"inlineData": {"mimeType": "image/png", "data": RED_B64}},
    ]
    # A URL (an image this gateway stored) is a slot to fetch, like a user's.
    [remote] = request.remote
    assert remote.param == "messages[1].images[1].image_url.url"
    assert remote.url == "https://gw.example/r/1.png"
    openai_chat.attach(remote, "image/png", BLUE)
    assert model_turn["parts"][2] == {
        "inlineData": {"mimeType": "image/png", "data": base64.b64encode(BLUE).decode()}
    }


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (None, "messages"),
        ([], "messages"),
        ({"role": "user"}, "messages"),
        ([{"role": "system", "content": "only rules"}], "messages"),
        (["hi"], "messages[0]"),
        ([{"role": "bot", "content": "hi"}], "messages[0].role"),
        ([{"content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": []}], "messages[0].content"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            "messages[0].content[0].text",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]}],
            "messages[0].content[1].type",
        ),
        ([{"role": "user", "content": ["hi"]}], "messages[0].content[0].type"),
        (
            [
                {"role": "system", "content": [image_part(RED_URL)]},
                {"role": "user", "content": "x"},
            ],
            "messages[0].content[0]",
        ),
        (
            [{"role": "system", "content": 5}, {"role": "user", "content": "x"}],
            "messages[0].content",
        ),
    ],
)
def test_bad_messages(messages: Any, param: str) -> None:
    with invalid(param):
        chat({"messages": messages})


def test_long_base64_looking_text_in_a_large_body_stays_text() -> None:
    secret = base64.b64encode(bytes(range(256)) * 40).decode()
    assert len(secret) > inline.MIN_BLOB
    body = orjson.dumps(
        {
            "model": "gemini-2.5-flash",
            "messages": [
                {"role": "system", "content": secret},
                {"role": "user", "content": secret},
                {"role": "user", "content": [{"type": "text", "text": secret}]},
                {"role": "user", "content": "padding " * inline.SMALL_BODY},
            ],
        }
    )
    doc = openai.json_object(body, "chat completions")
    assert isinstance(doc["messages"][1]["content"], Blob)
    gemini = chat(doc)
    assert gemini["systemInstruction"] == {"parts": [{"text": secret}]}
    assert gemini["contents"][0]["parts"] == [{"text": secret}]
    assert gemini["contents"][1]["parts"] == [{"text": secret}]


# -- chat requests: image_url parts ------------------------------------------------------------


def test_data_url_becomes_inline_data() -> None:
    gemini = chat(user({"type": "text", "text": "what is this?"}, image_part(RED_URL)), FLASH_IMAGE)
    assert gemini["contents"][0]["parts"] == [
        {"text": "what is this?"},
        {"inlineData": {"mimeType": "image/png", "data": RED_B64}},
    ]


def test_image_url_as_a_bare_string_and_an_upper_case_type() -> None:
    url = "data:IMAGE/PNG;base64," + RED_B64
    parts = chat(user({"type": "image_url", "image_url": url}), TEXT)["contents"][0]["parts"]
    assert parts == [{"inlineData": {"mimeType": "image/png", "data": RED_B64}}]


def test_jpeg_data_url() -> None:
    out = io.BytesIO()
    PILImage.new("RGB", (4, 4)).save(out, format="JPEG")
    data = base64.b64encode(out.getvalue()).decode()
    parts = chat(user(image_part("data:image/jpeg;base64," + data)))["contents"][0]["parts"]
    assert parts == [{"inlineData": {"mimeType": "image/jpeg", "data": data}}]


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png," + RED_B64,  # not base64
        "data:image/png;base64",  # no comma
        "data:image/gif;base64," + RED_B64,  # a type the model does not take
        "data:text/plain;base64," + RED_B64,
        "data:image/png;base64," + base64.b64encode(b"just some text, not an image").decode(),
        "data:image/png;base64,%%%%not base64%%%%",
        "data:image/png;base64,",
        "ftp://example.com/cat.png",
        "file:///etc/passwd",
        "cat.png",
        "",
        None,
        5,
    ],
)
def test_bad_image_urls(url: Any) -> None:
    with invalid("messages[0].content[0].image_url.url"):
        chat(user(image_part(url)), FLASH_IMAGE)


def test_a_pdf_data_url_is_not_an_image_even_on_a_text_model() -> None:
    pdf = base64.b64encode(b"%PDF-1.7\n" + bytes(100)).decode()
    assert "application/pdf" in TEXT.input_mime_types
    with pytest.raises(InvalidArgument, match="does not hold a base64 image"):
        chat(user(image_part("data:application/pdf;base64," + pdf)), TEXT)


def test_remote_image_is_a_slot_filled_by_attach() -> None:
    doc = user(
        {"type": "text", "text": "compare"},
        image_part("https://example.com/a.jpg"),
        image_part("http://example.com/b.png"),
    )
    request = openai_chat.parse(doc, FLASH_IMAGE, max_images=4)
    parts = request.gemini["contents"][0]["parts"]
    assert [(r.param, r.url) for r in request.remote] == [
        ("messages[0].content[1].image_url.url", "https://example.com/a.jpg"),
        ("messages[0].content[2].image_url.url", "http://example.com/b.png"),
    ]
    assert parts[1] == {} and parts[2] == {}
    openai_chat.attach(request.remote[0], "image/jpeg", b"\xff\xd8\xffjpeg")
    openai_chat.attach(request.remote[1], "image/png", RED)
    assert parts[1] == {
        "inlineData": {
            "mimeType": "image/jpeg",
            "data": base64.b64encode(b"\xff\xd8\xffjpeg").decode(),
        }
    }
    assert parts[2] == {"inlineData": {"mimeType": "image/png", "data": RED_B64}}


def test_attach_fills_the_given_part() -> None:
    part: dict[str, Any] = {}
    openai_chat.attach(RemoteImage("p", "https://x", part), "image/webp", b"abc")
    assert part == {"inlineData": {"mimeType": "image/webp", "data": "YWJj"}}


def test_large_data_url_stays_a_blob_and_is_written_back() -> None:
    image = png((10, 20, 30), (700, 700))
    noisy = base64.b64encode(image + bytes(300_000)).decode()  # PNG head, then filler
    body = orjson.dumps(user(image_part("data:image/png;base64," + noisy)))
    doc = openai.json_object(body, "chat")
    gemini = chat(doc, PRO_IMAGE)
    data = gemini["contents"][0]["parts"][0]["inlineData"]["data"]
    assert isinstance(data, Blob)
    assert gemini["contents"][0]["parts"][0]["inlineData"]["mimeType"] == "image/png"
    assert orjson.loads(inline.dumps(gemini))["contents"][0]["parts"][0]["inlineData"] == {
        "mimeType": "image/png",
        "data": noisy,
    }


def test_large_data_url_of_a_non_image_is_rejected() -> None:
    noisy = base64.b64encode(b"hello" + bytes(300_000)).decode()
    doc = openai.json_object(orjson.dumps(user(image_part("data:image/png;base64," + noisy))), "x")
    with invalid("messages[0].content[0].image_url.url"):
        chat(doc, PRO_IMAGE)


def test_large_raw_base64_without_a_data_header_is_rejected() -> None:
    raw = base64.b64encode(RED + bytes(300_000)).decode()
    doc = openai.json_object(orjson.dumps(user(image_part(raw))), "x")
    assert isinstance(doc["messages"][0]["content"][0]["image_url"]["url"], Blob)
    with invalid("messages[0].content[0].image_url.url"):
        chat(doc, PRO_IMAGE)


# -- chat requests: parameters -----------------------------------------------------------------


def test_sampling_parameters() -> None:
    config = ask(
        temperature=0.7,
        top_p=0.9,
        max_tokens=100,
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=-1.5,
        stop="END",
    )
    assert config == {
        "temperature": 0.7,
        "topP": 0.9,
        "presencePenalty": 0.5,
        "frequencyPenalty": -1.5,
        "maxOutputTokens": 100,
        "seed": 42,
        "stopSequences": ["END"],
    }


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert ask(max_tokens=100, max_completion_tokens=50)["maxOutputTokens"] == 50
    assert ask(max_completion_tokens=7)["maxOutputTokens"] == 7
    assert ask(max_tokens=TEXT.output_token_limit)["maxOutputTokens"] == TEXT.output_token_limit


def test_temperature_bounds() -> None:
    assert ask(temperature=0)["temperature"] == 0
    assert ask(temperature=2)["temperature"] == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("temperature", "0.5"),
        ("temperature", True),
        ("top_p", 1.5),
        ("top_p", [1]),
        ("presence_penalty", 3),
        ("frequency_penalty", -2.5),
        ("max_tokens", 0),
        ("max_tokens", 10.5),
        ("max_tokens", "100"),
        ("max_tokens", TEXT.output_token_limit + 1),
        ("max_completion_tokens", -1),
        ("seed", "42"),
        ("seed", 1.5),
        ("seed", 2**63),
        ("stop", ["a", "b", "c", "d", "e", "f"]),
        ("stop", [""]),
        ("stop", ""),
        ("stop", [1]),
        ("stop", {"a": 1}),
        ("stream", "yes"),
        ("stream_options", "include_usage"),
        ("n", "2"),
        ("n", 0),
        ("n", True),
        ("reasoning_effort", "extreme"),
        ("image_output", "file"),
        ("modalities", "text"),
        ("modalities", []),
        ("modalities", ["text", "audio"]),
        ("modalities", [{}]),
        ("modalities", [[]]),
        ("modalities", ["text", {"image": True}]),
        # Gemini's seed is an int32: a wider one is refused here, by the name the client sent.
        ("seed", 2**31),
        ("seed", -(2**31) - 1),
        ("tools", {"type": "function"}),
        ("tool_choice", "sometimes"),
        ("tool_choice", {"type": "function"}),
    ],
)
def test_wrong_values_name_the_parameter(name: str, value: Any) -> None:
    with invalid(name):
        ask(**{name: value})


def test_stop_as_list() -> None:
    assert ask(stop=["a", "b", "c", "d", "e"])["stopSequences"] == ["a", "b", "c", "d", "e"]
    assert "stopSequences" not in ask(stop=[])


def test_response_format() -> None:
    assert ask(response_format={"type": "text"}) == {}
    assert ask(response_format={"type": "json_object"}) == {"responseMimeType": "application/json"}
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    format_ = {
        "type": "json_schema",
        "json_schema": {"name": "person", "strict": True, "schema": schema},
    }
    assert ask(response_format=format_) == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ({"type": "json_schema"}, "response_format.json_schema.schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "x"}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": "{}"}},
            "response_format.json_schema.schema",
        ),
        ({"type": "xml"}, "response_format.type"),
        ("json_object", "response_format.type"),
    ],
)
def test_bad_response_format(value: Any, param: str) -> None:
    with invalid(param):
        ask(response_format=value)


def test_modalities() -> None:
    assert ask(FLASH_IMAGE, modalities=["text", "image"]) == {
        "responseModalities": ["TEXT", "IMAGE"]
    }
    assert ask(FLASH_IMAGE, modalities=["image"])["responseModalities"] == ["IMAGE"]
    assert ask(PRO_IMAGE, modalities=["image", "text", "image"])["responseModalities"] == [
        "IMAGE",
        "TEXT",
    ]
    assert ask(TEXT, modalities=["text"])["responseModalities"] == ["TEXT"]
    with invalid("modalities"):
        ask(TEXT, modalities=["text", "image"])


def test_image_config() -> None:
    config = ask(PRO_IMAGE, image_config={"aspect_ratio": "16:9", "image_size": "2K"})
    assert config == {"imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}}
    assert ask(PRO_IMAGE, image_config={"aspect_ratio": "4:5"}) == {
        "imageConfig": {"aspectRatio": "4:5"}
    }
    assert ask(FLASH_IMAGE, image_config={"image_size": "1K"}) == {
        "imageConfig": {"imageSize": "1K"}
    }
    assert ask(FLASH_31, image_config={"aspect_ratio": "1:8", "image_size": "512"}) == {
        "imageConfig": {"aspectRatio": "1:8", "imageSize": "512"}
    }
    assert ask(PRO_IMAGE, image_config={}) == {}


@pytest.mark.parametrize(
    ("spec", "value", "param"),
    [
        (PRO_IMAGE, {"aspect_ratio": "7:3"}, "image_config.aspect_ratio"),
        (PRO_IMAGE, {"aspect_ratio": "1:8"}, "image_config.aspect_ratio"),  # 3.1 Flash only
        (PRO_IMAGE, {"aspect_ratio": 1.5}, "image_config.aspect_ratio"),
        (PRO_IMAGE, {"image_size": "8K"}, "image_config.image_size"),
        (PRO_IMAGE, {"image_size": "512"}, "image_config.image_size"),
        (PRO_IMAGE, {"image_size": "2k"}, "image_config.image_size"),
        (FLASH_IMAGE, {"image_size": "2K"}, "image_config.image_size"),
        (PRO_IMAGE, "16:9", "image_config"),
        (TEXT, {"aspect_ratio": "1:1"}, "image_config"),
    ],
)
def test_bad_image_config(spec: ModelSpec, value: Any, param: str) -> None:
    with invalid(param):
        ask(spec, image_config=value)


@pytest.mark.parametrize(
    ("effort", "budget"),
    [("none", 0), ("minimal", 512), ("low", 1024), ("medium", 8192), ("high", 24576)],
)
def test_reasoning_effort(effort: str, budget: int) -> None:
    assert ask(reasoning_effort=effort) == {"thinkingConfig": {"thinkingBudget": budget}}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
        "strict": True,
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}


def test_tools_become_function_declarations() -> None:
    gemini = chat(
        {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER_TOOL, TIME_TOOL]}
    )
    assert gemini["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather for a city.",
                    "parametersJsonSchema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
                {"name": "get_time"},
            ]
        }
    ]
    assert "toolConfig" not in gemini
    assert "tools" not in chat({"messages": [{"role": "user", "content": "x"}], "tools": []})


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ([{"type": "retrieval"}], "tools[0].type"),
        (["get_time"], "tools[0].type"),
        ([TIME_TOOL, {"type": "function", "function": {}}], "tools[1].function.name"),
        ([{"type": "function"}], "tools[0].function.name"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": "{}"}}],
            "tools[0].function.parameters",
        ),
    ],
)
def test_bad_tools(tools: Any, param: str) -> None:
    with invalid(param):
        chat({"messages": [{"role": "user", "content": "x"}], "tools": tools})


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("none", {"functionCallingConfig": {"mode": "NONE"}}),
        ("auto", {"functionCallingConfig": {"mode": "AUTO"}}),
        ("required", {"functionCallingConfig": {"mode": "ANY"}}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}},
        ),
    ],
)
def test_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    doc = {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER_TOOL, TIME_TOOL]}
    assert chat({**doc, "tool_choice": choice})["toolConfig"] == config


def test_named_tool_choice_must_be_a_given_tool() -> None:
    doc = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [TIME_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    with invalid("tool_choice.function.name"):
        chat(doc)


def test_n_on_an_image_model_means_n_calls() -> None:
    doc = {"messages": [{"role": "user", "content": "a cat"}], "n": 3}
    request = openai_chat.parse(doc, FLASH_IMAGE, max_images=3)
    assert request.n == 3
    assert "generationConfig" not in request.gemini  # no candidateCount: one image per call
    with invalid("n"):
        openai_chat.parse({**doc, "n": 4}, FLASH_IMAGE, max_images=3)


def test_n_on_a_text_model_means_candidates() -> None:
    doc = {"messages": [{"role": "user", "content": "a poem"}], "n": 8}
    request = openai_chat.parse(doc, TEXT, max_images=1)
    assert request.n == 8
    assert request.gemini["generationConfig"] == {"candidateCount": 8}
    assert "generationConfig" not in chat({**doc, "n": 1})
    with invalid("n"):
        openai_chat.parse({**doc, "n": 9}, TEXT, max_images=100)


def test_stream_options_and_image_output() -> None:
    doc = {
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "image_output": "url",
    }
    request = openai_chat.parse(doc, FLASH_IMAGE, max_images=1)
    assert (request.stream, request.include_usage, request.image_output) == (True, True, "url")
    request = openai_chat.parse({**doc, "stream_options": {}}, FLASH_IMAGE, max_images=1)
    assert request.include_usage is False


def test_unknown_parameters_are_ignored() -> None:
    base = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "x"}]}
    extra = {
        "user": "u-1",
        "logit_bias": {"42": 1},
        "logprobs": True,
        "metadata": {"a": "b"},
        "parallel_tool_calls": False,
        "service_tier": "auto",
        "store": True,
        "whatever": [1, 2],
    }
    assert chat({**base, **extra}) == chat(base)


# -- answers: reading a Gemini response --------------------------------------------------------

GEMINI_ANSWER: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "Planning the scene.", "thought": True},
                    {"text": "Here is "},
                    {"inlineData": {"mimeType": "image/png", "data": RED_B64}},
                    {"text": "your cat."},
                    {"inline_data": {"mime_type": "image/jpeg", "data": "/9j/AAAA"}},
                    {
                        "functionCall": {"name": "save", "args": {"path": "cat.png"}},
                        "thoughtSignature": "c2ln",
                    },
                    {"function_call": {"name": "notify"}},
                    {"thought": True, "text": " Done."},
                ],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 20,
        "candidatesTokenCount": 1300,
        "thoughtsTokenCount": 150,
        "totalTokenCount": 1470,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 10},
            {"modality": "IMAGE", "tokenCount": 10},
        ],
        "candidatesTokensDetails": [
            {"modality": "TEXT", "tokenCount": 10},
            {"modality": "IMAGE", "tokenCount": 1290},
        ],
    },
}


def test_candidates_reads_every_kind_of_part() -> None:
    [candidate] = canonical.candidates(GEMINI_ANSWER)
    assert candidate == Candidate(
        index=0,
        text=["Here is ", "your cat."],
        thoughts=["Planning the scene.", " Done."],
        images=[Image("image/png", RED_B64), Image("image/jpeg", "/9j/AAAA")],
        calls=[
            {"name": "save", "args": {"path": "cat.png"}, "signature": "c2ln"},
            {"name": "notify", "signature": None},
        ],
        finish="STOP",
    )


def test_candidates_from_bytes_through_inline() -> None:
    big = base64.b64encode(RED + bytes(400_000)).decode()
    answer = {"candidates": [{"content": {"parts": [{"inlineData": {"data": big}}]}}]}
    [candidate] = canonical.candidates(inline.loads(orjson.dumps(answer)))
    [image] = candidate.images
    assert image.mime == "image/png"  # no mimeType: PNG assumed
    assert isinstance(image.data, Blob)
    assert candidate.finish is None


def test_candidates_tolerates_odd_shapes() -> None:
    assert canonical.candidates(None) == []
    assert canonical.candidates([]) == []
    assert canonical.candidates({"candidates": "x"}) == []
    doc = {
        "candidates": [
            "junk",
            {"index": 3, "finish_reason": "MAX_TOKENS", "content": {"parts": ["x", {}]}},
            {"content": {"parts": [{"inlineData": {"data": ""}}, {"text": 5}]}},
            {"content": None, "finishReason": 7},
        ]
    }
    found = canonical.candidates(doc)
    assert [(c.index, c.finish, c.text, c.images) for c in found] == [
        (3, "MAX_TOKENS", [], []),
        (2, None, [], []),
        (3, None, [], []),
    ]


def test_block_reason() -> None:
    assert canonical.block_reason({"promptFeedback": {"blockReason": "SAFETY"}}) == "SAFETY"
    assert canonical.block_reason({"prompt_feedback": {"block_reason": "OTHER"}}) == "OTHER"
    assert canonical.block_reason({"candidates": []}) is None
    assert canonical.block_reason(None) is None


@pytest.mark.parametrize(
    ("gemini", "calls", "expected"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("MAX_TOKENS", True, "length"),
        ("SAFETY", False, "content_filter"),
        ("IMAGE_SAFETY", False, "content_filter"),
        ("NO_IMAGE", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", True, "content_filter"),
        ("SPII", False, "content_filter"),
        ("IMAGE_PROHIBITED_CONTENT", False, "content_filter"),
        ("IMAGE_RECITATION", False, "content_filter"),
        ("IMAGE_OTHER", False, "content_filter"),
        ("OTHER", False, "stop"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        (None, False, None),
    ],
)
def test_finish_reason(gemini: str | None, calls: bool, expected: str | None) -> None:
    assert openai.finish_reason(gemini, calls=calls) == expected


def test_usage_chat() -> None:
    tokens = Tokens()
    tokens.add(canonical.usage_metadata(GEMINI_ANSWER))
    assert tokens.chat() == {
        "prompt_tokens": 20,
        "completion_tokens": 1450,
        "total_tokens": 1470,
        "prompt_tokens_details": {"cached_tokens": 0, "image_tokens": 10},
        "completion_tokens_details": {"reasoning_tokens": 150, "image_tokens": 1290},
    }


def test_usage_sums_answers_and_reads_snake_case() -> None:
    tokens = Tokens()
    tokens.add(canonical.usage_metadata(GEMINI_ANSWER))
    tokens.add(
        {
            "prompt_token_count": 5,
            "candidates_token_count": 1290,
            "cached_content_token_count": 4,
            "candidates_tokens_details": [{"modality": "IMAGE", "token_count": 1290}],
            "thoughts_token_count": -3,  # nonsense is ignored
        }
    )
    assert tokens.chat()["prompt_tokens"] == 25
    assert tokens.chat()["completion_tokens"] == 1450 + 1290
    assert tokens.chat()["prompt_tokens_details"]["cached_tokens"] == 4
    assert tokens.chat()["completion_tokens_details"] == {
        "reasoning_tokens": 150,
        "image_tokens": 2580,
    }
    assert canonical.usage_metadata({"usage_metadata": {"promptTokenCount": 1}}) == {
        "promptTokenCount": 1
    }
    assert canonical.usage_metadata({"usageMetadata": "x"}) == {}
    assert canonical.usage_metadata(None) == {}


def test_usage_images() -> None:
    tokens = Tokens()
    tokens.add(canonical.usage_metadata(GEMINI_ANSWER))
    assert tokens.images() == {
        "input_tokens": 20,
        "output_tokens": 1450,
        "total_tokens": 1470,
        "input_tokens_details": {"text_tokens": 10, "image_tokens": 10},
    }
    assert Tokens().images()["total_tokens"] == 0


def test_data_url() -> None:
    assert openai.data_url(Image("image/png", "QUJD")) == "data:image/png;base64,QUJD"
    blob = Blob(b"xxQUJDxx", 2, 6)
    url = openai.data_url(Image("image/webp", blob))
    assert isinstance(url, Blob)
    assert inline.text_of(url) == "data:image/webp;base64,QUJD"
    assert blob.prefix == b""


# -- answers: chat.completion ------------------------------------------------------------------


def test_completion_shape() -> None:
    tokens = Tokens()
    tokens.add(canonical.usage_metadata(GEMINI_ANSWER))
    done = openai_chat.completion(
        "req1",
        "gemini-3-pro-image-preview",
        1700000000,
        canonical.candidates(GEMINI_ANSWER),
        tokens,
    )
    assert done["id"] == "chatcmpl-req1"
    assert done["object"] == "chat.completion"
    assert done["created"] == 1700000000
    assert done["model"] == "gemini-3-pro-image-preview"
    assert done["usage"] == tokens.chat()
    [choice] = done["choices"]
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant"
    assert message["content"] == "Here is your cat."
    assert message["reasoning_content"] == "Planning the scene. Done."
    assert message["images"] == [
        {"type": "image_url", "image_url": {"url": RED_URL}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AAAA"}},
    ]
    assert "data:" not in message["content"] and "![" not in message["content"]
    first, second = message["tool_calls"]
    assert first["type"] == "function"
    assert first["id"].startswith("call_") and first["id"].endswith("__ts__c2ln")
    assert first["function"] == {"name": "save", "arguments": '{"path":"cat.png"}'}
    assert second["id"].startswith("call_") and "__ts__" not in second["id"]
    assert second["function"] == {"name": "notify", "arguments": "{}"}
    assert first["id"] != second["id"]


def test_completion_image_only_answer() -> None:
    candidate = Candidate(images=[Image("image/png", RED_B64)], finish="STOP")
    message = openai_chat.completion("r", "m", 0, [candidate], Tokens())["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "images": [{"type": "image_url", "image_url": {"url": RED_URL}}],
    }


@pytest.mark.parametrize(
    ("finish", "expected"),
    [
        ("STOP", "stop"),
        (None, "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("NO_IMAGE", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
    ],
)
def test_completion_finish_reasons(finish: str | None, expected: str) -> None:
    candidate = Candidate(text=["x"], finish=finish)
    done = openai_chat.completion("r", "m", 0, [candidate], Tokens())
    assert done["choices"][0]["finish_reason"] == expected
    assert "tool_calls" not in done["choices"][0]["message"]


def test_completion_several_choices_keep_their_index() -> None:
    choices = [Candidate(index=0, text=["a"]), Candidate(index=1, text=["b"], finish="MAX_TOKENS")]
    done = openai_chat.completion("r", "m", 0, choices, Tokens())
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in done["choices"]] == [
        (0, "a", "stop"),
        (1, "b", "length"),
    ]


def test_completion_urls_replace_data_urls() -> None:
    stored, kept = Image("image/png", RED_B64), Image("image/jpeg", "/9j/AAAA")
    candidate = Candidate(images=[stored, kept], finish="STOP")
    urls = {id(stored): "https://gw.example/results/abc.png?sig=1"}
    images = openai_chat.completion("r", "m", 0, [candidate], Tokens(), urls=urls)["choices"][0][
        "message"
    ]["images"]
    assert images == [
        {"type": "image_url", "image_url": {"url": "https://gw.example/results/abc.png?sig=1"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AAAA"}},
    ]


def test_completion_with_blob_images_serialises_through_inline() -> None:
    data = base64.b64encode(RED + bytes(400_000)).decode()
    answer = {
        "candidates": [
            {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": data}}]}}
        ]
    }
    choices = canonical.candidates(inline.loads(orjson.dumps(answer)))
    done = openai_chat.completion("r", "m", 0, choices, Tokens())
    out = orjson.loads(inline.dumps(done))
    assert out["choices"][0]["message"]["images"][0]["image_url"]["url"] == (
        "data:image/png;base64," + data
    )
    assert out["choices"][0]["message"]["content"] is None


# -- answers: chat.completion.chunk ------------------------------------------------------------


def deltas(chunks: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any], str | None]]:
    out = []
    for chunk in chunks:
        assert chunk["id"] == "chatcmpl-req"
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["created"] == 5
        assert chunk["model"] == "m"
        [choice] = chunk["choices"]
        assert choice["logprobs"] is None
        out.append((choice["index"], choice["delta"], choice["finish_reason"]))
    return out


def test_stream_text_images_finish_and_usage() -> None:
    stream = ChatStream("req", "m", 5)
    first = stream.feed([Candidate(thoughts=["hmm"], text=["Hel"])])
    second = stream.feed(
        [
            Candidate(
                text=["lo"],
                images=[Image("image/png", RED_B64), Image("image/jpeg", "/9j/AAAA")],
                finish="STOP",
            )
        ]
    )
    assert deltas(first) == [
        (0, {"role": "assistant", "reasoning_content": "hmm"}, None),
        (0, {"content": "Hel"}, None),
    ]
    assert deltas(second) == [
        (0, {"content": "lo"}, None),
        (0, {"images": [{"type": "image_url", "image_url": {"url": RED_URL}}]}, None),
        (
            0,
            {
                "images": [
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AAAA"}}
                ]
            },
            None,
        ),
        (0, {}, "stop"),
    ]
    tokens = Tokens()
    tokens.add(canonical.usage_metadata(GEMINI_ANSWER))
    [usage] = stream.close(tokens)
    assert usage == {
        "id": "chatcmpl-req",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "m",
        "choices": [],
        "usage": tokens.chat(),
    }


def test_stream_close_without_usage_and_after_finish_is_empty() -> None:
    stream = ChatStream("req", "m", 5)
    stream.feed([Candidate(text=["x"], finish="STOP")])
    assert stream.close(None) == []


def test_stream_role_only_in_the_first_delta_of_each_choice() -> None:
    stream = ChatStream("req", "m", 5)
    chunks = stream.feed([Candidate(index=0, text=["a"]), Candidate(index=1, text=["b"])])
    chunks += stream.feed([Candidate(index=0, text=["c"]), Candidate(index=1, text=["d"])])
    assert deltas(chunks) == [
        (0, {"role": "assistant", "content": "a"}, None),
        (1, {"role": "assistant", "content": "b"}, None),
        (0, {"content": "c"}, None),
        (1, {"content": "d"}, None),
    ]


def test_stream_tool_calls_carry_a_running_index() -> None:
    stream = ChatStream("req", "m", 5)
    one = stream.feed(
        [Candidate(calls=[{"name": "a", "args": {"x": 1}, "signature": "U0lH"}, {"name": "b"}])]
    )
    two = stream.feed([Candidate(calls=[{"name": "c", "args": {}}], finish="STOP")])
    [(_, delta, finish)] = deltas(one)
    assert finish is None
    assert delta["role"] == "assistant"
    assert [(call["index"], call["function"]["name"]) for call in delta["tool_calls"]] == [
        (0, "a"),
        (1, "b"),
    ]
    assert delta["tool_calls"][0]["id"].endswith("__ts__U0lH")
    assert delta["tool_calls"][0]["function"]["arguments"] == '{"x":1}'
    assert delta["tool_calls"][0]["type"] == "function"
    calls_delta, finish_delta = deltas(two)
    assert [call["index"] for call in calls_delta[1]["tool_calls"]] == [2]
    assert "role" not in calls_delta[1]
    # Calls made in earlier chunks still make the finish tool_calls.
    assert finish_delta == (0, {}, "tool_calls")


def test_stream_finish_after_calls_in_an_earlier_chunk_is_tool_calls() -> None:
    stream = ChatStream("req", "m", 5)
    stream.feed([Candidate(calls=[{"name": "a", "args": {}}])])
    assert deltas(stream.feed([Candidate(finish="STOP")])) == [(0, {}, "tool_calls")]
    other = ChatStream("req", "m", 5)
    other.feed([Candidate(text=["no calls"])])
    assert deltas(other.feed([Candidate(finish="STOP")])) == [(0, {}, "stop")]


def test_stream_tool_call_index_is_per_choice() -> None:
    stream = ChatStream("req", "m", 5)
    stream.feed([Candidate(index=0, calls=[{"name": "a"}])])
    [(index, delta, _)] = deltas(stream.feed([Candidate(index=1, calls=[{"name": "b"}])]))
    assert index == 1
    assert delta["tool_calls"][0]["index"] == 0


def test_stream_close_finishes_choices_never_finished() -> None:
    stream = ChatStream("req", "m", 5)
    stream.feed([Candidate(index=0, text=["a"]), Candidate(index=2, text=["b"])])
    stream.feed([Candidate(index=1, text=["c"], finish="MAX_TOKENS")])
    assert deltas(stream.close(None)) == [(0, {}, "stop"), (2, {}, "stop")]


def test_stream_finish_only_once_and_filtered_block() -> None:
    stream = ChatStream("req", "m", 5)
    # A blocked prompt: no content ever, the finish chunk is the first and carries the role.
    assert deltas(stream.feed([Candidate(finish="PROHIBITED_CONTENT")])) == [
        (0, {"role": "assistant"}, "content_filter")
    ]
    assert deltas(stream.feed([Candidate(finish="STOP")])) == []
    assert stream.close(None) == []


def test_stream_urls_replace_data_urls() -> None:
    stream = ChatStream("req", "m", 5)
    image = Image("image/png", RED_B64)
    chunks = stream.feed([Candidate(images=[image])], {id(image): "https://gw/r/1.png"})
    assert deltas(chunks) == [
        (
            0,
            {
                "role": "assistant",
                "images": [{"type": "image_url", "image_url": {"url": "https://gw/r/1.png"}}],
            },
            None,
        )
    ]


def test_stream_images_never_go_into_content() -> None:
    stream = ChatStream("req", "m", 5)
    chunks = stream.feed([Candidate(text=["look:"], images=[Image("image/png", RED_B64)])])
    contents = [choice["delta"].get("content") for c in chunks for choice in c["choices"]]
    assert contents == ["look:", None]


# -- images endpoints --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "size", "config"),
    [
        (FLASH_IMAGE, "1024x1024", {"aspectRatio": "1:1"}),
        (FLASH_IMAGE, "1536x1024", {"aspectRatio": "3:2"}),
        (FLASH_IMAGE, "1024x1536", {"aspectRatio": "2:3"}),
        (FLASH_IMAGE, "1792x1024", {"aspectRatio": "16:9"}),
        (FLASH_IMAGE, "4096x4096", {"aspectRatio": "1:1"}),  # one tier: no imageSize
        (PRO_IMAGE, "1024x1024", {"aspectRatio": "1:1", "imageSize": "1K"}),
        (PRO_IMAGE, "1536x1024", {"aspectRatio": "3:2", "imageSize": "1K"}),
        (PRO_IMAGE, "1024x1536", {"aspectRatio": "2:3", "imageSize": "1K"}),
        (PRO_IMAGE, "2048x2048", {"aspectRatio": "1:1", "imageSize": "2K"}),
        (PRO_IMAGE, "4096x4096", {"aspectRatio": "1:1", "imageSize": "4K"}),
        (PRO_IMAGE, "2560x1440", {"aspectRatio": "16:9", "imageSize": "2K"}),
        (PRO_IMAGE, "5504x3072", {"aspectRatio": "16:9", "imageSize": "4K"}),
        (PRO_IMAGE, "256x256", {"aspectRatio": "1:1", "imageSize": "1K"}),
        (FLASH_31, "512x512", {"aspectRatio": "1:1", "imageSize": "512"}),
        (FLASH_31, "256x2048", {"aspectRatio": "1:8", "imageSize": "512"}),
        (FLASH_31, "8192x2048", {"aspectRatio": "4:1", "imageSize": "4K"}),
        (PRO_IMAGE, "auto", {}),
        (PRO_IMAGE, None, {}),
    ],
)
def test_size_config(spec: ModelSpec, size: str | None, config: dict[str, Any]) -> None:
    assert openai_images.size_config(size, spec) == config


@pytest.mark.parametrize(
    "size",
    [
        "big",
        "1024",
        "1024x",
        "x1024",
        "1024*1024",
        "00x00",
        "1024x0",
        " 1024x1024",
        1024,
        ["1024x1024"],
    ],
)
def test_bad_size(size: Any) -> None:
    with invalid("size"):
        openai_images.size_config(size, PRO_IMAGE)


def test_parse_generation() -> None:
    request = openai_images.parse_generation(
        {"model": "nano-banana-pro", "prompt": "a cat", "size": "1536x1024"},
        PRO_IMAGE,
        max_images=4,
    )
    assert request.model == "gemini-3-pro-image-preview"
    assert request.gemini == {
        "contents": [{"role": "user", "parts": [{"text": "a cat"}]}],
        "generationConfig": {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": {"aspectRatio": "3:2", "imageSize": "1K"},
        },
    }
    assert (request.n, request.response_format, request.output_format) == (1, "b64_json", None)


def test_parse_generation_without_size_sets_no_image_config() -> None:
    request = openai_images.parse_generation({"prompt": "a cat"}, FLASH_IMAGE, max_images=4)
    assert request.gemini["generationConfig"] == {"responseModalities": ["TEXT", "IMAGE"]}


def test_aspect_ratio_and_image_size_extensions_win_over_size() -> None:
    doc = {"prompt": "x", "size": "1024x1024", "aspect_ratio": "16:9", "image_size": "4K"}
    request = openai_images.parse_generation(doc, PRO_IMAGE, max_images=4)
    assert request.gemini["generationConfig"]["imageConfig"] == {
        "aspectRatio": "16:9",
        "imageSize": "4K",
    }
    doc = {"prompt": "x", "size": "4096x4096", "aspect_ratio": "9:16"}
    request = openai_images.parse_generation(doc, PRO_IMAGE, max_images=4)
    assert request.gemini["generationConfig"]["imageConfig"] == {
        "aspectRatio": "9:16",
        "imageSize": "4K",
    }


def test_generation_options() -> None:
    doc = {"prompt": "x", "n": 4, "response_format": "url", "output_format": "webp"}
    request = openai_images.parse_generation(doc, FLASH_31, max_images=4)
    assert (request.n, request.response_format, request.output_format) == (4, "url", "webp")
    for fmt in ("png", "jpeg"):
        doc = {"prompt": "x", "output_format": fmt}
        assert openai_images.parse_generation(doc, FLASH_31, max_images=1).output_format == fmt


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"n": 5}, "n"),
        ({"n": "2"}, "n"),
        ({"response_format": "b64"}, "response_format"),
        ({"output_format": "gif"}, "output_format"),
        ({"output_format": "jpg"}, "output_format"),
        ({"size": "huge"}, "size"),
        ({"aspect_ratio": "5:1"}, "aspect_ratio"),
        ({"image_size": "8K"}, "image_size"),
    ],
)
def test_bad_generation(extra: dict[str, Any], param: str) -> None:
    with invalid(param):
        openai_images.parse_generation({"prompt": "x", **extra}, PRO_IMAGE, max_images=4)


def test_images_endpoints_need_an_image_model() -> None:
    with invalid("model"):
        openai_images.parse_generation({"prompt": "x"}, TEXT, max_images=4)
    with invalid("model"):
        openai_images.parse_edit({"prompt": "x"}, [("image/png", RED)], None, TEXT, max_images=4)


def inline_part(mime: str, data: bytes) -> dict[str, Any]:
    return {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}}


def test_edit_with_three_images() -> None:
    images = [("image/png", RED), ("image/png", GREEN), ("image/png", BLUE)]
    assert FLASH_IMAGE.max_input_images == 3
    request = openai_images.parse_edit(
        {"prompt": "merge them", "size": "1024x1024"}, images, None, FLASH_IMAGE, max_images=4
    )
    assert request.gemini == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "merge them"},
                    inline_part("image/png", RED),
                    inline_part("image/png", GREEN),
                    inline_part("image/png", BLUE),
                ],
            }
        ],
        "generationConfig": {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": {"aspectRatio": "1:1"},
        },
    }
    decoded = [
        base64.b64decode(part["inlineData"]["data"])
        for part in request.gemini["contents"][0]["parts"][1:]
    ]
    assert decoded == [RED, GREEN, BLUE]
    with PILImage.open(io.BytesIO(decoded[1])) as opened:
        assert opened.getpixel((0, 0)) == (0, 255, 0)


def test_edit_with_three_images_and_a_mask() -> None:
    images = [("image/png", RED), ("image/jpeg", GREEN), ("image/png", BLUE)]
    request = openai_images.parse_edit(
        {"prompt": "paint the sky", "n": "2"}, images, ("image/png", MASK), PRO_IMAGE, max_images=4
    )
    assert request.n == 2
    assert request.gemini["contents"][0]["parts"] == [
        {"text": "paint the sky"},
        inline_part("image/png", RED),
        inline_part("image/jpeg", GREEN),
        inline_part("image/png", BLUE),
        {"text": MASK_INSTRUCTION},
        inline_part("image/png", MASK),
    ]


def test_edit_mask_counts_against_the_input_limit() -> None:
    images = [("image/png", RED), ("image/png", GREEN), ("image/png", BLUE)]
    with pytest.raises(InvalidArgument) as info:
        openai_images.parse_edit(
            {"prompt": "x"}, images, ("image/png", MASK), FLASH_IMAGE, max_images=4
        )
    assert info.value.param == "image"
    assert "at most 3" in info.value.message
    assert "has 4 with the mask" in info.value.message
    # Two images and the mask fit.
    request = openai_images.parse_edit(
        {"prompt": "x"}, images[:2], ("image/png", MASK), FLASH_IMAGE, max_images=4
    )
    assert len(request.gemini["contents"][0]["parts"]) == 5


def test_edit_over_the_input_limit() -> None:
    images = [("image/png", RED)] * 4
    with invalid("image"):
        openai_images.parse_edit({"prompt": "x"}, images, None, FLASH_IMAGE, max_images=4)
    images = [("image/png", RED)] * (PRO_IMAGE.max_input_images + 1)
    with invalid("image"):
        openai_images.parse_edit({"prompt": "x"}, images, None, PRO_IMAGE, max_images=4)


@pytest.mark.parametrize(
    ("fields", "images", "param"),
    [
        ({}, [("image/png", RED)], "prompt"),
        ({"prompt": " "}, [("image/png", RED)], "prompt"),
        ({"prompt": "x"}, [], "image"),
        ({"prompt": "x", "n": "two"}, [("image/png", RED)], "n"),
        ({"prompt": "x", "n": "9"}, [("image/png", RED)], "n"),
        ({"prompt": "x", "size": "wide"}, [("image/png", RED)], "size"),
        ({"prompt": "x", "response_format": "file"}, [("image/png", RED)], "response_format"),
    ],
)
def test_bad_edit(fields: dict[str, Any], images: list[tuple[str, bytes]], param: str) -> None:
    with invalid(param):
        openai_images.parse_edit(fields, images, None, PRO_IMAGE, max_images=4)


def test_images_response_leaves_out_a_size_it_could_not_read() -> None:
    answer = openai_images.response(1700000000, [], Tokens(), output_format="png", size=None)
    assert "size" not in answer and answer["output_format"] == "png"


def test_images_response() -> None:
    tokens = Tokens()
    tokens.add(canonical.usage_metadata(GEMINI_ANSWER))
    data = [{"b64_json": RED_B64, "revised_prompt": "A red square."}, {"url": "https://gw/r/2.png"}]
    assert openai_images.response(
        1700000000, data, tokens, output_format="png", size="1024x1024"
    ) == {
        "created": 1700000000,
        "data": data,
        "output_format": "png",
        "size": "1024x1024",
        "usage": {
            "input_tokens": 20,
            "output_tokens": 1450,
            "total_tokens": 1470,
            "input_tokens_details": {"text_tokens": 10, "image_tokens": 10},
        },
    }


def test_a_long_prompt_without_spaces_in_a_large_body_is_a_prompt() -> None:
    # 8,192 characters of base64's alphabet in a body of 256 KiB or more: inline.loads hands it
    # back as a Blob, and it is still the prompt.
    prompt = "a" * inline.SMALL_BODY
    doc = openai.json_object(orjson.dumps({"prompt": prompt}), "images generations")
    assert isinstance(doc["prompt"], Blob)
    request = openai_images.parse_generation(doc, FLASH_IMAGE, max_images=4)
    assert request.gemini["contents"][0]["parts"] == [{"text": prompt}]
