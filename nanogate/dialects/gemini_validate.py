"""Validation of a Gemini GenerateContentRequest against the model catalog. Pure functions.

The request is forwarded as it came, so validation only reads: it never rewrites a field. Both
the REST API's camelCase and the proto-JSON snake_case spellings are accepted, as Google does.
Every field read is checked for its shape before it is used, so no value a client sends can
raise anything but InvalidArgument; fields the gateway does not know pass through unchecked.
"""

from __future__ import annotations

from typing import Any, Literal

from nanogate.core.canonical import field
from nanogate.core.catalog import ModelSpec
from nanogate.core.errors import InvalidArgument
from nanogate.core.media import decode_base64, sniff_image
from nanogate.core.types import JSON, ImageRequest

ROLES = frozenset({"user", "model"})

# generationConfig's known fields, checked by type and range as the Gemini API reference gives
# them (https://ai.google.dev/api/generate-content#generationconfig): temperature 0.0 to 2.0,
# the penalties -2.0 to 2.0 (the bounds the google-genai SDK documents), and integers are proto
# int32s. candidateCount stops at 8, the most Gemini answers in one call.
INT32_MAX = 2**31 - 1
# How a field's number must look: any number, a JSON integer (billing reads candidateCount and
# maxOutputTokens, and only as integers), or a whole number (topK, which the google-genai SDK
# types as a float and so sends as 40.0).
Kind = Literal["number", "integer", "whole"]
# (camelCase, snake_case, low, high, kind)
NUMBERS: tuple[tuple[str, str, float, float, Kind], ...] = (
    ("temperature", "temperature", 0.0, 2.0, "number"),
    ("topP", "top_p", 0.0, 1.0, "number"),
    ("topK", "top_k", 1, INT32_MAX, "whole"),
    ("candidateCount", "candidate_count", 1, 8, "integer"),
    ("maxOutputTokens", "max_output_tokens", 1, INT32_MAX, "integer"),
    ("presencePenalty", "presence_penalty", -2.0, 2.0, "number"),
    ("frequencyPenalty", "frequency_penalty", -2.0, 2.0, "number"),
    ("seed", "seed", -INT32_MAX - 1, INT32_MAX, "integer"),
)
# The Modality enum (upper case; Google also takes 'Text' and 'Image', as its own examples send).
MODALITIES = frozenset({"TEXT", "IMAGE", "AUDIO", "VIDEO"})
MAX_STOP_SEQUENCES = 5


def validate_generate(request: Any, spec: ModelSpec) -> tuple[ImageRequest | None, int]:
    """Check a generateContent body; return the image settings and the number of input images."""
    if not isinstance(request, dict):
        raise InvalidArgument("The request body must be a JSON object.")
    images = validate_contents(request.get("contents"), spec, required=True)
    system = field(request, "systemInstruction", "system_instruction")
    if system is not None:
        _validate_content(system, "systemInstruction", spec)
    config = field(request, "generationConfig", "generation_config")
    if config is not None and not isinstance(config, dict):
        raise InvalidArgument("generationConfig must be an object.")
    _validate_generation_config(config or {}, spec)
    image = _validate_image_config(config or {}, spec)
    if spec.unlisted and _asks_for_images(config or {}):
        raise InvalidArgument(
            f"generationConfig.responseModalities: {spec.name} is not in this gateway's catalog, "
            "so it answers text only; remove IMAGE."
        )
    if images > spec.max_input_images:
        raise InvalidArgument(
            f"{spec.name} accepts at most {spec.max_input_images} input images; "
            f"the request has {images}."
        )
    return image, images


def validate_count_tokens(request: Any, spec: ModelSpec) -> int:
    """countTokens takes `contents` or a whole `generateContentRequest`."""
    if not isinstance(request, dict):
        raise InvalidArgument("The request body must be a JSON object.")
    inner = field(request, "generateContentRequest", "generate_content_request")
    if inner is not None:
        if not isinstance(inner, dict):
            raise InvalidArgument("generateContentRequest must be an object.")
        return validate_generate(inner, spec)[1]
    return validate_contents(request.get("contents"), spec, required=True)


def validate_contents(contents: Any, spec: ModelSpec, *, required: bool) -> int:
    if contents is None:
        if required:
            raise InvalidArgument("contents is required: give at least one content with parts.")
        return 0
    if not isinstance(contents, list) or not contents:
        raise InvalidArgument("contents must be a non-empty array of Content objects.")
    images = 0
    for index, content in enumerate(contents):
        images += _validate_content(content, f"contents[{index}]", spec)
    return images


def _validate_content(content: Any, where: str, spec: ModelSpec) -> int:
    if not isinstance(content, dict):
        raise InvalidArgument(f"{where} must be an object with 'role' and 'parts'.")
    role = content.get("role")
    if where == "systemInstruction":
        # Its role is not read (Google ignores it), but it is still a string.
        if role is not None and not isinstance(role, str):
            raise InvalidArgument(f"{where}.role must be a string, not {_show(role)}.")
    elif role is not None and (not isinstance(role, str) or role not in ROLES):
        raise InvalidArgument(f"{where}.role must be 'user' or 'model', not {_show(role)}.")
    parts = content.get("parts")
    # Google refuses a content without parts; passing one on would charge for its 400.
    if not isinstance(parts, list) or not parts:
        raise InvalidArgument(
            f'{where}.parts must be a non-empty array of parts, such as [{{"text": "..."}}].'
        )
    images = 0
    for index, part in enumerate(parts):
        images += _validate_part(part, f"{where}.parts[{index}]", spec)
    return images


def _validate_part(part: Any, where: str, spec: ModelSpec) -> int:
    if not isinstance(part, dict) or not part:
        raise InvalidArgument(f'{where} must be an object with data, such as {{"text": "..."}}.')
    text = part.get("text")
    if text is not None and not isinstance(text, str):
        raise InvalidArgument(f"{where}.text must be a string.")
    blob = field(part, "inlineData", "inline_data")
    if blob is None:
        return 0
    _validate_blob(blob, f"{where}.inlineData", spec)
    return 1


def _validate_blob(blob: Any, where: str, spec: ModelSpec) -> None:
    if not isinstance(blob, dict):
        raise InvalidArgument(f"{where} must be an object with mimeType and data.")
    mime = field(blob, "mimeType", "mime_type")
    if not isinstance(mime, str) or not mime:
        raise InvalidArgument(f"{where}.mimeType is required.")
    if spec.unlisted:
        raise InvalidArgument(
            f"{where}: {spec.name} is not in this gateway's catalog, so it takes text only; "
            "ask the operator to add it (`models:` in the config) to send files."
        )
    if mime.lower() not in spec.input_mime_types:
        allowed = ", ".join(sorted(spec.input_mime_types))
        raise InvalidArgument(
            f"{where}.mimeType {_show(mime)} is not accepted by {spec.name}; use one of: {allowed}."
        )
    data = blob.get("data")
    if not isinstance(data, str) or not data:
        raise InvalidArgument(f"{where}.data is required: the base64-encoded bytes.")
    raw = decode_base64(data)
    if raw is None:
        raise InvalidArgument(f"{where}.data is not valid base64.")
    sniffed = sniff_image(raw[:64])
    if mime.lower().startswith("image/") and sniffed is None:
        raise InvalidArgument(f"{where}.data does not hold an image (declared {mime}).")


def _validate_generation_config(config: JSON, spec: ModelSpec) -> None:
    for camel, snake, low, high, kind in NUMBERS:
        _check_number(field(config, camel, snake), f"generationConfig.{camel}", low, high, kind)
    # Google refuses more than the model's output limit with a 400 ("... has a maxOutputTokens
    # value of 655360 but the supported range is from 1 (inclusive) to 8193 (exclusive)",
    # github.com/stackblitz-labs/bolt.diy/issues/955); so does the gateway, before any charge.
    wanted = field(config, "maxOutputTokens", "max_output_tokens")
    if wanted is not None and wanted > spec.output_token_limit:
        raise InvalidArgument(
            f"generationConfig.maxOutputTokens: {spec.name} writes at most "
            f"{spec.output_token_limit} output tokens; the request asks for {wanted}. Lower it, "
            "or leave it out for the model's own limit."
        )
    stops = field(config, "stopSequences", "stop_sequences")
    if stops is not None and (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_SEQUENCES
        or not all(isinstance(stop, str) for stop in stops)
    ):
        raise InvalidArgument(
            f"generationConfig.stopSequences: must be an array of at most {MAX_STOP_SEQUENCES} "
            "strings."
        )
    mime = field(config, "responseMimeType", "response_mime_type")
    if mime is not None and not isinstance(mime, str):
        raise InvalidArgument(
            "generationConfig.responseMimeType: must be a string such as 'application/json'."
        )
    modalities = field(config, "responseModalities", "response_modalities")
    if modalities is not None and (
        not isinstance(modalities, list)
        or not all(isinstance(m, str) and m.upper() in MODALITIES for m in modalities)
    ):
        raise InvalidArgument(
            "generationConfig.responseModalities: must be an array of "
            f"{', '.join(sorted(MODALITIES))}; got {_show(modalities)}."
        )
    _validate_thinking_config(field(config, "thinkingConfig", "thinking_config"))


def _validate_thinking_config(thinking: Any) -> None:
    if thinking is None:
        return
    where = "generationConfig.thinkingConfig"
    if not isinstance(thinking, dict):
        raise InvalidArgument(f'{where}: must be an object such as {{"thinkingBudget": 1024}}.')
    # -1 lets the model decide, 0 turns thinking off where the model allows it.
    budget = field(thinking, "thinkingBudget", "thinking_budget")
    _check_number(budget, f"{where}.thinkingBudget", -1, INT32_MAX, "integer")
    include = field(thinking, "includeThoughts", "include_thoughts")
    if include is not None and not isinstance(include, bool):
        raise InvalidArgument(f"{where}.includeThoughts: must be true or false.")
    level = field(thinking, "thinkingLevel", "thinking_level")
    if level is not None and not isinstance(level, str):
        raise InvalidArgument(f"{where}.thinkingLevel: must be a string such as 'low' or 'high'.")


def _check_number(value: Any, where: str, low: float, high: float, kind: Kind) -> None:
    if value is None:
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "integer":
        fits = isinstance(value, int) and not isinstance(value, bool)
    else:
        fits = number and (kind == "number" or float(value).is_integer())
    if not fits or not low <= value <= high:
        shape = "a number" if kind == "number" else "an integer"
        raise InvalidArgument(
            f"{where}: must be {shape} between {low:g} and {high:g}, not {_show(value)}."
        )


def _validate_image_config(config: JSON, spec: ModelSpec) -> ImageRequest | None:
    image_config = field(config, "imageConfig", "image_config")
    if image_config is None:
        return ImageRequest(None, None) if spec.is_image else None
    if not spec.is_image:
        raise InvalidArgument(
            f"generationConfig.imageConfig is only for image models; {spec.name} is a text model."
        )
    if not isinstance(image_config, dict):
        raise InvalidArgument("generationConfig.imageConfig must be an object.")
    ratio = field(image_config, "aspectRatio", "aspect_ratio")
    size = field(image_config, "imageSize", "image_size")
    if ratio is not None and ratio not in spec.aspect_ratios:
        raise InvalidArgument(
            f"imageConfig.aspectRatio {_show(ratio)} is not supported by {spec.name}; "
            f"use one of: {', '.join(spec.aspect_ratios)}."
        )
    if size is not None:
        if not spec.image_sizes:
            raise InvalidArgument(
                f"{spec.name} does not support imageConfig.imageSize; remove it "
                "(this model renders one size, chosen by aspectRatio)."
            )
        if size not in spec.image_sizes:
            # "2k" for "2K" is the usual slip: name the spelling only when it is the problem.
            upper = size.upper() if isinstance(size, str) else None
            hint = f" ({upper!r}, with an uppercase K)" if upper in spec.image_sizes else ""
            raise InvalidArgument(
                f"imageConfig.imageSize {_show(size)} is not supported by {spec.name}; "
                f"use one of: {', '.join(spec.image_sizes)}{hint}."
            )
    return ImageRequest(ratio, size)


def _asks_for_images(config: JSON) -> bool:
    modalities = field(config, "responseModalities", "response_modalities")
    return isinstance(modalities, list) and any(str(m).upper() == "IMAGE" for m in modalities)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "...'"
