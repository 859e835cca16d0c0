"""Price math: pure functions, literal numbers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from nanogate.billing import prices
from nanogate.core.catalog import load_catalog
from nanogate.core.types import Call, Usage
from nanogate.dialects.gemini import parse_call

CATALOG = load_catalog()


def _call(model: str, request: dict[str, Any], method: str = "generateContent") -> Call:
    return parse_call("r1", method, CATALOG.resolve(model), orjson.dumps(request))  # type: ignore[arg-type]


def _prompt(text: str = "an otter", **config: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if config:
        body["generationConfig"] = config
    return body


@pytest.mark.parametrize(
    ("model", "size", "credits"),
    [
        ("gemini-2.5-flash-image", "1K", 38_700),
        ("gemini-3-pro-image-preview", "1K", 134_400),
        ("gemini-3-pro-image-preview", "2K", 134_400),
        ("gemini-3-pro-image-preview", "4K", 240_000),
        ("gemini-3.1-flash-image-preview", "512", 44_820),
        ("gemini-3.1-flash-image-preview", "1K", 67_200),
        ("gemini-3.1-flash-image-preview", "2K", 100_800),
        ("gemini-3.1-flash-image-preview", "4K", 151_200),
    ],
)
def test_one_image_costs_googles_published_price(model: str, size: str, credits: int) -> None:
    spec = CATALOG.resolve(model)
    usage = Usage(output_image=spec.image_tokens(size), images=1)
    assert prices.price(spec, usage, size) == credits


def test_each_modality_at_its_own_rate() -> None:
    spec = CATALOG.resolve("gemini-2.5-flash-image")
    # 1000 input text at $0.30, 258 input image at $0.30, 10 output text at $2.50,
    # 1290 output image at $30, 100 thoughts at the output text rate.
    usage = Usage(input_text=1000, input_image=258, output_text=10, output_image=1290, thoughts=100)
    micro = 1000 * 300_000 + 258 * 300_000 + 10 * 2_500_000 + 1290 * 30_000_000 + 100 * 2_500_000
    assert prices.price(spec, usage) == -(-micro // 1_000_000) == 39_353
    # The same tokens all billed as text would be far cheaper: images are never at text rate.
    as_text = Usage(input_text=1258, output_text=1400)
    assert prices.price(spec, as_text) < 5_000


def test_rounding_is_up_once_over_the_sum() -> None:
    spec = CATALOG.resolve("gemini-2.5-flash")
    assert prices.price(spec, Usage(input_text=1)) == 1  # 0.3 credits rounds up
    assert prices.price(spec, Usage(input_text=2, output_text=1)) == 4  # 0.6 + 2.5 = 3.1
    assert prices.price(spec, Usage()) == 0


def test_thinking_defaults_to_the_output_text_rate_unless_priced() -> None:
    spec = CATALOG.resolve("gemini-3-pro-image-preview")
    assert spec.prices["thoughts"] == spec.prices["output_text"] == 12_000_000
    priced = load_catalog({"gemini-3-pro-image-preview": {"prices": {"thoughts": 1_000_000}}})
    assert priced.resolve("gemini-3-pro-image-preview").prices["thoughts"] == 1_000_000


def test_flat_image_prices_replace_image_tokens() -> None:
    catalog = load_catalog(
        {"gemini-3-pro-image-preview": {"image_prices": {"1K": 100_000, "4K": 300_000}}}
    )
    spec = catalog.resolve("gemini-3-pro-image-preview")
    usage = Usage(input_text=10, output_image=2000, images=2)
    assert prices.price(spec, usage, "4K") == 20 + 600_000
    # A tier with no flat price falls back to tokens.
    assert prices.price(spec, usage, "2K") == 20 + 240_000


def test_estimate_covers_images_output_budget_and_input() -> None:
    call = _call(
        "gemini-3-pro-image-preview",
        _prompt(imageConfig={"imageSize": "4K"}, candidateCount=2, maxOutputTokens=1000),
    )
    spec = call.model
    body_chars = len(call.body)
    expected_micro = -(-body_chars // 3) * 2_000_000 + 1000 * 12_000_000 + 2 * 2000 * 120_000_000
    assert prices.quote(call).worst == -(-expected_micro // 1_000_000)
    assert prices.quote(call).worst >= prices.price(spec, Usage(output_image=4000, images=2), "4K")


def test_estimate_defaults_to_the_models_output_limit() -> None:
    call = _call("gemini-2.5-flash-image", _prompt())
    budget_only = 32_768 * 2_500_000 // 1_000_000
    assert prices.quote(call).worst > budget_only + 38_700


def test_estimate_excludes_inline_data_but_counts_input_images() -> None:
    png = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
        "rkJggg=="
    )
    with_image = _prompt(maxOutputTokens=10)
    with_image["contents"][0]["parts"].append(
        {"inlineData": {"mimeType": "image/png", "data": png}}
    )
    call = _call("gemini-2.5-flash-image", with_image)
    text_tokens = -(-(len(call.body) - len(png)) // 3)
    micro = text_tokens * 300_000 + 258 * 300_000 + 10 * 2_500_000 + 1290 * 30_000_000
    assert prices.quote(call).worst == -(-micro // 1_000_000)


def test_text_only_modalities_reserve_no_image() -> None:
    text_only = _call(
        "gemini-2.5-flash-image", _prompt(responseModalities=["TEXT"], maxOutputTokens=100)
    )
    both = _call(
        "gemini-2.5-flash-image", _prompt(responseModalities=["TEXT", "IMAGE"], maxOutputTokens=100)
    )
    assert not prices.expects_image(text_only) and prices.expects_image(both)
    # One image's 38,700 credits, plus the few characters "IMAGE" adds to the body.
    assert 38_700 <= prices.quote(both).worst - prices.quote(text_only).worst <= 38_701


def test_count_tokens_is_free() -> None:
    call = _call("gemini-2.5-flash", {"contents": [{"parts": [{"text": "x"}]}]}, "countTokens")
    assert prices.quote(call).worst == 0


def test_input_price_is_the_prompt_alone() -> None:
    spec = CATALOG.resolve("gemini-2.5-flash-image")
    usage = Usage(input_text=1000, input_image=258, output_text=50)
    assert prices.input_price(spec, usage) == -(-(1258 * 300_000) // 1_000_000) == 378


def test_quote_certain_is_the_input_and_the_images_asked_for() -> None:
    call = _call("gemini-2.5-flash-image", _prompt())
    quote = prices.quote(call)
    text_tokens = -(-len(call.body) // 3)
    assert quote.certain == -(-(text_tokens * 300_000 + 1290 * 30_000_000) // 1_000_000)
    # Likely: the catalog's caption allowance (256 tokens) at the output text rate.
    assert quote.likely == quote.certain + 256 * 2_500_000 // 1_000_000
    # Worst: the whole 32,768-token output budget.
    assert quote.worst == quote.certain + 32_768 * 2_500_000 // 1_000_000
    assert quote.worst == prices.quote(call).worst


def test_quote_takes_max_output_tokens_as_the_allowance() -> None:
    call = _call("gemini-2.5-flash", _prompt(maxOutputTokens=100))
    quote = prices.quote(call)
    assert quote.likely == quote.worst == quote.certain + 100 * 2_500_000 // 1_000_000


def test_quote_of_a_text_model_holds_a_few_thousand_tokens() -> None:
    quote = prices.quote(_call("gemini-2.5-flash", _prompt()))
    assert quote.likely - quote.certain == 4096 * 2_500_000 // 1_000_000
    assert quote.worst - quote.certain == 65_536 * 2_500_000 // 1_000_000


def test_quote_with_flat_image_prices_and_copies() -> None:
    catalog = load_catalog({"gemini-2.5-flash-image": {"image_prices": {"1K": 50_000}}})
    spec = catalog.resolve("gemini-2.5-flash-image")
    call = parse_call("r1", "generateContent", spec, orjson.dumps(_prompt(candidateCount=2)))
    quote = prices.quote(call)
    text = -(-(-(-len(call.body) // 3) * 300_000) // 1_000_000)
    assert quote.certain == text + 2 * 50_000
    assert quote.times(3).certain == 3 * quote.certain
    assert prices.quote(_call("gemini-2.5-flash", _prompt(), "countTokens")) == prices.Quote()
