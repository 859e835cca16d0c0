"""The official `openai` SDK against `nanogate serve`: chat completions, images generations and
edits, and the models listing, on the demo upstream and through the simulator (whose record
shows what reached the upstream, as Gemini fields)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI
from PIL import Image, ImageStat

from tests.simulator.processes import stop

from .conftest import Gateway, Simulator, start_gateway
from .receiver import Receiver

IMAGE_MODEL = "gemini-2.5-flash-image"
PRO_MODEL = "gemini-3-pro-image-preview"
PRO_GA = "gemini-3-pro-image"  # the preview id, shut down, runs on its GA id (issue 15)
TEXT_MODEL = "gemini-2.5-flash"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The demo upstream, with loopback allowed so input images can come from the receiver."""
    gateway = start_gateway(
        tmp_path_factory.mktemp("openai"), NANOGATE_EGRESS_ALLOWLIST="127.0.0.1"
    )
    yield gateway
    stop(gateway.proc)


def client(gw: Gateway, key: str | None = None) -> OpenAI:
    return OpenAI(api_key=key or gw.client_key, base_url=f"{gw.url}/v1", max_retries=0)


def png(width: int, height: int, color: tuple[int, int, int] = (30, 90, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def decode_data_url(url: str) -> Image.Image:
    header, _, data = url.partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


def image_tokens(details: Any) -> int:
    """image_tokens of a usage details object, a declared field or an extra one."""
    value = getattr(details, "image_tokens", None)
    if value is None:
        value = (details.model_extra or {}).get("image_tokens")
    return int(value)


def upstream_request(sim: Simulator) -> dict[str, Any]:
    records = [r for r in sim.requests() if not r["path"].startswith("/_sim")]
    assert records, "the simulator received nothing"
    found: dict[str, Any] = records[-1]
    return found


# -- chat completions --------------------------------------------------------------------------


def test_chat_returns_text_in_content_and_the_image_in_message_images(gw: Gateway) -> None:
    answer = client(gw).chat.completions.create(
        model=IMAGE_MODEL,
        messages=[{"role": "user", "content": "a lighthouse at dusk"}],
        extra_body={"image_config": {"aspect_ratio": "16:9"}},
    )
    choice = answer.choices[0]
    message = choice.message
    assert choice.finish_reason == "stop"
    assert answer.object == "chat.completion" and answer.model == IMAGE_MODEL
    # Text stays text: no markdown image, no data URL in the content.
    assert message.content and "data:image" not in message.content and "![" not in message.content
    images = message.model_extra["images"] if message.model_extra else []
    assert len(images) == 1 and images[0]["type"] == "image_url"
    picture = decode_data_url(images[0]["image_url"]["url"])
    assert picture.size == (1344, 768)  # 16:9 on gemini-2.5-flash-image, from the catalog
    usage = answer.usage
    assert usage is not None
    assert image_tokens(usage.completion_tokens_details) == 1290
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_stream_sends_text_deltas_an_image_chunk_then_usage(gw: Gateway) -> None:
    stream = client(gw).chat.completions.create(
        model=IMAGE_MODEL,
        messages=[{"role": "user", "content": "a red kite"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    image_chunks = [
        c for c in chunks if c.choices and (c.choices[0].delta.model_extra or {}).get("images")
    ]
    assert content, "text should arrive as deltas"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(image_chunks) == 1
    (image,) = image_chunks[0].choices[0].delta.model_extra["images"]
    assert decode_data_url(image["image_url"]["url"]).size == (1024, 1024)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes.count("stop") == 1 and finishes[-1] == "stop"
    assert not chunks[-1].choices and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= 1290


def test_chat_stream_ends_with_done(gw: Gateway) -> None:
    body = {"model": TEXT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST",
        f"{gw.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {gw.client_key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


def test_n_images_in_chat_are_n_choices(gw: Gateway) -> None:
    answer = client(gw).chat.completions.create(
        model=IMAGE_MODEL, n=3, messages=[{"role": "user", "content": "three boats"}]
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(len(c.message.model_extra["images"]) == 1 for c in answer.choices)
    assert answer.usage is not None
    assert image_tokens(answer.usage.completion_tokens_details) == 3 * 1290


def test_image_output_url_returns_signed_result_urls(gw: Gateway) -> None:
    answer = client(gw).chat.completions.create(
        model=IMAGE_MODEL,
        messages=[{"role": "user", "content": "a map"}],
        extra_body={"image_output": "url"},
    )
    url = answer.choices[0].message.model_extra["images"][0]["image_url"]["url"]
    assert url.startswith(f"{gw.url}/files/") and "&sig=" in url
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (1024, 1024)
    tampered = httpx.get(url[:-2] + ("00" if not url.endswith("00") else "11"))
    assert tampered.status_code == 403


def test_a_keys_default_image_output_is_url(gw: Gateway) -> None:
    admin = {"authorization": f"Bearer {gw.admin_key}"}
    created = httpx.post(
        f"{gw.url}/admin/keys",
        json={"name": "url-default", "credits": 10_000_000, "image_output": "url"},
        headers=admin,
    )
    assert created.status_code in (200, 201), created.text
    key = created.json()["key"]
    answer = client(gw, key).chat.completions.create(
        model=IMAGE_MODEL, messages=[{"role": "user", "content": "a map"}]
    )
    url = answer.choices[0].message.model_extra["images"][0]["image_url"]["url"]
    assert url.startswith(f"{gw.url}/files/")
    # The request's own choice wins over the key's default.
    answer = client(gw, key).chat.completions.create(
        model=IMAGE_MODEL,
        messages=[{"role": "user", "content": "a map"}],
        extra_body={"image_output": "data"},
    )
    url = answer.choices[0].message.model_extra["images"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")


def test_input_images_by_data_url_and_by_http_url(gw: Gateway, receiver: Receiver) -> None:
    receiver.files["/openai/in.png"] = (png(300, 200, (250, 20, 20)), "image/png")
    answer = client(gw).chat.completions.create(
        model=IMAGE_MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "blend these"},
                    {"type": "image_url", "image_url": {"url": data_url(png(64, 64))}},
                    {"type": "image_url", "image_url": {"url": receiver.url + "/openai/in.png"}},
                ],
            }
        ],
    )
    assert answer.usage is not None
    assert image_tokens(answer.usage.prompt_tokens_details) == 2 * 258


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://10.1.2.3/x.png", ("10.1.2.3 is a private address", "=10.1.2.3;")),
        ("http://localhost:9/x.png", ("localhost resolves to a loopback address", "=localhost;")),
    ],
)
def test_a_private_image_url_is_refused_by_the_egress_guard(
    demo_gateway: Gateway, url: str, words: tuple[str, ...]
) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client(demo_gateway).chat.completions.create(
            model=IMAGE_MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "edit"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
        )
    assert caught.value.body["param"] == "messages[0].content[1].image_url.url"
    # The message names the setting that would allow the address, and how to set it.
    message = caught.value.body["message"]
    assert "egress_allowlist" in message and "NANOGATE_EGRESS_ALLOWLIST" in message
    for word in words:
        assert word in message, message


def test_tools_both_ways(gw: Gateway) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    messages: list[Any] = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]
    first = client(gw).chat.completions.create(model=TEXT_MODEL, messages=messages, tools=tools)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})},
    ]
    second = client(gw).chat.completions.create(model=TEXT_MODEL, messages=messages, tools=tools)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content


def test_json_schema_response_format(gw: Gateway) -> None:
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
        "required": ["title", "year"],
    }
    answer = client(gw).chat.completions.create(
        model=TEXT_MODEL,
        messages=[{"role": "user", "content": "a film"}],
        response_format={"type": "json_schema", "json_schema": {"name": "film", "schema": schema}},
    )
    parsed = json.loads(answer.choices[0].message.content or "")
    assert isinstance(parsed["title"], str) and isinstance(parsed["year"], int)


def test_a_multi_turn_image_edit_sends_the_earlier_image_back(gw: Gateway) -> None:
    first = client(gw).chat.completions.create(
        model=IMAGE_MODEL, messages=[{"role": "user", "content": "a green square"}]
    )
    assistant = first.choices[0].message.model_dump(exclude_none=True)
    second = client(gw).chat.completions.create(
        model=IMAGE_MODEL,
        messages=[
            {"role": "user", "content": "a green square"},
            assistant,
            {"role": "user", "content": "now make it blue"},
        ],
    )
    assert second.usage is not None
    # The earlier image went back upstream as an input image.
    assert image_tokens(second.usage.prompt_tokens_details) == 258
    assert second.choices[0].message.model_extra["images"]


# -- images ------------------------------------------------------------------------------------


def test_images_generate_maps_size_to_aspect_ratio_and_tier(gw: Gateway) -> None:
    result = client(gw).images.generate(model=PRO_MODEL, prompt="a harbour", size="1536x1024", n=2)
    assert len(result.data) == 2
    for item in result.data:
        assert item.b64_json and item.revised_prompt
        picture = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert picture.size == (1264, 848)  # 3:2 at 1K on gemini-3-pro-image-preview
    assert result.size == "1264x848"
    assert result.usage is not None and result.usage.output_tokens >= 2 * 1120


def test_images_generate_extensions_win_over_size(gw: Gateway) -> None:
    result = client(gw).images.generate(
        model=PRO_MODEL,
        prompt="a tower",
        size="1024x1024",
        extra_body={"aspect_ratio": "9:16", "image_size": "2K"},
    )
    picture = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert picture.size == (1536, 2752)


def test_images_generate_url_and_output_format(gw: Gateway) -> None:
    result = client(gw).images.generate(
        model=IMAGE_MODEL, prompt="a fern", response_format="url", output_format="jpeg"
    )
    url = result.data[0].url or ""
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(fetched.content)).format == "JPEG"
    assert result.output_format == "jpeg"


def test_images_generate_defaults_to_an_image_model(gw: Gateway) -> None:
    response = httpx.post(
        f"{gw.url}/v1/images/generations",
        json={"prompt": "a cup"},
        headers={"authorization": f"Bearer {gw.client_key}"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json()["data"][0]["b64_json"]


def test_images_edit_takes_image_and_image_brackets_and_a_mask(gw: Gateway) -> None:
    sources = [png(64, 64, (200, 0, 0)), png(64, 64, (0, 200, 0)), png(64, 64, (0, 0, 200))]
    result = client(gw).images.edit(
        model=PRO_MODEL,
        image=[(f"in{i}.png", data, "image/png") for i, data in enumerate(sources)],
        prompt="combine them",
    )
    assert len(result.data) == 1 and result.usage is not None
    assert result.usage.input_tokens_details.image_tokens == 3 * 560
    mask = io.BytesIO()
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(mask, "PNG")
    single = client(gw).images.edit(
        model=IMAGE_MODEL,
        image=("in.png", sources[0], "image/png"),
        mask=("mask.png", mask.getvalue(), "image/png"),
        prompt="paint the sky",
        response_format="url",
    )
    assert single.usage is not None
    assert single.usage.input_tokens_details.image_tokens == 2 * 258  # the mask goes along
    assert httpx.get(single.data[0].url or "").status_code == 200


@pytest.mark.parametrize(
    ("source", "size"),
    [((1184, 864), "1184x864"), ((600, 800), "864x1184"), ((1000, 1000), "1024x1024")],
)
def test_an_edit_without_size_reports_the_size_it_produced(
    gw: Gateway, source: tuple[int, int], size: str
) -> None:
    # No size asked: the model keeps the input's shape (on its own pixel table), and the
    # answer's size is the produced image's, not a default.
    result = client(gw).images.edit(
        model=IMAGE_MODEL, image=("in.png", png(*source), "image/png"), prompt="make it blue"
    )
    picture = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert f"{picture.width}x{picture.height}" == size
    assert result.size == size
    # Converted and stored, it is still the size made.
    stored = client(gw).images.edit(
        model=IMAGE_MODEL,
        image=("in.png", png(*source), "image/png"),
        prompt="make it blue",
        response_format="url",
        output_format="webp",
    )
    fetched = Image.open(io.BytesIO(httpx.get(stored.data[0].url or "").content))
    assert fetched.format == "WEBP" and stored.size == size == f"{fetched.width}x{fetched.height}"


def test_the_demo_edit_follows_its_prompt(gw: Gateway) -> None:
    # The same image, two prompts: each edit takes the colour its prompt names, and the same
    # prompt gives the same picture again.
    source = ("in.png", png(640, 480, (128, 128, 128)), "image/png")

    def edit(prompt: str) -> Image.Image:
        result = client(gw).images.edit(model=IMAGE_MODEL, image=source, prompt=prompt)
        picture = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
        # The upper half: away from the caption panel in the lower left.
        return picture.convert("RGB").crop((0, 0, picture.width, picture.height // 2))

    blue, red = edit("make it blue"), edit("make it red")
    (r_b, g_b, b_b), (r_r, g_r, b_r) = (ImageStat.Stat(image).mean for image in (blue, red))
    assert b_b > max(r_b, g_b) + 40 and r_r > max(g_r, b_r) + 40
    assert edit("make it blue").tobytes() == blue.tobytes()


def test_models_listing_through_the_sdk(gw: Gateway) -> None:
    ids = [model.id for model in client(gw).models.list()]
    assert IMAGE_MODEL in ids and TEXT_MODEL in ids
    assert client(gw).models.retrieve(PRO_MODEL).id == PRO_GA


# -- what reaches the upstream -----------------------------------------------------------------


def test_chat_parameters_arrive_upstream_as_gemini_fields(
    sim_gateway: Gateway, simulator: Simulator
) -> None:
    simulator.clear()
    client(sim_gateway).chat.completions.create(
        model=PRO_MODEL,
        messages=[
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "a poster"},
        ],
        max_tokens=900,
        temperature=0.4,
        top_p=0.9,
        stop=["END"],
        seed=7,
        reasoning_effort="low",
        extra_body={
            "modalities": ["text", "image"],
            "image_config": {"aspect_ratio": "4:3", "image_size": "2K"},
        },
    )
    sent = upstream_request(simulator)
    assert sent["path"] == f"/v1beta/models/{PRO_GA}:generateContent"
    body = sent["json"]
    assert body["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "a poster"}]}]
    assert body["generationConfig"] == {
        "temperature": 0.4,
        "topP": 0.9,
        "maxOutputTokens": 900,
        "seed": 7,
        "stopSequences": ["END"],
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": "4:3", "imageSize": "2K"},
        "thinkingConfig": {"thinkingBudget": 1024},
    }


def test_tools_and_response_format_arrive_upstream(
    sim_gateway: Gateway, simulator: Simulator
) -> None:
    simulator.clear()
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    client(sim_gateway).chat.completions.create(
        model=TEXT_MODEL,
        messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        tools=[{"type": "function", "function": {"name": "f", "parameters": schema}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
    )
    body = upstream_request(simulator)["json"]
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert body["generationConfig"]["responseJsonSchema"] == schema
    assert body["tools"] == [
        {"functionDeclarations": [{"name": "f", "parametersJsonSchema": schema}]}
    ]
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}
    }


def test_images_size_arrives_upstream_as_image_config(
    sim_gateway: Gateway, simulator: Simulator
) -> None:
    simulator.clear()
    client(sim_gateway).images.generate(model=PRO_MODEL, prompt="p", size="1024x1536")
    body = upstream_request(simulator)["json"]
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "2:3", "imageSize": "1K"}
    assert body["contents"][0]["parts"] == [{"text": "p"}]
    simulator.clear()
    client(sim_gateway).images.generate(model=IMAGE_MODEL, prompt="p", size="1792x1024")
    body = upstream_request(simulator)["json"]
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9"}


def test_chat_stream_goes_upstream_as_stream_generate_content(
    sim_gateway: Gateway, simulator: Simulator
) -> None:
    simulator.clear()
    chunks = list(
        client(sim_gateway).chat.completions.create(
            model=IMAGE_MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    assert upstream_request(simulator)["path"].endswith(":streamGenerateContent")
    assert any((c.choices[0].delta.model_extra or {}).get("images") for c in chunks if c.choices)


def test_a_url_mode_image_sent_back_as_history_is_read_from_storage(
    demo_gateway: Gateway,
) -> None:
    # demo_gateway's egress guard refuses loopback: the URL must be served from storage.
    first = client(demo_gateway).chat.completions.create(
        model=IMAGE_MODEL,
        messages=[{"role": "user", "content": "a green square"}],
        extra_body={"image_output": "url"},
    )
    assistant = first.choices[0].message.model_dump(exclude_none=True)
    assert assistant["images"][0]["image_url"]["url"].startswith(f"{demo_gateway.url}/files/")
    second = client(demo_gateway).chat.completions.create(
        model=IMAGE_MODEL,
        messages=[
            {"role": "user", "content": "a green square"},
            assistant,
            {"role": "user", "content": "now make it blue"},
        ],
    )
    assert second.usage is not None
    assert image_tokens(second.usage.prompt_tokens_details) == 258
