"""The one reader of the canonical (Gemini) shape: fields under either JSON spelling, the parts
of a content, the candidates and finish reasons of an answer, and its usage, which billing, the
upstream adapters, every dialect and the task worker read here and nowhere else.

Usage is read without parsing multi-megabyte image bodies, nor joining the pieces they were read
in (core/payload.py): a GenerateContentResponse puts `usageMetadata` after the candidates, so
for a large body we find it from the end and parse only that object; image parts are counted
with a byte search that passes over base64 at memory speed (quotes inside JSON strings are
escaped, so `"inlineData"` only matches real keys). Small bodies are parsed whole, which also
proves they are JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

from nanogate.core import payload
from nanogate.core.inline import Text
from nanogate.core.payload import Payload, as_payload, joined
from nanogate.core.types import Usage

FULL_PARSE_LIMIT = 1024 * 1024
# How far from either end a large body's braces, and after its key its usageMetadata, may be.
_EDGE = 4096
_OBJECT_LIMIT = 65536
_USAGE_KEY = b'"usageMetadata"'
_NOT_AN_OBJECT = "the upstream's answer is not a JSON object"
# The chunk of a stream that carries a finish reason is its last.
_FINISH_KEY = b'"finishReason"'
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


def usage_from_response(body: bytes | Payload) -> Usage:
    """Usage and image count of one GenerateContentResponse (a whole reply or a stream chunk)."""
    if len(body) <= FULL_PARSE_LIMIT:
        stripped = joined(body).strip()
        if not stripped.startswith(b"{") or not stripped.endswith(b"}"):
            raise MalformedResponse(_NOT_AN_OBJECT)
        try:
            doc = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise MalformedResponse("the upstream's answer is not valid JSON") from exc
        if not isinstance(doc, dict):
            raise MalformedResponse(_NOT_AN_OBJECT)
        usage = usage_from_metadata(usage_metadata(doc))
        usage.images = sum(len(candidate.images) for candidate in candidates(doc))
        return usage
    large = as_payload(body)
    opens = large.head(_EDGE).lstrip().startswith(b"{")
    if not opens or not large.tail(_EDGE).rstrip().endswith(b"}"):
        raise MalformedResponse(_NOT_AN_OBJECT)
    usage = usage_from_metadata(_tail_object(large, _USAGE_KEY))
    # A search that passes over the base64 at memory speed is cheap next to a parse; the
    # snake_case spelling only if needed.
    usage.images = payload.count(large, _IMAGE_KEYS[0]) or payload.count(large, _IMAGE_KEYS[1])
    return usage


def finishes(chunk: bytes) -> bool:
    """Whether a stream chunk carries a finish reason: the last chunk that counts. Looked for
    from its end, passing over an image's base64 at memory speed."""
    return payload.last(chunk, _FINISH_KEY) >= 0


def _tail_object(body: Payload, key: bytes) -> Any:
    at = payload.last(body, key)
    if at < 0:
        return None
    # usageMetadata holds numbers and modality names only: no braces inside strings.
    window = body.slice(at + len(key), at + len(key) + _OBJECT_LIMIT)
    start = window.find(b"{")
    if start < 0:
        return None
    depth = 0
    for index in range(start, len(window)):
        char = window[index]
        if char == 0x7B:
            depth += 1
        elif char == 0x7D:
            depth -= 1
            if depth == 0:
                try:
                    return orjson.loads(window[start : index + 1])
                except orjson.JSONDecodeError as exc:
                    raise MalformedResponse("the upstream's usageMetadata is not JSON") from exc
    raise MalformedResponse("the upstream's answer is truncated")


def _detail(detail: Any) -> tuple[str, int]:
    if not isinstance(detail, dict):
        return "TEXT", 0
    return str(detail.get("modality", "TEXT")), _tokens(detail, "tokenCount", "token_count")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


# -- parts and candidates ----------------------------------------------------------------------


@dataclass(slots=True)
class Image:
    mime: str
    data: Text  # base64 as sent: a long one stays a Blob (an offset into the body), never copied


@dataclass(slots=True)
class Parts:
    """What a content's parts hold, by kind, each kind in order."""

    text: list[str] = dataclasses.field(default_factory=list)
    thoughts: list[str] = dataclasses.field(default_factory=list)
    images: list[Image] = dataclasses.field(default_factory=list)
    calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # + "signature"
    links: list[str] = dataclasses.field(default_factory=list)  # fileData URIs

    def read(self, content: Any) -> None:
        """Add the parts of a Content object; anything that is not a known part is skipped."""
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict):
                self._part(part)

    def _part(self, part: dict[str, Any]) -> None:
        blob = field(part, "inlineData", "inline_data")
        call = field(part, "functionCall", "function_call")
        link = field(part, "fileData", "file_data")
        text = part.get("text")
        if isinstance(blob, dict) and blob.get("data"):
            mime = field(blob, "mimeType", "mime_type")
            self.images.append(Image(mime if isinstance(mime, str) else "image/png", blob["data"]))
        elif isinstance(call, dict) and isinstance(call.get("name"), str):
            signature = field(part, "thoughtSignature", "thought_signature")
            self.calls.append(
                {**call, "signature": signature if isinstance(signature, str) else None}
            )
        elif isinstance(link, dict):
            uri = field(link, "fileUri", "file_uri")
            if isinstance(uri, str):
                self.links.append(uri)
        elif isinstance(text, str):
            (self.thoughts if part.get("thought") else self.text).append(text)


@dataclass(slots=True)
class Candidate(Parts):
    """One candidate of an answer (or of one stream chunk)."""

    index: int = 0
    finish: str | None = None  # finishReason


def candidates(doc: Any) -> list[Candidate]:
    """The candidates of a parsed GenerateContentResponse (or of one stream chunk)."""
    found: list[Candidate] = []
    raw = doc.get("candidates") if isinstance(doc, dict) else None
    for position, item in enumerate(raw if isinstance(raw, list) else ()):
        if not isinstance(item, dict):
            continue
        index = item.get("index")
        out = Candidate(index=index if isinstance(index, int) else position)
        finish = field(item, "finishReason", "finish_reason")
        out.finish = finish if isinstance(finish, str) else None
        out.read(item.get("content"))
        found.append(out)
    return found


def block_reason(doc: Any) -> str | None:
    """Why the prompt was blocked (promptFeedback.blockReason), if it was."""
    feedback = field(doc, "promptFeedback", "prompt_feedback") if isinstance(doc, dict) else None
    reason = field(feedback, "blockReason", "block_reason") if isinstance(feedback, dict) else None
    return reason if isinstance(reason, str) else None


def usage_metadata(doc: Any) -> dict[str, Any]:
    meta = field(doc, "usageMetadata", "usage_metadata") if isinstance(doc, dict) else None
    return meta if isinstance(meta, dict) else {}


def no_image_reason(body: bytes | Payload) -> str:
    """Why an answer holds no image, as Google put it: the prompt's blockReason or the first
    candidate's finishReason (IMAGE_SAFETY, PROHIBITED_CONTENT, NO_IMAGE, ...)."""
    if len(body) > FULL_PARSE_LIMIT:
        return "UNKNOWN"
    try:
        doc = orjson.loads(joined(body))
    except orjson.JSONDecodeError:
        return "UNKNOWN"
    blocked = block_reason(doc)
    if blocked is not None:
        return f"prompt blocked ({blocked})"
    for candidate in candidates(doc):
        if candidate.finish is not None:
            return candidate.finish
    return "no image in the answer"
