"""Facts read off the canonical (Gemini) response without parsing multi-megabyte image bodies.

A GenerateContentResponse puts `usageMetadata` after the candidates, so for a large body we find
it from the end and parse only that object; image parts are counted with a byte search (quotes
inside JSON strings are escaped, so `"inlineData"` only matches real keys). Small bodies are
parsed whole, which also proves they are JSON.
"""

from __future__ import annotations

from typing import Any

import orjson

from nanogate.core.types import Usage

FULL_PARSE_LIMIT = 1024 * 1024
_USAGE_KEY = b'"usageMetadata"'
# The chunk of a stream that carries a finish reason is its last.
FINISH_KEY = b'"finishReason"'
_IMAGE_KEYS = (b'"inlineData"', b'"inline_data"')


def field(obj: dict[str, Any], camel: str, snake: str) -> Any:
    """Read a field of a Gemini request or response under either of its JSON spellings."""
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


class MalformedResponse(ValueError):
    """The upstream's 200 body is not a GenerateContentResponse."""


def usage_from_metadata(meta: Any) -> Usage:
    usage = Usage()
    if not isinstance(meta, dict):
        return usage
    for detail in meta.get("promptTokensDetails") or ():
        modality, count = _detail(detail)
        if modality == "IMAGE":
            usage.input_image += count
        else:
            usage.input_text += count
    for detail in meta.get("candidatesTokensDetails") or ():
        modality, count = _detail(detail)
        if modality == "IMAGE":
            usage.output_image += count
        else:
            usage.output_text += count
    prompt = _int(meta.get("promptTokenCount"))
    candidates = _int(meta.get("candidatesTokenCount"))
    # Without per-modality details every token is taken as text: the conservative reading.
    if usage.input_text + usage.input_image == 0:
        usage.input_text = prompt
    if usage.output_text + usage.output_image == 0:
        usage.output_text = candidates
    elif usage.output_text + usage.output_image < candidates:
        # Details may list only the image modality; the remainder is text.
        usage.output_text += candidates - usage.output_text - usage.output_image
    usage.thoughts = _int(meta.get("thoughtsTokenCount"))
    usage.total = _int(meta.get("totalTokenCount")) or (prompt + candidates + usage.thoughts)
    return usage


def usage_from_response(body: bytes) -> Usage:
    """Usage and image count of one GenerateContentResponse (a whole reply or a stream chunk)."""
    stripped = body.strip()
    if not stripped.startswith(b"{") or not stripped.endswith(b"}"):
        raise MalformedResponse("the upstream's answer is not a JSON object")
    if len(stripped) <= FULL_PARSE_LIMIT:
        try:
            doc = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise MalformedResponse("the upstream's answer is not valid JSON") from exc
        if not isinstance(doc, dict):
            raise MalformedResponse("the upstream's answer is not a JSON object")
        usage = usage_from_metadata(doc.get("usageMetadata"))
        usage.images = _count_images(doc)
        return usage
    usage = usage_from_metadata(_tail_object(stripped, _USAGE_KEY))
    # One pass over a multi-megabyte body is ~5 ms; the snake_case spelling only if needed.
    usage.images = stripped.count(_IMAGE_KEYS[0]) or stripped.count(_IMAGE_KEYS[1])
    return usage


def _tail_object(body: bytes, key: bytes) -> Any:
    at = body.rfind(key)
    if at < 0:
        return None
    start = body.find(b"{", at + len(key))
    if start < 0:
        return None
    depth = 0
    # usageMetadata holds numbers and modality names only: no braces inside strings.
    for index in range(start, min(len(body), start + 65536)):
        char = body[index]
        if char == 0x7B:
            depth += 1
        elif char == 0x7D:
            depth -= 1
            if depth == 0:
                try:
                    return orjson.loads(body[start : index + 1])
                except orjson.JSONDecodeError as exc:
                    raise MalformedResponse("the upstream's usageMetadata is not JSON") from exc
    raise MalformedResponse("the upstream's answer is truncated")


def _count_images(doc: dict[str, Any]) -> int:
    count = 0
    for candidate in doc.get("candidates") or ():
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts or ():
            if isinstance(part, dict) and ("inlineData" in part or "inline_data" in part):
                count += 1
    return count


def _detail(detail: Any) -> tuple[str, int]:
    if not isinstance(detail, dict):
        return "TEXT", 0
    return str(detail.get("modality", "TEXT")), _int(detail.get("tokenCount"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def no_image_reason(body: bytes) -> str:
    """Why an answer holds no image, as Google put it: the prompt's blockReason or the first
    candidate's finishReason (IMAGE_SAFETY, PROHIBITED_CONTENT, NO_IMAGE, ...)."""
    if len(body) > FULL_PARSE_LIMIT:
        return "UNKNOWN"
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "UNKNOWN"
    if not isinstance(doc, dict):
        return "UNKNOWN"
    feedback = doc.get("promptFeedback")
    if isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str):
        return f"prompt blocked ({feedback['blockReason']})"
    for candidate in doc.get("candidates") or ():
        if isinstance(candidate, dict) and isinstance(candidate.get("finishReason"), str):
            return str(candidate["finishReason"])
    return "no image in the answer"
