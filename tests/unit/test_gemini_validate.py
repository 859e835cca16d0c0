"""The Gemini validator: pure function, literal dicts, no server."""

from __future__ import annotations

import base64
import io
from typing import Any

import orjson
import pytest
from PIL import Image

from nanogate.core.catalog import ModelSpec, load_catalog
from nanogate.core.errors import InvalidArgument, NotFound
from nanogate.core.media import decode_base64, sniff_image
from nanogate.dialects.gemini import parse_call, split_model_action

CATALOG = load_catalog()
FLASH = CATALOG.resolve("gemini-2.5-flash-image")
PRO = CATALOG.resolve("gemini-3-pro-image-preview")
V2 = CATALOG.resolve("gemini-3.1-flash-image-preview")
TEXT = CATALOG.resolve("gemini-2.5-flash")


def png_bytes(size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def req(image_config: dict[str, Any] | None = None, parts: list[Any] | None = None) -> bytes:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": parts or [{"text": "otter"}]}]}
    if image_config is not None:
        body["generationConfig"] = {"imageConfig": image_config}
    return orjson.dumps(body)


def test_seed_003_request_is_valid_and_keeps_body() -> None:
    body = req({"aspectRatio": "4:3"})
    call = parse_call("r1", "generateContent", FLASH, body)
    assert call.body is body
    assert call.image is not None and call.image.aspect_ratio == "4:3"


@pytest.mark.parametrize(
    "ratio", ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]
)
def test_flash_ratios(ratio: str) -> None:
    parse_call("r", "generateContent", FLASH, req({"aspectRatio": ratio}))


def test_extra_ratios_only_on_31_flash() -> None:
    for ratio in ("1:4", "4:1", "1:8", "8:1"):
        parse_call("r", "generateContent", V2, req({"aspectRatio": ratio}))
        with pytest.raises(InvalidArgument, match="aspectRatio"):
            parse_call("r", "generateContent", PRO, req({"aspectRatio": ratio}))


def test_flash_accepts_only_its_native_1k() -> None:
    # Seed 003's own example sends imageSize 1K to gemini-2.5-flash-image.
    parse_call("r", "generateContent", FLASH, req({"aspectRatio": "4:3", "imageSize": "1K"}))
    for size in ("2K", "4K"):
        with pytest.raises(InvalidArgument, match=r"not supported by gemini-2.5-flash-image"):
            parse_call(
                "r", "generateContent", FLASH, req({"aspectRatio": "4:3", "imageSize": size})
            )


def test_image_size_on_a_model_without_sizes() -> None:
    from nanogate.core.catalog import load_catalog as load

    custom = load({"my-image-model": {"kind": "image", "pixels": {"1K": {"1:1": "1024x1024"}}}})
    spec = custom.resolve("my-image-model")
    with pytest.raises(InvalidArgument, match=r"does not support imageConfig.imageSize"):
        parse_call("r", "generateContent", spec, req({"imageSize": "1K"}))


@pytest.mark.parametrize("size", ["1K", "2K", "4K"])
def test_pro_sizes(size: str) -> None:
    call = parse_call("r", "generateContent", PRO, req({"imageSize": size}))
    assert call.image is not None and call.image.image_size == size


def test_lowercase_size_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"1K, 2K, 4K \('2K', with an uppercase K\)\.$"):
        parse_call("r", "generateContent", PRO, req({"imageSize": "2k"}))


@pytest.mark.parametrize(("spec", "size"), [(FLASH, "2K"), (FLASH, "2k"), (PRO, "8K"), (PRO, 2)])
def test_the_uppercase_hint_only_when_it_is_the_fix(spec: ModelSpec, size: object) -> None:
    # 2K is spelt right but not a size gemini-2.5-flash-image renders: the hint would mislead.
    with pytest.raises(InvalidArgument) as refused:
        parse_call("r", "generateContent", spec, req({"imageSize": size}))
    assert "uppercase" not in refused.value.message
    assert refused.value.message.endswith(f"use one of: {', '.join(spec.image_sizes)}.")


def test_snake_case_spelling_is_validated_too() -> None:
    body = orjson.dumps(
        {
            "contents": [{"role": "user", "parts": [{"text": "x"}]}],
            "generation_config": {"image_config": {"aspect_ratio": "7:3"}},
        }
    )
    with pytest.raises(InvalidArgument, match="7:3"):
        parse_call("r", "generateContent", FLASH, body)


def test_image_config_on_text_model() -> None:
    with pytest.raises(InvalidArgument, match="only for image models"):
        parse_call("r", "generateContent", TEXT, req({"aspectRatio": "1:1"}))


@pytest.mark.parametrize("role", ["system", "assistant", "", 3])
def test_bad_role(role: Any) -> None:
    body = orjson.dumps({"contents": [{"role": role, "parts": [{"text": "x"}]}]})
    with pytest.raises(InvalidArgument, match="role must be 'user' or 'model'"):
        parse_call("r", "generateContent", FLASH, body)


def test_role_may_be_omitted_like_seed_000() -> None:
    body = orjson.dumps({"contents": [{"parts": [{"text": "a nano banana dish"}]}]})
    parse_call("r", "generateContent", FLASH, body)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b"{}", "contents is required"),
        (b'{"contents": []}', "non-empty array"),
        (b'{"contents": ["x"]}', "must be an object"),
        (b'{"contents": [{"parts": "x"}]}', "parts must be a non-empty array"),
        (b'{"contents": [{"parts": [{"text": 5}]}]}', "text must be a string"),
        (b'{"contents": [{"parts": [{"text": "x"}]}], "generationConfig": 3}', "generationConfig"),
    ],
)
def test_shape_errors(body: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_call("r", "generateContent", FLASH, body)


def test_inline_image_standard_and_urlsafe_base64() -> None:
    raw = png_bytes()
    for encoded in (
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ):
        part = {"inlineData": {"mimeType": "image/png", "data": encoded}}
        call = parse_call("r", "generateContent", FLASH, req(parts=[{"text": "x"}, part]))
        assert call.input_images == 1


def test_inline_mime_type_not_allowed() -> None:
    part = {
        "inlineData": {"mimeType": "image/gif", "data": base64.b64encode(b"GIF89a....").decode()}
    }
    with pytest.raises(InvalidArgument, match=r"image/gif.*not accepted"):
        parse_call("r", "generateContent", FLASH, req(parts=[part]))


def test_inline_bad_base64_message_has_no_data() -> None:
    blob = "A" * 30 + "!!!" + "B" * 200
    part = {"inlineData": {"mimeType": "image/png", "data": blob}}
    with pytest.raises(InvalidArgument) as info:
        parse_call("r", "generateContent", FLASH, req(parts=[part]))
    assert "not valid base64" in info.value.message
    assert "AAAA" not in info.value.message


def test_inline_not_an_image() -> None:
    part = {
        "inlineData": {"mimeType": "image/png", "data": base64.b64encode(b"hello world").decode()}
    }
    with pytest.raises(InvalidArgument, match="does not hold an image"):
        parse_call("r", "generateContent", FLASH, req(parts=[part]))


def test_too_many_input_images() -> None:
    data = base64.b64encode(png_bytes()).decode()
    parts = [{"inlineData": {"mimeType": "image/png", "data": data}} for _ in range(4)]
    with pytest.raises(InvalidArgument, match="at most 3 input images"):
        parse_call("r", "generateContent", FLASH, req(parts=parts))
    parse_call("r", "generateContent", PRO, req(parts=parts))


def test_unknown_fields_are_allowed_and_untouched() -> None:
    doc = {
        "contents": [{"role": "user", "parts": [{"text": "x", "futurePartField": 1}]}],
        "generationConfig": {"responseMimeType": "application/json", "seed": 3, "newKnob": True},
        "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "OBJECT"}}]}],
        "somethingNew": {"a": 1},
    }
    body = orjson.dumps(doc)
    call = parse_call("r", "generateContent", TEXT, body)
    assert call.body == body and call.request == doc


def test_count_tokens_shapes() -> None:
    parse_call("r", "countTokens", TEXT, b'{"contents": [{"parts": [{"text": "hi"}]}]}')
    inner = {
        "generateContentRequest": {
            "model": "models/gemini-2.5-flash",
            "contents": [{"parts": [{"text": "hi"}]}],
        }
    }
    parse_call("r", "countTokens", TEXT, orjson.dumps(inner))
    with pytest.raises(InvalidArgument):
        parse_call("r", "countTokens", TEXT, b'{"generateContentRequest": 1}')


def test_split_model_action() -> None:
    assert split_model_action("gemini-2.5-flash-image:generateContent") == (
        "gemini-2.5-flash-image",
        "generateContent",
    )
    assert split_model_action("google/nano-banana:streamGenerateContent")[0] == "google/nano-banana"
    with pytest.raises(NotFound):
        split_model_action("gemini-2.5-flash-image:embedContent")
    with pytest.raises(NotFound):
        split_model_action("gemini-2.5-flash-image")


def test_decode_base64_variants() -> None:
    assert decode_base64("aGk=") == b"hi"
    assert decode_base64("aGk") == b"hi"
    assert decode_base64("aG\nk=") == b"hi"
    assert decode_base64("a$Gk") is None


def test_sniff() -> None:
    assert sniff_image(png_bytes()[:64]) == "image/png"
    assert sniff_image(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff_image(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_image(b"\0\0\0\x18ftypheic") == "image/heic"
    assert sniff_image(b"hello") is None


def test_a_model_the_catalog_does_not_list_takes_text_only() -> None:
    spec = ModelSpec(name="gemini-9-flash-exp", display_name="x", kind="text", unlisted=True)
    assert parse_call("r", "generateContent", spec, req()).model is spec
    data = base64.b64encode(png_bytes()).decode()
    image = {"inlineData": {"mimeType": "image/png", "data": data}}
    with pytest.raises(InvalidArgument, match="takes text only"):
        parse_call("r", "generateContent", spec, req(parts=[{"text": "x"}, image]))
    body = orjson.dumps(
        {
            "contents": [{"role": "user", "parts": [{"text": "draw"}]}],
            "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]},
        }
    )
    with pytest.raises(InvalidArgument, match="remove IMAGE"):
        parse_call("r", "generateContent", spec, body)


def _body(**fields: Any) -> bytes:
    return orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "x"}]}], **fields})


@pytest.mark.parametrize("role", [{}, [], ["user"], {"user": 1}])
def test_a_role_that_is_not_a_string_is_refused_not_a_crash(role: Any) -> None:
    body = orjson.dumps({"contents": [{"role": role, "parts": [{"text": "x"}]}]})
    with pytest.raises(InvalidArgument, match=r"contents\[0\]\.role must be 'user' or 'model'"):
        parse_call("r", "generateContent", FLASH, body)
    system = _body(systemInstruction={"role": role, "parts": [{"text": "be brief"}]})
    with pytest.raises(InvalidArgument, match=r"systemInstruction\.role must be a string"):
        parse_call("r", "generateContent", FLASH, system)


@pytest.mark.parametrize(
    "contents, where",
    [
        ([{}], r"contents\[0\]\.parts"),
        ([{"role": "user"}], r"contents\[0\]\.parts"),
        ([{"role": "user", "parts": None}], r"contents\[0\]\.parts"),
        ([{"role": "user", "parts": []}], r"contents\[0\]\.parts"),
        ([{"role": "user", "parts": [{"text": "x"}]}, {"parts": None}], r"contents\[1\]\.parts"),
        ([{"role": "user", "parts": [{}]}], r"contents\[0\]\.parts\[0\] must be an object with"),
    ],
)
def test_a_content_without_parts_is_refused(contents: Any, where: str) -> None:
    # Google refuses these itself: passing them on would charge for its 400.
    with pytest.raises(InvalidArgument, match=where):
        parse_call("r", "generateContent", FLASH, orjson.dumps({"contents": contents}))


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"candidateCount": -1},
            "generationConfig.candidateCount: must be an integer between 1 and 8",
        ),
        ({"candidateCount": 0}, "generationConfig.candidateCount: must be an integer"),
        ({"candidateCount": "two"}, "generationConfig.candidateCount: must be an integer"),
        ({"candidateCount": 9}, "generationConfig.candidateCount: must be an integer"),
        ({"candidateCount": 2.0}, "generationConfig.candidateCount: must be an integer"),
        ({"candidateCount": True}, "generationConfig.candidateCount: must be an integer"),
        ({"maxOutputTokens": -5}, "generationConfig.maxOutputTokens: must be an integer between 1"),
        ({"maxOutputTokens": 2**31}, "generationConfig.maxOutputTokens: must be an integer"),
        ({"temperature": "hot"}, "generationConfig.temperature: must be a number between 0 and 2"),
        ({"temperature": 2.5}, "generationConfig.temperature: must be a number between 0 and 2"),
        ({"temperature": -0.1}, "generationConfig.temperature: must be a number"),
        ({"topP": 1.5}, "generationConfig.topP: must be a number between 0 and 1"),
        ({"topK": 0}, "generationConfig.topK: must be an integer"),
        ({"topK": 40.5}, "generationConfig.topK: must be an integer"),
        ({"presencePenalty": 3}, "generationConfig.presencePenalty: must be a number between -2"),
        ({"frequencyPenalty": "1"}, "generationConfig.frequencyPenalty: must be a number"),
        ({"seed": 2**31}, "generationConfig.seed: must be an integer"),
        ({"seed": 1.5}, "generationConfig.seed: must be an integer"),
        ({"stopSequences": ["a"] * 6}, "generationConfig.stopSequences: must be an array of at"),
        ({"stopSequences": "stop"}, "generationConfig.stopSequences"),
        ({"stopSequences": [1]}, "generationConfig.stopSequences"),
        ({"responseMimeType": 1}, "generationConfig.responseMimeType: must be a string"),
        ({"responseModalities": "IMAGE"}, "generationConfig.responseModalities: must be an array"),
        ({"responseModalities": ["PICTURE"]}, "generationConfig.responseModalities"),
        ({"responseModalities": [{}]}, "generationConfig.responseModalities"),
        ({"thinkingConfig": 1024}, "generationConfig.thinkingConfig: must be an object"),
        (
            {"thinkingConfig": {"thinkingBudget": -2}},
            "generationConfig.thinkingConfig.thinkingBudget: must be an",
        ),
        (
            {"thinkingConfig": {"thinkingBudget": "lots"}},
            "generationConfig.thinkingConfig.thinkingBudget",
        ),
        (
            {"thinkingConfig": {"includeThoughts": "yes"}},
            "generationConfig.thinkingConfig.includeThoughts",
        ),
        ({"thinkingConfig": {"thinkingLevel": 3}}, "generationConfig.thinkingConfig.thinkingLevel"),
        # The proto-JSON spelling is read too, and named the way Google documents it.
        ({"candidate_count": 0}, "generationConfig.candidateCount: must be an integer"),
        ({"max_output_tokens": -5}, "generationConfig.maxOutputTokens"),
        (
            {"thinking_config": {"thinking_budget": -2}},
            "generationConfig.thinkingConfig.thinkingBudget",
        ),
    ],
)
def test_generation_config_fields_are_checked_by_type_and_range(
    config: dict[str, Any], message: str
) -> None:
    for spec in (FLASH, TEXT):
        with pytest.raises(InvalidArgument) as refused:
            parse_call("r", "generateContent", spec, _body(generationConfig=config))
        assert refused.value.message.startswith(message), refused.value.message
        assert refused.value.status == 400 and refused.value.reason == "INVALID_ARGUMENT"
    snake = _body(generation_config=config)
    with pytest.raises(InvalidArgument, match=message.split(":")[0].replace(".", r"\.")):
        parse_call("r", "generateContent", TEXT, snake)


def test_max_output_tokens_above_the_models_limit_is_refused() -> None:
    for spec in (FLASH, TEXT):
        limit = spec.output_token_limit
        parse_call("r", "generateContent", spec, _body(generationConfig={"maxOutputTokens": limit}))
        for config in ({"maxOutputTokens": limit + 1}, {"max_output_tokens": 2**31 - 1}):
            with pytest.raises(InvalidArgument) as refused:
                parse_call("r", "generateContent", spec, _body(generationConfig=config))
            assert refused.value.message.startswith(
                f"generationConfig.maxOutputTokens: {spec.name} writes at most {limit} output "
                "tokens"
            ), refused.value.message


@pytest.mark.parametrize(
    "config",
    [
        {"temperature": 0, "topP": 1, "topK": 40, "candidateCount": 1, "maxOutputTokens": 1},
        {"temperature": 2.0, "topP": 0.0, "topK": 40.0, "candidateCount": 8, "seed": -(2**31)},
        {"presencePenalty": -2, "frequencyPenalty": 2.0, "seed": 2**31 - 1},
        {"maxOutputTokens": TEXT.output_token_limit, "stopSequences": ["a", "b", "c", "d", "e"]},
        {"responseModalities": ["TEXT", "IMAGE"], "responseMimeType": "text/plain"},
        {"responseModalities": ["Text", "Image"]},  # Google's own examples spell them so
        {"thinkingConfig": {"thinkingBudget": -1, "includeThoughts": True}},
        {"thinkingConfig": {"thinkingBudget": 0, "thinkingLevel": "low"}},
        {"top_k": 64, "max_output_tokens": 100, "thinking_config": {"thinking_budget": 128}},
        {"temperature": None, "somethingNew": {"x": [1, 2]}, "speechConfig": {}},
    ],
)
def test_valid_generation_configs_pass_and_are_forwarded_as_they_came(
    config: dict[str, Any],
) -> None:
    body = _body(generationConfig=config)
    call = parse_call("r", "generateContent", TEXT, body)
    assert call.body is body and call.request["generationConfig"] == config
