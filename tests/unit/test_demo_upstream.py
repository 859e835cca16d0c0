"""DemoUpstream: Google-shaped responses, exact sizes, edits, usage, countTokens and streaming."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Any

import orjson
import pytest
from PIL import Image, ImageChops, ImageStat

from nanogate.core.catalog import load_catalog
from nanogate.core.config import UpstreamConfig
from nanogate.core.errors import InvalidArgument
from nanogate.core.types import Call, Chunk, ImageRequest, Method, Reply, Usage
from nanogate.upstreams.base import Upstream
from nanogate.upstreams.demo import DemoUpstream

CATALOG = load_catalog()
FLASH_IMAGE = "gemini-2.5-flash-image"
PRO_IMAGE = "gemini-3-pro-image-preview"
TEXT = "gemini-2.5-flash"


def _upstream(latency_ms: int = 0) -> DemoUpstream:
    return DemoUpstream(UpstreamConfig(name="demo-1", kind="demo", latency_ms=latency_ms))


def _call(
    model: str,
    request: dict[str, Any],
    image: ImageRequest | None = None,
    method: Method = "generateContent",
) -> Call:
    spec = CATALOG.resolve(model)
    if image is None and spec.is_image:
        image = ImageRequest(None, None)
    return Call("t", method, spec, orjson.dumps(request), request, image=image)


def _user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": list(parts)}]}


def _png(width: int, height: int, colour: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def _inline(data: bytes, mime: str = "image/png") -> dict[str, Any]:
    return {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}}


def _body(reply: Reply | Chunk) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(reply.body)
    return body


def _parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = body["candidates"][0]["content"]["parts"]
    return parts


def _image_of(body: dict[str, Any]) -> Image.Image:
    [blob] = [part["inlineData"] for part in _parts(body) if "inlineData" in part]
    assert blob["mimeType"] == "image/png"
    return Image.open(io.BytesIO(base64.b64decode(blob["data"])))


def _details(entries: list[dict[str, Any]]) -> dict[str, int]:
    return {entry["modality"]: entry["tokenCount"] for entry in entries}


def _assert_usage_matches(usage: Usage, meta: dict[str, Any]) -> None:
    """Reply.usage and the JSON usageMetadata must tell the same story."""
    prompt = _details(meta.get("promptTokensDetails", []))
    output = _details(meta.get("candidatesTokensDetails", []))
    assert usage.input_text == prompt.get("TEXT", 0)
    assert usage.input_image == prompt.get("IMAGE", 0)
    assert usage.output_text == output.get("TEXT", 0)
    assert usage.output_image == output.get("IMAGE", 0)
    assert usage.thoughts == meta.get("thoughtsTokenCount", 0)
    assert meta["promptTokenCount"] == usage.input_text + usage.input_image
    assert meta["candidatesTokenCount"] == usage.output_text + usage.output_image
    assert meta["totalTokenCount"] == usage.total
    assert usage.total == (meta["promptTokenCount"] + meta["candidatesTokenCount"] + usage.thoughts)


def test_demo_upstream_fits_the_protocol() -> None:
    upstream: Upstream = _upstream()  # mypy checks the structural match
    assert (upstream.name, upstream.kind) == ("demo-1", "demo")


async def test_health_and_close() -> None:
    upstream = _upstream()
    assert await upstream.health() is True
    await upstream.close()


# --- image models ---


@pytest.mark.parametrize(
    ("model", "ratio", "size", "expected", "tokens"),
    [
        (FLASH_IMAGE, "16:9", None, (1344, 768), 1290),
        (PRO_IMAGE, "1:1", "4K", (4096, 4096), 2000),
        (PRO_IMAGE, "3:2", "2K", (2528, 1696), 1120),
        ("gemini-3.1-flash-image-preview", "1:8", "1K", (384, 3072), 1120),
        ("gemini-3.1-flash-image-preview", "4:1", "512", (1024, 256), 747),
    ],
)
async def test_render_size_and_usage(
    model: str, ratio: str, size: str | None, expected: tuple[int, int], tokens: int
) -> None:
    call = _call(model, _user({"text": "a nano banana"}), ImageRequest(ratio, size))
    reply = await _upstream().generate(call)
    body = _body(reply)
    assert reply.upstream == "demo-1"
    assert _image_of(body).size == expected
    text = _parts(body)[0]["text"]
    assert "not a model" in text and f"{expected[0]}x{expected[1]}" in text
    candidate = body["candidates"][0]
    assert (candidate["finishReason"], candidate["index"]) == ("STOP", 0)
    assert candidate["content"]["role"] == "model"
    assert body["modelVersion"] == CATALOG.resolve(model).name
    assert body["responseId"]
    meta = body["usageMetadata"]
    assert _details(meta["candidatesTokensDetails"])["IMAGE"] == tokens
    assert [e["modality"] for e in meta["candidatesTokensDetails"]] == ["IMAGE", "TEXT"]
    _assert_usage_matches(reply.usage, meta)
    assert reply.usage.images == 1


async def test_default_is_square_at_the_default_size() -> None:
    reply = await _upstream().generate(_call(FLASH_IMAGE, _user({"text": "p"})))
    assert _image_of(_body(reply)).size == (1024, 1024)


async def test_image_config_is_read_from_the_request_when_call_has_none() -> None:
    request = {
        **_user({"text": "p"}),
        "generation_config": {"image_config": {"aspect_ratio": "9:16", "image_size": "2K"}},
    }
    call = Call("t", "generateContent", CATALOG.resolve(PRO_IMAGE), b"{}", request, image=None)
    assert _image_of(_body(await _upstream().generate(call))).size == (1536, 2752)


async def test_same_prompt_same_image() -> None:
    call = _call(FLASH_IMAGE, _user({"text": "determinism"}))
    first, second = await _upstream().generate(call), await _upstream().generate(call)
    assert _parts(_body(first))[-1] == _parts(_body(second))[-1]


async def test_image_only_modality_omits_the_text_part() -> None:
    request = {**_user({"text": "p"}), "generationConfig": {"responseModalities": ["IMAGE"]}}
    reply = await _upstream().generate(_call(FLASH_IMAGE, request))
    body = _body(reply)
    assert [list(part) for part in _parts(body)] == [["inlineData"]]
    meta = body["usageMetadata"]
    assert [e["modality"] for e in meta["candidatesTokensDetails"]] == ["IMAGE"]
    assert reply.usage.output_text == 0
    _assert_usage_matches(reply.usage, meta)


async def test_prompt_is_the_last_user_turn() -> None:
    request = {
        "contents": [
            {"role": "user", "parts": [{"text": "first idea"}]},
            {"role": "model", "parts": [{"text": "ok"}]},
            {"role": "user", "parts": [{"text": "final"}, {"text": "idea"}]},
        ]
    }
    direct = _call(FLASH_IMAGE, _user({"text": "final\nidea"}))
    image = _parts(_body(await _upstream().generate(_call(FLASH_IMAGE, request))))[-1]
    assert image == _parts(_body(await _upstream().generate(direct)))[-1]


async def test_edit_keeps_the_input_shape_on_the_model_table() -> None:
    source = _png(800, 600)  # 4:3
    request = _user({"text": "make it pop"}, _inline(source))
    reply = await _upstream().generate(_call(FLASH_IMAGE, request))
    body = _body(reply)
    edited = _image_of(body)
    assert edited.size == (1184, 864)  # the flash 4:3 entry
    assert "edit" in _parts(body)[0]["text"]
    original = Image.open(io.BytesIO(source)).resize(edited.size).convert("RGB")
    difference = ImageChops.difference(original, edited.convert("RGB"))
    assert sum(ImageStat.Stat(difference).mean) / 3 > 20
    meta = body["usageMetadata"]
    assert _details(meta["promptTokensDetails"])["IMAGE"] == 258
    _assert_usage_matches(reply.usage, meta)


async def test_edit_uses_the_requested_ratio_and_the_last_image() -> None:
    request = _user({"text": "p"}, _inline(_png(100, 100)), _inline(_png(1000, 100)))
    call = _call(PRO_IMAGE, request, ImageRequest("16:9", "1K"))
    reply = await _upstream().generate(call)
    assert _image_of(_body(reply)).size == (1376, 768)
    assert reply.usage.input_image == 2 * 560


async def test_edit_accepts_snake_case_and_url_safe_unpadded_base64() -> None:
    data = base64.urlsafe_b64encode(_png(90, 160, (250, 250, 250))).decode().rstrip("=")
    request = {
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "p"}, {"inline_data": {"mime_type": "image/png", "data": data}}],
            }
        ],
        "generation_config": {"response_modalities": ["IMAGE"]},
    }
    reply = await _upstream().generate(_call(FLASH_IMAGE, request))
    assert _image_of(_body(reply)).size == (768, 1344)  # 9:16
    assert len(_parts(_body(reply))) == 1


async def test_undecodable_image_is_an_invalid_argument_without_the_data() -> None:
    junk = base64.b64encode(b"this is not a picture" * 10).decode()
    request = _user({"text": "p"}, {"inlineData": {"mimeType": "image/png", "data": junk}})
    with pytest.raises(InvalidArgument) as caught:
        await _upstream().generate(_call(FLASH_IMAGE, request))
    assert "decoded" in caught.value.message
    assert junk[:16] not in caught.value.message


async def test_bad_base64_is_an_invalid_argument() -> None:
    request = _user({"text": "p"}, {"inlineData": {"mimeType": "image/png", "data": "%%%notb64"}})
    with pytest.raises(InvalidArgument, match="base64"):
        await _upstream().generate(_call(FLASH_IMAGE, request))


async def test_render_runs_off_the_event_loop() -> None:
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    call = _call(PRO_IMAGE, _user({"text": "big"}), ImageRequest("1:1", "2K"))
    started = time.perf_counter()
    await _upstream().generate(call)
    elapsed = time.perf_counter() - started
    done.set()
    await task
    # A blocked loop would tick once or twice; a free one ticks about every 5 ms.
    assert ticks >= min(10, int(elapsed / 0.005) // 4)


async def test_latency_is_honoured() -> None:
    started = time.perf_counter()
    await _upstream(latency_ms=120).generate(_call(TEXT, _user({"text": "hi"})))
    assert time.perf_counter() - started >= 0.11


# --- text models ---


async def test_text_reply() -> None:
    reply = await _upstream().generate(_call(TEXT, _user({"text": "hello"})))
    body = _body(reply)
    [part] = _parts(body)
    assert "not a model" in part["text"]
    assert "candidatesTokensDetails" in body["usageMetadata"]
    _assert_usage_matches(reply.usage, body["usageMetadata"])
    assert reply.usage.images == 0 and reply.usage.output_image == 0


async def test_structured_output_follows_the_schema() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {
            "title": {"type": "STRING"},
            "year": {"type": "INTEGER", "minimum": 1900, "maximum": 2030},
            "genres": {"type": "ARRAY", "items": {"type": "STRING"}},
        },
        "required": ["title"],
        "propertyOrdering": ["year", "title", "genres"],
    }
    request = {
        **_user({"text": "a film"}),
        "generationConfig": {"responseMimeType": "application/json", "responseSchema": schema},
    }
    value = orjson.loads(_parts(_body(await _upstream().generate(_call(TEXT, request))))[0]["text"])
    assert list(value) == ["year", "title", "genres"]
    assert 1900 <= value["year"] <= 2030 and isinstance(value["title"], str)
    assert all(isinstance(genre, str) for genre in value["genres"])


async def test_structured_output_with_json_schema_in_snake_case() -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": ["integer", "null"]}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    request = {
        **_user({"text": "p"}),
        "generation_config": {
            "response_mime_type": "application/json",
            "response_json_schema": schema,
        },
    }
    text = _parts(_body(await _upstream().generate(_call(TEXT, request))))[0]["text"]
    value = orjson.loads(text)
    assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool)
    assert isinstance(value["n"], int)


WEATHER_TOOL = {
    "functionDeclarations": [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "OBJECT",
                "properties": {
                    "city": {"type": "STRING"},
                    "unit": {"type": "STRING", "enum": ["C", "F"]},
                },
                "required": ["city"],
            },
        },
        {"name": "other", "parametersJsonSchema": {"type": "object"}},
    ]
}


async def test_function_call_for_the_first_declaration() -> None:
    request = {**_user({"text": "weather in Paris?"}), "tools": [WEATHER_TOOL]}
    reply = await _upstream().generate(_call(TEXT, request))
    [part] = _parts(_body(reply))
    call = part["functionCall"]
    assert call["name"] == "get_weather"
    assert isinstance(call["args"]["city"], str) and call["args"]["unit"] in ("C", "F")
    _assert_usage_matches(reply.usage, _body(reply)["usageMetadata"])


async def test_function_calling_mode_none_and_allowed_names() -> None:
    request: dict[str, Any] = {
        **_user({"text": "p"}),
        "tools": [WEATHER_TOOL],
        "toolConfig": {"functionCallingConfig": {"mode": "NONE"}},
    }
    assert "text" in _parts(_body(await _upstream().generate(_call(TEXT, request))))[0]
    request["toolConfig"] = {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["other"]}
    }
    part = _parts(_body(await _upstream().generate(_call(TEXT, request))))[0]
    assert part["functionCall"] == {"name": "other", "args": {}}


async def test_after_a_function_response_the_answer_is_text() -> None:
    request = {
        "contents": [
            {"role": "user", "parts": [{"text": "weather?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
            {
                "role": "user",
                "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 20}}}],
            },
        ],
        "tools": [WEATHER_TOOL],
    }
    [part] = _parts(_body(await _upstream().generate(_call(TEXT, request))))
    assert "text" in part


async def test_thoughts_come_first_and_are_counted() -> None:
    request = {
        **_user({"text": "think"}),
        "generationConfig": {"thinkingConfig": {"includeThoughts": True}},
    }
    reply = await _upstream().generate(_call(TEXT, request))
    body = _body(reply)
    thought, answer = _parts(body)
    assert thought["thought"] is True and "not a model" in thought["text"]
    assert "thought" not in answer
    assert body["usageMetadata"]["thoughtsTokenCount"] == reply.usage.thoughts > 0
    _assert_usage_matches(reply.usage, body["usageMetadata"])


# --- countTokens ---


async def test_count_tokens_text_only() -> None:
    call = _call(TEXT, _user({"text": "x" * 40}), method="countTokens")
    reply = await _upstream().generate(call)
    assert _body(reply) == {
        "totalTokens": 10,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}],
    }
    assert reply.usage == Usage()  # counting is free


async def test_count_tokens_wrapped_request_with_images() -> None:
    inner = {
        "model": "models/gemini-2.5-flash-image",
        "contents": [{"role": "user", "parts": [{"text": "abcdefgh"}, _inline(_png(8, 8))]}],
        "systemInstruction": {"parts": [{"text": "abcd"}]},
    }
    call = _call(FLASH_IMAGE, {"generateContentRequest": inner}, method="countTokens")
    body = _body(await _upstream().generate(call))
    assert body["totalTokens"] == 3 + 258
    assert _details(body["promptTokensDetails"]) == {"TEXT": 3, "IMAGE": 258}


async def test_count_tokens_image_only_omits_text() -> None:
    request = {"contents": [{"role": "user", "parts": [_inline(_png(8, 8))]}]}
    call = _call(PRO_IMAGE, request, method="countTokens")
    body = _body(await _upstream().generate(call))
    assert body == {
        "totalTokens": 560,
        "promptTokensDetails": [{"modality": "IMAGE", "tokenCount": 560}],
    }


# --- streaming ---


async def _collect(call: Call) -> list[Chunk]:
    return [chunk async for chunk in _upstream().stream(call)]


async def test_image_stream_order_text_then_image_then_usage() -> None:
    call = _call(FLASH_IMAGE, _user({"text": "p"}), ImageRequest("3:2", None))
    chunks = await _collect(call)
    bodies = [_body(chunk) for chunk in chunks]
    assert "text" in _parts(bodies[0])[0]
    assert "inlineData" in _parts(bodies[-1])[0]
    assert _image_of(bodies[-1]).size == (1248, 832)
    final = bodies[-1]
    assert final["candidates"][0]["finishReason"] == "STOP"
    assert all("finishReason" not in body["candidates"][0] for body in bodies[:-1])
    assert all("usageMetadata" not in body for body in bodies[:-1])
    assert [chunk.usage is not None for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    last_usage = chunks[-1].usage
    assert last_usage is not None and last_usage.images == 1
    _assert_usage_matches(last_usage, final["usageMetadata"])
    assert len({body["responseId"] for body in bodies}) == 1


async def test_text_stream_concatenates_to_the_whole_reply() -> None:
    call = _call(TEXT, _user({"text": "tell me something"}), method="streamGenerateContent")
    chunks = await _collect(call)
    assert len(chunks) > 1
    streamed = "".join(_parts(_body(chunk))[0]["text"] for chunk in chunks)
    whole = _parts(_body(await _upstream().generate(call)))[0]["text"]
    assert streamed == whole
    assert _body(chunks[-1])["usageMetadata"]["totalTokenCount"] > 0


async def test_stream_of_image_only_is_one_final_chunk() -> None:
    request = {**_user({"text": "p"}), "generationConfig": {"responseModalities": ["IMAGE"]}}
    [chunk] = await _collect(_call(FLASH_IMAGE, request))
    body = _body(chunk)
    assert body["candidates"][0]["finishReason"] == "STOP"
    assert chunk.usage is not None and body["usageMetadata"]["totalTokenCount"] == chunk.usage.total
