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
    """Tokens by modality from a usageMetadata object, in either JSON spelling: the one reader
    of usage that billing, records and every dialect's answer use."""
    usage = Usage()
    if not isinstance(meta, dict):
        return usage
    prompt = _tokens(meta, "promptTokenCount", "prompt_token_count")
    candidates = _tokens(meta, "candidatesTokenCount", "candidates_token_count")
    usage.input_text, usage.input_image = _split(
        meta, "promptTokensDetails", "prompt_tokens_details", prompt
    )
    usage.output_text, usage.output_image = _split(
        meta, "candidatesTokensDetails", "candidates_tokens_details", candidates
    )
    usage.thoughts = _tokens(meta, "thoughtsTokenCount", "thoughts_token_count")
    usage.cached = _tokens(meta, "cachedContentTokenCount", "cached_content_token_count")
    total = _tokens(meta, "totalTokenCount", "total_token_count")
    usage.total = total or (prompt + candidates + usage.thoughts)
    return usage


def _split(meta: dict[str, Any], camel: str, snake: str, count: int) -> tuple[int, int]:
    """(text, image) tokens of a count and its per-modality details. Tokens the details leave
    out (they may list only the image modality, or be missing) are taken as text: the
    conservative reading, since text is what every modality is billed at least as."""
    text = image = 0
    details = field(meta, camel, snake)
    for detail in details if isinstance(details, list) else ():
        modality, tokens = _detail(detail)
        if modality == "IMAGE":
            image += tokens
        else:
            text += tokens
    return text + max(0, count - text - image), image


def _tokens(meta: dict[str, Any], camel: str, snake: str) -> int:
    return _int(field(meta, camel, snake))


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
    # One pass over a multi-megabyte body is cheap next to a parse; the snake_case spelling
    # only if needed.
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
    return str(detail.get("modality", "TEXT")), _tokens(detail, "tokenCount", "token_count")


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
