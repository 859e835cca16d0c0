"""Price math: pure functions of the catalog, the call and the usage. Integer credits only.

One credit is one millionth of a US dollar; catalog rates are credits per 1,000,000 tokens, so a
charge is the sum of tokens x rate over the modalities, divided by a million once and rounded up.
Every modality is priced at its own rate: output image tokens never at the text rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nanogate.core.canonical import field
from nanogate.core.catalog import ModelSpec
from nanogate.core.types import Call, Usage

PER_MILLION = 1_000_000
# Characters per token when estimating input from the body. Gemini averages about four for
# English; three (and counting JSON punctuation as text) keeps the estimate on the high side.
CHARS_PER_TOKEN = 3


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def expects_image(call: Call) -> bool:
    """Does the call ask for an image? Image models answer with one unless the client narrowed
    responseModalities to text."""
    if not call.model.is_image or call.method == "countTokens":
        return False
    config = field(call.request, "generationConfig", "generation_config")
    modalities = (
        field(config, "responseModalities", "response_modalities")
        if isinstance(config, dict)
        else None
    )
    if not isinstance(modalities, list) or not modalities:
        return True
    return any(isinstance(m, str) and m.upper() == "IMAGE" for m in modalities)


def image_size(call: Call) -> str:
    """The size tier the call renders at (the model's default when the client set none)."""
    requested = call.image.image_size if call.image is not None else None
    return requested or call.model.default_image_size


def price(spec: ModelSpec, usage: Usage, size: str | None = None) -> int:
    """What `usage` costs on `spec`: each modality at its own rate, rounded up once.

    With a flat per-image price for the size tier, output images cost that per image instead of
    their tokens.
    """
    rates = spec.prices
    flat = spec.image_prices.get(size or spec.default_image_size)
    image_tokens = 0 if flat is not None else usage.output_image
    micro = (
        usage.input_text * rates["input_text"]
        + usage.input_image * rates["input_image"]
        + usage.output_text * rates["output_text"]
        + image_tokens * rates["output_image"]
        + usage.thoughts * rates["thoughts"]
    )
    return _ceil_div(micro, PER_MILLION) + (usage.images * flat if flat is not None else 0)


def input_price(spec: ModelSpec, usage: Usage) -> int:
    """The input side of `usage` alone: what a blocked prompt costs when the operator charges
    for it."""
    rates = spec.prices
    micro = usage.input_text * rates["input_text"] + usage.input_image * rates["input_image"]
    return _ceil_div(micro, PER_MILLION)


@dataclass(frozen=True, slots=True)
class Quote:
    """What a call may cost, before it runs, for its hold (see billing/ledger.py).

    `certain`: its input and the images it asks for, which it costs if it succeeds at all.
    `likely`: that plus the output text it asked for (maxOutputTokens), or else the catalog's
    `hold_output_tokens` allowance. `worst`: that plus the model's whole output budget.
    """

    certain: int = 0
    likely: int = 0
    worst: int = 0

    def times(self, copies: int) -> Quote:
        return Quote(self.certain * copies, self.likely * copies, self.worst * copies)


def quote(call: Call) -> Quote:
    """The call's Quote. Input: the body's text (everything but inline data) at three
    characters a token, plus the catalog's tokens per input image. Images: candidateCount at
    the requested size. Output text is priced at the dearer of the text and thinking rates,
    since thinking shares the output budget."""
    if call.method == "countTokens":
        return Quote()
    spec = call.model
    config = field(call.request, "generationConfig", "generation_config")
    config = config if isinstance(config, dict) else {}
    max_output = _positive_int(field(config, "maxOutputTokens", "max_output_tokens"))
    candidates = _positive_int(field(config, "candidateCount", "candidate_count")) or 1
    text_chars = max(0, len(call.body) - _inline_chars(call.request))
    images = candidates if expects_image(call) else 0
    size = image_size(call)
    certain = Usage(
        input_text=_ceil_div(text_chars, CHARS_PER_TOKEN),
        input_image=call.input_images * spec.input_image_tokens,
        output_image=images * spec.image_tokens(size),
        images=images,
    )
    budget = min(max_output or spec.output_token_limit, spec.output_token_limit)
    allowance = min(max_output or spec.hold_output_tokens, budget)
    rate = max(spec.prices["output_text"], spec.prices["thoughts"])
    base = price(spec, certain, size)
    # Each output text token costs at most `rate`; rounding up once per quote keeps it high.
    return Quote(
        certain=base,
        likely=base + _ceil_div(allowance * rate, PER_MILLION),
        worst=base + _ceil_div(budget * rate, PER_MILLION),
    )


def _inline_chars(request: Any) -> int:
    """Characters of inline (base64) data in the request's contents."""
    total = 0
    contents = request.get("contents") if isinstance(request, dict) else None
    for content in contents if isinstance(contents, list) else ():
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            blob = field(part, "inlineData", "inline_data") if isinstance(part, dict) else None
            data = blob.get("data") if isinstance(blob, dict) else None
            if isinstance(data, str):
                total += len(data)
    return total


def _positive_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
