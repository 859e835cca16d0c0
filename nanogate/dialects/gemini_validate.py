"""Validation of a Gemini GenerateContentRequest against the model catalog. Pure functions.

The request is forwarded as it came, so validation only reads: it never rewrites a field. Both
the REST API's camelCase and the proto-JSON snake_case spellings are accepted, as Google does.
"""

from __future__ import annotations

from typing import Any

from nanogate.core.canonical import field
from nanogate.core.catalog import ModelSpec
from nanogate.core.errors import InvalidArgument
from nanogate.core.media import decode_base64, sniff_image
from nanogate.core.types import JSON, ImageRequest

ROLES = frozenset({"user", "model"})


def validate_generate(request: Any, spec: ModelSpec) -> tuple[ImageRequest | None, int]:
    """Check a generateContent body; return the image settings and the number of input images."""
    if not isinstance(request, dict):
        raise InvalidArgument("The request body must be a JSON object.")
    images = validate_contents(request.get("contents"), spec, required=True)
    system = field(request, "systemInstruction", "system_instruction")
    if system is not None:
        _validate_content(system, "systemInstruction", spec, role_required=False)
    config = field(request, "generationConfig", "generation_config")
    if config is not None and not isinstance(config, dict):
        raise InvalidArgument("generationConfig must be an object.")
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
        images += _validate_content(content, f"contents[{index}]", spec, role_required=False)
    return images


def _validate_content(content: Any, where: str, spec: ModelSpec, *, role_required: bool) -> int:
    if not isinstance(content, dict):
        raise InvalidArgument(f"{where} must be an object with 'role' and 'parts'.")
    role = content.get("role")
    if role is not None and role not in ROLES and where != "systemInstruction":
        raise InvalidArgument(f"{where}.role must be 'user' or 'model', not {_show(role)}.")
    if role is None and role_required:
        raise InvalidArgument(f"{where}.role is required.")
    parts = content.get("parts")
    if parts is None:
        return 0
    if not isinstance(parts, list):
        raise InvalidArgument(f"{where}.parts must be an array.")
    images = 0
    for index, part in enumerate(parts):
        images += _validate_part(part, f"{where}.parts[{index}]", spec)
    return images


def _validate_part(part: Any, where: str, spec: ModelSpec) -> int:
    if not isinstance(part, dict):
        raise InvalidArgument(f"{where} must be an object.")
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
