"""OpenAI's images endpoints (generations, edits) to and from the canonical Gemini form. Pure.

`size` maps to the supported aspect ratio nearest its shape and the size tier nearest its area,
both read off the catalog's pixel tables; `aspect_ratio` and `image_size` (extensions) win over
it. An edit's images become inline parts after the prompt; a mask, which Gemini has no field
for, goes last with a line of instruction saying what it marks.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from typing import Any, cast

from nanogate.core.catalog import ModelSpec
from nanogate.core.images import Format
from nanogate.core.inline import Blob, text_of
from nanogate.dialects import openai
from nanogate.dialects.openai import bad, show
from nanogate.dialects.openai_chat import image_settings

RESPONSE_FORMATS = ("b64_json", "url")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
_SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")
MASK_INSTRUCTION = (
    "The last image is a mask for the image to edit: change only the areas where the mask is "
    "transparent, and keep every other area as it is."
)


@dataclass(slots=True)
class ImagesRequest:
    model: str
    gemini: dict[str, Any]
    n: int = 1
    response_format: str = "b64_json"
    output_format: Format | None = None  # None: as the model made it


def parse_generation(doc: dict[str, Any], spec: ModelSpec, *, max_images: int) -> ImagesRequest:
    prompt = doc.get("prompt")
    if isinstance(prompt, Blob):  # a long prompt with no spaces reads like base64 in a big body
        prompt = text_of(prompt)
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad("prompt", "is required: describe the image to make.")
    return _request(doc, spec, [{"text": prompt}], max_images)


def parse_edit(
    fields: dict[str, Any],
    images: list[tuple[str, bytes]],
    mask: tuple[str, bytes] | None,
    spec: ModelSpec,
    *,
    max_images: int,
) -> ImagesRequest:
    """A multipart edit: its text fields (strings), its images and optional mask (mime, bytes)."""
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad("prompt", "is required: say how to edit the image.")
    if not images:
        raise bad("image", "is required: send the image to edit as 'image' (or 'image[]').")
    total = len(images) + (mask is not None)
    if total > spec.max_input_images:
        raise bad(
            "image",
            f"{spec.name} takes at most {spec.max_input_images} input images; this edit has "
            f"{total}{' with the mask' if mask else ''}.",
        )
    parts: list[dict[str, Any]] = [{"text": prompt}]
    for mime, data in images:
        parts.append(_inline(mime, data))
    if mask is not None:
        parts += [{"text": MASK_INSTRUCTION}, _inline(*mask)]
    doc = dict(fields)
    if "n" in doc:
        doc["n"] = _form_int(doc["n"], "n")
    return _request(doc, spec, parts, max_images)


def _form_int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad(name, f"must be an integer, not {show(value)}.") from None


def _inline(mime: str, data: bytes) -> dict[str, Any]:
    return {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}}


def _request(
    doc: dict[str, Any], spec: ModelSpec, parts: list[dict[str, Any]], max_images: int
) -> ImagesRequest:
    if not spec.is_image:
        raise bad(
            "model", f"{spec.name} is a text model; the images endpoints need an image model."
        )
    n = openai.count(doc, max_images)
    response_format = openai.choice(doc, "response_format", RESPONSE_FORMATS) or "b64_json"
    output_format = cast(Format | None, openai.choice(doc, "output_format", OUTPUT_FORMATS))
    image = size_config(doc.get("size"), spec)
    image.update(image_settings(doc.get("aspect_ratio"), doc.get("image_size"), spec))
    config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
    if image:
        config["imageConfig"] = image
    gemini = {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}
    return ImagesRequest(spec.name, gemini, n, response_format, output_format)


def size_config(size: Any, spec: ModelSpec) -> dict[str, Any]:
    """OpenAI's `size` ("WIDTHxHEIGHT" or "auto") as Gemini's aspect ratio and size tier."""
    if size is None or size == "auto":
        return {}
    match = _SIZE.match(size) if isinstance(size, str) else None
    width, height = (int(match[1]), int(match[2])) if match else (0, 0)
    if not width or not height:
        raise bad("size", f"must be WIDTHxHEIGHT (such as 1024x1024) or auto, not {show(size)}.")
    shape = math.log(width / height)
    ratio = min(spec.aspect_ratios, key=lambda r: abs(_log_ratio(r) - shape))
    config: dict[str, Any] = {"aspectRatio": ratio}
    if len(spec.image_sizes) > 1:
        area = math.log(width * height)

        def distance(tier: str) -> float:
            w, h = spec.image_pixels(ratio, tier)
            return abs(math.log(w * h) - area)

        config["imageSize"] = min(spec.image_sizes, key=distance)
    return config


def _log_ratio(ratio: str) -> float:
    width, _, height = ratio.partition(":")
    return math.log(int(width) / int(height))


def response(
    created: int,
    data: list[dict[str, Any]],
    tokens: openai.Tokens,
    *,
    output_format: str,
    size: str | None,
) -> dict[str, Any]:
    """The ImagesResponse: `data` items hold `b64_json` or `url`, and `revised_prompt` when
    the model said something besides the image. `size` is the pixel size the model produced
    ("WIDTHxHEIGHT"; an edit keeps its input's shape whatever `size` asked), or None to leave
    it out when it could not be read."""
    answer: dict[str, Any] = {"created": created, "data": data, "output_format": output_format}
    if size is not None:
        answer["size"] = size
    answer["usage"] = tokens.images()
    return answer
