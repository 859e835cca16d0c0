"""Property tests for the request validators and converters (pure, no server): any JSON value
in any field is refused with the dialect's InvalidArgument or accepted, never anything else;
what a converter accepts, the canonical validator accepts too; valid settings round-trip."""

from __future__ import annotations

import copy
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanogate.core import inline
from nanogate.core.catalog import load_catalog
from nanogate.core.errors import InvalidArgument
from nanogate.dialects import gemini, openai_chat, openai_images
from nanogate.dialects.gemini_validate import NUMBERS

CATALOG = load_catalog()
SPECS = [CATALOG.resolve(name) for name in ("gemini-2.5-flash-image", "gemini-2.5-flash")]
MODELS = st.sampled_from(SPECS)

# Any JSON value orjson can write: what a client can put in a field.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
PROFILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Per field: each field of each request gets examples of its own.
PER_FIELD = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _path_id(path: tuple[Any, ...]) -> str:
    return ".".join(map(str, path))


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A deep copy of `doc` with the value at `path` set (made where missing)."""
    doc = copy.deepcopy(doc)
    node = doc
    for step in path[:-1]:
        node = node[step] if isinstance(step, int) else node.setdefault(step, {})
    node[path[-1]] = value
    return doc


GEMINI = {
    "contents": [{"role": "user", "parts": [{"text": "an otter"}]}],
    "systemInstruction": {"parts": [{"text": "be brief"}]},
    "generationConfig": {"temperature": 1.0},
}
GEMINI_PATHS = [
    ("contents",),
    ("contents", 0),
    ("contents", 0, "role"),
    ("contents", 0, "parts"),
    ("contents", 0, "parts", 0),
    ("contents", 0, "parts", 0, "text"),
    ("contents", 0, "parts", 0, "inlineData"),
    ("contents", 0, "parts", 0, "inline_data"),
    ("contents", 0, "parts", 0, "inlineData", "mimeType"),
    ("contents", 0, "parts", 0, "inlineData", "data"),
    ("systemInstruction",),
    ("systemInstruction", "role"),
    ("systemInstruction", "parts"),
    ("system_instruction",),
    ("generationConfig",),
    ("generation_config",),
    *(("generationConfig", camel) for camel, *_ in NUMBERS),
    *(("generation_config", snake) for _, snake, *_ in NUMBERS),
    ("generationConfig", "stopSequences"),
    ("generationConfig", "responseMimeType"),
    ("generationConfig", "responseModalities"),
    ("generationConfig", "response_modalities"),
    ("generationConfig", "thinkingConfig"),
    ("generationConfig", "thinkingConfig", "thinkingBudget"),
    ("generationConfig", "thinkingConfig", "includeThoughts"),
    ("generationConfig", "thinkingConfig", "thinkingLevel"),
    ("generationConfig", "imageConfig"),
    ("generationConfig", "imageConfig", "aspectRatio"),
    ("generationConfig", "imageConfig", "imageSize"),
    ("generationConfig", "image_config", "image_size"),
    ("generateContentRequest",),
]


def _parse_gemini(method: Any, spec: Any, body: bytes) -> None:
    try:
        gemini.parse_call("r", method, spec, body)
    except InvalidArgument as refused:
        assert refused.status == 400 and refused.message


@pytest.mark.parametrize("path", GEMINI_PATHS, ids=_path_id)
@PER_FIELD
@given(MODELS, st.sampled_from(["generateContent", "countTokens"]), JSON_VALUES)
def test_gemini_any_value_anywhere_is_accepted_or_invalid_argument(
    path: tuple[Any, ...], spec: Any, method: Any, value: Any
) -> None:
    _parse_gemini(method, spec, orjson.dumps(_replace(GEMINI, path, value)))


@PROFILE
@given(MODELS, JSON_VALUES)
def test_gemini_any_body_is_accepted_or_invalid_argument(spec: Any, value: Any) -> None:
    _parse_gemini("generateContent", spec, orjson.dumps(value))


NUMBER_VALUES = st.integers(min_value=-(2**40), max_value=2**40) | st.floats(
    min_value=-1e12, max_value=1e12
)


@PROFILE
@given(st.sampled_from(NUMBERS), st.booleans(), NUMBER_VALUES)
def test_a_numeric_setting_is_accepted_exactly_in_its_range(
    row: tuple[str, str, float, float, str], snake: bool, value: float
) -> None:
    camel, snake_name, low, high, kind = row
    spec = SPECS[1]
    if camel == "maxOutputTokens":  # the model's own limit is lower than the type's
        high = spec.output_token_limit
    config = {snake_name if snake else camel: value}
    body = orjson.dumps({"contents": GEMINI["contents"], "generationConfig": config})
    whole = isinstance(value, int) or (kind == "whole" and float(value).is_integer())
    fits = low <= value <= high and (kind == "number" or whole)
    try:
        call = gemini.parse_call("r", "generateContent", spec, body)
    except InvalidArgument as refused:
        assert not fits
        assert refused.message.startswith(
            (f"generationConfig.{camel}: must be ", f"generationConfig.{camel}: {spec.name}")
        )
    else:
        assert fits
        assert call.body == body  # forwarded as it came


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
CHAT_FIELDS = [
    "messages",
    "stream",
    "n",
    "stream_options",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "response_format",
    "modalities",
    "image_config",
    "reasoning_effort",
    "tools",
    "tool_choice",
    "image_output",
]
CHAT_PATHS = [
    *((name,) for name in CHAT_FIELDS),
    ("messages", 0),
    ("messages", 0, "role"),
    ("messages", 0, "content"),
    ("messages", 0, "tool_calls"),
    ("messages", 0, "images"),
    ("image_config", "aspect_ratio"),
    ("image_config", "image_size"),
    ("response_format", "type"),
]


@pytest.mark.parametrize("path", CHAT_PATHS, ids=_path_id)
@PER_FIELD
@given(MODELS, JSON_VALUES)
def test_chat_any_value_is_refused_with_its_param_or_valid_for_gemini_too(
    path: tuple[Any, ...], spec: Any, value: Any
) -> None:
    try:
        parsed = openai_chat.parse(_replace(CHAT, path, value), spec, max_images=4)
    except InvalidArgument as refused:
        assert refused.param is not None and refused.message.startswith(refused.param)
        return
    if parsed.remote:
        return  # fetched by the route before the canonical check
    # Whatever the converter lets through, the canonical check must take as well: a client
    # must never be told about a generationConfig field it did not send.
    call = gemini.parse_call("r", "generateContent", spec, inline.dumps(parsed.gemini))
    assert call.request == orjson.loads(inline.dumps(parsed.gemini))


@PROFILE
@given(
    st.floats(min_value=0, max_value=2),
    st.floats(min_value=0, max_value=1),
    st.integers(min_value=1, max_value=8192),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.integers(min_value=1, max_value=8),
)
def test_valid_chat_settings_round_trip_into_generation_config(
    temperature: float, top_p: float, max_tokens: int, seed: int, n: int
) -> None:
    doc = {
        **CHAT,
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
        "seed": seed,
        "n": n,
    }
    parsed = openai_chat.parse(doc, SPECS[1], max_images=4)
    call = gemini.parse_call("r", "generateContent", SPECS[1], inline.dumps(parsed.gemini))
    config = call.request["generationConfig"]
    assert math.isclose(config["temperature"], temperature)
    assert math.isclose(config["topP"], top_p)
    assert (config["maxOutputTokens"], config["seed"]) == (max_tokens, seed)
    assert config.get("candidateCount", 1) == n


IMAGES_FIELDS = ["prompt", "n", "size", "aspect_ratio", "image_size", "response_format"]


@pytest.mark.parametrize("name", IMAGES_FIELDS)
@PER_FIELD
@given(JSON_VALUES)
def test_images_any_value_is_refused_with_its_param_or_valid_for_gemini_too(
    name: str, value: Any
) -> None:
    doc = {"prompt": "a kite", name: value}
    try:
        parsed = openai_images.parse_generation(doc, SPECS[0], max_images=4)
    except InvalidArgument as refused:
        assert refused.param is not None
        return
    gemini.parse_call("r", "generateContent", SPECS[0], inline.dumps(parsed.gemini))


# Prompts made of base64's own characters, long enough to look like data to inline.loads.
BASE64_LIKE = st.text(alphabet="ABCabc0123456789+/=_-", min_size=1, max_size=40)


@settings(max_examples=25, deadline=None)
@given(BASE64_LIKE, st.integers(min_value=inline.MIN_BLOB, max_value=inline.SMALL_BODY + 4096))
def test_any_images_prompt_is_accepted_however_it_is_loaded(unit: str, length: int) -> None:
    prompt = (unit * (length // len(unit) + 1))[:length]
    body = orjson.dumps({"prompt": prompt, "padding": "x " * (inline.SMALL_BODY // 2)})
    parsed = openai_images.parse_generation(inline.loads(body), SPECS[0], max_images=4)
    assert parsed.gemini["contents"][0]["parts"][0]["text"] == prompt


@settings(max_examples=50, deadline=None)
@given(JSON_VALUES, st.text(alphabet="ABCabc0123456789+/", min_size=1, max_size=8))
def test_inline_loads_and_dumps_round_trip(value: Any, unit: str) -> None:
    """Cutting long base64 strings out and splicing them back in changes nothing."""
    blob = unit * (inline.MIN_BLOB // len(unit) + 1)
    doc = {"data": blob, "value": value, "list": [blob, value], "padding": "x " * inline.SMALL_BODY}
    body = orjson.dumps(doc)
    assert orjson.loads(inline.dumps(inline.loads(body))) == doc
